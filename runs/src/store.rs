//! The runs store's contract, and what a listing asks for.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use topiq_adapter::{MessageId, Timestamp, TopicName, TriggerName};

use crate::control::ControlStore;
use crate::event::RunEvent;
use crate::model::{Run, RunKey, RunState};

/// The most runs one listing returns.
pub const MAX_RUN_PAGE: usize = 500;

/// Why the runs store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot be reached or refused the operation; the events were not applied.
    #[error("the runs store is unavailable ({operation}): {source}")]
    Unavailable {
        /// What was being done.
        operation: &'static str,
        /// The database's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored run cannot be read back (written by a newer topiq, or altered by hand).
    #[error("the stored run {key} cannot be read: {source}")]
    Corrupt {
        /// The run.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A query's argument is out of range; the message names it.
    #[error("{0}")]
    InvalidQuery(String),
    /// The store's address or schema is not usable.
    #[error("the runs store cannot be opened: {0}")]
    Open(String),
}

/// Which runs a listing returns, newest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunQuery {
    /// Only runs of this topic.
    #[serde(default)]
    pub topic: Option<TopicName>,
    /// Only runs on this trigger.
    #[serde(default)]
    pub trigger: Option<TriggerName>,
    /// Only runs in this state.
    #[serde(default)]
    pub state: Option<RunState>,
    /// Only runs enqueued at or after this time.
    #[serde(default)]
    pub since: Option<Timestamp>,
    /// Only runs enqueued before this time.
    #[serde(default)]
    pub until: Option<Timestamp>,
    /// Only runs with an attempt error containing this text (case-insensitive).
    #[serde(default)]
    pub error_contains: Option<String>,
    /// Only runs whose record holds this text anywhere (case-insensitive): its id,
    /// idempotency key, data, result or errors, as the record's JSON text (a `"` in the data
    /// reads `\"` there). For an operator's search: every run is read.
    #[serde(default)]
    pub contains: Option<String>,
    /// The most runs to return (default 50, at most [`MAX_RUN_PAGE`]).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Where the previous page ended (its `next_cursor`).
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Where a page of runs ended: the last run's enqueue time and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The last run's enqueue time, in milliseconds since the epoch.
    pub enqueued_ms: i64,
    /// The last run's message id.
    pub message_id: String,
    /// The last run's trigger.
    pub trigger: String,
}

impl Cursor {
    /// The cursor after `run`.
    pub fn after(run: &Run) -> Self {
        Self {
            enqueued_ms: run.enqueued_at.as_millisecond(),
            message_id: run.id.to_string(),
            trigger: run.trigger.to_string(),
        }
    }

    /// As text for `next_cursor`.
    pub fn encode(&self) -> String {
        format!("{}/{}/{}", self.enqueued_ms, self.trigger, self.message_id)
    }

    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '/');
        let enqueued_ms = parts.next()?.parse().ok()?;
        let trigger = parts.next()?.to_owned();
        let message_id = parts.next()?.to_owned();
        Some(Self {
            enqueued_ms,
            message_id,
            trigger,
        })
    }

    /// True when `run` comes after this cursor in a newest-first listing.
    pub fn precedes(&self, run: &Run) -> bool {
        let run_key = (
            run.enqueued_at.as_millisecond(),
            run.id.to_string(),
            run.trigger.to_string(),
        );
        run_key
            < (
                self.enqueued_ms,
                self.message_id.clone(),
                self.trigger.clone(),
            )
    }
}

impl RunQuery {
    /// The page size and the cursor; the error names the bad argument.
    pub fn validate(&self) -> Result<(usize, Option<Cursor>), StoreError> {
        let limit = self.limit.unwrap_or(50);
        if limit == 0 || limit > MAX_RUN_PAGE {
            return Err(StoreError::InvalidQuery(format!(
                "limit must be 1 to {MAX_RUN_PAGE}, got {limit}"
            )));
        }
        let cursor = match &self.cursor {
            None => None,
            Some(text) => Some(Cursor::decode(text).ok_or_else(|| {
                StoreError::InvalidQuery(format!(
                    "cursor {text:?} is not one a listing returned; leave it out for the first page"
                ))
            })?),
        };
        Ok((limit, cursor))
    }

    /// True when `run` passes every filter but the cursor.
    pub fn matches(&self, run: &Run) -> bool {
        let error_matches = self.error_contains.as_ref().is_none_or(|needle| {
            run.error_text()
                .to_lowercase()
                .contains(&needle.to_lowercase())
        });
        self.topic.as_ref().is_none_or(|topic| &run.topic == topic)
            && self
                .trigger
                .as_ref()
                .is_none_or(|trigger| &run.trigger == trigger)
            && self.state.is_none_or(|state| run.state == state)
            && self.since.is_none_or(|since| run.enqueued_at >= since)
            && self.until.is_none_or(|until| run.enqueued_at < until)
            && error_matches
            && self.contains.as_ref().is_none_or(|needle| {
                serde_json::to_string(run)
                    .unwrap_or_default()
                    .to_lowercase()
                    .contains(&needle.to_lowercase())
            })
    }
}

/// A page of runs, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunPage {
    /// The runs.
    pub runs: Vec<Run>,
    /// The cursor of the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// How long finished runs are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Runs that finished well ([`RunState::is_success`]) finished before this are swept.
    pub succeeded_before: Timestamp,
    /// Every other finished run that finished before this is swept.
    pub failed_before: Timestamp,
}

/// Where runs are kept: memory, SQLite or PostgreSQL; with them, what operators set that every
/// instance follows (its [`ControlStore`] half).
///
/// A store is shared by every instance that records into it: [`apply`](Self::apply) is
/// atomic per call and safe against other instances applying events to the same runs.
pub trait RunStore: ControlStore {
    /// Applies `events` in order, creating runs as needed, all or nothing; returns each run
    /// the events touched, as it is after them (in the order each first appears).
    fn apply<'a>(&'a self, events: &'a [RunEvent]) -> BoxFuture<'a, Result<Vec<Run>, StoreError>>;

    /// [`apply`](Self::apply) without the touched runs (what the recorder uses: returning
    /// them would copy each run for nothing).
    fn write<'a>(&'a self, events: &'a [RunEvent]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// A store in this process's memory applies `events` here and now and returns how many
    /// it applied: the recorder then writes each event as it comes, since there is no round
    /// trip to batch and nothing to wait for. A store behind a connection returns `None`,
    /// taking nothing from `events` (the default), and is written through
    /// [`write`](Self::write).
    fn write_in_process(&self, events: &mut dyn Iterator<Item = RunEvent>) -> Option<u64> {
        let _ = events;
        None
    }

    /// The runs of message `id`: on `trigger`, or on every trigger.
    fn get<'a>(
        &'a self,
        id: &'a MessageId,
        trigger: Option<&'a TriggerName>,
    ) -> BoxFuture<'a, Result<Vec<Run>, StoreError>>;

    /// A page of the runs `query` selects, newest first.
    fn list<'a>(&'a self, query: &'a RunQuery) -> BoxFuture<'a, Result<RunPage, StoreError>>;

    /// The runs whose cancel was asked for at or after `since`.
    fn cancels_since(&self, since: Timestamp) -> BoxFuture<'_, Result<Vec<RunKey>, StoreError>>;

    /// Deletes the finished runs `retention` no longer keeps; returns how many.
    fn sweep(&self, retention: Retention) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Ok when the store answers.
    fn health(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}
