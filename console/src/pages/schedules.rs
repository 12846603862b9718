//! Schedules: each one's cadence, time zone, topic, next and last ticks; pause, resume and
//! fire now.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use topiq::calls::ScheduleView;

use super::{Frame, Viewer, done, encode, failed, respond};
use crate::ConsoleState;
use crate::auth::{Action, CsrfOnly};
use crate::view;

/// A schedule as the table shows it.
struct Row {
    name: String,
    /// The name as a URL path segment.
    path: String,
    cadence: String,
    timezone: String,
    topic: String,
    next_tick: String,
    last_tick: String,
    paused: bool,
    from_config: bool,
}

impl Row {
    fn of(view: &ScheduleView) -> Self {
        let spec = &view.schedule.spec;
        let cadence = match (&spec.cron, &spec.every) {
            (Some(cron), _) => format!("cron {cron}"),
            (None, Some(every)) => format!("every {every}"),
            (None, None) => "—".to_owned(),
        };
        Self {
            name: view.schedule.name.clone(),
            path: super::segment(&view.schedule.name),
            cadence,
            timezone: spec.timezone.clone().unwrap_or_else(|| "UTC".to_owned()),
            topic: spec.topic.to_string(),
            next_tick: view::maybe_time(view.next_tick),
            last_tick: view::time(view.schedule.last_tick),
            paused: view.schedule.paused,
            from_config: view.schedule.from_config,
        }
    }
}

#[derive(Template)]
#[template(path = "schedules.html")]
struct SchedulesPage {
    frame: Frame,
    rows: Vec<Row>,
    error: Option<String>,
}

/// `GET /console/schedules`.
pub(crate) async fn page(State(state): State<ConsoleState>, viewer: Viewer) -> Response {
    let (rows, error) = match state.module().schedule_list().await {
        Ok(schedules) => (schedules.iter().map(Row::of).collect(), None),
        Err(err) => (Vec::new(), Some(format!("{err} ({})", err.code()))),
    };
    let page = SchedulesPage {
        frame: viewer.frame("Schedules", "schedules"),
        rows,
        error,
    };
    respond(StatusCode::OK, page.render(), page.frame.flash.is_some())
}

/// `POST /console/schedules/{name}/{action}`: `pause`, `resume` or `fire`.
pub(crate) async fn act(
    State(state): State<ConsoleState>,
    Path((name, action)): Path<(String, String)>,
    Action(_): Action<CsrfOnly>,
) -> Response {
    let back = "/console/schedules";
    let module = state.module();
    let result = match action.as_str() {
        "pause" => module
            .schedule_set_paused(&name, true)
            .await
            .map(|()| format!("Paused schedule {name}: it fires nothing until resumed.")),
        "resume" => module
            .schedule_set_paused(&name, false)
            .await
            .map(|()| format!("Resumed schedule {name}.")),
        "fire" => module.schedule_fire(&name).await.map(|fired| {
            let id = fired.message_id.to_string();
            if fired.duplicate {
                format!("Schedule {name} had fired this moment already, as message {id}.")
            } else {
                format!(
                    "Fired schedule {name} now: message {id} (runs page: /console/runs/{}).",
                    encode(&id)
                )
            }
        }),
        other => {
            return done(back, false, &format!("No schedule action {other:?}."));
        }
    };
    match result {
        Ok(text) => done(back, true, &text),
        Err(err) => failed(back, &err),
    }
}
