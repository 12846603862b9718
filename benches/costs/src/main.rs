//! `topiq-costs`: instructions and allocations per message on topiq's hot paths, counted by
//! callgrind, which counts work done rather than time, so the figures hold on a noisy machine.
//!
//! Each row runs in a process of its own under `valgrind --tool=callgrind`, once with N
//! messages and once with 2N; the difference, divided by N, is what one message costs, the
//! start and the shutdown cancelled out. RabbitMQ's rows are counted five times, their
//! threads taking turns in a fixed order (valgrind's `--fair-sched=yes`), and their median
//! kept; `module.traced` once with fair turns.
//!
//! ```text
//! cargo run -p topiq-costs --profile costs              # measure and print the table
//! cargo run -p topiq-costs --profile costs -- --check   # fail when a row is over budget
//! cargo run -p topiq-costs --profile costs -- --write   # record the figures (budget.tsv)
//! ```
//!
//! `TOPIQ_COSTS_MESSAGES` sets N (default 2,000); `TOPIQ_COSTS_ONLY=rabbitmq.` counts only
//! the rows whose names start with it (for a change to one path; the check then holds only
//! those rows to their figures).

mod brokers;
mod budget;
mod callgrind;
mod rows;

use std::process::ExitCode;

use budget::Figure;
use callgrind::Turns;

/// N, when `TOPIQ_COSTS_MESSAGES` does not set it.
const DEFAULT_MESSAGES: u64 = 2_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["row", row, messages] => run_row(row, messages),
        [] => measure_all().map(|figures| print_table(&figures, &[])),
        ["--check"] => check(),
        ["--write"] => measure_all().and_then(|figures| budget::write(&figures)),
        _ => Err("usage: topiq-costs [--check | --write]".to_owned()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("topiq-costs: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run_row(row: &str, messages: &str) -> Result<(), String> {
    let messages: u64 = messages
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{messages:?} is not a count of messages"))?;
    rows::run(row, messages).map_err(|err| err.to_string())
}

/// Every row's cost per message, counted now.
fn measure_all() -> Result<Vec<Figure>, String> {
    let messages = std::env::var("TOPIQ_COSTS_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MESSAGES);
    let folder = std::env::temp_dir().join(format!("topiq-costs-{}", std::process::id()));
    std::fs::create_dir_all(&folder).map_err(|err| format!("cannot make {folder:?}: {err}"))?;
    let only = std::env::var("TOPIQ_COSTS_ONLY").unwrap_or_default();
    let chosen: Vec<&str> = rows::ROWS
        .iter()
        .map(|(row, _)| *row)
        .filter(|row| row.starts_with(only.as_str()))
        .collect();
    if chosen.is_empty() {
        return Err(format!("TOPIQ_COSTS_ONLY={only:?} names no row"));
    }
    let mut figures = Vec::new();
    for (index, row) in chosen.iter().enumerate() {
        eprintln!(
            "[{}/{}] {row}: {messages} and {} messages under callgrind",
            index + 1,
            chosen.len(),
            2 * messages
        );
        let (repeats, turns) = counting(row);
        let mut measured = (0..repeats)
            .map(|_| per_message(row, messages, turns, &folder))
            .collect::<Result<Vec<_>, _>>()?;
        // The median: a RabbitMQ row's count moves with how the row's thread and lapin's I/O
        // thread met in that run (a contended lock spins, an idle executor parks).
        measured.sort_by_key(|figure| figure.instructions);
        let median = measured.swap_remove(measured.len() / 2);
        figures.push(median);
    }
    let _ = std::fs::remove_dir_all(&folder);
    Ok(figures)
}

/// How `row` is counted: how many times (its median kept) and how its threads take turns.
/// RabbitMQ's rows move with how lapin's I/O thread and the row's meet and with how many
/// confirms the broker sends in one frame (by 0.5-4% between runs with fair turns, the raw
/// batch row by 12%): five times, fair turns. `module.traced` moves with how often
/// OpenTelemetry's exporter thread gets a turn: with valgrind's default turns it read 27,483
/// and 30,717 in two counts of one build (how many spans each export drops at once, and
/// how glibc then frees them), with fair turns 31,016 and 31,101: once, fair turns. The
/// others move by less than 0.5%: once, default turns.
fn counting(row: &str) -> (usize, Turns) {
    if row.starts_with("rabbitmq.") {
        (5, Turns::Fair)
    } else if row == "module.traced" {
        (1, Turns::Fair)
    } else {
        (1, Turns::Default)
    }
}

/// `row`'s cost per message: counted with `messages` and with twice as many, its threads
/// taking `turns`.
fn per_message(
    row: &str,
    messages: u64,
    turns: Turns,
    folder: &std::path::Path,
) -> Result<Figure, String> {
    let count = |messages| callgrind::count(row, messages, turns, folder);
    let once = count(messages).map_err(|err| err.to_string())?;
    let twice = count(2 * messages).map_err(|err| err.to_string())?;
    Ok(Figure {
        row: row.to_owned(),
        instructions: twice.instructions.saturating_sub(once.instructions) / messages,
        allocations: twice.allocations.saturating_sub(once.allocations) as f64 / messages as f64,
    })
}

/// Measures every row and holds it to the recorded figures.
fn check() -> Result<(), String> {
    let recorded = budget::read()?;
    let figures = measure_all()?;
    print_table(&figures, &recorded);
    let problems: Vec<String> = figures
        .iter()
        .filter_map(|figure| budget::over(figure, recorded.iter().find(|r| r.row == figure.row)))
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "over budget:\n  {}\nmake it cheaper, or record the new figures on purpose with --write in the same commit",
        problems.join("\n  ")
    ))
}

fn print_table(figures: &[Figure], recorded: &[Figure]) {
    println!("| row | instructions / message | allocations / message | recorded | change |");
    println!("|---|---:|---:|---:|---:|");
    for figure in figures {
        let before = recorded.iter().find(|r| r.row == figure.row);
        let (recorded, change) = match before {
            Some(before) => (
                before.instructions.to_string(),
                format!(
                    "{:+.1}%",
                    (figure.instructions as f64 / before.instructions as f64 - 1.0) * 100.0
                ),
            ),
            None => ("—".to_owned(), "—".to_owned()),
        };
        println!(
            "| {} | {} | {:.1} | {recorded} | {change} |",
            figure.row, figure.instructions, figure.allocations
        );
    }
    for (row, what) in rows::ROWS {
        println!("- {row}: {what}");
    }
    print_against_raw(figures);
}

/// topiq's instructions a message against omniqueue's (omniqueue / topiq, so 1.0 or more is
/// topiq doing no more work) and the raw clients' (topiq / raw, so 1.05 or less is the
/// issue's target).
fn print_against_raw(figures: &[Figure]) {
    let peer = (
        "against omniqueue (instructions a message)",
        "omniqueue",
        "omniqueue / topiq",
    );
    print_pairs(figures, peer, rows::AGAINST_PEER, |topiq, peer| {
        peer / topiq
    });
    let raw = ("against the raw client", "raw", "topiq / raw");
    print_pairs(figures, raw, rows::AGAINST_RAW, |topiq, raw| topiq / raw);
}

/// One table of `(topiq's row, the other's row)` pairs with `ratio(topiq, other)`, under
/// the headings `title`, `other` and `ratio_name`.
fn print_pairs(
    figures: &[Figure],
    (title, other, ratio_name): (&str, &str, &str),
    pairs: &[(&str, &str)],
    ratio: fn(f64, f64) -> f64,
) {
    let find = |row: &str| figures.iter().find(|figure| figure.row == row);
    println!();
    println!("| {title} | topiq | {other} | {ratio_name} |");
    println!("|---|---:|---:|---:|");
    for (topiq, theirs) in pairs {
        if let (Some(topiq), Some(theirs)) = (find(topiq), find(theirs)) {
            let (ours, others) = (topiq.instructions.max(1), theirs.instructions.max(1));
            println!(
                "| {} | {} | {} | {:.3} |",
                topiq.row,
                topiq.instructions,
                theirs.instructions,
                ratio(ours as f64, others as f64)
            );
        }
    }
}
