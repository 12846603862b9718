//! A message's data on the wire (JSON), the same on every broker.

use serde_json::Value;
use topiq_adapter::{Error, MAX_DATA_DEPTH, Result, data_too_deep};

use crate::json_writer::{Unwritten, write_value};

/// Room for a message of the usual size, so most are written without growing the buffer.
const USUAL_SIZE: usize = 256;

/// `data` as JSON bytes (what `serde_json::to_vec` writes). Data nested deeper than a consumer
/// can read back ([`MAX_DATA_DEPTH`]) is refused as it is written (no walk of its own): the
/// caller's error.
pub fn encode(data: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(USUAL_SIZE);
    match write_value(&mut out, data, MAX_DATA_DEPTH) {
        Ok(()) => Ok(out),
        Err(Unwritten::TooDeep) => Err(data_too_deep()),
        Err(Unwritten::Number(err)) => Err(Error::InvalidArgument {
            argument: "data",
            reason: format!("cannot be serialized as JSON: {err}"),
        }),
    }
}

/// The data of a stored message.
///
/// The payload is checked to be UTF-8 once, whole, and then read as text: read as bytes,
/// `serde_json` checks each string on its own (some 1,100 of the 12,000 instructions of the
/// benchmarks' 200-byte message). The same payloads are refused either way.
pub fn decode(payload: &[u8]) -> Result<Value> {
    let broker = |source: Box<dyn std::error::Error + Send + Sync>| Error::Broker {
        operation: "decode",
        source,
    };
    let text = std::str::from_utf8(payload).map_err(|err| broker(Box::new(err)))?;
    serde_json::from_str(text).map_err(|err| broker(Box::new(err)))
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
    fn data_as_deep_as_the_limit_is_written_and_read_back() {
        let data = nested(MAX_DATA_DEPTH);
        assert_eq!(decode(&encode(&data).unwrap()).unwrap(), data);
        let object = (0..MAX_DATA_DEPTH).fold(json!(1), |inner, _| json!({ "a": inner }));
        assert_eq!(decode(&encode(&object).unwrap()).unwrap(), object);
    }

    #[test]
    fn deeper_data_is_refused_as_it_is_written() {
        for data in [
            nested(MAX_DATA_DEPTH + 1),
            (0..MAX_DATA_DEPTH).fold(json!([]), |inner, _| json!({ "a": inner })),
        ] {
            let err = encode(&data).unwrap_err();
            let expected = format!("more than {MAX_DATA_DEPTH} levels deep");
            assert!(err.to_string().contains(&expected), "{err}");
        }
    }

    /// The limit leaves room below serde_json's (128 levels: the 128th array or object is
    /// refused) for the records topiq wraps data in: a dead-letter record, a run record, an
    /// HTTP function's body, a page of the HTTP API (at most three levels more).
    #[test]
    fn the_limit_leaves_room_for_three_wrapping_levels_below_serde_json_s() {
        let wrapped = (0..3).fold(nested(MAX_DATA_DEPTH), |inner, _| json!({ "page": inner }));
        let written = serde_json::to_vec(&wrapped).unwrap();
        assert!(decode(&written).is_ok());
        assert!(decode(&serde_json::to_vec(&nested(127)).unwrap()).is_ok());
        assert!(
            decode(&serde_json::to_vec(&nested(128)).unwrap()).is_err(),
            "serde_json reads deeper JSON now: MAX_DATA_DEPTH may grow"
        );
    }

    #[test]
    fn decode_refuses_and_reads_what_serde_json_reading_bytes_does() {
        let payloads: [&[u8]; 7] = [
            br#"{"a": "x\u00e9", "b": [1, 2.5e3, null]}"#,
            "{\"ü\": \"€\"}".as_bytes(),
            b"{\"a\": \"\xff\"}",
            b"{\"a\": 1}\xff",
            b"\xc3",
            b"{\"a\": 1,}",
            b"",
        ];
        for payload in payloads {
            let expected = serde_json::from_slice::<Value>(payload).ok();
            assert_eq!(decode(payload).ok(), expected, "{payload:?}");
        }
    }

    #[test]
    fn the_counted_writer_writes_what_serde_json_writes() {
        let data = json!({"to": "a@example.com", "n": [1, 2.5, {"k": null}], "ü\n": "\"q\""});
        assert_eq!(encode(&data).unwrap(), serde_json::to_vec(&data).unwrap());
    }
}
