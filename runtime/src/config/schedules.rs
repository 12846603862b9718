//! The `schedules:` section: topics enqueued to on a cron expression or an interval, each
//! checked here (name, cadence, topic) so a bad one stops the start.

use std::collections::BTreeMap;

use topiq_adapter::{TopicName, TopicSpec};
use topiq_runs::ScheduleSpec;

use super::ConfigError;
use super::raw::RawSchedules;
use super::source::spanned_at;
use crate::schedules::{Cadence, MIN_IDEMPOTENCY_WINDOW, check_name};

/// One schedule of the config.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleSettings {
    /// Its name, unique in the runs store.
    pub name: String,
    /// When it fires and what it enqueues.
    pub spec: ScheduleSpec,
}

/// Every schedule, checked; each one's topic joins `topics` (declared at start) and must keep
/// idempotency keys long enough for every instance to fire a tick once.
pub(super) fn validate_schedules(
    file: &str,
    raw: RawSchedules,
    topics: &mut BTreeMap<TopicName, TopicSpec>,
) -> Result<Vec<ScheduleSettings>, ConfigError> {
    let mut schedules = Vec::with_capacity(raw.len());
    for (name, spanned) in raw {
        let location = spanned_at(file, &spanned);
        let key = format!("schedules.{name}");
        check_name(&name)
            .map_err(|message| ConfigError::invalid(location.clone(), &key, message))?;
        let spec = spanned.value;
        Cadence::of(&spec)
            .map_err(|err| ConfigError::invalid(location.clone(), &key, err.to_string()))?;
        let topic = topics
            .entry(spec.topic.clone())
            .or_insert_with(|| TopicSpec::new(spec.topic.clone()));
        if topic.idempotency_window < MIN_IDEMPOTENCY_WINDOW {
            return Err(ConfigError::invalid(
                location,
                format!("{key}.topic"),
                format!(
                    "topic {} keeps idempotency keys for {:?}; a schedule needs at least {:?} (each instance enqueues a tick under one key, and the topic keeps one): raise its idempotency_window",
                    spec.topic, topic.idempotency_window, MIN_IDEMPOTENCY_WINDOW
                ),
            ));
        }
        schedules.push(ScheduleSettings { name, spec });
    }
    Ok(schedules)
}
