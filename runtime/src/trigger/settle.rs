//! The last layer: settling a delivery once its call is done, with the counters that follow.

use std::time::Duration;

use topiq_adapter::{Delivery, Timestamp};
use topiq_runs::{AttemptOutcome, Next, RunError, RunEvent};

use super::Trigger;
use super::supervise::CallFailure;
use crate::outcome::Outcome;
use crate::runs::{self, Runs};

impl Trigger {
    /// A successful call: counted (with the message's time since enqueue) and acknowledged.
    /// (Not an `async fn`: see `Trigger::handle`.)
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    pub(super) fn succeed(
        &self,
        delivery: Delivery,
        result: Option<serde_json::Value>,
    ) -> impl Future<Output = ()> + Send + '_ {
        // One clock read for both.
        let now = Timestamp::now();
        self.counters
            .end_to_end(since_at(delivery.envelope().enqueued_at, now));
        self.counters
            .succeeded_at(u64::try_from(now.as_second()).unwrap_or(0));
        async move {
            let ending = (AttemptOutcome::Succeeded, None, Next::Succeeded { result });
            if self.record_end(&delivery, ending, now).await {
                self.ack(delivery).await;
            }
        }
    }

    /// Records how `delivery`'s attempt ended (at `at`) and waits until it is stored, so the
    /// settlement that follows never outlives its record. False when it could not be stored
    /// (shutdown with the store down): the delivery is then left unsettled, to be delivered
    /// again.
    async fn record_end(
        &self,
        delivery: &Delivery,
        ending: (AttemptOutcome, Option<RunError>, Next),
        at: Timestamp,
    ) -> bool {
        let Some(runs) = &self.runs else {
            return true;
        };
        let ended: RunEvent = runs::finished(&self.settings.name, delivery.envelope(), ending, at);
        // A store in this process's memory has it now: no wait, no timer.
        let Some(ended) = runs
            .recorder()
            .unless_written_in_process(std::iter::once(ended))
        else {
            return true;
        };
        // Boxed: only a store written in batches waits, and every message's future stays as
        // small as the in-process path needs.
        Box::pin(self.wait_until_stored(delivery, runs, ended)).await
    }

    /// Queues `ended` for the runs writer and waits until it is stored, keeping the lease
    /// while the store is slow or down (as while a handler runs).
    async fn wait_until_stored(
        &self,
        delivery: &Delivery,
        runs: &Runs,
        ended: impl Iterator<Item = RunEvent> + Send,
    ) -> bool {
        let stored = runs.recorder().queue_stored(ended);
        tokio::pin!(stored);
        let every = self.settings.visibility_timeout / 2;
        loop {
            tokio::select! {
                biased;
                stored = &mut stored => {
                    if !stored {
                        tracing::warn!(trigger = %self.key, id = %delivery.envelope().id, "the run's record could not be stored before shutdown; the message is delivered again");
                    }
                    return stored;
                }
                () = tokio::time::sleep(every) => {
                    if let Err(err) = delivery.extend_lease().await {
                        tracing::warn!(trigger = %self.key, error = %err, "cannot extend the lease while the run's record waits");
                    }
                }
            }
        }
    }

    /// Settles the delivery of a cancelled run: recorded as cancelled and acknowledged,
    /// never retried.
    pub(super) async fn settle_cancelled(&self, delivery: Delivery) {
        self.counters.cancelled();
        let outcome = AttemptOutcome::Cancelled;
        let ending = (outcome, None, Next::Cancelled);
        if self.record_end(&delivery, ending, Timestamp::now()).await {
            self.ack(delivery).await;
        }
    }

    /// Gives `delivery` back without spending an attempt (a call abandoned at shutdown),
    /// recorded or not: a release loses nothing either way.
    pub(super) async fn release(&self, delivery: Delivery) {
        let ending = (AttemptOutcome::Released, None, Next::Queued);
        let _ = self.record_end(&delivery, ending, Timestamp::now()).await;
        let id = delivery.envelope().id.clone();
        if let Err(err) = delivery.release().await {
            tracing::warn!(%id, error = %err, "cannot release the message; it is delivered again after its lease");
        }
    }

    /// Acknowledges `delivery`; a refused ack means it is delivered again. (Not an `async
    /// fn`, which would keep the delivery in its future beside the ack's.)
    pub(super) fn ack(&self, delivery: Delivery) -> impl Future<Output = ()> + Send + '_ {
        let id = delivery.envelope().id.clone();
        let acking = delivery.ack();
        async move {
            if let Err(err) = acking.await {
                tracing::warn!(trigger = %self.key, %id, error = %err, "the ack was not applied; the message will be delivered again");
            }
        }
    }

    /// After a failed call: retry after the backoff, or dead-letter when the error is not
    /// retryable or this was the last attempt. The adapter also publishes a dead-lettered
    /// message to the trigger's `dead_letter_topic` (on every path into the DLQ, its own
    /// lease expiries included).
    pub(super) async fn settle_failure(&self, delivery: Delivery, failure: CallFailure) -> Outcome {
        self.counters.failed();
        let envelope = delivery.envelope();
        let last_attempt = envelope.attempt >= envelope.max_attempts;
        let retry_delay = failure
            .requested_delay()
            .unwrap_or_else(|| self.settings.retry.delay_after(envelope.attempt))
            .min(crate::retry::MAX_RETRY_DELAY);
        let (outcome, error) = failure.run_error();
        if failure.retryable() && !last_attempt {
            tracing::debug!(trigger = %self.key, id = %envelope.id, attempt = envelope.attempt, delay = ?retry_delay, "retrying");
            self.counters.retried();
            let now = Timestamp::now();
            let due = now.checked_add(retry_delay).unwrap_or(Timestamp::MAX);
            let ending = (outcome, Some(error), Next::Retry { at: due });
            if self.record_end(&delivery, ending, now).await {
                self.settled(delivery.nack(retry_delay).await, "nack");
            }
            return Outcome::Retried;
        }
        let failure = failure.into_failure();
        let error = RunError {
            kind: failure.kind.to_string(),
            message: failure.message.clone(),
        };
        let ending = (outcome, Some(error), Next::DeadLettered);
        if !self.record_end(&delivery, ending, Timestamp::now()).await {
            return Outcome::DeadLettered;
        }
        tracing::warn!(trigger = %self.key, id = %envelope.id, attempts = envelope.attempt, kind = %failure.kind, error = %failure.message, "dead-lettered");
        self.counters.dead_lettered();
        self.settled(delivery.dead_letter(failure).await, "dead_letter");
        Outcome::DeadLettered
    }

    fn settled(&self, result: topiq_adapter::Result<()>, operation: &str) {
        if let Err(err) = result {
            tracing::warn!(trigger = %self.key, operation, error = %err, "the settlement was not applied; the message will be delivered again");
        }
    }
}

/// The time from `at` to `now` (zero if `at` is later: clocks of two machines).
fn since_at(at: Timestamp, now: Timestamp) -> Duration {
    now.duration_since(at).try_into().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use futures::StreamExt;
    use topiq_adapter::{
        ConsumeOptions, FailureKind, NewMessage, SharedAdapter, Subscription, SubscriptionKey,
        SubscriptionSpec, TopicSpec,
    };
    use topiq_memory::BuiltinQueueAdapter;

    use super::*;
    use crate::config::Config;
    use crate::function::{Function, HandlerError, Message};
    use crate::metrics::Metrics;
    use crate::stats::TriggerCounters;

    /// A trigger on the in-memory adapter whose retry block is `retry`, a message published
    /// to it, and the subscription it arrives on.
    async fn trigger_with_a_message(retry: &str) -> (Trigger, Subscription) {
        let text = format!(
            "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
triggers:
  work:
    type: queue
    function: work
    config:
      topic: jobs
      retry:
{retry}"
        );
        let config = Config::from_yaml_with_variables(&text, "test.yaml", &HashMap::new())
            .unwrap_or_else(|err| panic!("{err}"));
        let settings = config.triggers[0].clone();
        let key = SubscriptionKey::new(settings.topic.clone(), settings.name.clone());
        let adapter: SharedAdapter = Arc::new(BuiltinQueueAdapter::new());
        adapter
            .declare_topic(TopicSpec::new(key.topic.clone()))
            .await
            .unwrap();
        let mut spec = SubscriptionSpec::new(key.clone());
        spec.max_attempts = settings.retry.max_attempts;
        adapter.declare_subscription(spec).await.unwrap();
        adapter
            .publish(&key.topic, NewMessage::new(serde_json::json!({"n": 1})))
            .await
            .unwrap();
        let subscription = adapter
            .consume(&key, ConsumeOptions::with_prefetch(1))
            .await
            .unwrap();
        let handler = |_message: Message| async { Ok(()) };
        let trigger = Trigger {
            counters: TriggerCounters::new(Metrics::new(false).trigger(&key)),
            settings,
            key,
            function: Function::Single(Arc::new(handler)),
            adapter,
            subscribed: AtomicBool::new(false),
            messaging_system: "topiq",
            runs: None,
            pauses: tokio::sync::watch::Sender::default().subscribe(),
            lanes: 1,
            lane_order: crate::trigger::LaneOrder::HighestFirst,
            settles_in_slot: false,
        };
        (trigger, subscription)
    }

    async fn next(subscription: &mut Subscription) -> Delivery {
        subscription
            .next()
            .await
            .expect("open")
            .expect("a delivery")
    }

    #[tokio::test(start_paused = true)]
    async fn a_retryable_failure_comes_back_after_its_backoff_as_the_next_attempt() {
        let retry = "        backoff: fixed\n        delay: 2s\n        max_attempts: 3\n";
        let (trigger, mut subscription) = trigger_with_a_message(retry).await;
        let failure = CallFailure::Handler(HandlerError::retryable("down"));
        let outcome = trigger
            .settle_failure(next(&mut subscription).await, failure)
            .await;
        assert_eq!(outcome, Outcome::Retried);
        let failed_at = tokio::time::Instant::now();
        let again = next(&mut subscription).await;
        assert_eq!(again.envelope().attempt, 2);
        assert_eq!(failed_at.elapsed(), Duration::from_secs(2));
        assert_eq!(trigger.counters.snapshot().retried, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_handlers_requested_delay_wins_over_the_backoff() {
        let retry = "        backoff: fixed\n        delay: 2s\n        max_attempts: 3\n";
        let (trigger, mut subscription) = trigger_with_a_message(retry).await;
        let error = HandlerError::retryable("later").retry_after(Duration::from_secs(7));
        let delivery = next(&mut subscription).await;
        trigger
            .settle_failure(delivery, CallFailure::Handler(error))
            .await;
        let failed_at = tokio::time::Instant::now();
        next(&mut subscription).await;
        assert_eq!(failed_at.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_on_the_last_attempt_is_dead_lettered() {
        let retry = "        backoff: fixed\n        delay: 2s\n        max_attempts: 1\n";
        let (trigger, mut subscription) = trigger_with_a_message(retry).await;
        let failure = CallFailure::Timeout(Duration::from_secs(30));
        let outcome = trigger
            .settle_failure(next(&mut subscription).await, failure)
            .await;
        assert_eq!(outcome, Outcome::DeadLettered);
        let key = &trigger.key;
        assert_eq!(
            trigger
                .adapter
                .dlq_count(&key.topic, Some(&key.trigger))
                .await
                .unwrap(),
            1
        );
        let counts = trigger.counters.snapshot();
        assert_eq!((counts.failed, counts.dead_lettered), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_non_retryable_failure_is_dead_lettered_on_its_first_attempt() {
        let retry = "        backoff: fixed\n        delay: 2s\n        max_attempts: 5\n";
        let (trigger, mut subscription) = trigger_with_a_message(retry).await;
        let failure = CallFailure::Handler(HandlerError::non_retryable("bad input"));
        let outcome = trigger
            .settle_failure(next(&mut subscription).await, failure)
            .await;
        assert_eq!(outcome, Outcome::DeadLettered);
        let page = trigger
            .adapter
            .dlq_list(topiq_adapter::DlqQuery::new(trigger.key.topic.clone()))
            .await
            .unwrap();
        assert_eq!(page.records[0].error.kind, FailureKind::NonRetryable);
        assert_eq!(page.records[0].attempts, 1);
    }
}
