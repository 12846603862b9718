//! Dead-letter records and the queries over them.

use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::delivery::Failure;
use crate::error::Error;
use crate::message::{NewMessage, TraceContext};
use crate::names::{MessageId, TopicName, TriggerName};

/// The most records one [`DlqQuery`] returns.
pub const MAX_DLQ_PAGE: usize = 1000;

/// A message that failed for good on one trigger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The message's id.
    pub id: MessageId,
    /// Its topic.
    pub topic: TopicName,
    /// The trigger it failed on (a redrive goes back to this trigger only).
    pub trigger: TriggerName,
    /// The payload.
    pub data: Arc<Value>,
    /// The attempts made before it was dead-lettered.
    pub attempts: u32,
    /// When it was first dead-lettered on this trigger (kept across redrives).
    pub first_failed_at: Timestamp,
    /// When it was last dead-lettered.
    pub last_failed_at: Timestamp,
    /// The last error.
    pub error: Failure,
    /// W3C `traceparent` of the original publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C `baggage` of the original publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
    /// The idempotency key of the original publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// When the message was first enqueued.
    pub enqueued_at: Timestamp,
    /// The topic's lane the message was in (a redrive puts it back there).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lane: u32,
}

fn is_zero(lane: &u32) -> bool {
    *lane == 0
}

impl DeadLetter {
    /// The reference that selects this record (and no other record of its message).
    pub fn reference(&self) -> DlqRecordRef {
        DlqRecordRef {
            trigger: self.trigger.clone(),
            id: self.id.clone(),
            last_failed_at: self.last_failed_at,
        }
    }

    /// The message published to a trigger's `dead_letter_topic` when this record is written:
    /// `{id, topic, trigger, data, attempts, failed_at, error, enqueued_at}`, carrying the
    /// failed message's trace context, so the trace continues in whoever handles it.
    pub fn notification(&self) -> NewMessage {
        NewMessage::new(serde_json::json!({
            "id": self.id,
            "topic": self.topic,
            "trigger": self.trigger,
            "data": self.data,
            "attempts": self.attempts,
            "failed_at": self.last_failed_at,
            "error": self.error,
            "enqueued_at": self.enqueued_at,
        }))
        .trace(TraceContext {
            traceparent: self.traceparent.clone(),
            baggage: self.baggage.clone(),
        })
    }
}

/// Narrows a DLQ listing; every field set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DlqFilter {
    /// Only records whose error message contains this text (case-sensitive).
    pub error_contains: Option<String>,
    /// Only records last failed at or after this time.
    pub since: Option<Timestamp>,
    /// Only records last failed before this time.
    pub until: Option<Timestamp>,
    /// Only records whose id or idempotency key is this text, or whose data, as JSON text,
    /// contains it (case-insensitive): an operator's search.
    pub contains: Option<String>,
}

impl DlqFilter {
    /// True when `record` passes every condition of the filter.
    pub fn matches(&self, record: &DeadLetter) -> bool {
        self.error_contains
            .as_deref()
            .is_none_or(|text| record.error.message.contains(text))
            && self
                .since
                .is_none_or(|since| record.last_failed_at >= since)
            && self.until.is_none_or(|until| record.last_failed_at < until)
            && self
                .contains
                .as_deref()
                .is_none_or(|text| holds_text(record, text))
    }
}

/// Whether `record`'s id or idempotency key is `text`, or its data's JSON text contains it
/// (case-insensitive).
fn holds_text(record: &DeadLetter, text: &str) -> bool {
    if record.id.as_str() == text || record.idempotency_key.as_deref() == Some(text) {
        return true;
    }
    let needle = text.to_lowercase();
    serde_json::to_string(&*record.data).is_ok_and(|data| data.to_lowercase().contains(&needle))
}

/// One page of a DLQ listing, oldest dead-lettered first.
#[derive(Clone, Debug, PartialEq)]
pub struct DlqQuery {
    /// The topic.
    pub topic: TopicName,
    /// One trigger's records, or those of every trigger on the topic.
    pub trigger: Option<TriggerName>,
    /// Conditions on the records.
    pub filter: DlqFilter,
    /// At most this many records (1 to [`MAX_DLQ_PAGE`]).
    pub limit: usize,
    /// Where the previous page stopped (its `next_cursor`); `None` starts at the oldest.
    pub cursor: Option<String>,
}

impl DlqQuery {
    /// Checks `limit` (1 to [`MAX_DLQ_PAGE`]) and returns the cursor as a sequence number
    /// (0 for the first page), for adapters whose cursor is one.
    pub fn validate(&self) -> Result<u64, Error> {
        if self.limit == 0 || self.limit > MAX_DLQ_PAGE {
            return Err(Error::InvalidArgument {
                argument: "limit",
                reason: format!("must be between 1 and {MAX_DLQ_PAGE}, got {}", self.limit),
            });
        }
        match &self.cursor {
            None => Ok(0),
            Some(cursor) => cursor.parse::<u64>().map_err(|_| Error::InvalidArgument {
                argument: "cursor",
                reason: format!(
                    "{cursor:?} is not a cursor returned by a previous listing of this adapter"
                ),
            }),
        }
    }

    /// The first page of up to 100 records of `topic`, every trigger, no filter.
    pub fn new(topic: TopicName) -> Self {
        Self {
            topic,
            trigger: None,
            filter: DlqFilter::default(),
            limit: 100,
            cursor: None,
        }
    }
}

/// A page of DLQ records.
#[derive(Clone, Debug, PartialEq)]
pub struct DlqPage {
    /// The records, oldest dead-lettered first.
    pub records: Vec<DeadLetter>,
    /// Pass as `cursor` for the next page; `None` when this was the last.
    pub next_cursor: Option<String>,
    /// Pass as `cursor` later to list only what comes after everything this listing read:
    /// on the last page, the records dead-lettered since (a reader that follows a DLQ keeps
    /// its place with it instead of reading the DLQ from its start again); otherwise the
    /// same as `next_cursor`.
    pub read_to: String,
}

/// Which records a redrive or purge touches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DlqSelection {
    /// Every record of the topic (or of the trigger, when one is named).
    All,
    /// The records of these message ids (on every named trigger they failed on).
    Ids(Vec<MessageId>),
    /// Exactly these records, as a listing returned them ([`DeadLetter::reference`]): one
    /// message can have several records on one trigger, and a filter picks records, not
    /// messages.
    Records(Vec<DlqRecordRef>),
}

impl DlqSelection {
    /// True when `record` is selected.
    pub fn selects(&self, record: &DeadLetter) -> bool {
        match self {
            DlqSelection::All => true,
            DlqSelection::Ids(ids) => ids.contains(&record.id),
            DlqSelection::Records(references) => references
                .iter()
                .any(|reference| reference.refers_to(record)),
        }
    }
}

/// Names one DLQ record: its trigger, its message and when it was dead-lettered (two records
/// of one message on one trigger were written at different times).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DlqRecordRef {
    /// The trigger the record belongs to.
    pub trigger: TriggerName,
    /// The message.
    pub id: MessageId,
    /// The record's `last_failed_at`.
    pub last_failed_at: Timestamp,
}

impl DlqRecordRef {
    /// True when `record` is the one named.
    pub fn refers_to(&self, record: &DeadLetter) -> bool {
        self.id == record.id
            && self.trigger == record.trigger
            && self.last_failed_at == record.last_failed_at
    }
}
