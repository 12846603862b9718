//! The in-memory adapter's options (`adapter.config` of `modules::queue::BuiltinQueueAdapter`).

use std::time::Duration;

use serde::Deserialize;
use topiq_adapter_kit::{OptionsError, duration};

/// The most messages a topic holds when the config does not say.
pub const DEFAULT_MAX_MESSAGES: u64 = 100_000;

/// How long a publish to a full topic waits for room when the config does not say.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The in-memory adapter's options.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// The most messages one topic holds: waiting, delayed or in flight on any of its triggers
    /// (a message fanned out to three triggers counts once, until the last of them settles it;
    /// dead-letter records do not count). A publish to a full topic waits for room, like a
    /// producer on a broker at its `max_msgs`.
    #[serde(default = "default_max_messages")]
    pub max_messages: u64,
    /// How long a publish to a full topic waits for room before it fails with `broker_full`
    /// (nothing is published then).
    #[serde(
        default = "default_publish_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub publish_timeout: Duration,
}

fn default_max_messages() -> u64 {
    DEFAULT_MAX_MESSAGES
}

fn default_publish_timeout() -> Duration {
    DEFAULT_PUBLISH_TIMEOUT
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_messages: DEFAULT_MAX_MESSAGES,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
        }
    }
}

impl MemoryConfig {
    /// Reads `adapter.config` (absent or `{}`: the defaults); the error names the option.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, OptionsError> {
        let config: Self = match value {
            serde_json::Value::Null => Self::default(),
            serde_json::Value::Object(_) => Self::deserialize(value)?,
            other => {
                return Err(OptionsError::Invalid(format!(
                    "the adapter's config must be a map of options, such as `config: {{ max_messages: 100000 }}`, got {other}"
                )));
            }
        };
        if config.max_messages == 0 {
            return Err(OptionsError::Invalid(
                "max_messages must be at least 1 (it bounds the messages a topic holds)".into(),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn absent_options_are_the_defaults_and_bad_ones_are_named() {
        assert_eq!(
            MemoryConfig::from_value(&json!(null)).unwrap(),
            MemoryConfig::default()
        );
        assert_eq!(
            MemoryConfig::from_value(&json!({"max_messages": 10, "publish_timeout": "250ms"}))
                .unwrap(),
            MemoryConfig {
                max_messages: 10,
                publish_timeout: Duration::from_millis(250),
            }
        );
        let unknown = MemoryConfig::from_value(&json!({"max_msgs": 10})).unwrap_err();
        assert!(unknown.to_string().contains("max_msgs"), "{unknown}");
        let zero = MemoryConfig::from_value(&json!({"max_messages": 0})).unwrap_err();
        assert!(zero.to_string().contains("max_messages"), "{zero}");
        let unit = MemoryConfig::from_value(&json!({"publish_timeout": "5"})).unwrap_err();
        assert!(unit.to_string().contains("\"30s\""), "{unit}");
        assert!(MemoryConfig::from_value(&json!([])).is_err());
    }
}
