//! [`span_layer`]: how `topiq run` (and an application that wants the same) turns spans into
//! OpenTelemetry spans. topiq's messaging spans are recorded by topiq itself, with the tracer
//! this layer carries; every other span goes through `tracing-opentelemetry`.

use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::trace::SdkTracer;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` target of the publish and process spans.
pub(crate) const MESSAGING_TARGET: &str = "topiq::messaging";

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
    ProcessSpanEvents
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

/// Records an event logged inside a handler, outside any span of the handler's own, on the
/// handler's process span (`tracing-opentelemetry` records events only on the spans it
/// records itself, and no longer sees topiq's).
struct ProcessSpanEvents;

impl<S> Layer<S> for ProcessSpanEvents
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let in_own_span = if event.is_contextual() {
            ctx.current_span()
                .metadata()
                .is_some_and(|span| span.target() != MESSAGING_TARGET)
        } else {
            event.parent().is_some()
        };
        // OpenTelemetry's own logs (which it may write while the event is added, with the
        // span locked) are not recorded, nor is anything logged while one is being added.
        if in_own_span || event.metadata().target().starts_with("opentelemetry") {
            return;
        }
        if ADDING_EVENT.with(|adding| adding.replace(true)) {
            return;
        }
        record_on_current_span(event);
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
