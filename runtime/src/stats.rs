//! Per-trigger counters kept by this process, for `queue.stats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

const WINDOW_SECONDS: usize = 60;

/// Outcome counters of one trigger in this process since it started.
pub(crate) struct TriggerCounters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    filtered: AtomicU64,
    /// Successes per second over the last minute: (second, count) per slot.
    recent: [(AtomicU64, AtomicU64); WINDOW_SECONDS],
}

/// One trigger's handler outcomes in this process since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TriggerCounts {
    /// Handler calls that succeeded.
    pub succeeded: u64,
    /// Handler calls that failed (retried or dead-lettered).
    pub failed: u64,
    /// Failures that were retried.
    pub retried: u64,
    /// Messages this process moved to the DLQ.
    pub dead_lettered: u64,
    /// Messages acknowledged without a call because the condition was false.
    pub filtered: u64,
    /// Successes in the last 60 seconds.
    pub per_minute: u64,
}

impl Default for TriggerCounters {
    fn default() -> Self {
        Self {
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            recent: std::array::from_fn(|_| (AtomicU64::new(0), AtomicU64::new(0))),
        }
    }
}

fn now_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl TriggerCounters {
    pub(crate) fn succeeded(&self) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
        let second = now_second();
        let (slot_second, count) = &self.recent[(second % WINDOW_SECONDS as u64) as usize];
        if slot_second.swap(second, Ordering::AcqRel) != second {
            count.store(1, Ordering::Release);
        } else {
            count.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn filtered(&self) {
        self.filtered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> TriggerCounts {
        let now = now_second();
        let per_minute = self
            .recent
            .iter()
            .filter(|(second, _)| {
                let second = second.load(Ordering::Acquire);
                second + (WINDOW_SECONDS as u64) > now && second <= now
            })
            .map(|(_, count)| count.load(Ordering::Acquire))
            .sum();
        TriggerCounts {
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
            per_minute,
        }
    }
}
