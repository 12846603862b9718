//! A topic's bound: how many messages it holds, and publishers waiting for room.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use topiq_adapter::{Error, Result, TopicName};

/// The messages one topic holds against its `max_messages`.
pub(crate) struct Room {
    topic: TopicName,
    held: AtomicU64,
    max: u64,
    wait: Duration,
    freed: Notify,
    /// Publishers parked on `freed`; a freed place notifies only when there are some.
    waiting: AtomicUsize,
}

/// One message's place in its topic's room, freed when the message is dropped by the last
/// trigger queue holding it.
pub(crate) struct Place(Arc<Room>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::SeqCst);
        if self.0.waiting.load(Ordering::SeqCst) > 0 {
            self.0.freed.notify_one();
        }
    }
}

impl Room {
    pub(crate) fn new(topic: TopicName, max: u64, wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            topic,
            held: AtomicU64::new(0),
            max,
            wait,
            freed: Notify::new(),
            waiting: AtomicUsize::new(0),
        })
    }

    /// A place now, if the topic has room.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Place> {
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held < self.max).then_some(held + 1)
            })
            .ok()
            .map(|_| Place(Arc::clone(self)))
    }

    /// A place without looking at the bound: for messages already counted once (a redrive
    /// of dead-lettered ones), which must not fail for want of room.
    pub(crate) fn take_over_bound(self: &Arc<Self>) -> Place {
        self.held.fetch_add(1, Ordering::SeqCst);
        Place(Arc::clone(self))
    }

    /// A place, waiting up to the publish timeout for one to be freed; then `BrokerFull`.
    pub(crate) async fn take(self: &Arc<Self>) -> Result<Place> {
        if let Some(place) = self.try_take() {
            return Ok(place);
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let _waiting = Waiting::new(&self.waiting);
            if let Some(place) = self.try_take() {
                return Ok(place);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return self.try_take().ok_or_else(|| self.full());
            }
        }
    }

    /// The error a publish to the full topic gets.
    pub(crate) fn full(&self) -> Error {
        Error::BrokerFull {
            message: format!(
                "topic {} holds {} messages, the in-memory adapter's max_messages, and none was freed within its publish_timeout ({:?}); nothing was published. It takes publishes again once its triggers settle messages; raise max_messages in the adapter's config to hold more",
                self.topic, self.max, self.wait
            ),
            source: None,
        }
    }
}

/// Counts a publisher as waiting for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Self(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
