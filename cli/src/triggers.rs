//! `topiq triggers list|pause|resume`: see which triggers run, and stop one taking new
//! messages on every instance (or let it go on), through a running `topiq run`'s API.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::operator::{ApiArgs, CommandError, paused_or};

/// `topiq triggers`.
#[derive(Subcommand)]
pub(crate) enum TriggersCommand {
    /// List the config's triggers: topic, function, and whether each is paused.
    ///
    /// Example: topiq triggers list
    List,
    /// Pause a trigger: within a second no instance takes new messages for it (running calls
    /// finish, messages keep accumulating); survives restarts.
    ///
    /// Example: topiq triggers pause send-email
    Pause {
        /// The trigger's name.
        trigger: String,
    },
    /// Resume a paused trigger on every instance.
    ///
    /// Example: topiq triggers resume send-email
    Resume {
        /// The trigger's name.
        trigger: String,
    },
}

/// Runs `topiq triggers ...`.
pub(crate) async fn triggers(api: &ApiArgs, command: TriggersCommand) -> Result<(), CommandError> {
    let client = api.client()?;
    match command {
        TriggersCommand::List => {
            let result = client.call("queue.trigger_list", json!({})).await?;
            api.show(&result, print_list);
        }
        TriggersCommand::Pause { trigger } => {
            let result = client
                .call("queue.trigger_pause", json!({ "trigger": trigger }))
                .await?;
            api.show(&result, |_| println!("paused {trigger}"));
        }
        TriggersCommand::Resume { trigger } => {
            let result = client
                .call("queue.trigger_resume", json!({ "trigger": trigger }))
                .await?;
            api.show(&result, |_| println!("resumed {trigger}"));
        }
    }
    Ok(())
}

fn print_list(result: &Value) {
    println!("{:<28} {:<28} {:<24} STATE", "TRIGGER", "TOPIC", "FUNCTION");
    for trigger in result["triggers"].as_array().into_iter().flatten() {
        let text = |key: &str| trigger[key].as_str().unwrap_or_default().to_owned();
        let state = paused_or(trigger, "running");
        println!(
            "{:<28} {:<28} {:<24} {state}",
            text("trigger"),
            text("topic"),
            text("function")
        );
    }
}
