//! `modules::queue::RabbitMQAdapter`: topiq on RabbitMQ (`lapin`).
//!
//! | contract | RabbitMQ |
//! |---|---|
//! | topic | the durable topic exchange `<prefix>` (routing key = topic) and the topic's DLQ stream `<prefix>:dlq:<topic>` (`x-max-age` = DLQ retention) |
//! | trigger | the durable queue `<prefix>:t:<topic>:<trigger>` (quorum by default, `x-delivery-limit` 1000 so a 4.x broker's default of 20 never drops one; no `x-message-ttl`: retention is stamped on each message as `topiq-expires-at` and an expired one dead-lettered as `expired` on receipt) bound to the exchange with the topic: every trigger gets every message, consumers of one trigger compete |
//! | publish | persistent, `mandatory`, on a channel with publisher confirms; returns after the confirm (each broker call bounded by `publish_timeout`, after up to `reconnect_wait` for a lost connection); a nack is an error, and so is a returned (unroutable) message on a topic with triggers |
//! | delay | the topic's delay queue for the delay's bucket (`<prefix>:delay:<topic>:<ms>`, the delay rounded up to two significant digits): a quorum queue with that TTL dead-lettering at-least-once to the exchange with the topic |
//! | consume | a channel per consumer with `basic.qos(prefetch)` and manual acks; the lease is client-side: one that runs out is rejected with requeue (delivered again, counted) and its late settlement refused |
//! | attempt | `topiq-attempt-base` header + the quorum queue's `x-delivery-count` + 1; a delivery past `max_attempts` (a crash on the last attempt) is dead-lettered on receipt |
//! | nack | a copy with the attempt goes to the trigger's retry queue for the delay's bucket (`<prefix>:retry:<topic>:<trigger>:<ms>`, TTL, dead-lettering at-least-once back to the trigger's queue), confirmed, then the original is acked: a crash between the two duplicates, never loses |
//! | dead letter | the record goes to the topic's DLQ stream (confirmed), then the original is acked |
//! | release | a copy with the same attempt goes to the trigger's queue (confirmed), then the original is acked |
//! | DLQ | a stream per topic read from an offset (the cursor); removals (redrive, purge) append a tombstone naming the record's offset, since a stream never deletes one message; a reader first appends a marker and reads up to it, so it knows where the stream ended |
//! | idempotency | two queues per key (`<prefix>:key:…` holding the claim, `<prefix>:keydone:…` saying the message was published), each `x-max-length` 1 with `reject-publish` and the window as TTL: the broker lets one claim in, across processes; a later publish with the key returns the claim's id, and publishes the claimed message itself if the first publisher died before it did |
//! | connection | opened on first use and again after it is lost (backoff, topology declared again); consumers resubscribe; a call waits up to `reconnect_wait` for it, then fails with `broker_unavailable` |
//!
//! The visibility timeout is the client's: RabbitMQ holds an unacked message until its
//! channel closes or its `consumer_timeout` (30 minutes by default) runs out, which also
//! bounds how long a lease can be extended.

mod codec;
mod config;
mod confirms;
mod consumer;
mod deliveries;
mod dlq;
mod idempotency;
mod layout;
mod publish;
mod session;
mod settle;
mod solo;
mod topology;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use topiq_adapter::{
    Adapter, Capabilities, ConsumeOptions, DeadLetters, Error, MAX_LANES, NewMessage,
    PublishReceipt, Result, Subscription, SubscriptionKey, SubscriptionSpec, SubscriptionStats,
    TopicName, TopicSpec, TriggerName,
};
use topiq_adapter_kit::lease::Leases;
use topiq_adapter_kit::{Deadlines, Declared};

pub use config::{QueueType, RabbitMqConfig};
pub use topiq_adapter_kit::{AdapterOptions, ConnectionOptions, TlsSettings as TlsConfig};

pub(crate) use confirms::Published;
use layout::Layout;
use session::{Current, Target};
use topology::QueueDecl;

/// The adapter's class name in `config.yaml`.
pub const CLASS_NAME: &str = "modules::queue::RabbitMQAdapter";

/// The quorum queues' delivery limit: far above any trigger's attempts (topiq counts and
/// dead-letters itself), set so a broker's default (20 on 4.x) never drops a message.
const DELIVERY_LIMIT: u32 = 1000;

/// The largest message topiq publishes (RabbitMQ's default `max_message_size` is 128 MiB;
/// large messages hurt a queue broker long before that).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// What the adapter can honour (known without connecting).
pub const CAPABILITIES: Capabilities = Capabilities {
    adapter: "RabbitMQAdapter",
    durable: true,
    delayed_delivery: true,
    max_delay: Some(layout::MAX_DELAY),
    retention: true,
    max_message_bytes: MAX_MESSAGE_BYTES,
    max_lanes: MAX_LANES,
    read_ahead_counts_settling: true,
};

/// topiq's RabbitMQ adapter. Cheap to clone.
#[derive(Clone)]
pub struct RabbitMqAdapter {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) config: RabbitMqConfig,
    target: Target,
    pub(crate) layout: Layout,
    current: Current,
    /// Held while connecting, so one caller connects and the others wait for it.
    connecting: tokio::sync::Mutex<()>,
    /// The topics and triggers this process declared.
    declared: Declared<TopicSpec>,
    /// Every queue declared so far, declared again on a new connection.
    queues: Mutex<Vec<QueueDecl>>,
    /// This process's consumers of each subscription, for `stats`' in-flight count.
    consumers: Mutex<HashMap<SubscriptionKey, Vec<Weak<Leases<consumer::Received>>>>>,
    pub(crate) closed: topiq_adapter_kit::Signal,
    /// Bounds the confirms of the publishes the publishing task sends (the solo lane has its
    /// watchdog) and every settlement by `publish_timeout`, all with one ticking task (a tokio
    /// timer a call would cost some 700 instructions).
    pub(crate) deadlines: Deadlines,
    /// Releases of messages dropped subscriptions received but never handed out; `close`
    /// waits for them.
    pub(crate) releases: tokio_util::task::TaskTracker,
}

/// A lost connection or a refused connect: `broker_unavailable`.
pub(crate) fn unavailable(doing: &'static str) -> impl FnOnce(lapin::Error) -> Error {
    move |err| Error::BrokerUnavailable {
        message: format!("RabbitMQ: cannot {doing}"),
        source: Some(Box::new(err)),
    }
}

impl Shared {
    /// Runs a broker call bounded by `publish_timeout`: lapin's calls can wait forever on a
    /// connection that died under them.
    pub(crate) async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let timeout = self.config.publish_timeout;
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(Error::Timeout { operation, timeout }))
    }

    pub(crate) fn ensure_open(&self) -> Result<()> {
        topiq_adapter_kit::ensure_open(&self.closed)
    }

    pub(crate) fn topic(&self, name: &TopicName) -> Result<TopicSpec> {
        self.declared.topic(name)
    }

    pub(crate) fn subscription(&self, key: &SubscriptionKey) -> Result<SubscriptionSpec> {
        self.declared.subscription(key)
    }

    /// Checks the target of a DLQ call: a declared topic, and trigger when one is named.
    pub(crate) fn check_dlq(&self, topic: &TopicName, trigger: Option<&TriggerName>) -> Result<()> {
        self.declared.check_dlq(topic, trigger)
    }
}

impl RabbitMqAdapter {
    /// Checks the config; the connection opens on first use (and again whenever it is lost).
    pub async fn connect(config: RabbitMqConfig) -> Result<Self> {
        config.validate().map_err(|err| Error::InvalidArgument {
            argument: "RabbitMQAdapter config",
            reason: err.to_string(),
        })?;
        let target = Target::new(&config).map_err(|reason| Error::InvalidArgument {
            argument: "url",
            reason,
        })?;
        let deadlines = Deadlines::new(Deadlines::tick_for(config.publish_timeout));
        let shared = Arc::new(Shared {
            deadlines,
            layout: Layout {
                prefix: config.connection.prefix.clone(),
            },
            config,
            target,
            current: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            declared: Declared::default(),
            queues: Mutex::default(),
            consumers: Mutex::default(),
            closed: topiq_adapter_kit::Signal::new(),
            releases: tokio_util::task::TaskTracker::new(),
        });
        shared.session().await?;
        Ok(Self { shared })
    }
}

impl Adapter for RabbitMqAdapter {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn declare_topic(&self, spec: TopicSpec) -> Result<()> {
        self.shared.declare_topic(spec).await
    }

    async fn declare_subscription(&self, spec: SubscriptionSpec) -> Result<()> {
        self.shared.declare_subscription(spec).await
    }

    async fn publish(&self, topic: &TopicName, message: NewMessage) -> Result<PublishReceipt> {
        self.shared.publish_one(topic, message).await
    }

    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Result<PublishReceipt>>> {
        self.shared.publish_many(topic, messages).await
    }

    async fn publish_to(
        &self,
        key: &SubscriptionKey,
        message: NewMessage,
    ) -> Result<PublishReceipt> {
        self.shared.publish_one_to(key, message).await
    }

    async fn consume(
        &self,
        key: &SubscriptionKey,
        options: ConsumeOptions,
    ) -> Result<Subscription> {
        let spec = self.shared.subscription(key)?;
        options.validate()?;
        options.check_lane(&key.topic, self.shared.topic(&key.topic)?.lanes)?;
        self.shared.ensure_open()?;
        let (subscription, leases) = consumer::subscribe(Arc::clone(&self.shared), spec, options);
        let mut consumers = self
            .shared
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let list = consumers.entry(key.clone()).or_default();
        list.retain(|leases| leases.strong_count() > 0);
        list.push(Arc::downgrade(&leases));
        Ok(subscription)
    }

    async fn stats(&self, key: &SubscriptionKey) -> Result<SubscriptionStats> {
        let shared = &self.shared;
        shared.subscription(key)?;
        let mut ready = 0;
        for lane in 0..shared.topic(&key.topic)?.lanes.max(1) {
            ready += shared
                .ready_count(&shared.layout.lane_queue(key, lane))
                .await?;
        }
        // The bucket queues this process declared: the trigger's retries and the topic's
        // delayed publishes (another process's buckets are not known here).
        let mut delayed = 0;
        for queue in shared.declared_queues() {
            let holds = match &queue.holds_delayed_of {
                Some((topic, None)) => topic == &key.topic,
                Some((topic, Some(trigger))) => topic == &key.topic && trigger == &key.trigger,
                None => false,
            };
            if holds {
                delayed += u64::from(shared.declare_queue(queue).await?);
            }
        }
        let in_flight = shared
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map_or(0, |list| {
                list.iter()
                    .filter_map(Weak::upgrade)
                    .map(|leases| leases.len() as u64)
                    .sum()
            });
        Ok(SubscriptionStats {
            waiting: ready + delayed,
            delayed,
            in_flight,
            dead_lettered: self.dlq_count(&key.topic, Some(&key.trigger)).await?,
        })
    }

    async fn health(&self) -> Result<()> {
        self.shared.health().await
    }

    async fn close(&self) -> Result<()> {
        let shared = &self.shared;
        // What dropped subscriptions had not handed out goes back first (bounded: a release
        // is a publish and a settlement, each noticed timing out up to a tick late).
        shared.releases.close();
        let timeout = shared.config.publish_timeout;
        let releasing = (timeout + Deadlines::tick_for(timeout)) * 2;
        let _ = tokio::time::timeout(releasing, shared.releases.wait()).await;
        shared.closed.cancel();
        let session = shared
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(session) = session {
            // Bounded: on a connection that died under it, lapin's close can wait forever.
            let closing = session.connection.close(200, "topiq adapter closed".into());
            let _ = tokio::time::timeout(timeout, closing).await;
        }
        Ok(())
    }
}
