//! `topiq run` as a service: the queue module of a config, with its HTTP API (calls,
//! `/metrics`, probes), the HTTP functions `functions:` declares, logs and OTLP export, and
//! the shutdown order (API and triggers stop together within the grace period, then the
//! adapter closes).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = topiq::Config::load("config.yaml")?;
//! topiq_server::run(config, topiq::shutdown_signal())?;
//! # Ok(())
//! # }
//! ```

pub mod api;
mod http_function;
pub mod telemetry;

use std::future::Future;

use topiq::config::ConfigError;
use topiq::{Config, Functions, QueueModule, ServiceError, StartError};

pub use api::{ApiError, ApiServer};
pub use http_function::TRIGGER_HEADER;
pub use telemetry::{Telemetry, TelemetryError};
/// The layer `topiq run` turns spans into OpenTelemetry spans with (the runtime's own).
pub use topiq::span_layer;

use http_function::HttpFunction;

/// Why `topiq run` could not serve, or stopped on an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Logs or trace export could not be installed.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// An HTTP function of the config cannot be set up.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The module could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The HTTP API could not listen, or stopped on an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The HTTP API's task panicked.
    #[error("the HTTP API task failed: {0}")]
    ApiPanicked(#[source] tokio::task::JoinError),
}

/// What `topiq run` sets where the config is silent: on a broker adapter, runs are kept in
/// [`DEFAULT_SERVICE_STORE`](topiq::config::DEFAULT_SERVICE_STORE) (a restart keeps them).
pub fn service_defaults(config: &mut Config) {
    if config.runs.store.is_none() && config.adapter.class != topiq::AdapterClass::Builtin {
        config.runs.store = Some(topiq::config::DEFAULT_SERVICE_STORE.to_owned());
    }
}

/// Runs `config` as `topiq run` does, until `shutdown` completes: installs telemetry, starts
/// an async runtime, [`serve`]s with the built-in functions, then flushes the last spans.
/// Call it from a synchronous `main` (the OTLP exporter runs a thread of its own).
pub fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let telemetry = Telemetry::install(&config.telemetry, "info")?;
    let runtime = tokio::runtime::Runtime::new().map_err(ServeError::Runtime)?;
    let served = runtime.block_on(serve(config, Functions::with_builtins(), shutdown));
    drop(runtime);
    telemetry.shutdown();
    served
}

/// Serves `config` with `functions` (and the HTTP functions it declares) until `shutdown`
/// completes; [`QueueModule::run_beside`] owns the shutdown order.
pub async fn serve(
    mut config: Config,
    mut functions: Functions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    register_http_functions(&config, &mut functions)?;
    service_defaults(&mut config);
    let api_settings = config.api.clone();
    let module = QueueModule::new(config, functions).await?;
    let api = if api_settings.enabled {
        match ApiServer::bind(module.clone(), &api_settings).await {
            Ok(api) => Some(api),
            Err(err) => {
                module.close().await;
                return Err(err.into());
            }
        }
    } else {
        None
    };
    let served = module
        .run_beside(shutdown, |stop| async move {
            match api {
                Some(api) => api.serve(stop).await,
                None => Ok(()),
            }
        })
        .await;
    match served {
        Ok(()) => Ok(()),
        Err(ServiceError::Failed(err)) => Err(err.into()),
        Err(ServiceError::Panicked(err)) => Err(ServeError::ApiPanicked(err)),
    }
}

/// Registers every HTTP function of the config's `functions:` into `functions`; a name the
/// application registers too is an error.
pub fn register_http_functions(
    config: &Config,
    functions: &mut Functions,
) -> Result<(), ConfigError> {
    for http in &config.functions {
        if functions.kind(&http.name).is_some() {
            return Err(ConfigError::invalid(
                http.location.clone(),
                format!("functions.{}", http.name),
                "the application registers a function of this name too; keep one of them",
            ));
        }
        let function = HttpFunction::new(http.clone()).map_err(|err| {
            ConfigError::invalid(
                http.location.clone(),
                format!("functions.{}.http", http.name),
                format!("cannot set up the HTTP client: {err}"),
            )
        })?;
        functions.register(http.name.clone(), function);
    }
    Ok(())
}

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
