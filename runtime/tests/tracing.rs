//! Trace propagation across the broker, on every adapter: the handler's process span is the
//! child of the publish span (same trace), baggage reaches the handler, a retried message's
//! attempts share the trace, and a message published without a trace starts a new one.
//! Spans are collected by OpenTelemetry's in-memory exporter.

// Test helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanId, Status, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use topiq::{Config, Functions, HandlerError, Message, QueueModule};
use topiq_testkit::{NatsServer, RabbitVhost};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

/// What the handler saw on each call: attempt, the envelope's baggage, the baggage of the
/// OpenTelemetry context it runs in (`Context::current()`), and the baggage of its `tracing`
/// span's context (`Span::current().context()`, which `tracing-opentelemetry`'s own layer
/// records).
type Seen = Arc<Mutex<Vec<Call>>>;

/// One handler call, as [`Seen`] says.
type Call = (u32, Option<String>, Option<String>, Option<String>);

/// Which layer turns the spans into OpenTelemetry spans.
#[derive(Clone, Copy)]
enum SpanLayer {
    /// `topiq::span_layer`, what `topiq run` installs.
    Topiq,
    /// `tracing_opentelemetry::layer()` with its defaults, what an application may install.
    Default,
}

async fn scenario(adapter: &str) {
    scenario_with(adapter, SpanLayer::Topiq).await;
}

async fn scenario_with(adapter: &str, layer: SpanLayer) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = provider.tracer("tracing-test");
    let spans_to_opentelemetry = match layer {
        SpanLayer::Topiq => topiq::span_layer(tracer).boxed(),
        SpanLayer::Default => tracing_opentelemetry::layer().with_tracer(tracer).boxed(),
    };
    let subscriber = tracing_subscriber::registry().with(spans_to_opentelemetry);
    let _default = tracing::subscriber::set_default(subscriber);

    let config = Config::from_yaml(
        &format!(
            "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
{adapter}
triggers:
  fulfil:
    type: queue
    function: flaky
    config:
      topic: orders
      retry: {{ backoff: fixed, delay: 50ms, max_attempts: 2 }}
  last:
    type: queue
    function: flaky
    config:
      topic: doomed
      retry: {{ backoff: fixed, delay: 50ms, max_attempts: 1 }}
  note:
    type: queue
    function: flaky
    config:
      topic: notes
      retry: {{ backoff: fixed, delay: 50ms, max_attempts: 2 }}
"
        ),
        "tracing-test.yaml",
    )
    .unwrap();
    let seen: Seen = Arc::default();
    let mut functions = Functions::new();
    let sink = Arc::clone(&seen);
    functions.register("flaky", move |message: Message| {
        let sink = Arc::clone(&sink);
        async move {
            let tenant = |cx: &Context| cx.baggage().get("tenant").map(|value| value.to_string());
            let in_context = tenant(&Context::current());
            let in_span = tenant(&tracing::Span::current().context());
            // A span the handler opens is a child of its process span.
            tracing::info_span!("work").in_scope(|| ());
            sink.lock().unwrap().push((
                message.attempt,
                message.baggage.clone(),
                in_context,
                in_span,
            ));
            if message.topic.as_str() == "orders" && message.attempt == 1 {
                return Err(HandlerError::retryable("first attempt fails"));
            }
            // The first delivery of a doomed message fails for good; its redrive succeeds.
            let first_doomed = message.topic.as_str() == "doomed"
                && sink
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, baggage, _, _)| baggage.as_deref() == Some("doom=1"))
                    .count()
                    == 1;
            if first_doomed {
                return Err(HandlerError::non_retryable("doomed"));
            }
            Ok(())
        }
    });
    let module = QueueModule::new(config, functions).await.unwrap();
    let workers = module.start_workers();

    // Published inside a request span whose context carries baggage.
    let request_cx = Context::current_with_baggage(vec![KeyValue::new("tenant", "acme")]);
    let request = tracing::info_span!("request");
    let _ = request.set_parent(request_cx);
    let published = module
        .call(
            "queue.enqueue",
            json!({"topic": "orders", "data": {"order": 7}}),
        )
        .instrument(request)
        .await
        .unwrap();
    // Published outside any span: its publish span starts a trace of its own.
    module
        .call(
            "queue.enqueue",
            json!({"topic": "notes", "data": {"via": "module"}}),
        )
        .await
        .unwrap();
    // Published with no trace at all (straight through the adapter, as a foreign producer
    // would): its handler starts a new trace.
    module
        .adapter()
        .publish(
            &topiq_adapter::TopicName::new("notes").unwrap(),
            topiq_adapter::NewMessage::new(json!({"via": "adapter"})),
        )
        .await
        .unwrap();

    // Dead-lettered on its only attempt, then redriven: both deliveries share its trace.
    // Published inside a span with baggage given explicitly (no traceparent): the publish
    // span stays the child of the current span.
    let doom_request = tracing::info_span!("doom-request");
    module
        .call(
            "queue.enqueue",
            json!({"topic": "doomed", "data": {}, "baggage": "doom=1"}),
        )
        .instrument(doom_request)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let count = module
            .call("queue.dlq_count", json!({"topic": "doomed"}))
            .await
            .unwrap();
        if count["count"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the doomed message never reached the DLQ"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    module
        .call("queue.redrive_dlq", json!({"topic": "doomed"}))
        .await
        .unwrap();
    while seen.lock().unwrap().len() < 6 {
        assert!(
            Instant::now() < deadline,
            "handled: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    workers.shutdown().await;
    module.close().await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let named =
        |name: &str| -> Vec<&SpanData> { spans.iter().filter(|s| s.name == name).collect() };
    let attribute = |span: &SpanData, key: &str| -> Option<Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    };
    let request = named("request")[0];
    let publish = named("publish orders")[0];
    assert_eq!(
        publish.span_context.trace_id(),
        request.span_context.trace_id()
    );
    assert_eq!(publish.parent_span_id, request.span_context.span_id());
    assert_eq!(
        attribute(publish, "messaging.message.id").unwrap().as_str(),
        published["message_id"].as_str().unwrap()
    );
    assert_eq!(
        attribute(publish, "messaging.destination.name")
            .unwrap()
            .as_str(),
        "orders"
    );

    // Both attempts are children of the publish span, in its trace.
    let mut attempts = named("process orders");
    attempts.sort_by_key(|span| {
        attribute(span, "topiq.attempt").map(|value| value.as_str().into_owned())
    });
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for (span, (attempt, outcome)) in attempts.iter().zip([(1, "retried"), (2, "succeeded")]) {
        assert_eq!(
            span.span_context.trace_id(),
            publish.span_context.trace_id()
        );
        assert_eq!(span.parent_span_id, publish.span_context.span_id());
        assert_eq!(attribute(span, "topiq.attempt"), Some(Value::I64(attempt)));
        assert_eq!(attribute(span, "topiq.outcome").unwrap().as_str(), outcome);
        // A retried attempt is an error; a success leaves the status unset.
        assert_eq!(
            matches!(span.status, Status::Error { .. }),
            outcome == "retried",
            "{span:#?}"
        );
        // The span the handler opened is its child.
        let work = named("work");
        assert!(
            work.iter()
                .any(|work| work.parent_span_id == span.span_context.span_id()
                    && work.span_context.trace_id() == span.span_context.trace_id()),
            "no child of {span:#?} in {work:#?}"
        );
        assert_eq!(
            attribute(span, "messaging.consumer.group.name")
                .unwrap()
                .as_str(),
            "fulfil"
        );
    }

    // Baggage reached the handler, in the envelope and in its span's context, on both
    // attempts.
    let seen = seen.lock().unwrap().clone();
    let orders: Vec<_> = seen
        .iter()
        .filter(|(_, baggage, _, _)| baggage.as_deref() == Some("tenant=acme"))
        .collect();
    assert_eq!(orders.len(), 2, "{seen:?}");
    for (_, envelope_baggage, context_baggage, span_baggage) in orders {
        assert_eq!(envelope_baggage.as_deref(), Some("tenant=acme"));
        assert_eq!(context_baggage.as_deref(), Some("acme"));
        if matches!(layer, SpanLayer::Default) {
            assert_eq!(span_baggage.as_deref(), Some("acme"));
        }
    }

    // A redriven message keeps its trace: both deliveries are children of its publish span.
    let doomed_publish = named("publish doomed")[0];
    let doom_request = named("doom-request")[0];
    assert_eq!(
        doomed_publish.parent_span_id,
        doom_request.span_context.span_id()
    );
    let doomed = named("process doomed");
    assert_eq!(doomed.len(), 2, "{spans:#?}");
    for span in &doomed {
        assert_eq!(span.parent_span_id, doomed_publish.span_context.span_id());
        assert_eq!(
            span.span_context.trace_id(),
            doomed_publish.span_context.trace_id()
        );
    }

    // Published outside any span: the publish span is a root, the handler its child.
    let note_publish = named("publish notes")[0];
    assert_eq!(note_publish.parent_span_id, SpanId::INVALID);
    assert_ne!(
        note_publish.span_context.trace_id(),
        publish.span_context.trace_id()
    );
    let notes = named("process notes");
    assert_eq!(notes.len(), 2, "{spans:#?}");
    let (children, roots): (Vec<&&SpanData>, Vec<&&SpanData>) = notes
        .iter()
        .partition(|span| span.parent_span_id == note_publish.span_context.span_id());
    assert_eq!(children.len(), 1);
    assert_eq!(
        children[0].span_context.trace_id(),
        note_publish.span_context.trace_id()
    );
    // No trace in the message: the handler's span starts a new trace.
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].parent_span_id, SpanId::INVALID);
    for other in [publish, note_publish] {
        assert_ne!(
            roots[0].span_context.trace_id(),
            other.span_context.trace_id()
        );
    }
}

#[tokio::test]
async fn memory() {
    scenario("        class: modules::queue::BuiltinQueueAdapter").await;
}

#[tokio::test]
async fn memory_with_tracing_opentelemetrys_default_layer() {
    scenario_with(
        "        class: modules::queue::BuiltinQueueAdapter",
        SpanLayer::Default,
    )
    .await;
}

#[tokio::test]
async fn jetstream() {
    let server = NatsServer::start();
    scenario(&format!(
        "        class: modules::queue::JetStreamAdapter\n        config: {{ url: \"{}\" }}",
        server.url()
    ))
    .await;
}

#[tokio::test]
async fn rabbitmq() {
    let vhost = RabbitVhost::create();
    scenario(&format!(
        "        class: modules::queue::RabbitMQAdapter\n        config: {{ url: \"{}\" }}",
        vhost.url()
    ))
    .await;
}
