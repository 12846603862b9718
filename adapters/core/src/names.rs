//! Validated names: topics, triggers, message ids. The rules a name must keep, and the errors
//! that say which one it broke, are in `naming.rs`.
//!
//! Names are checked once, when they are built, so every adapter can map them onto its broker
//! (a NATS subject and stream name, an AMQP routing key and queue name) without escaping.

use std::fmt;
use std::sync::{Arc, Mutex};

use arrayvec::ArrayString;
use jiff::Timestamp;

use serde::{Deserialize, Serialize};

/// The longest topic name accepted, in bytes (AMQP routing keys stop at 255; the rest is kept
/// for the prefixes adapters add).
pub const MAX_TOPIC_LEN: usize = 200;

/// The longest trigger name accepted, in bytes.
pub const MAX_TRIGGER_LEN: usize = 100;

/// A topic: dot-separated tokens of ASCII letters, digits, `_` and `-`, such as `emails.send`.
///
/// The rules make a topic a valid NATS subject without wildcards and a valid AMQP routing key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TopicName(pub(crate) Arc<str>);

impl TopicName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as written, shared (a reference count, not a copy).
    pub fn shared(&self) -> Arc<str> {
        Arc::clone(&self.0)
    }
}

/// A trigger: the name of one durable subscription to a topic, such as `send-email`.
///
/// ASCII letters, digits, `_` and `-`, at most [`MAX_TRIGGER_LEN`] bytes: valid as a JetStream
/// consumer name and as part of a RabbitMQ queue name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TriggerName(pub(crate) Arc<str>);

impl TriggerName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as written, shared (a reference count, not a copy).
    pub fn shared(&self) -> Arc<str> {
        Arc::clone(&self.0)
    }
}

/// One trigger's durable subscription to one topic: the unit of fan-out (every key receives
/// every message of its topic) and of competing consumers (consumers of one key share its
/// messages).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubscriptionKey {
    /// The topic subscribed to.
    pub topic: TopicName,
    /// The trigger that owns the subscription.
    pub trigger: TriggerName,
}

impl SubscriptionKey {
    /// The subscription of `trigger` to `topic`.
    pub fn new(topic: TopicName, trigger: TriggerName) -> Self {
        Self { topic, trigger }
    }
}

impl fmt::Display for SubscriptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.trigger)
    }
}

/// A message's id, assigned by the adapter at publish time (a UUIDv7, so ids sort by time).
///
/// The id stays the same across retries and redrives of the message. Ids up to 36 bytes (a
/// UUID's text) are kept inline, so making and copying one allocates nothing; longer ones
/// (read back from a broker or given by a user) are shared.
#[derive(Clone)]
pub struct MessageId(IdText);

/// The text of a [`MessageId`].
#[derive(Clone)]
enum IdText {
    Inline(ArrayString<INLINE_ID_LEN>),
    Shared(Arc<str>),
}

/// A hyphenated UUID's length, the longest id kept inline.
const INLINE_ID_LEN: usize = 36;

impl MessageId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        Self::generate_at(Timestamp::now())
    }

    /// A fresh, time-ordered id stamped `now`: a publish that has read the clock for its
    /// enqueue time reads it once. Ids sort in the order they were made, within one
    /// millisecond too (UUIDv7's counter, shared by every id of the process); a `now` earlier
    /// than an id already made (a clock stepped back) is stamped with that id's time.
    pub fn generate_at(now: Timestamp) -> Self {
        /// The process's UUIDv7 counter (as `Uuid::now_v7` keeps its own).
        static CONTEXT: Mutex<uuid::ContextV7> = Mutex::new(uuid::ContextV7::new());
        let seconds = u64::try_from(now.as_second()).unwrap_or(0);
        let nanos = u32::try_from(now.subsec_nanosecond()).unwrap_or(0);
        let stamp = uuid::Timestamp::from_unix(&CONTEXT, seconds, nanos);
        let mut buffer = uuid::Uuid::encode_buffer();
        Self::from_string(
            &*uuid::Uuid::new_v7(stamp)
                .hyphenated()
                .encode_lower(&mut buffer),
        )
    }

    /// Wraps an id read back from a broker or given by a user (for a redrive by id).
    pub fn from_string(id: impl AsRef<str>) -> Self {
        let id = id.as_ref();
        Self(match ArrayString::from(id) {
            Ok(inline) => IdText::Inline(inline),
            Err(_) => IdText::Shared(Arc::from(id)),
        })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            IdText::Inline(text) => text.as_str(),
            IdText::Shared(text) => text,
        }
    }
}

impl PartialEq for MessageId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for MessageId {}

impl PartialOrd for MessageId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MessageId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for MessageId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(IdVisitor)
    }
}

/// Reads a [`MessageId`] from any string without an intermediate `String`.
struct IdVisitor;

impl serde::de::Visitor<'_> for IdVisitor {
    type Value = MessageId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message id (a string)")
    }

    fn visit_str<E: serde::de::Error>(self, id: &str) -> Result<MessageId, E> {
        Ok(MessageId::from_string(id))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl AsRef<str> for MessageId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

macro_rules! name_impls {
    ($($name:ident),*) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    )*};
}

name_impls!(TopicName, TriggerName);

// Their `Eq`, `Ord` and `Hash` are the text's, so maps keyed by them can be searched by `&str`.
macro_rules! borrow_as_str {
    ($($name:ident),*) => {$(
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    )*};
}

borrow_as_str!(TopicName, TriggerName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_sort_by_creation_time() {
        let first = MessageId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = MessageId::generate();
        assert!(first < second);
    }

    #[test]
    fn ids_stamped_with_one_time_carry_it_and_sort_in_the_order_made() {
        // Far ahead of the clock: the process's counter never goes back to an earlier time
        // (below), so ids other tests of this process made at the real time cannot be later.
        let now: Timestamp = "2200-01-01T00:00:05.678Z".parse().unwrap();
        let millisecond = |id: &MessageId| {
            let uuid = uuid::Uuid::parse_str(id.as_str()).unwrap();
            assert_eq!(uuid.get_version_num(), 7);
            let (seconds, nanos) = uuid.get_timestamp().unwrap().to_unix();
            (seconds, nanos / 1_000_000)
        };
        let ids: Vec<MessageId> = (0..1_000).map(|_| MessageId::generate_at(now)).collect();
        assert!(ids.iter().all(|id| millisecond(id) == (7_258_118_405, 678)));
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        // A clock that steps back makes no id that sorts before one already made.
        let earlier = MessageId::generate_at(now - std::time::Duration::from_secs(1));
        assert!(earlier > ids[999]);
        assert_eq!(millisecond(&earlier), (7_258_118_405, 678));
    }

    #[test]
    fn ids_of_any_length_compare_hash_and_serialize_as_their_text() {
        use std::collections::HashSet;
        let long = "a-message-id-given-by-another-publisher-longer-than-a-uuid";
        for text in ["0193a4b2-7c1d-7e2f-8a9b-0c1d2e3f4a5b", long, ""] {
            let id = MessageId::from_string(text);
            assert_eq!(id.as_str(), text);
            assert_eq!(id.to_string(), text);
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(json, serde_json::to_string(text).unwrap());
            let back: MessageId = serde_json::from_str(&json).unwrap();
            assert_eq!(back, id);
            assert_eq!(HashSet::from([id.clone()]).get(&back), Some(&id));
        }
        assert!(MessageId::from_string("b") > MessageId::from_string(long));
        assert!(serde_json::from_str::<MessageId>("7").is_err());
    }
}
