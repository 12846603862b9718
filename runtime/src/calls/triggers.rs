//! `queue.trigger_pause`, `trigger_resume` and `trigger_list`: an operator stops a trigger
//! taking new messages on every instance (during an incident, say) and lets it go on.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use topiq_adapter::{TopicName, TriggerName};

use super::{CallError, parse_args};
use crate::module::QueueModule;

/// Arguments of `queue.trigger_pause` and `queue.trigger_resume`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    /// The trigger's name.
    pub trigger: String,
}

/// One trigger of `queue.trigger_list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TriggerSummary {
    /// The trigger's name.
    pub trigger: TriggerName,
    /// The topic it takes messages from.
    pub topic: TopicName,
    /// The function it calls.
    pub function: String,
    /// True while it is paused.
    pub paused: bool,
}

impl QueueModule {
    /// Runs the `queue.trigger_*` call `name` with JSON `args`.
    pub(super) async fn call_triggers(&self, name: &str, args: Value) -> Result<Value, CallError> {
        match name {
            "queue.trigger_pause" => {
                let request: TriggerRequest = parse_args(name, args)?;
                self.trigger_pause(&request.trigger).await?;
                Ok(json!({}))
            }
            "queue.trigger_resume" => {
                let request: TriggerRequest = parse_args(name, args)?;
                self.trigger_resume(&request.trigger).await?;
                Ok(json!({}))
            }
            "queue.trigger_list" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Nothing {}
                let Nothing {} = parse_args(name, args)?;
                Ok(json!({ "triggers": self.trigger_list() }))
            }
            _ => Err(CallError::UnknownCall {
                name: name.to_owned(),
            }),
        }
    }

    /// `queue.trigger_pause`: within a second no instance takes new messages for `trigger`
    /// (running calls finish; messages keep accumulating), until it is resumed. Survives
    /// restarts: the pause is kept in the runs store.
    pub async fn trigger_pause(&self, trigger: &str) -> Result<(), CallError> {
        let trigger = self.known_trigger(trigger)?;
        let store = self.runs().store();
        self.runs().pauses().pause(store, &trigger).await?;
        tracing::info!(%trigger, "trigger paused by a call");
        Ok(())
    }

    /// `queue.trigger_resume`: every instance takes messages for `trigger` again.
    pub async fn trigger_resume(&self, trigger: &str) -> Result<(), CallError> {
        let trigger = self.known_trigger(trigger)?;
        let store = self.runs().store();
        self.runs().pauses().resume(store, &trigger).await?;
        tracing::info!(%trigger, "trigger resumed by a call");
        Ok(())
    }

    /// `queue.trigger_list`: the config's triggers, each with whether it is paused.
    pub fn trigger_list(&self) -> Vec<TriggerSummary> {
        let pauses = self.runs().pauses();
        self.triggers()
            .iter()
            .map(|trigger| TriggerSummary {
                trigger: trigger.settings.name.clone(),
                topic: trigger.settings.topic.clone(),
                function: trigger.settings.function.clone(),
                paused: pauses.is_paused(&trigger.settings.name),
            })
            .collect()
    }

    /// `name` when the config declares a trigger of that name; `unknown_trigger` otherwise.
    fn known_trigger(&self, name: &str) -> Result<TriggerName, CallError> {
        let found = self
            .triggers()
            .iter()
            .find(|trigger| trigger.settings.name.as_str() == name);
        match found {
            Some(trigger) => Ok(trigger.settings.name.clone()),
            None => Err(CallError::UnknownTrigger {
                name: name.to_owned(),
                known: self
                    .triggers()
                    .iter()
                    .map(|trigger| trigger.settings.name.to_string())
                    .collect(),
            }),
        }
    }
}
