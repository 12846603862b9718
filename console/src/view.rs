//! How values read on a page: times, durations, JSON, trace ids, and the time fields of the
//! filter forms.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;
use topiq::retry::{Backoff, RetryPolicy};

/// The broker an adapter class speaks to, as an operator names it.
pub(crate) fn adapter(class: topiq::AdapterClass) -> &'static str {
    match class.messaging_system() {
        "nats" => "NATS JetStream",
        "rabbitmq" => "RabbitMQ",
        _ => "in-memory",
    }
}

/// `n` and `noun`, plural unless `n` is 1: `1 record`, `3 records`.
pub(crate) fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A time as the console shows it, in UTC to the second.
pub(crate) fn time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An optional time, or a dash.
pub(crate) fn maybe_time(at: Option<Timestamp>) -> String {
    at.map_or_else(|| "—".to_owned(), time)
}

/// A span of milliseconds: `850 ms`, `2.4 s`, `3 min 5 s`.
pub(crate) fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// A configured duration: `30s`, `5m`, `250ms`.
pub(crate) fn duration(span: Duration) -> String {
    let ms = span.as_millis();
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A retry policy in one line: `4 attempts, exponential from 1s ×2 up to 5m`.
pub(crate) fn retry(policy: &RetryPolicy) -> String {
    let backoff = match &policy.backoff {
        Backoff::Fixed(delay) => format!("fixed {}", duration(*delay)),
        Backoff::Exponential {
            initial,
            factor,
            max,
        } => format!(
            "exponential from {} ×{factor} up to {}",
            duration(*initial),
            duration(*max)
        ),
        Backoff::Custom(delays) => format!(
            "custom: {}",
            delays
                .iter()
                .map(|delay| duration(*delay))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "{}, {backoff}",
        count(u64::from(policy.max_attempts), "attempt")
    )
}

/// `value` as indented JSON.
pub(crate) fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// The trace id of a W3C `traceparent`.
pub(crate) fn trace_id(traceparent: Option<&str>) -> String {
    traceparent
        .and_then(|parent| parent.split('-').nth(1))
        .map_or_else(|| "—".to_owned(), str::to_owned)
}

/// `text` cut to `chars` characters, with an ellipsis when cut.
pub(crate) fn cut(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// A form field trimmed, or `None` when it is empty.
pub(crate) fn filled(text: &str) -> Option<&str> {
    Some(text.trim()).filter(|text| !text.is_empty())
}

/// A time field of a form: RFC 3339 as written, or a browser's `datetime-local` value
/// (`2026-12-05T21:30`), read as UTC. Empty is none.
pub(crate) fn time_field(name: &str, text: &str) -> Result<Option<Timestamp>, String> {
    let Some(text) = filled(text) else {
        return Ok(None);
    };
    if let Ok(at) = text.parse::<Timestamp>() {
        return Ok(Some(at));
    }
    let local = if text.len() == 16 {
        format!("{text}:00")
    } else {
        text.to_owned()
    };
    local
        .parse::<jiff::civil::DateTime>()
        .ok()
        .and_then(|at| jiff::tz::TimeZone::UTC.to_timestamp(at).ok())
        .map(Some)
        .ok_or_else(|| {
            format!("{name}: {text:?} is not a time; write it as 2026-12-05T21:30:00Z (UTC)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_fields_take_rfc3339_or_a_browser_local_time_as_utc() {
        let text = |field: &str| time_field("since", field).unwrap().map(|at| at.to_string());
        assert_eq!(text(""), None);
        assert_eq!(text("  "), None);
        assert_eq!(
            text("2026-12-05T21:30").as_deref(),
            Some("2026-12-05T21:30:00Z")
        );
        assert_eq!(
            text("2026-12-05T22:30:00+01:00").as_deref(),
            Some("2026-12-05T21:30:00Z")
        );
        let err = time_field("until", "yesterday").unwrap_err();
        assert!(err.starts_with("until:"), "{err}");
    }

    #[test]
    fn values_read_as_a_person_writes_them() {
        assert_eq!(millis(850), "850 ms");
        assert_eq!(millis(2_400), "2.4 s");
        assert_eq!(millis(185_000), "3 min 5 s");
        assert_eq!(duration(Duration::from_secs(300)), "5m");
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(
            trace_id(Some(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            )),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
