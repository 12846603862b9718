//! The `runs:` section: where run records are kept, and for how long.

use std::fmt;
use std::time::Duration;

use super::raw::RawRuns;
use super::source::spanned_at;
use super::{ConfigError, ConfigLocation};

/// How long succeeded (and filtered) runs are kept when the config says nothing: 7 days.
pub const DEFAULT_SUCCEEDED_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long every other finished run is kept when the config says nothing: 14 days.
pub const DEFAULT_FAILED_FOR: Duration = Duration::from_secs(14 * 24 * 3600);

/// The store `topiq run` keeps runs in when a broker adapter's config names none: a SQLite
/// file in its working directory.
pub const DEFAULT_SERVICE_STORE: &str = "sqlite://topiq-runs.db";

/// Where run records are kept and for how long (`runs:`).
#[derive(Clone, PartialEq, Eq)]
pub struct RunsSettings {
    /// `memory`, `sqlite://PATH` or `postgres://USER@HOST/DB`; `None` when the config names
    /// none (an embedded module then keeps runs in memory, `topiq run` on a broker in
    /// [`DEFAULT_SERVICE_STORE`]).
    pub store: Option<String>,
    /// Finished runs that succeeded (or were filtered) are swept this long after they finish.
    pub succeeded_for: Duration,
    /// Every other finished run is swept this long after it finishes.
    pub failed_for: Duration,
}

impl Default for RunsSettings {
    fn default() -> Self {
        Self {
            store: None,
            succeeded_for: DEFAULT_SUCCEEDED_FOR,
            failed_for: DEFAULT_FAILED_FOR,
        }
    }
}

impl RunsSettings {
    /// The store runs go to: the configured one, or `memory`.
    pub fn store(&self) -> &str {
        self.store.as_deref().unwrap_or("memory")
    }
}

impl fmt::Debug for RunsSettings {
    /// The store's password is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunsSettings")
            .field(
                "store",
                &self.store.as_deref().map(topiq_adapter_kit::redact_url),
            )
            .field("succeeded_for", &self.succeeded_for)
            .field("failed_for", &self.failed_for)
            .finish()
    }
}

/// The `runs:` section, checked: a store this build has, keep times above zero.
pub(super) fn validate_runs(file: &str, raw: RawRuns) -> Result<RunsSettings, ConfigError> {
    let defaults = RunsSettings::default();
    let store = match raw.store {
        Some(store) => {
            topiq_runs::check_address(&store.value).map_err(|err| {
                ConfigError::invalid(spanned_at(file, &store), "runs.store", err.to_string())
            })?;
            Some(store.value)
        }
        None => defaults.store,
    };
    let keep = |value: Option<super::ConfigDuration>, key: &str, default: Duration| {
        let keep = value.map_or(default, |duration| duration.0);
        if keep.is_zero() {
            return Err(ConfigError::invalid(
                ConfigLocation::start_of(file),
                format!("runs.{key}"),
                "must be longer than zero, such as `7d`",
            ));
        }
        Ok(keep)
    };
    Ok(RunsSettings {
        store,
        succeeded_for: keep(raw.succeeded_for, "succeeded_for", DEFAULT_SUCCEEDED_FOR)?,
        failed_for: keep(raw.failed_for, "failed_for", DEFAULT_FAILED_FOR)?,
    })
}
