//! Run records: every message's life on every trigger.
//!
//! - [`Run`] (in [`model`]): one message on one trigger, its [`RunState`], its attempts
//!   (with errors, durations, instance and trace), result and progress, and its data as
//!   JSON text ([`RunData`]);
//! - [`RunEvent`] (in [`event`]): what the runtime reports happened, and [`Run::apply`], which
//!   turns events from any instance, in any order, into the same run;
//! - [`RunStore`]: where runs are kept, [`MemoryStore`] or (features `sqlite`, `postgres`)
//!   [`SqlStore`]; [`open`] picks one from the `runs.store` address;
//! - [`ControlStore`]: the half of the store that keeps what operators set for every
//!   instance: paused triggers and [`Schedule`]s;
//! - [`conformance`]: the checks every store passes.

pub mod conformance;
mod control;
mod data;
pub mod event;
mod memory;
pub mod model;
#[cfg(feature = "sql")]
mod sql;
mod store;

use std::sync::Arc;

pub use control::{CatchUp, ControlStore, PausedTrigger, Schedule, ScheduleSpec};
pub use data::RunData;
pub use event::{Change, Next, Origin, RunEvent};
pub use memory::{MEMORY_FINISHED_LIMIT, MemoryStore};
pub use model::{Attempt, AttemptOutcome, Run, RunError, RunKey, RunState, Transition};
#[cfg(feature = "sql")]
pub use sql::SqlStore;
pub use store::{Cursor, MAX_RUN_PAGE, Retention, RunPage, RunQuery, RunStore, StoreError};

/// A store shared by the runtime's tasks.
pub type SharedStore = Arc<dyn RunStore>;

/// Checks a `runs.store` address without opening it: `memory`, `sqlite://PATH` or
/// `postgres://...`, of a store this build has; the error names what is wrong (and the cargo
/// feature a store needs when it is not built).
pub fn check_address(address: &str) -> Result<(), StoreError> {
    if address == "memory" {
        return Ok(());
    }
    let (scheme, built) = if address.starts_with("sqlite:") {
        ("sqlite", cfg!(feature = "sqlite"))
    } else if address.starts_with("postgres://") || address.starts_with("postgresql://") {
        ("postgres", cfg!(feature = "postgres"))
    } else {
        return Err(StoreError::Open(
            "runs.store must be `memory`, `sqlite://PATH` or `postgres://USER@HOST/DB`".into(),
        ));
    };
    if !built {
        return Err(StoreError::Open(format!(
            "this build has no {scheme} store: build topiq with the `runs-{scheme}` feature"
        )));
    }
    Ok(())
}

/// `address` as it may be shown: a SQLite path as it is; a PostgreSQL URL without its
/// password and query (which may hold one).
pub fn shown_address(address: &str) -> String {
    let Some((scheme, rest)) = address.split_once("://") else {
        return address.to_owned();
    };
    if scheme == "sqlite" {
        return address.to_owned();
    }
    let rest = &rest[..rest.find('?').unwrap_or(rest.len())];
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let shown_authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    format!("{scheme}://{shown_authority}{path}")
}

/// Opens the store at `address` (see [`check_address`]), applying the SQL schema's
/// migrations.
pub async fn open(address: &str) -> Result<SharedStore, StoreError> {
    check_address(address)?;
    if address == "memory" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    open_sql(address).await
}

#[cfg(feature = "sql")]
async fn open_sql(address: &str) -> Result<SharedStore, StoreError> {
    Ok(Arc::new(SqlStore::open(address).await?))
}

#[cfg(not(feature = "sql"))]
async fn open_sql(_address: &str) -> Result<SharedStore, StoreError> {
    Err(StoreError::Open("this build has no SQL store".into()))
}

#[cfg(test)]
mod tests {
    use super::shown_address;

    #[test]
    fn a_shown_address_has_no_password() {
        assert_eq!(
            shown_address("postgres://app:s3cret@db:5432/runs?password=x"),
            "postgres://app@db:5432/runs"
        );
        assert_eq!(
            shown_address("postgres://app@db/runs"),
            "postgres://app@db/runs"
        );
        assert_eq!(
            shown_address("sqlite:///var/lib/topiq/runs.db"),
            "sqlite:///var/lib/topiq/runs.db"
        );
        assert_eq!(shown_address("memory"), "memory");
    }
}
