//! `topiq schedules list|create|pause|resume|delete|fire`: the schedules every instance fires,
//! through a running `topiq run`'s API.

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::operator::{ApiArgs, CommandError, paused_or};

/// `topiq schedules`.
#[derive(Subcommand)]
pub(crate) enum SchedulesCommand {
    /// List the schedules: cadence, topic, state, last and next tick.
    ///
    /// Example: topiq schedules list
    List,
    /// Create a schedule (or replace one's definition): it fires from its next tick.
    ///
    /// Example: topiq schedules create nightly-report --cron "0 2 * * *" --timezone Europe/Berlin --topic reports.generate --data '{"kind": "nightly"}'
    Create(CreateArgs),
    /// Pause a schedule: no instance fires it until it is resumed.
    ///
    /// Example: topiq schedules pause nightly-report
    Pause {
        /// The schedule's name.
        name: String,
    },
    /// Resume a paused schedule (ticks missed meanwhile follow its catch_up).
    ///
    /// Example: topiq schedules resume nightly-report
    Resume {
        /// The schedule's name.
        name: String,
    },
    /// Delete a schedule (one the config declares comes back at the next start).
    ///
    /// Example: topiq schedules delete nightly-report
    Delete {
        /// The schedule's name.
        name: String,
    },
    /// Enqueue a schedule's message now, besides its ticks.
    ///
    /// Example: topiq schedules fire nightly-report
    Fire {
        /// The schedule's name.
        name: String,
    },
}

/// `topiq schedules create`.
#[derive(Args)]
pub(crate) struct CreateArgs {
    /// The schedule's name (letters, digits, `.`, `_`, `-`).
    name: String,
    /// The topic each tick enqueues to.
    #[arg(long)]
    topic: String,
    /// A 5-field cron expression, such as "0 2 * * *".
    #[arg(long, conflicts_with = "every", required_unless_present = "every")]
    cron: Option<String>,
    /// An interval, such as 30s or 5m.
    #[arg(long)]
    every: Option<String>,
    /// The IANA time zone of --cron (default UTC).
    #[arg(long)]
    timezone: Option<String>,
    /// Each tick's data as JSON (default null).
    #[arg(long, value_name = "JSON")]
    data: Option<String>,
    /// After downtime: none (skip missed ticks) or last (fire the latest missed once).
    #[arg(long, default_value = "none")]
    catch_up: String,
}

impl CreateArgs {
    fn call_args(&self) -> Result<Value, CommandError> {
        let mut args = Map::new();
        args.insert("name".into(), json!(self.name));
        args.insert("topic".into(), json!(self.topic));
        args.insert("catch_up".into(), json!(self.catch_up));
        let optional = [
            ("cron", &self.cron),
            ("every", &self.every),
            ("timezone", &self.timezone),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                args.insert(key.into(), json!(value));
            }
        }
        if let Some(text) = &self.data {
            let data: Value = serde_json::from_str(text)
                .map_err(|err| CommandError::Input(format!("--data is not JSON: {err}")))?;
            args.insert("data".into(), data);
        }
        Ok(Value::Object(args))
    }
}

/// Runs `topiq schedules ...`.
pub(crate) async fn schedules(
    api: &ApiArgs,
    command: SchedulesCommand,
) -> Result<(), CommandError> {
    let client = api.client()?;
    let (call, args, done) = match command {
        SchedulesCommand::List => {
            let result = client.call("queue.schedule_list", json!({})).await?;
            api.show(&result, print_list);
            return Ok(());
        }
        SchedulesCommand::Create(create) => {
            let result = client
                .call("queue.schedule_create", create.call_args()?)
                .await?;
            api.show(&result, |result| {
                let next = text(&result["schedule"]["next_tick"]);
                println!("created {}; next tick {next}", create.name);
            });
            return Ok(());
        }
        SchedulesCommand::Pause { name } => ("queue.schedule_pause", name, "paused"),
        SchedulesCommand::Resume { name } => ("queue.schedule_resume", name, "resumed"),
        SchedulesCommand::Delete { name } => ("queue.schedule_delete", name, "deleted"),
        SchedulesCommand::Fire { name } => ("queue.schedule_fire", name, "fired"),
    };
    let result = client.call(call, json!({ "name": args })).await?;
    api.show(&result, |result| match result["message_id"].as_str() {
        Some(id) => println!("{done} {args}: message {id}"),
        None => println!("{done} {args}"),
    });
    Ok(())
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

fn print_list(result: &Value) {
    println!(
        "{:<24} {:<22} {:<24} {:<8} {:<22} NEXT",
        "NAME", "WHEN", "TOPIC", "STATE", "LAST"
    );
    for schedule in result["schedules"].as_array().into_iter().flatten() {
        let when = match (schedule["cron"].as_str(), schedule["every"].as_str()) {
            (Some(cron), _) => {
                let zone = schedule["timezone"].as_str().unwrap_or("UTC");
                format!("{cron} {zone}")
            }
            (None, Some(every)) => format!("every {every}"),
            (None, None) => "-".to_owned(),
        };
        let state = paused_or(schedule, "active");
        println!(
            "{:<24} {:<22} {:<24} {:<8} {:<22} {}",
            text(&schedule["name"]),
            when,
            text(&schedule["topic"]),
            state,
            text(&schedule["last_tick"]),
            text(&schedule["next_tick"])
        );
    }
}
