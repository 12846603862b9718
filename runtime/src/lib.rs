//! topiq's queue module: `config.yaml` in, triggers running, `queue.*` calls out.
//!
//! ```no_run
//! use topiq::{Config, Functions, HandlerError, Message, QueueModule, shutdown_signal};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut functions = Functions::with_builtins();
//! functions.register("emails.send", |message: Message| async move {
//!     let to = message.data()["to"].as_str().unwrap_or_default().to_owned();
//!     if to.is_empty() {
//!         return Err(HandlerError::non_retryable("no recipient"));
//!     }
//!     Ok(())
//! });
//! let module = QueueModule::new(Config::load("config.yaml")?, functions).await?;
//! module.run_until(shutdown_signal()).await;
//! # Ok(())
//! # }
//! ```
//!
//! The pieces, each in its own module: [`config`] (loading and validation), [`function`]
//! (the registry handlers go into), [`condition`] (CEL filters), [`retry`] (backoff), the
//! trigger loop (condition → handler under timeout and lease extension → settlement), and
//! [`calls`] (the JSON call surface).
//!
//! The broker adapters are cargo features, on by default: `jetstream` (NATS JetStream)
//! and `rabbitmq` (RabbitMQ), and so are the SQL runs stores, `runs-sqlite` and
//! `runs-postgres`. With `default-features = false` the module carries only the in-memory
//! adapter and the in-memory runs store. The HTTP API, HTTP functions and telemetry export are `topiq-server`'s.

pub mod calls;
pub mod condition;
pub mod config;
mod control;
pub mod function;
mod metrics;
mod module;
pub mod ordering;
mod outcome;
pub mod registry;
pub mod retry;
mod runs;
pub mod schedules;
mod stats;
mod telemetry;
#[cfg(test)]
mod testing;
mod trigger;

pub use calls::{
    BatchItem, CallError, CallErrorKind, DlqRequest, EnqueueRequest, EnqueueResult,
    ProgressRequest, ReplayRequest, RunRequest, TriggerSample, TriggerStats,
};
pub use config::{Config, ConfigError};
pub use function::{
    BatchHandler, FunctionKind, Functions, Handler, HandlerError, Message, check_trigger_function,
};
pub use module::{QueueModule, ServiceError, StartError, Workers};
pub use registry::{AdapterClass, RegistryError};
pub use stats::{HandlerTimes, TriggerCounts};
pub use telemetry::span_layer;
pub use topiq_runs::{Attempt, AttemptOutcome, Run, RunPage, RunQuery, RunState};

/// Completes on Ctrl-C or SIGTERM: pass it to [`QueueModule::run_until`].
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
