//! `queue.schedule_create`, `schedule_list`, `schedule_pause`, `schedule_resume`,
//! `schedule_delete` and `schedule_fire`: schedules made and steered at run time, kept in the
//! runs store beside the config's own.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use topiq_adapter::{NewMessage, Timestamp};
use topiq_runs::{CatchUp, Schedule, ScheduleSpec};

use super::{CallError, EnqueueResult, parse_args, topic};
use crate::module::QueueModule;
use crate::schedules::{Cadence, MIN_IDEMPOTENCY_WINDOW, check_name, tick_key};

/// Arguments of `queue.schedule_create`: a name and the schedule's definition.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// The schedule's name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// A 5-field cron expression; exactly one of `cron` and `every`.
    #[serde(default)]
    pub cron: Option<String>,
    /// An interval such as `"30s"`.
    #[serde(default)]
    pub every: Option<String>,
    /// The IANA time zone of `cron` (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// The topic each tick enqueues to (one this config declares).
    pub topic: String,
    /// The data of each tick's message.
    #[serde(default)]
    pub data: Value,
    /// `none` (default) or `last`.
    #[serde(default)]
    pub catch_up: CatchUp,
}

/// Arguments of the calls that name one schedule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleName {
    /// The schedule's name.
    pub name: String,
}

/// A schedule as `queue.schedule_list` shows it: as stored, with its next tick.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScheduleView {
    /// The stored schedule.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// When it fires next (`None` while paused, or when its cron never matches again).
    pub next_tick: Option<Timestamp>,
}

impl QueueModule {
    /// Runs the `queue.schedule_*` call `name` with JSON `args`.
    pub(super) async fn call_schedules(&self, name: &str, args: Value) -> Result<Value, CallError> {
        if name == "queue.schedule_create" {
            let schedule = self.schedule_create(parse_args(name, args)?).await?;
            return Ok(json!({ "schedule": schedule }));
        }
        if name == "queue.schedule_list" {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Nothing {}
            let Nothing {} = parse_args(name, args)?;
            return Ok(json!({ "schedules": self.schedule_list().await? }));
        }
        let ScheduleName { name: schedule } = parse_args(name, args)?;
        match name {
            "queue.schedule_pause" => self.schedule_set_paused(&schedule, true).await?,
            "queue.schedule_resume" => self.schedule_set_paused(&schedule, false).await?,
            "queue.schedule_delete" => self.schedule_delete(&schedule).await?,
            "queue.schedule_fire" => return Ok(self.schedule_fire(&schedule).await?.to_json()),
            _ => {
                return Err(CallError::UnknownCall {
                    name: name.to_owned(),
                });
            }
        }
        Ok(json!({}))
    }

    /// `queue.schedule_create`: creates the schedule, or replaces its definition (keeping
    /// whether it is paused and its last tick); it fires from its next tick on every instance.
    pub async fn schedule_create(
        &self,
        request: ScheduleRequest,
    ) -> Result<ScheduleView, CallError> {
        check_name(&request.name).map_err(CallError::invalid)?;
        let spec = ScheduleSpec {
            cron: request.cron,
            every: request.every,
            timezone: request.timezone,
            topic: topic(&request.topic)?,
            data: request.data,
            catch_up: request.catch_up,
        };
        Cadence::of(&spec).map_err(|err| CallError::invalid(err.to_string()))?;
        let Some(topic_spec) = self.topic(&spec.topic) else {
            return Err(topiq_adapter::Error::UnknownTopic { topic: spec.topic }.into());
        };
        if topic_spec.idempotency_window < MIN_IDEMPOTENCY_WINDOW {
            return Err(CallError::invalid(format!(
                "topic {} keeps idempotency keys for {:?}; a schedule needs at least {MIN_IDEMPOTENCY_WINDOW:?}",
                spec.topic, topic_spec.idempotency_window
            )));
        }
        let store = self.runs().store();
        store
            .put_schedule(&request.name, &spec, false, Timestamp::now())
            .await?;
        tracing::info!(schedule = %request.name, "schedule created by a call");
        let schedule = self.stored_schedule(&request.name).await?;
        Ok(view(schedule))
    }

    /// `queue.schedule_list`: every schedule in the runs store, with its next tick.
    pub async fn schedule_list(&self) -> Result<Vec<ScheduleView>, CallError> {
        let schedules = self.runs().store().schedules().await?;
        Ok(schedules.into_iter().map(view).collect())
    }

    /// `queue.schedule_pause` / `schedule_resume`: a paused schedule fires nothing on any
    /// instance; ticks it missed count as missed (`catch_up` decides) once resumed.
    pub async fn schedule_set_paused(&self, name: &str, paused: bool) -> Result<(), CallError> {
        if !self
            .runs()
            .store()
            .set_schedule_paused(name, paused)
            .await?
        {
            return Err(unknown(name));
        }
        tracing::info!(schedule = %name, paused, "schedule paused or resumed by a call");
        Ok(())
    }

    /// `queue.schedule_delete`: the schedule fires no more (a config that declares it
    /// declares it again at its next start).
    pub async fn schedule_delete(&self, name: &str) -> Result<(), CallError> {
        if !self.runs().store().delete_schedule(name).await? {
            return Err(unknown(name));
        }
        tracing::info!(schedule = %name, "schedule deleted by a call");
        Ok(())
    }

    /// `queue.schedule_fire`: enqueues the schedule's message now, as a tick at this time
    /// (its regular ticks go on as before).
    pub async fn schedule_fire(&self, name: &str) -> Result<EnqueueResult, CallError> {
        let schedule = self.stored_schedule(name).await?;
        let mut message = NewMessage::new(schedule.spec.data.clone());
        message.idempotency_key = Some(tick_key(name, Timestamp::now()));
        let receipt = self.publish(&schedule.spec.topic, message).await?;
        tracing::info!(schedule = %name, id = %receipt.message_id, "schedule fired by a call");
        Ok(receipt.into())
    }

    async fn stored_schedule(&self, name: &str) -> Result<Schedule, CallError> {
        let schedules = self.runs().store().schedules().await?;
        schedules
            .into_iter()
            .find(|schedule| schedule.name == name)
            .ok_or_else(|| unknown(name))
    }
}

fn unknown(name: &str) -> CallError {
    CallError::UnknownSchedule {
        name: name.to_owned(),
    }
}

fn view(schedule: Schedule) -> ScheduleView {
    let next_tick = match Cadence::of(&schedule.spec) {
        Ok(cadence) if !schedule.paused => {
            cadence.next_after(Timestamp::now().max(schedule.last_tick))
        }
        _ => None,
    };
    ScheduleView {
        schedule,
        next_tick,
    }
}
