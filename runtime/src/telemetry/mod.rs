//! Tracing across the broker: the publish span `enqueue` runs in, whose W3C `traceparent` and
//! `baggage` travel with the message, and the process span each handler call runs in, whose
//! parent is the publisher's span. Spans follow OpenTelemetry's messaging conventions.
//!
//! Each is a `tracing` span (target `topiq::messaging`) and, under [`span_layer`], an
//! OpenTelemetry span topiq records itself (`recorded.rs`). Without that layer, an
//! application's own `tracing-opentelemetry` layer records the `tracing` span instead; with
//! neither, a span costs a disabled `tracing` span and a look for the layer.

mod context;
mod in_span;
mod layer;
mod names;
mod recorded;
mod traceparent;

pub(crate) use context::current_traceparent;
pub(crate) use in_span::in_span;
pub use layer::span_layer;

use opentelemetry::trace::{Link, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use recorded::Recorded;
use topiq_adapter::{Envelope, PublishReceipt, TopicName, TraceContext, TriggerName};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::outcome::Outcome;

/// A publish or process span: the `tracing` span, and the OpenTelemetry span topiq records
/// itself under [`span_layer`], which ends when this is dropped.
pub(crate) struct MessagingSpan {
    span: Span,
    recorded: Option<Recorded>,
}

/// A [`MessagingSpan`] entered: the `tracing` span entered and a recorded process span
/// OpenTelemetry's current context, until dropped.
pub(crate) struct Entered<'a> {
    // Dropped first: the context is restored before the `tracing` span is left.
    _context: Option<opentelemetry::ContextGuard>,
    _span: tracing::span::Entered<'a>,
}

impl MessagingSpan {
    /// Enters the span (see [`Entered`]).
    pub(crate) fn enter(&self) -> Entered<'_> {
        let span = self.span.enter();
        Entered {
            _context: self.recorded.as_ref().and_then(Recorded::attach),
            _span: span,
        }
    }

    /// Sets `key` to `value` on the recorded span (a copy) and the `tracing` span.
    fn record(&self, key: &'static str, value: &str) {
        self.span.record(key, value);
        if let Some(recorded) = &self.recorded {
            recorded.set_attribute(KeyValue::new(key, value.to_owned()));
        }
    }

    /// Sets `key` to `value` on the recorded span (no copy) and the `tracing` span.
    fn record_static(&self, key: &'static str, value: &'static str) {
        self.span.record(key, value);
        if let Some(recorded) = &self.recorded {
            recorded.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span as failed: `why` is the recorded span's status description.
    fn fail(&self, why: &'static str) {
        self.span.record("otel.status_code", "ERROR");
        if let Some(recorded) = &self.recorded {
            recorded.set_status(Status::error(why));
        }
    }
}

/// The span an enqueue of `count` messages runs in (`publish <topic>`, kind producer). Its
/// parent is the first message's `given` `traceparent` when it has a valid one, the caller's
/// current span otherwise.
pub(crate) fn publish_span(
    system: &'static str,
    topic: &TopicName,
    count: usize,
    given: &TraceContext,
) -> MessagingSpan {
    let span = tracing::info_span!(
        target: layer::MESSAGING_TARGET,
        "publish",
        otel.name = names::publish(topic),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = topic.as_str(),
        messaging.batch.message_count = (count > 1).then_some(count as i64),
        messaging.message.id = Empty,
    );
    let given_parent = given_parent(given);
    if !span.is_disabled()
        && let Some(parent) = &given_parent
    {
        let _ = span.set_parent(parent.clone());
    }
    let recorded = layer::tracer().map(|tracer| {
        let parent = given_parent.unwrap_or_else(context::current);
        recorded::publish(&tracer, system, topic, count, parent)
    });
    MessagingSpan { span, recorded }
}

/// The context `given` names when its `traceparent` is valid: only a context with a span
/// may become a parent, baggage alone would cut the publish span off the caller's span.
fn given_parent(given: &TraceContext) -> Option<Context> {
    let parent = traceparent::parse(given.traceparent.as_deref()?)?;
    Some(context::with_remote_parent(
        Some(parent),
        given.baggage.as_deref(),
    ))
}

/// The trace context a message published in `span` carries: the span's own (so the handler's
/// span is its child), with the caller's `given` baggage, or the parent's. Without an
/// OpenTelemetry layer the span has no context, and `given` passes through.
pub(crate) fn publish_context(span: &MessagingSpan, given: TraceContext) -> TraceContext {
    let injected = match &span.recorded {
        // A span the SDK did not start (its provider shut down): the caller's context goes on.
        Some(recorded) if !recorded.is_valid() => return given,
        Some(recorded) => TraceContext {
            traceparent: Some(recorded.traceparent()),
            baggage: None,
        },
        None if span.span.is_disabled() => return given,
        None => {
            let cx = span.span.context();
            if !cx.span().span_context().is_valid() {
                return given;
            }
            context::inject(&cx)
        }
    };
    let baggage = match (given.baggage, &span.recorded) {
        (Some(given), _) => Some(given),
        (None, Some(recorded)) => recorded.baggage(),
        (None, None) => injected.baggage,
    };
    TraceContext {
        traceparent: injected.traceparent.or(given.traceparent),
        baggage,
    }
}

/// The span a handler call runs in (`process <topic>`, kind consumer), child of the
/// publisher's span when the message carries one, a new trace otherwise.
pub(crate) fn process_span(
    system: &'static str,
    envelope: &Envelope,
    trigger: &TriggerName,
) -> MessagingSpan {
    let span = tracing::info_span!(
        target: layer::MESSAGING_TARGET,
        layer::PROCESS_SPAN,
        otel.name = names::process(&envelope.topic),
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
    let carried = || context::extract(envelope.traceparent.as_deref(), envelope.baggage.as_deref());
    if !span.is_disabled() && (envelope.traceparent.is_some() || envelope.baggage.is_some()) {
        let _ = span.set_parent(carried());
    }
    let recorded = layer::tracer()
        .map(|tracer| recorded::process(&tracer, system, envelope, trigger, &carried()));
    MessagingSpan { span, recorded }
}

/// The span a batch call runs in: a new trace, linked to each message's publisher span
/// (a batch has many parents, OpenTelemetry's conventions link them).
pub(crate) fn batch_process_span(
    system: &'static str,
    topic: &TopicName,
    trigger: &TriggerName,
    envelopes: &[&Envelope],
) -> MessagingSpan {
    let span = tracing::info_span!(
        target: layer::MESSAGING_TARGET,
        layer::PROCESS_SPAN,
        otel.name = names::process(topic),
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
    let links = || {
        envelopes
            .iter()
            .filter_map(|envelope| envelope.traceparent.as_deref().and_then(traceparent::parse))
    };
    if !span.is_disabled() {
        for link in links() {
            span.add_link(link);
        }
    }
    let recorded = layer::tracer().map(|tracer| {
        let links = links().map(Link::with_context).collect();
        recorded::batch_process(&tracer, system, topic, trigger, envelopes.len(), links)
    });
    MessagingSpan { span, recorded }
}

/// A publish's result, recorded on its span: the message id it got, or an error status.
pub(crate) fn record_published(
    span: &MessagingSpan,
    published: topiq_adapter::Result<PublishReceipt>,
) -> topiq_adapter::Result<PublishReceipt> {
    match &published {
        Ok(receipt) => span.record("messaging.message.id", receipt.message_id.as_str()),
        Err(_) => span.fail("publish failed"),
    };
    published
}

/// What became of a processed message or batch, recorded on its span; failures mark the
/// span as an error.
pub(crate) fn record_outcome(span: &MessagingSpan, outcome: Outcome) {
    span.record_static("topiq.outcome", outcome.as_str());
    if outcome.is_error() {
        span.fail(outcome.as_str());
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
        let again = context::inject(&context::extract(
            given.traceparent.as_deref(),
            given.baggage.as_deref(),
        ));
        assert_eq!(again.traceparent, given.traceparent);
        assert_eq!(again.baggage, given.baggage);
        assert_eq!(
            context::inject(&context::extract(None, None)).traceparent,
            None
        );
    }

    #[test]
    fn a_given_traceparent_that_does_not_parse_is_no_parent_even_inside_a_span() {
        // Inside a handler, a process span is OpenTelemetry's current context.
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let handler = Context::new().with_remote_span_context(traceparent::parse(valid).unwrap());
        let _attached = handler.attach();
        let given = TraceContext {
            traceparent: Some("not-a-traceparent".into()),
            baggage: None,
        };
        assert!(given_parent(&given).is_none());
        let given = TraceContext {
            traceparent: Some(valid.into()),
            baggage: None,
        };
        assert!(given_parent(&given).is_some());
    }

    #[test]
    fn without_an_opentelemetry_layer_the_given_context_passes_through() {
        let given = TraceContext {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            baggage: None,
        };
        let span = publish_span("topiq", &TopicName::new("a.b").unwrap(), 1, &given);
        let carried = publish_context(&span, given.clone());
        assert_eq!(carried.traceparent, given.traceparent);
    }
}
