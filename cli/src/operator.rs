//! The operator commands: `enqueue`, `dlq count|list|redrive|purge` and `stats`, each one or
//! more calls to a running `topiq run`, printed for people or as JSON.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Read};

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};

use crate::client::{ApiClient, ClientError};

/// Where the API is and how to talk to it.
#[derive(Args)]
pub(crate) struct ApiArgs {
    /// The API of a running `topiq run`.
    #[arg(
        long,
        global = true,
        env = "TOPIQ_API",
        default_value = "http://127.0.0.1:7720"
    )]
    api: String,
    /// The API's bearer token (api.token in its config).
    #[arg(long, global = true, env = "TOPIQ_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON result instead of text.
    #[arg(long, global = true)]
    json: bool,
}

impl ApiArgs {
    pub(crate) fn client(&self) -> Result<ApiClient, ClientError> {
        ApiClient::new(&self.api, self.token.clone())
    }

    /// Prints `result` as JSON with `--json`, as `text` says otherwise.
    pub(crate) fn show(&self, result: &Value, text: impl FnOnce(&Value)) {
        if self.json {
            print_json(result);
        } else {
            text(result);
        }
    }
}

/// `topiq enqueue`.
#[derive(Args)]
pub(crate) struct EnqueueArgs {
    /// The topic.
    topic: String,
    /// The message's data as JSON; `-` reads it from standard input.
    #[arg(value_name = "JSON")]
    data: String,
    /// Enqueues with the same key inside the topic's window return the first message's id.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Deliver no sooner than this from now, such as 5s or 10m.
    #[arg(long, conflicts_with = "run_at")]
    delay: Option<String>,
    /// Deliver no sooner than this time (RFC 3339).
    #[arg(long)]
    run_at: Option<String>,
    /// 0 (default) to the topic's priority_levels - 1; higher ones go first.
    #[arg(long)]
    priority: Option<u32>,
}

/// `topiq dlq ...`.
#[derive(Subcommand)]
pub(crate) enum DlqCommand {
    /// How many messages a topic's DLQ holds.
    ///
    /// Example: topiq dlq count emails.send --trigger send-email
    Count(DlqArgs),
    /// The records of a topic's DLQ, a page at a time.
    ///
    /// Example: topiq dlq list emails.send --error-contains timeout --limit 20
    List(DlqListArgs),
    /// Delivers DLQ messages again to the trigger that failed them, attempts reset.
    ///
    /// Without --id, the records matching the filters when the command starts are redriven
    /// a page at a time, with a progress bar.
    ///
    /// Example: topiq dlq redrive emails.send --trigger send-email --rate 50
    Redrive(DlqRedriveArgs),
    /// Deletes DLQ records for good: those given with --id, or every one with --all.
    ///
    /// Example: topiq dlq purge emails.send --id 0192f0c3-...
    Purge(DlqPurgeArgs),
}

/// Which DLQ records.
#[derive(Args, Clone)]
pub(crate) struct DlqArgs {
    /// The topic.
    topic: String,
    /// Only this trigger's records (default: every trigger of the topic).
    #[arg(long)]
    trigger: Option<String>,
    /// Only these message ids (repeatable).
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
}

/// `topiq dlq purge`.
#[derive(Args)]
pub(crate) struct DlqPurgeArgs {
    #[command(flatten)]
    which: DlqArgs,
    /// Without --id: delete every record of the topic (or of --trigger).
    #[arg(long, conflicts_with = "ids")]
    all: bool,
}

/// Filters of a listing or redrive.
#[derive(Args, Clone)]
pub(crate) struct DlqFilterArgs {
    /// Only records whose error contains this text.
    #[arg(long)]
    error_contains: Option<String>,
    /// Only records last failed at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Only records last failed before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
}

impl DlqFilterArgs {
    fn any(&self) -> bool {
        self.error_contains.is_some() || self.since.is_some() || self.until.is_some()
    }
}

/// `topiq dlq list`.
#[derive(Args)]
pub(crate) struct DlqListArgs {
    #[command(flatten)]
    which: DlqArgs,
    #[command(flatten)]
    filter: DlqFilterArgs,
    /// Records per page (at most 1000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// The next page: the cursor the previous page printed.
    #[arg(long)]
    cursor: Option<String>,
}

/// `topiq dlq redrive`.
#[derive(Args)]
pub(crate) struct DlqRedriveArgs {
    #[command(flatten)]
    which: DlqArgs,
    #[command(flatten)]
    filter: DlqFilterArgs,
    /// Count what would be redriven; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// At most this many messages per second.
    #[arg(long, value_name = "N")]
    rate: Option<u32>,
}

/// Records redriven per call when the command walks the DLQ itself.
const REDRIVE_PAGE: usize = 100;

/// The arguments of a DLQ call: topic, trigger, ids and filters.
fn dlq_call_args(which: &DlqArgs, filter: Option<&DlqFilterArgs>) -> Map<String, Value> {
    let mut args = Map::new();
    args.insert("topic".into(), json!(which.topic));
    if let Some(trigger) = &which.trigger {
        args.insert("trigger".into(), json!(trigger));
    }
    if !which.ids.is_empty() {
        args.insert("ids".into(), json!(which.ids));
    }
    if let Some(filter) = filter {
        for (key, value) in [
            ("error_contains", &filter.error_contains),
            ("since", &filter.since),
            ("until", &filter.until),
        ] {
            if let Some(value) = value {
                args.insert(key.into(), json!(value));
            }
        }
    }
    args
}

/// `paused` when `row` (a trigger or a schedule) says it is paused, `otherwise` when not.
pub(crate) fn paused_or(row: &Value, otherwise: &'static str) -> &'static str {
    if row["paused"] == json!(true) {
        "paused"
    } else {
        otherwise
    }
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

fn where_(which: &DlqArgs) -> String {
    match &which.trigger {
        Some(trigger) => format!("{} (trigger {trigger})", which.topic),
        None => which.topic.clone(),
    }
}

/// Errors of the operator commands: the API's, or bad input on the command line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Input(String),
}

pub(crate) async fn enqueue(api: &ApiArgs, args: EnqueueArgs) -> Result<(), CommandError> {
    let text = if args.data == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|err| CommandError::Input(format!("cannot read standard input: {err}")))?;
        text
    } else {
        args.data.clone()
    };
    let data: Value = serde_json::from_str(&text).map_err(|err| {
        CommandError::Input(format!(
            "the message is not JSON ({err}); quote it for the shell, such as '{{\"to\": \"a@b.c\"}}'"
        ))
    })?;
    let mut call = json!({"topic": args.topic, "data": data});
    for (key, value) in [
        ("idempotency_key", &args.idempotency_key),
        ("delay", &args.delay),
        ("run_at", &args.run_at),
    ] {
        if let Some(value) = value {
            call[key] = json!(value);
        }
    }
    if let Some(priority) = args.priority {
        call["priority"] = json!(priority);
    }
    let result = api.client()?.call("queue.enqueue", call).await?;
    api.show(&result, |result| {
        let id = result["message_id"].as_str().unwrap_or_default();
        if result["duplicate"].as_bool() == Some(true) {
            println!("duplicate: {id} was enqueued with this key; nothing enqueued");
        } else {
            println!("enqueued {id} to {}", args.topic);
        }
    });
    Ok(())
}

pub(crate) async fn dlq(api: &ApiArgs, command: DlqCommand) -> Result<(), CommandError> {
    let client = api.client()?;
    match command {
        DlqCommand::Count(which) => {
            let result = client
                .call(
                    "queue.dlq_count",
                    Value::Object(dlq_call_args(&which, None)),
                )
                .await?;
            api.show(&result, |result| {
                println!(
                    "{} in the DLQ of {}",
                    result["count"].as_u64().unwrap_or_default(),
                    where_(&which)
                );
            });
        }
        DlqCommand::List(list) => {
            let mut args = dlq_call_args(&list.which, Some(&list.filter));
            args.insert("limit".into(), json!(list.limit));
            if let Some(cursor) = &list.cursor {
                args.insert("cursor".into(), json!(cursor));
            }
            let result = client.call("queue.dlq_list", Value::Object(args)).await?;
            api.show(&result, print_records);
        }
        DlqCommand::Redrive(redrive) => redrive_command(api, &client, redrive).await?,
        DlqCommand::Purge(DlqPurgeArgs { which, all }) => {
            if which.ids.is_empty() && !all {
                return Err(CommandError::Input(format!(
                    "purge without --id deletes every record in the DLQ of {}: pass --all to confirm, or choose records with --id",
                    where_(&which)
                )));
            }
            let result = client
                .call(
                    "queue.dlq_purge",
                    Value::Object(dlq_call_args(&which, None)),
                )
                .await?;
            api.show(&result, |result| {
                println!(
                    "purged {} from the DLQ of {}",
                    result["purged"].as_u64().unwrap_or_default(),
                    where_(&which)
                );
            });
        }
    }
    Ok(())
}

fn print_records(page: &Value) {
    let records = page["messages"].as_array().cloned().unwrap_or_default();
    if records.is_empty() {
        println!("no records");
    }
    for record in &records {
        let text = |key: &str| record[key].as_str().unwrap_or_default().to_owned();
        let error: String = record["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(120)
            .collect();
        println!(
            "{}  trigger {}  attempts {}  last failed {}\n    {}: {error}\n    data: {}",
            text("id"),
            text("trigger"),
            record["attempts"],
            text("last_failed_at"),
            record["error"]["kind"].as_str().unwrap_or("error"),
            record["data"]
        );
    }
    if let Some(cursor) = page["next_cursor"].as_str() {
        println!("more: --cursor {cursor}");
    }
}

/// A redrive: a dry run is one call. Otherwise the records to redrive are fixed first (the
/// ids given, or those matching the filters now, listed with the trigger each failed on),
/// then redriven a page of one trigger at a time, so a message that fails again meanwhile is
/// not redriven twice by one command, and each call stays short (the server takes ids of one
/// trigger as given, without reading the DLQ).
async fn redrive_command(
    api: &ApiArgs,
    client: &ApiClient,
    redrive: DlqRedriveArgs,
) -> Result<(), CommandError> {
    let base = dlq_call_args(&redrive.which, Some(&redrive.filter));
    if redrive.dry_run {
        return dry_run_redrive(api, client, &redrive, base).await;
    }
    let records = match &redrive.which.trigger {
        // Ids of one trigger need no listing.
        Some(trigger) if !redrive.which.ids.is_empty() && !redrive.filter.any() => redrive
            .which
            .ids
            .iter()
            .map(|id| (trigger.clone(), id.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        _ => matching_records(client, &base).await?,
    };
    let total = records.len();
    let progress = progress_bar(total as u64, api.json);
    let mut redriven = 0u64;
    for (trigger, ids) in pages_by_trigger(&records) {
        let mut args = Map::new();
        args.insert("topic".into(), json!(redrive.which.topic));
        args.insert("trigger".into(), json!(trigger));
        args.insert("ids".into(), json!(ids));
        if let Some(rate) = redrive.rate {
            args.insert("rate_per_sec".into(), json!(rate));
        }
        let result = match client.call("queue.redrive_dlq", Value::Object(args)).await {
            Ok(result) => result,
            Err(err) => {
                progress.abandon();
                return Err(CommandError::Input(format!(
                    "redrove {redriven} of {total} before this failed: {err}"
                )));
            }
        };
        redriven += result["redriven"].as_u64().unwrap_or_default();
        progress.inc(ids.len() as u64);
        if progress.is_hidden() && !api.json {
            eprintln!("redrive: {}/{total} records", progress.position());
        }
    }
    progress.finish_and_clear();
    api.show(&json!({ "redriven": redriven }), |_| {
        println!(
            "redrove {redriven} from the DLQ of {}",
            where_(&redrive.which)
        );
    });
    Ok(())
}

/// A dry run: one call that counts what a redrive would send back.
async fn dry_run_redrive(
    api: &ApiArgs,
    client: &ApiClient,
    redrive: &DlqRedriveArgs,
    mut args: Map<String, Value>,
) -> Result<(), CommandError> {
    args.insert("dry_run".into(), json!(true));
    let result = client
        .call("queue.redrive_dlq", Value::Object(args))
        .await?;
    api.show(&result, |result| {
        println!(
            "would redrive {} from the DLQ of {}",
            result["would_redrive"].as_u64().unwrap_or_default(),
            where_(&redrive.which)
        );
    });
    Ok(())
}

/// `records` (grouped by trigger) in pages of one trigger and at most `REDRIVE_PAGE` ids.
fn pages_by_trigger(records: &[(String, String)]) -> Vec<(&str, Vec<&str>)> {
    let mut pages: Vec<(&str, Vec<&str>)> = Vec::new();
    for (trigger, id) in records {
        match pages.last_mut() {
            Some((page_trigger, ids)) if *page_trigger == trigger && ids.len() < REDRIVE_PAGE => {
                ids.push(id);
            }
            _ => pages.push((trigger, vec![id])),
        }
    }
    pages
}

/// Every (trigger, id) record in the DLQ matching `base` now, each once, grouped by trigger.
async fn matching_records(
    client: &ApiClient,
    base: &Map<String, Value>,
) -> Result<Vec<(String, String)>, ClientError> {
    let mut records = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = base.clone();
        args.insert("limit".into(), json!(1000));
        if let Some(cursor) = &cursor {
            args.insert("cursor".into(), json!(cursor));
        }
        let page = client.call("queue.dlq_list", Value::Object(args)).await?;
        for record in page["messages"].as_array().into_iter().flatten() {
            if let (Some(trigger), Some(id)) = (record["trigger"].as_str(), record["id"].as_str()) {
                records.insert((trigger.to_owned(), id.to_owned()));
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(records.into_iter().collect()),
        }
    }
}

/// A bar on a terminal; hidden otherwise (the caller then prints lines).
fn progress_bar(total: u64, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("redrive {bar:40} {pos}/{len} records ({per_sec}, {eta} left)")
    {
        bar.set_style(style);
    }
    bar
}

pub(crate) async fn stats(api: &ApiArgs, topic: Option<String>) -> Result<(), CommandError> {
    let args = match &topic {
        Some(topic) => json!({ "topic": topic }),
        None => json!({}),
    };
    let result = api.client()?.call("queue.stats", args).await?;
    if api.json {
        print_json(&result);
        return Ok(());
    }
    println!(
        "{:<24} {:<20} {:>8} {:>9} {:>10} {:>7} {:>6} {:>10} {:>9} {:>9} {:>8}",
        "topic",
        "trigger",
        "waiting",
        "in_flight",
        "succeeded",
        "failed",
        "dlq",
        "per_minute",
        "p50_ms",
        "p99_ms",
        "state"
    );
    for row in result["triggers"].as_array().into_iter().flatten() {
        let number = |key: &str| row[key].as_u64().unwrap_or_default();
        let millis = |key: &str| {
            row[key]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.3}"))
        };
        let state = paused_or(row, "running");
        println!(
            "{:<24} {:<20} {:>8} {:>9} {:>10} {:>7} {:>6} {:>10} {:>9} {:>9} {:>8}",
            row["topic"].as_str().unwrap_or_default(),
            row["trigger"].as_str().unwrap_or_default(),
            number("waiting"),
            number("in_flight"),
            number("succeeded"),
            number("failed"),
            number("dlq"),
            number("per_minute"),
            millis("handler_p50_ms"),
            millis("handler_p99_ms"),
            state
        );
    }
    Ok(())
}
