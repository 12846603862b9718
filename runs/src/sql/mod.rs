//! Runs in SQLite (one file, one machine) or PostgreSQL (shared by every replica), through
//! sqlx's `Any` driver: one set of portable statements and one migration for both.

mod control;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row as _};
use topiq_adapter::{MessageId, Timestamp, TriggerName};

use crate::event::RunEvent;
use crate::model::{Run, RunKey};
use crate::store::{Cursor, Retention, RunPage, RunQuery, RunStore, StoreError};

/// The most message ids one `IN (...)` names.
const IDS_PER_SELECT: usize = 500;

/// The most rows one upsert writes (ten parameters each, well inside both databases' limits).
const ROWS_PER_UPSERT: usize = 200;

/// How often `apply` starts again after another instance changed one of its runs first.
const MAX_CONFLICT_RETRIES: u32 = 8;

/// Each SQLite connection's settings: a write-ahead log (readers do not wait for the writer)
/// and a page cache of 64 MiB instead of 2 MiB (the table and its indexes outgrow 2 MiB
/// within a minute of load, and every write then reads its pages back from the file).
const SQLITE_SETTINGS: &str = "PRAGMA journal_mode = WAL; PRAGMA cache_size = -65536;";

/// The schema, applied at open.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Runs in SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
}

/// What the two databases spell differently.
#[derive(Clone, Copy, Debug)]
enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// What a read before a write adds to lock the rows: ` FOR UPDATE` on PostgreSQL (so
    /// instances writing one run wait for each other instead of retrying); nothing on SQLite,
    /// whose writers take turns on the whole file.
    fn lock_rows(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// `count` placeholders, numbered from `first`, separated by commas. SQLite's are `?`:
    /// binding a numbered one looks its name up in a list as long as the statement's, which
    /// made a 2,000-value upsert spend a third of its time there.
    fn params(self, first: usize, count: usize) -> String {
        let mut text = String::with_capacity(count * 4);
        for n in first..first + count {
            if n > first {
                text.push_str(", ");
            }
            match self {
                Dialect::Sqlite => text.push('?'),
                Dialect::Postgres => {
                    text.push('$');
                    text.push_str(&n.to_string());
                }
            }
        }
        text
    }
}

fn unavailable(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Unavailable {
        operation,
        source: Box::new(source),
    }
}

/// A run read from the store, with the version it was read at.
struct Stored {
    run: Run,
    version: Option<i64>,
    changed: bool,
}

impl SqlStore {
    /// Opens (creating a SQLite file if missing) the database at `url` and applies the
    /// schema's migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let url = connect_url(url);
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 1 } else { 8 })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if sqlite {
                        sqlx::Executor::execute(&mut *connection, SQLITE_SETTINGS).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|err| StoreError::Open(redacted(&err.to_string(), &url)))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|err| StoreError::Open(format!("migrating the schema: {err}")))?;
        let dialect = if sqlite {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        };
        Ok(Self { pool, dialect })
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Applies `events`, starting again (at most [`MAX_CONFLICT_RETRIES`] times) when another
    /// instance changed one of their runs first; the touched runs when `touched` is asked for.
    async fn apply_events(
        &self,
        events: &[RunEvent],
        touched: bool,
    ) -> Result<Vec<Run>, StoreError> {
        let mut tries = 0;
        loop {
            match self.apply_once(events, touched).await {
                Ok(Some(runs)) => return Ok(runs),
                Ok(None) if tries < MAX_CONFLICT_RETRIES => tries = backoff(tries).await,
                Ok(None) => {
                    return Err(StoreError::Unavailable {
                        operation: "apply run events",
                        source: "other instances kept changing the same runs".into(),
                    });
                }
                Err(err) if is_busy(&err) && tries < MAX_CONFLICT_RETRIES => {
                    tries = backoff(tries).await;
                }
                Err(err) => return Err(unavailable("apply run events")(err)),
            }
        }
    }

    /// One transaction: read the runs, apply the events, write back the changed ones if no
    /// other instance wrote them meanwhile (`None` when one did).
    async fn apply_once(
        &self,
        events: &[RunEvent],
        touched: bool,
    ) -> Result<Option<Vec<Run>>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let keys = touched_keys(events);
        let mut runs = read_for_update(&mut tx, &keys, self.dialect).await?;
        for event in events {
            let stored = match runs.entry(event.key.clone()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => match Run::from_event(event) {
                    Some(run) => entry.insert(Stored {
                        run,
                        version: None,
                        changed: true,
                    }),
                    None => continue,
                },
            };
            stored.changed |= stored.run.apply(event);
        }
        let mut changed: Vec<&Stored> = runs.values().filter(|stored| stored.changed).collect();
        // In key order, like the read's locks: two instances inserting the same new runs take
        // their locks in one order rather than wait for each other.
        changed.sort_unstable_by(|a, b| {
            (a.run.id.as_str(), a.run.trigger.as_str())
                .cmp(&(b.run.id.as_str(), b.run.trigger.as_str()))
        });
        if !write(&mut tx, &changed, self.dialect).await? {
            return Ok(None);
        }
        tx.commit().await?;
        if !touched {
            return Ok(Some(Vec::new()));
        }
        Ok(Some(
            keys.iter()
                .filter_map(|key| runs.remove(key))
                .map(|stored| stored.run)
                .collect(),
        ))
    }

    async fn list_page(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        let (limit, cursor) = query.validate()?;
        let (sql, binds) = list_sql(query, limit, cursor.as_ref());
        let rows = bind_all(sqlx::query(&sql), &binds)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable("list runs"))?;
        let mut runs = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        let more = runs.len() > limit;
        runs.truncate(limit);
        let next_cursor = match runs.last() {
            Some(last) if more => Some(Cursor::after(last).encode()),
            _ => None,
        };
        Ok(RunPage { runs, next_cursor })
    }

    async fn get_runs(
        &self,
        id: &MessageId,
        trigger: Option<&TriggerName>,
    ) -> Result<Vec<Run>, StoreError> {
        let rows = match trigger {
            Some(trigger) => {
                sqlx::query(
                    "SELECT doc FROM topiq_runs WHERE message_id = $1 AND trigger_name = $2",
                )
                .bind(id.as_str())
                .bind(trigger.as_str())
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(
                    "SELECT doc FROM topiq_runs WHERE message_id = $1 ORDER BY trigger_name",
                )
                .bind(id.as_str())
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(unavailable("get runs"))?;
        rows.iter().map(decode).collect()
    }

    async fn cancel_keys(&self, since: Timestamp) -> Result<Vec<RunKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT message_id, trigger_name FROM topiq_runs WHERE cancel_requested_ms >= $1",
        )
        .bind(since.as_millisecond())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable("read cancels"))?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0).map_err(unavailable("read cancels"))?;
                let trigger: String = row.try_get(1).map_err(unavailable("read cancels"))?;
                let trigger = TriggerName::from_str(&trigger).map_err(|err| {
                    StoreError::Open(format!("a stored trigger name is not valid: {err}"))
                })?;
                Ok(RunKey::new(MessageId::from_string(id), trigger))
            })
            .collect()
    }

    /// Deletes what `retention` no longer keeps, at most `chunk` runs a statement.
    async fn sweep_finished(&self, retention: Retention, chunk: i64) -> Result<u64, StoreError> {
        let (succeeded, failed) = (
            retention.succeeded_before.as_millisecond(),
            retention.failed_before.as_millisecond(),
        );
        let mut swept = 0;
        loop {
            let done = sqlx::query(SWEEP)
                .bind(succeeded.max(failed))
                .bind(succeeded)
                .bind(failed)
                .bind(chunk)
                .execute(&self.pool)
                .await
                .map_err(unavailable("sweep runs"))?
                .rows_affected();
            swept += done;
            if done < chunk.unsigned_abs() {
                return Ok(swept);
            }
        }
    }
}

/// Deletes up to `$4` runs finished before their keep time ran out: `$1` is the later of the
/// two cutoffs, `$2` the succeeded runs', `$3` the others'. The outcome test sits in a `CASE`
/// so that both databases search the finish-time index for `$1`; written as `state IN (...)`,
/// SQLite searched the state index instead and read every succeeded run at each sweep.
const SWEEP: &str = "DELETE FROM topiq_runs WHERE (message_id, trigger_name) IN ( \
    SELECT message_id, trigger_name FROM topiq_runs WHERE finished_ms < $1 AND CASE \
    WHEN state IN ('succeeded', 'filtered') THEN finished_ms < $2 ELSE finished_ms < $3 END \
    LIMIT $4)";

/// The most runs one sweep statement deletes: between two, the recorder's writes get the
/// database (SQLite takes one writer at a time), however large the backlog of finished runs.
const SWEEP_CHUNK: i64 = 5_000;

/// Waits a little (more after each try, with jitter) before another try; returns the count.
async fn backoff(tries: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let jitter = u64::from(nanos) % 5;
    let millis = (1_u64 << tries.min(6)) + jitter;
    tokio::time::sleep(Duration::from_millis(millis)).await;
    tries + 1
}

/// The listing's statement and its values: each filter given, the cursor, newest first, one
/// more than `limit` (to tell whether a next page exists).
fn list_sql(query: &RunQuery, limit: usize, cursor: Option<&Cursor>) -> (String, Vec<Bind>) {
    let text = |value: String| Bind::Text(value);
    let filters = [
        (
            " AND topic = ?",
            query.topic.as_ref().map(|t| text(t.to_string())),
        ),
        (
            " AND trigger_name = ?",
            query.trigger.as_ref().map(|t| text(t.to_string())),
        ),
        (
            " AND state = ?",
            query.state.map(|state| text(state.as_str().into())),
        ),
        (
            " AND enqueued_ms >= ?",
            query.since.map(|at| Bind::Int(at.as_millisecond())),
        ),
        (
            " AND enqueued_ms < ?",
            query.until.map(|at| Bind::Int(at.as_millisecond())),
        ),
        (
            " AND LOWER(error_text) LIKE ? ESCAPE '\\'",
            query
                .error_contains
                .as_ref()
                .map(|needle| text(format!("%{}%", escape_like(&needle.to_lowercase())))),
        ),
        (
            " AND LOWER(doc) LIKE ? ESCAPE '\\'",
            query
                .contains
                .as_ref()
                .map(|needle| text(format!("%{}%", escape_like(&needle.to_lowercase())))),
        ),
    ];
    let mut sql = String::from("SELECT doc FROM topiq_runs WHERE 1 = 1");
    let mut binds = Vec::new();
    for (clause, value) in filters {
        if let Some(value) = value {
            binds.push(value);
            sql.push_str(&clause.replace('?', &format!("${}", binds.len())));
        }
    }
    if let Some(cursor) = cursor {
        push_cursor(&mut sql, &mut binds, cursor);
    }
    sql.push_str(" ORDER BY enqueued_ms DESC, message_id DESC, trigger_name DESC");
    sql.push_str(&format!(" LIMIT {}", limit + 1));
    (sql, binds)
}

/// `url` with what sqlx needs added: a SQLite file is created when missing.
fn connect_url(url: &str) -> String {
    if url.starts_with("sqlite:") && !url.contains("mode=") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}mode=rwc")
    } else {
        url.to_owned()
    }
}

/// `message` without the password of `url`, if it holds one.
fn redacted(message: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|password| !password.is_empty());
    match password {
        Some(password) => message.replace(password, "<redacted>"),
        None => message.to_owned(),
    }
}

/// True for SQLite's "busy" (another connection writes): worth trying again.
fn is_busy(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code();
            matches!(code.as_deref(), Some("5" | "517" | "6" | "40001" | "40P01"))
        }
        _ => false,
    }
}

fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// A value bound to a listing's placeholder.
enum Bind {
    Text(String),
    Int(i64),
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    binds: &'q [Bind],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for bind in binds {
        query = match bind {
            Bind::Text(text) => query.bind(text.as_str()),
            Bind::Int(number) => query.bind(*number),
        };
    }
    query
}

fn push_cursor(sql: &mut String, binds: &mut Vec<Bind>, cursor: &Cursor) {
    let first = binds.len() + 1;
    binds.push(Bind::Int(cursor.enqueued_ms));
    binds.push(Bind::Text(cursor.message_id.clone()));
    binds.push(Bind::Text(cursor.trigger.clone()));
    sql.push_str(&format!(
        " AND (enqueued_ms < ${first} OR (enqueued_ms = ${first} AND (message_id < ${} \
         OR (message_id = ${} AND trigger_name < ${}))))",
        first + 1,
        first + 1,
        first + 2
    ));
}

fn decode(row: &AnyRow) -> Result<Run, StoreError> {
    let doc: String = row.try_get("doc").map_err(unavailable("read a run"))?;
    serde_json::from_str(&doc).map_err(|source| StoreError::Corrupt {
        key: doc.chars().take(80).collect(),
        source,
    })
}

/// Each run's key, in the order the events first name it.
fn touched_keys(events: &[RunEvent]) -> Vec<RunKey> {
    let mut seen = HashSet::new();
    events
        .iter()
        .filter(|event| seen.insert(&event.key))
        .map(|event| event.key.clone())
        .collect()
}

/// The stored runs of `keys`, with their versions.
async fn read_for_update(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    keys: &[RunKey],
    dialect: Dialect,
) -> Result<HashMap<RunKey, Stored>, sqlx::Error> {
    let wanted: HashSet<&RunKey> = keys.iter().collect();
    // Sorted, so every instance locks rows in one order (no deadlock between batches).
    let mut ids: Vec<&str> = keys.iter().map(|key| key.message_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut found = HashMap::with_capacity(keys.len());
    for chunk in ids.chunks(IDS_PER_SELECT) {
        let sql = format!(
            "SELECT doc, version FROM topiq_runs WHERE message_id IN ({}) \
             ORDER BY message_id, trigger_name{}",
            dialect.params(1, chunk.len()),
            dialect.lock_rows()
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut **tx).await? {
            let doc: String = row.try_get(0)?;
            let version: i64 = row.try_get(1)?;
            let run: Run =
                serde_json::from_str(&doc).map_err(|err| sqlx::Error::Decode(Box::new(err)))?;
            let key = run.key();
            if wanted.contains(&key) {
                let stored = Stored {
                    run,
                    version: Some(version),
                    changed: false,
                };
                found.insert(key, stored);
            }
        }
    }
    Ok(found)
}

/// The columns of a run's row, in the order the upsert binds them.
const COLUMNS: &str = "message_id, trigger_name, topic, state, enqueued_ms, finished_ms, \
                       cancel_requested_ms, error_text, doc, version";

/// What an upsert does to a row that exists: take the new values if the row is still at the
/// version this write read (a new run's version 1 matches no existing row). Only the columns
/// an event can change are set (a run's topic and enqueue time never change): SQLite rewrites
/// the index entries of every column an update sets.
const ON_CONFLICT: &str = " ON CONFLICT (message_id, trigger_name) DO UPDATE SET \
    state = excluded.state, finished_ms = excluded.finished_ms, cancel_requested_ms = excluded.cancel_requested_ms, \
    error_text = excluded.error_text, doc = excluded.doc, version = excluded.version \
    WHERE topiq_runs.version = excluded.version - 1";

/// Writes the changed runs, [`ROWS_PER_UPSERT`] a statement; false when another instance
/// changed (or created) one of them first.
async fn write(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    changed: &[&Stored],
    dialect: Dialect,
) -> Result<bool, sqlx::Error> {
    for chunk in changed.chunks(ROWS_PER_UPSERT) {
        let rows: Vec<RunRow<'_>> = chunk
            .iter()
            .map(|stored| RunRow::of(stored))
            .collect::<Result<_, _>>()?;
        let values: Vec<String> = (0..rows.len())
            .map(|row| format!("({})", dialect.params(row * 10 + 1, 10)))
            .collect();
        let sql = format!(
            "INSERT INTO topiq_runs ({COLUMNS}) VALUES {}{ON_CONFLICT}",
            values.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for row in &rows {
            query = row.bind(query);
        }
        // Both count a row the upsert inserted or updated, not one its version check skipped.
        let written = query.execute(&mut **tx).await?.rows_affected();
        if written != rows.len() as u64 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A changed run as the values of its row.
struct RunRow<'a> {
    run: &'a Run,
    doc: String,
    version: i64,
}

impl<'a> RunRow<'a> {
    fn of(stored: &'a Stored) -> Result<Self, sqlx::Error> {
        let doc =
            serde_json::to_string(&stored.run).map_err(|err| sqlx::Error::Encode(Box::new(err)))?;
        Ok(Self {
            run: &stored.run,
            doc,
            version: stored.version.map_or(1, |version| version + 1),
        })
    }

    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        let run = self.run;
        query
            .bind(run.id.as_str())
            .bind(run.trigger.as_str())
            .bind(run.topic.as_str())
            .bind(run.state.as_str())
            .bind(run.enqueued_at.as_millisecond())
            .bind(run.finished_at.map(|at| at.as_millisecond()))
            .bind(run.cancel_requested_at.map(|at| at.as_millisecond()))
            .bind(run.error_text())
            .bind(self.doc.as_str())
            .bind(self.version)
    }
}

impl RunStore for SqlStore {
    fn apply<'a>(&'a self, events: &'a [RunEvent]) -> BoxFuture<'a, Result<Vec<Run>, StoreError>> {
        self.apply_events(events, true).boxed()
    }

    fn write<'a>(&'a self, events: &'a [RunEvent]) -> BoxFuture<'a, Result<(), StoreError>> {
        async move { self.apply_events(events, false).await.map(drop) }.boxed()
    }

    fn get<'a>(
        &'a self,
        id: &'a MessageId,
        trigger: Option<&'a TriggerName>,
    ) -> BoxFuture<'a, Result<Vec<Run>, StoreError>> {
        self.get_runs(id, trigger).boxed()
    }

    fn list<'a>(&'a self, query: &'a RunQuery) -> BoxFuture<'a, Result<RunPage, StoreError>> {
        self.list_page(query).boxed()
    }

    fn cancels_since(&self, since: Timestamp) -> BoxFuture<'_, Result<Vec<RunKey>, StoreError>> {
        self.cancel_keys(since).boxed()
    }

    fn sweep(&self, retention: Retention) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.sweep_finished(retention, SWEEP_CHUNK).boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(unavailable("health check"))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sqlx::Row as _;
    use topiq_adapter::MessageId;

    use super::{SWEEP, SqlStore};
    use crate::conformance::{at, finished, started, topic, trigger};
    use crate::event::Next;
    use crate::model::{AttemptOutcome, RunKey};
    use crate::store::{Retention, RunQuery, RunStore};

    #[tokio::test]
    async fn a_sweep_searches_sqlite_by_finish_time_not_by_state() {
        let store = SqlStore::open("sqlite::memory:").await.unwrap();
        let plan = sqlx::query(&format!("EXPLAIN QUERY PLAN {SWEEP}"))
            .bind(2_i64)
            .bind(1_i64)
            .bind(2_i64)
            .bind(10_i64)
            .fetch_all(&store.pool)
            .await
            .unwrap();
        let steps: Vec<String> = plan.iter().map(|row| row.get::<String, _>(3)).collect();
        assert!(
            steps
                .iter()
                .any(|step| step.contains("USING INDEX topiq_runs_finished")),
            "{steps:?}"
        );
        assert!(
            !steps
                .iter()
                .any(|step| step.contains("topiq_runs_by_state")),
            "{steps:?}"
        );
    }

    #[tokio::test]
    async fn a_sweep_larger_than_its_chunk_deletes_every_run_it_should() {
        let store = SqlStore::open("sqlite::memory:").await.unwrap();
        let topic = topic();
        let mut events = Vec::new();
        for _ in 0..5 {
            let key = RunKey::new(MessageId::generate(), trigger("t"));
            let succeeded = Next::Succeeded { result: None };
            events.push(started(&key, &topic, 1, 1));
            events.push(finished(&key, 2, 1, AttemptOutcome::Succeeded, succeeded));
        }
        store.write(&events).await.unwrap();
        let retention = Retention {
            succeeded_before: at(100),
            failed_before: at(100),
        };
        assert_eq!(store.sweep_finished(retention, 2).await.unwrap(), 5);
        let left = store.list(&RunQuery::default()).await.unwrap();
        assert!(left.runs.is_empty(), "{:?}", left.runs);
    }
}
