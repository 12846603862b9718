//! Durations written as humantime strings: `500ms`, `30s`, `5m`, `1h 30m`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration from the config, parsed from a humantime string such as `30s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = ConfigDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"30s\" or \"5m\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<ConfigDuration, E> {
                parse_duration(text).map(ConfigDuration).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, number: u64) -> Result<ConfigDuration, E> {
                Err(E::custom(format!(
                    "a bare number ({number}) has no unit: write \"{number}ms\" or \"{number}s\""
                )))
            }

            fn visit_i64<E: de::Error>(self, number: i64) -> Result<ConfigDuration, E> {
                self.visit_u64(number.unsigned_abs())
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h 30m`; the error says what is accepted. The one grammar of
/// every duration in `config.yaml`, the adapters' options included.
pub use topiq_adapter_kit::duration::parse as parse_duration;
