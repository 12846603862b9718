//! A run: one message's life on one trigger.

use std::fmt;
use std::sync::Arc;

use crate::data::RunData;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use topiq_adapter::{MessageId, Timestamp, TopicName, TriggerName};

/// What addresses a run: the message and the trigger it is on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunKey {
    /// The message's id (shared by its runs on every trigger of its topic).
    pub message_id: MessageId,
    /// The trigger.
    pub trigger: TriggerName,
}

impl RunKey {
    /// The run of `message_id` on `trigger`.
    pub fn new(message_id: MessageId, trigger: TriggerName) -> Self {
        Self {
            message_id,
            trigger,
        }
    }
}

impl fmt::Display for RunKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.message_id, self.trigger)
    }
}

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Enqueued with a delay or `run_at` that has not come yet.
    Delayed,
    /// Waiting for a consumer.
    Queued,
    /// Its handler is running.
    Running,
    /// Failed an attempt; waiting out the backoff before the next.
    Retrying,
    /// Its handler succeeded.
    Succeeded,
    /// Failed for good: its message is in the trigger's dead-letter queue.
    DeadLettered,
    /// Cancelled: never handed to its handler again.
    Cancelled,
    /// The trigger's condition was false: the handler was not called.
    Filtered,
    /// Reached its trigger after the topic's retention ran out.
    Expired,
}

impl RunState {
    /// Every state, in the order of a run's life.
    pub const ALL: [RunState; 9] = [
        RunState::Delayed,
        RunState::Queued,
        RunState::Running,
        RunState::Retrying,
        RunState::Succeeded,
        RunState::DeadLettered,
        RunState::Cancelled,
        RunState::Filtered,
        RunState::Expired,
    ];

    /// True once nothing more happens to the run (a dead-lettered run comes back only by a
    /// redrive).
    pub fn is_finished(self) -> bool {
        !matches!(
            self,
            RunState::Delayed | RunState::Queued | RunState::Running | RunState::Retrying
        )
    }

    /// True for a finished run that ended well (kept `succeeded_for`); the other finished
    /// ones are kept `failed_for`.
    pub fn is_success(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Filtered)
    }

    /// The state's name, as in JSON and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Delayed => "delayed",
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Retrying => "retrying",
            RunState::Succeeded => "succeeded",
            RunState::DeadLettered => "dead_lettered",
            RunState::Cancelled => "cancelled",
            RunState::Filtered => "filtered",
            RunState::Expired => "expired",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The handler succeeded.
    Succeeded,
    /// The handler returned an error.
    Failed,
    /// The handler ran past its timeout.
    Timeout,
    /// The handler panicked.
    Panicked,
    /// The message's lease ran out before the attempt was settled.
    LeaseExpired,
    /// The message went back to its queue unhandled (shutdown), without spending the attempt.
    Released,
    /// The run was cancelled while its handler ran.
    Cancelled,
}

/// Why an attempt failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// The kind, as in a DLQ record (`handler_error`, `timeout`, `panic`, ...).
    pub kind: String,
    /// What the handler or the runtime said.
    pub message: String,
}

/// One attempt of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// The attempt's number on the broker (1 for the first; counts again from 1 after a
    /// redrive, whose attempts carry a higher `lap`).
    pub number: u32,
    /// How many redrives came before this attempt.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lap: u32,
    /// When the handler was called.
    pub started_at: Timestamp,
    /// When the attempt was settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Milliseconds from start to settlement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// How it ended, once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AttemptOutcome>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    /// The instance that ran it (`host:pid`).
    pub instance: Arc<str>,
    /// The W3C `traceparent` of the handler's span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// A state the run entered, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The state entered.
    pub state: RunState,
    /// When.
    pub at: Timestamp,
}

/// One message's life on one trigger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The message's id.
    pub id: MessageId,
    /// The trigger.
    pub trigger: TriggerName,
    /// The message's topic.
    pub topic: TopicName,
    /// Where the run is.
    pub state: RunState,
    /// The message's data (what a replay sends again), as JSON text.
    pub data: RunData,
    /// When the message was enqueued.
    pub enqueued_at: Timestamp,
    /// When a delayed message is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<Timestamp>,
    /// When a retrying run's next attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// What the handler returned on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The last progress the handler reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Value>,
    /// The run this one replays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<MessageId>,
    /// The idempotency key the message was enqueued with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// When a cancel was asked for, while the run was not finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at: Option<Timestamp>,
    /// Every state the run entered, oldest first.
    pub transitions: Vec<Transition>,
    /// When the run last changed.
    pub updated_at: Timestamp,
    /// When the run finished, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// How many redrives brought the run back from the dead-letter queue.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub laps: u32,
}

impl Run {
    /// The run's key.
    pub fn key(&self) -> RunKey {
        RunKey::new(self.id.clone(), self.trigger.clone())
    }

    /// Every attempt's error message, one per line (what `error_contains` searches).
    pub fn error_text(&self) -> String {
        let messages: Vec<&str> = self
            .attempts
            .iter()
            .filter_map(|attempt| attempt.error.as_ref())
            .map(|error| error.message.as_str())
            .collect();
        messages.join("\n")
    }

    /// The latest attempt, if any.
    pub fn last_attempt(&self) -> Option<&Attempt> {
        self.attempts.last()
    }
}
