//! Validated names: topics, triggers, message ids. The rules a name must keep, and the errors
//! that say which one it broke, are in `naming.rs`.
//!
//! Names are checked once, when they are built, so every adapter can map them onto its broker
//! (a NATS subject and stream name, an AMQP routing key and queue name) without escaping.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest topic name accepted, in bytes (AMQP routing keys stop at 255; the rest is kept
/// for the prefixes adapters add).
pub const MAX_TOPIC_LEN: usize = 200;

/// The longest trigger name accepted, in bytes.
pub const MAX_TRIGGER_LEN: usize = 100;

/// A topic: dot-separated tokens of ASCII letters, digits, `_` and `-`, such as `emails.send`.
///
/// The rules make a topic a valid NATS subject without wildcards and a valid AMQP routing key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TopicName(pub(crate) Arc<str>);

impl TopicName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A trigger: the name of one durable subscription to a topic, such as `send-email`.
///
/// ASCII letters, digits, `_` and `-`, at most [`MAX_TRIGGER_LEN`] bytes: valid as a JetStream
/// consumer name and as part of a RabbitMQ queue name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TriggerName(pub(crate) Arc<str>);

impl TriggerName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One trigger's durable subscription to one topic: the unit of fan-out (every key receives
/// every message of its topic) and of competing consumers (consumers of one key share its
/// messages).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubscriptionKey {
    /// The topic subscribed to.
    pub topic: TopicName,
    /// The trigger that owns the subscription.
    pub trigger: TriggerName,
}

impl SubscriptionKey {
    /// The subscription of `trigger` to `topic`.
    pub fn new(topic: TopicName, trigger: TriggerName) -> Self {
        Self { topic, trigger }
    }
}

impl fmt::Display for SubscriptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.trigger)
    }
}

/// A message's id, assigned by the adapter at publish time (a UUIDv7, so ids sort by time).
///
/// The id stays the same across retries and redrives of the message.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(Arc<str>);

impl MessageId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        let mut buffer = uuid::Uuid::encode_buffer();
        Self(Arc::from(
            &*uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buffer),
        ))
    }

    /// Wraps an id read back from a broker or given by a user (for a redrive by id).
    pub fn from_string(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! name_impls {
    ($($name:ident),*) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    )*};
}

name_impls!(TopicName, TriggerName, MessageId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_sort_by_creation_time() {
        let first = MessageId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = MessageId::generate();
        assert!(first < second);
    }
}
