//! The OpenTelemetry spans topiq records itself under [`span_layer`](super::span_layer):
//! built from the message's own fields (static keys and values, topic and trigger names
//! shared, not copied), with no `tracing` fields to visit, format or copy on the way.

use opentelemetry::trace::{Link, SpanKind, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;
use topiq_adapter::{Envelope, TopicName, TriggerName};

use super::span_name;

/// The attributes the span of a publish or process starts with, and how many more it may
/// get (its message id, its outcome) without growing.
const ROOM_FOR_LATER: usize = 2;

/// Starts the publish span of `count` messages to `topic`, child of `parent`; returns its
/// context (`parent`'s baggage kept).
pub(super) fn publish(
    tracer: &SdkTracer,
    system: &'static str,
    topic: &TopicName,
    count: usize,
    parent: &Context,
) -> Context {
    let mut attributes = Vec::with_capacity(5 + ROOM_FOR_LATER);
    attributes.extend([
        KeyValue::new("messaging.system", system),
        KeyValue::new("messaging.operation.type", "send"),
        KeyValue::new("messaging.operation.name", "publish"),
        KeyValue::new("messaging.destination.name", topic.shared()),
    ]);
    if count > 1 {
        attributes.push(KeyValue::new("messaging.batch.message_count", count as i64));
    }
    let name = span_name("publish", topic);
    start(
        tracer,
        name,
        SpanKind::Producer,
        attributes,
        Vec::new(),
        parent,
    )
}

/// Starts the process span of one delivery on `trigger`, child of `parent` (the publisher's
/// context the message carries, or none).
pub(super) fn process(
    tracer: &SdkTracer,
    system: &'static str,
    envelope: &Envelope,
    trigger: &TriggerName,
    parent: &Context,
) -> Context {
    let mut attributes = Vec::with_capacity(8 + ROOM_FOR_LATER);
    attributes.extend([
        KeyValue::new("messaging.system", system),
        KeyValue::new("messaging.operation.type", "process"),
        KeyValue::new("messaging.operation.name", "process"),
        KeyValue::new("messaging.destination.name", envelope.topic.shared()),
        KeyValue::new("messaging.consumer.group.name", trigger.shared()),
        KeyValue::new("messaging.message.id", envelope.id.as_str().to_owned()),
        KeyValue::new("topiq.attempt", i64::from(envelope.attempt)),
        KeyValue::new("topiq.max_attempts", i64::from(envelope.max_attempts)),
    ]);
    let name = span_name("process", &envelope.topic);
    start(
        tracer,
        name,
        SpanKind::Consumer,
        attributes,
        Vec::new(),
        parent,
    )
}

/// Starts the process span of a batch on `trigger`: a new trace, linked to `links` (each
/// message's publisher span).
pub(super) fn batch_process(
    tracer: &SdkTracer,
    system: &'static str,
    topic: &TopicName,
    trigger: &TriggerName,
    count: usize,
    links: Vec<Link>,
) -> Context {
    let attributes = vec![
        KeyValue::new("messaging.system", system),
        KeyValue::new("messaging.operation.type", "process"),
        KeyValue::new("messaging.operation.name", "process"),
        KeyValue::new("messaging.destination.name", topic.shared()),
        KeyValue::new("messaging.consumer.group.name", trigger.shared()),
        KeyValue::new("messaging.batch.message_count", count as i64),
    ];
    let name = span_name("process", topic);
    let root = Context::new();
    start(tracer, name, SpanKind::Consumer, attributes, links, &root)
}

/// Starts a span (sampled or not, as the tracer's sampler decides) and returns `parent`
/// with it as the active span.
fn start(
    tracer: &SdkTracer,
    name: String,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    links: Vec<Link>,
    parent: &Context,
) -> Context {
    let mut builder = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes);
    if !links.is_empty() {
        builder = builder.with_links(links);
    }
    let span = builder.start_with_context(tracer, parent);
    parent.with_span(span)
}
