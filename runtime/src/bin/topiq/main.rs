//! The `topiq` binary: thin; argument parsing here, the work in the library (`run`, `check`)
//! or in a running `topiq run` reached over its HTTP API (the operator commands).

mod client;
mod operator;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use topiq::config::TelemetrySettings;
use topiq::{AdapterClass, ApiServer, Config, Functions, QueueModule, Telemetry, shutdown_signal};

use operator::{ApiArgs, DlqCommand, EnqueueArgs};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// topiq: a YAML-configured queue module.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the queue module of a config file, and its HTTP API, until Ctrl-C or SIGTERM.
    ///
    /// The binary registers the built-in functions builtin.log (logs each message) and
    /// builtin.fail (always fails, to watch retries and the DLQ); `functions:` in the config
    /// adds HTTP endpoints as functions. The API listens on api.listen (127.0.0.1:7720).
    ///
    /// Example: TOPIQ_ENV=production topiq run --config config.yaml
    Run {
        /// The config file; `config.<TOPIQ_ENV>.yaml` beside it is merged when TOPIQ_ENV is set.
        #[arg(long, default_value = "config.yaml", env = "TOPIQ_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and print a summary; exit 1 with the file:line error otherwise.
    ///
    /// Example: topiq check --config config.yaml
    Check {
        /// The config file.
        #[arg(long, default_value = "config.yaml", env = "TOPIQ_CONFIG")]
        config: PathBuf,
        /// Function names the application registers, besides the built-in ones (repeatable).
        #[arg(long = "function", value_name = "NAME")]
        functions: Vec<String>,
    },
    /// List the adapter classes a config can name, with what each can honour.
    ///
    /// Example: topiq adapters
    Adapters,
    /// Enqueue a message through a running topiq's API.
    ///
    /// Example: topiq enqueue emails.send '{"to": "a@example.com"}' --delay 5s
    Enqueue {
        #[command(flatten)]
        args: EnqueueArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Inspect, redrive and purge dead-letter queues through a running topiq's API.
    ///
    /// Example: topiq dlq count emails.send
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Per-trigger counts (waiting, in flight, succeeded, failed, DLQ) of a running topiq.
    ///
    /// Example: topiq stats emails.send
    Stats {
        /// Only this topic's triggers.
        topic: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    if let Command::Run { config } = command {
        return run(config);
    }
    if let Err(err) = Telemetry::install(&TelemetrySettings::default(), "info") {
        eprintln!("topiq: {err}");
    }
    match command {
        Command::Run { .. } => ExitCode::SUCCESS,
        Command::Check { config, functions } => check(config, functions),
        Command::Adapters => {
            for class in AdapterClass::ALL {
                let capabilities = class.capabilities();
                println!(
                    "{}\n  durable: {}, delays: {}, retention: {}, max_message_bytes: {}",
                    class.name(),
                    capabilities.durable,
                    capabilities.delayed_delivery,
                    capabilities.retention,
                    capabilities.max_message_bytes
                );
            }
            ExitCode::SUCCESS
        }
        Command::Enqueue { args, api } => operate(operator::enqueue(&api, args)),
        Command::Dlq { command, api } => operate(operator::dlq(&api, command)),
        Command::Stats { topic, api } => operate(operator::stats(&api, topic)),
    }
}

/// Runs an operator command; its error on stderr and exit 1.
fn operate(command: impl Future<Output = Result<(), operator::CommandError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("topiq: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("topiq: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: PathBuf) -> ExitCode {
    let config = match Config::load(&config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    // Before the async runtime: the OTLP exporter runs a thread of its own.
    let telemetry = match Telemetry::install(&config.telemetry, "info") {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("topiq: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("topiq: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(config));
    drop(runtime);
    telemetry.shutdown();
    code
}

/// `topiq run` once the config is loaded: the module, its API, until a shutdown signal.
async fn serve(config: Config) -> ExitCode {
    {
        let api_settings = config.api.clone();
        let module = match QueueModule::new(config, Functions::with_builtins()).await {
            Ok(module) => module,
            Err(err) => {
                eprintln!("{err}");
                return ExitCode::FAILURE;
            }
        };
        let api = if api_settings.enabled {
            match ApiServer::bind(module.clone(), &api_settings).await {
                Ok(api) => Some(api),
                Err(err) => {
                    eprintln!("{err}");
                    module.close().await;
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        let workers = module.start_workers();
        let stop_api = CancellationToken::new();
        let serving = api.map(|api| tokio::spawn(api.serve(stop_api.clone().cancelled_owned())));
        shutdown_signal().await;
        tracing::info!("shutting down");
        // The API takes no new connection and finishes its requests (a paced redrive
        // included, up to the grace period) while the triggers stop; the adapter closes
        // after both.
        stop_api.cancel();
        let grace = module.config().shutdown_grace;
        let api_finished = async {
            match serving {
                None => Ok(()),
                Some(serving) => match tokio::time::timeout(grace, serving).await {
                    Ok(Ok(served)) => served.map_err(|err| err.to_string()),
                    Ok(Err(panicked)) => Err(format!("the HTTP API task failed: {panicked}")),
                    Err(_) => {
                        tracing::warn!(
                            ?grace,
                            "API requests still running after the grace period; closing anyway"
                        );
                        Ok(())
                    }
                },
            }
        };
        let ((), api) = tokio::join!(workers.shutdown(), api_finished);
        module.close().await;
        if let Err(err) = api {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
        ExitCode::SUCCESS
    }
}

fn check(path: PathBuf, application_functions: Vec<String>) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let builtins = Functions::with_builtins();
    let mut known = builtins.names();
    known.extend(
        config
            .functions
            .iter()
            .map(|function| function.name.as_str()),
    );
    for trigger in &config.triggers {
        let name = trigger.function.as_str();
        if !known.contains(&name) && !application_functions.iter().any(|f| f == name) {
            eprintln!(
                "{}: triggers.{}.function: unknown function {name:?}; the topiq binary has {}; pass --function {name} if your application registers it",
                trigger.function_location,
                trigger.name,
                known.join(", ")
            );
            return ExitCode::FAILURE;
        }
    }
    println!("{}: ok", path.display());
    println!("adapter: {}", config.adapter.class.name());
    println!("topics:");
    for spec in config.topics.values() {
        println!(
            "  {} (max_message_bytes {}, idempotency window {:?})",
            spec.name, spec.max_message_bytes, spec.idempotency_window
        );
    }
    println!("triggers:");
    for trigger in &config.triggers {
        let condition = trigger
            .condition
            .as_ref()
            .map(|condition| format!(" if {}", condition.source()))
            .unwrap_or_default();
        let dead_letter = trigger
            .dead_letter_topic
            .as_ref()
            .map(|topic| format!(", dead letters to {topic}"))
            .unwrap_or_default();
        println!(
            "  {}: {} -> {}{condition} (attempts {}, concurrency {}{dead_letter})",
            trigger.name,
            trigger.topic,
            trigger.function,
            trigger.retry.max_attempts,
            trigger.concurrency
        );
    }
    if !config.functions.is_empty() {
        println!("http functions:");
        for function in &config.functions {
            println!(
                "  {}: POST {} (timeout {:?})",
                function.name,
                function.endpoint(),
                function.timeout
            );
        }
    }
    if config.api.enabled {
        println!(
            "api: {}{}",
            config.api.listen,
            if config.api.token.is_some() {
                " (token required)"
            } else {
                ""
            }
        );
    }
    let mut functions: Vec<&str> = config
        .triggers
        .iter()
        .map(|t| t.function.as_str())
        .collect();
    functions.sort_unstable();
    functions.dedup();
    println!("functions: {}", functions.join(", "));
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
