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
//! 6. settlement: see [`settle_failure`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures::future::Either;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use topiq_adapter::{
    ConsumeOptions, Delivery, Envelope, Failure, FailureKind, SharedAdapter, Subscription,
    SubscriptionKey, Timestamp,
};
use tracing::Instrument;

use crate::config::TriggerSettings;
use crate::function::{Function, HandlerError, Message};
use crate::stats::TriggerCounters;
use crate::telemetry;

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

/// Why a call did not produce a result.
enum CallFailure {
    Handler(HandlerError),
    Timeout(Duration),
    Panicked(String),
}

impl CallFailure {
    fn retryable(&self) -> bool {
        match self {
            CallFailure::Handler(err) => err.is_retryable(),
            CallFailure::Timeout(_) | CallFailure::Panicked(_) => true,
        }
    }

    fn into_failure(self) -> Failure {
        match self {
            CallFailure::Handler(err) if !err.is_retryable() => {
                Failure::new(FailureKind::NonRetryable, err.message())
            }
            CallFailure::Handler(err) => Failure::new(FailureKind::RetriesExhausted, err.message()),
            CallFailure::Timeout(limit) => Failure::new(
                FailureKind::Timeout,
                format!("the handler did not finish within its timeout of {limit:?}"),
            ),
            CallFailure::Panicked(message) => Failure::new(
                FailureKind::Panicked,
                format!("the handler panicked: {message}"),
            ),
        }
    }

    fn requested_delay(&self) -> Option<Duration> {
        match self {
            CallFailure::Handler(err) => err.requested_delay(),
            _ => None,
        }
    }
}

impl Trigger {
    /// Subscribes, then pulls a delivery (or a batch) whenever fewer than `concurrency` calls
    /// run, until `lifecycle.stop`; then lets the running calls finish (or be abandoned when
    /// `lifecycle.abort` fires).
    pub(crate) async fn run(self: Arc<Self>, lifecycle: Lifecycle) {
        let Some(mut subscription) = self.subscribe(&lifecycle.stop).await else {
            return;
        };
        self.subscribed.store(true, Ordering::Relaxed);
        let limit = self.settings.concurrency as usize;
        let abort = &lifecycle.abort;
        let mut running = FuturesUnordered::new();
        // After a subscription error, pulling pauses for a second while running calls go on.
        let resume = sleep(Duration::ZERO);
        tokio::pin!(resume);
        let mut paused = false;
        loop {
            tokio::select! {
                biased;
                Some(()) = running.next(), if !running.is_empty() => {}
                () = lifecycle.stop.cancelled() => break,
                () = &mut resume, if paused => paused = false,
                next = subscription.next(), if !paused && running.len() < limit => match next {
                    None => break,
                    Some(Ok(delivery)) if self.settings.batch_size > 1 => {
                        let batch = self.fill_batch(delivery, &mut subscription);
                        running.push(Either::Right(self.handle_batch(batch, abort)));
                    }
                    Some(Ok(delivery)) => running.push(Either::Left(self.handle(delivery, abort))),
                    Some(Err(err)) => {
                        tracing::error!(trigger = %self.key, error = %err, "the subscription failed; pulling again in 1s");
                        paused = true;
                        resume.as_mut().reset(Instant::now() + Duration::from_secs(1));
                    }
                },
            }
        }
        self.subscribed.store(false, Ordering::Relaxed);
        drop(subscription);
        while running.next().await.is_some() {}
    }

    async fn subscribe(&self, stop: &CancellationToken) -> Option<Subscription> {
        let prefetch = self.settings.concurrency * self.settings.batch_size;
        let mut wait = Duration::from_millis(100);
        loop {
            match self
                .adapter
                .consume(&self.key, ConsumeOptions { prefetch })
                .await
            {
                Ok(subscription) => return Some(subscription),
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

    /// Adds to `first` the deliveries that are ready now, up to `batch_size`.
    fn fill_batch(&self, first: Delivery, subscription: &mut Subscription) -> Vec<Delivery> {
        let mut batch = vec![first];
        while batch.len() < self.settings.batch_size as usize {
            match subscription.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(delivery),
                _ => break,
            }
        }
        batch
    }

    /// True when the condition lets the message through; a false or failing condition
    /// acknowledges it for this trigger.
    async fn passes_condition(&self, delivery: &Delivery) -> bool {
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
    async fn handle(&self, delivery: Delivery, abort: &CancellationToken) {
        let span = telemetry::process_span(
            self.messaging_system,
            delivery.envelope(),
            &self.settings.name,
        );
        let outcome = self
            .handle_in_span(delivery, abort)
            .instrument(span.clone())
            .await;
        telemetry::record_outcome(&span, outcome);
    }

    async fn handle_in_span(&self, delivery: Delivery, abort: &CancellationToken) -> &'static str {
        self.counters.delivered();
        if !self.passes_condition(&delivery).await {
            self.counters.filtered();
            self.ack(delivery).await;
            return "filtered";
        }
        let message = Message::new(delivery.envelope().clone(), self.settings.name.clone());
        let Function::Single(handler) = &self.function else {
            return "released";
        };
        let call = handler.call(message);
        let started = Instant::now();
        let outcome = self
            .supervise(call, std::slice::from_ref(&delivery), abort)
            .await;
        if outcome.is_some() {
            self.counters.handler_time(started.elapsed());
        }
        match outcome {
            None => {
                release(delivery).await;
                "released"
            }
            Some(Ok(())) => {
                self.counters
                    .end_to_end(since(delivery.envelope().enqueued_at));
                self.counters.succeeded();
                self.ack(delivery).await;
                "succeeded"
            }
            Some(Err(failure)) => self.settle_failure(delivery, failure).await,
        }
    }

    /// Handles a batch in one process span linked to each message's publisher span.
    async fn handle_batch(&self, batch: Vec<Delivery>, abort: &CancellationToken) {
        let envelopes: Vec<&Envelope> = batch.iter().map(Delivery::envelope).collect();
        let span = telemetry::batch_process_span(
            self.messaging_system,
            &self.key.topic,
            &self.settings.name,
            &envelopes,
        );
        drop(envelopes);
        let outcome = self
            .handle_batch_in_span(batch, abort)
            .instrument(span.clone())
            .await;
        telemetry::record_outcome(&span, outcome);
    }

    /// The batch's outcome: `succeeded` (every message), `partial`, `failed`, `filtered`
    /// (none passed the condition) or `released`.
    async fn handle_batch_in_span(
        &self,
        batch: Vec<Delivery>,
        abort: &CancellationToken,
    ) -> &'static str {
        let mut passing = Vec::with_capacity(batch.len());
        for delivery in batch {
            self.counters.delivered();
            if self.passes_condition(&delivery).await {
                passing.push(delivery);
            } else {
                self.counters.filtered();
                self.ack(delivery).await;
            }
        }
        if passing.is_empty() {
            return "filtered";
        }
        let Function::Batch(handler) = &self.function else {
            return "released";
        };
        let messages = passing
            .iter()
            .map(|delivery| Message::new(delivery.envelope().clone(), self.settings.name.clone()))
            .collect();
        let expected = passing.len();
        let call = handler.call(messages).map(Ok).boxed();
        let started = Instant::now();
        let outcome = self.supervise(call, &passing, abort).await;
        if outcome.is_some() {
            self.counters.handler_time(started.elapsed());
        }
        match outcome {
            None => {
                for delivery in passing {
                    release(delivery).await;
                }
                "released"
            }
            Some(Ok(results)) if results.len() == expected => {
                let failed = results.iter().filter(|result| result.is_err()).count();
                for (delivery, result) in passing.into_iter().zip(results) {
                    match result {
                        Ok(()) => {
                            self.counters
                                .end_to_end(since(delivery.envelope().enqueued_at));
                            self.counters.succeeded();
                            self.ack(delivery).await;
                        }
                        Err(err) => {
                            self.settle_failure(delivery, CallFailure::Handler(err))
                                .await;
                        }
                    }
                }
                match failed {
                    0 => "succeeded",
                    n if n == expected => "failed",
                    _ => "partial",
                }
            }
            Some(Ok(results)) => {
                let message = format!(
                    "the batch function returned {} results for {expected} messages",
                    results.len()
                );
                for delivery in passing {
                    self.settle_failure(
                        delivery,
                        CallFailure::Handler(HandlerError::retryable(message.clone())),
                    )
                    .await;
                }
                "failed"
            }
            Some(Err(failure)) => {
                let shared = match failure {
                    CallFailure::Handler(err) => err,
                    CallFailure::Timeout(limit) => HandlerError::retryable(format!(
                        "the batch function did not finish within its timeout of {limit:?}"
                    )),
                    CallFailure::Panicked(message) => {
                        HandlerError::retryable(format!("the batch function panicked: {message}"))
                    }
                };
                for delivery in passing {
                    self.settle_failure(delivery, CallFailure::Handler(shared.clone()))
                        .await;
                }
                "failed"
            }
        }
    }

    /// Runs `call` under the timeout, extending the leases of `deliveries` every half
    /// visibility timeout; `None` when the shutdown grace period ran out first.
    async fn supervise<T>(
        &self,
        call: futures::future::BoxFuture<'static, Result<T, HandlerError>>,
        deliveries: &[Delivery],
        abort: &CancellationToken,
    ) -> Option<Result<T, CallFailure>>
    where
        T: Send + 'static,
    {
        let call = AssertUnwindSafe(call).catch_unwind();
        tokio::pin!(call);
        // A call that finishes on its first poll needs no timer (the common fast handler).
        // Time spent inside that first poll is not counted against the timeout: a handler
        // blocking its thread cannot be interrupted anyway.
        if let Poll::Ready(result) = futures::poll!(&mut call) {
            return Some(call_result(result));
        }
        let timeout = self.settings.timeout;
        let extend_every = self.settings.visibility_timeout / 2;
        let started = Instant::now();
        let deadline = started + timeout;
        let mut next_extension = started + extend_every;
        let timer = sleep_until(deadline.min(next_extension));
        tokio::pin!(timer);
        loop {
            tokio::select! {
                biased;
                result = &mut call => return Some(call_result(result)),
                () = abort.cancelled() => return None,
                () = &mut timer => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Some(Err(CallFailure::Timeout(timeout)));
                    }
                    for delivery in deliveries {
                        if let Err(err) = delivery.extend_lease().await {
                            tracing::warn!(trigger = %self.key, id = %delivery.envelope().id, error = %err, "cannot extend the lease");
                        }
                    }
                    next_extension = now + extend_every;
                    timer.as_mut().reset(deadline.min(next_extension));
                }
            }
        }
    }

    async fn ack(&self, delivery: Delivery) {
        let id = delivery.envelope().id.clone();
        if let Err(err) = delivery.ack().await {
            tracing::warn!(trigger = %self.key, %id, error = %err, "the ack was not applied; the message will be delivered again");
        }
    }

    /// After a failed call: retry after the backoff, or dead-letter when the error is not
    /// retryable or this was the last attempt. The adapter also publishes a dead-lettered
    /// message to the trigger's `dead_letter_topic` (on every path into the DLQ, its own
    /// lease expiries included).
    async fn settle_failure(&self, delivery: Delivery, failure: CallFailure) -> &'static str {
        self.counters.failed();
        let envelope = delivery.envelope();
        let last_attempt = envelope.attempt >= envelope.max_attempts;
        let retry_delay = failure
            .requested_delay()
            .unwrap_or_else(|| self.settings.retry.delay_after(envelope.attempt))
            .min(crate::retry::MAX_RETRY_DELAY);
        if failure.retryable() && !last_attempt {
            tracing::debug!(trigger = %self.key, id = %envelope.id, attempt = envelope.attempt, delay = ?retry_delay, "retrying");
            self.counters.retried();
            self.settle(delivery.nack(retry_delay).await, "nack");
            return "retried";
        }
        let failure = failure.into_failure();
        tracing::warn!(trigger = %self.key, id = %envelope.id, attempts = envelope.attempt, kind = %failure.kind, error = %failure.message, "dead-lettered");
        self.counters.dead_lettered();
        self.settle(delivery.dead_letter(failure).await, "dead_letter");
        "dead_lettered"
    }

    fn settle(&self, result: topiq_adapter::Result<()>, operation: &str) {
        if let Err(err) = result {
            tracing::warn!(trigger = %self.key, operation, error = %err, "the settlement was not applied; the message will be delivered again");
        }
    }
}

/// The time since `at` (zero if it is in the future: clocks of two machines).
fn since(at: Timestamp) -> Duration {
    Timestamp::now()
        .duration_since(at)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

async fn release(delivery: Delivery) {
    let id = delivery.envelope().id.clone();
    if let Err(err) = delivery.release().await {
        tracing::warn!(%id, error = %err, "cannot release the message; it is delivered again after its lease");
    }
}

/// A finished call: its value, its error, or its panic.
fn call_result<T>(
    result: Result<Result<T, HandlerError>, Box<dyn std::any::Any + Send>>,
) -> Result<T, CallFailure> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(CallFailure::Handler(err)),
        Err(panic) => Err(CallFailure::Panicked(panic_message(panic.as_ref()))),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
