//! `queue.run_get` and `queue.run_list`: what happened to a message on its triggers.

use serde::Deserialize;
use topiq_adapter::MessageId;
use topiq_runs::{Run, RunPage, RunQuery, RunState};

use super::{CallError, timestamp, topic, trigger};
use crate::module::QueueModule;

/// Arguments of `queue.run_get`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The message's id.
    pub id: String,
    /// The trigger; without it, the message's run on every trigger.
    #[serde(default)]
    pub trigger: Option<String>,
}

/// Arguments of `queue.run_list`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunListRequest {
    /// Only runs of this topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// Only runs on this trigger.
    #[serde(default)]
    pub trigger: Option<String>,
    /// Only runs in this state (`queued`, `running`, `dead_lettered`, ...).
    #[serde(default)]
    pub state: Option<String>,
    /// Only runs enqueued at or after this time (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// Only runs enqueued before this time (RFC 3339).
    #[serde(default)]
    pub until: Option<String>,
    /// Only runs with an attempt error containing this text (case-insensitive).
    #[serde(default)]
    pub error_contains: Option<String>,
    /// The most runs to return (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<usize>,
    /// The previous page's `next_cursor`.
    #[serde(default)]
    pub cursor: Option<String>,
}

impl RunListRequest {
    fn query(&self) -> Result<RunQuery, CallError> {
        let state = match &self.state {
            None => None,
            Some(name) => Some(RunState::parse(name).ok_or_else(|| {
                let names: Vec<&str> = RunState::ALL.iter().map(|state| state.as_str()).collect();
                CallError::invalid(format!(
                    "state: {name:?} is not a run state; one of {}",
                    names.join(", ")
                ))
            })?),
        };
        Ok(RunQuery {
            topic: self.topic.as_deref().map(topic).transpose()?,
            trigger: trigger(self.trigger.as_deref())?,
            state,
            since: self
                .since
                .as_deref()
                .map(|at| timestamp("since", at))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|at| timestamp("until", at))
                .transpose()?,
            error_contains: self.error_contains.clone(),
            limit: self.limit,
            cursor: self.cursor.clone(),
        })
    }
}

impl QueueModule {
    /// `queue.run_get`: the message's run on `trigger`, or on every trigger; an id with no
    /// run is `unknown_run`. Shows every run event this process recorded before the call.
    pub async fn run_get(&self, request: &RunRequest) -> Result<Vec<Run>, CallError> {
        let id = MessageId::from_string(&request.id);
        let trigger = trigger(request.trigger.as_deref())?;
        self.runs().recorder().flush().await;
        let runs = self.runs().store().get(&id, trigger.as_ref()).await?;
        if runs.is_empty() {
            return Err(CallError::UnknownRun {
                id: request.id.clone(),
                trigger: request.trigger.clone(),
            });
        }
        Ok(runs)
    }

    /// `queue.run_list`: a page of runs, newest first.
    pub async fn run_list(&self, request: &RunListRequest) -> Result<RunPage, CallError> {
        let query = request.query()?;
        self.runs().recorder().flush().await;
        Ok(self.runs().store().list(&query).await?)
    }
}
