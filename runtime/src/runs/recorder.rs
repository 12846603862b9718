//! Writing run events to the store off the handler's path, in batches (group commit).
//!
//! Events wait in one queue; a writer task takes everything queued, applies it in one store
//! call, and wakes whoever waits for those events. A settlement waits for its event to be
//! stored before the delivery is settled, so a crash loses no record: the message is
//! delivered again. While the store is down, the writer keeps the events and tries again,
//! settlements wait (so consumption pauses once every handler slot waits), and readiness
//! says so.
//!
//! Events nobody waits for (an enqueue, an attempt's start, progress) are held back for up to
//! [`HOLD`]: when the run's next event that someone waits for (its settlement) comes within
//! that time, both go in one write, so a run that is enqueued and handled quickly is written
//! once instead of twice or three times. A flush (`run_get`, `run_list`) writes what is held
//! at once, so one process still reads its own writes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use topiq_runs::{RunEvent, RunKey, SharedStore};

/// The most events one store call applies.
const MAX_BATCH: usize = 4_000;

/// Queued events past which `record` waits for the writer (the store is down or slow).
const HIGH_WATER: usize = 100_000;

/// The longest wait between two tries while the store is down.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

/// How long an event nobody waits for may be held back, waiting for its run's next event to
/// join it in one write. Short enough that another process sees a new run within 1 s.
const HOLD: Duration = Duration::from_millis(300);

/// Events nobody waits for yet, held back per run.
#[derive(Default)]
struct Held {
    by_run: foldhash::HashMap<RunKey, HeldRun>,
    /// Each held run's key with the time it is due, oldest first (a key whose run was taken
    /// out and held again has a stale entry, skipped by its due time).
    due: VecDeque<(Instant, RunKey)>,
    /// How many events are held.
    count: usize,
}

struct HeldRun {
    due: Instant,
    events: Vec<RunEvent>,
}

impl Held {
    fn hold(&mut self, event: RunEvent, due: Instant) {
        self.count += 1;
        match self.by_run.get_mut(&event.key) {
            Some(run) => run.events.push(event),
            None => {
                self.due.push_back((due, event.key.clone()));
                let key = event.key.clone();
                let events = vec![event];
                self.by_run.insert(key, HeldRun { due, events });
            }
        }
    }

    /// The held events of `key`'s run, taken out.
    fn take(&mut self, key: &RunKey) -> Vec<RunEvent> {
        let events = self
            .by_run
            .remove(key)
            .map(|run| run.events)
            .unwrap_or_default();
        self.count -= events.len();
        events
    }

    /// The held events that are due at `now` (all of them with `now` = `None`), taken out.
    fn take_due(&mut self, now: Option<Instant>) -> Vec<RunEvent> {
        let mut events = Vec::new();
        while let Some((due, _)) = self.due.front() {
            if now.is_some_and(|now| *due > now) {
                break;
            }
            let Some((due, key)) = self.due.pop_front() else {
                break;
            };
            if self.by_run.get(&key).is_some_and(|run| run.due == due) {
                events.extend(self.take(&key));
            }
        }
        events
    }

    /// When the oldest held event is due.
    fn next_due(&self) -> Option<Instant> {
        self.due.front().map(|(due, _)| *due)
    }
}

/// Events waiting to be written, and who waits for them.
#[derive(Default)]
struct Queue {
    events: Vec<RunEvent>,
    held: Held,
    /// How many events were ever queued.
    queued: u64,
    /// How many of those are stored (always a prefix: one writer, in queue order).
    stored: u64,
    /// Each waiter, with the count of stored events that wakes it.
    waiters: Vec<(u64, oneshot::Sender<()>)>,
    /// The writer stopped: nobody waits any more.
    closed: bool,
}

impl Queue {
    fn push(&mut self, events: impl IntoIterator<Item = RunEvent>) {
        let before = self.events.len();
        self.events.extend(events);
        self.queued += (self.events.len() - before) as u64;
    }

    /// Queues `events` with whatever is held of their runs ahead of them.
    fn push_with_held(&mut self, events: impl IntoIterator<Item = RunEvent>) {
        for event in events {
            let held = self.held.take(&event.key);
            self.push(held);
            self.push([event]);
        }
    }

    /// Queues the held events that are due at `now` (all of them with `now` = `None`).
    fn release(&mut self, now: Option<Instant>) {
        let due = self.held.take_due(now);
        self.push(due);
    }

    /// Events waiting, queued or held.
    fn waiting(&self) -> usize {
        self.events.len() + self.held.count
    }
}

/// The recorder's series, served at `/metrics`.
#[derive(Clone, Default)]
pub(crate) struct RecorderSeries {
    /// Store calls that applied events.
    pub(crate) writes: Counter,
    /// Events applied.
    pub(crate) events: Counter,
    /// 1 while the store takes writes, 0 while it refuses them.
    pub(crate) store_up: Gauge,
    /// Events waiting to be written.
    pub(crate) waiting: Gauge,
}

/// The run events of one process, on their way to the store.
pub(crate) struct Recorder {
    store: SharedStore,
    queue: Mutex<Queue>,
    queued: Notify,
    written: Notify,
    healthy: AtomicBool,
    series: RecorderSeries,
}

impl Recorder {
    /// A recorder writing to `store`; nothing is written until [`run`](Self::run) runs.
    pub(crate) fn new(store: SharedStore) -> Self {
        Self {
            store,
            queue: Mutex::new(Queue::default()),
            queued: Notify::new(),
            written: Notify::new(),
            healthy: AtomicBool::new(true),
            series: RecorderSeries::default(),
        }
    }

    /// Its series, to register with the module's metrics.
    pub(crate) fn series(&self) -> &RecorderSeries {
        &self.series
    }

    /// The store.
    pub(crate) fn store(&self) -> &SharedStore {
        &self.store
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `events` back (up to [`HOLD`]) to be written with their runs' next events,
    /// without waiting for them to be stored (waits only while the queue is past its
    /// high-water mark).
    pub(crate) async fn record(&self, events: impl IntoIterator<Item = RunEvent>) {
        let Some(events) = self.unless_written_in_process(events.into_iter()) else {
            return;
        };
        // A plain list from here on: the caller's iterator (often borrowing its deliveries)
        // must not live across the wait below.
        let events: Vec<RunEvent> = events.collect();
        loop {
            let written = self.written.notified();
            {
                let mut queue = self.queue();
                if queue.waiting() < HIGH_WATER {
                    let was_empty = queue.held.count == 0;
                    let due = Instant::now() + HOLD;
                    for event in events {
                        queue.held.hold(event, due);
                    }
                    drop(queue);
                    if was_empty {
                        // The writer sleeps with no deadline while nothing is held.
                        self.queued.notify_one();
                    }
                    return;
                }
            }
            self.queued.notify_one();
            written.await;
        }
    }

    /// Queues `events` and waits until they (and every event queued before them) are stored;
    /// false when the writer stopped first (shutdown with the store down): they are not.
    pub(crate) async fn record_stored(&self, events: impl IntoIterator<Item = RunEvent>) -> bool {
        match self.unless_written_in_process(events.into_iter()) {
            None => true,
            Some(events) => self.queue_stored(events).await,
        }
    }

    /// [`record_stored`](Self::record_stored) for a store the writer writes in batches
    /// (events [`unless_written_in_process`](Self::unless_written_in_process) gave back).
    pub(crate) async fn queue_stored(&self, events: impl IntoIterator<Item = RunEvent>) -> bool {
        let (done, stored) = oneshot::channel();
        {
            let mut queue = self.queue();
            queue.push_with_held(events);
            let target = queue.queued;
            if queue.stored >= target {
                return true;
            }
            if queue.closed {
                return false;
            }
            queue.waiters.push((target, done));
        }
        self.queued.notify_one();
        // A dropped sender means the writer stopped without storing them.
        stored.await.is_ok()
    }

    /// Writes `events` at once into a store in this process's memory (`None`); gives them
    /// back untouched for a store the writer writes in batches.
    pub(crate) fn unless_written_in_process<I: Iterator<Item = RunEvent>>(
        &self,
        mut events: I,
    ) -> Option<I> {
        let Some(count) = self.store.write_in_process(&mut events) else {
            return Some(events);
        };
        if count > 0 {
            self.series.writes.inc();
            self.series.events.inc_by(count);
        }
        None
    }

    /// Waits until every event recorded so far is stored (read-your-writes).
    pub(crate) async fn flush(&self) {
        self.queue().release(None);
        self.record_stored(std::iter::empty()).await;
    }

    /// False while the store refuses writes.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Writes queued events until `stop`, then writes what is left (until `deadline` runs
    /// out, if the store is down).
    pub(crate) async fn run(&self, stop: CancellationToken, deadline: Duration) {
        loop {
            let queued = self.queued.notified();
            let next_due = {
                let mut queue = self.queue();
                queue.release(Some(Instant::now()));
                queue.held.next_due()
            };
            if !self.write_some(&stop).await {
                let due = async {
                    match next_due {
                        Some(due) => tokio::time::sleep_until(due).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = queued => {}
                    () = due => {}
                    () = stop.cancelled() => break,
                }
            }
        }
        self.queue().release(None);
        let rest = async { while self.write_some(&CancellationToken::new()).await {} };
        if tokio::time::timeout(deadline, rest).await.is_err() {
            let lost = self.queue().waiting();
            tracing::error!(
                events = lost,
                "the runs store did not take the last run events before shutdown; those runs miss their latest changes"
            );
        }
        let mut queue = self.queue();
        queue.closed = true;
        // Dropping the senders lets every waiter go on.
        queue.waiters.clear();
    }

    /// Writes one batch, trying again while the store is down (until `stop`); false when
    /// nothing was queued.
    async fn write_some(&self, stop: &CancellationToken) -> bool {
        let batch: Vec<RunEvent> = {
            let mut queue = self.queue();
            let take = queue.events.len().min(MAX_BATCH);
            queue.events.drain(..take).collect()
        };
        if batch.is_empty() {
            return false;
        }
        let mut wait = Duration::from_millis(100);
        while let Err(err) = self.store.write(&batch).await {
            self.series.store_up.set(0);
            if self.healthy.swap(false, Ordering::Relaxed) {
                tracing::error!(error = %err, "the runs store refuses writes; settlements wait (consumption pauses) until it is back");
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => {
                    self.requeue(batch);
                    return false;
                }
            }
            wait = (wait * 2).min(MAX_RETRY_WAIT);
        }
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("the runs store takes writes again");
        }
        self.series.store_up.set(1);
        self.series.writes.inc();
        self.series.events.inc_by(batch.len() as u64);
        self.wake_waiters(batch.len());
        true
    }

    /// Puts an unwritten batch back at the head of the queue.
    fn requeue(&self, batch: Vec<RunEvent>) {
        let mut queue = self.queue();
        let rest = std::mem::take(&mut queue.events);
        queue.events = batch;
        queue.events.extend(rest);
    }

    /// Counts `written` more events stored and wakes the waiters they complete.
    fn wake_waiters(&self, written: usize) {
        let mut queue = self.queue();
        queue.stored += written as u64;
        let stored = queue.stored;
        let waiting = i64::try_from(queue.waiting()).unwrap_or(i64::MAX);
        self.series.waiting.set(waiting);
        let waiters = std::mem::take(&mut queue.waiters);
        for (target, done) in waiters {
            if target <= stored {
                let _ = done.send(());
            } else {
                queue.waiters.push((target, done));
            }
        }
        drop(queue);
        self.written.notify_waiters();
    }
}
