//! The `topiq` binary: thin; argument parsing here, the work in `topiq-server` (`run`), the
//! `topiq` module (`check`) or a running `topiq run` reached over its HTTP API (the operator
//! commands).

mod check;
mod client;
mod operator;
mod runs;
mod schedules;
mod triggers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use topiq::config::TelemetrySettings;
use topiq::{AdapterClass, Config, shutdown_signal};
use topiq_server::{ServeError, Telemetry};

use operator::{ApiArgs, DlqCommand, EnqueueArgs};
use runs::RunsCommand;
use schedules::SchedulesCommand;
use triggers::TriggersCommand;

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
    /// What happened to messages on their triggers (runs), and cancel or replay one, through
    /// a running topiq's API.
    ///
    /// Example: topiq runs get 0192f3c1-... --trigger send-email
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List triggers, and pause or resume one on every instance, through a running topiq's
    /// API.
    ///
    /// Example: topiq triggers pause send-email
    Triggers {
        #[command(subcommand)]
        command: TriggersCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List, create, pause, resume, delete or fire the schedules every instance fires,
    /// through a running topiq's API.
    ///
    /// Example: topiq schedules create heartbeat --every 30s --topic health.ping
    Schedules {
        #[command(subcommand)]
        command: SchedulesCommand,
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
        Command::Check { config, functions } => check::check(config, functions),
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
        Command::Runs { command, api } => operate(runs::runs(&api, command)),
        Command::Triggers { command, api } => operate(triggers::triggers(&api, command)),
        Command::Schedules { command, api } => operate(schedules::schedules(&api, command)),
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
    match topiq_server::run(config, shutdown_signal()) {
        Ok(()) => ExitCode::SUCCESS,
        // Errors of the config and of setting up the module name their own place.
        Err(err @ (ServeError::Config(_) | ServeError::Start(_) | ServeError::Api(_))) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("topiq: {err}");
            ExitCode::FAILURE
        }
    }
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
