//! What a broker keeps beside a message's data, whatever the broker: each adapter writes it
//! in its own headers (`codec.rs`) and reads it back into a [`Stored`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use topiq_adapter::{
    DeadLetter, Envelope, Failure, MessageId, SubscriptionKey, Timestamp, TopicName, TraceContext,
};

/// The metadata of a stored message: its identity, its history and its trace context.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// The message's id, the same for every copy of it.
    pub id: MessageId,
    /// When it was first enqueued.
    pub enqueued_at: Timestamp,
    /// Attempts spent before this copy was published (a release or a counted redelivery
    /// copies the message with its attempts; a redrive starts again at 0).
    pub attempt_base: u32,
    /// When it was first dead-lettered (kept across redrives).
    pub first_failed_at: Option<Timestamp>,
    /// W3C `traceparent` of the original publish.
    pub traceparent: Option<String>,
    /// W3C `baggage` of the original publish.
    pub baggage: Option<String>,
    /// The idempotency key of the original publish.
    pub idempotency_key: Option<String>,
    /// When the topic's retention runs out for this message (kept by retries and releases;
    /// a redrive sets a new one).
    pub expires_at: Option<Timestamp>,
    /// The topic's lane it is in (kept by every copy: a retry, a release, a redrive).
    pub lane: u32,
}

impl Stored {
    /// A new message enqueued `now` with `trace` and `idempotency_key`, whose retention runs
    /// out `retention` after `retained_from` (its due time, for a delayed one).
    pub fn enqueued(
        now: Timestamp,
        trace: TraceContext,
        idempotency_key: Option<String>,
        retention: Option<Duration>,
        retained_from: Timestamp,
    ) -> Self {
        Self {
            id: MessageId::generate_at(now),
            enqueued_at: now,
            attempt_base: 0,
            first_failed_at: None,
            traceparent: trace.traceparent,
            baggage: trace.baggage,
            idempotency_key,
            expires_at: retention_end(retention, retained_from),
            lane: 0,
        }
    }

    /// The same message in `lane` of its topic.
    pub fn in_lane(self, lane: u32) -> Self {
        Self { lane, ..self }
    }

    /// The message of a DLQ `record` sent back to its trigger: attempts start again, and
    /// so does the topic's `retention`.
    pub fn redriven(record: &DeadLetter, retention: Option<Duration>) -> Self {
        Self {
            id: record.id.clone(),
            enqueued_at: record.enqueued_at,
            attempt_base: 0,
            first_failed_at: Some(record.first_failed_at),
            traceparent: record.traceparent.clone(),
            baggage: record.baggage.clone(),
            idempotency_key: record.idempotency_key.clone(),
            expires_at: retention_end(retention, Timestamp::now()),
            lane: record.lane,
        }
    }

    /// True when the topic's retention ran out for this message (the clock is read only
    /// for a message that has an end).
    pub fn is_expired(&self) -> bool {
        self.expires_at.is_some_and(|at| at <= Timestamp::now())
    }

    /// What the handler sees of this message on `topic` at `attempt` of `max_attempts`.
    pub fn envelope(
        &self,
        topic: TopicName,
        data: Arc<Value>,
        attempt: u32,
        max_attempts: u32,
    ) -> Envelope {
        Envelope {
            id: self.id.clone(),
            topic,
            data,
            attempt,
            max_attempts,
            enqueued_at: self.enqueued_at,
            traceparent: self.traceparent.clone(),
            baggage: self.baggage.clone(),
            idempotency_key: self.idempotency_key.clone(),
        }
    }

    /// The DLQ record of this message failing for good on `key`'s trigger now, after
    /// `attempts` attempts, with `error`.
    pub fn dead_letter(
        &self,
        key: &SubscriptionKey,
        data: Arc<Value>,
        attempts: u32,
        error: Failure,
    ) -> DeadLetter {
        let now = Timestamp::now();
        DeadLetter {
            id: self.id.clone(),
            topic: key.topic.clone(),
            trigger: key.trigger.clone(),
            data,
            attempts,
            first_failed_at: self.first_failed_at.unwrap_or(now),
            last_failed_at: now,
            error,
            traceparent: self.traceparent.clone(),
            baggage: self.baggage.clone(),
            idempotency_key: self.idempotency_key.clone(),
            enqueued_at: self.enqueued_at,
            lane: self.lane,
        }
    }
}

/// When a retention that starts at `from` runs out (`None`: kept until handled).
pub fn retention_end(retention: Option<Duration>, from: Timestamp) -> Option<Timestamp> {
    let retention = retention?;
    Some(from.checked_add(retention).unwrap_or(Timestamp::MAX))
}
