//! One topic: its options, its idempotency window, its DLQ and the trigger queues it fans out to.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use tokio::time::Instant;
use topiq_adapter::{
    DeadLetter, Error, MessageId, NewMessage, PublishReceipt, Result, SubscriptionKey,
    SubscriptionSpec, Timestamp, TopicName, TopicSpec, TriggerName,
};

use crate::dedup::DedupWindow;
use crate::dlq_store::DeadLetterStore;
use crate::queue::{Pending, StoredMessage, TriggerQueue};
use crate::shared::{DeadLetterTarget, TopicShared, lock, read};

/// A declared topic.
pub(crate) struct Topic {
    pub(crate) shared: Arc<TopicShared>,
    queues: RwLock<Vec<Arc<TriggerQueue>>>,
    dedup: Mutex<DedupWindow>,
}

impl Topic {
    pub(crate) fn new(spec: TopicSpec, closed: Arc<AtomicBool>) -> Self {
        Self {
            shared: Arc::new(TopicShared {
                name: spec.name.clone(),
                spec: RwLock::new(spec),
                dlq: Mutex::new(DeadLetterStore::default()),
                closed,
            }),
            queues: RwLock::new(Vec::new()),
            dedup: Mutex::new(DedupWindow::default()),
        }
    }

    pub(crate) fn update(&self, spec: TopicSpec) {
        let retention = spec.retention;
        *self
            .shared
            .spec
            .write()
            .unwrap_or_else(PoisonError::into_inner) = spec;
        for queue in read(&self.queues).iter() {
            queue.set_retention(retention);
        }
    }

    /// Declares (or updates) a trigger's queue; `dead_letter_topic` is the resolved topic of
    /// `spec.dead_letter_topic`.
    pub(crate) fn declare_subscription(
        &self,
        spec: SubscriptionSpec,
        dead_letter_topic: Option<Weak<Topic>>,
    ) {
        let dead_letter_topic = dead_letter_topic.map(|topic| topic as Weak<dyn DeadLetterTarget>);
        if let Some(queue) = self.queue(&spec.key.trigger) {
            queue.set_policy(spec.max_attempts, spec.visibility_timeout);
            queue.set_dead_letter_topic(dead_letter_topic);
            return;
        }
        let retention = read(&self.shared.spec).retention;
        let queue = Arc::new(TriggerQueue::new(
            spec,
            retention,
            Arc::clone(&self.shared),
            dead_letter_topic,
        ));
        let mut queues = self.queues.write().unwrap_or_else(PoisonError::into_inner);
        // Another caller may have declared it between the read above and this write.
        if !queues.iter().any(|q| q.trigger() == queue.trigger()) {
            queues.push(queue);
        }
    }

    pub(crate) fn queue(&self, trigger: &TriggerName) -> Option<Arc<TriggerQueue>> {
        read(&self.queues)
            .iter()
            .find(|queue| queue.trigger() == trigger)
            .cloned()
    }

    pub(crate) fn require_queue(&self, trigger: &TriggerName) -> Result<Arc<TriggerQueue>> {
        self.queue(trigger)
            .ok_or_else(|| Error::UnknownSubscription {
                key: SubscriptionKey::new(self.shared.name.clone(), trigger.clone()),
            })
    }

    pub(crate) fn queues(&self) -> Vec<Arc<TriggerQueue>> {
        read(&self.queues).clone()
    }

    /// Validates, deduplicates and fans one message out to every trigger queue.
    pub(crate) fn publish(&self, message: NewMessage) -> Result<PublishReceipt> {
        let (limit, window) = {
            let spec = read(&self.shared.spec);
            (spec.max_message_bytes, spec.idempotency_window)
        };
        message.validate(&self.shared.name, limit)?;
        let Some(key) = message.idempotency_key.clone() else {
            let id = self.fan_out(message);
            return Ok(PublishReceipt {
                message_id: id,
                duplicate: false,
            });
        };
        // The window stays locked until the message is in every queue, so a concurrent
        // publish with the same key sees either nothing or the finished first publish.
        let now = Instant::now();
        let mut dedup = lock(&self.dedup);
        if let Some(first) = dedup.lookup(&key, now) {
            return Ok(PublishReceipt {
                message_id: first,
                duplicate: true,
            });
        }
        let id = self.fan_out(message);
        dedup.remember(key, id.clone(), now + window);
        Ok(PublishReceipt {
            message_id: id,
            duplicate: false,
        })
    }

    fn fan_out(&self, message: NewMessage) -> MessageId {
        let now = Timestamp::now();
        let id = MessageId::generate();
        let due = message.deliver_at.and_then(|at| due_instant(at, now));
        let stored = Arc::new(StoredMessage {
            id: id.clone(),
            topic: self.shared.name.clone(),
            data: Arc::new(message.data),
            enqueued_at: now,
            retention_from: message.deliver_at.map_or(now, |at| at.max(now)),
            traceparent: message.trace.traceparent,
            baggage: message.trace.baggage,
            idempotency_key: message.idempotency_key,
        });
        for queue in read(&self.queues).iter() {
            queue.enqueue(Pending::first(Arc::clone(&stored)), due);
        }
        id
    }

    /// Puts a new message into the queue of `trigger` only.
    pub(crate) fn publish_to(
        &self,
        trigger: &TriggerName,
        message: NewMessage,
    ) -> Result<PublishReceipt> {
        message.check_direct()?;
        let limit = read(&self.shared.spec).max_message_bytes;
        message.validate(&self.shared.name, limit)?;
        let queue = self.require_queue(trigger)?;
        let now = Timestamp::now();
        let id = MessageId::generate();
        let stored = Arc::new(StoredMessage {
            id: id.clone(),
            topic: self.shared.name.clone(),
            data: Arc::new(message.data),
            enqueued_at: now,
            retention_from: now,
            traceparent: message.trace.traceparent,
            baggage: message.trace.baggage,
            idempotency_key: None,
        });
        queue.enqueue(Pending::first(stored), None);
        Ok(PublishReceipt {
            message_id: id,
            duplicate: false,
        })
    }

    /// Puts redriven records back into the queue of the trigger each failed on.
    pub(crate) fn redrive(&self, record: &DeadLetter) -> Result<()> {
        let queue = self.require_queue(&record.trigger)?;
        let stored = Arc::new(StoredMessage {
            id: record.id.clone(),
            topic: record.topic.clone(),
            data: Arc::clone(&record.data),
            enqueued_at: record.enqueued_at,
            retention_from: Timestamp::now(),
            traceparent: record.traceparent.clone(),
            baggage: record.baggage.clone(),
            idempotency_key: record.idempotency_key.clone(),
        });
        queue.enqueue(Pending::redriven(stored, record.first_failed_at), None);
        Ok(())
    }
}

/// The monotonic instant matching a wall-clock `deliver_at`; `None` when it is already due.
fn due_instant(deliver_at: Timestamp, now: Timestamp) -> Option<Instant> {
    let wait = Duration::try_from(deliver_at.duration_since(now)).ok()?;
    (!wait.is_zero()).then(|| crate::queue::instant_after(wait))
}

impl DeadLetterTarget for Topic {
    fn name(&self) -> &TopicName {
        &self.shared.name
    }

    fn publish(&self, message: NewMessage) -> Result<PublishReceipt> {
        Topic::publish(self, message)
    }
}
