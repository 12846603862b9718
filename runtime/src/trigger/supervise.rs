//! The layer around a handler call: its timeout, the extension of its leases while it runs,
//! the capture of its panic, and its abandonment when the shutdown grace period runs out.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, CatchUnwind};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use topiq_adapter::{Failure, FailureKind};

use crate::function::HandlerError;
use crate::runs::RunCancel;

/// Why a call did not produce a result.
#[derive(Debug)]
pub(crate) enum CallFailure {
    /// The handler returned an error.
    Handler(HandlerError),
    /// It ran past its timeout.
    Timeout(Duration),
    /// It panicked, with this message.
    Panicked(String),
    /// Its run was cancelled: the call was dropped.
    Cancelled,
    /// An ordered trigger's `ordering_key` failed on the message (never called), with why.
    OrderingKey(String),
}

impl CallFailure {
    /// Whether the message may be tried again (timeouts and panics may).
    pub(crate) fn retryable(&self) -> bool {
        match self {
            CallFailure::Handler(err) => err.is_retryable(),
            CallFailure::Timeout(_) | CallFailure::Panicked(_) => true,
            CallFailure::Cancelled | CallFailure::OrderingKey(_) => false,
        }
    }

    /// The DLQ record's error.
    pub(crate) fn into_failure(self) -> Failure {
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
            CallFailure::Cancelled => {
                Failure::new(FailureKind::NonRetryable, "the run was cancelled")
            }
            CallFailure::OrderingKey(reason) => Failure::new(FailureKind::NonRetryable, reason),
        }
    }

    /// How the attempt ended and why, for its run record.
    pub(crate) fn run_error(&self) -> (topiq_runs::AttemptOutcome, topiq_runs::RunError) {
        use topiq_runs::AttemptOutcome;
        let (outcome, kind, message) = match self {
            CallFailure::Handler(err) => (
                AttemptOutcome::Failed,
                "handler_error",
                err.message().to_owned(),
            ),
            CallFailure::Timeout(limit) => (
                AttemptOutcome::Timeout,
                "timeout",
                format!("the handler did not finish within its timeout of {limit:?}"),
            ),
            CallFailure::Panicked(message) => (
                AttemptOutcome::Panicked,
                "panicked",
                format!("the handler panicked: {message}"),
            ),
            CallFailure::Cancelled => (
                AttemptOutcome::Cancelled,
                "cancelled",
                "the run was cancelled".to_owned(),
            ),
            CallFailure::OrderingKey(reason) => {
                (AttemptOutcome::Failed, "ordering_key", reason.clone())
            }
        };
        let error = topiq_runs::RunError {
            kind: kind.to_owned(),
            // Cut like a DLQ record's error.
            message: Failure::new(FailureKind::RetriesExhausted, message).message,
        };
        (outcome, error)
    }

    /// The delay the handler asked for before the next attempt.
    pub(crate) fn requested_delay(&self) -> Option<Duration> {
        match self {
            CallFailure::Handler(err) => err.requested_delay(),
            _ => None,
        }
    }

    /// The same failure as a handler error, for each message of a batch it failed.
    pub(crate) fn into_batch_error(self) -> HandlerError {
        match self {
            CallFailure::Handler(err) => err,
            CallFailure::Timeout(limit) => HandlerError::retryable(format!(
                "the batch function did not finish within its timeout of {limit:?}"
            )),
            CallFailure::Panicked(message) => {
                HandlerError::retryable(format!("the batch function panicked: {message}"))
            }
            CallFailure::Cancelled => HandlerError::non_retryable("the run was cancelled"),
            CallFailure::OrderingKey(reason) => HandlerError::non_retryable(reason),
        }
    }
}

/// How long a call may run, and how often its leases are extended meanwhile.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The handler timeout.
    pub(crate) timeout: Duration,
    /// Half the visibility timeout.
    pub(crate) extend_every: Duration,
}

/// Runs `call` under `limits.timeout`, calling `extend` every `limits.extend_every` while it
/// runs; `None` when `abort` fired first, [`CallFailure::Cancelled`] when `cancel` did (the
/// call is dropped either way).
pub(crate) async fn supervise<T, F>(
    call: BoxFuture<'static, Result<T, HandlerError>>,
    limits: Limits,
    abort: &CancellationToken,
    cancel: Option<&RunCancel>,
    extend: impl FnMut() -> F,
) -> Option<Result<T, CallFailure>>
where
    T: Send + 'static,
    F: Future<Output = ()>,
{
    let mut call = AssertUnwindSafe(call).catch_unwind();
    // A call that finishes on its first poll needs no timer (the common fast handler).
    // Time spent inside that first poll is not counted against the timeout: a handler
    // blocking its thread cannot be interrupted anyway.
    if let Poll::Ready(result) = futures::poll!(&mut call) {
        return Some(call_result(result));
    }
    // Boxed: the timers and waits of a call still running are not part of every message's
    // future (which is allocated and moved for each message).
    Box::pin(watch(call, limits, abort, cancel, extend)).await
}

/// [`supervise`] of a call that did not finish on its first poll.
async fn watch<T, F>(
    mut call: CatchUnwind<AssertUnwindSafe<BoxFuture<'static, Result<T, HandlerError>>>>,
    limits: Limits,
    abort: &CancellationToken,
    cancel: Option<&RunCancel>,
    mut extend: impl FnMut() -> F,
) -> Option<Result<T, CallFailure>>
where
    T: Send + 'static,
    F: Future<Output = ()>,
{
    let started = Instant::now();
    let deadline = started + limits.timeout;
    let timer = sleep_until(deadline.min(started + limits.extend_every));
    tokio::pin!(timer);
    let cancelled = async {
        match cancel {
            Some(cancel) => cancel.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            result = &mut call => return Some(call_result(result)),
            () = abort.cancelled() => return None,
            () = &mut cancelled => return Some(Err(CallFailure::Cancelled)),
            () = &mut timer => {
                let now = Instant::now();
                if now >= deadline {
                    return Some(Err(CallFailure::Timeout(limits.timeout)));
                }
                extend().await;
                timer.as_mut().reset(deadline.min(now + limits.extend_every));
            }
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const LIMITS: Limits = Limits {
        timeout: Duration::from_secs(10),
        extend_every: Duration::from_secs(3),
    };

    /// Supervises `call`; returns its result and how often the leases were extended.
    async fn run(
        call: BoxFuture<'static, Result<u32, HandlerError>>,
        abort: &CancellationToken,
    ) -> (Option<Result<u32, CallFailure>>, u32) {
        let extensions = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&extensions);
        let result = supervise(call, LIMITS, abort, None, move || {
            counter.fetch_add(1, Ordering::Relaxed);
            async {}
        })
        .await;
        (result, extensions.load(Ordering::Relaxed))
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_finishes_at_once_needs_no_extension() {
        let (result, extensions) = run(async { Ok(7) }.boxed(), &CancellationToken::new()).await;
        assert_eq!(result.unwrap().unwrap(), 7);
        assert_eq!(extensions, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_has_its_leases_extended_every_half_visibility_timeout() {
        let call = async {
            tokio::time::sleep(Duration::from_secs(7)).await;
            Ok(1)
        };
        let (result, extensions) = run(call.boxed(), &CancellationToken::new()).await;
        assert_eq!(result.unwrap().unwrap(), 1);
        assert_eq!(extensions, 2, "at 3 s and 6 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_timeout_is_a_timeout_failure() {
        let started = Instant::now();
        let (result, extensions) = run(
            futures::future::pending().boxed(),
            &CancellationToken::new(),
        )
        .await;
        assert!(
            matches!(result, Some(Err(CallFailure::Timeout(limit))) if limit == LIMITS.timeout)
        );
        assert_eq!(started.elapsed(), LIMITS.timeout);
        assert_eq!(extensions, 3, "at 3 s, 6 s and 9 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_is_a_failure_with_its_message() {
        let call = async {
            tokio::task::yield_now().await;
            panic!("boom");
        };
        let (result, _) = run(call.boxed(), &CancellationToken::new()).await;
        let failure = result.unwrap().unwrap_err();
        assert!(matches!(&failure, CallFailure::Panicked(message) if message == "boom"));
        assert!(failure.retryable());
        assert_eq!(failure.into_failure().kind, FailureKind::Panicked);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_abandons_the_call() {
        let abort = CancellationToken::new();
        let trigger = abort.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            trigger.cancel();
        });
        let (result, extensions) = run(futures::future::pending().boxed(), &abort).await;
        assert!(result.is_none());
        assert_eq!(extensions, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_error_keeps_its_retry_request() {
        let delay = Duration::from_secs(42);
        let call = async move { Err(HandlerError::retryable("later").retry_after(delay)) };
        let (result, _) = run(call.boxed(), &CancellationToken::new()).await;
        let failure = result.unwrap().unwrap_err();
        assert_eq!(failure.requested_delay(), Some(delay));
    }
}
