//! What goes in (a [`NewMessage`]), what comes back from a publish (a [`PublishReceipt`]) and
//! what a handler sees (an [`Envelope`]).

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::names::{MessageId, TopicName};

/// The longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// The default `max_message_bytes` of a topic: 128 KiB of serialized data.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// A message to publish: its data and the options of this one publish.
#[derive(Clone, Debug, PartialEq)]
pub struct NewMessage {
    /// The payload: any JSON value, shared (the module records it in a run without copying it,
    /// and the in-memory adapter stores it as it is).
    pub data: Arc<Value>,
    /// Publishes with the same key inside the topic's idempotency window return the first
    /// message's id and publish nothing.
    pub idempotency_key: Option<String>,
    /// The message is not delivered before this time.
    pub deliver_at: Option<Timestamp>,
    /// W3C trace context to carry to the handler.
    pub trace: TraceContext,
    /// The topic's lane it goes to (0 unless the topic has [`lanes`](crate::TopicSpec::lanes)).
    pub lane: u32,
}

impl NewMessage {
    /// A message carrying `data` (a `Value`, or an `Arc<Value>` to share it), delivered at
    /// once, without idempotency key or trace.
    pub fn new(data: impl Into<Arc<Value>>) -> Self {
        Self {
            data: data.into(),
            idempotency_key: None,
            deliver_at: None,
            trace: TraceContext::default(),
            lane: 0,
        }
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Delays delivery by `delay` from now (a delay past year 9999 means "never before then").
    pub fn delay(mut self, delay: Duration) -> Self {
        self.deliver_at = Some(
            Timestamp::now()
                .checked_add(delay)
                .unwrap_or(Timestamp::MAX),
        );
        self
    }

    /// Delivers no earlier than `at`.
    pub fn deliver_at(mut self, at: Timestamp) -> Self {
        self.deliver_at = Some(at);
        self
    }

    /// Attaches W3C trace context.
    pub fn trace(mut self, trace: TraceContext) -> Self {
        self.trace = trace;
        self
    }

    /// Puts the message in `lane` of its topic.
    pub fn lane(mut self, lane: u32) -> Self {
        self.lane = lane;
        self
    }

    /// Checks the message's lane against its topic's `lanes`.
    pub fn check_lane(&self, topic: &TopicName, lanes: u32) -> Result<()> {
        crate::spec::check_lane(topic, self.lane, lanes)
    }

    /// Checks a message for [`Adapter::publish_to`](crate::Adapter::publish_to): delivered at
    /// once to one trigger, so it has no `deliver_at` and no `idempotency_key`.
    pub fn check_direct(&self) -> Result<()> {
        let argument = if self.deliver_at.is_some() {
            "deliver_at"
        } else if self.idempotency_key.is_some() {
            "idempotency_key"
        } else {
            return Ok(());
        };
        Err(Error::InvalidArgument {
            argument,
            reason: "a message published to one trigger is delivered at once, without an idempotency key".into(),
        })
    }

    /// Checks the fields beside the data: an empty or oversized idempotency key, control
    /// characters in it or in the trace context. A broker adapter, which serializes the data
    /// anyway, checks the rest from the bytes (`topiq_adapter_kit::codec::encode` and
    /// [`check_size`](crate::check_size)); [`validate`](Self::validate) checks everything.
    pub fn validate_fields(&self) -> Result<()> {
        if self.idempotency_key.is_none()
            && self.trace.traceparent.is_none()
            && self.trace.baggage.is_none()
        {
            // The common publish: nothing to check.
            return Ok(());
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN)
        {
            return Err(Error::InvalidArgument {
                argument: "idempotency_key",
                reason: format!(
                    "must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes long, got {}",
                    key.len()
                ),
            });
        }
        for (argument, value) in [
            ("idempotency_key", self.idempotency_key.as_deref()),
            ("traceparent", self.trace.traceparent.as_deref()),
            ("baggage", self.trace.baggage.as_deref()),
        ] {
            if value.is_some_and(has_control_characters) {
                return Err(Error::InvalidArgument {
                    argument,
                    reason: "must not contain control characters such as line breaks".into(),
                });
            }
        }
        Ok(())
    }

    /// Checks what an adapter must refuse before sending anything: data over `limit`
    /// serialized bytes or nested too deep to read back ([`check_depth`]), an empty or
    /// oversized idempotency key.
    pub fn validate(&self, topic: &TopicName, limit: usize) -> Result<()> {
        self.validate_fields()?;
        // Most messages are far below the limit: a cheap upper bound settles them without
        // serializing; only those near or over it are measured exactly. The same walk finds
        // data nested too deep.
        let Some(bound) = serialized_len_upper_bound(&self.data, MAX_DATA_DEPTH) else {
            check_depth(&self.data)?;
            return check_size(topic, serialized_len(&self.data), limit);
        };
        if bound <= limit {
            return Ok(());
        }
        check_size(topic, serialized_len(&self.data), limit)
    }
}

/// Refuses data of `size` serialized bytes over `limit` (the topic's `max_message_bytes`).
pub fn check_size(topic: &TopicName, size: usize, limit: usize) -> Result<()> {
    if size > limit {
        return Err(Error::PayloadTooLarge {
            topic: topic.clone(),
            size,
            limit,
        });
    }
    Ok(())
}

/// How deeply arrays and objects may nest in a message's data. `serde_json` reads 127 levels
/// and no more, and topiq wraps data in records up to three levels deeper (a dead-letter
/// record, a run record, an HTTP function's body, a page of the HTTP API): deeper data would
/// be stored and then never be delivered, listed or recorded.
pub const MAX_DATA_DEPTH: usize = 120;

/// Refuses data nested deeper than [`MAX_DATA_DEPTH`], on every adapter alike (the in-memory
/// one could carry it, a broker could not deliver it).
pub fn check_depth(data: &Value) -> Result<()> {
    if nests_within(data, MAX_DATA_DEPTH) {
        return Ok(());
    }
    Err(data_too_deep())
}

/// The error for data nested deeper than [`MAX_DATA_DEPTH`] (what [`check_depth`] answers, and
/// what a writer that counts the depth as it goes says when it finds it).
pub fn data_too_deep() -> Error {
    Error::InvalidArgument {
        argument: "data",
        reason: format!(
            "nests arrays and objects more than {MAX_DATA_DEPTH} levels deep, more than topiq carries; flatten it"
        ),
    }
}

/// True when `value`'s arrays and objects nest at most `levels` deep (the walk stops there).
fn nests_within(value: &Value, levels: usize) -> bool {
    match value {
        Value::Array(items) => levels > 0 && items.iter().all(|v| nests_within(v, levels - 1)),
        Value::Object(map) => levels > 0 && map.values().all(|v| nests_within(v, levels - 1)),
        _ => true,
    }
}

/// The number of bytes `value` takes as compact JSON, computed without allocating it.
pub fn serialized_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` into an infallible writer cannot fail: its keys are always strings.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// An upper bound of [`serialized_len`], computed without formatting anything: every string
/// byte counted as its longest escape (`\u00XX`, 6 bytes), every number as 24 bytes; `None`
/// when arrays and objects nest more than `levels` deep (the walk stops there).
fn serialized_len_upper_bound(value: &Value, levels: usize) -> Option<usize> {
    let inner = levels.checked_sub(1);
    match value {
        Value::Null | Value::Bool(_) => Some(5),
        Value::Number(_) => Some(24),
        Value::String(text) => Some(2 + 6 * text.len()),
        Value::Array(items) => {
            let inner = inner?;
            items.iter().try_fold(2, |sum, item| {
                Some(sum + serialized_len_upper_bound(item, inner)? + 1)
            })
        }
        Value::Object(fields) => {
            let inner = inner?;
            fields.iter().try_fold(2, |sum, (key, item)| {
                Some(sum + 2 + 6 * key.len() + 2 + serialized_len_upper_bound(item, inner)?)
            })
        }
    }
}

/// True when `text` holds a control character (C0, DEL or C1). Printable ASCII (what trace
/// headers and most keys are) is settled eight bytes at a time; other text is then checked
/// character by character.
fn has_control_characters(text: &str) -> bool {
    let (words, tail) = text.as_bytes().as_chunks::<8>();
    let printable = words
        .iter()
        .all(|word| printable_ascii_word(u64::from_ne_bytes(*word)))
        && tail.iter().all(|byte| (b' '..=b'~').contains(byte));
    !printable && text.chars().any(char::is_control)
}

/// True when each of a word's eight bytes is printable ASCII (from a space to `~`).
fn printable_ascii_word(word: u64) -> bool {
    const fn each(byte: u8) -> u64 {
        u64::from_ne_bytes([byte; 8])
    }
    // Every byte below 0x80, so adding to a byte never carries into the next.
    word & each(0x80) == 0
        && (word + each(0x80 - b' ')) & each(0x80) == each(0x80)
        && (word + each(0x7f - b'~')) & each(0x80) == 0
}

/// W3C trace context carried from the publisher to the handler.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// The `traceparent` header of the publishing span.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The `baggage` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
}

/// What a successful publish returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishReceipt {
    /// The message's id; for a duplicate, the id of the first message with that key.
    pub message_id: MessageId,
    /// True when the idempotency key was seen inside the window and nothing was published.
    pub duplicate: bool,
}

/// A message as delivered to a trigger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The id assigned at publish; the same on every attempt and after a redrive.
    pub id: MessageId,
    /// The topic it was published to.
    pub topic: TopicName,
    /// The payload (shared, not copied, between the triggers of one process).
    pub data: Arc<Value>,
    /// This delivery's attempt, starting at 1.
    pub attempt: u32,
    /// The trigger's attempt limit: the last attempt is `attempt == max_attempts`.
    pub max_attempts: u32,
    /// When the message was accepted by the broker.
    pub enqueued_at: Timestamp,
    /// W3C `traceparent` of the publisher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C `baggage` of the publisher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
    /// The idempotency key it was published with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl Envelope {
    /// True on the trigger's last attempt: a failure now goes to the dead-letter queue.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn any_control_character_is_found_in_any_place() {
        for len in 1..=20 {
            for place in 0..len {
                for code in (0..=0xa0).chain([0xff, 0x2028]) {
                    let Some(odd) = char::from_u32(code) else {
                        continue;
                    };
                    let mut text: Vec<char> = vec!['a'; len];
                    text[place] = odd;
                    let text: String = text.into_iter().collect();
                    let expected = text.chars().any(char::is_control);
                    assert_eq!(has_control_characters(&text), expected, "{text:?}");
                }
            }
        }
    }

    #[test]
    fn control_characters_are_refused_in_ascii_and_other_text_alike() {
        for (text, refused) in [
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            ("tenant=acme,user=ü", false),
            ("line\nbreak", true),
            ("tab\there", true),
            ("delete\u{7f}", true),
            ("ü and a C1 next line\u{85}", true),
            ("ü and a nul\u{0}", true),
        ] {
            let message = NewMessage::new(json!({})).trace(TraceContext {
                traceparent: None,
                baggage: Some(text.to_owned()),
            });
            let result = message.validate_fields();
            assert_eq!(result.is_err(), refused, "{text:?}: {result:?}");
        }
    }

    #[test]
    fn serialized_len_matches_serde_json() {
        let value = json!({"to": "a@example.com", "n": [1, 2, 3], "nested": {"ü": true}});
        let expected = serde_json::to_vec(&value).expect("serializes").len();
        assert_eq!(serialized_len(&value), expected);
    }

    #[test]
    fn validate_refuses_data_deeper_than_the_limit_and_nothing_else() {
        let topic = TopicName::new("deep").expect("a valid name");
        let nested = |levels: usize, innermost: Value| {
            (0..levels).fold(innermost, |inner, _| json!({ "a": [inner] }))
        };
        // Two levels a step, and the innermost value's own: 0, 1 or 2.
        for (innermost, own) in [
            (json!(1), 0),
            (json!([]), 1),
            (json!({}), 1),
            (json!([[]]), 2),
        ] {
            for levels in [
                MAX_DATA_DEPTH / 2 - 1,
                MAX_DATA_DEPTH / 2,
                MAX_DATA_DEPTH / 2 + 1,
            ] {
                let data = nested(levels, innermost.clone());
                let fits = 2 * levels + own <= MAX_DATA_DEPTH;
                let message = NewMessage::new(data.clone());
                assert_eq!(
                    message.validate(&topic, usize::MAX).is_ok(),
                    fits,
                    "{levels} {own}"
                );
                assert_eq!(check_depth(&data).is_ok(), fits, "{levels} {own}");
            }
        }
    }

    #[test]
    fn the_upper_bound_is_never_below_the_size() {
        let values = [
            json!(null),
            json!(-1.5e300),
            json!(u64::MAX),
            json!("quote\" backslash\\ control\u{1} ü"),
            json!({"nested": [1, {"k\n": true}], "": []}),
        ];
        for value in values {
            assert!(
                serialized_len_upper_bound(&value, MAX_DATA_DEPTH)
                    .is_some_and(|bound| bound >= serialized_len(&value)),
                "{value}"
            );
        }
    }

    #[test]
    fn oversized_data_is_refused_with_its_size() {
        let topic = TopicName::new("t").expect("valid");
        let message = NewMessage::new(json!("x".repeat(100)));
        let err = message.validate(&topic, 50).expect_err("too large");
        assert!(
            matches!(
                err,
                Error::PayloadTooLarge {
                    size: 102,
                    limit: 50,
                    ..
                }
            ),
            "{err}"
        );
        message.validate(&topic, 102).expect("fits exactly");
        let err = message.validate(&topic, 101).expect_err("one byte over");
        assert!(
            matches!(
                err,
                Error::PayloadTooLarge {
                    size: 102,
                    limit: 101,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn empty_idempotency_key_is_refused() {
        let topic = TopicName::new("t").expect("valid");
        let err = NewMessage::new(json!(1))
            .idempotency_key("")
            .validate(&topic, 100)
            .expect_err("empty key");
        assert_eq!(err.code(), "invalid_argument");
    }
}
