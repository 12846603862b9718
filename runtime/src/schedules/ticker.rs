//! Each instance's ticker: reads the schedules from the runs store every
//! [`CHECK_EVERY`], and enqueues each tick that fell since the schedule's last one (or the
//! latest missed one, with `catch_up: last`).

use std::collections::HashSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use topiq_adapter::{NewMessage, Timestamp};
use topiq_runs::{CatchUp, Schedule, SharedStore, StoreError};

use super::{Cadence, tick_key};
use crate::config::ScheduleSettings;
use crate::module::QueueModule;

/// How often each instance reads the schedules and fires what is due: a tick fires at most
/// this late, plus the time its enqueue takes.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// A tick not fired within this time after it fell was missed (every instance was down, or
/// the schedule paused): `catch_up` decides whether it fires. Shorter than
/// [`super::MIN_IDEMPOTENCY_WINDOW`], so a tick fired late still meets its first copy's key.
pub const ON_TIME_FOR: Duration = Duration::from_secs(10);

/// The most ticks of one schedule one check fires.
const MAX_TICKS_PER_CHECK: usize = 16;

/// Fires the schedules' ticks until `stop`.
pub(crate) async fn run_ticker(module: QueueModule, stop: CancellationToken) {
    let mut ticker = Ticker {
        module,
        warned: HashSet::new(),
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = ticker.check() => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

/// The ticker of one instance; it remembers which schedules it warned about (by name and
/// definition time), so a schedule it cannot fire is logged once, not every check.
struct Ticker {
    module: QueueModule,
    warned: HashSet<(String, Timestamp)>,
}

impl Ticker {
    async fn check(&mut self) {
        let schedules = match self.module.runs().store().schedules().await {
            Ok(schedules) => schedules,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the schedules from the runs store");
                return;
            }
        };
        let now = Timestamp::now();
        for schedule in schedules.iter().filter(|schedule| !schedule.paused) {
            let Some(cadence) = self.usable(schedule) else {
                continue;
            };
            for tick in due_ticks(&cadence, schedule, now) {
                if !self.fire(schedule, tick).await {
                    break;
                }
            }
        }
    }

    /// The cadence of `schedule` when this instance can fire it: a valid definition (one
    /// written by another version may not be) on a topic this config declares.
    fn usable(&mut self, schedule: &Schedule) -> Option<Cadence> {
        let problem = match Cadence::of(&schedule.spec) {
            Ok(_) if self.module.topic(&schedule.spec.topic).is_none() => format!(
                "its topic {} is not in this instance's config; instances that have it fire it",
                schedule.spec.topic
            ),
            Ok(cadence) => return Some(cadence),
            Err(err) => err.to_string(),
        };
        if self
            .warned
            .insert((schedule.name.clone(), schedule.updated_at))
        {
            tracing::warn!(schedule = %schedule.name, "this instance does not fire the schedule: {problem}");
        }
        None
    }

    /// Enqueues `schedule`'s `tick` and records it; false when the enqueue failed (the tick
    /// is tried again at the next check, while it is on time).
    async fn fire(&self, schedule: &Schedule, tick: Timestamp) -> bool {
        let mut message = NewMessage::new(schedule.spec.data.clone());
        message.idempotency_key = Some(tick_key(&schedule.name, tick));
        match self.module.publish(&schedule.spec.topic, message).await {
            Ok(receipt) if !receipt.duplicate => {
                tracing::info!(schedule = %schedule.name, %tick, id = %receipt.message_id, "schedule fired");
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(schedule = %schedule.name, %tick, error = %err, "cannot enqueue the schedule's tick; trying again");
                return false;
            }
        }
        let store = self.module.runs().store();
        if let Err(err) = store.advance_schedule(&schedule.name, tick).await {
            tracing::warn!(schedule = %schedule.name, %tick, error = %err, "cannot record the schedule's tick");
        }
        true
    }
}

/// The ticks of `schedule` to fire at `now`, oldest first: with `catch_up: last`, the latest
/// missed one (fell after its last tick, over [`ON_TIME_FOR`] ago); then every tick that fell
/// since its last tick and within [`ON_TIME_FOR`].
fn due_ticks(cadence: &Cadence, schedule: &Schedule, now: Timestamp) -> Vec<Timestamp> {
    let on_time = jiff::SignedDuration::try_from(ON_TIME_FOR).unwrap_or_default();
    let horizon = now.checked_sub(on_time).unwrap_or(now);
    let mut due = Vec::new();
    if schedule.spec.catch_up == CatchUp::Last
        && let Some(missed) = cadence.latest_at_or_before(horizon)
        && missed > schedule.last_tick
    {
        due.push(missed);
    }
    let mut tick = schedule.last_tick.max(horizon);
    while due.len() < MAX_TICKS_PER_CHECK {
        match cadence.next_after(tick) {
            Some(next) if next <= now => {
                due.push(next);
                tick = next;
            }
            _ => break,
        }
    }
    due
}

/// Declares the config's schedules in the runs store (keeping each one's pause and last
/// tick), and deletes the ones an earlier config declared and this one does not.
pub(crate) async fn declare_schedules(
    store: &SharedStore,
    schedules: &[ScheduleSettings],
) -> Result<(), StoreError> {
    let now = Timestamp::now();
    for schedule in schedules {
        store
            .put_schedule(&schedule.name, &schedule.spec, true, now)
            .await?;
    }
    for stored in store.schedules().await? {
        let declared = schedules
            .iter()
            .any(|schedule| schedule.name == stored.name);
        if stored.from_config && !declared {
            store.delete_schedule(&stored.name).await?;
            tracing::info!(schedule = %stored.name, "schedule deleted: the config no longer declares it");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::Value;
    use topiq_adapter::{Timestamp, TopicName};
    use topiq_runs::{CatchUp, Schedule, ScheduleSpec};

    use super::{Cadence, due_ticks};

    fn schedule(every: &str, catch_up: CatchUp, last_tick: &str) -> Schedule {
        Schedule {
            name: "report".into(),
            spec: ScheduleSpec {
                cron: None,
                every: Some(every.into()),
                timezone: None,
                topic: TopicName::new("reports").unwrap(),
                data: Value::Null,
                catch_up,
            },
            paused: false,
            from_config: true,
            last_tick: last_tick.parse().unwrap(),
            updated_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn due(schedule: &Schedule, now: &str) -> Vec<String> {
        let cadence = Cadence::of(&schedule.spec).unwrap();
        due_ticks(&cadence, schedule, now.parse().unwrap())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn every_tick_since_the_last_fires_while_on_time() {
        let on_time = schedule("1s", CatchUp::None, "2026-12-05T10:00:00Z");
        assert_eq!(
            due(&on_time, "2026-12-05T10:00:03.5Z"),
            [
                "2026-12-05T10:00:01Z",
                "2026-12-05T10:00:02Z",
                "2026-12-05T10:00:03Z"
            ]
        );
        assert!(due(&on_time, "2026-12-05T10:00:00.9Z").is_empty());
    }

    #[test]
    fn after_downtime_catch_up_decides_the_missed_ticks() {
        // Hourly, last fired at 07:00, back at 10:30: 08:00, 09:00 and 10:00 were missed.
        let none = schedule("1h", CatchUp::None, "2026-12-05T07:00:00Z");
        assert!(due(&none, "2026-12-05T10:30:00Z").is_empty());
        let last = schedule("1h", CatchUp::Last, "2026-12-05T07:00:00Z");
        assert_eq!(due(&last, "2026-12-05T10:30:00Z"), ["2026-12-05T10:00:00Z"]);
        let fired = schedule("1h", CatchUp::Last, "2026-12-05T10:00:00Z");
        assert!(due(&fired, "2026-12-05T10:30:00Z").is_empty(), "fired once");
    }
}
