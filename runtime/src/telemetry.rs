//! Tracing across the broker: the publish span `enqueue` runs in, whose W3C `traceparent` and
//! `baggage` travel with the message, and the process span each handler call runs in, whose
//! parent is the publisher's span. Spans follow OpenTelemetry's messaging conventions; they
//! reach OpenTelemetry through `tracing-opentelemetry` when the application (or `topiq run`
//! with `telemetry:` on) installs its layer, and cost a disabled span otherwise.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use topiq_adapter::{Envelope, TopicName, TraceContext, TriggerName};

use crate::outcome::Outcome;

use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The OpenTelemetry context `trace` carries (empty when it carries none).
pub(crate) fn extract(trace: &TraceContext) -> Context {
    let mut carrier = HashMap::new();
    if let Some(traceparent) = &trace.traceparent {
        carrier.insert("traceparent".to_owned(), traceparent.clone());
    }
    if let Some(baggage) = &trace.baggage {
        carrier.insert("baggage".to_owned(), baggage.clone());
    }
    if carrier.is_empty() {
        return Context::new();
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    BaggagePropagator::new().extract_with_context(&cx, &carrier)
}

/// `traceparent` and `baggage` of `cx` (each `None` when it has none).
fn inject(cx: &Context) -> TraceContext {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    BaggagePropagator::new().inject_context(cx, &mut carrier);
    TraceContext {
        traceparent: carrier.remove("traceparent"),
        baggage: carrier
            .remove("baggage")
            .filter(|baggage| !baggage.is_empty()),
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

/// The span an enqueue runs in (`publish <topic>`, kind producer).
pub(crate) fn publish_span(system: &'static str, topic: &TopicName, count: usize) -> Span {
    tracing::info_span!(
        target: "topiq::messaging",
        "publish",
        otel.name = format!("publish {topic}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = %topic,
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
        let parent = extract(&given);
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
        otel.name = format!("process {}", envelope.topic),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %envelope.topic,
        messaging.consumer.group.name = %trigger,
        messaging.message.id = %envelope.id,
        topiq.attempt = i64::from(envelope.attempt),
        topiq.max_attempts = i64::from(envelope.max_attempts),
        topiq.outcome = Empty,
    );
    if !span.is_disabled() && (envelope.traceparent.is_some() || envelope.baggage.is_some()) {
        let _ = span.set_parent(extract(&TraceContext {
            traceparent: envelope.traceparent.clone(),
            baggage: envelope.baggage.clone(),
        }));
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
        otel.name = format!("process {topic}"),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %topic,
        messaging.consumer.group.name = %trigger,
        messaging.batch.message_count = envelopes.len() as i64,
        topiq.outcome = Empty,
    );
    for envelope in envelopes {
        let cx = extract(&TraceContext {
            traceparent: envelope.traceparent.clone(),
            baggage: None,
        });
        let link = cx.span().span_context().clone();
        if link.is_valid() {
            span.add_link(link);
        }
    }
    span
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
        let again = inject(&extract(&given));
        assert_eq!(again.traceparent, given.traceparent);
        assert_eq!(again.baggage, given.baggage);
        assert_eq!(inject(&extract(&TraceContext::default())).traceparent, None);
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
