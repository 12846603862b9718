//! Where each topic, trigger and record lives on the server: stream names, subjects, headers.

use topiq_adapter::{TopicName, TriggerName};

/// Headers topiq sets on every message.
pub(crate) mod header {
    use async_nats::HeaderName;

    /// JetStream's deduplication id.
    pub(crate) const MSG_ID: HeaderName = HeaderName::from_static("Nats-Msg-Id");
    /// The message id, the same on every copy (retry, release, redrive).
    pub(crate) const ID: HeaderName = HeaderName::from_static("Topiq-Id");
    /// When the message was first enqueued (RFC 3339).
    pub(crate) const ENQUEUED_AT: HeaderName = HeaderName::from_static("Topiq-Enqueued-At");
    /// Attempts already spent before this copy was published (release, redrive).
    pub(crate) const ATTEMPT_BASE: HeaderName = HeaderName::from_static("Topiq-Attempt-Base");
    /// When a redriven message was first dead-lettered.
    pub(crate) const FIRST_FAILED_AT: HeaderName = HeaderName::from_static("Topiq-First-Failed-At");
    /// The idempotency key the message was published with.
    pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("Topiq-Idempotency-Key");
    /// When a delayed message is due (RFC 3339).
    pub(crate) const DELIVER_AT: HeaderName = HeaderName::from_static("Topiq-Deliver-At");
    /// When the topic's retention runs out for the message.
    pub(crate) const EXPIRES_AT: HeaderName = HeaderName::from_static("Topiq-Expires-At");
    /// The topic's lane a message is in, when not lane 0.
    pub(crate) const LANE: HeaderName = HeaderName::from_static("Topiq-Lane");
    /// The topic a delayed message is for.
    pub(crate) const TOPIC: HeaderName = HeaderName::from_static("Topiq-Topic");
    /// W3C trace context.
    pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    /// W3C baggage.
    pub(crate) const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
}

/// What a lane adds to a name: nothing for lane 0 (the names topics had before lanes), the
/// lane's number for the others.
fn lane_tag(lane: u32) -> String {
    if lane == 0 {
        String::new()
    } else {
        lane.to_string()
    }
}

/// Names derived from the configured subject prefix.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// The configured `prefix`, first in every name.
    pub(crate) prefix: String,
}

impl Layout {
    /// Stream names cannot hold `.`; two topics that differ only by `.` versus `_` map to the
    /// same name, which `declare_topic` detects from the stream's subjects.
    fn stream_part(topic: &TopicName) -> String {
        topic.as_str().replace('.', "_")
    }

    /// The stream holding a topic's messages (fan-out and trigger-only copies).
    pub(crate) fn topic_stream(&self, topic: &TopicName) -> String {
        format!("{}_{}", self.prefix, Self::stream_part(topic))
    }

    /// The stream holding a topic's dead-letter records.
    pub(crate) fn dlq_stream(&self, topic: &TopicName) -> String {
        format!("{}_{}_DLQ", self.prefix, Self::stream_part(topic))
    }

    /// The stream recording, per idempotency key, the first message's id for the window.
    pub(crate) fn ledger_stream(&self, topic: &TopicName) -> String {
        format!("{}_{}_IDEM", self.prefix, Self::stream_part(topic))
    }

    /// The ledger entry of one (hex-encoded) idempotency key.
    pub(crate) fn ledger_subject(&self, topic: &TopicName, hex_key: &str) -> String {
        format!("{}.idem.{topic}.{hex_key}", self.prefix)
    }

    pub(crate) fn ledger_wildcard(&self, topic: &TopicName) -> String {
        format!("{}.idem.{topic}.*", self.prefix)
    }

    /// The stream holding delayed messages of every topic until they are due.
    pub(crate) fn delay_stream(&self) -> String {
        format!("{}_DELAYED", self.prefix)
    }

    /// Where a publish to `topic` goes (every trigger receives it).
    pub(crate) fn topic_subject(&self, topic: &TopicName) -> String {
        self.lane_subject(topic, 0)
    }

    /// Where a publish to `lane` of `topic` goes: lane 0 is the topic's subject
    /// (`<prefix>.t.<topic>`), lane `n` `<prefix>.t<n>.<topic>`.
    pub(crate) fn lane_subject(&self, topic: &TopicName, lane: u32) -> String {
        format!("{}.t{}.{topic}", self.prefix, lane_tag(lane))
    }

    /// Where a copy for one trigger only goes (redrive, release), in its lane.
    pub(crate) fn direct_subject(
        &self,
        topic: &TopicName,
        trigger: &TriggerName,
        lane: u32,
    ) -> String {
        format!("{}.d{}.{topic}.{trigger}", self.prefix, lane_tag(lane))
    }

    pub(crate) fn direct_wildcard(&self, topic: &TopicName, lane: u32) -> String {
        format!("{}.d{}.{topic}.*", self.prefix, lane_tag(lane))
    }

    /// Where a trigger's dead-letter records go.
    pub(crate) fn dlq_subject(&self, topic: &TopicName, trigger: &TriggerName) -> String {
        format!("{}.dlq.{topic}.{trigger}", self.prefix)
    }

    pub(crate) fn dlq_wildcard(&self, topic: &TopicName) -> String {
        format!("{}.dlq.{topic}.*", self.prefix)
    }

    /// Where a delayed message for `topic` waits.
    pub(crate) fn delay_subject(&self, topic: &TopicName) -> String {
        format!("{}.delayed.{topic}", self.prefix)
    }

    pub(crate) fn delay_wildcard(&self) -> String {
        format!("{}.delayed.>", self.prefix)
    }

    /// The durable consumer of a trigger's fan-out messages in `lane` (`m-`, `m<n>-`, `d-`
    /// and `d<n>-` prefixes keep every name of a trigger apart from every other trigger's).
    pub(crate) fn main_consumer(trigger: &TriggerName, lane: u32) -> String {
        format!("m{}-{trigger}", lane_tag(lane))
    }

    /// The durable consumer of a trigger's own copies in `lane`.
    pub(crate) fn direct_consumer(trigger: &TriggerName, lane: u32) -> String {
        format!("d{}-{trigger}", lane_tag(lane))
    }

    /// The durable consumer that releases delayed messages when due.
    pub(crate) const SCHEDULER: &'static str = "scheduler";
}
