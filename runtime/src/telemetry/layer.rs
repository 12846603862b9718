//! [`span_layer`]: how `topiq run` (and an application that wants the same) turns spans into
//! OpenTelemetry spans. topiq's messaging spans are recorded by topiq itself, with the tracer
//! this layer carries; every other span goes through `tracing-opentelemetry`.

use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::trace::SdkTracer;
use std::sync::OnceLock;
use tracing::field::{Field, Visit};

use tracing::dispatcher::WeakDispatch;
use tracing::span::Id;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` target of the publish and process spans.
pub(crate) const MESSAGING_TARGET: &str = "topiq::messaging";

/// The `tracing` name of a process span (a publish span's is `publish`).
pub(crate) const PROCESS_SPAN: &str = "process";

/// The layer that turns spans into OpenTelemetry spans, as `topiq run` installs it.
///
/// topiq's publish and process spans are recorded by topiq directly with `tracer`: their
/// attributes are set from the message without formatting or copying `tracing` fields, and
/// a handler runs with its process span as OpenTelemetry's current context
/// (`opentelemetry::Context::current()`), so spans it opens are the process span's children
/// and events it logs outside spans of its own are the process span's events. Every other
/// span goes through `tracing-opentelemetry`, without per-span busy/idle timing, thread and
/// code-location attributes, and without attaching its context on each entry (see
/// docs/observability.md).
pub fn span_layer<S>(tracer: SdkTracer) -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let others = tracing_opentelemetry::layer()
        .with_tracer(tracer.clone())
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_context_activation(false);
    ProcessSpanEvents::default()
        .with_filter(EventsOnly)
        .and_then(others.with_filter(MessagingSpans { tracer }))
}

/// The filter that keeps topiq's messaging spans away from `tracing-opentelemetry` and
/// carries the tracer topiq records them with. It is found in the current subscriber by its
/// type, as `tracing-subscriber` lets a per-layer filter be (see [`tracer`]).
pub(crate) struct MessagingSpans {
    tracer: SdkTracer,
}

impl<S> Filter<S> for MessagingSpans {
    fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        metadata.target() != MESSAGING_TARGET
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.target() == MESSAGING_TARGET {
            Interest::never()
        } else {
            Interest::always()
        }
    }
}

/// The tracer of the [`span_layer`] in the current subscriber, or `None` when it has none
/// (the application records topiq's spans through a `tracing-opentelemetry` layer of its
/// own, or not at all). A copy (two reference counts): while the subscriber is looked at,
/// `tracing` calls made in between would see no subscriber.
pub(crate) fn tracer() -> Option<SdkTracer> {
    if !tracing::dispatcher::has_been_set() {
        return None;
    }
    tracing::dispatcher::get_default(|dispatch| {
        dispatch
            .downcast_ref::<MessagingSpans>()
            .map(|spans| spans.tracer.clone())
    })
}

/// A filter that lets events through and no span (so it never makes a span exist).
struct EventsOnly;

impl<S> Filter<S> for EventsOnly {
    fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        metadata.is_event()
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.is_event() {
            Interest::always()
        } else {
            Interest::never()
        }
    }
}

/// Records an event that no span `tracing-opentelemetry` records holds on the span of
/// OpenTelemetry's current context: inside a handler, an event logged outside spans of the
/// handler's own goes to its process span (`tracing-opentelemetry` records events only on
/// the spans it records itself, and no longer sees topiq's).
#[derive(Default)]
struct ProcessSpanEvents {
    /// The subscriber this layer is part of, to look up the spans an event is inside.
    dispatch: OnceLock<WeakDispatch>,
}

impl<S> Layer<S> for ProcessSpanEvents
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // OpenTelemetry's own logs are not recorded: it may log while it holds its current
        // context, which adding the event reads.
        // A root event (`parent: None`) belongs to no span.
        if event.metadata().target().starts_with("opentelemetry") || event.is_root() {
            return;
        }
        let innermost = if event.is_contextual() {
            ctx.current_span().id().cloned()
        } else {
            event.parent().cloned()
        };
        if let Some(id) = innermost
            && self.held_by_a_recorded_span(&id)
        {
            return;
        }
        let Some(_adding) = Adding::start() else {
            return;
        };
        record_on_current_span(event);
    }
}

impl ProcessSpanEvents {
    /// True when `id`, or a span it is inside, below the nearest process span, is one that
    /// `tracing-opentelemetry` records (and so records the event itself). Spans a filter
    /// hides from it, and publish spans, are passed over, as it passes over them.
    fn held_by_a_recorded_span(&self, id: &Id) -> bool {
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else {
            return false;
        };
        let Some(span) = dispatch
            .downcast_ref::<Registry>()
            .and_then(|registry| registry.span(id))
        else {
            return false;
        };
        for span in span.scope() {
            if span.metadata().target() == MESSAGING_TARGET {
                if span.name() == PROCESS_SPAN {
                    return false;
                }
                continue;
            }
            if super::context::recorded(&span.id(), &dispatch).is_some() {
                return true;
            }
        }
        false
    }
}

/// This thread adding an event to a span, until dropped (also when what adds it panics).
struct Adding;

impl Adding {
    /// `None` when this thread is adding one already (an event logged meanwhile).
    fn start() -> Option<Self> {
        let adding = ADDING_EVENT.with(|adding| adding.replace(true));
        (!adding).then_some(Adding)
    }
}

impl Drop for Adding {
    fn drop(&mut self) {
        ADDING_EVENT.with(|adding| adding.set(false));
    }
}

thread_local! {
    /// True while this thread adds an event to a span.
    static ADDING_EVENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Adds `event` to the span of OpenTelemetry's current context, if it has one.
fn record_on_current_span(event: &Event<'_>) {
    let cx = opentelemetry::Context::current();
    if !cx.has_active_span() {
        return;
    }
    let metadata = event.metadata();
    let mut fields = EventFields {
        message: None,
        attributes: vec![
            KeyValue::new("level", metadata.level().as_str()),
            KeyValue::new("target", metadata.target()),
        ],
    };
    event.record(&mut fields);
    let name = fields.message.unwrap_or_else(|| metadata.name().to_owned());
    cx.span().add_event(name, fields.attributes);
}

/// An event's fields as OpenTelemetry event attributes; its `message` is the event's name.
struct EventFields {
    message: Option<String>,
    attributes: Vec<KeyValue>,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.attributes
                .push(KeyValue::new(field.name(), value.to_owned()));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let value: opentelemetry::Value = match i64::try_from(value) {
            Ok(value) => value.into(),
            Err(_) => value.to_string().into(),
        };
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}
