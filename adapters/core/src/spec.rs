//! What the runtime declares on an adapter at start: topics, subscriptions, and how a consumer
//! pulls; and what an adapter declares it can do.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::message::DEFAULT_MAX_MESSAGE_BYTES;
use crate::names::{SubscriptionKey, TopicName};

/// The default idempotency window (the same as JetStream's default duplicate window).
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(120);

/// The default visibility timeout (the same as JetStream's default `ack_wait`).
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

/// The shortest visibility timeout a subscription takes, on every adapter and in
/// `config.yaml` alike: below it, a lease extended every half timeout costs more than the
/// call it protects, and clocks of two machines differ by that much.
pub const MIN_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(1);

/// The most lanes a topic is split into (priority levels, or the partitions of ordered
/// triggers).
pub const MAX_LANES: u32 = 32;

/// The default attempt limit: the first attempt and three retries.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;

/// A topic and its topic-wide options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic.
    pub name: TopicName,
    /// Largest serialized `data` accepted by a publish.
    pub max_message_bytes: usize,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Messages waiting longer than this are discarded; `None` keeps them until handled.
    pub retention: Option<Duration>,
    /// Dead-letter records older than this are discarded; `None` keeps them until redriven or
    /// purged.
    pub dlq_retention: Option<Duration>,
    /// How many lanes its messages are split into (1: none; at most [`MAX_LANES`]): each
    /// message goes to one ([`NewMessage::lane`](crate::NewMessage::lane)) and every trigger
    /// consumes each lane separately ([`ConsumeOptions::lane`]), so the runtime decides which
    /// lane a trigger takes from next (the priority levels). Lane 0 is where a topic without
    /// lanes keeps its messages.
    pub lanes: u32,
}

impl TopicSpec {
    /// A topic with the default options.
    pub fn new(name: TopicName) -> Self {
        Self {
            name,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            retention: None,
            dlq_retention: None,
            lanes: 1,
        }
    }

    /// `lane` while the topic has it; lane 0 once its lanes were lowered below it (where a
    /// delayed, redriven or released message of a removed lane goes).
    pub fn lane_or_first(&self, lane: u32) -> u32 {
        if lane < self.lanes { lane } else { 0 }
    }

    /// Checks the options against each other and against what `capabilities` allow.
    pub fn validate(&self, capabilities: &Capabilities) -> Result<()> {
        if self.max_message_bytes == 0 || self.max_message_bytes > capabilities.max_message_bytes {
            return Err(Error::InvalidArgument {
                argument: "max_message_bytes",
                reason: format!(
                    "must be between 1 and {} for {}, got {}",
                    capabilities.max_message_bytes, capabilities.adapter, self.max_message_bytes
                ),
            });
        }
        if self.idempotency_window.is_zero() {
            return Err(Error::InvalidArgument {
                argument: "idempotency_window",
                reason: "must be longer than zero".into(),
            });
        }
        if self.lanes == 0 || self.lanes > MAX_LANES {
            return Err(Error::InvalidArgument {
                argument: "lanes",
                reason: format!("must be 1 to {MAX_LANES}, got {}", self.lanes),
            });
        }
        if self.lanes > capabilities.max_lanes {
            return Err(Error::Unsupported {
                adapter: capabilities.adapter,
                option: "lanes",
                hint: "this adapter does not split topics into lanes yet: leave out the option that needs them (priority levels)",
            });
        }
        if (self.retention.is_some() || self.dlq_retention.is_some()) && !capabilities.retention {
            return Err(Error::Unsupported {
                adapter: capabilities.adapter,
                option: "retention",
                hint: "remove `retention` / `dlq_retention` for this topic",
            });
        }
        Ok(())
    }
}

/// One trigger's durable subscription and its delivery policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// The topic and trigger.
    pub key: SubscriptionKey,
    /// The attempt limit (at least 1): after it the message is dead-lettered.
    pub max_attempts: u32,
    /// A delivery not settled and not extended within this time is delivered again.
    pub visibility_timeout: Duration,
    /// Where every message dead-lettered on this trigger is also published (see
    /// [`DeadLetter::notification`](crate::DeadLetter::notification)), whichever path took it
    /// to the DLQ: a handler's failure, a lease that ran out on the last attempt, a delivery
    /// past the attempt limit. Must be a declared topic.
    pub dead_letter_topic: Option<TopicName>,
    /// Each lane of the topic is handed out one message at a time, across every consumer of
    /// the trigger, in the order it holds them: the next is delivered only once the one
    /// before is acknowledged or dead-lettered. A nack, a release or a lease that runs out
    /// keeps the message first (a nacked one comes back after its delay, and nothing of its
    /// lane goes before it); a release then counts as an attempt on the brokers, which count
    /// deliveries. Redriven and replayed copies are outside that order.
    pub ordered: bool,
}

impl SubscriptionSpec {
    /// A subscription with the default delivery policy.
    pub fn new(key: SubscriptionKey) -> Self {
        Self {
            key,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            dead_letter_topic: None,
            ordered: false,
        }
    }

    /// Checks the policy's ranges.
    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::InvalidArgument {
                argument: "max_attempts",
                reason: "must be at least 1 (the first attempt)".into(),
            });
        }
        if self.dead_letter_topic.as_ref() == Some(&self.key.topic) {
            return Err(Error::InvalidArgument {
                argument: "dead_letter_topic",
                reason: format!(
                    "must differ from the trigger's own topic {} (a failing message would come back to the trigger that failed it)",
                    self.key.topic
                ),
            });
        }
        if self.visibility_timeout < MIN_VISIBILITY_TIMEOUT {
            return Err(Error::InvalidArgument {
                argument: "visibility_timeout",
                reason: format!(
                    "must be at least {MIN_VISIBILITY_TIMEOUT:?}, got {:?}",
                    self.visibility_timeout
                ),
            });
        }
        Ok(())
    }
}

/// Checks that `lane` is one of the `lanes` of `topic` (a topic has one at least).
pub(crate) fn check_lane(topic: &TopicName, lane: u32, lanes: u32) -> Result<()> {
    let lanes = lanes.max(1);
    if lane < lanes {
        return Ok(());
    }
    Err(Error::InvalidArgument {
        argument: "lane",
        reason: format!("topic {topic} has {lanes} lane(s), numbered from 0; got lane {lane}"),
    })
}

/// How one consumer pulls from a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// At most this many deliveries are handed to this consumer and left unsettled at once
    /// (the runtime sets it to the trigger's concurrency times its batch size).
    pub prefetch: u32,
    /// At most this many deliveries received from the broker and not yet handed out (taken
    /// from the subscription); `None`: up to `prefetch`. It bounds what one consumer holds
    /// ahead of its handlers, so that consumers elsewhere get their share of a lane (priority
    /// across instances) while `prefetch` still lets handled deliveries wait for their
    /// settlement. RabbitMQ bounds only unsettled deliveries, so there the bound is
    /// `min(prefetch, 2 × read_ahead)` unsettled.
    pub read_ahead: Option<u32>,
    /// The lane of the topic this consumer takes from (0 on a topic without lanes).
    pub lane: u32,
}

impl ConsumeOptions {
    /// Lane 0 with `prefetch`, reading ahead up to it.
    pub fn with_prefetch(prefetch: u32) -> Self {
        Self {
            prefetch,
            read_ahead: None,
            lane: 0,
        }
    }

    /// The same options on `lane`.
    pub fn on_lane(self, lane: u32) -> Self {
        Self { lane, ..self }
    }

    /// The same options holding at most `read_ahead` deliveries not yet handed out.
    pub fn reading_ahead(self, read_ahead: u32) -> Self {
        Self {
            read_ahead: Some(read_ahead),
            ..self
        }
    }

    /// How many deliveries may wait received and not handed out.
    pub fn ahead(&self) -> u32 {
        self.read_ahead.unwrap_or(self.prefetch).min(self.prefetch)
    }

    /// Checks that the lane is one of the `lanes` of `topic`.
    pub fn check_lane(&self, topic: &TopicName, lanes: u32) -> Result<()> {
        check_lane(topic, self.lane, lanes)
    }

    /// Checks the options' ranges.
    pub fn validate(&self) -> Result<()> {
        if self.prefetch == 0 {
            return Err(Error::InvalidArgument {
                argument: "prefetch",
                reason: "must be at least 1".into(),
            });
        }
        if self.read_ahead == Some(0) {
            return Err(Error::InvalidArgument {
                argument: "read_ahead",
                reason: "must be at least 1 (or none: up to prefetch)".into(),
            });
        }
        Ok(())
    }
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        Self::with_prefetch(1)
    }
}

/// What an adapter can honour, checked by the runtime at config time so an option the broker
/// cannot keep is a startup error, never a silent no-op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The adapter's class name, for error messages.
    pub adapter: &'static str,
    /// Acknowledged messages survive a restart of the application process.
    pub durable: bool,
    /// `deliver_at` / delays on publish.
    pub delayed_delivery: bool,
    /// The longest delay accepted, if bounded.
    pub max_delay: Option<Duration>,
    /// `retention` and `dlq_retention` on topics.
    pub retention: bool,
    /// The largest `max_message_bytes` a topic may set.
    pub max_message_bytes: usize,
    /// The most [`lanes`](TopicSpec::lanes) a topic may have (1: none).
    pub max_lanes: u32,
    /// A lane's [`read_ahead`](ConsumeOptions::read_ahead) bound counts the deliveries handed
    /// out and not yet settled too (RabbitMQ's prefetch counts every unacknowledged one): a
    /// delivery waiting for its settlement takes the room that would bring the lane's next
    /// message, so the runtime holds a handler slot until a prioritized delivery is settled.
    pub read_ahead_counts_settling: bool,
}
