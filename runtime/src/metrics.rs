//! Metrics per topic and trigger, served as Prometheus (OpenMetrics) text on `GET /metrics`:
//! counters of what happened to messages, histograms of handler time and of end-to-end
//! latency (enqueue → handled), and gauges read from the broker at each scrape.

use std::time::Duration;

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
    handler_duration: HistogramFamily,
    end_to_end: HistogramFamily,
    in_flight: Family<TriggerLabels, Gauge>,
    waiting: Family<TriggerLabels, Gauge>,
    dlq: Family<TriggerLabels, Gauge>,
}

/// One trigger's series, resolved once so recording costs an atomic add.
#[derive(Clone)]
pub(crate) struct TriggerMetrics {
    pub(crate) delivered: Counter,
    pub(crate) succeeded: Counter,
    pub(crate) retried: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) filtered: Counter,
    pub(crate) handler_duration: Histogram,
    pub(crate) end_to_end: Histogram,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("topiq");
        let metrics = Self {
            published: Family::default(),
            publish_errors: Family::default(),
            delivered: Family::default(),
            succeeded: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            filtered: Family::default(),
            handler_duration: Family::new_with_constructor(seconds_histogram),
            end_to_end: Family::new_with_constructor(seconds_histogram),
            in_flight: Family::default(),
            waiting: Family::default(),
            dlq: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_published",
            "Messages the broker accepted from enqueue",
            metrics.published.clone(),
        );
        registry.register(
            "publish_errors",
            "Enqueues that failed",
            metrics.publish_errors.clone(),
        );
        registry.register(
            "messages_delivered",
            "Deliveries a trigger took (every attempt)",
            metrics.delivered.clone(),
        );
        registry.register(
            "messages_succeeded",
            "Handler calls that succeeded",
            metrics.succeeded.clone(),
        );
        registry.register(
            "messages_retried",
            "Failed handler calls that were retried",
            metrics.retried.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages moved to the trigger's DLQ",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "messages_filtered",
            "Messages acknowledged without a call because the condition was false",
            metrics.filtered.clone(),
        );
        registry.register_with_unit(
            "handler_duration",
            "Time of each handler call",
            Unit::Seconds,
            metrics.handler_duration.clone(),
        );
        registry.register_with_unit(
            "end_to_end_latency",
            "Time from enqueue to a successful handler call",
            Unit::Seconds,
            metrics.end_to_end.clone(),
        );
        registry.register(
            "messages_in_flight",
            "Messages delivered and not settled, from the broker",
            metrics.in_flight.clone(),
        );
        registry.register(
            "messages_waiting",
            "Messages waiting for the trigger (delayed ones included), from the broker",
            metrics.waiting.clone(),
        );
        registry.register(
            "dlq_depth",
            "Records in the trigger's DLQ, from the broker",
            metrics.dlq.clone(),
        );
        Self {
            registry,
            ..metrics
        }
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
            handler_duration: self.handler_duration.get_or_create(&labels).clone(),
            end_to_end: self.end_to_end.get_or_create(&labels).clone(),
        }
    }

    /// Counts an enqueue of `count` messages to `topic`, accepted or failed.
    pub(crate) fn published(&self, topic: &TopicName, count: u64, ok: bool) {
        let labels = TopicLabels {
            topic: topic.to_string(),
        };
        let family = if ok {
            &self.published
        } else {
            &self.publish_errors
        };
        family.get_or_create(&labels).inc_by(count);
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
    }

    /// Every series as OpenMetrics text.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// `duration` in seconds, for a histogram.
pub(crate) fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}
