//! Runs kept in this process's memory: the in-memory adapter's default, gone with the process.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use futures::future::{BoxFuture, FutureExt};
use topiq_adapter::{MessageId, Timestamp, TriggerName};

use crate::control::{ControlStore, PausedTrigger, Schedule, ScheduleSpec};
use crate::event::{Change, RunEvent};
use crate::model::{Run, RunKey};
use crate::store::{Cursor, Retention, RunPage, RunQuery, RunStore, StoreError};

/// The most finished runs a memory store keeps by default: past it, the oldest finished runs
/// go first, whatever the retention says (a process on the in-memory adapter handling 1,000
/// messages a second would otherwise hold a week of runs, some 600 million).
pub const MEMORY_FINISHED_LIMIT: usize = 100_000;

/// Runs in a hash map (each message's events find its run in constant time, however many
/// runs are kept; seeded per process, as message ids can come from any publisher); one lock
/// makes each `apply` atomic.
#[derive(Debug)]
pub struct MemoryStore {
    kept: Mutex<Kept>,
    control: Mutex<Control>,
    /// How many finished runs it keeps.
    limit: usize,
}

/// The runs, and how many of them are finished.
#[derive(Debug, Default)]
struct Kept {
    /// Boxed: a run is 408 bytes, and the map moves every entry each time it grows.
    runs: foldhash::HashMap<RunKey, Box<Run>>,
    finished: usize,
}

/// The paused triggers and the schedules, by name.
#[derive(Debug, Default)]
struct Control {
    paused: BTreeMap<TriggerName, Timestamp>,
    schedules: BTreeMap<String, Schedule>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_limit(MEMORY_FINISHED_LIMIT)
    }
}

impl MemoryStore {
    /// An empty store keeping at most [`MEMORY_FINISHED_LIMIT`] finished runs.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store keeping at most `limit` finished runs (the oldest go first).
    pub fn with_limit(limit: usize) -> Self {
        Self {
            kept: Mutex::new(Kept::default()),
            control: Mutex::new(Control::default()),
            limit: limit.max(1),
        }
    }

    fn kept(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `events`; returns the keys they touched, in the order each first appears.
    fn apply_now(&self, events: &[RunEvent], kept: &mut Kept) -> Vec<RunKey> {
        let mut touched: Vec<RunKey> = Vec::new();
        for event in events {
            if self.apply_one(event, None, kept) && !touched.contains(&event.key) {
                touched.push(event.key.clone());
            }
        }
        self.evict(kept);
        touched
    }

    /// Applies `events` in order, without noting which runs they touched.
    fn apply_each<E: std::borrow::Borrow<RunEvent>>(&self, events: impl IntoIterator<Item = E>) {
        let mut kept = self.kept();
        for event in events {
            self.apply_one(event.borrow(), None, &mut kept);
        }
        self.evict(&mut kept);
    }

    /// Applies one event (beginning its run with `begun` when the store has none, if it was
    /// made already); false when it starts no run and finds none.
    fn apply_one(&self, event: &RunEvent, begun: Option<Box<Run>>, kept: &mut Kept) -> bool {
        let Kept { runs, finished } = kept;
        let run = match begun {
            // An enqueue's run, made already: nearly always new, so the key is looked up once.
            Some(begun) => runs.entry(event.key.clone()).or_insert(begun),
            None => match runs.get_mut(&event.key) {
                Some(run) => run,
                None => match Run::from_event(event) {
                    Some(run) => runs.entry(event.key.clone()).or_insert(Box::new(run)),
                    None => return false,
                },
            },
        };
        let was_finished = run.state.is_finished();
        run.apply(event);
        match (was_finished, run.state.is_finished()) {
            (false, true) => *finished += 1,
            (true, false) => *finished -= 1,
            _ => {}
        }
        true
    }

    /// Past its limit, drops the oldest finished runs (a tenth more, so it is not at the
    /// limit again at once).
    fn evict(&self, kept: &mut Kept) {
        let Kept { runs, finished } = kept;
        if *finished > self.limit {
            *finished -= evict_finished(runs, *finished - self.limit + self.limit / 10);
        }
    }

    fn list_now(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        let (limit, cursor) = query.validate()?;
        let kept = self.kept();
        let mut selected: Vec<&Run> = kept
            .runs
            .values()
            .map(|run| &**run)
            .filter(|run| query.matches(run))
            .filter(|run| cursor.as_ref().is_none_or(|cursor| cursor.precedes(run)))
            .collect();
        selected.sort_by(|a, b| {
            let order = |run: &Run| (run.enqueued_at, run.id.to_string(), run.trigger.clone());
            order(b).cmp(&order(a))
        });
        let more = selected.len() > limit;
        selected.truncate(limit);
        let next_cursor = match selected.last() {
            Some(last) if more => Some(Cursor::after(last).encode()),
            _ => None,
        };
        Ok(RunPage {
            runs: selected.into_iter().cloned().collect(),
            next_cursor,
        })
    }

    fn sweep_now(&self, retention: Retention) -> u64 {
        let mut kept = self.kept();
        let swept = sweep_map(&mut kept.runs, retention);
        kept.finished -= swept;
        swept as u64
    }
}

/// Removes up to `count` finished runs, oldest message first (message ids are time-ordered);
/// returns how many. The `count` smallest keys are selected, not sorted: linear in the runs
/// kept, and it runs once every tenth of the limit.
fn evict_finished(runs: &mut foldhash::HashMap<RunKey, Box<Run>>, count: usize) -> usize {
    if count == 0 {
        return 0;
    }
    let mut finished: Vec<&RunKey> = runs
        .iter()
        .filter(|(_, run)| run.state.is_finished())
        .map(|(key, _)| key)
        .collect();
    if finished.len() > count {
        finished.select_nth_unstable(count - 1);
        finished.truncate(count);
    }
    let oldest: Vec<RunKey> = finished.into_iter().cloned().collect();
    for key in &oldest {
        runs.remove(key);
    }
    oldest.len()
}

/// Removes the finished runs `retention` no longer keeps; returns how many (all finished).
fn sweep_map(runs: &mut foldhash::HashMap<RunKey, Box<Run>>, retention: Retention) -> usize {
    let before = runs.len();
    runs.retain(|_, run| match run.finished_at {
        Some(finished) if run.state.is_finished() => {
            let cutoff = if run.state.is_success() {
                retention.succeeded_before
            } else {
                retention.failed_before
            };
            finished >= cutoff
        }
        _ => true,
    });
    before - runs.len()
}

impl RunStore for MemoryStore {
    fn apply<'a>(&'a self, events: &'a [RunEvent]) -> BoxFuture<'a, Result<Vec<Run>, StoreError>> {
        let mut kept = self.kept();
        let touched = self.apply_now(events, &mut kept);
        let touched = touched
            .iter()
            .filter_map(|key| kept.runs.get(key).map(|run| Run::clone(run)))
            .collect();
        async move { Ok(touched) }.boxed()
    }

    fn write<'a>(&'a self, events: &'a [RunEvent]) -> BoxFuture<'a, Result<(), StoreError>> {
        self.apply_each(events);
        async { Ok(()) }.boxed()
    }

    /// Applies `events` in order. The run an enqueue begins is made before the lock is
    /// taken (the lock is let go for it): making it writes its data's text (a few thousand
    /// instructions), which the writers of other runs (the handlers' starts and ends, on
    /// other threads) need not wait for. Every other event is applied under the lock taken
    /// last (a run another event begins is made there: those usually find theirs). So one
    /// call is not applied at once: a reader may see part of its runs, each run whole.
    fn write_in_process(&self, events: &mut dyn Iterator<Item = RunEvent>) -> Option<u64> {
        let mut locked: Option<MutexGuard<'_, Kept>> = None;
        let mut applied = 0;
        for event in events {
            applied += 1;
            let begun = if matches!(event.change, Change::Enqueued(_)) {
                if let Some(mut kept) = locked.take() {
                    self.evict(&mut kept);
                }
                Run::from_event(&event).map(Box::new)
            } else {
                None
            };
            let kept = locked.get_or_insert_with(|| self.kept());
            self.apply_one(&event, begun, kept);
        }
        if let Some(mut kept) = locked {
            self.evict(&mut kept);
        }
        Some(applied)
    }

    fn get<'a>(
        &'a self,
        id: &'a MessageId,
        trigger: Option<&'a TriggerName>,
    ) -> BoxFuture<'a, Result<Vec<Run>, StoreError>> {
        let kept = self.kept();
        let mut found: Vec<Run> = match trigger {
            Some(trigger) => kept
                .runs
                .get(&RunKey::new(id.clone(), trigger.clone()))
                .map(|run| Run::clone(run))
                .into_iter()
                .collect(),
            None => kept
                .runs
                .values()
                .filter(|run| &run.id == id)
                .map(|run| Run::clone(run))
                .collect(),
        };
        drop(kept);
        found.sort_by(|a, b| a.trigger.cmp(&b.trigger));
        async move { Ok(found) }.boxed()
    }

    fn list<'a>(&'a self, query: &'a RunQuery) -> BoxFuture<'a, Result<RunPage, StoreError>> {
        let page = self.list_now(query);
        async move { page }.boxed()
    }

    fn cancels_since(&self, since: Timestamp) -> BoxFuture<'_, Result<Vec<RunKey>, StoreError>> {
        let mut keys: Vec<RunKey> = self
            .kept()
            .runs
            .values()
            .filter(|run| run.cancel_requested_at.is_some_and(|at| at >= since))
            .map(|run| run.key())
            .collect();
        keys.sort();
        async move { Ok(keys) }.boxed()
    }

    fn sweep(&self, retention: Retention) -> BoxFuture<'_, Result<u64, StoreError>> {
        let swept = self.sweep_now(retention);
        async move { Ok(swept) }.boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }
}

impl ControlStore for MemoryStore {
    fn pause_trigger<'a>(
        &'a self,
        trigger: &'a TriggerName,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.control().paused.entry(trigger.clone()).or_insert(at);
        async { Ok(()) }.boxed()
    }

    fn resume_trigger<'a>(
        &'a self,
        trigger: &'a TriggerName,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let resumed = self.control().paused.remove(trigger).is_some();
        async move { Ok(resumed) }.boxed()
    }

    fn paused_triggers(&self) -> BoxFuture<'_, Result<Vec<PausedTrigger>, StoreError>> {
        let paused = self
            .control()
            .paused
            .iter()
            .map(|(trigger, paused_at)| PausedTrigger {
                trigger: trigger.clone(),
                paused_at: *paused_at,
            })
            .collect();
        async move { Ok(paused) }.boxed()
    }

    fn put_schedule<'a>(
        &'a self,
        name: &'a str,
        spec: &'a ScheduleSpec,
        from_config: bool,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut control = self.control();
        let schedule = control
            .schedules
            .entry(name.to_owned())
            .or_insert_with(|| Schedule {
                name: name.to_owned(),
                spec: spec.clone(),
                paused: false,
                from_config,
                last_tick: now,
                updated_at: now,
            });
        schedule.spec = spec.clone();
        schedule.from_config = from_config;
        schedule.updated_at = now;
        async { Ok(()) }.boxed()
    }

    fn schedules(&self) -> BoxFuture<'_, Result<Vec<Schedule>, StoreError>> {
        let schedules = self.control().schedules.values().cloned().collect();
        async move { Ok(schedules) }.boxed()
    }

    fn set_schedule_paused<'a>(
        &'a self,
        name: &'a str,
        paused: bool,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let found = match self.control().schedules.get_mut(name) {
            Some(schedule) => {
                schedule.paused = paused;
                true
            }
            None => false,
        };
        async move { Ok(found) }.boxed()
    }

    fn delete_schedule<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let deleted = self.control().schedules.remove(name).is_some();
        async move { Ok(deleted) }.boxed()
    }

    fn advance_schedule<'a>(
        &'a self,
        name: &'a str,
        tick: Timestamp,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let advanced = match self.control().schedules.get_mut(name) {
            Some(schedule) if schedule.last_tick < tick => {
                schedule.last_tick = tick;
                true
            }
            _ => false,
        };
        async move { Ok(advanced) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use topiq_adapter::{MessageId, TopicName};

    use super::MemoryStore;
    use crate::conformance::{event, finished, origin, started, topic, trigger};
    use crate::event::{Change, Next};
    use crate::model::{AttemptOutcome, RunKey, RunState};
    use crate::store::{RunQuery, RunStore};

    #[tokio::test]
    async fn past_its_limit_the_oldest_finished_runs_go_first() {
        let store = MemoryStore::with_limit(3);
        let topic = topic();
        // Ids in enqueue order, as generated ones are (time-ordered UUIDs).
        let keys: Vec<RunKey> = (0..6)
            .map(|n| RunKey::new(MessageId::from_string(format!("m{n}")), trigger("t")))
            .collect();
        // The oldest run stays queued; the five after it succeed, one write each.
        let enqueued = event(&keys[0], 0, Change::Enqueued(origin(&topic, 0)));
        store.write(&[enqueued]).await.unwrap();
        succeed_each(&store, &topic, &keys[1..]).await;
        let kept = listed_keys(&store).await;
        let expected = vec![
            keys[0].clone(),
            keys[3].clone(),
            keys[4].clone(),
            keys[5].clone(),
        ];
        assert_eq!(
            kept, expected,
            "the queued run and the three newest finished"
        );
        let queued = store.get(&keys[0].message_id, None).await.unwrap();
        assert_eq!(queued[0].state, RunState::Queued);
    }

    /// Writes each run of `keys` started and succeeded, one write a run.
    async fn succeed_each(store: &MemoryStore, topic: &TopicName, keys: &[RunKey]) {
        for key in keys {
            let succeeded = Next::Succeeded { result: None };
            let events = [
                started(key, topic, 1, 1),
                finished(key, 2, 1, AttemptOutcome::Succeeded, succeeded),
            ];
            store.write(&events).await.unwrap();
        }
    }

    /// The keys of the runs the store lists, sorted.
    async fn listed_keys(store: &MemoryStore) -> Vec<RunKey> {
        let page = store.list(&RunQuery::default()).await.unwrap();
        let mut kept: Vec<RunKey> = page.runs.iter().map(|run| run.key()).collect();
        kept.sort();
        kept
    }

    #[tokio::test]
    async fn eviction_of_many_at_once_keeps_the_newest_finished_runs() {
        let store = MemoryStore::with_limit(10);
        let topic = topic();
        let keys: Vec<RunKey> = (0..45)
            .map(|n| RunKey::new(MessageId::from_string(format!("m{n:02}")), trigger("t")))
            .collect();
        succeed_each(&store, &topic, &keys).await;
        let kept = listed_keys(&store).await;
        // Past 10 finished runs, two go at a time (one over the limit and a tenth of it).
        assert!((9..=10).contains(&kept.len()), "{} kept", kept.len());
        assert_eq!(kept, keys[keys.len() - kept.len()..].to_vec());
    }
}
