//! Paused triggers and schedules in SQL: two small tables (`topiq_paused_triggers`,
//! `topiq_schedules`), each statement one atomic step, so instances never overwrite each
//! other's changes.

use std::str::FromStr;

use futures::future::{BoxFuture, FutureExt};
use sqlx::Row as _;
use sqlx::any::AnyRow;
use topiq_adapter::{Timestamp, TriggerName};

use super::{SqlStore, unavailable};
use crate::control::{ControlStore, PausedTrigger, Schedule, ScheduleSpec};
use crate::store::StoreError;

/// Creates a schedule, or replaces its definition while keeping its pause and last tick.
const PUT_SCHEDULE: &str = "INSERT INTO topiq_schedules \
    (name, spec, paused, from_config, last_tick_ms, updated_ms) VALUES ($1, $2, 0, $3, $4, $4) \
    ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, from_config = excluded.from_config, \
    updated_ms = excluded.updated_ms";

/// Moves a schedule's last tick forward only: of two instances recording ticks, the later
/// tick stays.
const ADVANCE_SCHEDULE: &str =
    "UPDATE topiq_schedules SET last_tick_ms = $1 WHERE name = $2 AND last_tick_ms < $1";

fn timestamp(ms: i64, what: &str) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(ms)
        .map_err(|err| StoreError::Open(format!("a stored {what} is not a time: {err}")))
}

fn paused_trigger(row: &AnyRow) -> Result<PausedTrigger, StoreError> {
    let name: String = row
        .try_get(0)
        .map_err(unavailable("read paused triggers"))?;
    let paused_ms: i64 = row
        .try_get(1)
        .map_err(unavailable("read paused triggers"))?;
    let trigger = TriggerName::from_str(&name)
        .map_err(|err| StoreError::Open(format!("a stored trigger name is not valid: {err}")))?;
    Ok(PausedTrigger {
        trigger,
        paused_at: timestamp(paused_ms, "pause time")?,
    })
}

fn schedule(row: &AnyRow) -> Result<Schedule, StoreError> {
    let text = |at: usize| -> Result<String, StoreError> {
        row.try_get(at).map_err(unavailable("read schedules"))
    };
    let number = |at: usize| -> Result<i64, StoreError> {
        row.try_get(at).map_err(unavailable("read schedules"))
    };
    let (name, spec) = (text(0)?, text(1)?);
    let spec: ScheduleSpec = serde_json::from_str(&spec).map_err(|source| StoreError::Corrupt {
        key: format!("schedule {name}"),
        source,
    })?;
    Ok(Schedule {
        name,
        spec,
        paused: number(2)? != 0,
        from_config: number(3)? != 0,
        last_tick: timestamp(number(4)?, "schedule tick")?,
        updated_at: timestamp(number(5)?, "schedule change time")?,
    })
}

impl SqlStore {
    async fn paused_rows(&self) -> Result<Vec<PausedTrigger>, StoreError> {
        sqlx::query("SELECT trigger_name, paused_ms FROM topiq_paused_triggers")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable("read paused triggers"))?
            .iter()
            .map(paused_trigger)
            .collect()
    }

    async fn schedule_rows(&self) -> Result<Vec<Schedule>, StoreError> {
        sqlx::query(
            "SELECT name, spec, paused, from_config, last_tick_ms, updated_ms \
             FROM topiq_schedules ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable("read schedules"))?
        .iter()
        .map(schedule)
        .collect()
    }

    /// Runs `sql` with `binds` (text or integers); true when it changed a row.
    async fn change(
        &self,
        operation: &'static str,
        sql: &'static str,
        binds: &[Value<'_>],
    ) -> Result<bool, StoreError> {
        let mut query = sqlx::query(sql);
        for bind in binds {
            query = match bind {
                Value::Text(text) => query.bind(*text),
                Value::Int(number) => query.bind(*number),
            };
        }
        let done = query
            .execute(&self.pool)
            .await
            .map_err(unavailable(operation))?;
        Ok(done.rows_affected() > 0)
    }
}

/// A value bound to a control statement.
enum Value<'a> {
    Text(&'a str),
    Int(i64),
}

impl ControlStore for SqlStore {
    fn pause_trigger<'a>(
        &'a self,
        trigger: &'a TriggerName,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let sql = "INSERT INTO topiq_paused_triggers (trigger_name, paused_ms) VALUES ($1, $2) \
                   ON CONFLICT (trigger_name) DO NOTHING";
        let binds = [
            Value::Text(trigger.as_str()),
            Value::Int(at.as_millisecond()),
        ];
        async move { self.change("pause a trigger", sql, &binds).await.map(drop) }.boxed()
    }

    fn resume_trigger<'a>(
        &'a self,
        trigger: &'a TriggerName,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let sql = "DELETE FROM topiq_paused_triggers WHERE trigger_name = $1";
        async move {
            self.change("resume a trigger", sql, &[Value::Text(trigger.as_str())])
                .await
        }
        .boxed()
    }

    fn paused_triggers(&self) -> BoxFuture<'_, Result<Vec<PausedTrigger>, StoreError>> {
        self.paused_rows().boxed()
    }

    fn put_schedule<'a>(
        &'a self,
        name: &'a str,
        spec: &'a ScheduleSpec,
        from_config: bool,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let doc = serde_json::to_string(spec).map_err(|source| StoreError::Corrupt {
                key: format!("schedule {name}"),
                source,
            })?;
            let binds = [
                Value::Text(name),
                Value::Text(&doc),
                Value::Int(i64::from(from_config)),
                Value::Int(now.as_millisecond()),
            ];
            self.change("put a schedule", PUT_SCHEDULE, &binds)
                .await
                .map(drop)
        }
        .boxed()
    }

    fn schedules(&self) -> BoxFuture<'_, Result<Vec<Schedule>, StoreError>> {
        self.schedule_rows().boxed()
    }

    fn set_schedule_paused<'a>(
        &'a self,
        name: &'a str,
        paused: bool,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let sql = "UPDATE topiq_schedules SET paused = $1 WHERE name = $2";
        let binds = [Value::Int(i64::from(paused)), Value::Text(name)];
        async move { self.change("pause a schedule", sql, &binds).await }.boxed()
    }

    fn delete_schedule<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let sql = "DELETE FROM topiq_schedules WHERE name = $1";
        async move {
            self.change("delete a schedule", sql, &[Value::Text(name)])
                .await
        }
        .boxed()
    }

    fn advance_schedule<'a>(
        &'a self,
        name: &'a str,
        tick: Timestamp,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let binds = [Value::Int(tick.as_millisecond()), Value::Text(name)];
        async move {
            self.change("record a schedule's tick", ADVANCE_SCHEDULE, &binds)
                .await
        }
        .boxed()
    }
}
