//! Search: find a message by its id, its idempotency key or a text in its data, across the
//! runs and every DLQ.

use std::collections::BTreeSet;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use topiq::{DlqRequest, RunQuery, RunRequest};

use super::runs::RunRow;
use super::{Frame, Viewer, respond};
use crate::ConsoleState;
use crate::view;

/// Matches listed per place searched.
const FOUND: usize = 50;

#[derive(Deserialize)]
pub(crate) struct SearchQuery {
    #[serde(default)]
    q: String,
}

/// A DLQ record found.
struct Letter {
    id: String,
    topic: String,
    trigger: String,
    failed_at: String,
    error: String,
}

#[derive(Template)]
#[template(path = "search.html")]
struct SearchPage {
    frame: Frame,
    q: String,
    runs: Vec<RunRow>,
    letters: Vec<Letter>,
    problems: Vec<String>,
}

/// Runs whose id is `q`, then those whose id, idempotency key or data contain it.
async fn find_runs(state: &ConsoleState, q: &str, problems: &mut Vec<String>) -> Vec<RunRow> {
    let module = state.module();
    let mut seen = BTreeSet::new();
    let mut rows = Vec::new();
    let exact = RunRequest {
        id: q.to_owned(),
        trigger: None,
    };
    if let Ok(runs) = module.run_get(&exact).await {
        for run in &runs {
            seen.insert((run.id.to_string(), run.trigger.to_string()));
            rows.push(RunRow::of(run));
        }
    }
    let query = RunQuery {
        contains: Some(q.to_owned()),
        limit: Some(FOUND),
        ..RunQuery::default()
    };
    match module.run_list(&query).await {
        Ok(page) => {
            for run in &page.runs {
                if seen.insert((run.id.to_string(), run.trigger.to_string())) {
                    rows.push(RunRow::of(run));
                }
            }
        }
        Err(err) => problems.push(format!("Runs: {err}")),
    }
    rows
}

/// DLQ records of every topic with a trigger whose id, idempotency key or data hold `q`.
async fn find_letters(state: &ConsoleState, q: &str, problems: &mut Vec<String>) -> Vec<Letter> {
    let module = state.module();
    let topics: BTreeSet<String> = module
        .config()
        .triggers
        .iter()
        .map(|trigger| trigger.topic.to_string())
        .collect();
    let mut letters = Vec::new();
    for topic in topics {
        let request = DlqRequest {
            topic: topic.clone(),
            contains: Some(q.to_owned()),
            limit: Some(FOUND),
            ..DlqRequest::default()
        };
        match module.dlq_list(&request).await {
            Ok((records, _)) => letters.extend(records.iter().map(|record| Letter {
                id: record.id.to_string(),
                topic: topic.clone(),
                trigger: record.trigger.to_string(),
                failed_at: view::time(record.last_failed_at),
                error: view::cut(&record.error.message, 100),
            })),
            Err(err) => problems.push(format!("DLQ of {topic}: {err}")),
        }
    }
    letters
}

/// `GET /console/search?q=`.
pub(crate) async fn page(
    State(state): State<ConsoleState>,
    Query(query): Query<SearchQuery>,
    viewer: Viewer,
) -> Response {
    let q = query.q.trim().to_owned();
    let mut problems = Vec::new();
    let (runs, letters) = if q.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        (
            find_runs(&state, &q, &mut problems).await,
            find_letters(&state, &q, &mut problems).await,
        )
    };
    let page = SearchPage {
        frame: viewer.frame("Find a message", "search"),
        q,
        runs,
        letters,
        problems,
    };
    respond(StatusCode::OK, page.render(), page.frame.flash.is_some())
}
