//! Per-key order: a trigger's `ordering_key`, a CEL expression over the message whose value
//! names the key, and the partition (lane) a key's messages go to.
//!
//! The key is evaluated when a message is enqueued, and hashed into one of the topic's
//! partitions; an ordered trigger's partitions each hand out one message at a time across
//! every instance, in order (the adapters' ordered subscriptions), so a key's messages run one
//! after the other. An ordered trigger evaluates the key again when it takes a message: one
//! whose key fails is dead-lettered with the reason.

use std::fmt;
use std::sync::Arc;

use cel::{Context, Program, Value as CelValue};
use serde_json::Value;
use topiq_adapter::TopicName;

use crate::condition::{CelProblem, compile_cel, json_to_cel};

/// The variables a key expression may use: what is known when a message is enqueued.
pub const ORDERING_KEY_VARIABLES: &[&str] = &["data", "topic", "idempotency_key"];

/// The partitions of a topic with ordered triggers, unless its `partitions` says otherwise.
pub const DEFAULT_PARTITIONS: u32 = 8;

/// A compiled `ordering_key`.
#[derive(Clone)]
pub struct OrderingKey {
    source: Arc<str>,
    program: Arc<Program>,
}

impl fmt::Debug for OrderingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OrderingKey").field(&self.source).finish()
    }
}

impl PartialEq for OrderingKey {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl OrderingKey {
    /// Compiles `source`; the error says what is wrong with it.
    pub fn compile(source: &str) -> Result<Self, String> {
        let program = compile_cel(source, ORDERING_KEY_VARIABLES).map_err(|problem| match problem {
            CelProblem::Invalid(err) => {
                format!("the ordering key is not a valid CEL expression: {err}")
            }
            CelProblem::Unknown(name) => format!(
                "the ordering key uses `{name}`, which is not known when a message is enqueued; known: {}",
                ORDERING_KEY_VARIABLES.join(", ")
            ),
        })?;
        Ok(Self {
            source: source.into(),
            program: Arc::new(program),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The key of a message: a string, an integer or a boolean, as text. An error when the
    /// expression fails (a missing field) or gives anything else.
    pub fn evaluate(
        &self,
        topic: &TopicName,
        data: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<String, String> {
        let mut context = Context::default();
        context.add_variable_from_value("data", json_to_cel(data));
        context.add_variable_from_value("topic", topic.as_str().to_owned());
        context.add_variable_from_value(
            "idempotency_key",
            match idempotency_key {
                Some(key) => CelValue::String(Arc::new(key.to_owned())),
                None => CelValue::Null,
            },
        );
        let source = &self.source;
        match self.program.execute(&context) {
            Ok(CelValue::String(key)) => Ok(key.as_str().to_owned()),
            Ok(CelValue::Int(key)) => Ok(key.to_string()),
            Ok(CelValue::UInt(key)) => Ok(key.to_string()),
            Ok(CelValue::Bool(key)) => Ok(key.to_string()),
            // The kind only: the value may be the message's data, which logs must not show.
            Ok(other) => Err(format!(
                "the ordering key `{source}` gave a {}; it must be a string, an integer or a boolean",
                kind_of(&other)
            )),
            Err(err) => Err(format!("the ordering key `{source}` failed: {err}")),
        }
    }
}

/// What kind of CEL value `value` is, for an error that must not show the value.
fn kind_of(value: &CelValue) -> &'static str {
    match value {
        CelValue::List(_) => "list",
        CelValue::Map(_) => "map",
        CelValue::Float(_) => "double",
        CelValue::Null => "null",
        CelValue::Bytes(_) => "bytes",
        _ => "value of another kind",
    }
}

/// The partition of `key` among `partitions` (at least 1): the same in every process and
/// release (64-bit FNV-1a), so every publisher sends a key to the same one.
pub fn partition(key: &str, partitions: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = key.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    u32::try_from(hash % u64::from(partitions.max(1))).unwrap_or(0)
}

/// A topic's per-key order: the key its ordered triggers share, and its partition count.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicOrdering {
    /// The ordered triggers' `ordering_key`.
    pub key: OrderingKey,
    /// How many partitions (lanes) the topic has.
    pub partitions: u32,
}

impl TopicOrdering {
    /// The partition a message goes to: its key's; lane 0 when the key fails (an ordered
    /// trigger then dead-letters it with the reason, where the other triggers handle it).
    pub fn lane_of(&self, topic: &TopicName, data: &Value, idempotency_key: Option<&str>) -> u32 {
        match self.key.evaluate(topic, data, idempotency_key) {
            Ok(key) => partition(&key, self.partitions),
            Err(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn topic() -> TopicName {
        TopicName::new("orders").unwrap()
    }

    #[test]
    fn keys_are_text_of_strings_integers_and_booleans() {
        let key = OrderingKey::compile("data.customer").unwrap();
        for (data, expected) in [
            (json!({"customer": "c-1"}), "c-1"),
            (json!({"customer": 42}), "42"),
            (json!({"customer": true}), "true"),
        ] {
            assert_eq!(key.evaluate(&topic(), &data, None).unwrap(), expected);
        }
    }

    #[test]
    fn a_missing_field_or_another_type_is_an_error_naming_the_expression() {
        let key = OrderingKey::compile("data.customer").unwrap();
        let missing = key.evaluate(&topic(), &json!({}), None).unwrap_err();
        assert!(missing.contains("`data.customer` failed"), "{missing}");
        let list = key
            .evaluate(&topic(), &json!({"customer": [1]}), None)
            .unwrap_err();
        assert!(list.contains("gave a list; it must be a string"), "{list}");
        let secret = key
            .evaluate(&topic(), &json!({"customer": {"card": "4242"}}), None)
            .unwrap_err();
        assert!(
            !secret.contains("4242"),
            "the data stays out of errors: {secret}"
        );
    }

    #[test]
    fn only_what_is_known_at_enqueue_may_be_used() {
        let err = OrderingKey::compile("attempt").unwrap_err();
        assert!(err.contains("`attempt`"), "{err}");
        assert!(OrderingKey::compile("data.a ==").is_err());
    }

    #[test]
    fn partitions_are_stable_and_spread_keys() {
        assert_eq!(partition("customer-1", 8), partition("customer-1", 8));
        let mut counts = [0_u32; 8];
        for n in 0..8_000 {
            counts[partition(&format!("customer-{n}"), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(partition("anything", 1), 0);
    }
}
