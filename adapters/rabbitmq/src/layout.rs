//! Names of everything topiq declares on RabbitMQ, and the delay buckets.
//!
//! Generated names use `:` as separator, which topic and trigger names cannot hold, so no two
//! of them collide. A name over AMQP's 255 bytes keeps its prefix and kind and replaces the
//! rest by a 128-bit FNV-1a hash.

use std::borrow::Cow;
use std::time::Duration;

use topiq_adapter::{SubscriptionKey, TopicName};

/// AMQP's limit on queue and exchange names.
const MAX_NAME: usize = 255;

/// The names of one adapter's exchanges and queues.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// The configured `prefix`, first in every name.
    pub(crate) prefix: String,
}

impl Layout {
    fn name(&self, kind: &str, parts: &[&str]) -> String {
        let name = format!("{}:{kind}:{}", self.prefix, parts.join(":"));
        if name.len() <= MAX_NAME {
            return name;
        }
        format!(
            "{}:{kind}:{:032x}",
            self.prefix,
            fnv1a_128(parts.join(":").as_bytes())
        )
    }

    /// The durable topic exchange every topic is published to (routing key = topic).
    pub(crate) fn exchange(&self) -> &str {
        &self.prefix
    }

    /// One trigger's queue, bound to the exchange with its topic.
    pub(crate) fn trigger_queue(&self, key: &SubscriptionKey) -> String {
        self.name("t", &[key.topic.as_str(), key.trigger.as_str()])
    }

    /// One trigger's queue for `lane` of its topic: lane 0 is [`trigger_queue`](Self::trigger_queue)
    /// (the name topics had before lanes), lane `n` `<prefix>:t:<topic>:<trigger>:<n>`.
    pub(crate) fn lane_queue(&self, key: &SubscriptionKey, lane: u32) -> String {
        if lane == 0 {
            return self.trigger_queue(key);
        }
        let lane = lane.to_string();
        self.name("t", &[key.topic.as_str(), key.trigger.as_str(), &lane])
    }

    /// The routing key of `lane` of `topic` on the exchange: the topic for lane 0,
    /// `<topic>:lane:<n>` for the others (`:` is in no topic name, so no topic has it).
    pub(crate) fn lane_routing_key(topic: &TopicName, lane: u32) -> Cow<'_, str> {
        if lane == 0 {
            Cow::Borrowed(topic.as_str())
        } else {
            Cow::Owned(format!("{topic}:lane:{lane}"))
        }
    }

    /// The topic's dead-letter stream (records of every trigger on it).
    pub(crate) fn dlq_stream(&self, topic: &TopicName) -> String {
        self.name("dlq", &[topic.as_str()])
    }

    /// The queue where a trigger's retries in `lane` wait `bucket` before going back to its
    /// queue of that lane.
    pub(crate) fn retry_queue(&self, key: &SubscriptionKey, lane: u32, bucket: Duration) -> String {
        let ms = bucket.as_millis().to_string();
        let lane = lane_part(lane);
        let parts = [key.topic.as_str(), key.trigger.as_str(), &lane, &ms];
        self.name("retry", &without_empty(&parts))
    }

    /// The queue where delayed publishes to `lane` of `topic` wait `bucket` before reaching it.
    pub(crate) fn delay_queue(&self, topic: &TopicName, lane: u32, bucket: Duration) -> String {
        let ms = bucket.as_millis().to_string();
        let lane = lane_part(lane);
        self.name("delay", &without_empty(&[topic.as_str(), &lane, &ms]))
    }

    /// The queue that holds an idempotency key's claim (the first message with the key).
    pub(crate) fn key_claim_queue(&self, topic: &TopicName, key: &str) -> String {
        let hash = format!("{:032x}", fnv1a_128(key.as_bytes()));
        self.name("key", &[topic.as_str(), &hash])
    }

    /// The queue that says a key's first message reached its topic.
    pub(crate) fn key_done_queue(&self, topic: &TopicName, key: &str) -> String {
        let hash = format!("{:032x}", fnv1a_128(key.as_bytes()));
        self.name("keydone", &[topic.as_str(), &hash])
    }
}

/// What a lane adds to a bucket queue's name: nothing for lane 0 (the names before lanes),
/// `l<n>` for the others.
fn lane_part(lane: u32) -> String {
    if lane == 0 {
        String::new()
    } else {
        format!("l{lane}")
    }
}

/// `parts` without the empty ones.
fn without_empty<'a>(parts: &[&'a str]) -> Vec<&'a str> {
    parts
        .iter()
        .copied()
        .filter(|part| !part.is_empty())
        .collect()
}

/// The longest delay a bucket holds: RabbitMQ's TTLs are 32-bit milliseconds.
pub(crate) const MAX_DELAY: Duration = Duration::from_millis(u32::MAX as u64);

/// The bucket a delay waits in: the delay rounded up to two significant digits of
/// milliseconds (at most 10% later, never earlier), so a trigger's retries and a topic's
/// delayed publishes need only a few queues.
pub(crate) fn bucket(delay: Duration) -> Duration {
    let ms = u64::try_from(delay.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_DELAY.as_millis() as u64);
    let mut scale = 1;
    while ms / scale >= 100 {
        scale *= 10;
    }
    Duration::from_millis(ms.div_ceil(scale) * scale).min(MAX_DELAY)
}

/// 128-bit FNV-1a: a stable hash (the same in every process and release) for names.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes.iter().fold(OFFSET, |hash, byte| {
        (hash ^ u128::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use topiq_adapter::TriggerName;

    use super::*;

    #[test]
    fn buckets_round_up_to_two_significant_digits() {
        let ms = |n| Duration::from_millis(n);
        assert_eq!(bucket(ms(0)), ms(1));
        assert_eq!(bucket(ms(250)), ms(250));
        assert_eq!(bucket(ms(1234)), ms(1300));
        assert_eq!(bucket(ms(5000)), ms(5000));
        assert_eq!(bucket(ms(86_400_001)), ms(87_000_000));
        assert_eq!(bucket(Duration::from_secs(100 * 86_400)), MAX_DELAY);
    }

    #[test]
    fn long_names_are_hashed_within_amqp_limits() {
        let layout = Layout {
            prefix: "topiq".into(),
        };
        let topic = TopicName::new("a".repeat(200)).unwrap();
        let key = SubscriptionKey::new(topic.clone(), TriggerName::new("b".repeat(100)).unwrap());
        let name = layout.trigger_queue(&key);
        assert!(
            name.len() <= MAX_NAME && name.starts_with("topiq:t:"),
            "{name}"
        );
        assert_ne!(name, layout.retry_queue(&key, 0, Duration::from_secs(1)));
        assert_ne!(name, layout.lane_queue(&key, 1));
        let short = SubscriptionKey::new(
            TopicName::new("emails.send").unwrap(),
            TriggerName::new("mailer").unwrap(),
        );
        assert_eq!(layout.trigger_queue(&short), "topiq:t:emails.send:mailer");
        assert_eq!(layout.lane_queue(&short, 0), "topiq:t:emails.send:mailer");
        assert_eq!(layout.lane_queue(&short, 2), "topiq:t:emails.send:mailer:2");
        assert_eq!(
            layout.retry_queue(&short, 2, Duration::from_millis(500)),
            "topiq:retry:emails.send:mailer:l2:500"
        );
    }
}
