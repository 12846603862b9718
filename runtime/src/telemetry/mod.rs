//! Tracing across the broker: the publish span `enqueue` runs in, whose W3C `traceparent` and
//! `baggage` travel with the message, and the process span each handler call runs in, whose
//! parent is the publisher's span. Spans follow OpenTelemetry's messaging conventions; they
//! reach OpenTelemetry through `tracing-opentelemetry` when the application (or `topiq run`
//! with `telemetry:` on) installs its layer, and cost a disabled span otherwise.

use std::collections::HashMap;

mod in_span;
mod traceparent;

pub(crate) use in_span::in_span;

use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::BaggagePropagator;
use topiq_adapter::{Envelope, PublishReceipt, TopicName, TraceContext, TriggerName};

use crate::outcome::Outcome;

use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The OpenTelemetry context a message's `traceparent` and `baggage` carry, on top of the
/// current one as OpenTelemetry's propagators extract (empty when the message carries
/// neither). The `traceparent` is read directly; baggage, rarer, through the propagator.
pub(crate) fn extract(traceparent: Option<&str>, baggage: Option<&str>) -> Context {
    if traceparent.is_none() && baggage.is_none() {
        return Context::new();
    }
    let current = Context::current();
    let cx = match traceparent.and_then(traceparent::parse) {
        Some(parent) => current.with_remote_span_context(parent),
        None => current,
    };
    match baggage {
        Some(baggage) => {
            let carrier = HashMap::from([("baggage".to_owned(), baggage.to_owned())]);
            BaggagePropagator::new().extract_with_context(&cx, &carrier)
        }
        None => cx,
    }
}

/// `traceparent` and `baggage` of `cx` (each `None` when it has none).
fn inject(cx: &Context) -> TraceContext {
    let span = cx.span();
    let context = span.span_context();
    let baggage = (!cx.baggage().is_empty())
        .then(|| {
            let mut carrier: HashMap<String, String> = HashMap::new();
            BaggagePropagator::new().inject_context(cx, &mut carrier);
            carrier.remove("baggage")
        })
        .flatten()
        .filter(|baggage| !baggage.is_empty());
    TraceContext {
        traceparent: context.is_valid().then(|| traceparent::format(context)),
        baggage,
    }
}

/// The W3C `traceparent` of `span`, when it is recorded.
pub(crate) fn traceparent_of(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    inject(&cx).traceparent
}

/// `<operation> <topic>`, the span name OpenTelemetry's messaging conventions give (built
/// without the formatting machinery: two spans a message).
fn span_name(operation: &str, topic: &TopicName) -> String {
    let mut name = String::with_capacity(operation.len() + 1 + topic.as_str().len());
    name.push_str(operation);
    name.push(' ');
    name.push_str(topic.as_str());
    name
}

/// The span an enqueue runs in (`publish <topic>`, kind producer).
pub(crate) fn publish_span(system: &'static str, topic: &TopicName, count: usize) -> Span {
    tracing::info_span!(
        target: "topiq::messaging",
        "publish",
        otel.name = span_name("publish", topic),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = topic.as_str(),
        messaging.batch.message_count = (count > 1).then_some(count as i64),
        messaging.message.id = Empty,
    )
}

/// The trace context a message published in `span` carries: the span's own (so the handler's
/// span is its child), with the caller's `given` context as the span's parent when there is
/// one. Without an OpenTelemetry layer the span has no context, and `given` passes through.
pub(crate) fn publish_context(span: &Span, given: TraceContext) -> TraceContext {
    if span.is_disabled() {
        return given;
    }
    if given.traceparent.is_some() {
        // Only a context with a span may become the parent: baggage alone would cut the
        // publish span off the caller's current span. Given baggage travels as given.
        let parent = extract(given.traceparent.as_deref(), given.baggage.as_deref());
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return given;
    }
    let injected = inject(&cx);
    TraceContext {
        traceparent: injected.traceparent.or(given.traceparent),
        baggage: given.baggage.or(injected.baggage),
    }
}

/// The span a handler call runs in (`process <topic>`, kind consumer), child of the
/// publisher's span when the message carries one, a new trace otherwise.
pub(crate) fn process_span(
    system: &'static str,
    envelope: &Envelope,
    trigger: &TriggerName,
) -> Span {
    let span = tracing::info_span!(
        target: "topiq::messaging",
        "process",
        otel.name = span_name("process", &envelope.topic),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = envelope.topic.as_str(),
        messaging.consumer.group.name = trigger.as_str(),
        messaging.message.id = envelope.id.as_str(),
        topiq.attempt = i64::from(envelope.attempt),
        topiq.max_attempts = i64::from(envelope.max_attempts),
        topiq.outcome = Empty,
    );
    if !span.is_disabled() && (envelope.traceparent.is_some() || envelope.baggage.is_some()) {
        let _ = span.set_parent(extract(
            envelope.traceparent.as_deref(),
            envelope.baggage.as_deref(),
        ));
    }
    span
}

/// The span a batch call runs in: a new trace, linked to each message's publisher span
/// (a batch has many parents, OpenTelemetry's conventions link them).
pub(crate) fn batch_process_span(
    system: &'static str,
    topic: &TopicName,
    trigger: &TriggerName,
    envelopes: &[&Envelope],
) -> Span {
    let span = tracing::info_span!(
        target: "topiq::messaging",
        "process",
        otel.name = span_name("process", topic),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = topic.as_str(),
        messaging.consumer.group.name = trigger.as_str(),
        messaging.batch.message_count = envelopes.len() as i64,
        topiq.outcome = Empty,
    );
    for envelope in envelopes {
        if let Some(link) = envelope.traceparent.as_deref().and_then(traceparent::parse) {
            span.add_link(link);
        }
    }
    span
}

/// The layer that turns `tracing` spans into OpenTelemetry spans, as `topiq run` installs it:
/// without per-span busy/idle timing, thread and code-location attributes, which cost more
/// than the messaging attributes themselves, and without making an entered span
/// OpenTelemetry's current context (`opentelemetry::Context::current()`), which costs a
/// context attached and restored on every poll of a handler (see docs/benchmarks.md). A
/// span's context is read with `tracing_opentelemetry::OpenTelemetrySpanExt::context`, and
/// spans opened inside a handler's span are its children either way.
pub fn span_layer<S>(
    tracer: opentelemetry_sdk::trace::SdkTracer,
) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_context_activation(false)
}

/// A publish's result, recorded on its span: the message id it got, or an error status.
pub(crate) fn record_published(
    span: &Span,
    published: topiq_adapter::Result<PublishReceipt>,
) -> topiq_adapter::Result<PublishReceipt> {
    match &published {
        Ok(receipt) => span.record("messaging.message.id", receipt.message_id.as_str()),
        Err(_) => span.record("otel.status_code", "ERROR"),
    };
    published
}

/// What became of a processed message or batch, recorded on its span; failures mark the
/// span as an error.
pub(crate) fn record_outcome(span: &Span, outcome: Outcome) {
    span.record("topiq.outcome", outcome.as_str());
    if outcome.is_error() {
        span.record("otel.status_code", "ERROR");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_trace_context_survives_extract_and_inject() {
        let given = TraceContext {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            baggage: Some("tenant=acme".into()),
        };
        let again = inject(&extract(
            given.traceparent.as_deref(),
            given.baggage.as_deref(),
        ));
        assert_eq!(again.traceparent, given.traceparent);
        assert_eq!(again.baggage, given.baggage);
        assert_eq!(inject(&extract(None, None)).traceparent, None);
    }

    #[test]
    fn without_an_opentelemetry_layer_the_given_context_passes_through() {
        let given = TraceContext {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            baggage: None,
        };
        let span = publish_span("topiq", &TopicName::new("a.b").unwrap(), 1);
        let carried = publish_context(&span, given.clone());
        assert_eq!(carried.traceparent, given.traceparent);
    }
}
