//! topiq's metadata in AMQP message properties and headers.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use topiq_adapter::{MessageId, Result, Timestamp};

/// Header names topiq writes (AMQP header names are case-sensitive; these are lower case).
pub(crate) mod header {
    pub(crate) const ENQUEUED_AT: &str = "topiq-enqueued-at";
    pub(crate) const ATTEMPT_BASE: &str = "topiq-attempt-base";
    pub(crate) const FIRST_FAILED_AT: &str = "topiq-first-failed-at";
    pub(crate) const IDEMPOTENCY_KEY: &str = "topiq-idempotency-key";
    /// When the topic's retention runs out for the message (milliseconds since the epoch).
    pub(crate) const EXPIRES_AT: &str = "topiq-expires-at";
    /// The topic's lane a message is in, when not lane 0.
    pub(crate) const LANE: &str = "topiq-lane";
    pub(crate) const TRACEPARENT: &str = "traceparent";
    pub(crate) const BAGGAGE: &str = "baggage";
    /// Quorum queues count deliveries here (absent on the first).
    pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";
    /// A stream message's offset.
    pub(crate) const STREAM_OFFSET: &str = "x-stream-offset";
    /// A DLQ stream entry that removes the record at this offset.
    pub(crate) const REMOVES: &str = "topiq-removes";
    /// A DLQ stream entry that marks where a reader's view ends.
    pub(crate) const MARKER: &str = "topiq-marker";
}

/// What topiq carries with a message besides its data.
pub(crate) use topiq_adapter_kit::Stored as Metadata;

/// [`Metadata`] in a message's AMQP properties and back.
pub(crate) trait Properties: Sized {
    /// Persistent JSON message properties carrying this metadata.
    fn properties(&self) -> BasicProperties;
    /// Reads the metadata back; a message without topiq's id is refused.
    fn from_properties(properties: &BasicProperties) -> Result<Self>;
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

fn millis(at: Timestamp) -> AMQPValue {
    AMQPValue::LongLongInt(at.as_millisecond())
}

impl Properties for Metadata {
    fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(header::ENQUEUED_AT.into(), millis(self.enqueued_at));
        if self.attempt_base > 0 {
            headers.insert(
                header::ATTEMPT_BASE.into(),
                AMQPValue::LongLongInt(i64::from(self.attempt_base)),
            );
        }
        if let Some(at) = self.first_failed_at {
            headers.insert(header::FIRST_FAILED_AT.into(), millis(at));
        }
        if let Some(at) = self.expires_at {
            headers.insert(header::EXPIRES_AT.into(), millis(at));
        }
        if self.lane > 0 {
            headers.insert(
                header::LANE.into(),
                AMQPValue::LongLongInt(i64::from(self.lane)),
            );
        }
        for (name, value) in [
            (header::TRACEPARENT, &self.traceparent),
            (header::BAGGAGE, &self.baggage),
            (header::IDEMPOTENCY_KEY, &self.idempotency_key),
        ] {
            if let Some(value) = value {
                headers.insert(name.into(), text(value));
            }
        }
        BasicProperties::default()
            .with_message_id(self.id.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers)
    }

    fn from_properties(properties: &BasicProperties) -> Result<Self> {
        let Some(id) = properties.message_id() else {
            return Err(foreign("it has no message id"));
        };
        let mut enqueued_at = None;
        let mut metadata = Self {
            id: MessageId::from_string(id.as_str()),
            enqueued_at: Timestamp::UNIX_EPOCH,
            attempt_base: 0,
            first_failed_at: None,
            traceparent: None,
            baggage: None,
            idempotency_key: None,
            expires_at: None,
            lane: 0,
        };
        // One pass over the headers (a message has one to a few), not a lookup for each.
        for (name, value) in properties
            .headers()
            .iter()
            .flat_map(|headers| headers.inner())
        {
            match name.as_str() {
                header::ENQUEUED_AT => enqueued_at = as_timestamp(value),
                header::ATTEMPT_BASE => metadata.attempt_base = as_u32(value).unwrap_or(0),
                header::FIRST_FAILED_AT => metadata.first_failed_at = as_timestamp(value),
                header::TRACEPARENT => metadata.traceparent = as_text(value),
                header::BAGGAGE => metadata.baggage = as_text(value),
                header::IDEMPOTENCY_KEY => metadata.idempotency_key = as_text(value),
                header::EXPIRES_AT => metadata.expires_at = as_timestamp(value),
                header::LANE => metadata.lane = as_u32(value).unwrap_or(0),
                _ => {}
            }
        }
        metadata.enqueued_at =
            enqueued_at.ok_or_else(|| foreign("it has no topiq-enqueued-at header"))?;
        Ok(metadata)
    }
}

/// A header's value as a `u32`, if it is an integer in range.
fn as_u32(value: &AMQPValue) -> Option<u32> {
    as_i64(value).and_then(|n| u32::try_from(n).ok())
}

/// A header's integer value, whatever integer type the broker used.
pub(crate) fn as_i64(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}

fn as_timestamp(value: &AMQPValue) -> Option<Timestamp> {
    as_i64(value).and_then(|ms| Timestamp::from_millisecond(ms).ok())
}

pub(crate) fn as_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

/// A header of `properties`.
pub(crate) fn header_of<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(name))
}

/// Queue arguments, built from pairs.
pub(crate) fn arguments(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in pairs {
        table.insert(ShortString::from(*name), value.clone());
    }
    table
}

use topiq_adapter_kit::codec::foreign;
pub(crate) use topiq_adapter_kit::codec::{decode, encode};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn metadata_survives_the_properties() {
        let metadata = Metadata {
            id: MessageId::generate(),
            enqueued_at: Timestamp::from_millisecond(1_700_000_000_123).unwrap(),
            attempt_base: 2,
            first_failed_at: Some(Timestamp::from_millisecond(1_700_000_001_000).unwrap()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            baggage: Some("user=42".into()),
            idempotency_key: Some("order-1".into()),
            expires_at: Some(Timestamp::from_millisecond(1_700_000_002_000).unwrap()),
            lane: 3,
        };
        let back = Metadata::from_properties(&metadata.properties()).unwrap();
        assert_eq!(back, metadata);
    }

    #[test]
    fn absent_headers_take_their_defaults_and_a_missing_enqueue_time_is_refused() {
        let mut headers = FieldTable::default();
        headers.insert(header::ENQUEUED_AT.into(), millis(Timestamp::UNIX_EPOCH));
        headers.insert(header::DELIVERY_COUNT.into(), AMQPValue::LongLongInt(4));
        let properties = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_headers(headers);
        let read = Metadata::from_properties(&properties).unwrap();
        assert_eq!(read.id.as_str(), "m-1");
        assert_eq!((read.attempt_base, read.lane), (0, 0));
        assert!(read.first_failed_at.is_none() && read.expires_at.is_none());
        assert!(read.traceparent.is_none() && read.idempotency_key.is_none());
        let mut other = FieldTable::default();
        other.insert(header::LANE.into(), AMQPValue::LongLongInt(2));
        let without = BasicProperties::default()
            .with_message_id("m-2".into())
            .with_headers(other);
        let refused = Metadata::from_properties(&without).unwrap_err();
        let reason = std::error::Error::source(&refused).map(ToString::to_string);
        assert!(
            reason.is_some_and(|reason| reason.contains("topiq-enqueued-at")),
            "{refused:?}"
        );
    }
}
