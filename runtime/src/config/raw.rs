//! The config file as written: serde structs that refuse unknown keys. [`super::validate`]
//! turns them into [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;
use topiq_adapter::{TopicName, TriggerName};

use super::duration::ConfigDuration;

/// A whole config file. Every section is optional so an environment file can replace only
/// some of them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub(crate) modules: Option<Vec<RawModule>>,
    pub(crate) triggers: Option<BTreeMap<TriggerName, RawTrigger>>,
    pub(crate) functions: Option<BTreeMap<String, RawFunction>>,
    pub(crate) api: Option<RawApi>,
    pub(crate) console: Option<RawConsole>,
    pub(crate) telemetry: Option<RawTelemetry>,
    pub(crate) runs: Option<RawRuns>,
    pub(crate) schedules: Option<RawSchedules>,
}

/// The `schedules:` section: each schedule's definition, by name.
pub(crate) type RawSchedules = BTreeMap<String, Spanned<topiq_runs::ScheduleSpec>>;

/// Where run records are kept and for how long.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuns {
    pub(crate) store: Option<Spanned<String>>,
    pub(crate) succeeded_for: Option<ConfigDuration>,
    pub(crate) failed_for: Option<ConfigDuration>,
}

/// Logs, traces and their export.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTelemetry {
    pub(crate) service_name: Option<String>,
    pub(crate) log_format: Option<Spanned<String>>,
    pub(crate) otlp: Option<RawOtlp>,
}

/// The OTLP exporter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOtlp {
    pub(crate) endpoint: Spanned<String>,
    pub(crate) protocol: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, Spanned<String>>,
    pub(crate) sampling_ratio: Option<Spanned<f64>>,
    pub(crate) timeout: Option<ConfigDuration>,
    pub(crate) metrics_interval: Option<ConfigDuration>,
}

/// A function declared in the config rather than registered by code.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFunction {
    pub(crate) http: Spanned<RawHttpFunction>,
}

/// An HTTP endpoint each message is POSTed to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttpFunction {
    pub(crate) url: Spanned<String>,
    pub(crate) timeout: Option<Spanned<ConfigDuration>>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, Spanned<String>>,
}

/// The HTTP API `topiq run` serves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    pub(crate) enabled: Option<bool>,
    pub(crate) listen: Option<Spanned<String>>,
    pub(crate) token: Option<Spanned<String>>,
    pub(crate) max_body_bytes: Option<Spanned<usize>>,
}

/// The operator console `topiq run` serves beside the API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsole {
    pub(crate) enabled: Option<Spanned<bool>>,
    pub(crate) read_only: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModule {
    pub(crate) class: Spanned<String>,
    pub(crate) config: RawModuleConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModuleConfig {
    pub(crate) adapter: RawAdapter,
    #[serde(default)]
    pub(crate) topics: BTreeMap<TopicName, RawTopic>,
    pub(crate) shutdown_grace: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdapter {
    pub(crate) class: Spanned<String>,
    #[serde(default)]
    pub(crate) config: Option<Spanned<serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTopic {
    pub(crate) max_message_bytes: Option<Spanned<usize>>,
    pub(crate) idempotency_window: Option<ConfigDuration>,
    pub(crate) retention: Option<ConfigDuration>,
    pub(crate) dlq_retention: Option<ConfigDuration>,
    pub(crate) priority_levels: Option<Spanned<u32>>,
    pub(crate) partitions: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrigger {
    #[serde(rename = "type")]
    pub(crate) kind: Spanned<String>,
    pub(crate) function: Spanned<String>,
    pub(crate) config: RawTriggerConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTriggerConfig {
    pub(crate) topic: TopicName,
    pub(crate) condition: Option<Spanned<String>>,
    pub(crate) ordering_key: Option<Spanned<String>>,
    pub(crate) concurrency: Option<Spanned<u32>>,
    pub(crate) batch_size: Option<Spanned<u32>>,
    pub(crate) visibility_timeout: Option<Spanned<ConfigDuration>>,
    pub(crate) timeout: Option<Spanned<ConfigDuration>>,
    pub(crate) retry: Option<Spanned<RawRetry>>,
    pub(crate) metadata: Option<RawMetadata>,
    pub(crate) runs: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetadata {
    pub(crate) infrastructure: Option<RawInfrastructure>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInfrastructure {
    pub(crate) queue: Option<RawQueueMetadata>,
}

/// iii's retry and DLQ keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueueMetadata {
    pub(crate) max_retries: Option<Spanned<u32>>,
    pub(crate) retry_delay_ms: Option<Spanned<u64>>,
    pub(crate) dead_letter_topic: Option<TopicName>,
}

/// topiq's `retry:` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub(crate) backoff: BackoffKind,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) delay: Option<ConfigDuration>,
    pub(crate) initial: Option<ConfigDuration>,
    pub(crate) factor: Option<f64>,
    pub(crate) max: Option<ConfigDuration>,
    pub(crate) delays: Option<Vec<ConfigDuration>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BackoffKind {
    Fixed,
    Exponential,
    Custom,
}
