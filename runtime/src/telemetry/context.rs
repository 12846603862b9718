//! Trace context in and out of messages: the W3C `traceparent` and `baggage` a message
//! carries, turned into OpenTelemetry's context and back.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::BaggagePropagator;
use topiq_adapter::TraceContext;
use tracing::span::Id;
use tracing::{Dispatch, Span};
use tracing_opentelemetry::get_otel_context;
use tracing_subscriber::Registry;
use tracing_subscriber::registry::LookupSpan;

use super::traceparent;

/// The OpenTelemetry context a message's `traceparent` and `baggage` carry, on top of the
/// current one as OpenTelemetry's propagators extract (empty when the message carries
/// neither). The `traceparent` is read directly; baggage, rarer, through the propagator.
pub(super) fn extract(traceparent: Option<&str>, baggage: Option<&str>) -> Context {
    if traceparent.is_none() && baggage.is_none() {
        return Context::new();
    }
    with_remote_parent(traceparent.and_then(traceparent::parse), baggage)
}

/// The current context with `parent` (a `traceparent` already read) as its remote span, when
/// given, and the W3C `baggage`, when given.
pub(super) fn with_remote_parent(parent: Option<SpanContext>, baggage: Option<&str>) -> Context {
    let current = Context::current();
    let cx = match parent {
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
pub(super) fn inject(cx: &Context) -> TraceContext {
    let span = cx.span();
    let context = span.span_context();
    TraceContext {
        traceparent: context.is_valid().then(|| traceparent::format(context)),
        baggage: baggage_of(cx),
    }
}

/// The W3C `baggage` of `cx`, when it has any.
pub(super) fn baggage_of(cx: &Context) -> Option<String> {
    if cx.baggage().is_empty() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    BaggagePropagator::new().inject_context(cx, &mut carrier);
    carrier
        .remove("baggage")
        .filter(|baggage| !baggage.is_empty())
}

/// The context of the caller's current span: the nearest span, from the current one up,
/// that a `tracing-opentelemetry` layer records, or else OpenTelemetry's current context (a
/// handler's process span under [`span_layer`](super::span_layer)). Empty when neither has
/// a span.
pub(super) fn current() -> Context {
    Span::current()
        .with_subscriber(|(id, dispatch)| nearest_recorded(id, dispatch))
        .flatten()
        .unwrap_or_else(Context::current)
}

/// The context of the nearest span, `id` or one of its parents, that a
/// `tracing-opentelemetry` layer records (a span a filter hides from it is skipped, as that
/// layer skips it when it parents a span).
fn nearest_recorded(id: &Id, dispatch: &Dispatch) -> Option<Context> {
    let registry = dispatch.downcast_ref::<Registry>()?;
    let span = registry.span(id)?;
    span.scope().find_map(|span| recorded(&span.id(), dispatch))
}

/// The context of span `id` when a `tracing-opentelemetry` layer records it.
pub(super) fn recorded(id: &Id, dispatch: &Dispatch) -> Option<Context> {
    get_otel_context(id, dispatch).filter(|cx| cx.span().span_context().is_valid())
}

/// The W3C `traceparent` of the caller's current span, when it is recorded.
pub(crate) fn current_traceparent() -> Option<String> {
    let cx = current();
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| traceparent::format(context))
}
