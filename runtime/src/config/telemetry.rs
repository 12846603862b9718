//! The `telemetry:` section: log format, service name, and the OTLP exporter (off unless
//! `otlp:` is given).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_saphyr::Spanned;
use url::Url;

use super::ConfigError;
use super::raw::{RawOtlp, RawTelemetry};
use super::service::{Secret, redacted};
use super::source::spanned_at;

/// How `topiq run` writes its logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per event, for log collectors.
    Json,
}

/// The OTLP wire format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`, the default).
    #[default]
    HttpProtobuf,
    /// OTLP/HTTP with JSON bodies (`http/json`).
    HttpJson,
}

/// Where traces go.
#[derive(Clone)]
pub struct OtlpSettings {
    /// The collector's OTLP/HTTP base URL; `/v1/traces` and `/v1/metrics` are appended.
    pub endpoint: Url,
    /// The wire format.
    pub protocol: OtlpProtocol,
    /// Headers sent with every export (such as an API key).
    pub headers: Vec<(String, Secret)>,
    /// The share of new traces recorded, 0 to 1; a message's trace follows its publisher's
    /// decision.
    pub sampling_ratio: f64,
    /// How long one export may take.
    pub timeout: Duration,
    /// How often metrics are exported.
    pub metrics_interval: Duration,
}

impl OtlpSettings {
    /// The URL traces are posted to: `<endpoint>/v1/traces`.
    pub fn traces_url(&self) -> String {
        self.signal_url("v1/traces")
    }

    /// The URL metrics are posted to: `<endpoint>/v1/metrics`.
    pub fn metrics_url(&self) -> String {
        self.signal_url("v1/metrics")
    }

    fn signal_url(&self, path: &str) -> String {
        let base = self.endpoint.as_str().trim_end_matches('/');
        format!("{base}/{path}")
    }
}

impl fmt::Debug for OtlpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpSettings")
            .field("endpoint", &redacted(&self.endpoint))
            .field("protocol", &self.protocol)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .field("sampling_ratio", &self.sampling_ratio)
            .field("timeout", &self.timeout)
            .field("metrics_interval", &self.metrics_interval)
            .finish()
    }
}

/// The `telemetry:` section.
#[derive(Clone, Debug)]
pub struct TelemetrySettings {
    /// `service.name` of the exported spans (default `topiq`).
    pub service_name: String,
    /// How logs are written.
    pub log_format: LogFormat,
    /// The OTLP exporter; `None`: spans are not exported.
    pub otlp: Option<OtlpSettings>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            service_name: "topiq".into(),
            log_format: LogFormat::Text,
            otlp: None,
        }
    }
}

/// Validates the `telemetry:` section.
pub(crate) fn validate_telemetry(
    file: &str,
    raw: RawTelemetry,
) -> Result<TelemetrySettings, ConfigError> {
    let mut settings = TelemetrySettings::default();
    if let Some(name) = raw.service_name {
        settings.service_name = name;
    }
    if let Some(format) = &raw.log_format {
        settings.log_format = match format.value.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::invalid(
                    spanned_at(file, format),
                    "telemetry.log_format",
                    format!("unknown format {other:?}; write text or json"),
                ));
            }
        };
    }
    if let Some(otlp) = raw.otlp {
        settings.otlp = Some(validate_otlp(file, otlp)?);
    }
    Ok(settings)
}

/// Validates `telemetry.otlp`.
fn validate_otlp(file: &str, otlp: RawOtlp) -> Result<OtlpSettings, ConfigError> {
    let at = spanned_at(file, &otlp.endpoint);
    let endpoint = Url::parse(&otlp.endpoint.value)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some())
        .ok_or_else(|| {
            ConfigError::invalid(
                at,
                "telemetry.otlp.endpoint",
                "must be the collector's OTLP/HTTP URL, such as http://127.0.0.1:4318",
            )
        })?;
    let protocol = protocol(file, &otlp)?;
    let sampling_ratio = match &otlp.sampling_ratio {
        None => 1.0,
        Some(ratio) if (0.0..=1.0).contains(&ratio.value) => ratio.value,
        Some(ratio) => {
            return Err(ConfigError::invalid(
                spanned_at(file, ratio),
                "telemetry.otlp.sampling_ratio",
                format!("must be between 0 and 1, got {}", ratio.value),
            ));
        }
    };
    Ok(OtlpSettings {
        endpoint,
        protocol,
        headers: export_headers(file, otlp.headers)?,
        sampling_ratio,
        timeout: otlp.timeout.map_or(Duration::from_secs(10), |t| t.0),
        metrics_interval: otlp
            .metrics_interval
            .map_or(Duration::from_secs(60), |t| t.0),
    })
}

fn protocol(file: &str, otlp: &RawOtlp) -> Result<OtlpProtocol, ConfigError> {
    match otlp.protocol.as_ref().map(|p| p.value.as_str()) {
        None | Some("http/protobuf") => Ok(OtlpProtocol::HttpProtobuf),
        Some("http/json") => Ok(OtlpProtocol::HttpJson),
        Some(other) => {
            let at = otlp
                .protocol
                .as_ref()
                .map(|p| spanned_at(file, p))
                .unwrap_or_else(|| spanned_at(file, &otlp.endpoint));
            let hint = if other == "grpc" {
                "; topiq exports over OTLP/HTTP only (every collector takes it, on port 4318)"
            } else {
                ""
            };
            Err(ConfigError::invalid(
                at,
                "telemetry.otlp.protocol",
                format!("unknown protocol {other:?}; write http/protobuf or http/json{hint}"),
            ))
        }
    }
}

/// The export headers, each a valid HTTP header; their values are secrets.
fn export_headers(
    file: &str,
    raw: BTreeMap<String, Spanned<String>>,
) -> Result<Vec<(String, Secret)>, ConfigError> {
    let mut headers = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        let key = format!("telemetry.otlp.headers.{name}");
        if http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                spanned_at(file, &value),
                key,
                "is not a valid HTTP header name",
            ));
        }
        if http::header::HeaderValue::from_str(&value.value).is_err() {
            return Err(ConfigError::invalid(
                spanned_at(file, &value),
                key,
                "holds characters an HTTP header cannot (such as a line break)",
            ));
        }
        headers.push((name, Secret::new(value.value)));
    }
    Ok(headers)
}
