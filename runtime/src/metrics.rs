//! Metrics per topic and trigger, served as Prometheus (OpenMetrics) text on `GET /metrics`:
//! counters of what happened to messages, histograms of handler time and of end-to-end
//! latency (enqueue → handled), and gauges read from the broker at each scrape. With
//! `telemetry.otlp` set, the same measurements also go to OpenTelemetry instruments
//! (`topiq.messages.succeeded`, ...), which the OTLP exporter sends.

use std::sync::Arc;

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    Counter as OtelCounter, Gauge as OtelGauge, Histogram as OtelHistogram,
};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use topiq_adapter::{SubscriptionKey, TopicName};

/// Labels of a topic's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

/// Labels of a trigger's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    topic: String,
    trigger: String,
}

impl TriggerLabels {
    fn of(key: &SubscriptionKey) -> Self {
        Self {
            topic: key.topic.to_string(),
            trigger: key.trigger.to_string(),
        }
    }
}

type HistogramFamily = Family<TriggerLabels, Histogram, fn() -> Histogram>;

/// Seconds from 0.5 ms doubling to about 4.4 min.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 20))
}

/// Every series of one module.
pub(crate) struct Metrics {
    registry: Registry,
    published: Family<TopicLabels, Counter>,
    publish_errors: Family<TopicLabels, Counter>,
    delivered: Family<TriggerLabels, Counter>,
    succeeded: Family<TriggerLabels, Counter>,
    retried: Family<TriggerLabels, Counter>,
    dead_lettered: Family<TriggerLabels, Counter>,
    filtered: Family<TriggerLabels, Counter>,
    cancelled: Family<TriggerLabels, Counter>,
    handler_duration: HistogramFamily,
    end_to_end: HistogramFamily,
    in_flight: Family<TriggerLabels, Gauge>,
    waiting: Family<TriggerLabels, Gauge>,
    dlq: Family<TriggerLabels, Gauge>,
    paused: Family<TriggerLabels, Gauge>,
    broker_up: Gauge,
    otel: Option<Arc<OtelInstruments>>,
    /// Each declared topic's publish series, resolved once (Fx: topic names come from the
    /// config, and a lookup is on every publish).
    topics: rustc_hash::FxHashMap<TopicName, TopicSeries>,
}

/// One topic's publish series.
struct TopicSeries {
    published: Counter,
    errors: Counter,
    otel_labels: Arc<[KeyValue]>,
}

/// The OpenTelemetry instruments, when metrics are exported over OTLP.
struct OtelInstruments {
    published: OtelCounter<u64>,
    publish_errors: OtelCounter<u64>,
    delivered: OtelCounter<u64>,
    succeeded: OtelCounter<u64>,
    retried: OtelCounter<u64>,
    dead_lettered: OtelCounter<u64>,
    filtered: OtelCounter<u64>,
    cancelled: OtelCounter<u64>,
    handler_duration: OtelHistogram<f64>,
    end_to_end: OtelHistogram<f64>,
    in_flight: OtelGauge<u64>,
    waiting: OtelGauge<u64>,
    dlq: OtelGauge<u64>,
    paused: OtelGauge<u64>,
}

impl OtelInstruments {
    fn new() -> Self {
        let meter = opentelemetry::global::meter("topiq");
        let counter = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_description(description)
                .with_unit("{message}")
                .build()
        };
        let histogram = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_description(description)
                .with_unit("s")
                .build()
        };
        let gauge = |name: &'static str, description: &'static str| {
            meter
                .u64_gauge(name)
                .with_description(description)
                .with_unit("{message}")
                .build()
        };
        Self {
            published: counter("topiq.messages.published", "Messages the broker accepted"),
            publish_errors: counter("topiq.publish.errors", "Enqueues that failed"),
            delivered: counter("topiq.messages.delivered", "Deliveries a trigger took"),
            succeeded: counter("topiq.messages.succeeded", "Handler calls that succeeded"),
            retried: counter("topiq.messages.retried", "Failed calls that were retried"),
            dead_lettered: counter("topiq.messages.dead_lettered", "Messages moved to the DLQ"),
            filtered: counter("topiq.messages.filtered", "Messages the condition skipped"),
            cancelled: counter("topiq.messages.cancelled", "Deliveries of cancelled runs"),
            handler_duration: histogram("topiq.handler.duration", "Time of each handler call"),
            end_to_end: histogram(
                "topiq.end_to_end.latency",
                "Time from enqueue to a successful handler call",
            ),
            in_flight: gauge("topiq.messages.in_flight", "Delivered and not settled"),
            waiting: gauge("topiq.messages.waiting", "Waiting for the trigger"),
            dlq: gauge("topiq.dlq.depth", "Records in the trigger's DLQ"),
            paused: meter
                .u64_gauge("topiq.trigger.paused")
                .with_description("1 while the trigger is paused")
                .build(),
        }
    }
}

/// One trigger's series, resolved once so recording costs an atomic add (and, with OTLP on,
/// one OpenTelemetry measurement).
#[derive(Clone)]
pub(crate) struct TriggerMetrics {
    delivered: Counter,
    succeeded: Counter,
    retried: Counter,
    dead_lettered: Counter,
    filtered: Counter,
    cancelled: Counter,
    handler_duration: Histogram,
    end_to_end: Histogram,
    otel: Option<(Arc<OtelInstruments>, Arc<[KeyValue]>)>,
}

impl TriggerMetrics {
    pub(crate) fn delivered(&self) {
        self.delivered.inc();
        if let Some((otel, labels)) = &self.otel {
            otel.delivered.add(1, labels);
        }
    }

    pub(crate) fn succeeded(&self) {
        self.succeeded.inc();
        if let Some((otel, labels)) = &self.otel {
            otel.succeeded.add(1, labels);
        }
    }

    pub(crate) fn retried(&self) {
        self.retried.inc();
        if let Some((otel, labels)) = &self.otel {
            otel.retried.add(1, labels);
        }
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.inc();
        if let Some((otel, labels)) = &self.otel {
            otel.dead_lettered.add(1, labels);
        }
    }

    pub(crate) fn filtered(&self) {
        self.filtered.inc();
        if let Some((otel, labels)) = &self.otel {
            otel.filtered.add(1, labels);
        }
    }

    pub(crate) fn cancelled(&self) {
        self.cancelled.inc();
        if let Some((otel, labels)) = &self.otel {
            otel.cancelled.add(1, labels);
        }
    }

    pub(crate) fn succeeded_so_far(&self) -> u64 {
        self.succeeded.get()
    }

    pub(crate) fn retried_so_far(&self) -> u64 {
        self.retried.get()
    }

    pub(crate) fn dead_lettered_so_far(&self) -> u64 {
        self.dead_lettered.get()
    }

    pub(crate) fn filtered_so_far(&self) -> u64 {
        self.filtered.get()
    }

    pub(crate) fn handler_time(&self, time: Duration) {
        self.handler_duration.observe(seconds(time));
        if let Some((otel, labels)) = &self.otel {
            otel.handler_duration.record(seconds(time), labels);
        }
    }

    pub(crate) fn end_to_end(&self, latency: Duration) {
        self.end_to_end.observe(seconds(latency));
        if let Some((otel, labels)) = &self.otel {
            otel.end_to_end.record(seconds(latency), labels);
        }
    }
}

impl Metrics {
    /// The series; with `otlp`, also OpenTelemetry instruments from the global meter
    /// provider (which `topiq_server::Telemetry::install` sets).
    pub(crate) fn new(otlp: bool) -> Self {
        let mut registry = Registry::with_prefix("topiq");
        let metrics = Self {
            published: Family::default(),
            publish_errors: Family::default(),
            delivered: Family::default(),
            succeeded: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            filtered: Family::default(),
            cancelled: Family::default(),
            handler_duration: Family::new_with_constructor(seconds_histogram),
            end_to_end: Family::new_with_constructor(seconds_histogram),
            in_flight: Family::default(),
            waiting: Family::default(),
            dlq: Family::default(),
            paused: Family::default(),
            broker_up: Gauge::default(),
            topics: rustc_hash::FxHashMap::default(),
            otel: otlp.then(|| Arc::new(OtelInstruments::new())),
            registry: Registry::default(),
        };
        metrics.register_traffic(&mut registry);
        metrics.register_timings_and_broker(&mut registry);
        Self {
            registry,
            ..metrics
        }
    }

    /// The counters of messages published, delivered and settled.
    fn register_traffic(&self, registry: &mut Registry) {
        registry.register(
            "messages_published",
            "Messages the broker accepted from enqueue",
            self.published.clone(),
        );
        registry.register(
            "publish_errors",
            "Enqueues that failed",
            self.publish_errors.clone(),
        );
        registry.register(
            "messages_delivered",
            "Deliveries a trigger took (every attempt)",
            self.delivered.clone(),
        );
        registry.register(
            "messages_succeeded",
            "Handler calls that succeeded",
            self.succeeded.clone(),
        );
        registry.register(
            "messages_retried",
            "Failed handler calls that were retried",
            self.retried.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages moved to the trigger's DLQ",
            self.dead_lettered.clone(),
        );
        registry.register(
            "messages_filtered",
            "Messages acknowledged without a call because the condition was false",
            self.filtered.clone(),
        );
        registry.register(
            "messages_cancelled",
            "Deliveries of cancelled runs, acknowledged without a call or with their call stopped",
            self.cancelled.clone(),
        );
    }

    /// The handler and end-to-end histograms, and the broker's gauges.
    fn register_timings_and_broker(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "handler_duration",
            "Time of each handler call",
            Unit::Seconds,
            self.handler_duration.clone(),
        );
        registry.register_with_unit(
            "end_to_end_latency",
            "Time from enqueue to a successful handler call",
            Unit::Seconds,
            self.end_to_end.clone(),
        );
        registry.register(
            "messages_in_flight",
            "Messages delivered and not settled, from the broker",
            self.in_flight.clone(),
        );
        registry.register(
            "messages_waiting",
            "Messages waiting for the trigger (delayed ones included), from the broker",
            self.waiting.clone(),
        );
        registry.register(
            "dlq_depth",
            "Records in the trigger's DLQ, from the broker",
            self.dlq.clone(),
        );
        registry.register(
            "trigger_paused",
            "1 while the trigger is paused (on every instance sharing the runs store)",
            self.paused.clone(),
        );
        registry.register(
            "broker_up",
            "1 when the broker answered the last read of its counts, 0 when it did not",
            self.broker_up.clone(),
        );
    }

    /// The runs recorder's series.
    pub(crate) fn register_runs(&mut self, series: &crate::runs::RecorderSeries) {
        series.store_up.set(1);
        let registry = &mut self.registry;
        registry.register(
            "runs_store_up",
            "1 while the runs store takes writes, 0 while it refuses them (settlements wait)",
            series.store_up.clone(),
        );
        registry.register(
            "runs_writes",
            "Batches of run events written to the runs store",
            series.writes.clone(),
        );
        registry.register(
            "runs_events_written",
            "Run events written to the runs store",
            series.events.clone(),
        );
        registry.register(
            "runs_events_waiting",
            "Run events waiting to be written",
            series.waiting.clone(),
        );
    }

    /// Whether the broker answered the last read of its counts.
    pub(crate) fn set_broker_up(&self, up: bool) {
        self.broker_up.set(i64::from(up));
    }

    /// The series of the trigger `key`.
    pub(crate) fn trigger(&self, key: &SubscriptionKey) -> TriggerMetrics {
        let labels = TriggerLabels::of(key);
        TriggerMetrics {
            delivered: self.delivered.get_or_create(&labels).clone(),
            succeeded: self.succeeded.get_or_create(&labels).clone(),
            retried: self.retried.get_or_create(&labels).clone(),
            dead_lettered: self.dead_lettered.get_or_create(&labels).clone(),
            filtered: self.filtered.get_or_create(&labels).clone(),
            cancelled: self.cancelled.get_or_create(&labels).clone(),
            handler_duration: self.handler_duration.get_or_create(&labels).clone(),
            end_to_end: self.end_to_end.get_or_create(&labels).clone(),
            otel: self
                .otel
                .as_ref()
                .map(|otel| (Arc::clone(otel), otel_labels(key))),
        }
    }

    /// Resolves the publish series of `topics` once, so counting an enqueue to one of them
    /// allocates nothing and takes no lock.
    pub(crate) fn declare_topics<'a>(&mut self, topics: impl IntoIterator<Item = &'a TopicName>) {
        for topic in topics {
            let labels = TopicLabels {
                topic: topic.to_string(),
            };
            let series = TopicSeries {
                published: self.published.get_or_create(&labels).clone(),
                errors: self.publish_errors.get_or_create(&labels).clone(),
                otel_labels: Arc::new([KeyValue::new("topic", topic.to_string())]),
            };
            self.topics.insert(topic.clone(), series);
        }
    }

    /// Counts an enqueue of `count` messages to `topic` (declared), accepted or failed.
    pub(crate) fn published(&self, topic: &TopicName, count: u64, ok: bool) {
        let Some(series) = self.topics.get(topic) else {
            return;
        };
        let counter = if ok {
            &series.published
        } else {
            &series.errors
        };
        counter.inc_by(count);
        if let Some(otel) = &self.otel {
            let counter = if ok {
                &otel.published
            } else {
                &otel.publish_errors
            };
            counter.add(count, &series.otel_labels);
        }
    }

    /// Sets the broker-read gauges of the trigger `key`.
    pub(crate) fn set_broker_counts(
        &self,
        key: &SubscriptionKey,
        waiting: u64,
        in_flight: u64,
        dlq: u64,
    ) {
        let labels = TriggerLabels::of(key);
        let as_gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.waiting.get_or_create(&labels).set(as_gauge(waiting));
        self.in_flight
            .get_or_create(&labels)
            .set(as_gauge(in_flight));
        self.dlq.get_or_create(&labels).set(as_gauge(dlq));
        if let Some(otel) = &self.otel {
            let labels = otel_labels(key);
            otel.waiting.record(waiting, &labels);
            otel.in_flight.record(in_flight, &labels);
            otel.dlq.record(dlq, &labels);
        }
    }

    /// Sets the trigger `key`'s paused gauge.
    pub(crate) fn set_paused(&self, key: &SubscriptionKey, paused: bool) {
        self.paused
            .get_or_create(&TriggerLabels::of(key))
            .set(i64::from(paused));
        if let Some(otel) = &self.otel {
            otel.paused.record(u64::from(paused), &otel_labels(key));
        }
    }

    /// Whether measurements also go to OpenTelemetry (then the broker's counts are read
    /// periodically, not only at a scrape).
    pub(crate) fn exports_otlp(&self) -> bool {
        self.otel.is_some()
    }

    /// Every series as OpenMetrics text.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn otel_labels(key: &SubscriptionKey) -> Arc<[KeyValue]> {
    Arc::new([
        KeyValue::new("topic", key.topic.to_string()),
        KeyValue::new("trigger", key.trigger.to_string()),
    ])
}

/// `duration` in seconds, for a histogram.
pub(crate) fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key() -> SubscriptionKey {
        SubscriptionKey::new(
            TopicName::new("jobs").unwrap(),
            topiq_adapter::TriggerName::new("work").unwrap(),
        )
    }

    #[test]
    fn a_triggers_outcomes_and_the_brokers_counts_are_served_with_their_labels() {
        let mut metrics = Metrics::new(false);
        metrics.declare_topics([&key().topic]);
        let trigger = metrics.trigger(&key());
        trigger.delivered();
        trigger.succeeded();
        trigger.succeeded();
        trigger.dead_lettered();
        trigger.handler_time(Duration::from_millis(3));
        metrics.published(&key().topic, 3, true);
        metrics.set_broker_counts(&key(), 7, 2, 1);
        metrics.set_broker_up(true);
        let text = metrics.encode().unwrap();
        let labels = r#"{topic="jobs",trigger="work"}"#;
        for line in [
            format!("topiq_messages_succeeded_total{labels} 2"),
            format!("topiq_messages_dead_lettered_total{labels} 1"),
            format!("topiq_messages_waiting{labels} 7"),
            format!("topiq_messages_in_flight{labels} 2"),
            format!("topiq_dlq_depth{labels} 1"),
            format!("topiq_handler_duration_seconds_count{labels} 1"),
            r#"topiq_messages_published_total{topic="jobs"} 3"#.to_owned(),
            "topiq_broker_up 1".to_owned(),
        ] {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        assert_eq!(trigger.succeeded_so_far(), 2);
    }
}
