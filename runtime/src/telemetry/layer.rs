//! [`span_layer`]: how `topiq run` (and an application that wants the same) turns spans into
//! OpenTelemetry spans. topiq's messaging spans are recorded by topiq itself, with the tracer
//! this layer carries; every other span goes through `tracing-opentelemetry`.

use opentelemetry_sdk::trace::SdkTracer;
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
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
/// (`opentelemetry::Context::current()`), so spans it opens are the process span's children.
/// Every other span goes through `tracing-opentelemetry`, without per-span busy/idle timing,
/// thread and code-location attributes, and without attaching its context on each entry
/// (see docs/observability.md).
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
    others.with_filter(MessagingSpans { tracer })
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
