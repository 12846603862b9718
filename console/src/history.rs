//! The last hour of each trigger's outcomes in this process, for the trigger page's charts:
//! every [`SAMPLE_EVERY`] the sampler reads the module's counters (no broker call) and keeps
//! what changed since the previous reading, handler times as sparse buckets.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use tokio::task::JoinHandle;
use topiq::{HandlerTimes, QueueModule, TriggerSample};
use topiq_adapter::TriggerName;

/// How often the counters are read.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(SAMPLE_SECONDS as u64);

const SAMPLE_SECONDS: i64 = 10;

/// How many intervals are kept: one hour.
const KEPT: usize = 360;

/// What one trigger did in one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Interval {
    /// Handler calls that succeeded.
    pub(crate) succeeded: u64,
    /// Handler calls that failed.
    pub(crate) failed: u64,
    /// Handler calls per time bucket: (bucket, calls), only buckets with calls.
    handler_times: Vec<(u16, u64)>,
}

/// The intervals of every trigger, ending at one time.
struct Slice {
    end: Timestamp,
    triggers: HashMap<TriggerName, Interval>,
}

/// One minute of a trigger's history, as a chart shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Minute {
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
}

/// The kept intervals, and the reading the next one is measured from.
pub(crate) struct History {
    state: Mutex<HistoryState>,
}

#[derive(Default)]
struct HistoryState {
    slices: VecDeque<Slice>,
    last: HashMap<TriggerName, TriggerSample>,
}

impl History {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(HistoryState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HistoryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps what changed between the previous reading and `samples`, read at `now`.
    pub(crate) fn record(&self, samples: Vec<TriggerSample>, now: Timestamp) {
        let mut state = self.lock();
        let triggers = samples
            .iter()
            .filter_map(|sample| {
                let earlier = state.last.get(&sample.trigger)?;
                Some((sample.trigger.clone(), interval(earlier, sample)))
            })
            .collect();
        if !state.last.is_empty() {
            state.slices.push_back(Slice { end: now, triggers });
            while state.slices.len() > KEPT {
                state.slices.pop_front();
            }
        }
        state.last = samples
            .into_iter()
            .map(|sample| (sample.trigger.clone(), sample))
            .collect();
    }

    /// Failures of `trigger` in the last minute: the kept intervals that ended in it, and
    /// what `failed_now` (its failures so far, read now) adds to the last reading.
    pub(crate) fn failed_last_minute(
        &self,
        trigger: &TriggerName,
        failed_now: u64,
        now: Timestamp,
    ) -> u64 {
        let since = now - jiff::SignedDuration::from_secs(60);
        let state = self.lock();
        let kept: u64 = state
            .slices
            .iter()
            // Intervals wholly inside the minute (the one across its start would count
            // failures up to 70 s old).
            .filter(|slice| slice.end - jiff::SignedDuration::from_secs(SAMPLE_SECONDS) >= since)
            .filter_map(|slice| slice.triggers.get(trigger))
            .map(|interval| interval.failed)
            .sum();
        let since_reading = state
            .last
            .get(trigger)
            .map_or(0, |last| failed_now.saturating_sub(last.counts.failed));
        kept + since_reading
    }

    /// `trigger`'s last hour, one entry per minute, the oldest first; the current minute
    /// includes what `live` (a reading taken now) adds to the last kept one.
    pub(crate) fn minutes(
        &self,
        trigger: &TriggerName,
        live: Option<&TriggerSample>,
        now: Timestamp,
    ) -> Vec<Minute> {
        let state = self.lock();
        let now_minute = now.as_second().div_euclid(60);
        let mut merged: Vec<Interval> = vec![Interval::default(); 60];
        let mut add = |end: Timestamp, part: &Interval| {
            let age = now_minute - end.as_second().div_euclid(60);
            if (0..60).contains(&age) {
                merge(&mut merged[59 - age as usize], part);
            }
        };
        for slice in &state.slices {
            if let Some(part) = slice.triggers.get(trigger) {
                add(slice.end, part);
            }
        }
        if let (Some(live), Some(earlier)) = (live, state.last.get(trigger)) {
            add(now, &interval(earlier, live));
        }
        merged.iter().map(minute_of).collect()
    }
}

/// What `later` counted beyond `earlier`.
fn interval(earlier: &TriggerSample, later: &TriggerSample) -> Interval {
    let times = later.handler_times.since(&earlier.handler_times);
    Interval {
        succeeded: later
            .counts
            .succeeded
            .saturating_sub(earlier.counts.succeeded),
        failed: later.counts.failed.saturating_sub(earlier.counts.failed),
        handler_times: times
            .buckets()
            .iter()
            .enumerate()
            .filter(|(_, calls)| **calls > 0)
            .map(|(bucket, calls)| (bucket as u16, *calls))
            .collect(),
    }
}

fn merge(into: &mut Interval, part: &Interval) {
    into.succeeded += part.succeeded;
    into.failed += part.failed;
    for (bucket, calls) in &part.handler_times {
        match into.handler_times.iter_mut().find(|(b, _)| b == bucket) {
            Some((_, total)) => *total += calls,
            None => into.handler_times.push((*bucket, *calls)),
        }
    }
}

fn minute_of(interval: &Interval) -> Minute {
    let size = interval
        .handler_times
        .iter()
        .map(|(bucket, _)| *bucket as usize + 1)
        .max()
        .unwrap_or(0);
    let mut buckets = vec![0; size];
    for (bucket, calls) in &interval.handler_times {
        buckets[*bucket as usize] += calls;
    }
    let times = HandlerTimes::from_buckets(buckets);
    Minute {
        succeeded: interval.succeeded,
        failed: interval.failed,
        p50_ms: times.quantile_ms(0.5),
        p99_ms: times.quantile_ms(0.99),
    }
}

/// The task that reads the counters; aborted when dropped.
pub(crate) struct Sampler(JoinHandle<()>);

impl Sampler {
    pub(crate) fn start(module: QueueModule, history: Arc<History>) -> Self {
        Self(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SAMPLE_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                history.record(module.trigger_samples(), Timestamp::now());
            }
        }))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use topiq::TriggerCounts;
    use topiq_adapter::TopicName;

    fn sample(succeeded: u64, failed: u64, fast_calls: u64) -> TriggerSample {
        TriggerSample {
            topic: TopicName::new("orders").unwrap(),
            trigger: TriggerName::new("charge").unwrap(),
            counts: TriggerCounts {
                succeeded,
                failed,
                ..TriggerCounts::default()
            },
            handler_times: HandlerTimes::from_buckets(vec![0, 0, 0, 0, fast_calls]),
        }
    }

    #[test]
    fn minutes_hold_what_changed_between_readings() {
        let history = History::new();
        let start: Timestamp = "2026-12-05T10:00:05Z".parse().unwrap();
        let trigger = TriggerName::new("charge").unwrap();
        history.record(vec![sample(10, 1, 11)], start);
        let later = start + jiff::SignedDuration::from_secs(10);
        history.record(vec![sample(15, 3, 18)], later);
        let now = later + jiff::SignedDuration::from_secs(61);
        let live = sample(16, 3, 19);
        let minutes = history.minutes(&trigger, Some(&live), now);
        assert_eq!(minutes.len(), 60);
        // The kept interval ended in the minute before `now`'s, the live one in `now`'s.
        assert_eq!((minutes[58].succeeded, minutes[58].failed), (5, 2));
        assert_eq!((minutes[59].succeeded, minutes[59].failed), (1, 0));
        assert!(minutes[58].p50_ms.is_some());
        assert_eq!(minutes[10], Minute::default());
        assert_eq!(history.failed_last_minute(&trigger, 3, later), 2);
        assert_eq!(history.failed_last_minute(&trigger, 3, now), 0);
        // Failures since the last reading count at once.
        assert_eq!(history.failed_last_minute(&trigger, 5, now), 2);
    }
}
