//! `topiq check`: a config validated as `topiq run` would load it, and summarized.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use topiq::config::ConfigError;
use topiq::{Config, FunctionKind, Functions, check_trigger_function};

/// Validates the config at `path` against the binary's functions and `application_functions`;
/// prints a summary, or the file:line error and exit 1.
pub(crate) fn check(path: PathBuf, application_functions: Vec<String>) -> ExitCode {
    let checked = Config::load(&path)
        .and_then(|config| check_functions(&config, &application_functions).map(|()| config));
    match checked {
        Ok(config) => {
            print_summary(&path, &config);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

/// Every trigger's function is a built-in, an HTTP function of the config, or one the
/// application registers (`--function`); the same check `QueueModule::new` makes.
fn check_functions(config: &Config, application_functions: &[String]) -> Result<(), ConfigError> {
    let builtins = Functions::with_builtins();
    let mut known = builtins.names();
    known.extend(config.functions.iter().map(|http| http.name.as_str()));
    for trigger in &config.triggers {
        let name = trigger.function.as_str();
        let kind = if config.functions.iter().any(|http| http.name == name) {
            Some(FunctionKind::Single)
        } else if application_functions.iter().any(|given| given == name) {
            Some(FunctionKind::Either)
        } else {
            builtins.kind(name)
        };
        check_trigger_function(trigger, kind, || {
            format!(
                "the topiq binary has {}; pass --function {name} if your application registers it",
                known.join(", ")
            )
        })?;
    }
    Ok(())
}

fn print_summary(path: &Path, config: &Config) {
    println!("{}: ok", path.display());
    println!("adapter: {}", config.adapter.class.name());
    println!("topics:");
    for spec in config.topics.values() {
        println!(
            "  {} (max_message_bytes {}, idempotency window {:?})",
            spec.name, spec.max_message_bytes, spec.idempotency_window
        );
    }
    print_triggers(config);
    print_runs(config);
    print_service(config);
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
}

fn print_triggers(config: &Config) {
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
}

/// Where `topiq run` keeps runs, for how long, and which triggers record them.
fn print_runs(config: &Config) {
    let mut config = config.clone();
    topiq_server::service_defaults(&mut config);
    let runs = &config.runs;
    println!(
        "runs: {} (succeeded kept {:?}, failed kept {:?})",
        topiq_runs::shown_address(runs.store()),
        runs.succeeded_for,
        runs.failed_for
    );
    let (recording, not): (Vec<_>, Vec<_>) = config
        .triggers
        .iter()
        .partition(|trigger| trigger.record_runs);
    let names = |triggers: &[&topiq::config::TriggerSettings]| {
        let names: Vec<&str> = triggers.iter().map(|t| t.name.as_str()).collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    println!("  recorded: {}", names(&recording));
    if !not.is_empty() {
        println!("  not recorded (runs: false): {}", names(&not));
    }
}

/// The HTTP functions, the API, and every function the triggers call.
fn print_service(config: &Config) {
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
        let token = if config.api.token.is_some() {
            " (token required)"
        } else {
            ""
        };
        println!("api: {}{token}", config.api.listen);
    }
    let mut functions: Vec<&str> = config
        .triggers
        .iter()
        .map(|t| t.function.as_str())
        .collect();
    functions.sort_unstable();
    functions.dedup();
    println!("functions: {}", functions.join(", "));
}
