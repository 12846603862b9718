//! Installing logs and trace export for a process (what `topiq run` does with `telemetry:`).

use std::collections::HashMap;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer as _};

use topiq::span_layer;

use topiq::config::{LogFormat, OtlpProtocol, OtlpSettings, TelemetrySettings};

/// Why telemetry could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The OTLP exporter could not be built. The exporter's own error is left out on
    /// purpose: it can echo the whole endpoint, credentials included.
    #[error("cannot set up the OTLP exporter (telemetry.otlp): {0}")]
    Exporter(String),
    /// A global subscriber was installed already.
    #[error("a tracing subscriber is installed already: {0}")]
    Subscriber(#[source] tracing_subscriber::util::TryInitError),
}

/// The installed telemetry: flush and stop it with [`shutdown`](Self::shutdown) before the
/// process exits, so the last spans are exported.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Installs the global `tracing` subscriber: logs (text or JSON, filtered by `RUST_LOG`,
    /// default `default_filter`) and, when `settings.otlp` is set, spans and metrics exported
    /// over OTLP (the metrics through the global meter provider it sets).
    /// Call it outside an async runtime (the exporter runs a thread of its own).
    pub fn install(
        settings: &TelemetrySettings,
        default_filter: &str,
    ) -> Result<Self, TelemetryError> {
        let logs = match settings.log_format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .boxed(),
        };
        let (tracer_provider, meter_provider) = match &settings.otlp {
            None => (None, None),
            Some(otlp) => {
                crate::install_tls_provider();
                let resource = Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .build();
                (
                    Some(tracer_provider(otlp, resource.clone())?),
                    Some(meter_provider(otlp, resource)?),
                )
            }
        };
        // Spans reach OpenTelemetry only from the messaging target and the application's
        // own spans at info and above, whatever RUST_LOG says about logs.
        let traces = tracer_provider.as_ref().map(|provider| {
            span_layer(provider.tracer("topiq"))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
        });
        tracing_subscriber::registry()
            .with(logs.with_filter(log_filter(default_filter)))
            .with(traces)
            .try_init()
            .map_err(TelemetryError::Subscriber)?;
        // Only once the subscriber is in: a failed install changes nothing global. The queue
        // module takes its instruments from this provider.
        if let Some(provider) = &meter_provider {
            opentelemetry::global::set_meter_provider(provider.clone());
        }
        Ok(Self {
            tracer_provider,
            meter_provider,
        })
    }

    /// Exports what is buffered (spans, and metrics a last time) and stops the exporters.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("topiq: exporting the last spans failed: {err}");
        }
        if let Some(provider) = self.meter_provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("topiq: exporting the last metrics failed: {err}");
        }
    }
}

/// What the logs show: `RUST_LOG`, or `default_filter`. The messaging spans are for traces;
/// log lines do not repeat them unless `RUST_LOG` asks for `topiq::messaging`.
fn log_filter(default_filter: &str) -> EnvFilter {
    let directives = match std::env::var("RUST_LOG") {
        Ok(given) if given.contains("topiq::messaging") => given,
        Ok(given) if !given.trim().is_empty() => format!("{given},topiq::messaging=off"),
        _ => format!("{default_filter},topiq::messaging=off,opentelemetry=warn"),
    };
    EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_filter},topiq::messaging=off")))
}

/// Spans exported over OTLP in batches, sampled by `otlp.sampling_ratio` (a child follows
/// its parent's decision).
fn tracer_provider(
    otlp: &OtlpSettings,
    resource: Resource,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol(otlp.protocol))
        .with_endpoint(otlp.traces_url())
        .with_headers(headers(otlp))
        .with_timeout(otlp.timeout)
        .build()
        .map_err(|_| exporter_error("traces", otlp))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            otlp.sampling_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// Metrics exported over OTLP every `otlp.metrics_interval`.
fn meter_provider(
    otlp: &OtlpSettings,
    resource: Resource,
) -> Result<SdkMeterProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(protocol(otlp.protocol))
        .with_endpoint(otlp.metrics_url())
        .with_headers(headers(otlp))
        .with_timeout(otlp.timeout)
        .build()
        .map_err(|_| exporter_error("metrics", otlp))?;
    Ok(SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(exporter)
                .with_interval(otlp.metrics_interval)
                .build(),
        )
        .with_resource(resource)
        .build())
}

/// The exporter's own error can echo the whole endpoint (credentials included): this one
/// names the endpoint without them.
fn exporter_error(signal: &str, otlp: &OtlpSettings) -> TelemetryError {
    TelemetryError::Exporter(format!(
        "the {signal} exporter for {} cannot be built; check telemetry.otlp.endpoint and headers",
        topiq::config::redacted_url(&otlp.endpoint)
    ))
}

/// The configured export headers, secrets revealed for the exporter only.
fn headers(otlp: &OtlpSettings) -> HashMap<String, String> {
    otlp.headers
        .iter()
        .map(|(name, value)| (name.clone(), value.expose().to_owned()))
        .collect()
}

fn protocol(protocol: OtlpProtocol) -> Protocol {
    match protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    }
}
