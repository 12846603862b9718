//! When a schedule's ticks fall: a 5-field cron expression read in an IANA time zone
//! (croner, with jiff's time zone database bundled), or a fixed interval aligned to the Unix
//! epoch, so every instance computes the same ticks.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use topiq_adapter::Timestamp;
use topiq_runs::ScheduleSpec;

/// The shortest `every:` a schedule takes.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// Why a schedule's cadence is not usable; the message says what to write instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CadenceError {
    /// Neither or both of `cron` and `every`.
    #[error("give exactly one of `cron` (such as \"0 2 * * *\") and `every` (such as \"30s\")")]
    OneOfCronOrEvery,
    /// The cron expression does not parse.
    #[error(
        "cron {cron:?} is not a 5-field cron expression (minute hour day-of-month month day-of-week, such as \"0 2 * * *\"; for seconds use `every`): {source}"
    )]
    Cron {
        /// The expression.
        cron: String,
        /// croner's error.
        #[source]
        source: croner::errors::CronError,
    },
    /// The time zone is not in the IANA database.
    #[error(
        "timezone {name:?} is not an IANA time zone name (such as \"Europe/Berlin\" or \"UTC\"): {source}"
    )]
    TimeZone {
        /// The name.
        name: String,
        /// jiff's error.
        #[source]
        source: jiff02::Error,
    },
    /// `timezone` with `every`, whose ticks do not depend on one.
    #[error("timezone applies to `cron` only: `every` ticks at fixed multiples of its interval")]
    TimeZoneWithEvery,
    /// The interval is not a duration of at least a second.
    #[error("every {every:?}: {reason}")]
    Every {
        /// The text given.
        every: String,
        /// What is wrong.
        reason: String,
    },
}

/// When a schedule's ticks fall.
#[derive(Clone, Debug)]
pub enum Cadence {
    /// A cron expression in a time zone.
    Cron {
        /// The parsed expression.
        cron: Box<Cron>,
        /// The zone it reads in.
        zone: jiff02::tz::TimeZone,
    },
    /// Every multiple of this interval since the Unix epoch, in milliseconds.
    Every(i64),
}

impl Cadence {
    /// The cadence `spec` describes; the error says what is wrong.
    pub fn of(spec: &ScheduleSpec) -> Result<Self, CadenceError> {
        match (&spec.cron, &spec.every) {
            (Some(cron), None) => {
                let parser = CronParser::builder()
                    .seconds(Seconds::Disallowed)
                    .year(Year::Disallowed)
                    .build();
                let parsed = parser.parse(cron).map_err(|source| CadenceError::Cron {
                    cron: cron.clone(),
                    source,
                })?;
                let name = spec.timezone.as_deref().unwrap_or("UTC");
                let zone =
                    jiff02::tz::TimeZone::get(name).map_err(|source| CadenceError::TimeZone {
                        name: name.to_owned(),
                        source,
                    })?;
                Ok(Cadence::Cron {
                    cron: Box::new(parsed),
                    zone,
                })
            }
            (None, Some(_)) if spec.timezone.is_some() => Err(CadenceError::TimeZoneWithEvery),
            (None, Some(every)) => Ok(Cadence::Every(every_millis(every)?)),
            _ => Err(CadenceError::OneOfCronOrEvery),
        }
    }

    /// The first tick after `time`.
    pub fn next_after(&self, time: Timestamp) -> Option<Timestamp> {
        match self {
            Cadence::Cron { cron, zone } => {
                let zoned = zoned(time, zone)?;
                let next = cron.find_next_occurrence(&zoned, false).ok()?;
                back(&next)
            }
            Cadence::Every(interval) => {
                let ms = time.as_millisecond();
                let next = (ms.div_euclid(*interval) + 1).checked_mul(*interval)?;
                Timestamp::from_millisecond(next).ok()
            }
        }
    }

    /// The last tick at or before `time`.
    pub fn latest_at_or_before(&self, time: Timestamp) -> Option<Timestamp> {
        match self {
            Cadence::Cron { cron, zone } => {
                let zoned = zoned(time, zone)?;
                let latest = cron.find_previous_occurrence(&zoned, true).ok()?;
                back(&latest)
            }
            Cadence::Every(interval) => {
                let ms = time.as_millisecond();
                Timestamp::from_millisecond(ms.div_euclid(*interval) * interval).ok()
            }
        }
    }
}

fn every_millis(every: &str) -> Result<i64, CadenceError> {
    let invalid = |reason: String| CadenceError::Every {
        every: every.to_owned(),
        reason,
    };
    let interval = crate::config::parse_duration(every).map_err(|err| invalid(err.to_string()))?;
    if interval < MIN_EVERY || interval.subsec_millis() != 0 {
        return Err(invalid(
            "must be whole seconds, at least 1s, such as \"30s\" or \"5m\"".into(),
        ));
    }
    i64::try_from(interval.as_millis()).map_err(|_| invalid("is too long".into()))
}

/// `time` in `zone`, in jiff 0.2's types (croner's).
fn zoned(time: Timestamp, zone: &jiff02::tz::TimeZone) -> Option<jiff02::Zoned> {
    let time = jiff02::Timestamp::from_millisecond(time.as_millisecond()).ok()?;
    Some(time.to_zoned(zone.clone()))
}

/// A croner time back as this crate's timestamp.
fn back(zoned: &jiff02::Zoned) -> Option<Timestamp> {
    Timestamp::from_millisecond(zoned.timestamp().as_millisecond()).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::Value;
    use topiq_adapter::{Timestamp, TopicName};
    use topiq_runs::{CatchUp, ScheduleSpec};

    use super::Cadence;

    fn spec(cron: Option<&str>, every: Option<&str>, timezone: Option<&str>) -> ScheduleSpec {
        ScheduleSpec {
            cron: cron.map(Into::into),
            every: every.map(Into::into),
            timezone: timezone.map(Into::into),
            topic: TopicName::new("reports").unwrap(),
            data: Value::Null,
            catch_up: CatchUp::None,
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// The ticks after `from`, `count` of them.
    fn ticks(cadence: &Cadence, from: &str, count: usize) -> Vec<String> {
        let mut time = at(from);
        (0..count)
            .map(|_| {
                time = cadence.next_after(time).unwrap();
                time.to_string()
            })
            .collect()
    }

    #[test]
    fn a_skipped_hour_fires_once_at_the_end_of_the_gap() {
        // Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 never happens.
        let cadence = Cadence::of(&spec(Some("30 2 * * *"), None, Some("Europe/Berlin"))).unwrap();
        assert_eq!(
            ticks(&cadence, "2026-03-28T12:00:00Z", 3),
            [
                "2026-03-29T01:00:00Z", // 03:00 CEST, once
                "2026-03-30T00:30:00Z", // 02:30 CEST
                "2026-03-31T00:30:00Z",
            ]
        );
    }

    #[test]
    fn a_repeated_hour_fires_once_at_its_first_occurrence() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let cadence = Cadence::of(&spec(Some("30 2 * * *"), None, Some("Europe/Berlin"))).unwrap();
        assert_eq!(
            ticks(&cadence, "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        let latest = cadence
            .latest_at_or_before(at("2026-10-25T01:45:00Z"))
            .unwrap();
        assert_eq!(latest.to_string(), "2026-10-25T00:30:00Z");
    }

    #[test]
    fn every_ticks_at_multiples_of_its_interval() {
        let cadence = Cadence::of(&spec(None, Some("30s"), None)).unwrap();
        assert_eq!(
            ticks(&cadence, "2026-12-05T10:00:10Z", 2),
            ["2026-12-05T10:00:30Z", "2026-12-05T10:01:00Z"]
        );
        let latest = cadence
            .latest_at_or_before(at("2026-12-05T10:00:30Z"))
            .unwrap();
        assert_eq!(latest.to_string(), "2026-12-05T10:00:30Z");
    }

    #[test]
    fn names_and_aliases_read_as_cron_writes_them() {
        let weekdays = Cadence::of(&spec(Some("0 9 * * MON-FRI"), None, None)).unwrap();
        assert_eq!(
            ticks(&weekdays, "2026-12-04T10:00:00Z", 2), // a Friday
            ["2026-12-07T09:00:00Z", "2026-12-08T09:00:00Z"]
        );
        let daily = Cadence::of(&spec(Some("@daily"), None, Some("Europe/Berlin"))).unwrap();
        assert_eq!(
            ticks(&daily, "2026-12-04T10:00:00Z", 1),
            ["2026-12-04T23:00:00Z"]
        );
    }

    #[test]
    fn a_bad_cadence_says_what_to_write() {
        let cases = [
            (spec(None, None, None), "exactly one of `cron`"),
            (spec(Some("* * * * *"), Some("1s"), None), "exactly one of"),
            (spec(Some("0 0 2 * * *"), None, None), "5-field cron"),
            (spec(Some("61 * * * *"), None, None), "5-field cron"),
            (spec(Some("0 2 * * *"), None, Some("Mars/Olympus")), "IANA"),
            (spec(None, Some("30s"), Some("UTC")), "`cron` only"),
            (spec(None, Some("500ms"), None), "at least 1s"),
            (spec(None, Some("soon"), None), "every \"soon\""),
        ];
        for (spec, expected) in cases {
            let err = Cadence::of(&spec).unwrap_err().to_string();
            assert!(err.contains(expected), "{spec:?}: {err}");
        }
    }
}
