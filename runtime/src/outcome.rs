//! What became of a delivery (or a batch) once its trigger is done with it.

/// What became of a processed message or batch, as its process span records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The handler succeeded (a batch: for every message); acknowledged.
    Succeeded,
    /// The handler failed and the message comes back after the backoff.
    Retried,
    /// The handler failed for good; the message is in the trigger's DLQ.
    DeadLettered,
    /// The condition let nothing through; acknowledged without a call.
    Filtered,
    /// The shutdown grace period ran out; released without spending an attempt.
    Released,
    /// A batch whose handler failed some messages (each retried or dead-lettered).
    Partial,
    /// A batch whose handler failed every message.
    Failed,
    /// Its run was cancelled: acknowledged, never retried.
    Cancelled,
}

impl Outcome {
    /// The span attribute's value (`topiq.outcome`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Retried => "retried",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Filtered => "filtered",
            Outcome::Released => "released",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// Whether the span is marked as an error.
    pub(crate) fn is_error(self) -> bool {
        matches!(
            self,
            Outcome::Retried | Outcome::DeadLettered | Outcome::Partial | Outcome::Failed
        )
    }

    /// A batch's outcome from how many of its `total` messages failed.
    pub(crate) fn of_batch(failed: usize, total: usize) -> Self {
        match failed {
            0 => Outcome::Succeeded,
            n if n == total => Outcome::Failed,
            _ => Outcome::Partial,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_errors_and_a_batch_counts_its_failures() {
        assert!(Outcome::DeadLettered.is_error());
        assert!(!Outcome::Filtered.is_error());
        assert_eq!(Outcome::of_batch(0, 3), Outcome::Succeeded);
        assert_eq!(Outcome::of_batch(1, 3), Outcome::Partial);
        assert_eq!(Outcome::of_batch(3, 3), Outcome::Failed);
        assert_eq!(Outcome::Partial.as_str(), "partial");
    }
}
