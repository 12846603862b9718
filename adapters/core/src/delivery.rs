//! A delivered message and the one-time settlement of it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::message::Envelope;

/// Why a message ended in the dead-letter queue, as stored in its record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The last error, as the handler reported it.
    pub message: String,
    /// What kind of failure it was.
    pub kind: FailureKind,
}

/// The longest error message a DLQ record keeps, in bytes; longer ones are cut (a handler
/// error with a whole response body must not make the record too large to store).
pub const MAX_FAILURE_MESSAGE: usize = 4096;

impl Failure {
    /// A failure of `kind` with `message`, cut to [`MAX_FAILURE_MESSAGE`] bytes.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_FAILURE_MESSAGE {
            let mut cut = MAX_FAILURE_MESSAGE - "… (cut)".len();
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("… (cut)");
        }
        Self { message, kind }
    }

    /// A lease that ran out on attempt `attempt` of `max_attempts` (the last): the adapter
    /// dead-letters the message with this failure.
    pub fn lease_expired(visibility_timeout: Duration, attempt: u32, max_attempts: u32) -> Self {
        Self::new(
            FailureKind::LeaseExpired,
            format!(
                "not settled within the visibility timeout of {visibility_timeout:?} on attempt {attempt} of {max_attempts}"
            ),
        )
    }

    /// A message past its topic's retention (`retention`), reached by its trigger after
    /// `attempts` attempts: the adapter dead-letters it with this failure instead of handing
    /// it out.
    pub fn expired(retention: Option<Duration>, attempts: u32) -> Self {
        let retention = retention.map_or_else(|| "its retention".to_owned(), |r| format!("{r:?}"));
        Self::new(
            FailureKind::Expired,
            format!(
                "not handled within the topic's retention of {retention} (after {attempts} attempts)"
            ),
        )
    }

    /// A nack on the last attempt: the adapter dead-letters the message with this failure.
    pub fn nacked_on_last_attempt(attempt: u32, max_attempts: u32) -> Self {
        Self::new(
            FailureKind::RetriesExhausted,
            format!("nacked on the last attempt ({attempt} of {max_attempts})"),
        )
    }
}

/// The kinds of failure that send a message to the dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The handler failed on every attempt.
    RetriesExhausted,
    /// The handler returned an error marked non-retryable.
    NonRetryable,
    /// The handler did not finish within its timeout on the last attempt.
    Timeout,
    /// The handler panicked on the last attempt.
    Panicked,
    /// Nobody settled the message within the visibility timeout on its last attempt
    /// (the consumer crashed or hung).
    LeaseExpired,
    /// The message outlived its topic's `retention` before a handler succeeded with it.
    Expired,
    /// The broker could not take the message to its trigger (a delayed message whose topic
    /// the broker no longer holds).
    Undeliverable,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::RetriesExhausted => "retries_exhausted",
            FailureKind::NonRetryable => "non_retryable",
            FailureKind::Timeout => "timeout",
            FailureKind::Panicked => "panicked",
            FailureKind::LeaseExpired => "lease_expired",
            FailureKind::Expired => "expired",
            FailureKind::Undeliverable => "undeliverable",
        })
    }
}

/// What settling a delivery returns: a result already there (an adapter that settles in
/// memory allocates nothing for it) or a settlement still talking to the broker.
///
/// Await it: an adapter may settle when the call is made (the in-memory one does) or only
/// when it is polled (the brokers do).
#[must_use = "a settlement may not happen until it is awaited"]
pub enum Settling<'a> {
    /// Settled; the result is taken by the first poll.
    Done(Option<Result<()>>),
    /// Still going.
    Pending(BoxFuture<'a, Result<()>>),
}

impl<'a> Settling<'a> {
    /// Settled already, with `result`.
    pub fn done(result: Result<()>) -> Self {
        Self::Done(Some(result))
    }

    /// Settles by running `future`.
    pub fn pending(future: impl Future<Output = Result<()>> + Send + 'a) -> Self {
        Self::Pending(Box::pin(future))
    }
}

impl Future for Settling<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match self.get_mut() {
            Self::Done(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
            Self::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

/// The adapter's side of a [`Delivery`]: settles one delivery on its broker.
///
/// Implemented by each adapter; the runtime only sees [`Delivery`]. The consuming methods take
/// the acker by value, so a delivery is settled once and only once.
pub trait Acker: Send + Sync + 'static {
    /// Removes the message for this trigger: the handler succeeded (or the condition was false).
    fn ack(self) -> Settling<'static>;

    /// Delivers the message again after `delay`, as the next attempt. On the last attempt the
    /// adapter dead-letters it instead, with [`FailureKind::RetriesExhausted`].
    fn nack(self, delay: Duration) -> Settling<'static>;

    /// Stores the message in the dead-letter queue of this trigger with `failure`, then removes
    /// it from the trigger's queue: a crash between the two duplicates, never loses.
    fn dead_letter(self, failure: Failure) -> Settling<'static>;

    /// Gives the message back unhandled (at shutdown) so it is delivered again at once, without
    /// spending an attempt.
    fn release(self) -> Settling<'static>;

    /// Restarts the visibility timeout of this delivery.
    fn extend_lease(&self) -> Settling<'_>;
}

/// A message delivered to one trigger, owning the means to settle it.
///
/// Settling consumes the delivery ([`ack`](Self::ack), [`nack`](Self::nack),
/// [`dead_letter`](Self::dead_letter), [`release`](Self::release)), so a message cannot be
/// settled twice. A delivery dropped unsettled stays leased until its visibility timeout runs
/// out and is then delivered again, as after a crash.
///
/// The envelope and the acker share one allocation, so a delivery moves as a pointer on its
/// way from the adapter's stream through the trigger's lanes to the handler's call.
pub struct Delivery {
    held: Box<Held<dyn Settle>>,
}

/// A delivery's envelope and its acker (`None` once settled).
struct Held<A: ?Sized> {
    envelope: Envelope,
    acker: A,
}

/// How a delivery is settled.
enum Settlement {
    Ack,
    Nack(Duration),
    DeadLetter(Failure),
    Release,
}

/// An [`Acker`] behind a delivery's pointer: settles once, taking it out.
trait Settle: Send + Sync {
    /// Settles, taking the acker out; a second call (never made: settling consumes the
    /// delivery) finds none and does nothing.
    fn settle(&mut self, settlement: Settlement) -> Settling<'static>;

    /// [`Acker::extend_lease`].
    fn extend_lease(&self) -> Settling<'_>;
}

impl<A: Acker> Settle for Option<A> {
    fn settle(&mut self, settlement: Settlement) -> Settling<'static> {
        let Some(acker) = self.take() else {
            return Settling::done(Ok(()));
        };
        match settlement {
            Settlement::Ack => acker.ack(),
            Settlement::Nack(delay) => acker.nack(delay),
            Settlement::DeadLetter(failure) => acker.dead_letter(failure),
            Settlement::Release => acker.release(),
        }
    }

    fn extend_lease(&self) -> Settling<'_> {
        match self {
            Some(acker) => acker.extend_lease(),
            None => Settling::done(Ok(())),
        }
    }
}

impl Delivery {
    /// Pairs an envelope with the adapter's acker for it.
    pub fn new(envelope: Envelope, acker: impl Acker) -> Self {
        Self {
            held: Box::new(Held {
                envelope,
                acker: Some(acker),
            }),
        }
    }

    /// The message as the handler sees it.
    pub fn envelope(&self) -> &Envelope {
        &self.held.envelope
    }

    /// Acknowledges: the message is done for this trigger.
    ///
    /// Fails with [`Error::LeaseExpired`](crate::Error::LeaseExpired) when the lease ran out
    /// first (the message was or will be delivered again).
    pub fn ack(self) -> Settling<'static> {
        self.settle(Settlement::Ack)
    }

    /// Asks for another attempt after `delay`; on the last attempt the message is dead-lettered.
    pub fn nack(self, delay: Duration) -> Settling<'static> {
        self.settle(Settlement::Nack(delay))
    }

    /// Moves the message to this trigger's dead-letter queue with `failure`.
    pub fn dead_letter(self, failure: Failure) -> Settling<'static> {
        self.settle(Settlement::DeadLetter(failure))
    }

    /// Gives the message back without spending an attempt (graceful shutdown).
    pub fn release(self) -> Settling<'static> {
        self.settle(Settlement::Release)
    }

    /// Restarts the visibility timeout, for handlers that run long.
    pub fn extend_lease(&self) -> Settling<'_> {
        self.held.acker.extend_lease()
    }

    fn settle(mut self, settlement: Settlement) -> Settling<'static> {
        self.held.acker.settle(settlement)
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("envelope", self.envelope())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settles by counting, on a shared counter, the settlements it was asked for.
    struct Counted(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl Counted {
        fn count(self) -> Settling<'static> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Settling::done(Ok(()))
        }
    }

    impl Acker for Counted {
        fn ack(self) -> Settling<'static> {
            self.count()
        }
        fn nack(self, _delay: Duration) -> Settling<'static> {
            self.count()
        }
        fn dead_letter(self, _failure: Failure) -> Settling<'static> {
            self.count()
        }
        fn release(self) -> Settling<'static> {
            self.count()
        }
        fn extend_lease(&self) -> Settling<'_> {
            Settling::done(Ok(()))
        }
    }

    /// The result of a settlement done at once.
    fn settled(mut settling: Settling<'_>) -> Result<()> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut settling).poll(&mut cx) {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("the settlement was not done at once"),
        }
    }

    #[test]
    fn a_delivery_moves_as_a_pointer_and_hands_its_acker_each_settlement() {
        assert_eq!(
            std::mem::size_of::<Delivery>(),
            2 * std::mem::size_of::<usize>()
        );
        let counted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let envelope = Envelope {
            id: crate::MessageId::from_string("m-1"),
            topic: crate::TopicName::new("orders").unwrap(),
            data: std::sync::Arc::new(serde_json::json!({"n": 1})),
            attempt: 1,
            max_attempts: 3,
            enqueued_at: crate::Timestamp::now(),
            traceparent: None,
            baggage: None,
            idempotency_key: None,
        };
        let delivery = || Delivery::new(envelope.clone(), Counted(counted.clone()));
        assert_eq!(delivery().envelope(), &envelope);
        settled(delivery().ack()).unwrap();
        settled(delivery().nack(Duration::ZERO)).unwrap();
        let failure = Failure::new(FailureKind::NonRetryable, "no");
        settled(delivery().dead_letter(failure)).unwrap();
        settled(delivery().release()).unwrap();
        settled(delivery().extend_lease()).unwrap();
        assert_eq!(counted.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[test]
    fn long_error_messages_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_FAILURE_MESSAGE);
        let failure = Failure::new(FailureKind::NonRetryable, long);
        assert!(failure.message.len() <= MAX_FAILURE_MESSAGE);
        assert!(failure.message.ends_with("… (cut)"));
        let short = Failure::new(FailureKind::NonRetryable, "short");
        assert_eq!(short.message, "short");
    }
}
