//! The last layer: settling a delivery once its call is done, with the counters that follow.

use std::time::Duration;

use topiq_adapter::{Delivery, Timestamp};

use super::Trigger;
use super::supervise::CallFailure;
use crate::outcome::Outcome;

impl Trigger {
    /// A successful call: counted (with the message's time since enqueue) and acknowledged.
    pub(super) async fn succeed(&self, delivery: Delivery) {
        self.counters
            .end_to_end(since(delivery.envelope().enqueued_at));
        self.counters.succeeded();
        self.ack(delivery).await;
    }

    /// Acknowledges `delivery`; a refused ack means it is delivered again.
    pub(super) async fn ack(&self, delivery: Delivery) {
        let id = delivery.envelope().id.clone();
        if let Err(err) = delivery.ack().await {
            tracing::warn!(trigger = %self.key, %id, error = %err, "the ack was not applied; the message will be delivered again");
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
        if failure.retryable() && !last_attempt {
            tracing::debug!(trigger = %self.key, id = %envelope.id, attempt = envelope.attempt, delay = ?retry_delay, "retrying");
            self.counters.retried();
            self.settled(delivery.nack(retry_delay).await, "nack");
            return Outcome::Retried;
        }
        let failure = failure.into_failure();
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

/// Gives `delivery` back without spending an attempt (a call abandoned at shutdown).
pub(super) async fn release(delivery: Delivery) {
    let id = delivery.envelope().id.clone();
    if let Err(err) = delivery.release().await {
        tracing::warn!(%id, error = %err, "cannot release the message; it is delivered again after its lease");
    }
}

/// The time since `at` (zero if it is in the future: clocks of two machines).
fn since(at: Timestamp) -> Duration {
    Timestamp::now()
        .duration_since(at)
        .try_into()
        .unwrap_or(Duration::ZERO)
}
