//! Consuming a trigger: a puller per consumer (the fan-out one and the trigger's own), the
//! lease watcher, and the acker of each delivery.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use async_nats::{StatusCode, Subject};
use bytes::Bytes;
use futures::stream::{BoxStream, PollNext};
use futures::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use topiq_adapter::{
    Acker, ConsumeOptions, Delivery, Error, Failure, Result, Settling, Subscription,
    SubscriptionKey, SubscriptionSpec,
};
use topiq_adapter_kit::Held;
use topiq_adapter_kit::lease::{self, Lease, LeaseKey, Leased, Leases};

use crate::ack::AckSubject;
use crate::codec::{self, Headers, Metadata, Stamp};
use crate::layout::Layout;
use crate::read_ahead::{ReadAhead, is_delivery};
use crate::reply::AckReply;
use crate::{Shared, broker};

/// The most messages one pull request asks for.
const MAX_PULL: usize = 256;
/// How long a pull request waits for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// The header of an expired pull request's status that says how much of it was unfilled.
const PENDING_MESSAGES: async_nats::HeaderName =
    async_nats::HeaderName::from_static("Nats-Pending-Messages");

/// The deliveries of one trigger in one lane, at most `prefetch` unsettled and `read_ahead`
/// received but not handed out (plus one of its own copies).
pub(crate) fn subscribe(
    shared: Arc<Shared>,
    spec: SubscriptionSpec,
    options: ConsumeOptions,
) -> Subscription {
    let (prefetch, ahead, lane) = (options.prefetch, options.ahead(), options.lane);
    let slots = Arc::new(Semaphore::new(prefetch as usize));
    let trigger = &spec.key.trigger;
    // The fan-out consumer reserves its slots before it pulls, so it never holds more than
    // `prefetch`. The trigger's own copies (redrives, releases) are rare and have one slot of
    // their own, so they never wait behind an idle fan-out pull (and it never waits for them).
    let direct_slot = Arc::new(Semaphore::new(1));
    let leases = Leases::<Received>::new(spec.visibility_timeout);
    // One puller per consumer, run inside the subscription's stream: a delivery reaches the
    // consumer without a hop through another task, and new pulls go out only when the
    // consumer asks for more, never beyond its free slots. A lease that runs out on the last
    // attempt is dead-lettered by the lease watcher, so that needs no pulling.
    let top_up_at = (ahead as usize / 2).max(1);
    let pullers = [
        (
            Layout::main_consumer(trigger, lane),
            slots,
            ahead,
            top_up_at,
        ),
        (Layout::direct_consumer(trigger, lane), direct_slot, 1, 1),
    ]
    .map(|(consumer_name, slots, ahead, top_up_at)| {
        Puller {
            shared: Arc::clone(&shared),
            spec: spec.clone(),
            consumer_name,
            lane,
            leases: Arc::clone(&leases),
            consumer: None,
            inbox: None,
            read_ahead: ReadAhead::new(slots, ahead as usize),
            top_up_at,
            silence: Box::pin(tokio::time::sleep(SILENCE)),
            last_heard: Instant::now(),
            pulled_at: Instant::now(),
            backoff: INITIAL_BACKOFF,
            ack_floor: None,
            returned_at: None,
        }
        .into_deliveries()
    });
    let [main, direct] = pullers;
    Subscription::new(spec.key.clone(), Box::pin(merged(main, direct)))
}

/// How often the trigger's own copies are looked at first, in polls of the merged stream.
const DIRECT_FIRST_EVERY: u8 = 16;

/// The fan-out puller's deliveries and the trigger's own copies, as one stream: the fan-out
/// is asked first, the direct puller first every [`DIRECT_FIRST_EVERY`]th time (its copies
/// are never starved by a fan-out backlog), and each is asked whenever the other has nothing.
/// (`select_all` would allocate a node for every delivery, to put the puller back.)
fn merged(
    main: BoxStream<'static, Result<Delivery>>,
    direct: BoxStream<'static, Result<Delivery>>,
) -> impl futures::Stream<Item = Result<Delivery>> + Send {
    futures::stream::select_with_strategy(main, direct, |asked: &mut u8| {
        *asked = asked.wrapping_add(1);
        if asked.is_multiple_of(DIRECT_FIRST_EVERY) {
            PollNext::Right
        } else {
            PollNext::Left
        }
    })
}

/// The first wait after a failed pull; it doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the server says a waiting pull request is still alive (no message to send).
const HEARTBEAT: Duration = Duration::from_secs(2);
/// With pulls outstanding, this long without a message, a status or a heartbeat means the
/// server lost them (a restart, a stalled connection): the puller starts over on a new reply
/// subject.
const SILENCE: Duration = Duration::from_secs(6);

/// Pulls one consumer of a trigger ahead of the consumer's demand, within its free slots:
/// pull requests share one reply subscription, and the slots of their messages are reserved
/// when they are sent, so the consumer never holds more than `prefetch` unsettled, nor more
/// than its read-ahead received and not handed out. A request's unfilled part comes back
/// with its `408` status and frees its slots.
struct Puller {
    shared: Arc<Shared>,
    spec: SubscriptionSpec,
    consumer_name: String,
    /// The topic's lane the consumer takes from.
    lane: u32,
    leases: Arc<Leases<Received>>,
    consumer: Option<jetstream::consumer::Consumer<pull::Config>>,
    /// The reply subject of every pull request, and its subscription.
    inbox: Option<(Subject, async_nats::Subscriber)>,
    /// The slots reserved for what the requests may still deliver or delivered, and what
    /// waited while nobody asked.
    read_ahead: ReadAhead,
    /// With requests outstanding, ask for more once this many slots are free (half of them).
    top_up_at: usize,
    /// Runs out [`SILENCE`] after `last_heard` (checked when it fires, so a message costs no
    /// timer update).
    silence: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// When the last message or status arrived, or the last request was sent.
    last_heard: Instant,
    /// When the last pull request was sent: until it expires, the server may deliver to the
    /// reply subject.
    pulled_at: Instant,
    backoff: Duration,
    /// The consumer's ack floor (stream sequence) when this puller last got it; `Some` once
    /// it had the consumer, so a consumer that is gone afterwards was deleted under topiq.
    ack_floor: Option<u64>,
    /// When the last delivery was taken to be handed out (its read's clock reading): until
    /// the consumer asks again, what arrives waits in the subscription while the server's
    /// lease on it runs.
    returned_at: Option<Instant>,
}

impl Puller {
    /// The puller's deliveries as a stream, until the adapter is closed.
    fn into_deliveries(self) -> BoxStream<'static, Result<Delivery>> {
        // Boxed: a puller is large (the consumer's cached info), and the stream moves its
        // state in and out of each item's future.
        futures::stream::unfold(Box::new(self), |mut puller| async move {
            let delivery = puller.next_delivery().await?;
            Some((delivery, puller))
        })
        .boxed()
    }

    /// The next delivery; `None` once the adapter is closed.
    async fn next_delivery(&mut self) -> Option<Result<Delivery>> {
        self.take_backlog();
        loop {
            if self.shared.closed.is_cancelled() {
                return None;
            }
            if self.inbox.is_none() {
                self.connect().await?;
                continue;
            }
            if !self.top_up().await? {
                continue;
            }
            // When it was taken: the read's own clock reading, which also stamps the
            // delivery's return to the consumer (earlier by what `take` waits, microseconds
            // unless it waits for a slot or the client's command channel; an earlier stamp
            // only makes the backlog count a lease as more spent, the safe side).
            // Lent, not moved, to what reads it: a message is some 200 bytes, and each move
            // into a nested future copies it.
            let (mut message, waited, taken_at) = match self.read_ahead.next_waiting() {
                Some((message, since)) => {
                    let now = Instant::now();
                    (message, now.saturating_duration_since(since), now)
                }
                None => match self.read().await? {
                    Some(message) => (message, Duration::ZERO, self.last_heard),
                    None => continue,
                },
            };
            if let Some(delivery) = self.take(&mut message, waited).await? {
                self.returned_at = Some(taken_at);
                return Some(delivery);
            }
        }
    }

    /// Moves what already waits in the subscription to the backlog when the consumer did not
    /// ask for a while (its handlers were busy): each of those may have spent that long of
    /// its server-side lease.
    fn take_backlog(&mut self) {
        let Some(returned_at) = self.returned_at.take() else {
            return;
        };
        let Some((_, subscriber)) = self.inbox.as_mut() else {
            return;
        };
        if returned_at.elapsed() <= crate::topology::ACK_WAIT_MARGIN {
            return;
        }
        while let Some(Some(message)) = subscriber.next().now_or_never() {
            self.read_ahead.wait(message, returned_at);
        }
    }

    /// The next message or status of the pull subscription; `Some(None)` when the puller had
    /// to start over (read again), `None` once the adapter is closed.
    async fn read(&mut self) -> Option<Option<async_nats::Message>> {
        loop {
            let Some((_, subscriber)) = self.inbox.as_mut() else {
                return Some(None);
            };
            // What already arrived is taken without a wait: no cancellation waiter is
            // registered and dropped, no timer looked at (the caller checked for close).
            if let Some(Some(message)) = subscriber.next().now_or_never() {
                self.last_heard = Instant::now();
                return Some(Some(message));
            }
            // Biased: whatever already arrived is read before the silence timer is looked at.
            // When nobody polled this stream for a while (every handler busy), that timer has
            // run out while messages and heartbeats waited in the subscription; starting over
            // then would throw away deliveries the server already counted.
            let next = tokio::select! {
                biased;
                () = self.shared.closed.cancelled() => return None,
                next = subscriber.next() => next,
                () = &mut self.silence => {
                    // Re-armed lazily: activity only records its time.
                    let heard = self.last_heard;
                    if heard.elapsed() < SILENCE {
                        self.silence.as_mut().reset(heard + SILENCE);
                        continue;
                    }
                    tracing::warn!(trigger = %self.spec.key, consumer = %self.consumer_name, "no message or status from outstanding pulls; pulling again");
                    // Pulls to a consumer that was deleted get no answer at all: get it
                    // again (or create it) before pulling.
                    self.start_over();
                    self.consumer = None;
                    return Some(None);
                }
            };
            let Some(message) = next else {
                tracing::warn!(trigger = %self.spec.key, consumer = %self.consumer_name, "the pull subscription ended; pulling again");
                self.fail().await?;
                return Some(None);
            };
            self.last_heard = Instant::now();
            return Some(Some(message));
        }
    }

    /// Handles one message or status of the subscription: a delivery (`Some(Some(_))`), or
    /// nothing to hand out (`Some(None)`); `None` once the adapter is closed.
    async fn take(
        &mut self,
        message: &mut async_nats::Message,
        waited: Duration,
    ) -> Option<Option<Result<Delivery>>> {
        match message.status {
            None | Some(StatusCode::OK) => {
                // Handed out now: it leaves the read-ahead, its slot stays until settled.
                let permit = match self.read_ahead.take_slot() {
                    Some(slot) => slot,
                    None => self.acquire().await?,
                };
                let leases = &self.leases;
                return Some(
                    receive(&self.shared, &self.spec, message, permit, leases, waited).await,
                );
            }
            // A waiting request is alive: `last_heard` moved, nothing else to do.
            Some(StatusCode::IDLE_HEARTBEAT) => {}
            Some(StatusCode::TIMEOUT) => match unfilled(message) {
                // A request expired: its unfilled part frees its slots.
                Some(unfilled) => self.read_ahead.expired(unfilled),
                None => self.start_over(),
            },
            Some(status) => {
                tracing::warn!(trigger = %self.spec.key, consumer = %self.consumer_name, %status, description = ?message.description, "pull refused; getting the consumer again");
                self.fail().await?;
            }
        }
        Some(None)
    }

    /// Gets the consumer (created again if it was deleted) and subscribes a new reply
    /// subject. `None` once the adapter is closed.
    async fn connect(&mut self) -> Option<()> {
        if self.consumer.is_none() {
            match get_consumer(
                &self.shared,
                &self.spec,
                (&self.consumer_name, self.lane),
                self.ack_floor,
            )
            .await
            {
                Ok(consumer) => {
                    self.ack_floor = Some(consumer.cached_info().ack_floor.stream_sequence);
                    self.consumer = Some(consumer);
                }
                Err(err) => {
                    tracing::warn!(trigger = %self.spec.key, consumer = %self.consumer_name, error = %err, retry_in = ?self.backoff, "cannot get the consumer");
                    return self.fail().await;
                }
            }
        }
        let subject = Subject::from(self.shared.client.new_inbox());
        match self.shared.client.subscribe(subject.clone()).await {
            Ok(subscriber) => {
                self.backoff = INITIAL_BACKOFF;
                self.inbox = Some((subject, subscriber));
                Some(())
            }
            Err(err) => {
                tracing::warn!(trigger = %self.spec.key, consumer = %self.consumer_name, error = %err, "cannot subscribe for pulls");
                self.fail().await
            }
        }
    }

    /// Asks for more messages when there is room enough: with nothing outstanding, waits for
    /// room for one at least. `Some(false)` when the pull failed (try again), `None` once the
    /// adapter is closed.
    async fn top_up(&mut self) -> Option<bool> {
        let room = self.read_ahead.room();
        let reserved = self.read_ahead.reserved();
        if reserved > 0 && room < self.top_up_at {
            return Some(true);
        }
        // Sized for the room there is now, so filling it does not grow it step by step.
        let mut fresh = Vec::with_capacity(room.clamp(1, MAX_PULL));
        if reserved == 0 {
            fresh.push(self.acquire().await?);
        }
        let ahead_left = self.read_ahead.left();
        while fresh.len() < ahead_left.min(MAX_PULL) {
            match Arc::clone(self.read_ahead.slots()).try_acquire_owned() {
                Ok(slot) => fresh.push(slot),
                Err(_) => break,
            }
        }
        if fresh.is_empty() {
            return Some(true);
        }
        let (Some(consumer), Some((subject, _))) = (&self.consumer, &self.inbox) else {
            return Some(false);
        };
        let request = pull::BatchConfig {
            batch: fresh.len(),
            expires: Some(PULL_EXPIRES),
            idle_heartbeat: HEARTBEAT,
            ..Default::default()
        };
        match consumer.request_batch(request, subject.clone()).await {
            Ok(()) => {
                self.read_ahead.reserve(fresh);
                self.last_heard = Instant::now();
                self.pulled_at = self.last_heard;
                Some(true)
            }
            Err(err) => {
                tracing::warn!(trigger = %self.spec.key, consumer = %self.consumer_name, error = %err, "pull failed");
                drop(fresh);
                self.fail().await?;
                Some(false)
            }
        }
    }

    /// A slot for one message, waiting for it; `None` once the adapter is closed. Called with
    /// nothing reserved, so the read-ahead has room (it is at least one).
    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            () = self.shared.closed.cancelled() => None,
            slot = Arc::clone(self.read_ahead.slots()).acquire_owned() => slot.ok(),
        }
    }

    /// Forgets the outstanding pulls (their slots are freed) and their reply subject, so a
    /// late message of theirs cannot arrive; the next call pulls again. What already waits in
    /// the backlog is still handed out, with its slot.
    fn start_over(&mut self) {
        self.inbox = None;
        self.read_ahead.start_over();
    }

    /// After a failure: forgets the pulls and the consumer, then waits the backoff (doubling
    /// it). `None` once the adapter is closed.
    async fn fail(&mut self) -> Option<()> {
        self.start_over();
        self.consumer = None;
        let period = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            () = self.shared.closed.cancelled() => None,
            () = tokio::time::sleep(period) => Some(()),
        }
    }
}

/// The unfilled part of an expired pull request, from its `Nats-Pending-Messages` header.
fn unfilled(message: &async_nats::Message) -> Option<usize> {
    message
        .headers
        .as_ref()?
        .get(PENDING_MESSAGES)?
        .as_str()
        .parse()
        .ok()
}

/// The trigger's consumer. One that was deleted under topiq (this puller had it, with ack
/// floor `had_floor`) is created again from just after that floor, so nothing the server
/// still stores for the trigger is skipped (what it acked since comes again), and the loss
/// is reported loudly: on an interest stream the server removes, with the consumer, the
/// messages nobody else still needs, and which those were cannot be known.
async fn get_consumer(
    shared: &Shared,
    spec: &SubscriptionSpec,
    (name, lane): (&str, u32),
    had_floor: Option<u64>,
) -> Result<jetstream::consumer::Consumer<pull::Config>> {
    let stream = shared
        .js
        .get_stream_no_info(shared.layout.topic_stream(&spec.key.topic))
        .await
        .map_err(broker("get stream"))?;
    if let Some(consumer) = existing_consumer(&stream, name, had_floor.is_some()).await? {
        return Ok(consumer);
    }
    let main = *name == Layout::main_consumer(&spec.key.trigger, lane);
    let deliver_policy = match had_floor {
        Some(floor) => {
            shared.report_lost_consumer(&spec.key, name);
            jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: floor + 1,
            }
        }
        None if main => jetstream::consumer::DeliverPolicy::New,
        None => jetstream::consumer::DeliverPolicy::All,
    };
    let subject = if main {
        shared.layout.lane_subject(&spec.key.topic, lane)
    } else {
        shared
            .layout
            .direct_subject(&spec.key.topic, &spec.key.trigger, lane)
    };
    let config = Shared::trigger_consumer_config(name.to_owned(), subject, spec, deliver_policy);
    stream
        .get_or_create_consumer(name, config)
        .await
        .map_err(broker("create consumer"))
}

/// The consumer `name` if the stream has it. One this puller `had` must be missing twice, a
/// second apart, to count as gone: a cluster catching up after an election can answer "not
/// found" for a moment.
async fn existing_consumer(
    stream: &jetstream::stream::Stream<()>,
    name: &str,
    had: bool,
) -> Result<Option<jetstream::consumer::Consumer<pull::Config>>> {
    for look in 0..if had { 2 } else { 1 } {
        if look > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match stream.consumer_info(name).await {
            Ok(_) => {
                return stream
                    .get_consumer(name)
                    .await
                    .map(Some)
                    .map_err(|err| Error::Broker {
                        operation: "get consumer",
                        source: err,
                    });
            }
            Err(err) if err.kind() != jetstream::context::ConsumerInfoErrorKind::NotFound => {
                return Err(broker("get consumer")(err));
            }
            Err(_) => {}
        }
    }
    Ok(None)
}

/// Turns a received message into a delivery; a message past its last attempt is
/// dead-lettered here instead.
async fn receive(
    shared: &Arc<Shared>,
    spec: &SubscriptionSpec,
    message: &mut async_nats::Message,
    permit: OwnedSemaphorePermit,
    leases: &Arc<Leases<Received>>,
    waited: Duration,
) -> Option<Result<Delivery>> {
    let decoded = match decode(shared, spec, message).await? {
        Ok(decoded) => decoded,
        Err(err) => return Some(Err(err)),
    };
    let attempt = decoded
        .metadata
        .attempt_base
        .saturating_add(decoded.delivered);
    let held = Held::new(
        spec,
        decoded.metadata,
        decoded.data,
        attempt,
        permit,
        &shared.closed,
    );
    let envelope = held.envelope();
    let received = leases.insert(|lease_key| Received {
        shared: Arc::clone(shared),
        held,
        ack: decoded.ack,
        payload: std::mem::take(&mut message.payload),
        stream_sequence: decoded.stream_sequence,
        leases: Arc::clone(leases),
        lease_key,
    });
    if received.settled_on_receipt().await {
        return None;
    }
    if !waited.is_zero() && !received.restart_server_lease(waited).await {
        return None;
    }
    let acker = JetStreamAcker { received };
    Some(Ok(Delivery::new(envelope, acker)))
}

/// What a received message carries, read once.
struct Decoded {
    /// Where its acknowledgements go.
    ack: AckSubject,
    /// The server's delivery count.
    delivered: u32,
    stream_sequence: u64,
    metadata: Metadata,
    data: Arc<serde_json::Value>,
}

/// Reads a received message; `None` for one topiq cannot read, which is terminated so it never
/// comes back.
async fn decode(
    shared: &Shared,
    spec: &SubscriptionSpec,
    message: &async_nats::Message,
) -> Option<Result<Decoded>> {
    let (Some(reply), Some(ack)) = (
        message.reply.as_deref().and_then(AckReply::parse),
        AckSubject::of(message),
    ) else {
        return Some(Err(broker("message info")(std::io::Error::other(format!(
            "a delivery's reply subject {:?} is not a JetStream ack subject",
            message.reply.as_deref().unwrap_or("(none)")
        )))));
    };
    let delivered = u32::try_from(reply.delivered).unwrap_or(u32::MAX);
    let stream_sequence = reply.stream_sequence;
    let metadata = match Metadata::from_headers(message.headers.as_ref(), reply.stored_at) {
        Ok(metadata) => metadata,
        Err(err) => {
            tracing::error!(trigger = %spec.key, error = %err, "terminating a message topiq cannot read");
            let _ = ack.send(&shared.client, AckKind::Term).await;
            return None;
        }
    };
    match codec::decode(&message.payload) {
        Ok(data) => Some(Ok(Decoded {
            ack,
            delivered,
            stream_sequence,
            metadata,
            data: Arc::new(data),
        })),
        Err(err) => {
            tracing::error!(trigger = %spec.key, id = %metadata.id, error = %err, "terminating a message whose payload is not JSON");
            let _ = ack.send(&shared.client, AckKind::Term).await;
            None
        }
    }
}

/// A received message, its lease, and what settling it needs.
struct Received {
    shared: Arc<Shared>,
    held: Held,
    /// Where its acknowledgements go.
    ack: AckSubject,
    /// Its data as stored, for a released copy.
    payload: Bytes,
    stream_sequence: u64,
    /// The subscription's live leases, which this one leaves when dropped.
    leases: Arc<Leases<Received>>,
    lease_key: LeaseKey,
}

impl Drop for Received {
    fn drop(&mut self) {
        self.leases.remove(self.lease_key);
    }
}

impl Received {
    /// Sends `kind` for this delivery, without waiting for the server.
    async fn send(&self, kind: AckKind) -> std::result::Result<(), async_nats::Error> {
        self.ack.send(&self.shared.client, kind).await
    }

    /// Sends `kind` for this delivery and waits for the server to take it.
    async fn confirm(&self, kind: AckKind) -> std::result::Result<(), async_nats::Error> {
        let timeout = self.shared.config.publish_timeout;
        self.ack.confirm(&self.shared.client, kind, timeout).await
    }

    /// Settles a message that must not reach a handler, and says whether it was one: past
    /// its topic's retention (dead-lettered as `expired`), or past its last attempt (the
    /// lease ran out on the last attempt and the server delivered it again: the watcher of
    /// the process that held it did not dead-letter it, because it was dropped or the
    /// process died).
    async fn settled_on_receipt(&self) -> bool {
        if self.held.metadata.is_expired() {
            self.dead_letter_past_retention(self.held.attempt - 1).await;
            return true;
        }
        if self.held.attempt > self.held.max_attempts {
            self.dead_letter_expired(self.held.attempt - 1).await;
            return true;
        }
        false
    }

    /// Dead-letters a message whose lease ran out after `attempts` attempts; on failure the
    /// server delivers it again, so the error is only logged.
    async fn dead_letter_expired(&self, attempts: u32) {
        let failure = self.held.lease_expired(attempts);
        if let Err(err) = self.move_to_dlq(failure, attempts).await {
            tracing::error!(trigger = %self.held.key, error = %err, "cannot dead-letter an expired message; it is delivered again");
        }
    }

    /// For a message that waited up to `waited` in the subscription while nobody asked (the
    /// server's lease ran meanwhile, the client's starts now): restarts the server's lease
    /// (`+WPI`) so it ends after the client's, and hands the message out. One that waited
    /// half its lease or more may already have gone to another consumer, which a `+WPI` or a
    /// released copy cannot tell: it is not handed out, so no two handlers ever hold it at
    /// once, and the server delivers it again (counting the attempt this consumer held
    /// without asking for it). False when it was not handed out.
    async fn restart_server_lease(&self, waited: Duration) -> bool {
        if waited < self.held.visibility_timeout / 2 {
            match self.send(AckKind::Progress).await {
                Ok(()) => return true,
                Err(err) => {
                    tracing::warn!(trigger = %self.held.key, id = %self.held.metadata.id, error = %err, "cannot restart the server's lease of a message that waited; left for the server to deliver again");
                    lease::lock(&self.held.lease).claim();
                    return false;
                }
            }
        }
        lease::lock(&self.held.lease).claim();
        if self.held.ordered && waited < self.held.visibility_timeout {
            // One in flight per partition: nobody else can hold it before the server's
            // `ack_wait`, and waiting that out would stall its partition.
            let _ = self.send(AckKind::Nak(None)).await;
            tracing::warn!(trigger = %self.held.key, id = %self.held.metadata.id, waited = ?waited, "a message of an ordered trigger waited in the consumer past half its lease while no handler asked; given back first");
            return false;
        }
        tracing::warn!(trigger = %self.held.key, id = %self.held.metadata.id, waited = ?waited, "a message waited in the consumer past half its lease while no handler asked; left for the server to deliver again");
        false
    }

    /// Gives the message back without spending an attempt: a copy with the same attempt to
    /// the trigger's own subject (confirmed), then the original acked. On an ordered trigger
    /// a copy would go behind the later messages of its lane: the message is nacked instead
    /// (delivered again first, counted as an attempt).
    async fn release(&self) -> Result<()> {
        if self.held.ordered {
            return self
                .send(AckKind::Nak(None))
                .await
                .map_err(|err| Error::Broker {
                    operation: "nak (release on an ordered trigger)",
                    source: err,
                });
        }
        release_copy(
            &self.shared,
            &self.held.key,
            &self.held.metadata,
            self.payload.clone(),
            self.stream_sequence,
            self.held.attempt,
        )
        .await?;
        self.confirm(AckKind::Ack)
            .await
            .map_err(|err| Error::Broker {
                operation: "ack after release",
                source: err,
            })
    }

    /// Dead-letters a message its trigger reached after the topic's retention ran out
    /// (`attempts` attempts made); on failure the server delivers it again.
    async fn dead_letter_past_retention(&self, attempts: u32) {
        let topic = self.shared.topic(&self.held.key.topic);
        let retention = topic.ok().and_then(|topic| topic.retention);
        if let Err(err) = self
            .move_to_dlq(Failure::expired(retention, attempts), attempts)
            .await
        {
            tracing::error!(trigger = %self.held.key, error = %err, "cannot dead-letter a message past its retention; it is delivered again");
        }
    }

    /// Publishes the message to the trigger's `dead_letter_topic` (when it has one), the DLQ
    /// record (confirmed), then terminates the message (confirmed). The record's dedup id is
    /// the same for every delivery of one stored message, so a record written twice (by a
    /// lease watcher and after a redelivery) is stored once.
    async fn move_to_dlq(&self, failure: Failure, attempts: u32) -> Result<()> {
        let record = self.held.dead_letter(failure, attempts);
        if let Some(topic) = &self.held.dead_letter_topic
            && let Err(err) = self.shared.publish_one(topic, record.notification()).await
        {
            // The record is still written, so nothing is lost; only the notification is.
            tracing::error!(trigger = %self.held.key, id = %record.id, dead_letter_topic = %topic, error = %err, "cannot publish to the dead-letter topic; the message is in the trigger's DLQ");
        }
        let payload = serde_json::to_vec(&record).map_err(broker("encode DLQ record"))?;
        let dedup = format!(
            "dlq:{}:{}:{}",
            self.held.key.trigger, self.held.metadata.id, self.stream_sequence
        );
        self.shared
            .publish_confirmed(
                self.shared
                    .layout
                    .dlq_subject(&self.held.key.topic, &self.held.key.trigger),
                self.held.metadata.headers(&dedup, Stamp::Copy),
                payload.into(),
            )
            .await?;
        self.confirm(AckKind::Term)
            .await
            .map_err(|err| Error::Broker {
                operation: "terminate after dead-lettering",
                source: err,
            })
    }
}

impl Leased for Received {
    fn lease(&self) -> &Mutex<Lease> {
        &self.held.lease
    }

    /// On the last attempt, a lease that runs out dead-letters the message at once; before
    /// it, the server delivers the message again after `ack_wait`. (A dropped delivery, with
    /// no `Received` left, is delivered again and dead-lettered then.)
    fn expired(self: Arc<Self>) {
        if self.held.attempt < self.held.max_attempts
            || !lease::lock(&self.held.lease).claim_expired()
        {
            return;
        }
        tokio::spawn(async move { self.dead_letter_expired(self.held.attempt).await });
    }
}

/// Settles one JetStream delivery.
struct JetStreamAcker {
    received: Arc<Received>,
}

impl JetStreamAcker {
    async fn settle(self, settlement: Settlement) -> Result<()> {
        self.received.held.claim()?;
        let received = &self.received;
        match settlement {
            Settlement::Nack(_) if received.held.attempt >= received.held.max_attempts => {
                let failure = Failure::nacked_on_last_attempt(
                    received.held.attempt,
                    received.held.max_attempts,
                );
                received.move_to_dlq(failure, received.held.attempt).await
            }
            Settlement::Nack(delay) => {
                let kind = if delay.is_zero() {
                    AckKind::Nak(None)
                } else {
                    // The server's delay is an int64 of nanoseconds; the runtime caps retry
                    // delays at 30 days, well inside it.
                    AckKind::Nak(Some(delay.min(Duration::from_secs(30 * 24 * 3600))))
                };
                received.send(kind).await.map_err(|err| Error::Broker {
                    operation: "nak",
                    source: err,
                })
            }
            Settlement::DeadLetter(failure) => {
                received.move_to_dlq(failure, received.held.attempt).await
            }
            Settlement::Release => received.release().await,
        }
    }
}

/// Publishes a copy of a received message whose next delivery is attempt `attempt` again, to
/// the trigger's own subject (confirmed); the caller then acks the original.
async fn release_copy(
    shared: &Shared,
    key: &SubscriptionKey,
    metadata: &Metadata,
    payload: bytes::Bytes,
    stream_sequence: u64,
    attempt: u32,
) -> Result<()> {
    let mut metadata = metadata.clone();
    metadata.attempt_base = attempt.saturating_sub(1);
    let dedup = format!("release:{}:{stream_sequence}:{attempt}", metadata.id);
    let lane = metadata.lane;
    shared
        .ensure_direct_consumer(&key.topic, &key.trigger, lane)
        .await?;
    shared
        .publish_confirmed(
            shared.layout.direct_subject(&key.topic, &key.trigger, lane),
            metadata.headers(&dedup, Stamp::Copy),
            payload,
        )
        .await
        .map(|_| ())
}

/// Releases a message the subscription received but never handed out (it was dropped): the
/// attempt it would have been is not spent, except on an ordered trigger, where it is nacked
/// so that it stays first.
async fn release_unhanded(shared: &Shared, spec: &SubscriptionSpec, message: async_nats::Message) {
    let key = &spec.key;
    let Some(ack) = AckSubject::of(&message) else {
        tracing::warn!(trigger = %key, "a message that was never handed out has no reply subject to give it back with; the server delivers it again");
        return;
    };
    if spec.ordered {
        if let Err(err) = ack.send(&shared.client, AckKind::Nak(None)).await {
            tracing::warn!(trigger = %key, error = %err, "cannot give back a message that was never handed out; the server delivers it again");
        }
        return;
    }
    let Some(reply) = message.reply.as_deref().and_then(AckReply::parse) else {
        return;
    };
    let (delivered, sequence) = (reply.delivered, reply.stream_sequence);
    let Ok(metadata) = Metadata::from_headers(message.headers.as_ref(), reply.stored_at) else {
        return;
    };
    let attempt = metadata
        .attempt_base
        .saturating_add(u32::try_from(delivered).unwrap_or(u32::MAX));
    let released = release_copy(
        shared,
        key,
        &metadata,
        message.payload.clone(),
        sequence,
        attempt,
    )
    .await;
    let acked = match released {
        Ok(()) => {
            let timeout = shared.config.publish_timeout;
            ack.confirm(&shared.client, AckKind::Ack, timeout)
                .await
                .map_err(|err| err.to_string())
        }
        Err(err) => Err(err.to_string()),
    };
    if let Err(err) = acked {
        tracing::warn!(trigger = %key, id = %metadata.id, error = %err, "cannot release a message that was never handed out; the server delivers it again");
    }
}

impl Drop for Puller {
    /// Releases what the subscription received but never handed out (at shutdown, or when
    /// the trigger stops or pauses): without it, the server would deliver it again after
    /// `ack_wait` and count an attempt no handler made. Requests still open may deliver for
    /// up to [`PULL_EXPIRES`] more (a paused trigger's topic keeps getting messages), so the
    /// reply subscription is kept that long and what arrives is released too, unless the
    /// adapter closes first (then the server delivers it again after `ack_wait`).
    fn drop(&mut self) {
        let buffered = self.read_ahead.take_waiting();
        let inbox = self.inbox.take().map(|(_, subscriber)| subscriber);
        let open_until = (self.read_ahead.reserved() > 0)
            .then(|| self.pulled_at + PULL_EXPIRES + Duration::from_millis(500));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if buffered.is_empty() && inbox.is_none() {
            return;
        }
        let (shared, spec) = (Arc::clone(&self.shared), self.spec.clone());
        let releases = shared.releases.clone();
        releases.spawn_on(
            async move {
                for message in buffered {
                    release_unhanded(&shared, &spec, message).await;
                }
                if let Some(subscriber) = inbox {
                    drain_open_pulls(&shared, &spec, subscriber, open_until).await;
                }
            },
            &runtime,
        );
    }
}

/// Releases what arrives on a dropped puller's reply `subscriber` until its last request
/// expired (`open_until`; at once when none was open) or the adapter closes.
async fn drain_open_pulls(
    shared: &Shared,
    spec: &SubscriptionSpec,
    mut subscriber: async_nats::Subscriber,
    open_until: Option<Instant>,
) {
    let deadline = open_until.unwrap_or_else(Instant::now);
    loop {
        let next = if Instant::now() >= deadline || shared.releases.is_closed() {
            subscriber.next().now_or_never().flatten()
        } else {
            tokio::select! {
                next = subscriber.next() => next,
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        };
        let Some(message) = next else { return };
        if is_delivery(&message) {
            release_unhanded(shared, spec, message).await;
        }
    }
}

/// How a delivery is settled, other than by a plain ack.
enum Settlement {
    Nack(Duration),
    DeadLetter(Failure),
    Release,
}

impl Acker for JetStreamAcker {
    fn ack(self) -> Settling<'static> {
        // The hot path has a future of its own, a fraction of the size of `settle`'s.
        Settling::pending(async move {
            self.received.held.claim()?;
            let received = &self.received;
            received
                .ack
                .ack(&received.shared.client)
                .await
                .map_err(|err| Error::Broker {
                    operation: "ack",
                    source: err,
                })
        })
    }

    fn nack(self, delay: Duration) -> Settling<'static> {
        Settling::pending(self.settle(Settlement::Nack(delay)))
    }

    fn dead_letter(self, failure: Failure) -> Settling<'static> {
        Settling::pending(self.settle(Settlement::DeadLetter(failure)))
    }

    fn release(self) -> Settling<'static> {
        Settling::pending(self.settle(Settlement::Release))
    }

    fn extend_lease(&self) -> Settling<'_> {
        Settling::pending(async move {
            self.received.shared.ensure_open()?;
            // The local deadline moves first, so the lease watcher cannot free the slot while
            // the server is being told.
            self.received.held.extend()?;
            self.received
                .send(AckKind::Progress)
                .await
                .map_err(|err| Error::Broker {
                    operation: "extend lease",
                    source: err,
                })
        })
    }
}
