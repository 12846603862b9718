//! Run records: every message's life on every trigger.
//!
//! - [`Run`] (in [`model`]): one message on one trigger, its [`RunState`], its attempts
//!   (with errors, durations, instance and trace), result and progress;
//! - [`RunEvent`] (in [`event`]): what the runtime reports happened, and [`Run::apply`], which
//!   turns events from any instance, in any order, into the same run;
//! - [`RunStore`]: where runs are kept, [`MemoryStore`] or (features `sqlite`, `postgres`)
//!   [`SqlStore`]; [`open`] picks one from the `runs.store` address;
//! - [`conformance`]: the checks every store passes.

pub mod conformance;
pub mod event;
mod memory;
pub mod model;
#[cfg(feature = "sql")]
mod sql;
mod store;

use std::sync::Arc;

pub use event::{Change, Next, Origin, RunEvent};
pub use memory::MemoryStore;
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
