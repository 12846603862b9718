//! Many waits bounded by their deadlines with one timer.
//!
//! A tokio timer armed and cleared for every publish or settlement costs some 700
//! instructions a wait (the wheel's insert and removal under the driver's lock, and the
//! timer's own polls): as much as a tenth of what the broker's client spends on a message.
//! [`Deadlines`] bounds any number of waits with one task instead, which wakes every `tick`,
//! notes the time and wakes the waits still pending, each of which then compares its own
//! deadline with that time. A wait done on its first poll costs nothing more; one that waits
//! pays a registration with a `Notify` (a lock and a list push) and its removal.
//!
//! A wait therefore ends at the first tick at or after its deadline: up to one tick late,
//! never early (unless the ticking task is gone, its runtime shut down: then every wait ends
//! at once, as timed out, rather than never).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::{Instant, MissedTickBehavior};

/// Bounds waits by their deadlines, up to one `tick` late; clones share the ticking task,
/// which ends once the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Deadlines(Arc<Clock>);

/// What the ticking task keeps up to date.
#[derive(Debug)]
struct Clock {
    /// The instant the tick times are counted from.
    start: Instant,
    /// The time of the last tick, in nanoseconds since `start`.
    ticked: AtomicU64,
    /// Woken on every tick.
    tick: Notify,
}

impl Deadlines {
    /// Deadlines noticed every `tick` (at least a millisecond), by a task spawned on the
    /// current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn new(tick: Duration) -> Self {
        let clock = Arc::new(Clock {
            start: Instant::now(),
            ticked: AtomicU64::new(0),
            tick: Notify::new(),
        });
        let stopped = Stopped(Arc::downgrade(&clock));
        tokio::spawn(keep_time(stopped, tick.max(Duration::from_millis(1))));
        Self(clock)
    }

    /// The tick for waits bounded by `timeout`: a tenth of it, between 10 ms and 1 s, so a
    /// wait ends at most a tenth (or a second) past its timeout.
    pub fn tick_for(timeout: Duration) -> Duration {
        (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Runs `work` until it is done (`Some`), or until a tick finds `deadline` passed
    /// (`None`: `work` is left unfinished, and dropped with the returned future).
    pub fn bound<F: Future>(&self, deadline: Instant, work: F) -> Bounded<'_, F> {
        Bounded {
            work,
            tick: self.0.tick.notified(),
            clock: &self.0,
            deadline,
        }
    }
}

pin_project! {
    /// [`Deadlines::bound`]'s future. (Written out, not an `async fn`: one of those would keep
    /// `work` twice, as its argument and as the pinned value it polls.)
    pub struct Bounded<'a, F> {
        #[pin]
        work: F,
        // Registered for the next tick once `work` waits.
        #[pin]
        tick: Notified<'a>,
        clock: &'a Clock,
        deadline: Instant,
    }
}

impl<F: Future> Future for Bounded<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(output) = this.work.poll(cx) {
            return Poll::Ready(Some(output));
        }
        loop {
            if this.clock.passed(*this.deadline) {
                return Poll::Ready(None);
            }
            // Registered for the next tick; one that came since this wait's last look is
            // ready at once, and the deadline is looked at again.
            if this.tick.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.tick.set(this.clock.tick.notified());
        }
    }
}

impl Clock {
    /// Whether the last tick came at or after `deadline`.
    fn passed(&self, deadline: Instant) -> bool {
        let due = nanos(deadline.saturating_duration_since(self.start));
        due <= self.ticked.load(Ordering::Acquire)
    }
}

/// Every `tick`, until the deadlines are dropped: notes the time, wakes every wait. (The
/// clock comes as a [`Stopped`], so that it is told even if the task is dropped before its
/// first poll.)
async fn keep_time(clock: Stopped, tick: Duration) {
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let now = ticks.tick().await;
        let Some(clock) = clock.0.upgrade() else {
            return;
        };
        let since_start = nanos(now.saturating_duration_since(clock.start));
        clock.ticked.fetch_max(since_start, Ordering::AcqRel);
        clock.tick.notify_waiters();
    }
}

/// Dropped with the ticking task. Should the task stop while the deadlines are still in use
/// (its runtime shut down, the adapter used from another one), every wait, now and later,
/// ends at once as timed out: with no tick to come, it would otherwise wait forever.
struct Stopped(Weak<Clock>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(clock) = self.0.upgrade() {
            clock.ticked.store(u64::MAX, Ordering::Release);
            clock.tick.notify_waiters();
        }
    }
}

/// A duration in nanoseconds (saturating at about 584 years).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    #[tokio::test(start_paused = true)]
    async fn work_done_in_time_gives_its_output() {
        let deadlines = Deadlines::new(TICK);
        let deadline = Instant::now() + Duration::from_secs(1);
        assert_eq!(deadlines.bound(deadline, async { 7 }).await, Some(7));
        let waits = tokio::time::sleep(Duration::from_millis(500));
        assert_eq!(deadlines.bound(deadline, waits).await, Some(()));
    }

    #[tokio::test(start_paused = true)]
    async fn work_never_done_ends_at_the_first_tick_past_its_deadline() {
        let deadlines = Deadlines::new(TICK);
        let started = Instant::now();
        let timeout = Duration::from_millis(1_050);
        let never = std::future::pending::<()>();
        assert_eq!(deadlines.bound(started + timeout, never).await, None);
        let waited = started.elapsed();
        assert!(
            waited >= timeout && waited <= timeout + TICK,
            "ended after {waited:?}, not within a tick past {timeout:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_wait_ends_at_its_own_deadline() {
        let deadlines = Deadlines::new(TICK);
        let started = Instant::now();
        let wait = |millis| {
            let deadlines = deadlines.clone();
            tokio::spawn(async move {
                let deadline = started + Duration::from_millis(millis);
                deadlines
                    .bound(deadline, std::future::pending::<()>())
                    .await;
                started.elapsed()
            })
        };
        let (short, long) = (wait(300), wait(2_000));
        let (short, long) = (short.await.unwrap(), long.await.unwrap());
        assert!(short >= Duration::from_millis(300) && short <= Duration::from_millis(400));
        assert!(long >= Duration::from_millis(2_000) && long <= Duration::from_millis(2_100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_first_polled_after_its_deadline_passed_ends_at_once() {
        let deadlines = Deadlines::new(TICK);
        let started = Instant::now();
        let wait = deadlines.bound(started + TICK, std::future::pending::<()>());
        // Ticks come and go before the wait is first polled.
        tokio::time::sleep(TICK * 3).await;
        let polled = Instant::now();
        assert_eq!(wait.await, None);
        assert_eq!(polled.elapsed(), Duration::ZERO);
    }

    #[test]
    fn waits_end_as_timed_out_once_the_ticking_task_is_gone() {
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let deadlines = first.block_on(async { Deadlines::new(TICK) });
        drop(first);
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let far = second.block_on(async { Instant::now() + Duration::from_secs(3_600) });
        let never = std::future::pending::<()>();
        let waited = second.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), deadlines.bound(far, never)).await
        });
        assert_eq!(waited, Ok(None), "a wait with no ticking task hung");
    }

    #[tokio::test(start_paused = true)]
    async fn the_ticking_task_ends_with_the_last_clone() {
        let deadlines = Deadlines::new(TICK);
        let clock = Arc::downgrade(&deadlines.0);
        drop(deadlines);
        tokio::time::sleep(TICK * 2).await;
        assert!(clock.upgrade().is_none());
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            0
        );
    }
}
