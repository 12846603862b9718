//! One topic: its options, its idempotency window, its DLQ and the trigger queues it fans out to.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use tokio::time::Instant;
use topiq_adapter::{
    DeadLetter, Error, MessageId, NewMessage, PublishReceipt, Result, SubscriptionKey,
    SubscriptionSpec, Timestamp, TopicName, TopicSpec, TriggerName,
};

use crate::config::MemoryConfig;
use crate::dedup::DedupWindow;
use crate::dlq_store::DeadLetterStore;
use crate::queue::{Pending, StoredMessage, TriggerQueue};
use crate::room::{Place, Room};
use crate::shared::{DeadLetterTarget, TopicShared, lock, read};

/// A declared topic.
pub(crate) struct Topic {
    pub(crate) shared: Arc<TopicShared>,
    queues: RwLock<Vec<Arc<TriggerQueue>>>,
    dedup: Mutex<DedupWindow>,
    /// The messages it holds against the adapter's `max_messages`.
    room: Arc<Room>,
}

impl Topic {
    pub(crate) fn new(spec: TopicSpec, closed: Arc<AtomicBool>, config: &MemoryConfig) -> Self {
        let bound = (config.max_messages, config.publish_timeout);
        let room = Room::new(spec.name.clone(), bound, Arc::clone(&closed));
        Self {
            room,
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

    /// Takes a redeclared topic's options; more lanes than before add each trigger's queues
    /// of the new lanes (fewer keep the queues, and what they hold, until the process ends).
    pub(crate) fn update(&self, spec: TopicSpec) {
        let (retention, lanes) = (spec.retention, spec.lanes);
        *self
            .shared
            .spec
            .write()
            .unwrap_or_else(PoisonError::into_inner) = spec;
        for queue in read(&self.queues).iter() {
            queue.set_retention(retention);
        }
        let lane_zero: Vec<Arc<TriggerQueue>> = self
            .queues()
            .into_iter()
            .filter(|queue| queue.lane() == 0)
            .collect();
        for queue in lane_zero {
            let spec = queue.spec();
            self.add_lanes(&spec, lanes, queue.dead_letter_topic());
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
        let lanes = read(&self.shared.spec).lanes;
        for queue in self.lanes_of(&spec.key.trigger) {
            queue.set_policy(&spec);
            queue.set_dead_letter_topic(dead_letter_topic.clone());
        }
        self.add_lanes(&spec, lanes, dead_letter_topic);
    }

    /// Adds the queues of `spec`'s trigger for the lanes below `lanes` it does not have.
    fn add_lanes(
        &self,
        spec: &SubscriptionSpec,
        lanes: u32,
        dead_letter_topic: Option<Weak<dyn DeadLetterTarget>>,
    ) {
        let retention = read(&self.shared.spec).retention;
        let mut queues = self.queues.write().unwrap_or_else(PoisonError::into_inner);
        for lane in 0..lanes {
            // Another caller may have declared it meanwhile.
            let exists = queues
                .iter()
                .any(|q| q.trigger() == &spec.key.trigger && q.lane() == lane);
            if !exists {
                queues.push(Arc::new(TriggerQueue::new(
                    (spec.clone(), lane),
                    retention,
                    Arc::clone(&self.shared),
                    dead_letter_topic.clone(),
                )));
            }
        }
    }

    /// The queue of `trigger`'s `lane`.
    pub(crate) fn queue(&self, trigger: &TriggerName, lane: u32) -> Option<Arc<TriggerQueue>> {
        read(&self.queues)
            .iter()
            .find(|queue| queue.trigger() == trigger && queue.lane() == lane)
            .cloned()
    }

    /// Every lane's queue of `trigger`, lane 0 first.
    pub(crate) fn lanes_of(&self, trigger: &TriggerName) -> Vec<Arc<TriggerQueue>> {
        let mut lanes: Vec<Arc<TriggerQueue>> = read(&self.queues)
            .iter()
            .filter(|queue| queue.trigger() == trigger)
            .cloned()
            .collect();
        lanes.sort_by_key(|queue| queue.lane());
        lanes
    }

    /// The queue of `trigger`'s `lane`; an undeclared trigger or a lane the topic does not
    /// have is an error.
    pub(crate) fn require_queue(
        &self,
        trigger: &TriggerName,
        lane: u32,
    ) -> Result<Arc<TriggerQueue>> {
        if let Some(queue) = self.queue(trigger, lane) {
            return Ok(queue);
        }
        if self.queue(trigger, 0).is_some() {
            return Err(Error::InvalidArgument {
                argument: "lane",
                reason: format!(
                    "topic {} has {} lane(s), numbered from 0; got lane {lane}",
                    self.shared.name,
                    read(&self.shared.spec).lanes
                ),
            });
        }
        Err(Error::UnknownSubscription {
            key: SubscriptionKey::new(self.shared.name.clone(), trigger.clone()),
        })
    }

    pub(crate) fn queues(&self) -> Vec<Arc<TriggerQueue>> {
        read(&self.queues).clone()
    }

    /// Validates the message, waits for room until `deadline` (`None`: the publish timeout
    /// from when it starts waiting) and publishes it; a duplicate
    /// of a message in the idempotency window is answered without waiting.
    pub(crate) async fn publish_waiting(
        &self,
        message: NewMessage,
        deadline: Option<Instant>,
    ) -> Result<PublishReceipt> {
        self.check(&message)?;
        if let Some(first) = self.first_of(&message) {
            return Ok(PublishReceipt {
                message_id: first,
                duplicate: true,
            });
        }
        let place = self.room.take_before(deadline).await?;
        self.publish(message, place)
    }

    /// When the message's idempotency key is in the window, the first message's id.
    fn first_of(&self, message: &NewMessage) -> Option<MessageId> {
        let key = message.idempotency_key.as_ref()?;
        lock(&self.dedup).lookup(key, Instant::now())
    }

    /// The deadline of a publish (or of a batch) starting now.
    pub(crate) fn publish_deadline(&self) -> Instant {
        self.room.deadline()
    }

    /// Wakes publishers waiting for room (the adapter closed).
    pub(crate) fn wake_publishers(&self) {
        self.room.wake_all();
    }

    /// Validates the message against the topic's size limit and lanes.
    fn check(&self, message: &NewMessage) -> Result<()> {
        let (limit, lanes) = {
            let spec = read(&self.shared.spec);
            (spec.max_message_bytes, spec.lanes)
        };
        message.validate(&self.shared.name, limit)?;
        message.check_lane(&self.shared.name, lanes)
    }

    /// Deduplicates a checked message and fans it out to every trigger queue, in `place`.
    fn publish(&self, message: NewMessage, place: Place) -> Result<PublishReceipt> {
        let window = read(&self.shared.spec).idempotency_window;
        let Some(key) = message.idempotency_key.clone() else {
            let id = self.fan_out(message, place);
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
        let id = self.fan_out(message, place);
        dedup.remember(key, id.clone(), now + window);
        Ok(PublishReceipt {
            message_id: id,
            duplicate: false,
        })
    }

    fn fan_out(&self, message: NewMessage, place: Place) -> MessageId {
        let now = Timestamp::now();
        let id = MessageId::generate_at(now);
        let due = message.deliver_at.and_then(|at| due_instant(at, now));
        let stored = Arc::new(StoredMessage {
            id: id.clone(),
            topic: self.shared.name.clone(),
            data: message.data,
            enqueued_at: now,
            retention_from: message.deliver_at.map_or(now, |at| at.max(now)),
            traceparent: message.trace.traceparent,
            baggage: message.trace.baggage,
            idempotency_key: message.idempotency_key,
            lane: message.lane,
            _place: place,
        });
        for queue in read(&self.queues).iter() {
            if queue.lane() == stored.lane {
                queue.enqueue(Pending::first(Arc::clone(&stored)), due);
            }
        }
        id
    }

    /// Puts a new message into the queue of `trigger` only, waiting for room like a publish.
    pub(crate) async fn publish_to(
        &self,
        trigger: &TriggerName,
        message: NewMessage,
    ) -> Result<PublishReceipt> {
        message.check_direct()?;
        let limit = read(&self.shared.spec).max_message_bytes;
        message.validate(&self.shared.name, limit)?;
        let queue = self.require_queue(trigger, message.lane)?;
        let place = self.room.take_before(None).await?;
        let now = Timestamp::now();
        let id = MessageId::generate_at(now);
        let stored = Arc::new(StoredMessage {
            id: id.clone(),
            topic: self.shared.name.clone(),
            data: message.data,
            enqueued_at: now,
            retention_from: now,
            traceparent: message.trace.traceparent,
            baggage: message.trace.baggage,
            idempotency_key: None,
            lane: message.lane,
            _place: place,
        });
        queue.enqueue(Pending::first(stored), None);
        Ok(PublishReceipt {
            message_id: id,
            duplicate: false,
        })
    }

    /// Puts redriven records back into the queue of the trigger each failed on, in the lane
    /// it was in (lane 0 when the topic has no such lane any more); a full topic refuses
    /// at once (the caller holds the DLQ's lock, so nothing may wait here).
    pub(crate) fn redrive(&self, record: &DeadLetter) -> Result<()> {
        let lane = read(&self.shared.spec).lane_or_first(record.lane);
        let queue = self.require_queue(&record.trigger, lane)?;
        let place = self.room.try_take().ok_or_else(|| self.room.full())?;
        let stored = Arc::new(StoredMessage {
            id: record.id.clone(),
            topic: record.topic.clone(),
            data: Arc::clone(&record.data),
            enqueued_at: record.enqueued_at,
            retention_from: Timestamp::now(),
            traceparent: record.traceparent.clone(),
            baggage: record.baggage.clone(),
            idempotency_key: record.idempotency_key.clone(),
            lane: queue.lane(),
            _place: place,
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

    /// Never waits: a full topic refuses the notification (the record is in the DLQ).
    fn publish(&self, message: NewMessage) -> Result<PublishReceipt> {
        self.check(&message)?;
        let place = self.room.try_take().ok_or_else(|| self.room.full())?;
        Topic::publish(self, message, place)
    }
}
