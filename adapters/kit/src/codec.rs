//! A message's data on the wire (JSON), the same on every broker.

use serde::ser::{Error as _, Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;
use topiq_adapter::{Error, MAX_DATA_DEPTH, Result, check_depth};

/// `data` as JSON bytes. Data nested deeper than a consumer can read back
/// ([`MAX_DATA_DEPTH`]) is refused as it is written (no walk of its own), as is data that
/// cannot be written: both are the caller's error.
pub fn encode(data: &Value) -> Result<Vec<u8>> {
    let counted = Nested {
        value: data,
        levels: MAX_DATA_DEPTH,
    };
    serde_json::to_vec(&counted).map_err(|err| {
        check_depth(data)
            .err()
            .unwrap_or_else(|| Error::InvalidArgument {
                argument: "data",
                reason: format!("cannot be serialized as JSON: {err}"),
            })
    })
}

/// A value written with its arrays and objects counted: deeper than `levels` is an error.
struct Nested<'a> {
    value: &'a Value,
    levels: usize,
}

impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let inner = || {
            self.levels
                .checked_sub(1)
                .ok_or_else(|| S::Error::custom("nested too deep"))
        };
        match self.value {
            Value::Array(items) => {
                let levels = inner()?;
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for value in items {
                    seq.serialize_element(&Nested { value, levels })?;
                }
                seq.end()
            }
            Value::Object(fields) => {
                let levels = inner()?;
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (key, value) in fields {
                    map.serialize_entry(key, &Nested { value, levels })?;
                }
                map.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// The data of a stored message.
pub fn decode(payload: &[u8]) -> Result<Value> {
    serde_json::from_slice(payload).map_err(|err| Error::Broker {
        operation: "decode",
        source: Box::new(err),
    })
}

/// The error for a message on one of topiq's subjects or queues that topiq did not write
/// (`reason` says what is missing).
pub fn foreign(reason: &str) -> Error {
    Error::Broker {
        operation: "decode",
        source: format!("a message where topiq keeps its own was not written by topiq: {reason}")
            .into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    /// An array holding an array ... `levels` deep.
    fn nested(levels: usize) -> Value {
        (0..levels).fold(json!(1), |inner, _| json!([inner]))
    }

    #[test]
    fn data_as_deep_as_serde_json_reads_is_accepted_and_read_back() {
        let data = nested(MAX_DATA_DEPTH);
        assert_eq!(decode(&encode(&data).unwrap()).unwrap(), data);
        let object = (0..MAX_DATA_DEPTH).fold(json!(1), |inner, _| json!({ "a": inner }));
        assert_eq!(decode(&encode(&object).unwrap()).unwrap(), object);
    }

    #[test]
    fn deeper_data_is_refused_at_publish_because_it_could_not_be_read_back() {
        let data = nested(MAX_DATA_DEPTH + 1);
        let written = serde_json::to_vec(&data).unwrap();
        assert!(
            decode(&written).is_err(),
            "serde_json reads deeper JSON now"
        );
        let err = encode(&data).unwrap_err();
        assert!(err.to_string().contains("127 levels"), "{err}");
    }
}
