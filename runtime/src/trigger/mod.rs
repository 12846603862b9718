//! Running a trigger: pull deliveries, filter by condition, call the function with its timeout
//! while extending the lease, then settle: ack, retry after the backoff, or dead-letter.
//!
//! The layers around a handler call, outermost first:
//! 1. concurrency: `concurrency` workers per trigger, each pulling only when idle, so nothing
//!    waits in our hands while its lease runs (and no task is spawned per message);
//! 2. condition: false (or an error) acknowledges without a call;
//! 3. shutdown: past the grace period the call is abandoned and the message released, without
//!    spending an attempt;
//! 4. lease: extended every half visibility timeout while the call runs;
//! 5. timeout and panic capture: both become retryable failures;
//! 6. settlement: see `Trigger::settle_failure`.
//!
//! One file per layer: the condition is [`Trigger::admits`] here, shutdown, lease, timeout and
//! panics are `supervise.rs`, settlement is `settle.rs`; what became of each delivery is an
//! [`Outcome`] (`outcome.rs`, beside the trigger: its spans record it too).

mod lanes;
mod settle;
mod supervise;

use crate::outcome::Outcome;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use topiq_adapter::{
    ConsumeOptions, Delivery, Envelope, SharedAdapter, SubscriptionKey, TriggerName,
};

use crate::config::TriggerSettings;
use crate::function::{Function, HandlerError, Message};
use crate::runs::{self, RunCancel, Runs};
use crate::stats::TriggerCounters;
use crate::telemetry;
pub(crate) use lanes::LaneOrder;
use lanes::Lanes;
use supervise::{CallFailure, Limits, supervise};
use topiq_runs::RunKey;

/// One trigger of a running module.
pub(crate) struct Trigger {
    pub(crate) settings: TriggerSettings,
    pub(crate) key: SubscriptionKey,
    pub(crate) function: Function,
    pub(crate) adapter: SharedAdapter,
    pub(crate) counters: TriggerCounters,
    /// True while the trigger holds its subscription and takes deliveries (readiness).
    pub(crate) subscribed: AtomicBool,
    /// `messaging.system` for the process spans.
    pub(crate) messaging_system: &'static str,
    /// Where its runs are recorded (`None` when the trigger opted out).
    pub(crate) runs: Option<Arc<Runs>>,
    /// The paused triggers: while its name is in the set, it holds no subscription.
    pub(crate) pauses: watch::Receiver<BTreeSet<TriggerName>>,
    /// How many lanes (priority levels, or partitions) its topic has: it consumes each.
    pub(crate) lanes: u32,
    /// Which lane it takes from first.
    pub(crate) lane_order: LaneOrder,
    /// A handler slot is held until its delivery is settled, not only until the handler
    /// returns: on a topic with priority levels, on an adapter whose read-ahead counts
    /// unsettled deliveries (RabbitMQ). Otherwise, while a higher lane's deliveries wait for
    /// their runs to be stored, its next messages cannot come, and the freed slots take a
    /// lower lane's.
    pub(crate) settles_in_slot: bool,
}

/// The next delivery of `lanes`; never, without them.
async fn next_of(lanes: &mut Option<Lanes>) -> Option<topiq_adapter::Result<Delivery>> {
    match lanes {
        Some(lanes) => lanes.next().await,
        None => std::future::pending().await,
    }
}

/// What `subscribing` ends with; never, when nothing is subscribing.
async fn finish(subscribing: &mut Option<BoxFuture<'_, Option<Lanes>>>) -> Option<Lanes> {
    match subscribing {
        Some(subscribing) => subscribing.await,
        None => std::future::pending().await,
    }
}

/// A running call: one delivery's, or one batch's.
type Call<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What a trigger's loop starts calls with: its slots, its stop and abort signals, its
/// running calls and its concurrency.
struct Calls<'a, 'r> {
    slots: &'a Slots,
    /// Once it fires, no more deliveries are pulled in the pass.
    stop: &'r CancellationToken,
    abort: &'a CancellationToken,
    running: &'r FuturesUnordered<Call<'a>>,
    limit: usize,
}

/// What became of a pull.
enum Pulled {
    /// Calls started (or none: every slot was busy).
    Started,
    /// The subscription ended.
    Ended,
    /// The subscription failed: pulling waits a second.
    Failed,
}

/// How many deliveries of a recording trigger may wait for their run's record to be stored,
/// beyond those its handlers hold.
const SETTLING_AHEAD: u32 = 4_096;

/// The trigger's handler slots: `concurrency` of them, each held from a pull until the
/// handler returns (the settlement that follows holds none, unless
/// [`Trigger::settles_in_slot`]).
#[derive(Default)]
struct Slots {
    busy: AtomicUsize,
    freed: Notify,
}

impl Slots {
    fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    fn take(&self) -> Slot<'_> {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Slot { slots: self }
    }
}

/// One held handler slot; freed when dropped.
struct Slot<'a> {
    slots: &'a Slots,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.busy.fetch_sub(1, Ordering::Relaxed);
        self.slots.freed.notify_one();
    }
}

/// Signals shared by every trigger of a module.
#[derive(Clone)]
pub(crate) struct Lifecycle {
    /// Stop pulling new deliveries.
    pub(crate) stop: CancellationToken,
    /// The grace period is over: abandon running calls and release their messages.
    pub(crate) abort: CancellationToken,
    /// Every trigger's loop (which runs that trigger's calls).
    pub(crate) calls: TaskTracker,
}

impl Trigger {
    /// Subscribes, then pulls a delivery (or a batch) whenever fewer than `concurrency` calls
    /// run, until `lifecycle.stop`; then lets the running calls finish (or be abandoned when
    /// `lifecycle.abort` fires). While the trigger is paused it holds no subscription (what
    /// the subscription had buffered goes back to the broker without spending an attempt)
    /// and its running calls go on.
    pub(crate) async fn run(self: Arc<Self>, lifecycle: Lifecycle) {
        let mut pauses = self.pauses.clone();
        let limit = self.settings.concurrency as usize;
        let abort = &lifecycle.abort;
        let slots = Slots::default();
        let mut running: FuturesUnordered<Call<'_>> = FuturesUnordered::new();
        let mut subscription: Option<Lanes> = None;
        let mut subscribing: Option<BoxFuture<'_, Option<Lanes>>> = None;
        // After a subscription error, pulling waits a second while running calls go on.
        let resume = sleep(Duration::ZERO);
        tokio::pin!(resume);
        let mut waiting = false;
        loop {
            if pauses.borrow_and_update().contains(&self.settings.name) {
                subscribing = None;
                self.let_go(subscription.take()).await;
            } else if subscription.is_none() && subscribing.is_none() {
                subscribing = Some(Box::pin(self.subscribe(&lifecycle.stop)));
            }
            let pulling = subscription.is_some() && !waiting && slots.busy() < limit;
            tokio::select! {
                biased;
                Some(()) = running.next(), if !running.is_empty() => {}
                () = lifecycle.stop.cancelled() => break,
                Ok(()) = pauses.changed() => {}
                subscribed = finish(&mut subscribing), if subscribing.is_some() => {
                    subscribing = None;
                    let Some(subscribed) = subscribed else { break };
                    subscription = Some(subscribed);
                    self.subscribed.store(true, Ordering::Relaxed);
                }
                () = &mut resume, if waiting => waiting = false,
                // A handler returned (or, when settlements hold slots, a settlement ended):
                // its slot is free again.
                () = slots.freed.notified(), if slots.busy() >= limit => {}
                next = next_of(&mut subscription), if pulling => {
                    let stop = &lifecycle.stop;
                    let calls = Calls { slots: &slots, stop, abort, running: &running, limit };
                    match self.start_calls(next, &mut subscription, calls) {
                        Pulled::Started => {}
                        Pulled::Ended => break,
                        Pulled::Failed => {
                            waiting = true;
                            resume.as_mut().reset(Instant::now() + Duration::from_secs(1));
                        }
                    }
                }
            }
        }
        drop(subscribing);
        self.subscribed.store(false, Ordering::Relaxed);
        if let Some(lanes) = subscription {
            lanes.give_back().await;
        }
        while running.next().await.is_some() {}
    }

    /// Starts a call for `next`, then one for each delivery already waiting behind it, while
    /// a handler slot is free (and at most `limit` in one pass of the loop): a trigger taking
    /// a stream of messages makes one pass of its `select!` for many of them.
    fn start_calls<'a>(
        &'a self,
        next: Option<topiq_adapter::Result<Delivery>>,
        subscription: &mut Option<Lanes>,
        calls: Calls<'a, '_>,
    ) -> Pulled {
        let mut next = next;
        let mut started = 0;
        loop {
            match next {
                None => return Pulled::Ended,
                Some(Err(err)) => {
                    tracing::error!(trigger = %self.key, error = %err, "the subscription failed; pulling again in 1s");
                    return Pulled::Failed;
                }
                Some(Ok(delivery)) => self.start_call(delivery, subscription, &calls),
            }
            started += 1;
            let stopping = calls.stop.is_cancelled();
            if started >= calls.limit || calls.slots.busy() >= calls.limit || stopping {
                return Pulled::Started;
            }
            match next_of(subscription).now_or_never() {
                Some(more) => next = more,
                None => return Pulled::Started,
            }
        }
    }

    /// Starts the call of `delivery` (with the deliveries that fill its batch) in a slot.
    ///
    /// A call done at its first poll (a handler that does not wait, settled by an adapter at
    /// once) ends here: no node in `running`, no wake-up, no pass of the loop. One that waits
    /// goes into `running`, which polls it again at once with a waker of its own.
    fn start_call<'a>(
        &'a self,
        delivery: Delivery,
        subscription: &mut Option<Lanes>,
        calls: &Calls<'a, '_>,
    ) {
        let slot = calls.slots.take();
        let mut call: Call<'a> = if self.settings.batch_size > 1 {
            let batch = self.fill_batch(delivery, subscription);
            Box::pin(self.handle_batch(batch, calls.abort, slot))
        } else {
            Box::pin(self.handle(delivery, calls.abort, slot))
        };
        if call.as_mut().now_or_never().is_none() {
            calls.running.push(call);
        }
    }

    /// Lets go of the subscriptions of a trigger just paused.
    async fn let_go(&self, subscription: Option<Lanes>) {
        if let Some(lanes) = subscription {
            self.subscribed.store(false, Ordering::Relaxed);
            lanes.give_back().await;
            tracing::info!(trigger = %self.key, "paused: takes no new messages until resumed");
        }
    }

    /// Subscribes to every lane of the trigger's topic (one, without priority levels),
    /// trying again with a growing pause until `stop`.
    async fn subscribe(&self, stop: &CancellationToken) -> Option<Lanes> {
        let prefetch = self.prefetch();
        let mut wait = Duration::from_millis(100);
        loop {
            match self.consume_lanes(prefetch).await {
                Ok(lanes) => return Some(lanes),
                Err(err) => {
                    tracing::error!(trigger = %self.key, error = %err, retry_in = ?wait, "cannot subscribe");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                () = sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }

    /// How many deliveries each of its subscriptions may hold unsettled. A recording trigger
    /// settles once its run's event is stored: up to SETTLING_AHEAD deliveries may wait for
    /// that while the handlers go on with the next ones, so one store write carries many
    /// settlements (its latency is paid once for all of them).
    fn prefetch(&self) -> u32 {
        let handlers = self.handlers();
        if self.runs.is_some() {
            handlers + SETTLING_AHEAD
        } else {
            handlers
        }
    }

    /// How many deliveries its handlers take at once.
    fn handlers(&self) -> u32 {
        self.settings.concurrency * self.settings.batch_size
    }

    /// One subscription per lane, each with `prefetch`, the highest lane first (so its
    /// messages are on their way before a lower lane's). With lanes, each reads ahead only
    /// what its handlers take at once: what one instance holds unhandled of a lane, the
    /// others cannot take, and would take from a lower lane instead.
    async fn consume_lanes(&self, prefetch: u32) -> topiq_adapter::Result<Lanes> {
        let mut subscriptions = Vec::with_capacity(self.lanes as usize);
        for lane in (0..self.lanes.max(1)).rev() {
            let mut options = ConsumeOptions::with_prefetch(prefetch).on_lane(lane);
            if self.settings.ordering_key.is_some() {
                // A partition hands out one message at a time anyway.
                options = options.reading_ahead(1);
            } else if self.lanes > 1 {
                options = options.reading_ahead(self.handlers());
            }
            subscriptions.push(self.adapter.consume(&self.key, options).await?);
        }
        subscriptions.reverse();
        // A delivery kept waiting a quarter of its lease still has three quarters when its
        // handler starts, and the first extension comes after half of it.
        Ok(Lanes::new(
            subscriptions,
            self.settings.visibility_timeout / 4,
            self.lane_order,
        ))
    }

    /// Adds to `first` the deliveries that are ready now, up to `batch_size`.
    fn fill_batch(&self, first: Delivery, subscription: &mut Option<Lanes>) -> Vec<Delivery> {
        let mut batch = vec![first];
        while batch.len() < self.settings.batch_size as usize {
            match subscription.as_mut().and_then(Lanes::next_ready) {
                Some(delivery) => batch.push(delivery),
                None => break,
            }
        }
        batch
    }

    /// The condition layer: counts the delivery and tells whether the condition lets it
    /// through; one it does not is settled as filtered (`settle_filtered`).
    fn admits(&self, delivery: &Delivery) -> bool {
        self.counters.delivered();
        self.passes_condition(delivery)
    }

    /// Acknowledges a delivery its condition filtered out, recorded as filtered.
    async fn settle_filtered(&self, delivery: Delivery) {
        self.counters.filtered();
        if let Some(runs) = &self.runs {
            let envelope = delivery.envelope();
            let change = topiq_runs::Change::Filtered(runs::origin(envelope));
            let filtered = runs::event(&self.settings.name, envelope, change);
            if !runs.recorder().record_stored([filtered]).await {
                // Not stored before shutdown: delivered again, filtered again.
                return;
            }
        }
        self.ack(delivery).await;
    }

    /// An ordered trigger's key of `delivery`, checked again as it is taken: one whose key
    /// fails cannot be put in order, and is dead-lettered with the reason.
    fn key_of(&self, delivery: &Delivery) -> Result<(), String> {
        let Some(key) = &self.settings.ordering_key else {
            return Ok(());
        };
        let envelope = delivery.envelope();
        let idempotency_key = envelope.idempotency_key.as_deref();
        key.evaluate(&envelope.topic, &envelope.data, idempotency_key)
            .map(|_| ())
    }

    fn passes_condition(&self, delivery: &Delivery) -> bool {
        let Some(condition) = &self.settings.condition else {
            return true;
        };
        match condition.evaluate(delivery.envelope()) {
            Ok(passes) => passes,
            Err(err) => {
                tracing::warn!(
                    trigger = %self.key,
                    id = %delivery.envelope().id,
                    condition = condition.source(),
                    error = %err,
                    "the condition failed; treated as false"
                );
                false
            }
        }
    }

    /// Handles one delivery in its process span (child of the publisher's), which records
    /// the outcome.
    ///
    /// This and the functions it awaits on every message are `fn`s returning an `async move`
    /// block rather than `async fn`s: an `async fn` keeps its arguments in its future twice
    /// (as passed, and moved into the body), and a message's future is allocated and moved
    /// for every message.
    fn handle<'a>(
        &'a self,
        delivery: Delivery,
        abort: &'a CancellationToken,
        slot: Slot<'a>,
    ) -> impl Future<Output = ()> + Send + 'a {
        let span = telemetry::process_span(
            self.messaging_system,
            delivery.envelope(),
            &self.settings.name,
        );
        telemetry::in_span(
            span,
            self.handle_in_span(delivery, abort, slot),
            telemetry::record_outcome,
        )
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    fn handle_in_span<'a>(
        &'a self,
        delivery: Delivery,
        abort: &'a CancellationToken,
        slot: Slot<'a>,
    ) -> impl Future<Output = Outcome> + Send + 'a {
        async move {
            // The paths off the common one are boxed: a message's future (allocated and moved
            // for each message) is only as large as the common path needs.
            if !self.admits(&delivery) {
                Box::pin(self.settle_filtered(delivery)).await;
                return Outcome::Filtered;
            }
            if let Err(reason) = self.key_of(&delivery) {
                // An attempt of its run, which the key ended before any call.
                return Box::pin(async move {
                    self.record_start(std::slice::from_ref(&delivery)).await;
                    self.settle_failure(delivery, CallFailure::OrderingKey(reason))
                        .await
                })
                .await;
            }
            let Function::Single(handler) = &self.function else {
                return Outcome::Released;
            };
            let running = self
                .runs
                .as_ref()
                .map(|runs| runs.cancels().start(self.run_key(&delivery)));
            let cancel = running.as_ref().map(|running| running.signal().clone());
            if cancel.as_ref().is_some_and(RunCancel::is_cancelled) {
                drop(running);
                Box::pin(self.settle_cancelled(delivery)).await;
                return Outcome::Cancelled;
            }
            self.record_start(std::slice::from_ref(&delivery)).await;
            let message = Message::new(delivery.envelope().clone(), self.settings.name.clone())
                .recorded(self.runs.clone(), cancel.clone());
            let call = handler.call(message);
            let deliveries = std::slice::from_ref(&delivery);
            let result = self.call(call, deliveries, abort, cancel.as_ref()).await;
            drop(running);
            let _slot = self.after_call(slot);
            match result {
                None => {
                    Box::pin(self.release(delivery)).await;
                    Outcome::Released
                }
                Some(Err(CallFailure::Cancelled)) => {
                    Box::pin(self.settle_cancelled(delivery)).await;
                    Outcome::Cancelled
                }
                Some(Ok(result)) => {
                    self.succeed(delivery, result).await;
                    Outcome::Succeeded
                }
                Some(Err(failure)) => Box::pin(self.settle_failure(delivery, failure)).await,
            }
        }
    }

    /// A handler's slot once its call returned: held through the settlement that follows
    /// when [`settles_in_slot`](Self::settles_in_slot), freed at once otherwise.
    fn after_call<'a>(&self, slot: Slot<'a>) -> Option<Slot<'a>> {
        self.settles_in_slot.then_some(slot)
    }

    /// Handles a batch in one process span linked to each message's publisher span.
    async fn handle_batch(&self, batch: Vec<Delivery>, abort: &CancellationToken, slot: Slot<'_>) {
        let envelopes: Vec<&Envelope> = batch.iter().map(Delivery::envelope).collect();
        let span = telemetry::batch_process_span(
            self.messaging_system,
            &self.key.topic,
            &self.settings.name,
            &envelopes,
        );
        drop(envelopes);
        let handled = self.handle_batch_in_span(batch, abort, slot);
        telemetry::in_span(span, handled, telemetry::record_outcome).await;
    }

    async fn handle_batch_in_span(
        &self,
        batch: Vec<Delivery>,
        abort: &CancellationToken,
        slot: Slot<'_>,
    ) -> Outcome {
        let mut passing = Vec::with_capacity(batch.len());
        for delivery in batch {
            if !self.admits(&delivery) {
                self.settle_filtered(delivery).await;
                continue;
            }
            if self.is_cancelled(&delivery) {
                self.settle_cancelled(delivery).await;
            } else {
                passing.push(delivery);
            }
        }
        if passing.is_empty() {
            return Outcome::Filtered;
        }
        let Function::Batch(handler) = &self.function else {
            return Outcome::Released;
        };
        self.record_start(&passing).await;
        let messages = passing
            .iter()
            .map(|delivery| Message::new(delivery.envelope().clone(), self.settings.name.clone()))
            .collect();
        let call = handler.call(messages).map(Ok).boxed();
        let result = self.call(call, &passing, abort, None).await;
        let _slot = self.after_call(slot);
        match result {
            None => {
                for delivery in passing {
                    self.release(delivery).await;
                }
                Outcome::Released
            }
            Some(Ok(results)) if results.len() == passing.len() => {
                self.settle_batch(passing, results).await
            }
            Some(Ok(results)) => {
                let error = HandlerError::retryable(format!(
                    "the batch function returned {} results for {} messages",
                    results.len(),
                    passing.len()
                ));
                self.fail_batch(passing, error).await
            }
            Some(Err(failure)) => self.fail_batch(passing, failure.into_batch_error()).await,
        }
    }

    /// Settles each message of a batch by its own result.
    async fn settle_batch(
        &self,
        batch: Vec<Delivery>,
        results: Vec<Result<(), HandlerError>>,
    ) -> Outcome {
        let total = batch.len();
        let mut failed = 0;
        for (delivery, result) in batch.into_iter().zip(results) {
            match result {
                Ok(()) => self.succeed(delivery, None).await,
                Err(err) => {
                    failed += 1;
                    self.settle_failure(delivery, CallFailure::Handler(err))
                        .await;
                }
            }
        }
        Outcome::of_batch(failed, total)
    }

    /// Settles every message of a batch with the same failure.
    async fn fail_batch(&self, batch: Vec<Delivery>, error: HandlerError) -> Outcome {
        for delivery in batch {
            self.settle_failure(delivery, CallFailure::Handler(error.clone()))
                .await;
        }
        Outcome::Failed
    }

    /// Runs `call` under the supervision layer, extending the leases of `deliveries`, and
    /// counts its handler time; `None` when the shutdown grace period ran out first.
    async fn call<T: Send + 'static>(
        &self,
        call: BoxFuture<'static, Result<T, HandlerError>>,
        deliveries: &[Delivery],
        abort: &CancellationToken,
        cancel: Option<&RunCancel>,
    ) -> Option<Result<T, CallFailure>> {
        let limits = Limits {
            timeout: self.settings.timeout,
            extend_every: self.settings.visibility_timeout / 2,
        };
        let started = Instant::now();
        let result = supervise(call, limits, abort, cancel, || {
            self.extend_leases(deliveries)
        })
        .await;
        if result.is_some() {
            self.counters.handler_time(started.elapsed());
        }
        result
    }

    /// True when the run of `delivery` on this trigger was cancelled.
    fn is_cancelled(&self, delivery: &Delivery) -> bool {
        self.runs
            .as_ref()
            .is_some_and(|runs| runs.cancels().is_cancelled(&self.run_key(delivery)))
    }

    /// The run of `delivery` on this trigger.
    fn run_key(&self, delivery: &Delivery) -> RunKey {
        RunKey::new(delivery.envelope().id.clone(), self.settings.name.clone())
    }

    /// Records the start of an attempt of each of `deliveries` (not waited for: its end is).
    async fn record_start(&self, deliveries: &[Delivery]) {
        let Some(runs) = &self.runs else {
            return;
        };
        let traceparent = telemetry::current_traceparent();
        let started = deliveries.iter().map(|delivery| {
            runs.started(
                &self.settings.name,
                delivery.envelope(),
                traceparent.clone(),
            )
        });
        runs.recorder().record(started).await;
    }

    async fn extend_leases(&self, deliveries: &[Delivery]) {
        for delivery in deliveries {
            if let Err(err) = delivery.extend_lease().await {
                tracing::warn!(trigger = %self.key, id = %delivery.envelope().id, error = %err, "cannot extend the lease");
            }
        }
    }
}
