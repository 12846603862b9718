//! `topiq runs list|get|cancel|replay`: what happened to messages on their triggers, and what
//! an operator does to a run, through a running `topiq run`'s API.

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::operator::{ApiArgs, CommandError};

/// `topiq runs`.
#[derive(Subcommand)]
pub(crate) enum RunsCommand {
    /// List runs, newest first.
    ///
    /// Example: topiq runs list --trigger send-email --state dead_lettered
    List(ListArgs),
    /// Show a message's run (or its runs on every trigger): states, attempts, result.
    ///
    /// Example: topiq runs get 0192f3c1-...
    Get(RunArgs),
    /// Cancel a run: a waiting one is never handled, a running one is stopped.
    ///
    /// Example: topiq runs cancel 0192f3c1-... --trigger send-email
    Cancel(RunArgs),
    /// Send a finished run's data (or new data) again, to its trigger only.
    ///
    /// Example: topiq runs replay 0192f3c1-... --data '{"to": "b@example.com"}'
    Replay(ReplayArgs),
}

/// Which run.
#[derive(Args)]
pub(crate) struct RunArgs {
    /// The message's id.
    id: String,
    /// The trigger (needed when the message has runs on several).
    #[arg(long)]
    trigger: Option<String>,
}

/// `topiq runs replay`.
#[derive(Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    run: RunArgs,
    /// The new message's data as JSON; the run's own data when absent.
    #[arg(long, value_name = "JSON")]
    data: Option<String>,
}

/// `topiq runs list`.
#[derive(Args)]
pub(crate) struct ListArgs {
    /// Only runs of this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only runs on this trigger.
    #[arg(long)]
    trigger: Option<String>,
    /// Only runs in this state (queued, running, retrying, succeeded, dead_lettered, ...).
    #[arg(long)]
    state: Option<String>,
    /// Only runs enqueued at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Only runs enqueued before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Only runs with an attempt error containing this text.
    #[arg(long)]
    error_contains: Option<String>,
    /// The most runs to show.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Where the previous page ended (printed after it).
    #[arg(long)]
    cursor: Option<String>,
}

impl RunArgs {
    fn call_args(&self) -> Map<String, Value> {
        let mut args = Map::new();
        args.insert("id".into(), json!(self.id));
        if let Some(trigger) = &self.trigger {
            args.insert("trigger".into(), json!(trigger));
        }
        args
    }
}

impl ListArgs {
    fn call_args(&self) -> Value {
        let mut args = Map::new();
        let optional = [
            ("topic", &self.topic),
            ("trigger", &self.trigger),
            ("state", &self.state),
            ("since", &self.since),
            ("until", &self.until),
            ("error_contains", &self.error_contains),
            ("cursor", &self.cursor),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                args.insert(key.into(), json!(value));
            }
        }
        args.insert("limit".into(), json!(self.limit));
        Value::Object(args)
    }
}

/// Runs `topiq runs ...`.
pub(crate) async fn runs(api: &ApiArgs, command: RunsCommand) -> Result<(), CommandError> {
    let client = api.client()?;
    match command {
        RunsCommand::List(list) => {
            let result = client.call("queue.run_list", list.call_args()).await?;
            api.show(&result, print_list);
        }
        RunsCommand::Get(run) => {
            let args = Value::Object(run.call_args());
            let result = client.call("queue.run_get", args).await?;
            api.show(&result, |result| {
                for run in result["runs"].as_array().into_iter().flatten() {
                    print_run(run);
                }
            });
        }
        RunsCommand::Cancel(run) => {
            let args = Value::Object(run.call_args());
            let result = client.call("queue.run_cancel", args).await?;
            api.show(&result, |result| {
                println!("cancelled {} run(s) of {}", result["cancelled"], run.id);
            });
        }
        RunsCommand::Replay(replay) => {
            let mut args = replay.run.call_args();
            if let Some(text) = &replay.data {
                let data: Value = serde_json::from_str(text)
                    .map_err(|err| CommandError::Input(format!("--data is not JSON: {err}")))?;
                args.insert("data".into(), data);
            }
            let result = client.call("queue.run_replay", Value::Object(args)).await?;
            api.show(&result, |result| {
                let id = result["message_id"].as_str().unwrap_or_default();
                println!("replayed {} as {id}", replay.run.id);
            });
        }
    }
    Ok(())
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

fn last_error(run: &Value) -> String {
    let attempts = run["attempts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let message = attempts
        .iter()
        .rev()
        .find_map(|attempt| attempt["error"]["message"].as_str())
        .unwrap_or("");
    message.chars().take(60).collect()
}

fn print_list(page: &Value) {
    let runs = page["runs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if runs.is_empty() {
        println!("no runs");
        return;
    }
    println!(
        "{:<36}  {:<20} {:<13} {:>8}  {:<24}  last error",
        "id", "trigger", "state", "attempts", "enqueued_at"
    );
    for run in runs {
        let attempts = run["attempts"].as_array().map_or(0, Vec::len);
        println!(
            "{:<36}  {:<20} {:<13} {:>8}  {:<24}  {}",
            text(&run["id"]),
            text(&run["trigger"]),
            text(&run["state"]),
            attempts,
            text(&run["enqueued_at"]),
            last_error(run)
        );
    }
    if let Some(cursor) = page["next_cursor"].as_str() {
        println!("more: --cursor {cursor}");
    }
}

fn print_run(run: &Value) {
    println!(
        "{} on {} ({}): {}",
        text(&run["id"]),
        text(&run["trigger"]),
        text(&run["topic"]),
        text(&run["state"])
    );
    if let Some(replayed) = run["replay_of"].as_str() {
        println!("  replay of {replayed}");
    }
    let transitions = run["transitions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let history: Vec<String> = transitions
        .iter()
        .map(|transition| format!("{} {}", text(&transition["state"]), text(&transition["at"])))
        .collect();
    println!("  history: {}", history.join(" → "));
    for attempt in run["attempts"].as_array().into_iter().flatten() {
        let error = attempt["error"]["message"].as_str().unwrap_or("");
        println!(
            "  attempt {:>2}  {:<13} {:>7} ms  on {}  {error}",
            attempt["number"].as_u64().unwrap_or_default(),
            text(&attempt["outcome"]),
            attempt["duration_ms"]
                .as_u64()
                .map_or("-".into(), |ms| ms.to_string()),
            text(&attempt["instance"]),
        );
    }
    for key in ["progress", "result"] {
        if !run[key].is_null() {
            println!("  {key}: {}", run[key]);
        }
    }
    println!("  data: {}", run["data"]);
}
