//! Consuming a trigger: a channel with `basic.qos(prefetch)` and a consumer on it, opened
//! again whenever it closes; client-side leases; the acker of each delivery.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use topiq_adapter::{
    Acker, ConsumeOptions, Delivery, Error, Failure, Result, Settling, Subscription,
    SubscriptionSpec,
};
use topiq_adapter_kit::Held;
use topiq_adapter_kit::lease::{self, Lease, LeaseKey, Leased, Leases};

use crate::codec::{self, Metadata, Properties, header};
use crate::deliveries::Deliveries;
use crate::session::{OpenChannel, Session};
use crate::settle::{Settle, settle};
use crate::{QueueType, Shared};

/// How often an idle consumer checks that its channel is still open: a consumer registered
/// on a connection that was just lost may never hear of it, and would wait forever.
const CHANNEL_CHECK: Duration = Duration::from_secs(1);
/// How long a dropped consumer's `basic.cancel` may take before its channel is let go.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a message whose settlement failed waits before it goes back to its queue, so a
/// broken DLQ or retry queue does not turn into a redelivery loop.
const RETURN_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How often a dropped ordered consumer checks whether its delivery was settled.
const ORDERED_SETTLE_CHECK: Duration = Duration::from_millis(20);
/// The idle consumer's check of its channel: every [`CHANNEL_CHECK`], and after a busy
/// stretch (deliveries waiting, the check not looked at) one check, not one per tick missed.
fn channel_check() -> tokio::time::Interval {
    let mut check = tokio::time::interval(CHANNEL_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check
}

/// The first wait after a failed subscribe; it doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The deliveries of one trigger in one lane, at most `prefetch` unsettled, or twice the
/// read-ahead when that is less (RabbitMQ bounds only unacked deliveries); its prefetch is a
/// `u16`: a larger one is capped at 65,535.
pub(crate) fn subscribe(
    shared: Arc<Shared>,
    spec: SubscriptionSpec,
    options: ConsumeOptions,
) -> (Subscription, Arc<Leases<Received>>) {
    let leases = Leases::<Received>::new(spec.visibility_timeout);
    let unacked = match options.read_ahead {
        // An ordered lane queue hands out one message at a time.
        _ if spec.ordered => 1,
        Some(ahead) => options.prefetch.min(ahead.saturating_mul(2)),
        None => options.prefetch,
    };
    let prefetch = unacked.min(u32::from(u16::MAX));
    let state = Consuming {
        shared,
        spec: spec.clone(),
        lane: options.lane,
        prefetch,
        slots: Arc::new(Semaphore::new(prefetch as usize)),
        leases: Arc::clone(&leases),
        open: None,
        backoff: INITIAL_BACKOFF,
        check: channel_check(),
    };
    let deliveries = Deliveries::new(Box::new(state));
    (Subscription::new(spec.key, deliveries.boxed()), leases)
}

pub(crate) struct Consuming {
    shared: Arc<Shared>,
    spec: SubscriptionSpec,
    /// The topic's lane it takes from.
    lane: u32,
    prefetch: u32,
    slots: Arc<Semaphore>,
    leases: Arc<Leases<Received>>,
    /// The consumer, its channel, and the connection they live on.
    open: Option<(Arc<OpenChannel>, lapin::Consumer, Arc<Session>)>,
    backoff: Duration,
    check: tokio::time::Interval,
}

impl Drop for Consuming {
    /// Cancels the consumer and releases what it received but never handed out (without it,
    /// the channel's closing would return those and RabbitMQ would count an attempt no
    /// handler made); the channel closes when the last delivery is settled or dropped.
    ///
    /// An ordered trigger's consumer is not cancelled: once its delivery is settled (a
    /// handler still running, a nack held through its delay) its channel closes, which
    /// removes the consumer and returns what it was sent meanwhile to the head of the queue
    /// in one step (counted as an attempt). A cancel first would pass the queue's single
    /// active consumer to another instance while this one still holds a message: that one
    /// would take the next, ahead of it.
    fn drop(&mut self) {
        if let Some((channel, mut consumer, _)) = self.open.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let tag = consumer.tag();
            let (shared, spec) = (Arc::clone(&self.shared), self.spec.clone());
            let leases = Arc::clone(&self.leases);
            let releases = self.shared.releases.clone();
            releases.spawn_on(
                async move {
                    if spec.ordered {
                        while !leases.is_empty() && !shared.closed.is_cancelled() {
                            tokio::time::sleep(ORDERED_SETTLE_CHECK).await;
                        }
                        // Closed while the consumer lives: dropping it first would send a
                        // `basic.cancel` (lapin cancels a consumer it drops).
                        let closing = channel.close(200, "ordered consumer stopped".into());
                        let _ = tokio::time::timeout(CANCEL_TIMEOUT, closing).await;
                        drop((consumer, channel));
                        return;
                    }
                    let cancel = channel.basic_cancel(tag, BasicCancelOptions::default());
                    let _ = tokio::time::timeout(CANCEL_TIMEOUT, cancel).await;
                    // Everything sent before the cancel's answer is buffered by now.
                    while let Some(Some(Ok(delivery))) = consumer.next().now_or_never() {
                        release_unhanded(&shared, &spec, delivery).await;
                    }
                    drop((consumer, channel));
                },
                &runtime,
            );
        }
    }
}

/// Gives back a delivery that was never handed out: a copy with the attempt it would have
/// been (confirmed), then the original acked; if that fails, the channel's closing returns
/// it (counted). On an ordered trigger it is returned to the head of its queue (counted).
async fn release_unhanded(
    shared: &Shared,
    spec: &SubscriptionSpec,
    delivery: lapin::message::Delivery,
) {
    let key = &spec.key;
    if spec.ordered {
        let _ = shared
            .settle_delivery(&delivery.acker, Settle::Requeue, "return")
            .await;
        return;
    }
    let Ok(mut metadata) = Metadata::from_properties(&delivery.properties) else {
        return;
    };
    let attempt = metadata
        .attempt_base
        .saturating_add(earlier_deliveries(shared, &delivery))
        .saturating_add(1);
    metadata.attempt_base = attempt - 1;
    let released = match shared
        .publish_to_trigger(key, &delivery.data, &metadata)
        .await
    {
        Ok(()) => {
            let acker = &delivery.acker;
            shared
                .settle_delivery(acker, Settle::Ack, "ack after release")
                .await
        }
        Err(err) => Err(err),
    };
    if let Err(err) = released {
        tracing::warn!(trigger = %key, id = %metadata.id, error = %err, "cannot release a message that was never handed out; it comes back counted");
    }
}

/// Earlier deliveries of this copy of a message: the quorum queue's count, or (classic
/// queues) one if the broker says it was delivered before.
fn earlier_deliveries(shared: &Shared, delivery: &lapin::message::Delivery) -> u32 {
    match shared.config.queue_type {
        QueueType::Quorum => codec::header_of(&delivery.properties, header::DELIVERY_COUNT)
            .and_then(codec::as_i64)
            .and_then(|count| u32::try_from(count).ok())
            .unwrap_or(0),
        QueueType::Classic => u32::from(delivery.redelivered),
    }
}

impl Consuming {
    /// A delivery the consumer has already received, handed out with no wait; else a wait,
    /// with what was taken from the consumer for [`Consuming::wait_next`] to finish. The
    /// consumer is polled with the stream's context, so its waker is the stream's.
    pub(crate) fn take_ready(&mut self, cx: &mut Context<'_>) -> Ready {
        if self.shared.closed.is_cancelled() {
            return Ready::Wait(None);
        }
        let Some((channel, consumer, _)) = self.open.as_mut() else {
            return Ready::Wait(None);
        };
        let delivery = match consumer.poll_next_unpin(cx) {
            Poll::Pending => return Ready::Wait(None),
            Poll::Ready(Some(Ok(delivery))) => delivery,
            Poll::Ready(other) => {
                return Ready::Wait(Some(Taken::Item(Box::new(other), Arc::clone(channel))));
            }
        };
        self.backoff = INITIAL_BACKOFF;
        let channel = Arc::clone(channel);
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            return Ready::Wait(Some(Taken::Item(Box::new(Some(Ok(delivery))), channel)));
        };
        match receive(
            &self.shared,
            &self.spec,
            (&delivery, channel),
            permit,
            &self.leases,
        ) {
            Ok(delivery) => Ready::Delivery(delivery),
            Err(unhanded) => Ready::Wait(Some(Taken::Unhanded(unhanded))),
        }
    }

    /// The next delivery, after `taken` (what [`Consuming::take_ready`] left) is dealt with,
    /// and the state back; `None` once the adapter is closed.
    pub(crate) async fn wait_next(
        mut self: Box<Self>,
        taken: Option<Taken>,
    ) -> (Option<Result<Delivery>>, Box<Self>) {
        let next = self.next_delivery(taken).await;
        (next, self)
    }

    async fn next_delivery(&mut self, mut taken: Option<Taken>) -> Option<Result<Delivery>> {
        loop {
            let (item, channel) = match taken.take() {
                Some(Taken::Unhanded(unhanded)) => {
                    unhanded.settle(&self.shared).await;
                    continue;
                }
                Some(Taken::Item(item, channel)) => (*item, channel),
                None => self.next_item().await?,
            };
            match item {
                Some(Ok(delivery)) => {
                    self.backoff = INITIAL_BACKOFF;
                    let permit = self.slot().await?;
                    let received = receive(
                        &self.shared,
                        &self.spec,
                        (&delivery, channel),
                        permit,
                        &self.leases,
                    );
                    match received {
                        Ok(delivery) => return Some(Ok(delivery)),
                        Err(unhanded) => unhanded.settle(&self.shared).await,
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(trigger = %self.spec.key, error = %err, "the consumer failed; subscribing again");
                    self.open = None;
                    self.wait_backoff().await?;
                }
                None => {
                    tracing::warn!(trigger = %self.spec.key, "the consumer's channel closed; subscribing again");
                    self.open = None;
                    self.wait_backoff().await?;
                }
            }
        }
    }

    /// The consumer's next item and the channel it came on, opening the consumer first when
    /// it is not open; `None` once the adapter is closed.
    async fn next_item(&mut self) -> Option<(ConsumerItem, Arc<OpenChannel>)> {
        loop {
            if self.shared.closed.is_cancelled() {
                return None;
            }
            let Some((channel, consumer, session)) = self.open.as_mut() else {
                if let Err(err) = self.open_consumer().await {
                    tracing::warn!(trigger = %self.spec.key, error = %err, "cannot consume; trying again");
                    self.wait_backoff().await?;
                }
                continue;
            };
            // What already arrived is taken without a wait: no cancellation waiter is
            // registered and dropped, no timer looked at (closing was checked above).
            if let Some(item) = consumer.next().now_or_never() {
                return Some((item, Arc::clone(channel)));
            }
            tokio::select! {
                () = self.shared.closed.cancelled() => return None,
                item = consumer.next() => return Some((item, Arc::clone(channel))),
                _ = self.check.tick() => {
                    // lapin does not always end a consumer whose connection died: the
                    // connection's own state is the one to trust.
                    if !channel.status().connected() || !session.is_open() {
                        tracing::warn!(trigger = %self.spec.key, "the consumer's channel or connection is gone; subscribing again");
                        self.open = None;
                    }
                }
            }
        }
    }

    /// A slot for one more delivery handed out, taken at once when one is free; `None` once
    /// the adapter is closed.
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(permit);
        }
        tokio::select! {
            () = self.shared.closed.cancelled() => None,
            permit = Arc::clone(&self.slots).acquire_owned() => permit.ok(),
        }
    }

    async fn open_consumer(&mut self) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        shared.bounded("consume", self.subscribe()).await
    }

    /// Opens a channel and consumes the trigger's queue of its lane on it. The channel is owned by an
    /// [`OpenChannel`] from the moment it exists (shared later by the consumer and every
    /// delivery it hands out, so the channel outlives a dropped subscription until the last
    /// of them is settled), so a try the caller gives up on (its bound
    /// ran out while the broker had already registered the consumer) closes the channel,
    /// which cancels that consumer and returns what it was sent: nothing is left behind.
    async fn subscribe(&mut self) -> Result<()> {
        let session = self.shared.session().await?;
        let channel = session.owned_channel().await?;
        let queue = self.shared.layout.lane_queue(&self.spec.key, self.lane);
        let prefetch = u16::try_from(self.prefetch).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(crate::unavailable("set the prefetch"))?;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|err| Error::Broker {
                operation: "consume",
                source: format!("cannot consume {queue:?}: {err}").into(),
            })?;
        self.open = Some((Arc::new(channel), consumer, session));
        Ok(())
    }

    /// Waits out the backoff (doubling it); `None` if the adapter closes meanwhile.
    async fn wait_backoff(&mut self) -> Option<()> {
        let period = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            () = self.shared.closed.cancelled() => None,
            () = tokio::time::sleep(period) => Some(()),
        }
    }
}

/// An item of a lapin consumer.
type ConsumerItem = Option<lapin::Result<lapin::message::Delivery>>;

/// What [`Consuming::take_ready`] found.
pub(crate) enum Ready {
    /// A delivery handed out at once.
    Delivery(Delivery),
    /// None at once: a wait, which first finishes what was taken, if anything.
    Wait(Option<Taken>),
}

/// What [`Consuming::take_ready`] took from the consumer and could not hand out at once.
pub(crate) enum Taken {
    /// An item to finish with: a delivery with no slot free, an error, the consumer's end.
    /// Boxed: a lapin delivery is some 400 bytes, and this is rare.
    Item(Box<ConsumerItem>, Arc<OpenChannel>),
    /// A delivery received that is settled instead of handed out.
    Unhanded(Unhanded),
}

/// A delivery received that is settled instead of handed out.
pub(crate) enum Unhanded {
    /// One topiq cannot read: rejected without requeue, so it never comes back.
    Unreadable(Box<lapin::Acker>),
    /// One that must not reach a handler (see [`OnReceipt`]).
    Settled(Arc<Received>, OnReceipt),
}

/// Turns `delivery` (received on `channel`, `permit` its slot) into a delivery for a
/// handler, with no wait; or into one to settle instead ([`Unhanded::settle`] waits).
fn receive(
    shared: &Arc<Shared>,
    spec: &SubscriptionSpec,
    (delivery, channel): (&lapin::message::Delivery, Arc<OpenChannel>),
    permit: OwnedSemaphorePermit,
    leases: &Arc<Leases<Received>>,
) -> std::result::Result<Delivery, Unhanded> {
    let Some((metadata, data)) = decode(spec, delivery) else {
        return Err(Unhanded::Unreadable(Box::new(delivery.acker.clone())));
    };
    let earlier = earlier_deliveries(shared, delivery);
    let attempt = metadata
        .attempt_base
        .saturating_add(earlier)
        .saturating_add(1);
    let held = Held::new(spec, metadata, data, attempt, permit, &shared.closed);
    let envelope = held.envelope();
    let received = leases.insert(|lease_key| Received {
        shared: Arc::clone(shared),
        held,
        acker: delivery.acker.clone(),
        leases: Arc::clone(leases),
        lease_key,
        _channel: channel,
    });
    match received.on_receipt(delivery.redelivered) {
        Some(why) => Err(Unhanded::Settled(received, why)),
        None => Ok(Delivery::new(envelope, RabbitAcker { received })),
    }
}

impl Unhanded {
    /// Settles it.
    async fn settle(self, shared: &Shared) {
        match self {
            Unhanded::Unreadable(acker) => {
                let _ = shared
                    .settle_delivery(&acker, Settle::Discard, "reject")
                    .await;
            }
            Unhanded::Settled(received, why) => received.settle_on_receipt(why).await,
        }
    }
}

/// Reads a delivery's metadata and data; `None` for one topiq cannot read (logged).
fn decode(
    spec: &SubscriptionSpec,
    delivery: &lapin::message::Delivery,
) -> Option<(Metadata, Arc<serde_json::Value>)> {
    let metadata = match Metadata::from_properties(&delivery.properties) {
        Ok(metadata) => metadata,
        Err(err) => {
            tracing::error!(trigger = %spec.key, error = %err, "dropping a message topiq cannot read");
            return None;
        }
    };
    match codec::decode(&delivery.data) {
        Ok(data) => Some((metadata, Arc::new(data))),
        Err(err) => {
            tracing::error!(trigger = %spec.key, id = %metadata.id, error = %err, "dropping a message whose payload is not JSON");
            None
        }
    }
}

/// A received message, its lease, and what settling it needs.
pub(crate) struct Received {
    shared: Arc<Shared>,
    held: Held,
    acker: lapin::Acker,
    leases: Arc<Leases<Received>>,
    lease_key: LeaseKey,
    /// Keeps the delivery's channel open until it is settled or dropped.
    _channel: Arc<OpenChannel>,
}

impl Drop for Received {
    /// A delivery dropped unsettled (its handler's task aborted) goes back to the queue when
    /// its lease runs out, as on every adapter; RabbitMQ alone would hold it until the
    /// channel closes. Returning it at once instead would race the broker's redelivery to
    /// this same consumer against the closing of its channel, spending two attempts.
    fn drop(&mut self) {
        self.leases.remove(self.lease_key);
        let mut lease = lease::lock(&self.held.lease);
        let deadline = lease.deadline();
        if lease.claim_expired()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // Not the adapter (`Shared`): a dropped adapter must not live on in this task.
            let acker = self.acker.clone();
            let deadlines = self.shared.deadlines.clone();
            let timeout = self.shared.config.publish_timeout;
            runtime.spawn(async move {
                tokio::time::sleep_until(deadline).await;
                // Fails harmlessly if the channel closed meanwhile (which returned it).
                let _ = settle(&acker, Settle::Requeue, "return", (&deadlines, timeout)).await;
            });
        }
    }
}

impl Leased for Received {
    fn lease(&self) -> &Mutex<Lease> {
        &self.held.lease
    }

    /// Before the last attempt, the message goes back to the queue (delivered again, counted);
    /// on the last, it is dead-lettered at once.
    fn expired(self: Arc<Self>) {
        if !lease::lock(&self.held.lease).claim_expired() {
            return;
        }
        tokio::spawn(async move {
            if self.held.attempt >= self.held.max_attempts {
                self.dead_letter_expired(self.held.attempt).await;
            } else if let Err(err) = self.settle(Settle::Requeue, "return").await {
                tracing::warn!(trigger = %self.held.key, id = %self.held.metadata.id, error = %err, "cannot return an expired delivery; its channel's closing returns it");
            }
        });
    }
}

impl Received {
    /// Dead-letters a message whose lease ran out after `attempts` attempts; if that fails,
    /// the message goes back to the queue, to be dead-lettered on its next receipt.
    async fn dead_letter_expired(&self, attempts: u32) {
        let failure = self.held.lease_expired(attempts);
        if let Err(err) = self.move_to_dlq(failure, attempts).await {
            tracing::error!(trigger = %self.held.key, error = %err, "cannot dead-letter an expired message; it is delivered again");
            tokio::time::sleep(RETURN_AFTER_FAILURE).await;
            let _ = self.settle(Settle::Requeue, "return").await;
        }
    }

    /// Dead-letters a message its trigger reached after the topic's retention ran out
    /// (`attempts` attempts made); if that fails, it goes back to the queue, to be
    /// dead-lettered on its next receipt.
    async fn dead_letter_past_retention(&self, attempts: u32) {
        let topic = self.shared.topic(&self.held.key.topic);
        let retention = topic.ok().and_then(|topic| topic.retention);
        let failure = Failure::expired(retention, attempts);
        if let Err(err) = self.move_to_dlq(failure, attempts).await {
            tracing::error!(trigger = %self.held.key, error = %err, "cannot dead-letter a message past its retention; it is delivered again");
            tokio::time::sleep(RETURN_AFTER_FAILURE).await;
            let _ = self.settle(Settle::Requeue, "return").await;
        }
    }

    /// Publishes the message to the trigger's `dead_letter_topic` (when it has one), the DLQ
    /// record (confirmed), then acks the message: a crash between the two leaves a second
    /// record, never none.
    async fn move_to_dlq(&self, failure: Failure, attempts: u32) -> Result<()> {
        let record = self.held.dead_letter(failure, attempts);
        if let Some(topic) = &self.held.dead_letter_topic
            && let Err(err) = self.shared.publish_one(topic, record.notification()).await
        {
            // The record is still written, so nothing is lost; only the notification is.
            tracing::error!(trigger = %self.held.key, id = %record.id, dead_letter_topic = %topic, error = %err, "cannot publish to the dead-letter topic; the message is in the trigger's DLQ");
        }
        crate::dlq::append(&self.shared, &record).await?;
        self.ack_original("ack after dead-lettering").await
    }

    async fn ack_original(&self, operation: &'static str) -> Result<()> {
        self.settle(Settle::Ack, operation).await
    }

    async fn settle(&self, how: Settle, operation: &'static str) -> Result<()> {
        self.shared
            .settle_delivery(&self.acker, how, operation)
            .await
    }

    /// Why a message just received must not reach a handler, if it must not: past its
    /// topic's retention (dead-lettered as `expired`), past its last attempt (the process
    /// that held it died before dead-lettering it), or redelivered by a classic queue, which
    /// only says "delivered before", not how often (replaced by a copy carrying its attempt,
    /// so a message that kills its consumer does not come back forever).
    fn on_receipt(&self, redelivered: bool) -> Option<OnReceipt> {
        if self.held.metadata.is_expired() {
            Some(OnReceipt::PastRetention)
        } else if self.held.attempt > self.held.max_attempts {
            Some(OnReceipt::PastLastAttempt)
        } else if redelivered && self.shared.config.queue_type == QueueType::Classic {
            Some(OnReceipt::Uncounted)
        } else {
            None
        }
    }

    /// Settles a message that must not reach a handler, for `why`.
    async fn settle_on_receipt(&self, why: OnReceipt) {
        if !lease::lock(&self.held.lease).claim() {
            return;
        }
        match why {
            OnReceipt::PastRetention => {
                self.dead_letter_past_retention(self.held.attempt - 1).await
            }
            OnReceipt::PastLastAttempt => self.dead_letter_expired(self.held.attempt - 1).await,
            OnReceipt::Uncounted => self.count_redelivery().await,
        }
    }

    /// Replaces a redelivered message of a classic queue with a copy (confirmed, to the back
    /// of the queue) whose next delivery is this attempt, then acks it: the attempt count
    /// survives every later crash. A crash between the two delivers it twice, never loses it.
    async fn count_redelivery(&self) {
        let copied = match self.copy(self.held.attempt - 1) {
            Ok((payload, metadata)) => {
                self.shared
                    .publish_to_trigger(&self.held.key, &payload, &metadata)
                    .await
            }
            Err(err) => Err(err),
        };
        let settled = match copied {
            Ok(()) => self.ack_original("ack a counted redelivery").await,
            Err(err) => Err(err),
        };
        if let Err(err) = settled {
            tracing::warn!(trigger = %self.held.key, id = %self.held.metadata.id, error = %err, "cannot count a redelivery; it is delivered again");
            tokio::time::sleep(RETURN_AFTER_FAILURE).await;
            let _ = self.settle(Settle::Requeue, "return").await;
        }
    }

    /// A copy of the message whose next delivery is attempt `attempt_base + 1`, in the lane
    /// it goes back to (its own while the topic has it, else lane 0).
    fn copy(&self, attempt_base: u32) -> Result<(Vec<u8>, Metadata)> {
        let mut metadata = self.held.metadata.clone();
        metadata.attempt_base = attempt_base;
        metadata.lane = self
            .shared
            .topic(&self.held.key.topic)?
            .lane_or_first(metadata.lane);
        let payload = codec::encode(&self.held.data)?;
        Ok((payload, metadata))
    }
}

/// Why a message just received is settled instead of handed out.
#[derive(Clone, Copy, Debug)]
pub(crate) enum OnReceipt {
    /// Past its topic's retention: dead-lettered as `expired`.
    PastRetention,
    /// Past its last attempt: dead-lettered.
    PastLastAttempt,
    /// Redelivered by a classic queue: replaced by a copy that counts the attempt.
    Uncounted,
}

/// Settles one RabbitMQ delivery.
struct RabbitAcker {
    received: Arc<Received>,
}

impl RabbitAcker {
    /// Runs a claimed settlement; if it fails, the message goes back to its queue (after a
    /// pause) instead of staying unacked on the channel with nobody to settle it.
    async fn or_return(self, settlement: impl Future<Output = Result<()>>) -> Result<()> {
        let result = settlement.await;
        if result.is_err() {
            let received = Arc::clone(&self.received);
            tokio::spawn(async move {
                tokio::time::sleep(RETURN_AFTER_FAILURE).await;
                let _ = received
                    .settle(Settle::Requeue, "return after a failed settlement")
                    .await;
            });
        }
        result
    }

    async fn nack(self, delay: Duration) -> Result<()> {
        self.received.held.claim()?;
        let received = Arc::clone(&self.received);
        self.or_return(async move { Self::nack_claimed(&received, delay).await })
            .await
    }

    async fn nack_claimed(received: &Arc<Received>, delay: Duration) -> Result<()> {
        if received.held.attempt >= received.held.max_attempts {
            let failure =
                Failure::nacked_on_last_attempt(received.held.attempt, received.held.max_attempts);
            return received.move_to_dlq(failure, received.held.attempt).await;
        }
        if received.held.ordered {
            // Held through the delay, then back to the head of its queue, so nothing of its
            // lane goes before it (the quorum queue counts the return: the next attempt). A
            // crash or close meanwhile closes the channel, which returns it at once.
            let received = Arc::clone(received);
            tokio::spawn(async move {
                // Closing the adapter closes the channel, which returns it at once.
                tokio::select! {
                    () = received.shared.closed.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                if let Err(err) = received.settle(Settle::Requeue, "return (nack)").await {
                    tracing::warn!(trigger = %received.held.key, error = %err, "cannot return a nacked message of an ordered trigger; its channel's closing returns it");
                }
            });
            return Ok(());
        }
        let (payload, metadata) = received.copy(received.held.attempt)?;
        let shared = &received.shared;
        if delay.is_zero() {
            shared
                .publish_to_trigger(&received.held.key, &payload, &metadata)
                .await?;
        } else {
            let queue = shared
                .retry_queue(&received.held.key, metadata.lane, delay)
                .await?;
            match shared
                .publish_confirmed("", &queue, &payload, || metadata.properties())
                .await?
            {
                crate::Published::Stored => {}
                _ => {
                    return Err(Error::Broker {
                        operation: "nack",
                        source: format!("the retry queue {queue:?} did not take the copy").into(),
                    });
                }
            }
        }
        received.ack_original("ack after retry copy").await
    }

    async fn release(self) -> Result<()> {
        self.received.held.claim()?;
        let received = Arc::clone(&self.received);
        if received.held.ordered {
            return received.settle(Settle::Requeue, "return (release)").await;
        }
        self.or_return(async move {
            let (payload, metadata) = received.copy(received.held.attempt.saturating_sub(1))?;
            received
                .shared
                .publish_to_trigger(&received.held.key, &payload, &metadata)
                .await?;
            received.ack_original("ack after release").await
        })
        .await
    }
}

impl Acker for RabbitAcker {
    fn ack(self) -> Settling<'static> {
        Settling::pending(async move {
            self.received.held.claim()?;
            self.received.ack_original("ack").await
        })
    }

    fn nack(self, delay: Duration) -> Settling<'static> {
        Settling::pending(RabbitAcker::nack(self, delay))
    }

    fn dead_letter(self, failure: Failure) -> Settling<'static> {
        Settling::pending(async move {
            self.received.held.claim()?;
            let received = Arc::clone(&self.received);
            let attempts = received.held.attempt;
            self.or_return(async move { received.move_to_dlq(failure, attempts).await })
                .await
        })
    }

    fn release(self) -> Settling<'static> {
        Settling::pending(RabbitAcker::release(self))
    }

    fn extend_lease(&self) -> Settling<'_> {
        Settling::pending(async move {
            let received = &self.received;
            received.shared.ensure_open()?;
            received.held.extend()
        })
    }
}
