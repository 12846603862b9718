//! Runs: the list with its filters, and a run's page (its attempts as a timeline, result,
//! progress, state changes) with cancel and replay (the data editable as JSON, checked before
//! it is sent).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use topiq::{Attempt, ReplayRequest, Run, RunQuery, RunRequest, RunState};
use topiq_adapter::{TopicName, TriggerName};

use super::{Frame, Viewer, done, encode, failed, respond};
use crate::ConsoleState;
use crate::auth::Action;
use crate::view;

/// Runs per page of the list.
const PAGE: usize = 50;

/// A run in a list.
pub(crate) struct RunRow {
    pub(crate) id: String,
    pub(crate) trigger: String,
    pub(crate) topic: String,
    pub(crate) state: &'static str,
    pub(crate) attempts: usize,
    pub(crate) enqueued_at: String,
    pub(crate) updated_at: String,
    pub(crate) error: String,
}

impl RunRow {
    pub(crate) fn of(run: &Run) -> Self {
        Self {
            id: run.id.to_string(),
            trigger: run.trigger.to_string(),
            topic: run.topic.to_string(),
            state: run.state.as_str(),
            attempts: run.attempts.len(),
            enqueued_at: view::time(run.enqueued_at),
            updated_at: view::time(run.updated_at),
            error: run
                .attempts
                .last()
                .and_then(|attempt| attempt.error.as_ref())
                .map(|error| view::cut(&error.message, 100))
                .unwrap_or_default(),
        }
    }
}

/// The list's filters, as the form sends them (empty is none).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct RunFilters {
    #[serde(default)]
    topic: String,
    #[serde(default)]
    trigger: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    cursor: String,
}

impl RunFilters {
    fn query(&self) -> Result<RunQuery, String> {
        Ok(RunQuery {
            topic: view::filled(&self.topic)
                .map(TopicName::new)
                .transpose()
                .map_err(|err| format!("topic: {err}"))?,
            trigger: view::filled(&self.trigger)
                .map(TriggerName::new)
                .transpose()
                .map_err(|err| format!("trigger: {err}"))?,
            state: view::filled(&self.state)
                .map(|state| {
                    RunState::parse(state).ok_or_else(|| format!("state: no state {state:?}"))
                })
                .transpose()?,
            since: view::time_field("since", &self.since)?,
            until: view::time_field("until", &self.until)?,
            error_contains: view::filled(&self.error).map(str::to_owned),
            contains: None,
            limit: Some(PAGE),
            cursor: view::filled(&self.cursor).map(str::to_owned),
        })
    }

    /// This query string with `cursor` instead of the current one.
    fn with_cursor(&self, cursor: &str) -> String {
        format!(
            "topic={}&trigger={}&state={}&since={}&until={}&error={}&cursor={}",
            encode(&self.topic),
            encode(&self.trigger),
            encode(&self.state),
            encode(&self.since),
            encode(&self.until),
            encode(&self.error),
            encode(cursor)
        )
    }
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage {
    frame: Frame,
    filters: RunFilters,
    topics: Vec<String>,
    triggers: Vec<String>,
    states: Vec<&'static str>,
    runs: Vec<RunRow>,
    error: Option<String>,
    next: Option<String>,
}

/// `GET /console/runs`.
pub(crate) async fn list(
    State(state): State<ConsoleState>,
    Query(filters): Query<RunFilters>,
    viewer: Viewer,
) -> Response {
    let config = state.module().config();
    let (runs, next, error) = match filters.query() {
        Ok(query) => match state.module().run_list(&query).await {
            Ok(page) => (
                page.runs.iter().map(RunRow::of).collect(),
                page.next_cursor.map(|cursor| filters.with_cursor(&cursor)),
                None,
            ),
            Err(err) => (Vec::new(), None, Some(err.to_string())),
        },
        Err(err) => (Vec::new(), None, Some(err)),
    };
    let page = RunsPage {
        frame: viewer.frame("Runs", "runs"),
        topics: config.topics.keys().map(ToString::to_string).collect(),
        triggers: config.triggers.iter().map(|t| t.name.to_string()).collect(),
        states: RunState::ALL.iter().map(|state| state.as_str()).collect(),
        filters,
        runs,
        next,
        error,
    };
    respond(StatusCode::OK, page.render(), page.frame.flash.is_some())
}

/// An attempt as the timeline shows it.
struct AttemptRow {
    number: String,
    started_at: String,
    duration: String,
    outcome: String,
    error: String,
    instance: String,
    trace_id: String,
}

impl AttemptRow {
    fn of(attempt: &Attempt) -> Self {
        Self {
            number: if attempt.lap > 0 {
                format!("{} (after redrive {})", attempt.number, attempt.lap)
            } else {
                attempt.number.to_string()
            },
            started_at: view::time(attempt.started_at),
            duration: attempt
                .duration_ms
                .map_or_else(|| "running".to_owned(), view::millis),
            outcome: attempt
                .outcome
                .and_then(|outcome| serde_json::to_value(outcome).ok())
                .and_then(|outcome| outcome.as_str().map(str::to_owned))
                .unwrap_or_else(|| "running".to_owned()),
            error: attempt
                .error
                .as_ref()
                .map(|error| format!("{}: {}", error.kind, error.message))
                .unwrap_or_default(),
            instance: attempt.instance.to_string(),
            trace_id: view::trace_id(attempt.traceparent.as_deref()),
        }
    }
}

/// A run as its page shows it.
struct RunView {
    trigger: String,
    topic: String,
    state: &'static str,
    finished: bool,
    facts: Vec<(&'static str, String)>,
    replay_of: Option<String>,
    data: String,
    result: Option<String>,
    progress: Option<String>,
    attempts: Vec<AttemptRow>,
    transitions: Vec<(String, &'static str)>,
    replay_text: String,
    replay_error: Option<String>,
}

impl RunView {
    fn of(run: &Run) -> Self {
        let mut facts = vec![("Enqueued", view::time(run.enqueued_at))];
        if let Some(at) = run.run_at {
            facts.push(("Due", view::time(at)));
        }
        if let Some(at) = run.retry_at {
            facts.push(("Next attempt", view::time(at)));
        }
        if let Some(at) = run.cancel_requested_at {
            facts.push(("Cancel asked", view::time(at)));
        }
        facts.push(("Finished", view::maybe_time(run.finished_at)));
        if run.laps > 0 {
            facts.push(("Redriven", format!("{} times", run.laps)));
        }
        let data = match run.data.value() {
            Ok(data) => view::pretty(&data),
            Err(err) => format!("(the stored data cannot be read: {err})"),
        };
        Self {
            trigger: run.trigger.to_string(),
            topic: run.topic.to_string(),
            state: run.state.as_str(),
            finished: run.state.is_finished(),
            facts,
            replay_of: run.replay_of.as_ref().map(ToString::to_string),
            replay_text: data.clone(),
            data,
            result: run.result.as_ref().map(view::pretty),
            progress: run.progress.as_ref().map(view::pretty),
            attempts: run.attempts.iter().map(AttemptRow::of).collect(),
            transitions: run
                .transitions
                .iter()
                .map(|change| (view::time(change.at), change.state.as_str()))
                .collect(),
            replay_error: None,
        }
    }
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    frame: Frame,
    id: String,
    runs: Vec<RunView>,
    error: Option<String>,
}

/// A replay the form sent back with what was wrong with it.
struct Rejected {
    trigger: String,
    text: String,
    error: String,
}

async fn run_page(
    state: &ConsoleState,
    viewer: &Viewer,
    id: String,
    rejected: Option<Rejected>,
) -> Response {
    let request = RunRequest {
        id: id.clone(),
        trigger: None,
    };
    let (mut runs, error) = match state.module().run_get(&request).await {
        Ok(runs) => (runs.iter().map(RunView::of).collect::<Vec<_>>(), None),
        Err(err) => (Vec::new(), Some(format!("{err} ({})", err.code()))),
    };
    let status = match (&error, &rejected) {
        (Some(_), _) => StatusCode::NOT_FOUND,
        (None, Some(_)) => StatusCode::BAD_REQUEST,
        (None, None) => StatusCode::OK,
    };
    if let Some(rejected) = rejected
        && let Some(run) = runs.iter_mut().find(|run| run.trigger == rejected.trigger)
    {
        run.replay_text = rejected.text;
        run.replay_error = Some(rejected.error);
    }
    let page = RunPage {
        frame: viewer.frame(format!("Run {id}"), "runs"),
        id,
        runs,
        error,
    };
    respond(status, page.render(), page.frame.flash.is_some())
}

/// `GET /console/runs/{id}`: the message's run on every trigger.
pub(crate) async fn page(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    viewer: Viewer,
) -> Response {
    run_page(&state, &viewer, id, None).await
}

/// The form of cancel and replay.
#[derive(Deserialize)]
pub(crate) struct RunForm {
    trigger: String,
    #[serde(default)]
    data: Option<String>,
}

/// `POST /console/runs/{id}/cancel`.
pub(crate) async fn cancel(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    Action(form): Action<RunForm>,
) -> Response {
    let location = format!("/console/runs/{}", encode(&id));
    let request = RunRequest {
        id,
        trigger: Some(form.trigger.clone()),
    };
    match state.module().run_cancel(&request).await {
        Ok(_) => done(
            &location,
            true,
            &format!(
                "Cancel asked for on {}: the run is not handed to its handler again, and a running handler is told.",
                form.trigger
            ),
        ),
        Err(err) => failed(&location, &err),
    }
}

/// `POST /console/runs/{id}/replay`: a new message with the form's data (checked as JSON
/// first: a mistake comes back in the form, nothing sent).
pub(crate) async fn replay(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    viewer: Viewer,
    Action(form): Action<RunForm>,
) -> Response {
    let text = form.data.unwrap_or_default();
    let data = match serde_json::from_str::<Value>(&text) {
        Ok(data) => data,
        Err(err) => {
            let rejected = Rejected {
                trigger: form.trigger,
                text,
                error: format!("The data is not JSON: {err}. Nothing was replayed."),
            };
            return run_page(&state, &viewer, id, Some(rejected)).await;
        }
    };
    let location = format!("/console/runs/{}", encode(&id));
    let request = ReplayRequest {
        id,
        trigger: Some(form.trigger.clone()),
        data: Some(data),
    };
    match state.module().run_replay(&request).await {
        Ok(message) => done(
            &format!("/console/runs/{}", encode(message.as_str())),
            true,
            &format!("Replayed on {} as this new message.", form.trigger),
        ),
        Err(err) => failed(&location, &err),
    }
}
