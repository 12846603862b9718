//! Runs kept in this process's memory: the in-memory adapter's default, gone with the process.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use futures::future::{BoxFuture, FutureExt};
use topiq_adapter::{MessageId, Timestamp, TriggerName};

use crate::event::RunEvent;
use crate::model::{Run, RunKey};
use crate::store::{Cursor, Retention, RunPage, RunQuery, RunStore, StoreError};

/// Runs in a map, newest last; one lock makes each `apply` atomic.
#[derive(Debug, Default)]
pub struct MemoryStore {
    runs: Mutex<BTreeMap<RunKey, Run>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn runs(&self) -> MutexGuard<'_, BTreeMap<RunKey, Run>> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `events`; returns the keys they touched, in the order each first appears.
    fn apply_now(&self, events: &[RunEvent], runs: &mut BTreeMap<RunKey, Run>) -> Vec<RunKey> {
        let mut seen = std::collections::HashSet::new();
        let mut touched: Vec<RunKey> = Vec::new();
        for event in events {
            let run = match runs.get_mut(&event.key) {
                Some(run) => run,
                None => match Run::from_event(event) {
                    Some(run) => runs.entry(event.key.clone()).or_insert(run),
                    None => continue,
                },
            };
            run.apply(event);
            if seen.insert(&event.key) {
                touched.push(event.key.clone());
            }
        }
        touched
    }

    fn list_now(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        let (limit, cursor) = query.validate()?;
        let runs = self.runs();
        let mut selected: Vec<&Run> = runs
            .values()
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
        let mut runs = self.runs();
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
        (before - runs.len()) as u64
    }
}

impl RunStore for MemoryStore {
    fn apply<'a>(&'a self, events: &'a [RunEvent]) -> BoxFuture<'a, Result<Vec<Run>, StoreError>> {
        let mut runs = self.runs();
        let touched = self.apply_now(events, &mut runs);
        let touched = touched
            .iter()
            .filter_map(|key| runs.get(key).cloned())
            .collect();
        async move { Ok(touched) }.boxed()
    }

    fn write<'a>(&'a self, events: &'a [RunEvent]) -> BoxFuture<'a, Result<(), StoreError>> {
        self.apply_now(events, &mut self.runs());
        async { Ok(()) }.boxed()
    }

    fn get<'a>(
        &'a self,
        id: &'a MessageId,
        trigger: Option<&'a TriggerName>,
    ) -> BoxFuture<'a, Result<Vec<Run>, StoreError>> {
        let found = self
            .runs()
            .values()
            .filter(|run| &run.id == id && trigger.is_none_or(|trigger| &run.trigger == trigger))
            .cloned()
            .collect();
        async move { Ok(found) }.boxed()
    }

    fn list<'a>(&'a self, query: &'a RunQuery) -> BoxFuture<'a, Result<RunPage, StoreError>> {
        let page = self.list_now(query);
        async move { page }.boxed()
    }

    fn cancels_since(&self, since: Timestamp) -> BoxFuture<'_, Result<Vec<RunKey>, StoreError>> {
        let keys = self
            .runs()
            .values()
            .filter(|run| run.cancel_requested_at.is_some_and(|at| at >= since))
            .map(Run::key)
            .collect();
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
