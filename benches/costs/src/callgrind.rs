//! Running a row under `valgrind --tool=callgrind` and reading what it counted: the
//! instructions the whole process executed, and its calls to the C allocator (`malloc` and its
//! kin), from the call graph callgrind writes. Both are counts of work done, not times, so they
//! are the same on a busy machine and an idle one.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// What callgrind counted in one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Instructions executed (`Ir`).
    pub(crate) instructions: u64,
    /// Calls to `malloc`, `calloc`, `realloc` and the aligned allocators.
    pub(crate) allocations: u64,
}

/// Why a row could not be counted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CountError {
    /// valgrind could not be started.
    #[error("cannot run valgrind ({0}); install it: apt-get install valgrind")]
    Start(#[source] std::io::Error),
    /// The row failed under valgrind.
    #[error("the row {row} failed under callgrind: {stderr}")]
    Row {
        /// The row.
        row: String,
        /// What it wrote to stderr (the end of it).
        stderr: String,
    },
    /// Callgrind's output could not be read.
    #[error("cannot read callgrind's output {path}: {source}")]
    Output {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Callgrind's output has no totals line.
    #[error("callgrind's output {0} has no `totals:` line")]
    NoTotals(String),
}

/// The allocator entry points whose calls count as allocations.
const ALLOCATORS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
];

/// How a row's threads are scheduled under callgrind.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Turns {
    /// Valgrind's default: a thread runs until it blocks or its slice ends.
    Default,
    /// Threads take turns in a fixed order (`--fair-sched=yes`): steadier counts for a row
    /// whose threads meet often (lapin's I/O thread and the row's), but a thread that batches
    /// work (OpenTelemetry's span exporter) is woken more often than on two real cores.
    Fair,
}

/// Runs `row` of this binary for `messages` under callgrind, its threads scheduled by
/// `turns`, its output in `folder`.
pub(crate) fn count(
    row: &str,
    messages: u64,
    turns: Turns,
    folder: &Path,
) -> Result<Counts, CountError> {
    let output = folder.join(format!("{row}-{messages}.callgrind"));
    let binary = std::env::current_exe().map_err(CountError::Start)?;
    let run = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(match turns {
            Turns::Default => "--fair-sched=no",
            Turns::Fair => "--fair-sched=yes",
        })
        .arg(format!("--callgrind-out-file={}", output.display()))
        .arg(binary)
        .args(["row", row, &messages.to_string()])
        .output()
        .map_err(CountError::Start)?;
    if !run.status.success() {
        let stderr = String::from_utf8_lossy(&run.stderr);
        let tail: String = stderr.lines().rev().take(15).collect::<Vec<_>>().join("\n");
        return Err(CountError::Row {
            row: row.to_owned(),
            stderr: tail,
        });
    }
    let text = std::fs::read_to_string(&output).map_err(|source| CountError::Output {
        path: output.display().to_string(),
        source,
    })?;
    parse(&text).ok_or_else(|| CountError::NoTotals(output.display().to_string()))
}

/// The counts in a callgrind output file: `totals:` and the `calls=` lines under each call to
/// an allocator (`cfn=(id) name` names a callee the first time, `cfn=(id)` after).
fn parse(text: &str) -> Option<Counts> {
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut callee_allocates = false;
    let mut counts = Counts::default();
    let mut totals = None;
    for line in text.lines() {
        // A function's id is named where it first appears, as a caller or a callee.
        if let Some(rest) = line.strip_prefix("fn=") {
            if let Some((id, name)) = rest.split_once(' ') {
                names.insert(id, name);
            }
            callee_allocates = false;
        }
        if let Some(rest) = line.strip_prefix("cfn=") {
            let name = match rest.split_once(' ') {
                Some((id, name)) => {
                    names.insert(id, name);
                    name
                }
                None => names.get(rest).copied().unwrap_or(rest),
            };
            callee_allocates = ALLOCATORS.contains(&name);
        } else if let Some(rest) = line.strip_prefix("calls=") {
            if callee_allocates {
                let calls = rest.split_whitespace().next()?.parse::<u64>().ok()?;
                counts.allocations += calls;
            }
        } else if let Some(rest) = line.strip_prefix("totals:") {
            totals = rest.split_whitespace().next()?.parse::<u64>().ok();
        }
    }
    counts.instructions = totals?;
    Some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_allocator_calls_are_read_from_the_call_graph() {
        let text = "events: Ir\nfn=(1) main\n0 5\ncfn=(2) malloc\ncalls=3 0\n0 30\ncfn=(3) free\ncalls=2 0\n0 10\nfn=(4) other\ncfn=(2)\ncalls=4 0\n0 40\nfn=(5) calloc\n0 3\nfn=(6) late\ncfn=(5)\ncalls=1 0\n0 3\ntotals: 1234\n";
        let counts = parse(text).expect("counts");
        assert_eq!(counts.instructions, 1234);
        assert_eq!(
            counts.allocations, 8,
            "calls to malloc (3 + 4) and to calloc named by fn= (1)"
        );
        assert_eq!(parse("events: Ir\n"), None);
    }
}
