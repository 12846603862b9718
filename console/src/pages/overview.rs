//! The overview: every topic and trigger with the broker's counts, this process's outcomes
//! per minute, DLQ depth and pause state, and the adapter's health; the table refreshes
//! itself every two seconds.

use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use jiff::Timestamp;
use topiq::{CallError, QueueModule, TriggerStats};

use super::{Frame, Viewer, html, respond};
use crate::ConsoleState;
use crate::view;

/// One row: a trigger, or a topic no trigger reads.
pub(crate) struct Row {
    pub(crate) topic: String,
    pub(crate) trigger: Option<String>,
    pub(crate) waiting: String,
    pub(crate) delayed: String,
    pub(crate) in_flight: String,
    pub(crate) succeeded_per_minute: String,
    pub(crate) failed_per_minute: String,
    pub(crate) failing: bool,
    pub(crate) dlq: String,
    pub(crate) dlq_depth: u64,
    pub(crate) paused: bool,
}

#[derive(Template)]
#[template(path = "overview_table.html")]
struct Table {
    adapter: &'static str,
    ready: bool,
    reasons: Vec<String>,
    error: Option<String>,
    rows: Vec<Row>,
    updated: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    frame: Frame,
    table: String,
}

/// How long the broker's counts are reused: every open overview refreshes every 2 s, and
/// each read asks the broker once per trigger.
const STATS_FRESH_FOR: Duration = Duration::from_secs(1);

/// The last `queue.stats` of every trigger, and when it was read.
#[derive(Default)]
pub(crate) struct StatsCache {
    last: tokio::sync::Mutex<Option<(Instant, Vec<TriggerStats>)>>,
}

impl StatsCache {
    /// Every trigger's stats, read from the broker unless a read of the last second holds
    /// them (one read at a time: the tabs that ask meanwhile wait for it).
    async fn read(&self, module: &QueueModule) -> Result<Vec<TriggerStats>, CallError> {
        let mut last = self.last.lock().await;
        if let Some((at, stats)) = last.as_ref()
            && at.elapsed() < STATS_FRESH_FOR
        {
            return Ok(stats.clone());
        }
        let stats = module.stats(None).await?;
        *last = Some((Instant::now(), stats.clone()));
        Ok(stats)
    }
}

/// The table, read now.
async fn table(state: &ConsoleState) -> Table {
    let module = state.module();
    let now = Timestamp::now();
    let (ready, reasons) = match module.readiness().await {
        Ok(()) => (true, Vec::new()),
        Err(reasons) => (false, reasons),
    };
    let (stats, error) = match state.stats_cache().read(module).await {
        Ok(stats) => (stats, None),
        Err(err) => (
            Vec::new(),
            Some(format!("The broker's counts cannot be read: {err}")),
        ),
    };
    let mut rows: Vec<Row> = stats
        .iter()
        .map(|stats| trigger_row(state, stats, now))
        .collect();
    for topic in module.config().topics.keys() {
        let read = module.config().triggers.iter().any(|t| &t.topic == topic);
        if !read {
            rows.push(Row {
                topic: topic.to_string(),
                trigger: None,
                waiting: "—".into(),
                delayed: "—".into(),
                in_flight: "—".into(),
                succeeded_per_minute: "—".into(),
                failed_per_minute: "—".into(),
                failing: false,
                dlq: "—".into(),
                dlq_depth: 0,
                paused: false,
            });
        }
    }
    rows.sort_by(|a, b| (&a.topic, &a.trigger).cmp(&(&b.topic, &b.trigger)));
    Table {
        adapter: view::adapter(module.config().adapter.class),
        ready,
        reasons,
        error,
        rows,
        updated: view::time(now),
    }
}

/// A trigger's row.
pub(crate) fn trigger_row(state: &ConsoleState, stats: &TriggerStats, now: Timestamp) -> Row {
    let failed = state
        .history()
        .failed_last_minute(&stats.trigger, stats.counts.failed, now);
    Row {
        topic: stats.topic.to_string(),
        trigger: Some(stats.trigger.to_string()),
        waiting: stats.waiting.to_string(),
        delayed: stats.delayed.to_string(),
        in_flight: stats.in_flight.to_string(),
        succeeded_per_minute: stats.counts.per_minute.to_string(),
        failed_per_minute: failed.to_string(),
        failing: failed > 0,
        dlq: stats.dlq.to_string(),
        dlq_depth: stats.dlq,
        paused: stats.paused,
    }
}

/// `GET /console`.
pub(crate) async fn page(State(state): State<ConsoleState>, viewer: Viewer) -> Response {
    let page = OverviewPage {
        frame: viewer.frame("Overview", "overview"),
        table: table(&state).await.render().unwrap_or_default(),
    };
    respond(StatusCode::OK, page.render(), page.frame.flash.is_some())
}

/// `GET /console/fragments/overview`: the table alone, for the page's refresh.
pub(crate) async fn fragment(State(state): State<ConsoleState>) -> Response {
    html(StatusCode::OK, table(&state).await.render())
}
