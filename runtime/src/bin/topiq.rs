//! The `topiq` binary: thin; argument parsing here, the work in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use topiq::AdapterClass;

/// topiq: a YAML-configured queue module.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the adapter classes `config.yaml` can name, with what each can honour.
    ///
    /// Example: topiq adapters
    Adapters,
}

fn main() -> ExitCode {
    match Cli::parse().command {
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
        }
    }
    ExitCode::SUCCESS
}
