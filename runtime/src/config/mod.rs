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
mod raw;
mod service;
mod telemetry;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::{Location, MessageFormatter, PropertySyntax, Spanned, UserMessageFormatter};
use topiq_adapter::{
    DEFAULT_IDEMPOTENCY_WINDOW, DEFAULT_VISIBILITY_TIMEOUT, TopicName, TopicSpec, TriggerName,
};

pub use duration::{ConfigDuration, parse_duration};
pub use error::{ConfigError, ConfigLocation};
pub use service::redacted as redacted_url;
pub use service::{
    ApiSettings, DEFAULT_API_LISTEN, DEFAULT_HTTP_TIMEOUT, DEFAULT_MAX_BODY_BYTES,
    HttpFunctionSettings, Secret,
};
pub use telemetry::{LogFormat, OtlpProtocol, OtlpSettings, TelemetrySettings};

use crate::condition::Condition;
use crate::registry::AdapterClass;
use crate::retry::{Backoff, RetryPolicy};
use raw::{
    BackoffKind, RawApi, RawFile, RawFunction, RawModule, RawRetry, RawTelemetry, RawTrigger,
};

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
    /// The triggers, by name.
    pub triggers: Vec<TriggerSettings>,
    /// How long running handlers may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Functions the config declares as HTTP endpoints (`functions:`).
    pub functions: Vec<HttpFunctionSettings>,
    /// The HTTP API `topiq run` serves (`api:`).
    pub api: ApiSettings,
    /// Logs and trace export (`telemetry:`).
    pub telemetry: TelemetrySettings,
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

/// `config.yaml` + `production` → `config.production.yaml`, in the same folder.
fn override_path(path: &Path, environment: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let extension = path
        .extension()
        .map(|ext| ext.to_string_lossy().into_owned())
        .unwrap_or_else(|| "yaml".into());
    path.with_file_name(format!("{stem}.{environment}.{extension}"))
}

struct SourceFile {
    name: String,
    text: String,
}

impl SourceFile {
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Ok(Self {
            name: path.display().to_string(),
            text,
        })
    }

    fn parse(&self, variables: &HashMap<String, String>) -> Result<RawFile, ConfigError> {
        let text = rewrite_iii_defaults(&self.text);
        let mut options = serde_saphyr::Options::default();
        options.property_syntax = PropertySyntax::Braced;
        let options = options.with_properties(variables.clone());
        let mut failed_at = None;
        let mut raw: RawFile =
            serde_saphyr::with_deserializer_from_str_with_options(&text, options, |deserializer| {
                serde_path_to_error::deserialize(deserializer).map_err(|err| {
                    failed_at = Some(err.path().to_string());
                    err.into_inner()
                })
            })
            .map_err(|err| {
                let key = match failed_at.as_deref() {
                    None | Some(".") | Some("") => "(top level)".to_owned(),
                    // `Spanned<T>` adds a `value` level that is not in the file.
                    Some(path) => path.strip_suffix(".value").unwrap_or(path).to_owned(),
                };
                let location = err.location().map(|at| at.line()).unwrap_or(0);
                let column = err.location().map(|at| at.column()).unwrap_or(0);
                let message = UserMessageFormatter.format_message(&err).into_owned();
                let mut render = serde_saphyr::RenderOptions::default();
                render.source_name = Some(&self.name);
                // The rendered error repeats the message on its first line; keep the source lines.
                let rendered = err.render_with_options(render);
                let snippet = rendered
                    .lines()
                    .skip_while(|line| !line.trim_start().starts_with("-->"))
                    .collect::<Vec<_>>()
                    .join("\n");
                ConfigError::Invalid {
                    location: ConfigLocation {
                        file: self.name.clone(),
                        line: location,
                        column,
                    },
                    key,
                    message,
                    snippet: (!snippet.is_empty()).then_some(snippet),
                }
            })?;
        service::expand_quoted(&mut raw, &text, &self.name, variables)?;
        Ok(raw)
    }
}

/// The process environment, as the properties `${VAR}` expands from (variables whose name or
/// value is not UTF-8 cannot be referenced).
fn process_environment() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect()
}

/// Rewrites iii's `${VAR:default}` into the compose form `${VAR:-default}`, so both work.
/// Only adds characters inside `${...}`, so line numbers stay right.
fn rewrite_iii_defaults(text: &str) -> Cow<'_, str> {
    if !text.contains("${") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let (before, reference) = rest.split_at(start);
        out.push_str(before);
        let body = &reference[2..];
        let name_len = body
            .bytes()
            .take_while(|byte| byte.is_ascii_alphanumeric() || *byte == b'_')
            .count();
        let after_name = &body[name_len..];
        let iii_default = name_len > 0
            && after_name.starts_with(':')
            && !after_name[1..].starts_with(['-', '+', '?']);
        out.push_str("${");
        out.push_str(&body[..name_len]);
        if iii_default {
            out.push_str(":-");
            rest = &after_name[1..];
        } else {
            rest = after_name;
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The top-level sections, each with the file it came from.
struct Sections {
    modules: Option<(String, Vec<RawModule>)>,
    triggers: Option<(String, BTreeMap<TriggerName, RawTrigger>)>,
    functions: Option<(String, BTreeMap<String, RawFunction>)>,
    api: Option<(String, RawApi)>,
    telemetry: Option<(String, RawTelemetry)>,
}

impl RawFile {
    fn into_sections(self, file: &str) -> Sections {
        Sections {
            modules: self.modules.map(|modules| (file.to_owned(), modules)),
            triggers: self.triggers.map(|triggers| (file.to_owned(), triggers)),
            functions: self.functions.map(|functions| (file.to_owned(), functions)),
            api: self.api.map(|api| (file.to_owned(), api)),
            telemetry: self.telemetry.map(|telemetry| (file.to_owned(), telemetry)),
        }
    }
}

impl Sections {
    /// These sections, and `base`'s where these have none.
    fn over(self, base: Sections) -> Sections {
        Sections {
            modules: self.modules.or(base.modules),
            triggers: self.triggers.or(base.triggers),
            functions: self.functions.or(base.functions),
            api: self.api.or(base.api),
            telemetry: self.telemetry.or(base.telemetry),
        }
    }
}

fn at(file: &str, location: &Location) -> ConfigLocation {
    ConfigLocation {
        file: file.to_owned(),
        line: location.line(),
        column: location.column(),
    }
}

fn spanned_at<T>(file: &str, spanned: &Spanned<T>) -> ConfigLocation {
    at(file, &spanned.referenced)
}

fn validate(sections: Sections) -> Result<Config, ConfigError> {
    let Some((modules_file, modules)) = sections.modules else {
        return Err(ConfigError::invalid(
            ConfigLocation {
                file: "config".into(),
                line: 0,
                column: 0,
            },
            "modules",
            format!(
                "missing: add `modules:` with one `- class: {QUEUE_MODULE_CLASS}` entry and its adapter"
            ),
        ));
    };
    let file = modules_file.as_str();
    let mut queue_modules = modules.into_iter();
    let module = match (queue_modules.next(), queue_modules.next()) {
        (Some(module), None) => module,
        (None, _) => {
            return Err(ConfigError::invalid(
                ConfigLocation {
                    file: file.into(),
                    line: 0,
                    column: 0,
                },
                "modules",
                format!("is empty: add one `- class: {QUEUE_MODULE_CLASS}` entry"),
            ));
        }
        (Some(_), Some(second)) => {
            return Err(ConfigError::invalid(
                spanned_at(file, &second.class),
                "modules[1].class",
                "topiq runs one queue module; remove the second entry",
            ));
        }
    };
    if module.class.value != QUEUE_MODULE_CLASS {
        return Err(ConfigError::invalid(
            spanned_at(file, &module.class),
            "modules[0].class",
            format!(
                "unknown module class {:?}; topiq runs {QUEUE_MODULE_CLASS}",
                module.class.value
            ),
        ));
    }
    let adapter_config = module.config.adapter;
    let class = AdapterClass::from_name(&adapter_config.class.value).map_err(|err| {
        ConfigError::invalid(
            spanned_at(file, &adapter_config.class),
            "modules[0].config.adapter.class",
            err.to_string(),
        )
    })?;
    let (options, options_location) = match adapter_config.config {
        Some(spanned) => (spanned.value.clone(), spanned_at(file, &spanned)),
        None => (
            serde_json::Value::Null,
            spanned_at(file, &adapter_config.class),
        ),
    };
    let adapter = AdapterSettings {
        class,
        options,
        location: options_location,
    };
    if let Some(path) = quoted_reference(&adapter.options, "modules[0].config.adapter.config") {
        return Err(ConfigError::invalid(
            adapter.location.clone(),
            path,
            "`${...}` is expanded only in unquoted values; remove the quotes around it",
        ));
    }
    adapter
        .class
        .check_options(&adapter.options)
        .map_err(|message| {
            ConfigError::invalid(
                adapter.location.clone(),
                "modules[0].config.adapter.config",
                message,
            )
        })?;
    let capabilities = adapter.class.capabilities();

    let mut topics = BTreeMap::new();
    for (name, raw) in module.config.topics {
        let key = format!("modules[0].config.topics.{name}");
        let mut spec = TopicSpec::new(name.clone());
        if let Some(limit) = raw.max_message_bytes {
            spec.max_message_bytes = limit.value;
            if limit.value == 0 || limit.value > capabilities.max_message_bytes {
                return Err(ConfigError::invalid(
                    spanned_at(file, &limit),
                    format!("{key}.max_message_bytes"),
                    format!(
                        "must be between 1 and {} for {}, got {}",
                        capabilities.max_message_bytes, capabilities.adapter, limit.value
                    ),
                ));
            }
        }
        spec.idempotency_window = raw
            .idempotency_window
            .map_or(DEFAULT_IDEMPOTENCY_WINDOW, |window| window.0);
        spec.retention = raw.retention.map(|retention| retention.0);
        spec.dlq_retention = raw.dlq_retention.map(|retention| retention.0);
        if (spec.retention.is_some() || spec.dlq_retention.is_some()) && !capabilities.retention {
            return Err(ConfigError::invalid(
                ConfigLocation {
                    file: file.into(),
                    line: 0,
                    column: 0,
                },
                key,
                format!(
                    "{} cannot honour retention; remove `retention` / `dlq_retention`",
                    capabilities.adapter
                ),
            ));
        }
        topics.insert(name, spec);
    }

    let mut warnings = Vec::new();
    let mut triggers = Vec::new();
    if let Some((triggers_file, raw_triggers)) = sections.triggers {
        for (name, raw) in raw_triggers {
            let trigger = validate_trigger(&triggers_file, name, raw, &mut warnings)?;
            for topic in std::iter::once(&trigger.topic).chain(&trigger.dead_letter_topic) {
                topics
                    .entry(topic.clone())
                    .or_insert_with(|| TopicSpec::new(topic.clone()));
            }
            triggers.push(trigger);
        }
    }
    let functions = match sections.functions {
        Some((file, functions)) => service::validate_functions(&file, functions)?,
        None => Vec::new(),
    };
    let api = match sections.api {
        Some((file, api)) => service::validate_api(&file, Some(api))?,
        None => ApiSettings::default(),
    };
    let telemetry = match sections.telemetry {
        Some((file, telemetry)) => telemetry::validate_telemetry(&file, telemetry)?,
        None => TelemetrySettings::default(),
    };
    Ok(Config {
        adapter,
        topics,
        triggers,
        functions,
        api,
        telemetry,
        shutdown_grace: module
            .config
            .shutdown_grace
            .map_or(DEFAULT_SHUTDOWN_GRACE, |grace| grace.0),
        warnings,
    })
}

/// The key path of the first string in `value` that still holds a `${...}` reference (it was
/// quoted, so it was not expanded).
fn quoted_reference(value: &serde_json::Value, path: &str) -> Option<String> {
    match value {
        serde_json::Value::String(text) if text.contains("${") => Some(path.to_owned()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| quoted_reference(item, &format!("{path}[{index}]"))),
        serde_json::Value::Object(fields) => fields
            .iter()
            .find_map(|(key, item)| quoted_reference(item, &format!("{path}.{key}"))),
        _ => None,
    }
}

fn validate_trigger(
    file: &str,
    name: TriggerName,
    raw: RawTrigger,
    warnings: &mut Vec<String>,
) -> Result<TriggerSettings, ConfigError> {
    let key = format!("triggers.{name}");
    if raw.kind.value != "queue" {
        return Err(ConfigError::invalid(
            spanned_at(file, &raw.kind),
            format!("{key}.type"),
            format!(
                "unknown trigger type {:?}; topiq runs `type: queue` triggers",
                raw.kind.value
            ),
        ));
    }
    let config = raw.config;
    let condition = match &config.condition {
        None => None,
        Some(source) => Some(Condition::compile(&source.value).map_err(|message| {
            ConfigError::invalid(
                spanned_at(file, source),
                format!("{key}.config.condition"),
                message,
            )
        })?),
    };
    let in_range = |value: &Option<Spanned<u32>>, field: &str, max: u32| match value {
        None => Ok(1),
        Some(spanned) if (1..=max).contains(&spanned.value) => Ok(spanned.value),
        Some(spanned) => Err(ConfigError::invalid(
            spanned_at(file, spanned),
            format!("{key}.config.{field}"),
            format!("must be between 1 and {max}, got {}", spanned.value),
        )),
    };
    let concurrency = in_range(&config.concurrency, "concurrency", MAX_CONCURRENCY)?;
    let batch_size = in_range(&config.batch_size, "batch_size", MAX_BATCH_SIZE)?;
    let visibility_timeout = match &config.visibility_timeout {
        None => DEFAULT_VISIBILITY_TIMEOUT,
        Some(spanned) if spanned.value.0 >= Duration::from_secs(1) => spanned.value.0,
        Some(spanned) => {
            return Err(ConfigError::invalid(
                spanned_at(file, spanned),
                format!("{key}.config.visibility_timeout"),
                "must be at least 1s",
            ));
        }
    };
    let timeout = match &config.timeout {
        None => DEFAULT_HANDLER_TIMEOUT,
        Some(spanned) if !spanned.value.0.is_zero() => spanned.value.0,
        Some(spanned) => {
            return Err(ConfigError::invalid(
                spanned_at(file, spanned),
                format!("{key}.config.timeout"),
                "must be longer than zero",
            ));
        }
    };
    if config.timeout.is_some() && timeout > visibility_timeout {
        warnings.push(format!(
            "{key}: the handler timeout ({timeout:?}) is longer than the visibility timeout ({visibility_timeout:?}): topiq extends the lease while the handler runs, but if this process stalls the message is delivered again before the handler gives up"
        ));
    }
    let queue_metadata = config
        .metadata
        .and_then(|metadata| metadata.infrastructure)
        .and_then(|infrastructure| infrastructure.queue);
    let (max_retries, retry_delay_ms, dead_letter_topic) = match queue_metadata {
        Some(queue) => (
            queue.max_retries,
            queue.retry_delay_ms,
            queue.dead_letter_topic,
        ),
        None => (None, None, None),
    };
    let retry = match (&config.retry, &max_retries, &retry_delay_ms) {
        (Some(retry), Some(_), _) | (Some(retry), _, Some(_)) => {
            return Err(ConfigError::invalid(
                spanned_at(file, retry),
                format!("{key}.config.retry"),
                "give either `retry:` or metadata.infrastructure.queue.max_retries / retry_delay_ms, not both",
            ));
        }
        (Some(retry), None, None) => retry_policy(file, &key, retry)?,
        (None, None, None) => RetryPolicy::default(),
        (None, max_retries, retry_delay_ms) => RetryPolicy {
            max_attempts: max_retries
                .as_ref()
                .map_or(RetryPolicy::default().max_attempts, |retries| {
                    retries.value.saturating_add(1)
                }),
            backoff: Backoff::Fixed(
                retry_delay_ms
                    .as_ref()
                    .map_or(Duration::from_secs(1), |delay| {
                        Duration::from_millis(delay.value)
                    }),
            ),
        },
    };
    if dead_letter_topic.as_ref() == Some(&config.topic) {
        return Err(ConfigError::invalid(
            spanned_at(file, &raw.function),
            format!("{key}.config.metadata.infrastructure.queue.dead_letter_topic"),
            "is the trigger's own topic: failed messages would be delivered to it again; name another topic",
        ));
    }
    Ok(TriggerSettings {
        name,
        topic: config.topic,
        function: raw.function.value.clone(),
        function_location: spanned_at(file, &raw.function),
        condition,
        retry,
        dead_letter_topic,
        concurrency,
        batch_size,
        visibility_timeout,
        timeout,
    })
}

fn retry_policy(
    file: &str,
    key: &str,
    retry: &Spanned<RawRetry>,
) -> Result<RetryPolicy, ConfigError> {
    let raw = &retry.value;
    let fail = |message: String| {
        Err(ConfigError::invalid(
            spanned_at(file, retry),
            format!("{key}.config.retry"),
            message,
        ))
    };
    let max_attempts = raw
        .max_attempts
        .unwrap_or(RetryPolicy::default().max_attempts);
    if max_attempts == 0 {
        return fail("max_attempts must be at least 1 (the first attempt)".into());
    }
    let stray = |allowed: &[&str]| {
        [
            ("delay", raw.delay.is_some()),
            ("initial", raw.initial.is_some()),
            ("factor", raw.factor.is_some()),
            ("max", raw.max.is_some()),
            ("delays", raw.delays.is_some()),
        ]
        .into_iter()
        .find(|(name, given)| *given && !allowed.contains(name))
        .map(|(name, _)| name)
    };
    let backoff = match raw.backoff {
        BackoffKind::Fixed => {
            if let Some(name) = stray(&["delay"]) {
                return fail(format!(
                    "`{name}` does not apply to `backoff: fixed` (it takes `delay`)"
                ));
            }
            let Some(delay) = raw.delay else {
                return fail("`backoff: fixed` needs `delay`, such as `delay: 2s`".into());
            };
            Backoff::Fixed(delay.0)
        }
        BackoffKind::Exponential => {
            if let Some(name) = stray(&["initial", "factor", "max"]) {
                return fail(format!(
                    "`{name}` does not apply to `backoff: exponential` (it takes `initial`, `factor`, `max`)"
                ));
            }
            let Some(initial) = raw.initial else {
                return fail(
                    "`backoff: exponential` needs `initial`, such as `initial: 1s`".into(),
                );
            };
            let factor = raw.factor.unwrap_or(2.0);
            if !(factor.is_finite() && factor >= 1.0) {
                return fail(format!("factor must be a number ≥ 1, got {factor}"));
            }
            let max = raw.max.map_or(Duration::from_secs(300), |max| max.0);
            if max < initial.0 {
                return fail("max must not be shorter than initial".into());
            }
            Backoff::Exponential {
                initial: initial.0,
                factor,
                max,
            }
        }
        BackoffKind::Custom => {
            if let Some(name) = stray(&["delays"]) {
                return fail(format!(
                    "`{name}` does not apply to `backoff: custom` (it takes `delays`)"
                ));
            }
            let delays: Vec<Duration> = raw.delays.iter().flatten().map(|delay| delay.0).collect();
            if delays.is_empty() {
                return fail(
                    "`backoff: custom` needs a non-empty `delays` list, such as `delays: [1s, 10s, 1m]`"
                        .into(),
                );
            }
            Backoff::Custom(delays)
        }
    };
    Ok(RetryPolicy {
        max_attempts,
        backoff,
    })
}

#[cfg(test)]
mod tests;
