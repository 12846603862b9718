//! Dead letters: a DLQ's records filtered by trigger, error text and time, each with its data,
//! error, attempts and trace id; redrive or purge the selected records or every one matching
//! the filter, always after a page that shows the dry-run count and asks to confirm; the
//! operation then runs as a job whose page shows its progress.

use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use topiq::DlqRequest;
use topiq_adapter::DeadLetter;

use super::{Frame, Viewer, done, encode, error_page, html, respond};
use crate::ConsoleState;
use crate::auth::Action;
use crate::jobs::Job;
use crate::view;

/// Records per page.
const PAGE: usize = 50;

/// The filters of the page, as its form sends them (empty is none).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct DlqFilters {
    #[serde(default)]
    topic: String,
    #[serde(default)]
    trigger: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    cursor: String,
}

/// A form field trimmed, as an owned value of a call's request.
fn owned(text: &str) -> Option<String> {
    view::filled(text).map(str::to_owned)
}

/// A time as a call's request writes it.
fn rfc3339(at: Option<jiff::Timestamp>) -> Option<String> {
    at.map(|at| at.to_string())
}

impl DlqFilters {
    /// The topic: the trigger's, the one chosen, or (none chosen) the first that has a
    /// trigger. A trigger the config does not have is an error, never widened to its topic.
    fn resolve_topic(&mut self, state: &ConsoleState) -> Result<(), String> {
        let config = state.module().config();
        let trigger = self.trigger.trim();
        if !trigger.is_empty() {
            let known = config.trigger(trigger).ok_or_else(|| {
                format!("The config has no trigger {trigger:?}; the overview lists every trigger.")
            })?;
            self.topic = known.topic.to_string();
        }
        if self.topic.trim().is_empty()
            && let Some(first) = config.triggers.first()
        {
            self.topic = first.topic.to_string();
        }
        Ok(())
    }

    fn request(&self) -> Result<DlqRequest, String> {
        Ok(DlqRequest {
            topic: self.topic.trim().to_owned(),
            trigger: owned(&self.trigger),
            error_contains: owned(&self.error),
            since: rfc3339(view::time_field("since", &self.since)?),
            until: rfc3339(view::time_field("until", &self.until)?),
            limit: Some(PAGE),
            cursor: owned(&self.cursor),
            ..DlqRequest::default()
        })
    }

    fn has_filter(&self) -> bool {
        [&self.error, &self.since, &self.until]
            .iter()
            .any(|field| !field.trim().is_empty())
    }

    /// Whose DLQ, in words.
    fn whose(&self) -> String {
        match owned(&self.trigger) {
            Some(trigger) => format!("{} / {trigger}", self.topic),
            None => format!("{} (every trigger)", self.topic),
        }
    }

    fn query_string(&self, cursor: &str) -> String {
        format!(
            "topic={}&trigger={}&error={}&since={}&until={}&cursor={}",
            encode(&self.topic),
            encode(&self.trigger),
            encode(&self.error),
            encode(&self.since),
            encode(&self.until),
            encode(cursor)
        )
    }
}

/// A record as the page shows it.
struct Record {
    id: String,
    trigger: String,
    attempts: u32,
    first_failed_at: String,
    last_failed_at: String,
    enqueued_at: String,
    kind: String,
    error: String,
    error_short: String,
    data: String,
    idempotency_key: String,
    trace_id: String,
}

impl Record {
    fn of(record: &DeadLetter) -> Self {
        Self {
            id: record.id.to_string(),
            trigger: record.trigger.to_string(),
            attempts: record.attempts,
            first_failed_at: view::time(record.first_failed_at),
            last_failed_at: view::time(record.last_failed_at),
            enqueued_at: view::time(record.enqueued_at),
            kind: record.error.kind.to_string(),
            error: record.error.message.clone(),
            error_short: view::cut(&record.error.message, 80),
            data: view::pretty(&record.data),
            idempotency_key: record.idempotency_key.clone().unwrap_or_default(),
            trace_id: view::trace_id(record.traceparent.as_deref()),
        }
    }
}

#[derive(Template)]
#[template(path = "dlq.html")]
struct DlqPage {
    frame: Frame,
    filters: DlqFilters,
    topics: Vec<String>,
    triggers: Vec<(String, String)>,
    whose: String,
    total: Option<u64>,
    records: Vec<Record>,
    error: Option<String>,
    next: Option<String>,
}

/// `GET /console/dlq`.
pub(crate) async fn page(
    State(state): State<ConsoleState>,
    Query(mut filters): Query<DlqFilters>,
    viewer: Viewer,
) -> Response {
    let config = state.module().config();
    let mut total = None;
    let resolved = filters.resolve_topic(&state);
    let (records, next, error) = match resolved.and_then(|()| filters.request()) {
        Ok(request) => {
            total = state.module().dlq_count(&request).await.ok();
            match state.module().dlq_list(&request).await {
                Ok((records, next)) => (
                    records.iter().map(Record::of).collect(),
                    next.map(|cursor| filters.query_string(&cursor)),
                    None,
                ),
                Err(err) => (Vec::new(), None, Some(format!("{err} ({})", err.code()))),
            }
        }
        Err(err) => (Vec::new(), None, Some(err)),
    };
    let page = DlqPage {
        frame: viewer.frame("Dead letters", "dlq"),
        topics: config
            .triggers
            .iter()
            .map(|trigger| trigger.topic.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        triggers: config
            .triggers
            .iter()
            .map(|trigger| (trigger.name.to_string(), trigger.topic.to_string()))
            .collect(),
        whose: filters.whose(),
        filters,
        total,
        records,
        error,
        next,
    };
    respond(StatusCode::OK, page.render(), page.frame.flash.is_some())
}

/// What the action form sends: the filters, the selected ids, the operation and its scope.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct DlqActionForm {
    #[serde(flatten)]
    filters: DlqFilters,
    #[serde(default)]
    ids: Vec<String>,
    /// `redrive` or `purge`.
    #[serde(default)]
    op: String,
    /// `selected` or `matching`.
    #[serde(default)]
    scope: String,
    /// The time the confirm page counted at (RFC 3339): the operation touches no record
    /// dead-lettered after it, so it never does more than it asked about.
    #[serde(default)]
    as_of: String,
}

/// An action on DLQ records, its topic resolved.
struct DlqAction {
    filters: DlqFilters,
    ids: Vec<String>,
    op: String,
    scope: String,
    as_of: String,
}

impl DlqAction {
    fn of(form: DlqActionForm, state: &ConsoleState) -> Result<Self, String> {
        let mut filters = DlqFilters {
            cursor: String::new(),
            ..form.filters
        };
        filters.resolve_topic(state)?;
        Ok(Self {
            filters,
            ids: form.ids,
            op: form.op,
            scope: form.scope,
            as_of: form.as_of,
        })
    }

    /// The call's request: the selected ids (of the chosen trigger), or every record matching
    /// the filters.
    fn request(&self) -> Result<DlqRequest, String> {
        let mut request = self.filters.request()?;
        request.limit = None;
        request.cursor = None;
        match self.scope.as_str() {
            "selected" if self.ids.is_empty() => Err(
                "No record is selected: tick the records first, or act on every matching one."
                    .into(),
            ),
            "selected" => {
                request.ids = Some(self.ids.clone());
                request.error_contains = None;
                request.since = None;
                request.until = None;
                Ok(request)
            }
            "matching" => {
                // Nothing dead-lettered after the count was shown.
                if let Some(as_of) = view::time_field("as of", &self.as_of)? {
                    let until = view::time_field("until", &self.filters.until)?;
                    request.until = rfc3339(Some(until.map_or(as_of, |until| until.min(as_of))));
                }
                Ok(request)
            }
            other => Err(format!("unknown scope {other:?}")),
        }
    }

    fn is_redrive(&self) -> Result<bool, String> {
        match self.op.as_str() {
            "redrive" => Ok(true),
            "purge" => Ok(false),
            other => Err(format!("unknown operation {other:?}")),
        }
    }

    fn back(&self) -> String {
        format!("/console/dlq?{}", self.filters.query_string(""))
    }

    /// The operation in words: `Redrive 3 selected records of orders / charge`, without the
    /// count when it is not known.
    fn describe(&self, count: Option<u64>) -> String {
        let verb = if self.op == "redrive" {
            "Redrive"
        } else {
            "Purge"
        };
        let which = if self.scope == "selected" {
            "selected".to_owned()
        } else if self.filters.has_filter() {
            "matching".to_owned()
        } else {
            "(all)".to_owned()
        };
        let noun = if count == Some(1) {
            "record"
        } else {
            "records"
        };
        let count = count.map(|count| format!(" {count}")).unwrap_or_default();
        format!("{verb}{count} {which} {noun} of {}", self.filters.whose())
    }
}

#[derive(Template)]
#[template(path = "dlq_confirm.html")]
struct ConfirmPage {
    frame: Frame,
    action: DlqAction,
    question: String,
    count: u64,
    redrive: bool,
    back: String,
}

/// The action a form asks for, its request and whether it redrives; or where to go back to
/// and why not.
fn parse_action(
    form: DlqActionForm,
    state: &ConsoleState,
) -> Result<(DlqAction, DlqRequest, bool), (String, String)> {
    let fallback = "/console/dlq".to_owned();
    let action = DlqAction::of(form, state).map_err(|err| (fallback, err))?;
    let back = action.back();
    let request = action.request().map_err(|err| (back.clone(), err))?;
    let redrive = action.is_redrive().map_err(|err| (back, err))?;
    Ok((action, request, redrive))
}

/// `POST /console/dlq/confirm`: counts what the operation would touch (a dry run) and asks.
pub(crate) async fn confirm(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Action(mut form): Action<DlqActionForm>,
) -> Response {
    if form.as_of.is_empty() {
        form.as_of = jiff::Timestamp::now().to_string();
    }
    let (action, request, redrive) = match parse_action(form, &state) {
        Ok(parts) => parts,
        Err((back, err)) => return done(&back, false, &err),
    };
    let back = action.back();
    let dry_run = DlqRequest {
        dry_run: true,
        ..request
    };
    let count = match state.module().redrive_dlq(&dry_run).await {
        Ok(count) => count,
        Err(err) => return super::failed(&back, &err),
    };
    let page = ConfirmPage {
        frame: viewer.frame("Confirm", "dlq"),
        question: format!("{}?", action.describe(Some(count))),
        count,
        redrive,
        back,
        action,
    };
    respond(StatusCode::OK, page.render(), page.frame.flash.is_some())
}

/// `POST /console/dlq/apply`: starts the confirmed operation as a job and shows its page.
pub(crate) async fn apply(
    State(state): State<ConsoleState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Action(form): Action<DlqActionForm>,
) -> Response {
    let (action, request, redrive) = match parse_action(form, &state) {
        Ok(parts) => parts,
        Err((back, err)) => return done(&back, false, &err),
    };
    let back = action.back();
    let module = state.module().clone();
    let label = action.describe(None);
    let peer = peer.map(|Extension(ConnectInfo(peer))| peer.to_string());
    tracing::info!(peer = ?peer, operation = %label, "DLQ changed through the console");
    let id = state
        .jobs()
        .start(label, back, move |job: Arc<Job>| async move {
            let result = if redrive {
                let progress = |done, total| job.advance(done, total);
                module.redrive_dlq_reporting(&request, &progress).await
            } else {
                module.dlq_purge(&request).await
            };
            result.map_err(|err| format!("{err} ({})", err.code()))
        });
    // A 303: the browser GETs the job page.
    Redirect::to(&format!("/console/jobs/{id}")).into_response()
}

#[derive(Template)]
#[template(path = "job_progress.html")]
struct JobProgress {
    done: u64,
    total: u64,
    finished: bool,
    outcome: Option<(bool, String)>,
    back: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    frame: Frame,
    id: u64,
    progress: String,
}

fn progress_of(job: &Job) -> JobProgress {
    let (done, total) = job.progress();
    let outcome = job.outcome().map(|outcome| match outcome {
        Ok(changed) => (
            true,
            format!("Done: {} changed.", view::count(changed, "record")),
        ),
        Err(err) => (
            false,
            format!("Stopped after {}: {err}", view::count(done, "record")),
        ),
    });
    JobProgress {
        done,
        total,
        finished: outcome.is_some(),
        outcome,
        back: job.back.clone(),
    }
}

fn unknown_job() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "This instance has no such job: jobs are kept by the instance that started them, and only the last 50.",
    )
}

/// `GET /console/jobs/{id}`.
pub(crate) async fn job(
    State(state): State<ConsoleState>,
    Path(id): Path<u64>,
    viewer: Viewer,
) -> Response {
    let Some(job) = state.jobs().get(id) else {
        return unknown_job();
    };
    let page = JobPage {
        frame: viewer.frame(job.label.clone(), "dlq"),
        id,
        progress: progress_of(&job).render().unwrap_or_default(),
    };
    respond(StatusCode::OK, page.render(), page.frame.flash.is_some())
}

/// `GET /console/fragments/jobs/{id}`: the progress alone, for the page's refresh.
pub(crate) async fn job_fragment(
    State(state): State<ConsoleState>,
    Path(id): Path<u64>,
) -> Response {
    match state.jobs().get(id) {
        Some(job) => html(StatusCode::OK, progress_of(&job).render()),
        None => unknown_job(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_action_form_reads_its_filters_and_every_ticked_id() {
        let body = "csrf=x&topic=orders&trigger=charge&error=smtp&since=&until=&ids=a&ids=b&op=purge&scope=selected&as_of=2026-12-05T22%3A00%3A00Z";
        let form: DlqActionForm = serde_html_form::from_str(body).unwrap();
        assert_eq!(form.filters.trigger, "charge");
        assert_eq!(form.filters.error, "smtp");
        assert_eq!(form.ids, ["a", "b"]);
        assert_eq!(
            (form.op.as_str(), form.scope.as_str()),
            ("purge", "selected")
        );
        let one: DlqActionForm = serde_html_form::from_str("topic=orders&ids=a").unwrap();
        assert_eq!(one.ids, ["a"]);
    }
}
