//! A topic's bound: how many messages it holds, and publishers waiting for room.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use topiq_adapter::{Error, Result, TopicName};

use crate::shared::Counted;

/// The messages one topic holds against its `max_messages`.
pub(crate) struct Room {
    topic: TopicName,
    held: AtomicU64,
    max: u64,
    wait: Duration,
    freed: Notify,
    /// Publishers parked on `freed`; a freed place notifies only when there are some.
    waiting: AtomicUsize,
    /// The adapter's: once closed, nothing frees a place, and waiting publishers stop.
    closed: Arc<AtomicBool>,
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
    pub(crate) fn new(
        topic: TopicName,
        (max, wait): (u64, Duration),
        closed: Arc<AtomicBool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            topic,
            held: AtomicU64::new(0),
            max,
            wait,
            freed: Notify::new(),
            waiting: AtomicUsize::new(0),
            closed,
        })
    }

    /// The deadline of a publish starting now.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.wait
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

    /// A place, waiting until `deadline` for one to be freed (`None`: the publish timeout
    /// from when it starts waiting, so a publish with room reads no clock); then `BrokerFull`
    /// (`Closed` once the adapter is closed).
    pub(crate) async fn take_before(self: &Arc<Self>, deadline: Option<Instant>) -> Result<Place> {
        if let Some(place) = self.try_take() {
            return Ok(place);
        }
        let deadline = deadline.unwrap_or_else(|| self.deadline());
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let _waiting = Counted::new(&self.waiting);
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            if let Some(place) = self.try_take() {
                return Ok(place);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return self.try_take().ok_or_else(|| self.full());
            }
        }
    }

    /// Wakes every waiting publisher (the adapter closed).
    pub(crate) fn wake_all(&self) {
        self.freed.notify_waiters();
    }

    /// The error a publish to the full topic gets.
    pub(crate) fn full(&self) -> Error {
        Error::BrokerFull {
            message: format!(
                "topic {} holds {} messages, the in-memory adapter's max_messages, and none was freed in time (a publish waits up to publish_timeout, {:?}); nothing was published. It takes messages again once its triggers settle some; raise max_messages in the adapter's config to hold more",
                self.topic, self.max, self.wait
            ),
            source: None,
        }
    }
}
