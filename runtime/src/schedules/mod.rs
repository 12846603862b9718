//! Schedules: topics enqueued to on a cron expression or a fixed interval. Every instance
//! runs a ticker over the schedules in the runs store; each tick fires exactly once however
//! many run, because every instance enqueues it under one idempotency key,
//! `schedule:<name>:<tick>` (the topic keeps one message per key), and records it as the
//! schedule's last tick (no instance fires a recorded tick again).

mod cadence;
mod ticker;

use std::time::Duration;

use topiq_adapter::Timestamp;

pub use cadence::{Cadence, CadenceError, MIN_EVERY};
pub use ticker::ON_TIME_FOR;
pub(crate) use ticker::{declare_schedules, run_ticker};

/// The shortest idempotency window a schedule's topic may keep: several times the time an
/// instance may fire a tick late, so a late instance's copy still meets the first one's key.
pub const MIN_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(30);

/// The longest schedule name.
pub const MAX_SCHEDULE_NAME: usize = 64;

/// Ok when `name` can name a schedule: 1 to [`MAX_SCHEDULE_NAME`] letters, digits, `.`, `_`
/// or `-`; the error says so.
pub fn check_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_SCHEDULE_NAME || !name.chars().all(allowed) {
        return Err(format!(
            "schedule name {name:?} must be 1 to {MAX_SCHEDULE_NAME} letters, digits, `.`, `_` or `-`"
        ));
    }
    Ok(())
}

/// The idempotency key of schedule `name`'s tick at `tick`.
pub fn tick_key(name: &str, tick: Timestamp) -> String {
    format!("schedule:{name}:{tick}")
}

/// The schedule name and tick time an idempotency key carries, when a schedule enqueued it.
pub fn parse_tick_key(key: &str) -> Option<(&str, Timestamp)> {
    let rest = key.strip_prefix("schedule:")?;
    let (name, tick) = rest.split_once(':')?;
    Some((name, tick.parse().ok()?))
}
