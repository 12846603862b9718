//! A trigger's page: its counts, last hour as charts (throughput, failures, handler p50/p99),
//! settings, recent runs and DLQ, and pause/resume.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use jiff::Timestamp;
use topiq::config::TriggerSettings;
use topiq::{DlqRequest, RunQuery};
use topiq_adapter::TriggerName;

use super::overview::{Row, trigger_row};
use super::runs::RunRow;
use super::{Frame, Viewer, done, error_page, failed, html, respond};
use crate::ConsoleState;
use crate::auth::{Action, CsrfOnly};
use crate::chart::{Series, legend, line_chart};
use crate::view;

/// Runs and DLQ records the page lists.
const RECENT: usize = 10;

/// A DLQ record in the page's short list.
struct Letter {
    id: String,
    failed_at: String,
    attempts: u32,
    error: String,
}

#[derive(Template)]
#[template(path = "trigger.html")]
struct TriggerPage {
    frame: Frame,
    name: String,
    topic: String,
    row: Option<Row>,
    error: Option<String>,
    charts: String,
    settings: Vec<(&'static str, String)>,
    records_runs: bool,
    runs: Vec<RunRow>,
    runs_error: Option<String>,
    letters: Vec<Letter>,
    letters_error: Option<String>,
}

#[derive(Template)]
#[template(path = "trigger_charts.html")]
struct Charts {
    throughput: String,
    throughput_legend: String,
    latency: String,
    latency_legend: String,
}

/// The trigger `name` of the config.
fn settings_of(state: &ConsoleState, name: &str) -> Option<TriggerSettings> {
    state.module().config().trigger(name).cloned()
}

/// The page for a trigger the config does not have.
fn unknown_trigger(name: &str) -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        &format!("The config has no trigger {name:?}; the overview lists every trigger."),
    )
}

/// What the settings table shows, as (name, value): nothing secret (an HTTP function shows
/// its endpoint's scheme, host and port only).
fn settings_rows(state: &ConsoleState, trigger: &TriggerSettings) -> Vec<(&'static str, String)> {
    let config = state.module().config();
    let http = config
        .functions
        .iter()
        .find(|function| function.name == trigger.function);
    let function = match http {
        Some(http) => format!("{} (HTTP, {})", trigger.function, http.endpoint()),
        None => trigger.function.clone(),
    };
    let ordering = match (&trigger.ordering_key, config.ordering.get(&trigger.topic)) {
        (Some(key), Some(topic)) => format!("{} ({} partitions)", key.source(), topic.partitions),
        (Some(key), None) => key.source().to_owned(),
        (None, _) => "none: messages run in any order".to_owned(),
    };
    let condition = trigger.condition.as_ref().map_or_else(
        || "none: every message".to_owned(),
        |condition| condition.source().to_owned(),
    );
    let mut rows = vec![
        ("Topic", trigger.topic.to_string()),
        ("Function", function),
        ("Condition", condition),
        ("Retry", view::retry(&trigger.retry)),
        ("Concurrency", trigger.concurrency.to_string()),
        ("Ordering key", ordering),
        ("Timeout", view::duration(trigger.timeout)),
        (
            "Visibility timeout",
            view::duration(trigger.visibility_timeout),
        ),
    ];
    if trigger.batch_size > 1 {
        rows.push(("Batch size", trigger.batch_size.to_string()));
    }
    if let Some(topic) = &trigger.dead_letter_topic {
        rows.push(("Dead-letter topic", topic.to_string()));
    }
    rows
}

/// The charts of the last hour, read now.
fn charts(state: &ConsoleState, name: &TriggerName) -> Charts {
    let live = state
        .module()
        .trigger_samples()
        .into_iter()
        .find(|sample| &sample.trigger == name);
    let minutes = state
        .history()
        .minutes(name, live.as_ref(), Timestamp::now());
    let throughput = [
        Series {
            name: "succeeded per minute",
            class: "ok",
            points: minutes.iter().map(|m| Some(m.succeeded as f64)).collect(),
        },
        Series {
            name: "failed per minute",
            class: "bad",
            points: minutes.iter().map(|m| Some(m.failed as f64)).collect(),
        },
    ];
    let latency = [
        Series {
            name: "handler p50",
            class: "p50",
            points: minutes.iter().map(|m| m.p50_ms).collect(),
        },
        Series {
            name: "handler p99",
            class: "p99",
            points: minutes.iter().map(|m| m.p99_ms).collect(),
        },
    ];
    Charts {
        throughput: line_chart("Handled messages per minute", "", &throughput),
        throughput_legend: legend(&throughput),
        latency: line_chart("Handler time in milliseconds", " ms", &latency),
        latency_legend: legend(&latency),
    }
}

/// The trigger's newest runs, or why they cannot be read.
async fn recent_runs(
    state: &ConsoleState,
    trigger: &TriggerSettings,
) -> (Vec<RunRow>, Option<String>) {
    let query = RunQuery {
        trigger: Some(trigger.name.clone()),
        limit: Some(RECENT),
        ..RunQuery::default()
    };
    match state.module().run_list(&query).await {
        Ok(page) => (page.runs.iter().map(RunRow::of).collect(), None),
        Err(err) => (Vec::new(), Some(err.to_string())),
    }
}

/// The trigger's oldest DLQ records, or why they cannot be read.
async fn recent_letters(
    state: &ConsoleState,
    trigger: &TriggerSettings,
) -> (Vec<Letter>, Option<String>) {
    let request = DlqRequest {
        topic: trigger.topic.to_string(),
        trigger: Some(trigger.name.to_string()),
        limit: Some(RECENT),
        ..DlqRequest::default()
    };
    match state.module().dlq_list(&request).await {
        Ok((records, _)) => {
            let letters = records
                .iter()
                .map(|record| Letter {
                    id: record.id.to_string(),
                    failed_at: view::time(record.last_failed_at),
                    attempts: record.attempts,
                    error: view::cut(&record.error.message, 120),
                })
                .collect();
            (letters, None)
        }
        Err(err) => (Vec::new(), Some(err.to_string())),
    }
}

/// `GET /console/triggers/{name}`.
pub(crate) async fn page(
    State(state): State<ConsoleState>,
    Path(name): Path<String>,
    viewer: Viewer,
) -> Response {
    let Some(trigger) = settings_of(&state, &name) else {
        return unknown_trigger(&name);
    };
    let now = Timestamp::now();
    let (row, error) = match state.module().stats(Some(trigger.topic.as_str())).await {
        Ok(stats) => (
            stats
                .iter()
                .find(|stats| stats.trigger == trigger.name)
                .map(|stats| trigger_row(&state, stats, now)),
            None,
        ),
        Err(err) => (
            None,
            Some(format!("The broker's counts cannot be read: {err}")),
        ),
    };
    let (runs, runs_error) = recent_runs(&state, &trigger).await;
    let (letters, letters_error) = recent_letters(&state, &trigger).await;
    let page = TriggerPage {
        frame: viewer.frame(format!("Trigger {name}"), "overview"),
        topic: trigger.topic.to_string(),
        row,
        error,
        charts: charts(&state, &trigger.name).render().unwrap_or_default(),
        settings: settings_rows(&state, &trigger),
        records_runs: trigger.record_runs,
        runs,
        runs_error,
        letters,
        letters_error,
        name,
    };
    respond(StatusCode::OK, page.render(), page.frame.flash.is_some())
}

/// `GET /console/triggers/{name}/charts`: the charts alone, for the page's refresh.
pub(crate) async fn charts_fragment(
    State(state): State<ConsoleState>,
    Path(name): Path<String>,
) -> Response {
    match settings_of(&state, &name) {
        Some(trigger) => html(StatusCode::OK, charts(&state, &trigger.name).render()),
        None => unknown_trigger(&name),
    }
}

/// `POST /console/triggers/{name}/pause`.
pub(crate) async fn pause(
    State(state): State<ConsoleState>,
    Path(name): Path<String>,
    Action(_): Action<CsrfOnly>,
) -> Response {
    set_paused(&state, &name, true).await
}

/// `POST /console/triggers/{name}/resume`.
pub(crate) async fn resume(
    State(state): State<ConsoleState>,
    Path(name): Path<String>,
    Action(_): Action<CsrfOnly>,
) -> Response {
    set_paused(&state, &name, false).await
}

async fn set_paused(state: &ConsoleState, name: &str, paused: bool) -> Response {
    let location = format!("/console/triggers/{}", super::encode(name));
    let result = if paused {
        state.module().trigger_pause(name).await
    } else {
        state.module().trigger_resume(name).await
    };
    match result {
        Ok(()) if paused => done(
            &location,
            true,
            &format!("Paused {name}: no instance takes new messages for it until it is resumed."),
        ),
        Ok(()) => done(&location, true, &format!("Resumed {name}.")),
        Err(err) => failed(&location, &err),
    }
}
