//! Validated names: topics, triggers, message ids.
//!
//! Names are checked once, when they are built, so every adapter can map them onto its broker
//! (a NATS subject and stream name, an AMQP routing key and queue name) without escaping.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::Error;

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
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Checks `name` and wraps it; the error says which rule it broke.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        match topic_rule_broken(&name) {
            None => Ok(Self(name.into())),
            Some(reason) => Err(Error::InvalidTopic {
                topic: name,
                reason,
            }),
        }
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn topic_rule_broken(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("a topic name cannot be empty");
    }
    if name.len() > MAX_TOPIC_LEN {
        return Some("a topic name is at most 200 bytes long");
    }
    for token in name.split('.') {
        if token.is_empty() {
            return Some("a topic name cannot start or end with '.' or contain '..'");
        }
        if !token.bytes().all(is_name_byte) {
            return Some(
                "a topic name holds only ASCII letters, digits, '_', '-' and '.' between tokens (no spaces or wildcards such as '*' and '>')",
            );
        }
    }
    None
}

fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

/// A trigger: the name of one durable subscription to a topic, such as `send-email`.
///
/// ASCII letters, digits, `_` and `-`, at most [`MAX_TRIGGER_LEN`] bytes: valid as a JetStream
/// consumer name and as part of a RabbitMQ queue name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TriggerName(Arc<str>);

impl TriggerName {
    /// Checks `name` and wraps it; the error says which rule it broke.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("a trigger name cannot be empty")
        } else if name.len() > MAX_TRIGGER_LEN {
            Some("a trigger name is at most 100 bytes long")
        } else if !name.bytes().all(is_name_byte) {
            Some("a trigger name holds only ASCII letters, digits, '_' and '-'")
        } else {
            None
        };
        match reason {
            None => Ok(Self(name.into())),
            Some(reason) => Err(Error::InvalidTrigger {
                trigger: name,
                reason,
            }),
        }
    }

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

impl FromStr for TopicName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        Self::new(name)
    }
}

impl FromStr for TriggerName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        Self::new(name)
    }
}

impl<'de> Deserialize<'de> for TopicName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::new(name).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for TriggerName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::new(name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_topic_names_are_accepted() {
        for name in [
            "emails",
            "emails.send",
            "a-b_c.D9",
            &"x".repeat(MAX_TOPIC_LEN),
        ] {
            assert!(TopicName::new(name).is_ok(), "{name} should be valid");
        }
    }

    #[test]
    fn topics_with_wildcards_spaces_or_empty_tokens_are_refused() {
        for name in [
            "",
            "emails.*",
            "emails.>",
            "has space",
            ".lead",
            "trail.",
            "a..b",
            "ü",
            &"x".repeat(MAX_TOPIC_LEN + 1),
        ] {
            let err = TopicName::new(name).expect_err(name);
            assert!(
                matches!(err, Error::InvalidTopic { ref topic, .. } if topic == name),
                "{err}"
            );
        }
    }

    #[test]
    fn trigger_names_refuse_dots() {
        assert!(TriggerName::new("send-email_2").is_ok());
        assert!(TriggerName::new("send.email").is_err());
        assert!(TriggerName::new("").is_err());
    }

    #[test]
    fn message_ids_sort_by_creation_time() {
        let first = MessageId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = MessageId::generate();
        assert!(first < second);
    }

    #[test]
    fn deserializing_an_invalid_topic_names_the_rule() {
        let err = serde_json::from_str::<TopicName>("\"a b\"").expect_err("invalid");
        assert!(err.to_string().contains("ASCII letters"), "{err}");
    }
}
