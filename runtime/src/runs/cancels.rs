//! Cancels reaching this instance: the runs store is polled for cancel requests (from any
//! instance), a run running here is stopped, and a cancelled run delivered here later is
//! settled without its handler.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use topiq_adapter::Timestamp;
use topiq_runs::{RunKey, SharedStore};

/// How often the store is asked for new cancels: a cancel reaches every instance within this.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(250);

/// How far back each poll looks again, for instances whose clocks differ a little.
const CLOCK_SLACK: Duration = Duration::from_secs(5);

/// The runs cancelled, and the runs running here with their cancel signals.
#[derive(Default)]
pub(crate) struct Cancels {
    running: Mutex<foldhash::HashMap<RunKey, RunCancel>>,
    /// Each cancelled run, with when its cancel was seen.
    cancelled: Mutex<foldhash::HashMap<RunKey, Timestamp>>,
    /// How many runs `cancelled` holds: while none, a run's check takes no lock.
    cancelled_count: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A run's cancel signal: given once, checked with a load (every run makes one and clones it,
/// for the map of running runs and for the handler's message).
pub(crate) type RunCancel = topiq_adapter_kit::Signal;

/// While alive, a running run can be cancelled through its signal.
pub(crate) struct Running<'a> {
    cancels: &'a Cancels,
    key: RunKey,
    signal: RunCancel,
}

impl Running<'_> {
    /// Given when the run is cancelled.
    pub(crate) fn signal(&self) -> &RunCancel {
        &self.signal
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        lock(&self.cancels.running).remove(&self.key);
    }
}

impl Cancels {
    /// True when `key`'s run was cancelled.
    pub(crate) fn is_cancelled(&self, key: &RunKey) -> bool {
        self.cancelled_count.load(Ordering::Acquire) > 0 && lock(&self.cancelled).contains_key(key)
    }

    /// Registers `key` as running here until the guard drops; its signal is given already
    /// when the run was cancelled.
    pub(crate) fn start(&self, key: RunKey) -> Running<'_> {
        let signal = RunCancel::default();
        lock(&self.running).insert(key.clone(), signal.clone());
        if self.is_cancelled(&key) {
            signal.cancel();
        }
        Running {
            cancels: self,
            key,
            signal,
        }
    }

    /// Marks `key` cancelled and stops it if it runs here.
    pub(crate) fn cancel(&self, key: &RunKey) {
        {
            let mut cancelled = lock(&self.cancelled);
            cancelled.insert(key.clone(), Timestamp::now());
            self.cancelled_count
                .store(cancelled.len(), Ordering::Release);
        }
        if let Some(signal) = lock(&self.running).get(key) {
            signal.cancel();
        }
    }

    /// Polls `store` for cancels every [`POLL_EVERY`] until `stop`, starting with those of
    /// the last `keep` (a run cancelled while waiting may be delivered that much later);
    /// forgets cancels older than `keep`.
    pub(crate) async fn poll(&self, store: &SharedStore, stop: &CancellationToken, keep: Duration) {
        let keep = jiff::SignedDuration::try_from(keep).unwrap_or(jiff::SignedDuration::MAX);
        let slack = jiff::SignedDuration::try_from(CLOCK_SLACK).unwrap_or_default();
        let mut since = Timestamp::now().checked_sub(keep).unwrap_or(Timestamp::MIN);
        loop {
            let asked = Timestamp::now();
            match store.cancels_since(since).await {
                Ok(keys) => {
                    for key in &keys {
                        self.cancel(key);
                    }
                    since = asked.checked_sub(slack).unwrap_or(asked);
                }
                Err(err) => tracing::warn!(error = %err, "cannot read cancels from the runs store"),
            }
            let horizon = asked.checked_sub(keep).unwrap_or(Timestamp::MIN);
            {
                let mut cancelled = lock(&self.cancelled);
                cancelled.retain(|_, seen| *seen >= horizon);
                self.cancelled_count
                    .store(cancelled.len(), Ordering::Release);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
    }
}
