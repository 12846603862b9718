//! The rules a topic or trigger name must keep: checked once, when the name is built.

use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::error::Error;
use crate::names::{MAX_TOPIC_LEN, MAX_TRIGGER_LEN, TopicName, TriggerName};

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
}

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
    fn deserializing_an_invalid_topic_names_the_rule() {
        let err = serde_json::from_str::<TopicName>("\"a b\"").expect_err("invalid");
        assert!(err.to_string().contains("ASCII letters"), "{err}");
    }
}
