//! One trigger's queue: ready, delayed and leased messages, and the consumers that take from it.
//!
//! Each queue has its own lock, held only for a push, a pop or a settlement, so publishers and
//! consumers of different triggers never contend. Timers are lazy: due delays and expired
//! leases are applied by whoever touches the queue next, and a waiting consumer sleeps until
//! the earliest of them, so nothing polls.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::Poll;
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};
use topiq_adapter::{
    Acker, DeadLetter, Delivery, Envelope, Error, Failure, MessageId, Result, Settling,
    SubscriptionKey, SubscriptionSpec, SubscriptionStats, Timestamp, TopicName, TriggerName,
};

use crate::room::Place;
use crate::shared::{Counted, DeadLetterTarget, TopicShared, lock, read};

/// A published message, shared by every trigger queue it was fanned out to.
pub(crate) struct StoredMessage {
    pub(crate) id: MessageId,
    pub(crate) topic: TopicName,
    pub(crate) data: Arc<Value>,
    pub(crate) enqueued_at: Timestamp,
    /// When the topic's retention starts to count for this copy: when it became due (its
    /// publish, or the end of its delay) or was redriven. Retries do not move it.
    pub(crate) retention_from: Timestamp,
    pub(crate) traceparent: Option<String>,
    pub(crate) baggage: Option<String>,
    pub(crate) idempotency_key: Option<String>,
    /// The topic's lane it is in.
    pub(crate) lane: u32,
    /// Its place in the topic's bound, freed when the last queue holding it lets it go.
    pub(crate) _place: Place,
}

/// A message waiting in one trigger's queue, with its attempt count there.
pub(crate) struct Pending {
    message: Arc<StoredMessage>,
    /// The attempt its next delivery will be.
    attempt: u32,
    first_failed_at: Option<Timestamp>,
}

impl Pending {
    pub(crate) fn first(message: Arc<StoredMessage>) -> Self {
        Self {
            message,
            attempt: 1,
            first_failed_at: None,
        }
    }

    pub(crate) fn redriven(message: Arc<StoredMessage>, first_failed_at: Timestamp) -> Self {
        Self {
            message,
            attempt: 1,
            first_failed_at: Some(first_failed_at),
        }
    }

    fn next_attempt(self) -> Self {
        Self {
            attempt: self.attempt + 1,
            ..self
        }
    }

    fn into_dead_letter(self, trigger: &TriggerName, failure: Failure) -> DeadLetter {
        let now = Timestamp::now();
        let message = &self.message;
        DeadLetter {
            id: message.id.clone(),
            topic: message.topic.clone(),
            trigger: trigger.clone(),
            data: Arc::clone(&message.data),
            attempts: self.attempt,
            first_failed_at: self.first_failed_at.unwrap_or(now),
            last_failed_at: now,
            error: failure,
            traceparent: message.traceparent.clone(),
            baggage: message.baggage.clone(),
            idempotency_key: message.idempotency_key.clone(),
            enqueued_at: message.enqueued_at,
            lane: message.lane,
        }
    }
}

/// A message waiting for its delay or backoff to run out; the heap pops the earliest.
struct Delayed {
    due: Instant,
    seq: u64,
    pending: Pending,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// How many deliveries one consumer holds unsettled, and how many it may.
pub(crate) struct ConsumerSlot {
    unsettled: AtomicU32,
    prefetch: u32,
}

impl ConsumerSlot {
    pub(crate) fn new(prefetch: u32) -> Self {
        Self {
            unsettled: AtomicU32::new(0),
            prefetch,
        }
    }

    fn has_room(&self) -> bool {
        self.unsettled.load(Ordering::Acquire) < self.prefetch
    }
}

/// A delivered message whose lease has not run out.
struct Leased {
    pending: Pending,
    deadline: Instant,
    consumer: Arc<ConsumerSlot>,
}

impl Leased {
    /// Frees the consumer's slot; true when the consumer was full, so it may be waiting.
    fn release_slot(&self) -> bool {
        self.consumer.unsettled.fetch_sub(1, Ordering::AcqRel) >= self.consumer.prefetch
    }
}

/// How a delivery is settled.
enum Settlement {
    Ack,
    Nack(Duration),
    DeadLetter(Failure),
    Release,
}

struct QueueState {
    ready: VecDeque<Pending>,
    delayed: BinaryHeap<Delayed>,
    /// Keyed by delivery token; tokens are sequential, so a fast non-keyed hash suffices.
    in_flight: FxHashMap<u64, Leased>,
    /// (deadline, token) in deadline order; entries of settled or extended leases are skipped.
    leases: VecDeque<(Instant, u64)>,
    max_attempts: u32,
    visibility_timeout: Duration,
    retention: Option<Duration>,
    next_token: u64,
    next_seq: u64,
    /// One message in flight at a time, in order (an ordered trigger).
    ordered: bool,
    /// Ordered: the message first in `ready` was nacked and waits until then.
    held_until: Option<Instant>,
}

impl QueueState {
    fn push_delayed(&mut self, pending: Pending, due: Instant) {
        self.next_seq += 1;
        self.delayed.push(Delayed {
            due,
            seq: self.next_seq,
            pending,
        });
    }

    /// Applies due delays and expired leases; returns the messages to dead-letter and whether
    /// anything changed that a waiting consumer should see.
    fn advance(&mut self, now: Instant, trigger: &TriggerName) -> (Vec<DeadLetter>, bool) {
        let mut changed = false;
        while self.delayed.peek().is_some_and(|d| d.due <= now) {
            if let Some(delayed) = self.delayed.pop() {
                self.ready.push_back(delayed.pending);
                changed = true;
            }
        }
        let mut dead = Vec::new();
        while let Some(&(deadline, token)) = self.leases.front() {
            if deadline > now {
                break;
            }
            self.leases.pop_front();
            let still_leased = self
                .in_flight
                .get(&token)
                .is_some_and(|leased| leased.deadline <= now);
            if !still_leased {
                continue;
            }
            let Some(leased) = self.in_flight.remove(&token) else {
                continue;
            };
            leased.release_slot();
            changed = true;
            if leased.pending.attempt >= self.max_attempts {
                let failure = Failure::lease_expired(
                    self.visibility_timeout,
                    leased.pending.attempt,
                    self.max_attempts,
                );
                dead.push(leased.pending.into_dead_letter(trigger, failure));
            } else {
                self.ready.push_front(leased.pending.next_attempt());
            }
        }
        (dead, changed)
    }

    /// Drops lease entries at the front that no longer match a live lease, so the deque stays
    /// as short as the oldest unsettled lease.
    fn compact_leases(&mut self) {
        while let Some(&(deadline, token)) = self.leases.front() {
            let live = self
                .in_flight
                .get(&token)
                .is_some_and(|leased| leased.deadline == deadline);
            if live {
                break;
            }
            self.leases.pop_front();
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let delayed = self.delayed.peek().map(|d| d.due);
        let lease = self.leases.front().map(|(deadline, _)| *deadline);
        [delayed, lease, self.held_until]
            .into_iter()
            .flatten()
            .min()
    }

    /// Ordered: whether the next message must wait (one is in flight, or the first waits
    /// out its retry delay).
    fn holds_back(&mut self, now: Instant) -> bool {
        if !self.ordered {
            return false;
        }
        if self.held_until.is_some_and(|until| until <= now) {
            self.held_until = None;
        }
        !self.in_flight.is_empty() || self.held_until.is_some()
    }
}

/// What a consumer found when it looked at the queue.
enum Taken {
    Delivery(Delivery),
    /// Nothing to take now; wait for a wake-up or until this instant.
    Wait(Option<Instant>),
}

/// One trigger's queue (of one lane of its topic).
pub(crate) struct TriggerQueue {
    key: SubscriptionKey,
    lane: u32,
    topic: Arc<TopicShared>,
    /// Where this trigger's dead letters are also published (weak: a topic's queues must not
    /// keep topics alive in a cycle).
    dead_letter_topic: RwLock<Option<Weak<dyn DeadLetterTarget>>>,
    state: Mutex<QueueState>,
    wake: Notify,
    /// Consumers parked on `wake`; publishers skip the notification when there are none.
    parked: AtomicUsize,
}

impl TriggerQueue {
    pub(crate) fn new(
        (spec, lane): (SubscriptionSpec, u32),
        retention: Option<Duration>,
        topic: Arc<TopicShared>,
        dead_letter_topic: Option<Weak<dyn DeadLetterTarget>>,
    ) -> Self {
        Self {
            key: spec.key,
            lane,
            topic,
            dead_letter_topic: RwLock::new(dead_letter_topic),
            state: Mutex::new(QueueState {
                ready: VecDeque::new(),
                delayed: BinaryHeap::new(),
                in_flight: FxHashMap::default(),
                leases: VecDeque::new(),
                max_attempts: spec.max_attempts,
                visibility_timeout: spec.visibility_timeout,
                retention,
                next_token: 0,
                next_seq: 0,
                ordered: spec.ordered,
                held_until: None,
            }),
            wake: Notify::new(),
            parked: AtomicUsize::new(0),
        }
    }

    pub(crate) fn trigger(&self) -> &TriggerName {
        &self.key.trigger
    }

    /// The topic's lane this queue holds.
    pub(crate) fn lane(&self) -> u32 {
        self.lane
    }

    /// The delivery policy it runs (its dead-letter topic is [`Self::dead_letter_topic`]).
    pub(crate) fn spec(&self) -> SubscriptionSpec {
        let state = lock(&self.state);
        let mut spec = SubscriptionSpec::new(self.key.clone());
        spec.max_attempts = state.max_attempts;
        spec.visibility_timeout = state.visibility_timeout;
        spec.ordered = state.ordered;
        spec
    }

    /// Where its dead letters are also published.
    pub(crate) fn dead_letter_topic(&self) -> Option<Weak<dyn DeadLetterTarget>> {
        read(&self.dead_letter_topic).clone()
    }

    pub(crate) fn set_dead_letter_topic(&self, topic: Option<Weak<dyn DeadLetterTarget>>) {
        *self
            .dead_letter_topic
            .write()
            .unwrap_or_else(PoisonError::into_inner) = topic;
    }

    /// Stores `records` in the topic's DLQ, each first published to the trigger's
    /// `dead_letter_topic` when it has one (a publish that fails is logged: the record is
    /// still stored, so nothing is lost).
    fn store_dead_letters(&self, records: Vec<DeadLetter>) {
        if records.is_empty() {
            return;
        }
        let target = read(&self.dead_letter_topic)
            .as_ref()
            .and_then(Weak::upgrade);
        if let Some(target) = target {
            for record in &records {
                if let Err(err) = target.publish(record.notification()) {
                    tracing::error!(trigger = %self.key, id = %record.id, dead_letter_topic = %target.name(), error = %err, "cannot publish to the dead-letter topic; the message is in the trigger's DLQ");
                }
            }
        }
        self.topic.store_dead_letters(records);
    }

    pub(crate) fn set_policy(&self, spec: &SubscriptionSpec) {
        let mut state = lock(&self.state);
        state.max_attempts = spec.max_attempts;
        state.visibility_timeout = spec.visibility_timeout;
        state.ordered = spec.ordered;
        // Leases are expired in deadline order; keep it after a change of timeout.
        state.leases.make_contiguous().sort_unstable();
    }

    pub(crate) fn set_retention(&self, retention: Option<Duration>) {
        lock(&self.state).retention = retention;
    }

    /// Adds a message, ready now or at `due`.
    pub(crate) fn enqueue(&self, pending: Pending, due: Option<Instant>) {
        {
            let mut state = lock(&self.state);
            match due {
                Some(due) => state.push_delayed(pending, due),
                None => state.ready.push_back(pending),
            }
        }
        // A consumer registers as parked before it looks at the queue, so either it saw this
        // message or this load sees it parked.
        if self.parked.load(Ordering::SeqCst) > 0 {
            self.wake.notify_waiters();
        }
    }

    /// Wakes every consumer of this queue, so they notice the adapter closed.
    pub(crate) fn wake_all(&self) {
        self.wake.notify_waiters();
    }

    /// Runs the timers and dead-letters what they expired.
    fn advance_now(&self, state: &mut QueueState) -> Vec<DeadLetter> {
        self.advance_at(state, Instant::now())
    }

    fn advance_at(&self, state: &mut QueueState, now: Instant) -> Vec<DeadLetter> {
        let (dead, changed) = state.advance(now, &self.key.trigger);
        if changed {
            self.wake.notify_waiters();
        }
        dead
    }

    fn take(self: &Arc<Self>, slot: &Arc<ConsumerSlot>) -> Taken {
        let now = Instant::now();
        let (taken, dead) = {
            let mut state = lock(&self.state);
            let mut dead = self.advance_at(&mut state, now);
            let taken = if slot.has_room() && !state.holds_back(now) {
                self.lease_next(&mut state, slot, now, &mut dead)
            } else {
                None
            };
            let taken = match taken {
                Some(delivery) => Taken::Delivery(delivery),
                None => Taken::Wait(state.next_wake()),
            };
            (taken, dead)
        };
        self.store_dead_letters(dead);
        taken
    }

    /// Leases the next ready message to `slot`; a message past the topic's retention is
    /// dead-lettered (into `dead`) instead, as `expired`.
    fn lease_next(
        self: &Arc<Self>,
        state: &mut QueueState,
        slot: &Arc<ConsumerSlot>,
        now: Instant,
        dead: &mut Vec<DeadLetter>,
    ) -> Option<Delivery> {
        loop {
            let pending = state.ready.pop_front()?;
            let expired = state.retention.is_some_and(|retention| {
                Duration::try_from(Timestamp::now().duration_since(pending.message.retention_from))
                    .is_ok_and(|age| age >= retention)
            });
            if expired {
                let attempts = pending.attempt - 1;
                let failure = Failure::expired(state.retention, attempts);
                let mut record = pending.into_dead_letter(&self.key.trigger, failure);
                record.attempts = attempts;
                dead.push(record);
                continue;
            }
            state.next_token += 1;
            let token = state.next_token;
            let deadline = now + state.visibility_timeout;
            let message = &pending.message;
            let envelope = Envelope {
                id: message.id.clone(),
                topic: message.topic.clone(),
                data: Arc::clone(&message.data),
                attempt: pending.attempt,
                max_attempts: state.max_attempts,
                enqueued_at: message.enqueued_at,
                traceparent: message.traceparent.clone(),
                baggage: message.baggage.clone(),
                idempotency_key: message.idempotency_key.clone(),
            };
            let acker = MemoryAcker {
                queue: Arc::clone(self),
                token,
                id: message.id.clone(),
            };
            slot.unsettled.fetch_add(1, Ordering::AcqRel);
            state.in_flight.insert(
                token,
                Leased {
                    pending,
                    deadline,
                    consumer: Arc::clone(slot),
                },
            );
            state.leases.push_back((deadline, token));
            return Some(Delivery::new(envelope, acker));
        }
    }

    /// The next delivery this consumer may take if one is ready now (`Ready(None)` once the
    /// adapter is closed); `Pending` when it must wait for one.
    pub(crate) fn ready_delivery(
        self: &Arc<Self>,
        slot: &Arc<ConsumerSlot>,
    ) -> Poll<Option<Delivery>> {
        if self.topic.is_closed() {
            return Poll::Ready(None);
        }
        match self.take(slot) {
            Taken::Delivery(delivery) => Poll::Ready(Some(delivery)),
            Taken::Wait(_) => Poll::Pending,
        }
    }

    /// Waits for the next delivery this consumer may take; `None` once the adapter is closed.
    /// Called when [`ready_delivery`](Self::ready_delivery) found none: it looks again only
    /// once its wake-up is registered, so a delivery arriving in between is not missed.
    pub(crate) async fn wait_for_delivery(
        self: &Arc<Self>,
        slot: &Arc<ConsumerSlot>,
    ) -> Option<Delivery> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _parked = Counted::new(&self.parked);
            if self.topic.is_closed() {
                return None;
            }
            match self.take(slot) {
                Taken::Delivery(delivery) => return Some(delivery),
                Taken::Wait(Some(at)) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = sleep_until(at) => {}
                    }
                }
                Taken::Wait(None) => notified.await,
            }
        }
    }

    fn settle(&self, token: u64, id: &MessageId, settlement: Settlement) -> Result<()> {
        if self.topic.is_closed() {
            return Err(Error::Closed);
        }
        let mut wake = false;
        let (result, dead) = {
            let mut state = lock(&self.state);
            let mut dead = self.advance_now(&mut state);
            let result = match state.in_flight.remove(&token) {
                None => Err(Error::LeaseExpired { id: id.clone() }),
                Some(leased) => {
                    // A consumer that was full may be waiting for this slot.
                    wake = leased.release_slot();
                    let pending = leased.pending;
                    match settlement {
                        Settlement::Ack => {}
                        Settlement::Nack(_) if pending.attempt >= state.max_attempts => {
                            let failure = Failure::nacked_on_last_attempt(
                                pending.attempt,
                                state.max_attempts,
                            );
                            dead.push(pending.into_dead_letter(&self.key.trigger, failure));
                        }
                        Settlement::Nack(delay) if state.ordered => {
                            // First again, and nothing of the lane before it.
                            state.ready.push_front(pending.next_attempt());
                            state.held_until = Some(instant_after(delay));
                            wake = true;
                        }
                        Settlement::Nack(delay) if delay.is_zero() => {
                            state.ready.push_back(pending.next_attempt());
                            wake = true;
                        }
                        Settlement::Nack(delay) => {
                            state.push_delayed(pending.next_attempt(), instant_after(delay));
                            wake = true;
                        }
                        Settlement::DeadLetter(failure) => {
                            dead.push(pending.into_dead_letter(&self.key.trigger, failure));
                        }
                        Settlement::Release => {
                            state.ready.push_front(pending);
                            wake = true;
                        }
                    }
                    state.compact_leases();
                    // An ordered queue's next message waited for this one.
                    wake |= state.ordered;
                    Ok(())
                }
            };
            (result, dead)
        };
        self.store_dead_letters(dead);
        if wake {
            self.wake.notify_waiters();
        }
        result
    }

    fn extend_lease(&self, token: u64, id: &MessageId) -> Result<()> {
        if self.topic.is_closed() {
            return Err(Error::Closed);
        }
        let dead;
        let result = {
            let mut state = lock(&self.state);
            dead = self.advance_now(&mut state);
            let deadline = Instant::now() + state.visibility_timeout;
            match state.in_flight.get_mut(&token) {
                None => Err(Error::LeaseExpired { id: id.clone() }),
                Some(leased) => {
                    leased.deadline = deadline;
                    state.leases.push_back((deadline, token));
                    state.compact_leases();
                    Ok(())
                }
            }
        };
        self.store_dead_letters(dead);
        result
    }

    /// Waiting, delayed and in-flight messages after the timers ran (what they dead-lettered
    /// is stored; the trigger's DLQ count, shared by its lanes, is read by the caller).
    pub(crate) fn counts(&self) -> SubscriptionStats {
        let (waiting, delayed, in_flight, dead) = {
            let mut state = lock(&self.state);
            let dead = self.advance_now(&mut state);
            (
                (state.ready.len() + state.delayed.len()) as u64,
                state.delayed.len() as u64,
                state.in_flight.len() as u64,
                dead,
            )
        };
        self.store_dead_letters(dead);
        SubscriptionStats {
            waiting,
            delayed,
            in_flight,
            dead_lettered: 0,
        }
    }

    /// Applies expired leases, so DLQ reads see what they dead-lettered.
    pub(crate) fn run_timers(&self) {
        let dead = {
            let mut state = lock(&self.state);
            self.advance_now(&mut state)
        };
        self.store_dead_letters(dead);
    }
}

/// `now + delay`, or a century from now when that does not fit an `Instant`.
pub(crate) fn instant_after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Settles one delivery of the in-memory adapter.
struct MemoryAcker {
    queue: Arc<TriggerQueue>,
    token: u64,
    id: MessageId,
}

impl MemoryAcker {
    fn settle(&self, settlement: Settlement) -> Settling<'static> {
        Settling::done(self.queue.settle(self.token, &self.id, settlement))
    }
}

impl Acker for MemoryAcker {
    fn ack(self) -> Settling<'static> {
        self.settle(Settlement::Ack)
    }

    fn nack(self, delay: Duration) -> Settling<'static> {
        self.settle(Settlement::Nack(delay))
    }

    fn dead_letter(self, failure: Failure) -> Settling<'static> {
        self.settle(Settlement::DeadLetter(failure))
    }

    fn release(self) -> Settling<'static> {
        self.settle(Settlement::Release)
    }

    fn extend_lease(&self) -> Settling<'_> {
        Settling::done(self.queue.extend_lease(self.token, &self.id))
    }
}
