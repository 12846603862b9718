//! Enqueue: a message to a topic from a form, its data checked as JSON before it is sent.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use topiq::EnqueueRequest;

use super::{Frame, Viewer, done, encode, respond};
use crate::ConsoleState;
use crate::auth::Action;
use crate::view;

/// The form's fields (empty is none).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct EnqueueForm {
    #[serde(default)]
    topic: String,
    #[serde(default)]
    data: String,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    delay: String,
    #[serde(default)]
    run_at: String,
    #[serde(default)]
    priority: String,
}

impl EnqueueForm {
    fn request(&self) -> Result<EnqueueRequest, String> {
        let data = serde_json::from_str(&self.data)
            .map_err(|err| format!("The data is not JSON: {err}. Nothing was enqueued."))?;
        let priority = view::filled(&self.priority)
            .map(|priority| {
                priority
                    .parse::<u32>()
                    .map_err(|_| format!("priority: {priority:?} is not a whole number from 0 up"))
            })
            .transpose()?;
        Ok(EnqueueRequest {
            topic: self.topic.trim().to_owned(),
            data,
            idempotency_key: view::filled(&self.idempotency_key).map(str::to_owned),
            delay: view::filled(&self.delay).map(str::to_owned),
            run_at: view::time_field("run at", &self.run_at)?.map(|at| at.to_string()),
            traceparent: None,
            baggage: None,
            priority,
        })
    }
}

#[derive(Template)]
#[template(path = "enqueue.html")]
struct EnqueuePage {
    frame: Frame,
    topics: Vec<String>,
    form: EnqueueForm,
    error: Option<String>,
    last: Option<String>,
}

/// The message the last enqueue made, to link to its runs.
#[derive(Deserialize)]
pub(crate) struct Last {
    #[serde(default)]
    last: Option<String>,
}

fn form_page(
    state: &ConsoleState,
    viewer: &Viewer,
    form: EnqueueForm,
    error: Option<String>,
    last: Option<String>,
) -> Response {
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let page = EnqueuePage {
        frame: viewer.frame("Enqueue a message", "enqueue"),
        topics: state
            .module()
            .config()
            .topics
            .keys()
            .map(ToString::to_string)
            .collect(),
        form,
        error,
        last,
    };
    respond(status, page.render(), page.frame.flash.is_some())
}

/// `GET /console/enqueue`.
pub(crate) async fn page(
    State(state): State<ConsoleState>,
    Query(Last { last }): Query<Last>,
    viewer: Viewer,
) -> Response {
    let form = EnqueueForm {
        data: "{}".into(),
        ..EnqueueForm::default()
    };
    form_page(&state, &viewer, form, None, last)
}

/// `POST /console/enqueue`: a mistake comes back in the form with what was typed.
pub(crate) async fn submit(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Action(form): Action<EnqueueForm>,
) -> Response {
    let request = match form.request() {
        Ok(request) => request,
        Err(err) => return form_page(&state, &viewer, form, Some(err), None),
    };
    match state.module().enqueue(request).await {
        Ok(result) => {
            let id = result.message_id.to_string();
            let text = if result.duplicate {
                format!(
                    "Not enqueued: the idempotency key was used inside the topic's window, by message {id}."
                )
            } else {
                format!("Enqueued message {id} to {}.", form.topic.trim())
            };
            done(
                &format!("/console/enqueue?last={}", encode(&id)),
                true,
                &text,
            )
        }
        Err(err) => {
            let error = format!("{err} ({})", err.code());
            form_page(&state, &viewer, form, Some(error), None)
        }
    }
}
