//! What `topiq::span_layer` records around the edges of the main tracing test
//! (`tracing.rs`): events a handler logs, a publish inside a span a filter hides, a
//! publish whose tracer provider is shut down, and a bad `traceparent` given inside a
//! handler's own span. In-memory adapter, spans collected by OpenTelemetry's in-memory
//! exporter.

// Test helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use topiq::{Config, Functions, Message, QueueModule};
use tracing::Instrument;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

/// A module on the in-memory adapter whose topic `orders` calls `handler`, and `notes`
/// calls nothing.
async fn module<H, F>(handler: H) -> QueueModule
where
    H: Fn(Message) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let config = Config::from_yaml(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
      topics:
        notes: {}
triggers:
  work:
    type: queue
    function: work
    config: { topic: orders }
",
        "tracing-edges.yaml",
    )
    .unwrap();
    let mut functions = Functions::new();
    functions.register("work", move |message: Message| {
        let handled = handler(message);
        async move {
            handled.await;
            Ok(())
        }
    });
    QueueModule::new(config, functions).await.unwrap()
}

/// Spans exported once `until` holds of them (or 10 s passed).
async fn finished(
    exporter: &InMemorySpanExporter,
    provider: &SdkTracerProvider,
    until: impl Fn(&[SpanData]) -> bool,
) -> Vec<SpanData> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        if until(&spans) || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|span| span.name == name).collect()
}

/// A layer that wants spans of every level, as a log layer at DEBUG would: what the INFO
/// filter hides from OpenTelemetry still exists.
struct EveryLevel;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EveryLevel {}

fn recording() -> (InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (exporter, provider)
}

/// What a handler logs: `outside` in its body, `inside` in a span of its own, `hidden` in a
/// DEBUG span (which an INFO filter hides from OpenTelemetry).
async fn log_three_events() {
    tracing::info!(order = 7, "outside");
    tracing::info_span!("step").in_scope(|| tracing::info!("inside"));
    tracing::debug_span!("quiet").in_scope(|| tracing::info!("hidden"));
}

/// Every event the handler logs is recorded once: on its own span when OpenTelemetry
/// records that span, on its process span otherwise. `subscriber` installs the layer.
async fn each_event_is_recorded_once_on_its_span(
    subscriber: impl FnOnce(&SdkTracerProvider) -> tracing::Dispatch,
    hidden_on: &str,
) {
    let (exporter, provider) = recording();
    let _default = tracing::dispatcher::set_default(&subscriber(&provider));
    let module = module(|_| log_three_events()).await;
    let workers = module.start_workers();
    module
        .call("queue.enqueue", json!({"topic": "orders", "data": {}}))
        .await
        .unwrap();
    let spans = finished(&exporter, &provider, |spans| {
        !named(spans, "process orders").is_empty()
    })
    .await;
    workers.shutdown().await;
    module.close().await;
    let holders = |event: &str| -> Vec<String> {
        spans
            .iter()
            .filter(|span| span.events.iter().any(|e| e.name == event))
            .map(|span| span.name.to_string())
            .collect()
    };
    assert_eq!(holders("outside"), ["process orders"], "{spans:#?}");
    assert_eq!(holders("inside"), ["step"], "{spans:#?}");
    assert_eq!(holders("hidden"), [hidden_on], "{spans:#?}");
    let process = named(&spans, "process orders")[0];
    let outside = process.events.iter().find(|e| e.name == "outside").unwrap();
    assert!(
        outside
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "order" && kv.value == opentelemetry::Value::I64(7)),
        "{outside:#?}"
    );
}

#[tokio::test]
async fn events_a_handler_logs_are_recorded_once_on_its_spans() {
    // The layer alone records every span, the DEBUG one included.
    each_event_is_recorded_once_on_its_span(
        |provider| {
            tracing_subscriber::registry()
                .with(topiq::span_layer(provider.tracer("edges")))
                .into()
        },
        "quiet",
    )
    .await;
}

#[tokio::test]
async fn events_are_recorded_once_under_an_info_filter_beside_a_debug_log() {
    // As `topiq run` installs it, beside logs at DEBUG: the process span and the DEBUG span
    // exist, and the filter hides the DEBUG span from OpenTelemetry.
    each_event_is_recorded_once_on_its_span(
        |provider| {
            let layer = topiq::span_layer(provider.tracer("edges")).with_filter(LevelFilter::INFO);
            tracing_subscriber::registry()
                .with(layer)
                .with(EveryLevel)
                .into()
        },
        "process orders",
    )
    .await;
}

#[tokio::test]
async fn a_publish_inside_a_span_a_filter_hides_is_a_child_of_the_nearest_recorded_one() {
    let (exporter, provider) = recording();
    // As `topiq run` installs it: the layer behind an INFO filter.
    let layer = topiq::span_layer(provider.tracer("edges")).with_filter(LevelFilter::INFO);
    let subscriber = tracing_subscriber::registry().with(layer).with(EveryLevel);
    let _default = tracing::subscriber::set_default(subscriber);
    let module = module(|_| async {}).await;
    let request = tracing::info_span!("request");
    let hidden = tracing::debug_span!(parent: &request, "hidden");
    assert!(!hidden.is_disabled(), "a layer of every level keeps it");
    module
        .call("queue.enqueue", json!({"topic": "notes", "data": {}}))
        .instrument(hidden)
        .await
        .unwrap();
    drop(request);
    let spans = finished(&exporter, &provider, |spans| {
        !named(spans, "request").is_empty() && !named(spans, "publish notes").is_empty()
    })
    .await;
    module.close().await;
    let (request, publish) = (
        named(&spans, "request")[0],
        named(&spans, "publish notes")[0],
    );
    assert_eq!(publish.parent_span_id, request.span_context.span_id());
    assert_eq!(
        publish.span_context.trace_id(),
        request.span_context.trace_id()
    );
}

#[tokio::test]
async fn with_its_provider_shut_down_a_publish_carries_the_callers_traceparent() {
    let (_exporter, provider) = recording();
    let subscriber =
        tracing_subscriber::registry().with(topiq::span_layer(provider.tracer("edges")));
    let _default = tracing::subscriber::set_default(subscriber);
    provider.shutdown().unwrap();
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let module = module(move |message: Message| {
        let _ = sender.send(message.traceparent.clone());
        async {}
    })
    .await;
    let workers = module.start_workers();
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    module
        .call(
            "queue.enqueue",
            json!({"topic": "orders", "data": {}, "traceparent": given}),
        )
        .await
        .unwrap();
    let carried = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("the message was not handled");
    workers.shutdown().await;
    module.close().await;
    assert_eq!(carried.flatten().as_deref(), Some(given));
}
