//! Messages to and from the wire: JSON payload, metadata in headers.

use std::str::FromStr;

use async_nats::HeaderMap;
use bytes::Bytes;
use serde_json::Value;
use topiq_adapter::{MessageId, Result, Timestamp};

use crate::layout::header;

/// Whether a publish is the message's first (its enqueue time is the stream's timestamp) or a
/// copy (release, redrive, dead-letter record), which carries the original enqueue time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stamp {
    First,
    Copy,
}

/// The stream's timestamp of a message, as a [`Timestamp`].
pub(crate) fn stored_at(time: &async_nats::datetime::DateTime) -> Timestamp {
    Timestamp::from_nanosecond(time.unix_timestamp_nanos()).unwrap_or_else(|_| Timestamp::now())
}

/// The metadata of a message, as carried in its headers.
pub(crate) use topiq_adapter_kit::Stored as Metadata;

/// [`Metadata`] in a publish's headers and back.
pub(crate) trait Headers: Sized {
    /// The headers of a publish with dedup id `msg_id`.
    fn headers(&self, msg_id: &str, stamp: Stamp) -> HeaderMap;
    /// Reads the metadata back from a stored message's headers.
    fn from_headers(headers: Option<&HeaderMap>, stored_at: Timestamp) -> Result<Self>;
}

impl Headers for Metadata {
    /// The headers of a publish with dedup id `msg_id`. Kept short on the hot path: the
    /// message id is written only where it differs from `msg_id`, and the enqueue time only on
    /// copies (`Stamp::Copy`); a first publish's enqueue time is the stream's own timestamp.
    fn headers(&self, msg_id: &str, stamp: Stamp) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::MSG_ID, msg_id);
        if msg_id != self.id.as_str() {
            headers.insert(header::ID, self.id.as_str());
        }
        if stamp == Stamp::Copy {
            headers.insert(header::ENQUEUED_AT, self.enqueued_at.to_string().as_str());
        }
        if self.attempt_base > 0 {
            headers.insert(header::ATTEMPT_BASE, self.attempt_base.to_string().as_str());
        }
        if let Some(at) = self.first_failed_at {
            headers.insert(header::FIRST_FAILED_AT, at.to_string().as_str());
        }
        if let Some(value) = &self.traceparent {
            headers.insert(header::TRACEPARENT, value.as_str());
        }
        if let Some(value) = &self.baggage {
            headers.insert(header::BAGGAGE, value.as_str());
        }
        if let Some(value) = &self.idempotency_key {
            headers.insert(header::IDEMPOTENCY_KEY, value.as_str());
        }
        if let Some(at) = self.expires_at {
            headers.insert(header::EXPIRES_AT, at.to_string().as_str());
        }
        if self.lane > 0 {
            headers.insert(header::LANE, self.lane.to_string().as_str());
        }
        headers
    }

    /// Reads the metadata back; `stored_at` (the stream's timestamp of the message) is the
    /// enqueue time of a first publish. A message without topiq's headers is refused.
    fn from_headers(headers: Option<&HeaderMap>, stored_at: Timestamp) -> Result<Self> {
        let Some(headers) = headers else {
            return Err(foreign("it has no headers"));
        };
        // One pass over the (few) headers instead of a hashed lookup per name.
        let (mut id, mut msg_id, mut enqueued_at, mut attempt_base, mut first_failed_at) =
            (None, None, None, None, None);
        let (mut traceparent, mut baggage, mut idempotency_key, mut expires_at, mut lane) =
            (None, None, None, None, None);
        for (name, values) in headers.iter() {
            let Some(value) = values.first().map(|value| value.as_str()) else {
                continue;
            };
            let slot = match name {
                name if *name == header::ID => &mut id,
                name if *name == header::MSG_ID => &mut msg_id,
                name if *name == header::ENQUEUED_AT => &mut enqueued_at,
                name if *name == header::ATTEMPT_BASE => &mut attempt_base,
                name if *name == header::FIRST_FAILED_AT => &mut first_failed_at,
                name if *name == header::TRACEPARENT => &mut traceparent,
                name if *name == header::BAGGAGE => &mut baggage,
                name if *name == header::IDEMPOTENCY_KEY => &mut idempotency_key,
                name if *name == header::EXPIRES_AT => &mut expires_at,
                name if *name == header::LANE => &mut lane,
                _ => continue,
            };
            *slot = Some(value);
        }
        let id = id
            .or(msg_id)
            .ok_or_else(|| foreign("it has neither a Topiq-Id nor a Nats-Msg-Id header"))?;
        let enqueued_at = match enqueued_at {
            None => stored_at,
            Some(at) => Timestamp::from_str(at)
                .map_err(|_| foreign("its Topiq-Enqueued-At header is not a time"))?,
        };
        Ok(Self {
            id: MessageId::from_string(id),
            enqueued_at,
            attempt_base: attempt_base.and_then(|base| base.parse().ok()).unwrap_or(0),
            first_failed_at: first_failed_at.and_then(|at| Timestamp::from_str(at).ok()),
            traceparent: traceparent.map(str::to_owned),
            baggage: baggage.map(str::to_owned),
            idempotency_key: idempotency_key.map(str::to_owned),
            expires_at: expires_at.and_then(|at| Timestamp::from_str(at).ok()),
            lane: lane.and_then(|lane| lane.parse().ok()).unwrap_or(0),
        })
    }
}

/// `data` as a publish's payload.
pub(crate) fn encode(data: &Value) -> Result<Bytes> {
    topiq_adapter_kit::codec::encode(data).map(Bytes::from)
}

pub(crate) use topiq_adapter_kit::codec::decode;
use topiq_adapter_kit::codec::foreign;
