//! The `queue.*` call surface: every call takes and returns JSON, callable by name
//! ([`QueueModule::call`]) or through typed methods: `enqueue.rs` (`queue.enqueue`,
//! `queue.enqueue_batch`), `dlq.rs` (`queue.dlq_count`, `dlq_list`, `redrive_dlq`, `dlq_purge`)
//! `stats.rs` (`queue.stats`), `runs.rs` (`queue.run_get`, `run_list`, `run_cancel`,
//! `run_replay`, `run_progress`), `triggers.rs` (`queue.trigger_pause`, `trigger_resume`,
//! `trigger_list`) and `schedules.rs` (`queue.schedule_create`, `schedule_list`,
//! `schedule_pause`, `schedule_resume`, `schedule_delete`, `schedule_fire`).

mod dlq;
mod enqueue;
mod runs;
mod schedules;
mod stats;
mod triggers;

use serde::Deserialize;
use serde_json::{Value, json};
use topiq_adapter::{Timestamp, TopicName, TriggerName};

use crate::module::QueueModule;

pub use dlq::{DlqProgress, DlqRequest};
use enqueue::EnqueueBatchRequest;
pub use enqueue::{BatchItem, EnqueueRequest, EnqueueResult};
pub use runs::{ProgressRequest, ReplayRequest, RunRequest};
pub use schedules::{ScheduleName, ScheduleRequest, ScheduleView};
pub use stats::{TriggerSample, TriggerStats};
pub use triggers::{TriggerRequest, TriggerSummary};

/// The calls [`QueueModule::call`] knows.
pub const CALLS: &[&str] = &[
    "queue.enqueue",
    "queue.enqueue_batch",
    "queue.dlq_count",
    "queue.dlq_list",
    "queue.redrive_dlq",
    "queue.dlq_purge",
    "queue.stats",
    "queue.run_get",
    "queue.run_list",
    "queue.run_cancel",
    "queue.run_replay",
    "queue.run_progress",
    "queue.trigger_pause",
    "queue.trigger_resume",
    "queue.trigger_list",
    "queue.schedule_create",
    "queue.schedule_list",
    "queue.schedule_pause",
    "queue.schedule_resume",
    "queue.schedule_delete",
    "queue.schedule_fire",
];

/// The most messages in one `queue.enqueue_batch`.
pub const MAX_BATCH: usize = 100;

/// A call that failed; [`CallError::to_json`] is its `{"error": {"code", "message"}}` form.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No call has that name.
    #[error("unknown call {name:?}; known calls: {}", CALLS.join(", "))]
    UnknownCall {
        /// The name asked for.
        name: String,
    },
    /// An argument is missing, unknown or malformed.
    #[error("{message}")]
    InvalidArgument {
        /// What is wrong and what is expected.
        message: String,
    },
    /// The adapter refused the call (bad topic, payload too large, broker down...).
    #[error(transparent)]
    Adapter(#[from] topiq_adapter::Error),
    /// No run of that message (on that trigger) is recorded.
    #[error("no run of message {id:?}{} is recorded (it may be swept, or its trigger records no runs)", trigger.as_ref().map(|t| format!(" on trigger {t:?}")).unwrap_or_default())]
    UnknownRun {
        /// The message id asked for.
        id: String,
        /// The trigger asked for.
        trigger: Option<String>,
    },
    /// No trigger of the config has that name.
    #[error("unknown trigger {name:?}; this config's triggers: {}", known.join(", "))]
    UnknownTrigger {
        /// The name asked for.
        name: String,
        /// The triggers the config declares.
        known: Vec<String>,
    },
    /// No schedule has that name.
    #[error("unknown schedule {name:?}; `queue.schedule_list` lists them")]
    UnknownSchedule {
        /// The name asked for.
        name: String,
    },
    /// The runs store failed.
    #[error(transparent)]
    Runs(#[from] topiq_runs::StoreError),
    /// The run is not in a state the call acts on (cancel a finished run, replay a running
    /// one).
    #[error("{message}")]
    RunState {
        /// What state it is in and what would work.
        message: String,
    },
}

/// What kind of failure a [`CallError`] is: what a transport answers with (the HTTP API's
/// status), where the error's `code` names the exact failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallErrorKind {
    /// The caller's input is wrong (400).
    BadInput,
    /// No such call, topic or trigger (404).
    NotFound,
    /// The body or payload is too large (413).
    TooLarge,
    /// The target is not in a state the call acts on (409).
    Conflict,
    /// The broker cannot be reached now, or the module is closed (503).
    Unavailable,
    /// The broker is full (507).
    BrokerFull,
    /// The broker refused the call (502).
    BrokerRefused,
    /// Anything else (500).
    Other,
}

impl CallError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        CallError::InvalidArgument {
            message: message.into(),
        }
    }

    /// The stable error code: `invalid_topic`, `payload_too_large`, `invalid_argument`,
    /// `unknown_topic`, `unknown_trigger`, `unknown_call`, `broker_unavailable`, ...
    pub fn code(&self) -> &'static str {
        match self {
            CallError::UnknownCall { .. } => "unknown_call",
            CallError::InvalidArgument { .. } => "invalid_argument",
            CallError::Adapter(err) => err.code(),
            CallError::UnknownRun { .. } => "unknown_run",
            CallError::UnknownTrigger { .. } => "unknown_trigger",
            CallError::UnknownSchedule { .. } => "unknown_schedule",
            CallError::RunState { .. } => "run_state",
            CallError::Runs(topiq_runs::StoreError::InvalidQuery(_)) => "invalid_argument",
            CallError::Runs(topiq_runs::StoreError::Unavailable { .. }) => "runs_store_unavailable",
            CallError::Runs(_) => "runs_store_error",
        }
    }

    /// What kind of failure this is, for a transport to answer with (an HTTP status).
    pub fn kind(&self) -> CallErrorKind {
        use topiq_adapter::Error;
        match self {
            CallError::UnknownCall { .. } => CallErrorKind::NotFound,
            CallError::InvalidArgument { .. } => CallErrorKind::BadInput,
            CallError::UnknownRun { .. }
            | CallError::UnknownTrigger { .. }
            | CallError::UnknownSchedule { .. } => CallErrorKind::NotFound,
            CallError::RunState { .. } => CallErrorKind::Conflict,
            CallError::Runs(topiq_runs::StoreError::InvalidQuery(_)) => CallErrorKind::BadInput,
            CallError::Runs(topiq_runs::StoreError::Unavailable { .. }) => {
                CallErrorKind::Unavailable
            }
            CallError::Runs(_) => CallErrorKind::Other,
            CallError::Adapter(err) => match err {
                Error::InvalidTopic { .. }
                | Error::InvalidTrigger { .. }
                | Error::InvalidArgument { .. }
                | Error::Unsupported { .. } => CallErrorKind::BadInput,
                Error::UnknownTopic { .. } | Error::UnknownSubscription { .. } => {
                    CallErrorKind::NotFound
                }
                Error::PayloadTooLarge { .. } => CallErrorKind::TooLarge,
                Error::BrokerUnavailable { .. } | Error::Timeout { .. } | Error::Closed => {
                    CallErrorKind::Unavailable
                }
                Error::BrokerFull { .. } => CallErrorKind::BrokerFull,
                Error::Broker { .. } => CallErrorKind::BrokerRefused,
                _ => CallErrorKind::Other,
            },
        }
    }

    /// `{"error": {"code": ..., "message": ...}}`.
    pub fn to_json(&self) -> Value {
        json!({"error": {"code": self.code(), "message": self.to_string()}})
    }
}

pub(crate) fn parse_args<T: for<'de> Deserialize<'de>>(
    call: &str,
    args: Value,
) -> Result<T, CallError> {
    serde_json::from_value(args).map_err(|err| CallError::invalid(format!("{call}: {err}")))
}

pub(crate) fn topic(name: &str) -> Result<TopicName, CallError> {
    Ok(TopicName::new(name)?)
}

impl QueueModule {
    /// The topic `name`: the configured one's name when it is declared (no check, no copy:
    /// every enqueue comes here), otherwise `name` checked as a topic name.
    pub(crate) fn topic_named(&self, name: &str) -> Result<TopicName, CallError> {
        match self.declared_topic(name) {
            Some(declared) => Ok(declared.clone()),
            None => topic(name),
        }
    }
}

pub(crate) fn trigger(name: Option<&str>) -> Result<Option<TriggerName>, CallError> {
    name.map(TriggerName::new).transpose().map_err(Into::into)
}

pub(crate) fn timestamp(argument: &str, text: &str) -> Result<Timestamp, CallError> {
    text.parse::<Timestamp>().map_err(|err| {
        CallError::invalid(format!(
            "{argument}: {text:?} is not an RFC 3339 time such as \"2026-11-23T10:00:00Z\" ({err})"
        ))
    })
}

impl QueueModule {
    /// Runs the call `name` with JSON `args`; the result is the call's JSON result.
    pub async fn call(&self, name: &str, args: Value) -> Result<Value, CallError> {
        match name {
            "queue.enqueue" => {
                let result = self.enqueue(parse_args(name, args)?).await?;
                Ok(result.to_json())
            }
            "queue.enqueue_batch" => {
                let request: EnqueueBatchRequest = parse_args(name, args)?;
                let results = self.enqueue_batch(&request.topic, request.messages).await?;
                let results: Vec<Value> = results
                    .into_iter()
                    .map(|result| match result {
                        Ok(receipt) => receipt.to_json(),
                        Err(err) => err.to_json(),
                    })
                    .collect();
                Ok(json!({ "results": results }))
            }
            "queue.dlq_count" => {
                let request: DlqRequest = parse_args(name, args)?;
                Ok(json!({ "count": self.dlq_count(&request).await? }))
            }
            "queue.dlq_list" => {
                let request: DlqRequest = parse_args(name, args)?;
                let (messages, next_cursor) = self.dlq_list(&request).await?;
                Ok(json!({ "messages": messages, "next_cursor": next_cursor }))
            }
            "queue.redrive_dlq" => {
                let request: DlqRequest = parse_args(name, args)?;
                let count = self.redrive_dlq(&request).await?;
                Ok(if request.dry_run {
                    json!({ "would_redrive": count })
                } else {
                    json!({ "redriven": count })
                })
            }
            "queue.dlq_purge" => {
                let request: DlqRequest = parse_args(name, args)?;
                Ok(json!({ "purged": self.dlq_purge(&request).await? }))
            }
            "queue.stats" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct StatsRequest {
                    #[serde(default)]
                    topic: Option<String>,
                }
                let request: StatsRequest = parse_args(name, args)?;
                let triggers = self.stats(request.topic.as_deref()).await?;
                Ok(json!({ "triggers": triggers }))
            }
            name if name.starts_with("queue.run_") => self.call_runs(name, args).await,
            name if name.starts_with("queue.trigger_") => self.call_triggers(name, args).await,
            name if name.starts_with("queue.schedule_") => self.call_schedules(name, args).await,
            _ => Err(CallError::UnknownCall {
                name: name.to_owned(),
            }),
        }
    }
}
