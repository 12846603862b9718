//! `modules::queue::BuiltinQueueAdapter`: topiq's in-memory adapter.
//!
//! The default for development and tests. It keeps the whole contract of
//! [`topiq_adapter::Adapter`] the way the real brokers do (leases and visibility timeout,
//! attempt counting, delays, the idempotency window, per-trigger dead-letter queues), so a test
//! that passes on it means the same on JetStream and RabbitMQ.
//!
//! **Messages live as long as the process.** Nothing is written to disk: a restart loses every
//! waiting message and dead-letter record. Use JetStream or RabbitMQ where that matters.
//!
//! | contract | here |
//! |---|---|
//! | topic | a record holding its options, idempotency window, DLQ and trigger queues |
//! | subscription | one queue per trigger; every publish pushes a shared copy into each |
//! | publish | validated, deduplicated, pushed under each trigger queue's own lock (no global lock) |
//! | delay / `deliver_at` | a timer heap per queue, applied lazily; waiting consumers sleep until the earliest timer |
//! | consume | takes from the queue while the consumer holds fewer than `prefetch` unsettled deliveries |
//! | lease | deadline = delivery + visibility timeout; expiry puts the message back as the next attempt, or dead-letters it after the last |
//! | nack | back after the delay as the next attempt; dead-lettered when it was the last |
//! | release | back at the head of the queue, same attempt |
//! | DLQ | one ordered store per topic; the cursor is the record's sequence number |
//! | redrive | the record goes back into the queue of the trigger it failed on, attempt 1 |
//! | close | every consumer stream ends; later calls return [`Error::Closed`] |

mod config;
mod dedup;
mod deliveries;
mod dlq_store;
mod queue;
mod room;
mod shared;
mod topic;

pub use config::{DEFAULT_MAX_MESSAGES, DEFAULT_PUBLISH_TIMEOUT, MemoryConfig};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use rustc_hash::FxHashMap;

use topiq_adapter::{
    Adapter, Capabilities, ConsumeOptions, DeadLetters, DlqPage, DlqQuery, DlqSelection, Error,
    MAX_LANES, NewMessage, PublishReceipt, Result, Subscription, SubscriptionKey, SubscriptionSpec,
    SubscriptionStats, TopicName, TopicSpec, TriggerName,
};

use crate::queue::ConsumerSlot;
use crate::shared::read;
use crate::topic::Topic;

/// The adapter's class name in `config.yaml`.
pub const CLASS_NAME: &str = "modules::queue::BuiltinQueueAdapter";

/// The largest `max_message_bytes` a topic may set on this adapter (64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// What the adapter can honour.
pub const CAPABILITIES: Capabilities = Capabilities {
    adapter: "BuiltinQueueAdapter",
    durable: false,
    delayed_delivery: true,
    max_delay: None,
    retention: true,
    max_message_bytes: MAX_MESSAGE_BYTES,
    max_lanes: MAX_LANES,
    read_ahead_counts_settling: false,
};

/// topiq's in-memory adapter. Cheap to clone: clones share the same topics and queues.
#[derive(Clone, Default)]
pub struct BuiltinQueueAdapter {
    topics: Arc<RwLock<FxHashMap<TopicName, Arc<Topic>>>>,
    closed: Arc<AtomicBool>,
    config: MemoryConfig,
}

impl BuiltinQueueAdapter {
    /// An empty adapter with the default options: no topics, no subscriptions.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty adapter with `config`'s options (its bound on the messages a topic holds).
    pub fn with_config(config: MemoryConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    fn ensure_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn topic(&self, name: &TopicName) -> Result<Arc<Topic>> {
        self.ensure_open()?;
        read(&self.topics)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic {
                topic: name.clone(),
            })
    }

    /// The topic, with expired leases of its queues applied so DLQ reads are current.
    fn topic_for_dlq(&self, name: &TopicName, trigger: Option<&TriggerName>) -> Result<Arc<Topic>> {
        let topic = self.topic(name)?;
        match trigger {
            Some(trigger) => topic
                .lanes_of(trigger)
                .iter()
                .for_each(|queue| queue.run_timers()),
            None => topic.queues().iter().for_each(|queue| queue.run_timers()),
        }
        Ok(topic)
    }
}

impl Adapter for BuiltinQueueAdapter {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn declare_topic(&self, spec: TopicSpec) -> Result<()> {
        self.ensure_open()?;
        spec.validate(&Adapter::capabilities(self))?;
        let existing = read(&self.topics).get(&spec.name).cloned();
        if let Some(topic) = existing {
            topic.update(spec);
            return Ok(());
        }
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        match topics.get(&spec.name) {
            Some(topic) => topic.update(spec),
            None => {
                let name = spec.name.clone();
                topics.insert(
                    name,
                    Arc::new(Topic::new(spec, Arc::clone(&self.closed), &self.config)),
                );
            }
        }
        Ok(())
    }

    async fn declare_subscription(&self, spec: SubscriptionSpec) -> Result<()> {
        spec.validate()?;
        let topic = self.topic(&spec.key.topic)?;
        let dead_letter_topic = match &spec.dead_letter_topic {
            Some(name) => Some(Arc::downgrade(&self.topic(name)?)),
            None => None,
        };
        topic.declare_subscription(spec, dead_letter_topic);
        Ok(())
    }

    async fn publish(&self, topic: &TopicName, message: NewMessage) -> Result<PublishReceipt> {
        let topic = self.topic(topic)?;
        topic.publish_waiting(message, None).await
    }

    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Result<PublishReceipt>>> {
        let topic = self.topic(topic)?;
        // One deadline for the batch: a full topic makes it wait one publish_timeout in all.
        let deadline = topic.publish_deadline();
        let mut receipts = Vec::with_capacity(messages.len());
        for message in messages {
            receipts.push(topic.publish_waiting(message, Some(deadline)).await);
        }
        Ok(receipts)
    }

    async fn publish_to(
        &self,
        key: &SubscriptionKey,
        message: NewMessage,
    ) -> Result<PublishReceipt> {
        self.topic(&key.topic)?
            .publish_to(&key.trigger, message)
            .await
    }

    async fn consume(
        &self,
        key: &SubscriptionKey,
        options: ConsumeOptions,
    ) -> Result<Subscription> {
        options.validate()?;
        let queue = self
            .topic(&key.topic)?
            .require_queue(&key.trigger, options.lane)?;
        let slot = Arc::new(ConsumerSlot::new(options.prefetch));
        let deliveries = deliveries::Deliveries::new(queue, slot);
        Ok(Subscription::new(key.clone(), Box::pin(deliveries)))
    }

    async fn stats(&self, key: &SubscriptionKey) -> Result<SubscriptionStats> {
        let topic = self.topic(&key.topic)?;
        topic.require_queue(&key.trigger, 0)?;
        let mut total = SubscriptionStats::default();
        for queue in topic.lanes_of(&key.trigger) {
            let counts = queue.counts();
            total.waiting += counts.waiting;
            total.delayed += counts.delayed;
            total.in_flight += counts.in_flight;
        }
        // After every lane's timers ran, so what they dead-lettered just now is counted.
        total.dead_lettered = topic.shared.dlq().count(Some(&key.trigger));
        Ok(total)
    }

    async fn health(&self) -> Result<()> {
        self.ensure_open()
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        let topics: Vec<Arc<Topic>> = read(&self.topics).values().cloned().collect();
        for topic in topics {
            topic.wake_publishers();
            for queue in topic.queues() {
                queue.wake_all();
            }
        }
        Ok(())
    }
}

impl DeadLetters for BuiltinQueueAdapter {
    async fn dlq_count(&self, topic: &TopicName, trigger: Option<&TriggerName>) -> Result<u64> {
        let topic = self.topic_for_dlq(topic, trigger)?;
        Ok(topic.shared.dlq().count(trigger))
    }

    async fn dlq_list(&self, query: DlqQuery) -> Result<DlqPage> {
        let after = query.validate()?;
        let topic = self.topic_for_dlq(&query.topic, query.trigger.as_ref())?;
        let page =
            topic
                .shared
                .dlq()
                .list(query.trigger.as_ref(), &query.filter, query.limit, after);
        Ok(page)
    }

    async fn dlq_redrive(
        &self,
        topic: &TopicName,
        trigger: Option<&TriggerName>,
        selection: DlqSelection,
    ) -> Result<u64> {
        let topic = self.topic_for_dlq(topic, trigger)?;
        // The DLQ stays locked while the records move, so two concurrent redrives cannot both
        // send one record back (lock order: DLQ, then the trigger queue).
        let mut dlq = topic.shared.dlq();
        let mut redriven = 0;
        for (seq, record) in dlq.select(trigger, &selection) {
            topic.redrive(&record)?;
            if dlq.remove(seq) {
                redriven += 1;
            }
        }
        Ok(redriven)
    }

    async fn dlq_purge(
        &self,
        topic: &TopicName,
        trigger: Option<&TriggerName>,
        selection: DlqSelection,
    ) -> Result<u64> {
        let topic = self.topic_for_dlq(topic, trigger)?;
        let mut dlq = topic.shared.dlq();
        let selected = dlq.select(trigger, &selection);
        Ok(selected
            .into_iter()
            .filter(|(seq, _)| dlq.remove(*seq))
            .count() as u64)
    }
}
