//! What happens to a run, as the runtime reports it, and how each event changes the run.
//!
//! Events of one run can come from several instances (the enqueuer, the instance that ran an
//! attempt, the one that redelivered it, the operator's cancel) and reach the store in any
//! order; [`Run::apply`] makes every order end in the same run: attempts are ordered by
//! `(lap, number)`, an event of an older attempt never moves the state back, and a finished
//! run stays finished (a redrive alone reopens a dead-lettered one: its message comes back
//! with its attempts reset, so an attempt number the run already had starts the next lap).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use topiq_adapter::{MessageId, Timestamp, TopicName};

use crate::data::RunData;
use crate::model::{Attempt, AttemptOutcome, Run, RunError, RunKey, RunState, Transition};

/// One thing that happened to a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    /// The run.
    pub key: RunKey,
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub change: Change,
}

/// What the message was when the run began: from its enqueue, or from its first delivery on
/// an instance that did not see the enqueue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    /// The message's topic.
    pub topic: TopicName,
    /// The message's data.
    pub data: Arc<Value>,
    /// When the message was enqueued.
    pub enqueued_at: Timestamp,
    /// When a delayed message is due.
    pub run_at: Option<Timestamp>,
    /// The run a replay replays.
    pub replay_of: Option<MessageId>,
    /// The idempotency key the message was enqueued with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// What happened to a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "change")]
pub enum Change {
    /// The message was enqueued for the run's trigger.
    Enqueued(Origin),
    /// An attempt's handler was called.
    Started {
        /// The message as delivered (creates the run when the enqueue was not recorded).
        origin: Origin,
        /// The attempt's number on the broker.
        attempt: u32,
        /// The instance running it (shared: the same for each of its attempts).
        instance: Arc<str>,
        /// The handler span's `traceparent`.
        traceparent: Option<String>,
    },
    /// An attempt was settled.
    Finished {
        /// The attempt's number on the broker.
        attempt: u32,
        /// How the attempt ended.
        outcome: AttemptOutcome,
        /// Why it failed.
        error: Option<RunError>,
        /// Where the run goes next.
        next: Next,
    },
    /// The trigger's condition was false.
    Filtered(Origin),
    /// The handler reported progress.
    Progress(Value),
    /// An operator asked for the run to be cancelled.
    CancelRequested,
    /// The broker adapter dead-lettered the message itself (past its retention, a lease that
    /// ran out on the last attempt), as its DLQ record says; nothing if the run finished or
    /// changed after `at`.
    DeadLettered {
        /// The message, from its record.
        origin: Origin,
        /// The record's error: `expired` makes the run `expired`, any other `dead_lettered`.
        error: RunError,
    },
}

/// Where a run goes when an attempt is settled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "to")]
pub enum Next {
    /// Succeeded, with the handler's result.
    Succeeded {
        /// What the handler returned.
        result: Option<Value>,
    },
    /// Another attempt, once the backoff ran out.
    Retry {
        /// When the next attempt is due.
        at: Timestamp,
    },
    /// Back to the queue (released at shutdown).
    Queued,
    /// Into the dead-letter queue.
    DeadLettered,
    /// Cancelled.
    Cancelled,
}

impl Run {
    /// A run that starts with `origin`.
    pub fn begin(key: RunKey, origin: Origin, at: Timestamp) -> Self {
        let state = match origin.run_at {
            Some(due) if due > at => RunState::Delayed,
            _ => RunState::Queued,
        };
        Self {
            id: key.message_id,
            trigger: key.trigger,
            topic: origin.topic,
            state,
            data: RunData::of(&origin.data),
            enqueued_at: origin.enqueued_at,
            run_at: origin.run_at,
            retry_at: None,
            attempts: Vec::new(),
            result: None,
            progress: None,
            replay_of: origin.replay_of,
            idempotency_key: origin.idempotency_key,
            cancel_requested_at: None,
            transitions: first_transitions(Transition { state, at }),
            updated_at: at,
            finished_at: None,
            laps: 0,
        }
    }

    /// The run an event makes first, when the store has none yet: `None` for an event that
    /// needs a run to change (progress, a cancel, a settlement of an unknown run).
    ///
    /// A run begun by a later event than its enqueue (the consumer's reached the store
    /// first) was queued when its message was enqueued: its first transition is stamped then
    /// (or at the event, on a clock behind the enqueuer's). (A delivery's origin has no
    /// `run_at`, so a delayed message's run begun so is `queued`, not `delayed`.)
    pub fn from_event(event: &RunEvent) -> Option<Self> {
        let (origin, queued_at) = match &event.change {
            Change::Enqueued(origin) => (origin, event.at),
            Change::Started { origin, .. }
            | Change::Filtered(origin)
            | Change::DeadLettered { origin, .. } => (origin, origin.enqueued_at.min(event.at)),
            _ => return None,
        };
        Some(Self::begin(event.key.clone(), origin.clone(), queued_at))
    }

    /// Applies `event`; returns whether the run changed.
    pub fn apply(&mut self, event: &RunEvent) -> bool {
        let at = event.at;
        let changed = match &event.change {
            Change::Enqueued(origin) => self.fill_origin(origin),
            Change::Started {
                origin,
                attempt,
                instance,
                traceparent,
            } => {
                self.fill_origin(origin);
                self.start(*attempt, instance, traceparent.clone(), at)
            }
            Change::Finished {
                attempt,
                outcome,
                error,
                next,
            } => self.finish(*attempt, *outcome, error.clone(), next, at),
            Change::Filtered(_) => self.end_unhandled(RunState::Filtered, at),
            Change::Progress(progress) => self.report(progress),
            Change::CancelRequested => self.request_cancel(at),
            Change::DeadLettered { origin, error } => {
                self.fill_origin(origin);
                self.dead_lettered_by_adapter(error, at)
            }
        };
        if changed {
            self.updated_at = self.updated_at.max(at);
        }
        changed
    }

    /// Fills in what a run created from a delivery did not know (it keeps its state).
    fn fill_origin(&mut self, origin: &Origin) -> bool {
        let mut changed = false;
        if self.run_at.is_none() && origin.run_at.is_some() {
            self.run_at = origin.run_at;
            changed = true;
        }
        if self.replay_of.is_none() && origin.replay_of.is_some() {
            self.replay_of.clone_from(&origin.replay_of);
            changed = true;
        }
        if self.idempotency_key.is_none() && origin.idempotency_key.is_some() {
            self.idempotency_key.clone_from(&origin.idempotency_key);
            changed = true;
        }
        changed
    }

    fn enter(&mut self, state: RunState, at: Timestamp) {
        if self.state == state {
            return;
        }
        self.state = state;
        self.transitions.push(Transition { state, at });
        if state.is_finished() {
            self.finished_at = Some(at);
        }
        if state != RunState::Retrying {
            self.retry_at = None;
        }
    }

    /// True when `(lap, number)` is the run's latest attempt or a later one.
    fn is_current(&self, number: u32) -> bool {
        self.attempts
            .last()
            .is_none_or(|last| (self.laps, number) >= (last.lap, last.number))
    }

    fn start(
        &mut self,
        number: u32,
        instance: &Arc<str>,
        traceparent: Option<String>,
        at: Timestamp,
    ) -> bool {
        self.reopen_if_redriven(number, at);
        let lap = self.laps;
        if self
            .attempts
            .iter()
            .any(|attempt| (attempt.lap, attempt.number) == (lap, number))
        {
            return false;
        }
        let current = self.is_current(number);
        // Most runs have one attempt: room for exactly one, not the four a first push makes
        // room for (a run is kept long after its message, and an attempt is ~170 bytes).
        if self.attempts.capacity() == 0 {
            self.attempts.reserve_exact(1);
        }
        self.attempts.push(Attempt {
            number,
            lap,
            started_at: at,
            finished_at: None,
            duration_ms: None,
            outcome: None,
            error: None,
            instance: Arc::clone(instance),
            traceparent,
        });
        self.attempts
            .sort_by_key(|attempt| (attempt.lap, attempt.number));
        if current && !self.state.is_finished() {
            self.enter(RunState::Running, at);
        }
        true
    }

    fn finish(
        &mut self,
        number: u32,
        outcome: AttemptOutcome,
        error: Option<RunError>,
        next: &Next,
        at: Timestamp,
    ) -> bool {
        let lap = self.laps;
        let current = self.is_current(number);
        let Some(attempt) = self
            .attempts
            .iter_mut()
            .find(|attempt| (attempt.lap, attempt.number) == (lap, number))
        else {
            // A cancelled run settled on delivery, its handler never called.
            if *next == Next::Cancelled && !self.state.is_finished() {
                self.enter(RunState::Cancelled, at);
                return true;
            }
            return false;
        };
        if attempt.outcome.is_some() {
            return false;
        }
        attempt.finished_at = Some(at);
        let elapsed = at.duration_since(attempt.started_at).as_millis();
        attempt.duration_ms = Some(u64::try_from(elapsed.max(0)).unwrap_or(0));
        attempt.outcome = Some(outcome);
        attempt.error = error;
        if current && !self.state.is_finished() {
            self.go_next(next, at);
        }
        true
    }

    fn go_next(&mut self, next: &Next, at: Timestamp) {
        match next {
            Next::Succeeded { result } => {
                self.result.clone_from(result);
                self.enter(RunState::Succeeded, at);
            }
            Next::Retry { at: due } => {
                self.enter(RunState::Retrying, at);
                self.retry_at = Some(*due);
            }
            Next::Queued => self.enter(RunState::Queued, at),
            Next::DeadLettered => self.enter(RunState::DeadLettered, at),
            Next::Cancelled => self.enter(RunState::Cancelled, at),
        }
    }

    fn end_unhandled(&mut self, state: RunState, at: Timestamp) -> bool {
        if self.state.is_finished() {
            return false;
        }
        self.enter(state, at);
        true
    }

    fn report(&mut self, progress: &Value) -> bool {
        if self.state.is_finished() || self.progress.as_ref() == Some(progress) {
            return false;
        }
        self.progress = Some(progress.clone());
        true
    }

    /// A waiting run is cancelled at once (its delivery is settled unhandled); a running one
    /// is marked, and cancelled when its handler is stopped.
    fn request_cancel(&mut self, at: Timestamp) -> bool {
        if self.state.is_finished() || self.cancel_requested_at.is_some() {
            return false;
        }
        self.cancel_requested_at = Some(at);
        if self.state != RunState::Running {
            self.enter(RunState::Cancelled, at);
        }
        true
    }

    /// The adapter's own dead-letter: the attempt left open (its lease ran out) closes with
    /// the record's error, and the run ends `expired` or `dead_lettered`.
    fn dead_lettered_by_adapter(&mut self, error: &RunError, at: Timestamp) -> bool {
        let later = self.transitions.last().is_some_and(|last| last.at > at);
        if self.state.is_finished() || later {
            return false;
        }
        if let Some(open) = self.attempts.iter_mut().rev().find(|a| a.outcome.is_none()) {
            open.outcome = Some(AttemptOutcome::LeaseExpired);
            open.finished_at = Some(at);
            open.error = Some(error.clone());
        }
        let state = if error.kind == "expired" {
            RunState::Expired
        } else {
            RunState::DeadLettered
        };
        self.enter(state, at);
        true
    }

    /// A dead-lettered message is delivered again only when its record is redriven, which
    /// resets its attempts: an attempt number this lap already had starts the next lap.
    fn reopen_if_redriven(&mut self, number: u32, at: Timestamp) {
        let lap = self.laps;
        let seen = self
            .attempts
            .iter()
            .any(|attempt| attempt.lap == lap && attempt.number >= number);
        if self.state == RunState::DeadLettered && seen {
            self.laps += 1;
            self.finished_at = None;
            self.enter(RunState::Queued, at);
        }
    }
}

/// A run's transitions, `first` in room for the three of a run handled at its first attempt
/// (queued, running, done), so the usual run grows its list in no reallocation.
fn first_transitions(first: Transition) -> Vec<Transition> {
    let mut transitions = Vec::with_capacity(3);
    transitions.push(first);
    transitions
}
