//! A run's data, kept as JSON text.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// The data a run keeps for a replay and for the console, as the JSON text it serializes to.
///
/// A finished run outlives its message by up to the store's retention, so it does not hold the
/// message's `Value` (a tree of an allocation per string, map and array, kept alive as long as
/// the run): its text is one allocation, a few times smaller, written once when the run begins
/// (by each of a message's runs on several triggers: a serialization each, where they shared
/// one `Value`) and copied as is into every JSON document the run is serialized into. It is
/// parsed when a run is read as a value (a replay, the console, the HTTP API's answers).
#[derive(Clone)]
pub struct RunData(Kept);

#[derive(Clone)]
enum Kept {
    /// The value's JSON text (always, in practice).
    Text(Box<RawValue>),
    /// The value itself, had writing its text failed (a `Value`'s never does).
    Value(Arc<Value>),
}

impl RunData {
    /// The data of a message whose value is `value`.
    pub fn of(value: &Arc<Value>) -> Self {
        Self(match serde_json::value::to_raw_value(&**value) {
            Ok(text) => Kept::Text(text),
            Err(_) => Kept::Value(Arc::clone(value)),
        })
    }

    /// The data as a value (parsed from its text).
    pub fn value(&self) -> Result<Value, serde_json::Error> {
        match &self.0 {
            Kept::Text(text) => serde_json::from_str(text.get()),
            Kept::Value(value) => Ok(Value::clone(value)),
        }
    }
}

impl From<Value> for RunData {
    fn from(value: Value) -> Self {
        Self::of(&Arc::new(value))
    }
}

impl PartialEq for RunData {
    /// Equal when the values are, however their texts are spaced (a database may respace
    /// the JSON it keeps).
    fn eq(&self, other: &Self) -> bool {
        match (self.value(), other.value()) {
            (Ok(mine), Ok(theirs)) => mine == theirs,
            _ => false,
        }
    }
}

impl PartialEq<Value> for RunData {
    fn eq(&self, other: &Value) -> bool {
        self.value().is_ok_and(|value| value == *other)
    }
}

impl fmt::Debug for RunData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kept::Text(text) => f.write_str(text.get()),
            Kept::Value(value) => write!(f, "{value}"),
        }
    }
}

impl Serialize for RunData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Kept::Text(text) => text.serialize(serializer),
            Kept::Value(value) => value.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for RunData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(|text| Self(Kept::Text(text)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn data_reads_back_as_the_value_it_was_made_of() {
        let value = json!({"to": "a@example.com", "items": [1, 2.5, {"sku": "x"}], "gift": null});
        let data = RunData::from(value.clone());
        assert_eq!(data.value().unwrap(), value);
        assert_eq!(data, value);
    }

    #[test]
    fn data_is_written_into_a_run_document_as_json_not_as_a_string() {
        let data = RunData::from(json!({"n": 1}));
        let doc = serde_json::to_value(&data).unwrap();
        assert_eq!(doc, json!({"n": 1}));
    }

    #[test]
    fn data_reads_back_from_a_document_and_from_a_value() {
        let from_text: RunData = serde_json::from_str(r#"{ "n" : [1, 2] }"#).unwrap();
        let from_value: RunData = serde_json::from_value(json!({"n": [1, 2]})).unwrap();
        assert_eq!(from_text, from_value);
        assert_eq!(from_text.value().unwrap(), json!({"n": [1, 2]}));
    }
}
