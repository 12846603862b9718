//! Per-trigger counters kept by this process, for `queue.stats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::TriggerMetrics;

const WINDOW_SECONDS: usize = 60;

/// Handler-time buckets: quarter powers of two of microseconds, up to about 2 minutes.
const TIME_BUCKETS: usize = 108;

/// Outcome counters of one trigger in this process since it started. Successes, retries,
/// dead letters and filtered messages are counted once, by the Prometheus series, and read
/// back from them.
pub(crate) struct TriggerCounters {
    failed: AtomicU64,
    /// Successes per second over the last minute: (second, count) per slot.
    recent: [(AtomicU64, AtomicU64); WINDOW_SECONDS],
    /// Handler calls per time bucket, for p50/p99.
    handler_times: [AtomicU64; TIME_BUCKETS],
    /// The same outcomes as Prometheus series.
    metrics: TriggerMetrics,
}

/// One trigger's handler outcomes in this process since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
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
    /// Median handler time since start (ms, ±10%); `None` before the first call.
    pub handler_p50_ms: Option<f64>,
    /// 99th-percentile handler time since start (ms, ±10%).
    pub handler_p99_ms: Option<f64>,
}

impl TriggerCounters {
    pub(crate) fn new(metrics: TriggerMetrics) -> Self {
        Self {
            failed: AtomicU64::new(0),
            recent: std::array::from_fn(|_| (AtomicU64::new(0), AtomicU64::new(0))),
            handler_times: std::array::from_fn(|_| AtomicU64::new(0)),
            metrics,
        }
    }
}

fn now_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl TriggerCounters {
    pub(crate) fn delivered(&self) {
        self.metrics.delivered();
    }

    /// A handler call that took `time`.
    pub(crate) fn handler_time(&self, time: Duration) {
        self.metrics.handler_time(time);
        let micros = time.as_micros().max(1) as f64;
        let bucket = ((micros.log2() * 4.0) as usize).min(TIME_BUCKETS - 1);
        self.handler_times[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// A message handled `latency` after it was enqueued.
    pub(crate) fn end_to_end(&self, latency: Duration) {
        self.metrics.end_to_end(latency);
    }

    /// A message handled successfully at `second` (Unix seconds).
    pub(crate) fn succeeded_at(&self, second: u64) {
        self.metrics.succeeded();
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
        self.metrics.retried();
    }

    pub(crate) fn dead_lettered(&self) {
        self.metrics.dead_lettered();
    }

    pub(crate) fn filtered(&self) {
        self.metrics.filtered();
    }

    pub(crate) fn cancelled(&self) {
        self.metrics.cancelled();
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
            succeeded: self.metrics.succeeded_so_far(),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.metrics.retried_so_far(),
            dead_lettered: self.metrics.dead_lettered_so_far(),
            filtered: self.metrics.filtered_so_far(),
            per_minute,
            handler_p50_ms: self.handler_quantile(0.5),
            handler_p99_ms: self.handler_quantile(0.99),
        }
    }

    /// The handler calls per time bucket since start.
    pub(crate) fn handler_times(&self) -> HandlerTimes {
        HandlerTimes(
            self.handler_times
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
        )
    }

    /// The `q` quantile of handler time in ms since start.
    fn handler_quantile(&self, q: f64) -> Option<f64> {
        self.handler_times().quantile_ms(q)
    }
}

/// Handler calls counted per time bucket (quarter powers of two of microseconds): what
/// p50/p99 are read from. Two snapshots' [`since`](Self::since) gives an interval's calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandlerTimes(Vec<u64>);

impl HandlerTimes {
    /// Counts per bucket, as [`buckets`](Self::buckets) gives them.
    pub fn from_buckets(buckets: Vec<u64>) -> Self {
        Self(buckets)
    }

    /// The calls per bucket, the fastest first.
    pub fn buckets(&self) -> &[u64] {
        &self.0
    }

    /// The calls counted here and not in `earlier` (an older snapshot of the same trigger).
    pub fn since(&self, earlier: &HandlerTimes) -> HandlerTimes {
        HandlerTimes(
            self.0
                .iter()
                .enumerate()
                .map(|(bucket, count)| {
                    count.saturating_sub(earlier.0.get(bucket).copied().unwrap_or(0))
                })
                .collect(),
        )
    }

    /// How many calls are counted.
    pub fn calls(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The `q` quantile of handler time in ms (±10%: a bucket's geometric middle); `None`
    /// when no call is counted.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.calls();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in self.0.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let micros = 2f64.powf((bucket as f64 + 0.5) / 4.0);
                return Some(micros.round() / 1000.0);
            }
        }
        None
    }
}
