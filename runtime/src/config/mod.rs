//! `config.yaml`: loading, environment expansion, per-environment overrides and validation.
//!
//! The file has the iii queue module's shape (see the README); [`Config::load`] reads it,
//! expands `${VAR}`, `${VAR:-default}` and iii's `${VAR:default}` from the environment in
//! unquoted values (a variable that is unset and has no default is an error; `$$` is a
//! literal `$`), replaces whole sections with those of
//! `config.<TOPIQ_ENV>.yaml` when `TOPIQ_ENV` is set, and checks every rule. Any mistake is one
//! [`ConfigError`] naming the file, line and key; the value of an environment variable never
//! appears in it.

mod duration;
mod error;
mod ordering;
mod queue_module;
mod raw;
mod runs;
mod schedules;
mod service;
mod source;
mod telemetry;
mod trigger;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use topiq_adapter::{TopicName, TopicSpec, TriggerName};

pub use duration::{ConfigDuration, parse_duration};
pub use error::{ConfigError, ConfigLocation};
pub use runs::{DEFAULT_FAILED_FOR, DEFAULT_SERVICE_STORE, DEFAULT_SUCCEEDED_FOR, RunsSettings};
pub use schedules::ScheduleSettings;
pub use service::redacted as redacted_url;
pub use service::{
    ApiSettings, ConsoleSettings, DEFAULT_API_LISTEN, DEFAULT_HTTP_TIMEOUT, DEFAULT_MAX_BODY_BYTES,
    HttpFunctionSettings, Secret,
};
pub use telemetry::{LogFormat, OtlpProtocol, OtlpSettings, TelemetrySettings};

use crate::condition::Condition;
use crate::ordering::{OrderingKey, TopicOrdering};
use crate::registry::AdapterClass;
use crate::retry::RetryPolicy;
use source::{Sections, SourceFile, override_path, process_environment};

/// The module class topiq runs.
pub const QUEUE_MODULE_CLASS: &str = "modules::queue::QueueModule";

/// The environment variable naming the environment whose override file is merged.
pub const ENV_VARIABLE: &str = "TOPIQ_ENV";

/// The most handlers of one trigger that run at once.
pub const MAX_CONCURRENCY: u32 = 100;

/// The most messages in one batch.
pub const MAX_BATCH_SIZE: u32 = 100;

/// The handler timeout when a trigger sets none.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(300);

/// The shutdown grace period when the config sets none.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A validated config: everything the module needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// The broker.
    pub adapter: AdapterSettings,
    /// Every topic the config names (under `topics:`, in a trigger, as a dead-letter topic),
    /// with its options.
    pub topics: BTreeMap<TopicName, TopicSpec>,
    /// The per-key order of each topic with ordered triggers (its lanes are the partitions).
    pub ordering: BTreeMap<TopicName, TopicOrdering>,
    /// The triggers, by name.
    pub triggers: Vec<TriggerSettings>,
    /// How long running handlers may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Functions the config declares as HTTP endpoints (`functions:`).
    pub functions: Vec<HttpFunctionSettings>,
    /// The HTTP API `topiq run` serves (`api:`).
    pub api: ApiSettings,
    /// The operator console `topiq run` serves on the API's listener (`console:`).
    pub console: ConsoleSettings,
    /// Logs and trace export (`telemetry:`).
    pub telemetry: TelemetrySettings,
    /// Where run records are kept and for how long (`runs:`).
    pub runs: RunsSettings,
    /// Topics enqueued to on a cron expression or an interval (`schedules:`).
    pub schedules: Vec<ScheduleSettings>,
    /// Things that work but are probably not meant; logged at start.
    pub warnings: Vec<String>,
}

/// The adapter section.
#[derive(Clone, Debug)]
pub struct AdapterSettings {
    /// The class.
    pub class: AdapterClass,
    /// Its `config:` map, for the adapter to read.
    pub options: serde_json::Value,
    /// Where the options were written.
    pub location: ConfigLocation,
}

/// One trigger.
#[derive(Clone, Debug)]
pub struct TriggerSettings {
    /// Its name (the durable subscription's name).
    pub name: TriggerName,
    /// The topic it subscribes to.
    pub topic: TopicName,
    /// The function it calls.
    pub function: String,
    /// Where `function` was written, for the unknown-function error.
    pub function_location: ConfigLocation,
    /// Messages for which it is false are acknowledged without calling the function.
    pub condition: Option<Condition>,
    /// Attempts and backoff.
    pub retry: RetryPolicy,
    /// Where failed messages are published, besides the trigger's DLQ.
    pub dead_letter_topic: Option<TopicName>,
    /// Handlers running at once.
    pub concurrency: u32,
    /// Messages per call of a batch function (1: not batched).
    pub batch_size: u32,
    /// The lease of a delivery; extended automatically while its handler runs.
    pub visibility_timeout: Duration,
    /// How long one handler call may take.
    pub timeout: Duration,
    /// Whether its runs are recorded (`runs: false` opts a firehose trigger out).
    pub record_runs: bool,
    /// Its messages of one key run one at a time, in enqueue order.
    pub ordering_key: Option<OrderingKey>,
    /// Where `ordering_key` was written, for the checks across triggers.
    pub ordering_key_location: Option<ConfigLocation>,
}

impl Config {
    /// Loads `path`, merged with `config.<env>.yaml` beside it when `TOPIQ_ENV` is set.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let environment = std::env::var(ENV_VARIABLE)
            .ok()
            .filter(|env| !env.is_empty());
        Self::load_for_environment(path, environment.as_deref())
    }

    /// Loads `path`, merged with the override file of `environment` when given.
    ///
    /// The override file (`config.production.yaml` for `config.yaml` and `production`) replaces
    /// whole top-level sections: a `modules:` in it replaces the base's `modules:`, a
    /// `triggers:` replaces `triggers:`; sections it does not have are kept.
    pub fn load_for_environment(
        path: impl AsRef<Path>,
        environment: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let variables = process_environment();
        let base = SourceFile::read(path)?;
        let mut sections = base.parse(&variables)?.into_sections(&base.name);
        if let Some(environment) = environment {
            let override_path = override_path(path, environment);
            let overrides = SourceFile::read(&override_path)?;
            let replacement = overrides.parse(&variables)?.into_sections(&overrides.name);
            sections = replacement.over(sections);
        }
        validate(sections)
    }

    /// Parses and validates config text, expanding `${VAR}` from the process environment;
    /// `file` names it in errors.
    pub fn from_yaml(text: &str, file: &str) -> Result<Self, ConfigError> {
        Self::from_yaml_with_variables(text, file, &process_environment())
    }

    /// Parses and validates config text, expanding `${VAR}` from `variables` only.
    pub fn from_yaml_with_variables(
        text: &str,
        file: &str,
        variables: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let source = SourceFile {
            name: file.to_owned(),
            text: text.to_owned(),
        };
        validate(source.parse(variables)?.into_sections(file))
    }

    /// The trigger called `name`.
    pub fn trigger(&self, name: &str) -> Option<&TriggerSettings> {
        self.triggers
            .iter()
            .find(|trigger| trigger.name.as_str() == name)
    }
}

/// Every section checked, in the order a reader meets them; the first mistake is the error.
fn validate(sections: Sections) -> Result<Config, ConfigError> {
    let (file, module) = queue_module::the_queue_module(sections.modules)?;
    let adapter = queue_module::adapter_settings(&file, module.config.adapter)?;
    let capabilities = adapter.class.capabilities();
    let partitions = ordering::partitions_of(&module.config.topics);
    let mut topics = queue_module::topics(&file, module.config.topics, &capabilities)?;
    let mut warnings = Vec::new();
    let mut triggers = Vec::new();
    if let Some((triggers_file, raw_triggers)) = sections.triggers {
        for (name, raw) in raw_triggers {
            let trigger = trigger::validate_trigger(&triggers_file, name, raw, &mut warnings)?;
            for topic in trigger::topics_of(&trigger) {
                topics
                    .entry(topic.clone())
                    .or_insert_with(|| TopicSpec::new(topic.clone()));
            }
            triggers.push(trigger);
        }
    }
    let ordering =
        ordering::topic_orderings(&file, partitions, &triggers, &mut topics, &capabilities)?;
    let functions = match sections.functions {
        Some((file, functions)) => service::validate_functions(&file, functions)?,
        None => Vec::new(),
    };
    let (api, console) = service::api_and_console(sections.api, sections.console)?;
    let telemetry = match sections.telemetry {
        Some((file, telemetry)) => telemetry::validate_telemetry(&file, telemetry)?,
        None => TelemetrySettings::default(),
    };
    let runs = match sections.runs {
        Some((file, raw)) => runs::validate_runs(&file, raw)?,
        None => RunsSettings::default(),
    };
    let schedules = match sections.schedules {
        Some((file, raw)) => schedules::validate_schedules(&file, raw, &mut topics)?,
        None => Vec::new(),
    };
    Ok(Config {
        adapter,
        topics,
        ordering,
        triggers,
        functions,
        api,
        console,
        telemetry,
        runs,
        schedules,
        shutdown_grace: module
            .config
            .shutdown_grace
            .map_or(DEFAULT_SHUTDOWN_GRACE, |grace| grace.0),
        warnings,
    })
}

#[cfg(test)]
mod tests;
