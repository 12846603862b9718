//! Durations in a config, one grammar everywhere: a number with a unit, as humantime reads
//! it (`500ms`, `30s`, `5m`, `1h`, `1h 30m`).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses `500ms`, `30s`, `5m`, `1h 30m`; the error says what is accepted.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        format!(
            "{text:?} is not a duration ({err}); write a number with a unit, such as \"500ms\", \"30s\" or \"5m\""
        )
    })
}

/// For `#[serde(deserialize_with = "topiq_adapter_kit::duration::deserialize")]`: a field
/// written as a [`parse`]able text.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_required_and_understood() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse("five").unwrap_err().contains("\"30s\""));
        assert!(parse("5").is_err());
    }
}
