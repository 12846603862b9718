//! What operators set that every instance follows: paused triggers and schedules. Kept in
//! the runs store, beside the runs, so every instance sharing the store sees the same.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use topiq_adapter::{Timestamp, TopicName, TriggerName};

use crate::store::StoreError;

/// A trigger an operator paused: no instance takes new messages for it until it is resumed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PausedTrigger {
    /// The trigger.
    pub trigger: TriggerName,
    /// When it was paused.
    pub paused_at: Timestamp,
}

/// What a schedule does after its instances were down (or it was paused) over some of its
/// ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Missed ticks are skipped; the next tick fires on time.
    #[default]
    None,
    /// The latest missed tick fires once, as soon as an instance runs it again.
    Last,
}

/// When a schedule fires and what it enqueues (`schedules:` in the config, or
/// `queue.schedule_create`). Checked by the runtime, which parses the cadence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// A standard 5-field cron expression (`"0 2 * * *"`); exactly one of `cron` and `every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A fixed interval (`"30s"`), its ticks aligned to multiples of it since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// The IANA time zone the cron expression reads in (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The topic each tick enqueues to.
    pub topic: TopicName,
    /// The data each tick enqueues (default `null`).
    #[serde(default)]
    pub data: Value,
    /// What happens to ticks missed while no instance ran it.
    #[serde(default)]
    pub catch_up: CatchUp,
}

/// A schedule as the store keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Its name, unique in the store.
    pub name: String,
    /// What it does.
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    /// True while paused: it fires nothing.
    pub paused: bool,
    /// True when a config file declares it (declared again at each start), false when made at
    /// run time.
    pub from_config: bool,
    /// The latest tick fired (or, before the first, when the schedule was made): ticks up to
    /// it never fire again.
    pub last_tick: Timestamp,
    /// When its definition last changed.
    pub updated_at: Timestamp,
}

/// The control half of the runs store: paused triggers and schedules, shared by every
/// instance that shares the store.
pub trait ControlStore: Send + Sync + 'static {
    /// Pauses `trigger` (from `at`); pausing a paused trigger keeps its first time.
    fn pause_trigger<'a>(
        &'a self,
        trigger: &'a TriggerName,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Resumes `trigger`; false when it was not paused.
    fn resume_trigger<'a>(
        &'a self,
        trigger: &'a TriggerName,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Every paused trigger.
    fn paused_triggers(&self) -> BoxFuture<'_, Result<Vec<PausedTrigger>, StoreError>>;

    /// Creates schedule `name`, or replaces its definition (keeping whether it is paused and
    /// its last tick); a new schedule's last tick is `now`, so it fires from its next tick.
    fn put_schedule<'a>(
        &'a self,
        name: &'a str,
        spec: &'a ScheduleSpec,
        from_config: bool,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Every schedule, by name.
    fn schedules(&self) -> BoxFuture<'_, Result<Vec<Schedule>, StoreError>>;

    /// Pauses or resumes schedule `name`; false when there is none.
    fn set_schedule_paused<'a>(
        &'a self,
        name: &'a str,
        paused: bool,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Deletes schedule `name`; false when there is none.
    fn delete_schedule<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Records that schedule `name` fired `tick`: its last tick becomes `tick` when later;
    /// false when it was not (another instance recorded a later one, or there is none).
    fn advance_schedule<'a>(
        &'a self,
        name: &'a str,
        tick: Timestamp,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}
