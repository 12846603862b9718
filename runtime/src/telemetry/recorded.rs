//! The OpenTelemetry spans topiq records itself under [`span_layer`](super::span_layer):
//! built from the message's own fields (static keys and values, topic and trigger names
//! shared, not copied), with no `tracing` fields to visit, format or copy on the way.

use std::cell::RefCell;

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _,
};
use opentelemetry::{Context, ContextGuard, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span as SdkSpan};
use topiq_adapter::{Envelope, TopicName, TriggerName};

use super::{context, names, traceparent};

/// The attributes the span of a publish or process starts with, and how many more it may
/// get (its message id, its outcome) without growing.
const ROOM_FOR_LATER: usize = 2;

/// A span topiq records. It ends when dropped.
pub(super) enum Recorded {
    /// A publish span, held alone (nothing that runs inside it opens spans). Boxed: a
    /// span's data is large, and a message's futures hold this.
    Publish(Box<PublishSpan>),
    /// A process span in its context, OpenTelemetry's current context while the handler's
    /// future is polled.
    Process(Context),
}

/// A publish span and the context it is the child of (whose baggage messages carry when
/// given none).
pub(super) struct PublishSpan {
    /// The span (set while its messages are published, read for their `traceparent`).
    span: RefCell<SdkSpan>,
    /// Its parent's context.
    parent: Context,
}

impl Recorded {
    /// Makes a process span OpenTelemetry's current context until the guard is dropped.
    pub(super) fn attach(&self) -> Option<ContextGuard> {
        match self {
            Recorded::Publish(_) => None,
            Recorded::Process(cx) => Some(cx.clone().attach()),
        }
    }

    /// Sets an attribute.
    pub(super) fn set_attribute(&self, attribute: KeyValue) {
        match self {
            Recorded::Publish(publish) => publish.span.borrow_mut().set_attribute(attribute),
            Recorded::Process(cx) => cx.span().set_attribute(attribute),
        }
    }

    /// Sets the status.
    pub(super) fn set_status(&self, status: Status) {
        match self {
            Recorded::Publish(publish) => publish.span.borrow_mut().set_status(status),
            Recorded::Process(cx) => cx.span().set_status(status),
        }
    }

    /// `read(context)` of the span's context.
    fn with_span_context<T>(&self, read: impl FnOnce(&SpanContext) -> T) -> T {
        match self {
            Recorded::Publish(publish) => read(publish.span.borrow().span_context()),
            Recorded::Process(cx) => read(cx.span().span_context()),
        }
    }

    /// True when the span has a trace and span id (a span of a shut-down provider has not).
    pub(super) fn is_valid(&self) -> bool {
        self.with_span_context(SpanContext::is_valid)
    }

    /// The span's W3C `traceparent`.
    pub(super) fn traceparent(&self) -> String {
        self.with_span_context(traceparent::format)
    }

    /// The W3C `baggage` the span was started with, when any.
    pub(super) fn baggage(&self) -> Option<String> {
        match self {
            Recorded::Publish(publish) => context::baggage_of(&publish.parent),
            Recorded::Process(cx) => context::baggage_of(cx),
        }
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        // A span held alone ends when dropped; one in a context ends now, whoever still
        // holds a copy of the context.
        if let Recorded::Process(cx) = self {
            cx.span().end();
        }
    }
}

/// Starts the publish span of `count` messages to `topic`, child of `parent`.
pub(super) fn publish(
    tracer: &SdkTracer,
    system: &'static str,
    topic: &TopicName,
    count: usize,
    parent: Context,
) -> Recorded {
    let mut attributes = messaging_attributes(system, ("send", "publish"), topic, 1);
    if count > 1 {
        attributes.push(KeyValue::new("messaging.batch.message_count", count as i64));
    }
    let name = names::publish(topic);
    let span = start(tracer, name, SpanKind::Producer, attributes, &parent);
    Recorded::Publish(Box::new(PublishSpan {
        span: RefCell::new(span),
        parent,
    }))
}

/// Starts the process span of one delivery on `trigger`, child of `parent` (the publisher's
/// context the message carries, or none).
pub(super) fn process(
    tracer: &SdkTracer,
    system: &'static str,
    envelope: &Envelope,
    trigger: &TriggerName,
    parent: &Context,
) -> Recorded {
    let operation = ("process", "process");
    let mut attributes = messaging_attributes(system, operation, &envelope.topic, 4);
    attributes.extend([
        KeyValue::new("messaging.consumer.group.name", trigger.shared()),
        KeyValue::new("messaging.message.id", envelope.id.as_str().to_owned()),
        KeyValue::new("topiq.attempt", i64::from(envelope.attempt)),
        KeyValue::new("topiq.max_attempts", i64::from(envelope.max_attempts)),
    ]);
    let name = names::process(&envelope.topic);
    let span = start(tracer, name, SpanKind::Consumer, attributes, parent);
    Recorded::Process(parent.with_span(span))
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
) -> Recorded {
    let mut attributes = messaging_attributes(system, ("process", "process"), topic, 2);
    attributes.extend([
        KeyValue::new("messaging.consumer.group.name", trigger.shared()),
        KeyValue::new("messaging.batch.message_count", count as i64),
    ]);
    let root = Context::new();
    let span = tracer
        .span_builder(names::process(topic))
        .with_kind(SpanKind::Consumer)
        .with_attributes(attributes)
        .with_links(links)
        .start_with_context(tracer, &root);
    Recorded::Process(root.with_span(span))
}

/// The attributes every messaging span starts with: `system`, the operation's type and name,
/// and the topic; with room for `more` of the span's own and [`ROOM_FOR_LATER`].
fn messaging_attributes(
    system: &'static str,
    (operation_type, operation_name): (&'static str, &'static str),
    topic: &TopicName,
    more: usize,
) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(4 + more + ROOM_FOR_LATER);
    attributes.extend([
        KeyValue::new("messaging.system", system),
        KeyValue::new("messaging.operation.type", operation_type),
        KeyValue::new("messaging.operation.name", operation_name),
        KeyValue::new("messaging.destination.name", topic.shared()),
    ]);
    attributes
}

/// Starts a span, child of `parent`, sampled or not as the tracer's sampler decides.
fn start(
    tracer: &SdkTracer,
    name: &'static str,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    parent: &Context,
) -> SdkSpan {
    tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(tracer, parent)
}
