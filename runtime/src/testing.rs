//! What the unit tests of several modules build alike.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::Value;
use topiq_adapter::{Envelope, MessageId, Timestamp, TopicName};

/// The envelope of a first attempt (of three) of `data` on `topic`, enqueued now.
pub(crate) fn envelope(topic: &str, data: Value) -> Envelope {
    Envelope {
        id: MessageId::generate(),
        topic: TopicName::new(topic).unwrap(),
        data: Arc::new(data),
        attempt: 1,
        max_attempts: 3,
        enqueued_at: Timestamp::now(),
        traceparent: None,
        baggage: None,
        idempotency_key: None,
    }
}
