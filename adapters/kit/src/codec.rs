//! A message's data on the wire (JSON), the same on every broker.

use serde_json::Value;
use topiq_adapter::{Error, Result};

/// `data` as JSON bytes; data that cannot be written is the caller's error.
pub fn encode(data: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(data).map_err(|err| Error::InvalidArgument {
        argument: "data",
        reason: format!("cannot be serialized as JSON: {err}"),
    })
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
