//! The solo lane: a second confirming channel that carries at most one publish at a time,
//! sent and awaited by its caller with no hand-over to the publishing task, so its confirm
//! (and a return it carries) can only be that publish's own.
//!
//! A publish on the lane is bounded by its deadline through the lane's watchdog, a task that
//! sleeps until the deadline of the publish in flight and times it out if it is still
//! there: a timer armed and cleared for every publish costs some 560 instructions in the
//! timer's own functions (the wheel's insert, re-registration and removal), the watchdog's
//! bookkeeping a lock and a waker.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use futures::task::AtomicWaker;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::Notify;
use tokio::time::Instant;
use topiq_adapter::Result;

use crate::confirms::Published;
use crate::unavailable;

/// A channel in confirm mode with at most one publish in flight.
pub(crate) struct SoloLane {
    /// Its own channel: the task's publishes never share it.
    pub(crate) channel: Channel,
    /// Taken by the publish in flight, until its confirm is read (or, for a publish given up
    /// on, until every confirm of the channel is in; for good when that never came and the
    /// channel was closed, until the session replaces the pair).
    pub(crate) busy: AtomicBool,
    /// Times out the publish in flight at its deadline.
    watchdog: Arc<Watchdog>,
}

impl SoloLane {
    /// Runs a publish that holds the lane (its [`SoloTurn::publish`]) until it is done
    /// (`Some`), or `deadline` passed (`None`: dropped, it leaves the lane to be freed once
    /// its confirm is in).
    pub(crate) async fn bound<F: Future>(
        &self,
        publish: Pin<&mut F>,
        deadline: Instant,
    ) -> Option<F::Output> {
        self.watchdog.bound(publish, deadline).await
    }

    /// The lane on `channel` (confirm mode already on), with its watchdog started.
    pub(crate) fn new(channel: Channel) -> Self {
        let watchdog = Arc::new(Watchdog::default());
        tokio::spawn(Arc::clone(&watchdog).watch());
        Self {
            channel,
            busy: AtomicBool::new(false),
            watchdog,
        }
    }

    /// Frees the lane once every confirm of its channel is in (or the channel failed). A
    /// confirm that never comes within [`GIVEN_UP_WAIT`] (lapin's confirms have hung) closes
    /// the channel instead, which rejects it: the session then opens a new pair of channels,
    /// and until then publishes go through the task.
    async fn free_when_confirmed(self: Arc<Self>) {
        match tokio::time::timeout(GIVEN_UP_WAIT, self.channel.wait_for_confirms()).await {
            Ok(_) => self.busy.store(false, Ordering::Release),
            Err(_) => {
                let closing = self
                    .channel
                    .close(200, "a publish confirm never came".into());
                let _ = tokio::time::timeout(GIVEN_UP_WAIT, closing).await;
            }
        }
    }
}

impl Drop for SoloLane {
    fn drop(&mut self) {
        self.watchdog.stop();
    }
}

/// How long a publish given up on may hold the solo lane waiting for its confirm.
const GIVEN_UP_WAIT: Duration = Duration::from_secs(30);

/// The solo lane, held by one publish.
pub(crate) struct SoloTurn<'a> {
    /// The lane held (its `busy` flag set by [`SoloTurn::take`]).
    lane: &'a Arc<SoloLane>,
    /// Set once the publish's confirm is read: the lane is free again.
    answered: bool,
}

impl<'a> SoloTurn<'a> {
    /// The lane, if no publish holds it.
    pub(crate) fn take(lane: &'a Arc<SoloLane>) -> Option<Self> {
        lane.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Self {
                lane,
                answered: false,
            })
    }

    /// Sends the publish (its properties made here) and reads its confirm: a return it
    /// carries is this publish's own, the only one in flight on the lane.
    pub(crate) async fn publish(
        mut self,
        (exchange, routing_key): (&str, &str),
        payload: &[u8],
        properties: impl FnOnce() -> BasicProperties,
    ) -> Result<Published> {
        let sending = self.lane.channel.basic_publish(
            exchange.into(),
            routing_key.into(),
            mandatory(),
            payload,
            properties(),
        );
        let confirmation = match sending.await {
            Ok(confirm) => confirm.await,
            Err(err) => Err(err),
        };
        self.answered = true;
        match confirmation {
            Ok(Confirmation::Ack(Some(_))) => Ok(Published::Returned),
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(Published::Stored),
            Ok(Confirmation::Nack(_)) => Ok(Published::Refused),
            Err(err) => Err(unavailable("publish")(err)),
        }
    }
}

impl Drop for SoloTurn<'_> {
    fn drop(&mut self) {
        if self.answered {
            self.lane.busy.store(false, Ordering::Release);
            return;
        }
        // Given up on (or timed out) while in flight: its confirm (and any return with it)
        // may still come, so the lane is freed only once every confirm of its channel is in,
        // the return read and dropped with them. Without a runtime (shutting down) it stays
        // taken and publishes go through the task.
        let lane = Arc::clone(self.lane);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(lane.free_when_confirmed());
        }
    }
}

/// Every publish is `mandatory`: one routed to no queue comes back instead of vanishing.
pub(crate) fn mandatory() -> BasicPublishOptions {
    BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    }
}

/// How long the watchdog sleeps with no deadline ahead (a publish due sooner wakes it).
const IDLE_LOOK: Duration = Duration::from_secs(30);

/// Times out the lane's publish in flight at its deadline.
#[derive(Default)]
struct Watchdog {
    state: Mutex<Watch>,
    /// The last publish (by number) that ran out of time.
    expired: AtomicU64,
    /// The publish in flight, woken when it runs out of time.
    waker: AtomicWaker,
    /// Wakes the watchdog: a deadline earlier than it sleeps to, or the lane dropped.
    nudge: Notify,
}

/// What the watchdog watches.
#[derive(Default)]
struct Watch {
    /// The number of the last publish started (from 1).
    started: u64,
    /// Its deadline, until the watchdog has looked at it after it passed.
    deadline: Option<Instant>,
    /// When the watchdog wakes next, while it sleeps.
    wakes_at: Option<Instant>,
    /// The lane is gone: the watchdog ends.
    stopped: bool,
}

impl Watchdog {
    fn lock(&self) -> MutexGuard<'_, Watch> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `publish` until it is done (`Some`), or `deadline` passed (`None`).
    async fn bound<F: Future>(
        &self,
        mut publish: Pin<&mut F>,
        deadline: Instant,
    ) -> Option<F::Output> {
        let number = self.start(deadline);
        poll_fn(|cx| {
            if let Poll::Ready(output) = publish.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            self.waker.register(cx.waker());
            if self.expired.load(Ordering::Acquire) == number {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Watches a publish due by `deadline`; its number.
    fn start(&self, deadline: Instant) -> u64 {
        let mut watch = self.lock();
        watch.started += 1;
        watch.deadline = Some(deadline);
        let sooner = watch.wakes_at.is_some_and(|wakes| deadline < wakes);
        let number = watch.started;
        drop(watch);
        if sooner {
            self.nudge.notify_one();
        }
        number
    }

    /// Ends the watchdog's task.
    fn stop(&self) {
        self.lock().stopped = true;
        self.nudge.notify_one();
    }

    /// Until stopped: sleeps until the deadline of the publish in flight (or [`IDLE_LOOK`],
    /// with none), and times that publish out if it passed.
    async fn watch(self: Arc<Self>) {
        loop {
            let Some(wakes_at) = self.look(Instant::now()) else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep_until(wakes_at) => {}
                () = self.nudge.notified() => {}
            }
        }
    }

    /// Times out the publish in flight if its deadline passed by `now`; when to look again
    /// (`None` once stopped). A deadline is kept until it passed, even once its publish is
    /// done: timing out a publish no longer in flight only wakes its task once.
    fn look(&self, now: Instant) -> Option<Instant> {
        let mut watch = self.lock();
        if watch.stopped {
            return None;
        }
        let wakes_at = match watch.deadline {
            Some(deadline) if deadline <= now => {
                watch.deadline = None;
                self.expired.store(watch.started, Ordering::Release);
                self.waker.wake();
                now + IDLE_LOOK
            }
            Some(deadline) => deadline,
            None => now + IDLE_LOOK,
        };
        watch.wakes_at = Some(wakes_at);
        Some(wakes_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_times_out_a_publish_at_its_own_deadline() {
        let watchdog = Arc::new(Watchdog::default());
        tokio::spawn(Arc::clone(&watchdog).watch());
        tokio::task::yield_now().await;
        let start = Instant::now();
        let second = Duration::from_secs(1);
        // Done by its deadline: its answer.
        assert_eq!(
            watchdog.bound(pin!(async { 7 }), start + second / 20).await,
            Some(7)
        );
        // Waits past the first one's deadline, done by its own.
        let waits = pin!(tokio::time::sleep(second));
        assert_eq!(watchdog.bound(waits, start + 2 * second).await, Some(()));
        // Never done: timed out at its deadline, well before the watchdog's idle look.
        let started = Instant::now();
        let never = pin!(std::future::pending::<()>());
        assert_eq!(watchdog.bound(never, started + 2 * second).await, None);
        let waited = started.elapsed();
        assert!(
            waited >= 2 * second && waited < 3 * second,
            "timed out after {waited:?}, not at its deadline"
        );
        watchdog.stop();
    }
}
