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

pub mod api;
pub mod calls;
pub mod condition;
pub mod config;
pub mod function;
mod http_function;
mod metrics;
mod module;
pub mod registry;
pub mod retry;
mod stats;
pub mod telemetry;
mod trigger;

pub use api::{ApiError, ApiServer};
pub use calls::{BatchItem, CallError, DlqRequest, EnqueueRequest, EnqueueResult, TriggerStats};
pub use config::{Config, ConfigError};
pub use function::{BatchHandler, Functions, Handler, HandlerError, Message};
pub use module::{QueueModule, StartError, Workers};
pub use registry::{AdapterClass, RegistryError};
pub use stats::TriggerCounts;
pub use telemetry::{Telemetry, TelemetryError};

/// Makes rustls' ring provider the process default for TLS, unless one is set already: the
/// HTTP clients (HTTP functions, the OTLP exporter, the CLI) need one. The same provider
/// lapin and async-nats use, so the binary carries one crypto library. Called by everything
/// here that builds an HTTP client; idempotent.
pub fn install_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is then set.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

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
