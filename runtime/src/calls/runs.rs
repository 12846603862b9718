//! `queue.run_get`, `run_list`, `run_cancel`, `run_replay` and `run_progress`: what happened
//! to a message on its triggers, and what an operator or a handler does to a run.

use serde::Deserialize;
use serde_json::{Value, json};
use topiq_adapter::{MessageId, NewMessage, SubscriptionKey, Timestamp};
use topiq_runs::{Change, Origin, Run, RunEvent, RunKey, RunPage, RunQuery, StoreError};

use super::{CallError, parse_args, trigger};
use crate::module::QueueModule;

/// Arguments of `queue.run_get`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The message's id.
    pub id: String,
    /// The trigger; without it, the message's run on every trigger.
    #[serde(default)]
    pub trigger: Option<String>,
}

/// Arguments of `queue.run_replay`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The message's id.
    pub id: String,
    /// The trigger (needed when the message has runs on several).
    #[serde(default)]
    pub trigger: Option<String>,
    /// The data of the new message; the run's own data when absent.
    #[serde(default)]
    pub data: Option<Value>,
}

/// Arguments of `queue.run_progress`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressRequest {
    /// The message's id.
    pub id: String,
    /// The trigger whose handler reports.
    pub trigger: String,
    /// Any JSON value; the run keeps the last one.
    pub progress: Value,
}

impl QueueModule {
    /// Runs the `queue.run_*` call `name` with JSON `args`.
    pub(super) async fn call_runs(&self, name: &str, args: Value) -> Result<Value, CallError> {
        match name {
            "queue.run_get" => {
                let runs = self.run_get(&parse_args(name, args)?).await?;
                Ok(json!({ "runs": runs }))
            }
            "queue.run_list" => {
                let page = self.run_list(&parse_args(name, args)?).await?;
                Ok(json!({ "runs": page.runs, "next_cursor": page.next_cursor }))
            }
            "queue.run_cancel" => {
                let cancelled = self.run_cancel(&parse_args(name, args)?).await?;
                Ok(json!({ "cancelled": cancelled }))
            }
            "queue.run_replay" => {
                let message_id = self.run_replay(&parse_args(name, args)?).await?;
                Ok(json!({ "message_id": message_id }))
            }
            "queue.run_progress" => {
                self.run_progress(&parse_args(name, args)?).await?;
                Ok(json!({}))
            }
            _ => Err(CallError::UnknownCall {
                name: name.to_owned(),
            }),
        }
    }

    /// `queue.run_get`: the message's run on `trigger`, or on every trigger; an id with no
    /// run is `unknown_run`. Shows every run event this process recorded before the call.
    pub async fn run_get(&self, request: &RunRequest) -> Result<Vec<Run>, CallError> {
        let id = MessageId::from_string(&request.id);
        let trigger = trigger(request.trigger.as_deref())?;
        self.runs().recorder().flush().await;
        let runs = self.runs().store().get(&id, trigger.as_ref()).await?;
        if runs.is_empty() {
            return Err(CallError::UnknownRun {
                id: request.id.clone(),
                trigger: request.trigger.clone(),
            });
        }
        Ok(runs)
    }

    /// `queue.run_list`: a page of runs, newest first; its arguments are the [`RunQuery`]'s
    /// fields (`state` one of `queued`, `running`, `dead_lettered`, ...; times in RFC 3339).
    pub async fn run_list(&self, query: &RunQuery) -> Result<RunPage, CallError> {
        self.runs().recorder().flush().await;
        Ok(self.runs().store().list(query).await?)
    }

    /// `queue.run_cancel`: cancels the run on `trigger` (or every unfinished run of the
    /// message): a waiting run is never handed to its handler, a running one is stopped.
    /// Returns how many runs were cancelled; a finished run is `run_finished`.
    pub async fn run_cancel(&self, request: &RunRequest) -> Result<u64, CallError> {
        let runs = self.run_get(request).await?;
        let open: Vec<&Run> = runs.iter().filter(|run| !run.state.is_finished()).collect();
        if open.is_empty() {
            return Err(finished(&runs[0]));
        }
        let now = Timestamp::now();
        let events: Vec<RunEvent> = open
            .iter()
            .map(|run| RunEvent {
                key: run.key(),
                at: now,
                change: Change::CancelRequested,
            })
            .collect();
        let after = self.runs().store().apply(&events).await?;
        let mut cancelled = 0;
        for run in &after {
            if run.cancel_requested_at.is_some() {
                self.runs().cancels().cancel(&run.key());
                cancelled += 1;
            }
        }
        if cancelled == 0 {
            return Err(finished(&after[0]));
        }
        tracing::info!(id = %request.id, trigger = ?request.trigger, cancelled, "runs cancelled");
        Ok(cancelled)
    }

    /// `queue.run_replay`: a new message with the run's data (or `data`), delivered to the
    /// run's trigger only, whose run records `replay_of`; the run must be finished.
    pub async fn run_replay(&self, request: &ReplayRequest) -> Result<MessageId, CallError> {
        let lookup = RunRequest {
            id: request.id.clone(),
            trigger: request.trigger.clone(),
        };
        let run = self.one_run(&lookup).await?;
        if !run.state.is_finished() {
            return Err(CallError::RunState {
                message: format!(
                    "the run of {} on {} is {}: replay a finished run (or cancel this one first)",
                    run.id, run.trigger, run.state
                ),
            });
        }
        let data = match &request.data {
            Some(data) => std::sync::Arc::new(data.clone()),
            None => {
                let data = run.data.value().map_err(|source| StoreError::Corrupt {
                    key: run.key().to_string(),
                    source,
                })?;
                std::sync::Arc::new(data)
            }
        };
        let origin = Origin {
            topic: run.topic.clone(),
            data: std::sync::Arc::clone(&data),
            enqueued_at: Timestamp::now(),
            run_at: None,
            replay_of: Some(run.id.clone()),
            idempotency_key: None,
        };
        let key = SubscriptionKey::new(run.topic.clone(), run.trigger.clone());
        // On a topic in per-key order, its key's partition.
        let message = self.keyed(&run.topic, NewMessage::new(data));
        let receipt = self.adapter().publish_to(&key, message).await?;
        let replay = RunEvent {
            key: RunKey::new(receipt.message_id.clone(), run.trigger.clone()),
            at: origin.enqueued_at,
            change: Change::Enqueued(origin),
        };
        self.runs().recorder().record([replay]).await;
        tracing::info!(id = %run.id, trigger = %run.trigger, replay = %receipt.message_id, "run replayed");
        Ok(receipt.message_id)
    }

    /// `queue.run_progress`: keeps `progress` on the run (a handler reporting while it runs).
    pub async fn run_progress(&self, request: &ProgressRequest) -> Result<(), CallError> {
        let lookup = RunRequest {
            id: request.id.clone(),
            trigger: Some(request.trigger.clone()),
        };
        let run = self.one_run(&lookup).await?;
        let event = RunEvent {
            key: run.key(),
            at: Timestamp::now(),
            change: Change::Progress(request.progress.clone()),
        };
        let _ = self.runs().recorder().record_stored([event]).await;
        Ok(())
    }

    /// The one run `request` names: with no trigger, the message must have one run.
    async fn one_run(&self, request: &RunRequest) -> Result<Run, CallError> {
        let mut runs = self.run_get(request).await?;
        if runs.len() > 1 {
            let triggers: Vec<&str> = runs.iter().map(|run| run.trigger.as_str()).collect();
            return Err(CallError::invalid(format!(
                "message {} has runs on the triggers {}: name one with `trigger`",
                request.id,
                triggers.join(", ")
            )));
        }
        Ok(runs.remove(0))
    }
}

/// The error for a run that is already finished.
fn finished(run: &Run) -> CallError {
    CallError::RunState {
        message: format!(
            "the run of {} on {} already finished ({}): nothing to cancel",
            run.id, run.trigger, run.state
        ),
    }
}
