//! The hot paths a row runs: each moves `messages` 200-byte JSON messages through one path on
//! a single-threaded runtime (so the count does not depend on how threads were scheduled).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;
use topiq::{Config, EnqueueRequest, Functions, Message, QueueModule};
use topiq_adapter::{
    Adapter, ConsumeOptions, NewMessage, SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec,
    TriggerName,
};
use topiq_memory::BuiltinQueueAdapter;

use crate::brokers::{Load, jetstream, rabbitmq};

/// Every row: its name and what it measures.
pub(crate) const ROWS: &[(&str, &str)] = &[
    (
        "memory.publish_ack",
        "in-memory adapter alone: publish, deliver, ack",
    ),
    (
        "peer.omniqueue",
        "omniqueue 0.3's in-memory backend: send the JSON, receive, read it into a Value, ack",
    ),
    (
        "module.runs_off",
        "queue module on the in-memory adapter: enqueue, trigger, handler, ack; runs not recorded",
    ),
    (
        "module.runs_memory",
        "the same with runs recorded in the in-memory runs store (the module's default)",
    ),
    (
        "module.traced",
        "module.runs_off with every publish and process span recorded by OpenTelemetry",
    ),
    (
        "jetstream.publish",
        "JetStreamAdapter: publish, one at a time, each awaiting the stream's ack",
    ),
    (
        "jetstream.publish_raw",
        "raw async-nats: the same publishes (with a Nats-Msg-Id, as topiq's)",
    ),
    (
        "jetstream.publish_batch",
        "JetStreamAdapter: publish_batch of 50 messages, all sent, then every ack awaited",
    ),
    (
        "jetstream.publish_batch_raw",
        "raw async-nats: the same batches (50 sent, then their acks awaited)",
    ),
    (
        "jetstream.end_to_end",
        "JetStreamAdapter: the publishes, then consume (prefetch 64), read, ack",
    ),
    (
        "jetstream.end_to_end_raw",
        "raw async-nats: the same (a pull consumer, 64 a batch)",
    ),
    (
        "rabbitmq.publish",
        "RabbitMqAdapter: publish to a quorum queue, one at a time, each awaiting its confirm",
    ),
    (
        "rabbitmq.publish_raw",
        "raw lapin: the same publishes (mandatory, persistent, topiq's properties)",
    ),
    (
        "rabbitmq.publish_batch",
        "RabbitMqAdapter: publish_batch of 50 messages, all sent, then every confirm awaited",
    ),
    (
        "rabbitmq.publish_batch_raw",
        "raw lapin: the same batches (50 sent, then their confirms awaited)",
    ),
    (
        "rabbitmq.publish_concurrent",
        "RabbitMqAdapter: publish, 50 calls in flight, each awaiting its confirm",
    ),
    (
        "rabbitmq.publish_concurrent_raw",
        "raw lapin: the same (50 publishes in flight on the one channel)",
    ),
    (
        "rabbitmq.end_to_end",
        "RabbitMqAdapter: the publishes, then consume (prefetch 64), read, ack",
    ),
    (
        "rabbitmq.end_to_end_raw",
        "raw lapin: the same (basic.consume, qos 64)",
    ),
];

/// topiq's in-memory rows measured against omniqueue's: (topiq's row, the peer's row).
pub(crate) const AGAINST_PEER: &[(&str, &str)] = &[
    ("memory.publish_ack", "peer.omniqueue"),
    ("module.runs_off", "peer.omniqueue"),
    ("module.runs_memory", "peer.omniqueue"),
];

/// Rows measured against the raw client: (topiq's row, raw's row).
pub(crate) const AGAINST_RAW: &[(&str, &str)] = &[
    ("jetstream.publish", "jetstream.publish_raw"),
    ("jetstream.publish_batch", "jetstream.publish_batch_raw"),
    ("jetstream.end_to_end", "jetstream.end_to_end_raw"),
    ("rabbitmq.publish", "rabbitmq.publish_raw"),
    ("rabbitmq.publish_batch", "rabbitmq.publish_batch_raw"),
    (
        "rabbitmq.publish_concurrent",
        "rabbitmq.publish_concurrent_raw",
    ),
    ("rabbitmq.end_to_end", "rabbitmq.end_to_end_raw"),
];

/// Why a row could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RowError {
    /// No row has this name.
    #[error("no row {0:?}; the rows: {rows}", rows = ROWS.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", "))]
    Unknown(String),
    /// The adapter or the module refused.
    #[error("{0}")]
    Failed(String),
}

pub(crate) fn failed(err: impl std::fmt::Display) -> RowError {
    RowError::Failed(err.to_string())
}

/// The message every row sends: about 200 bytes of JSON.
pub(crate) fn message() -> Value {
    json!({
        "id": "9f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b",
        "to": "someone@example.com",
        "subject": "Order shipped",
        "order": {"number": 1_234_567, "items": 3, "total": 99.95, "currency": "EUR"},
        "tags": ["transactional", "shipping"],
    })
}

/// Runs row `name` for `messages` messages.
pub(crate) fn run(name: &str, messages: u64) -> Result<(), RowError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed)?;
    match name {
        "memory.publish_ack" => runtime.block_on(publish_ack(messages)),
        "peer.omniqueue" => runtime.block_on(omniqueue(messages)),
        "module.runs_off" => runtime.block_on(through_module(messages, false)),
        "module.runs_memory" => runtime.block_on(through_module(messages, true)),
        "module.traced" => traced::run(&runtime, messages),
        "jetstream.publish" => runtime.block_on(jetstream::topiq(messages, Load::Publish)),
        "jetstream.publish_raw" => runtime.block_on(jetstream::raw(messages, Load::Publish)),
        "jetstream.publish_batch" => runtime.block_on(jetstream::topiq(messages, Load::Batches)),
        "jetstream.publish_batch_raw" => runtime.block_on(jetstream::raw(messages, Load::Batches)),
        "jetstream.end_to_end" => runtime.block_on(jetstream::topiq(messages, Load::EndToEnd)),
        "jetstream.end_to_end_raw" => runtime.block_on(jetstream::raw(messages, Load::EndToEnd)),
        "rabbitmq.publish" => runtime.block_on(rabbitmq::topiq(messages, Load::Publish)),
        "rabbitmq.publish_raw" => runtime.block_on(rabbitmq::raw(messages, Load::Publish)),
        "rabbitmq.publish_batch" => runtime.block_on(rabbitmq::topiq(messages, Load::Batches)),
        "rabbitmq.publish_batch_raw" => runtime.block_on(rabbitmq::raw(messages, Load::Batches)),
        "rabbitmq.publish_concurrent" => {
            runtime.block_on(rabbitmq::topiq(messages, Load::Concurrent))
        }
        "rabbitmq.publish_concurrent_raw" => {
            runtime.block_on(rabbitmq::raw(messages, Load::Concurrent))
        }
        "rabbitmq.end_to_end" => runtime.block_on(rabbitmq::topiq(messages, Load::EndToEnd)),
        "rabbitmq.end_to_end_raw" => runtime.block_on(rabbitmq::raw(messages, Load::EndToEnd)),
        other => Err(RowError::Unknown(other.to_owned())),
    }
}

/// The adapter alone: publish every message, then deliver and ack each.
async fn publish_ack(messages: u64) -> Result<(), RowError> {
    let adapter = BuiltinQueueAdapter::new();
    let (topic, key) = declare(&adapter, "costs").await?;
    let template = message();
    for _ in 0..messages {
        adapter
            .publish(&topic, NewMessage::new(template.clone()))
            .await
            .map_err(failed)?;
    }
    take_and_ack(&adapter, &key, 64, messages).await?;
    adapter.close().await.map_err(failed)
}

/// Declares topic `name` with one trigger, `t`.
pub(crate) async fn declare<A: Adapter>(
    adapter: &A,
    name: &str,
) -> Result<(TopicName, SubscriptionKey), RowError> {
    let topic = TopicName::new(name).map_err(failed)?;
    let key = SubscriptionKey::new(topic.clone(), TriggerName::new("t").map_err(failed)?);
    adapter
        .declare_topic(TopicSpec::new(topic.clone()))
        .await
        .map_err(failed)?;
    adapter
        .declare_subscription(SubscriptionSpec::new(key.clone()))
        .await
        .map_err(failed)?;
    Ok((topic, key))
}

/// Consumes `key` (`prefetch` unsettled at most) and acks `messages` deliveries, reading each
/// one's data as a handler would.
pub(crate) async fn take_and_ack<A: Adapter>(
    adapter: &A,
    key: &SubscriptionKey,
    prefetch: u32,
    messages: u64,
) -> Result<(), RowError> {
    let mut deliveries = adapter
        .consume(key, ConsumeOptions::with_prefetch(prefetch))
        .await
        .map_err(failed)?;
    for _ in 0..messages {
        let delivery = deliveries
            .next()
            .await
            .ok_or_else(|| failed("the subscription ended"))?
            .map_err(failed)?;
        std::hint::black_box(&delivery.envelope().data);
        delivery.ack().await.map_err(failed)?;
    }
    Ok(())
}

/// The module with OpenTelemetry recording every span.
mod traced {
    use std::sync::atomic::{AtomicU64, Ordering};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{
        BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
    };
    use tracing_subscriber::layer::SubscriberExt;

    use super::{RowError, failed, through_module};

    /// Spans the exporter got (and dropped).
    static EXPORTED: AtomicU64 = AtomicU64::new(0);

    /// An exporter that drops what it gets: what remains is the cost of recording spans.
    #[derive(Debug)]
    struct Discard;

    impl SpanExporter for Discard {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            EXPORTED.fetch_add(batch.len() as u64, Ordering::Relaxed);
            Ok(())
        }
    }

    /// `module.runs_off` inside a subscriber with `topiq run`'s span layer and a batch
    /// processor; checks that every span (two a message) was exported.
    pub(super) fn run(runtime: &tokio::runtime::Runtime, messages: u64) -> Result<(), RowError> {
        // A queue no row fills: under callgrind the exporter's thread runs when valgrind
        // lets it, and a full queue would drop spans (making tracing look cheaper).
        let spans = usize::try_from(2 * messages).map_err(failed)?;
        let processor = BatchSpanProcessor::builder(Discard)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(spans.max(2_048))
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let subscriber =
            tracing_subscriber::registry().with(topiq::span_layer(provider.tracer("costs")));
        tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(through_module(messages, false))
        })?;
        provider.shutdown().map_err(failed)?;
        let exported = EXPORTED.load(Ordering::Relaxed);
        if exported != 2 * messages {
            return Err(failed(format!(
                "{exported} spans exported, {} expected",
                2 * messages
            )));
        }
        Ok(())
    }
}

/// omniqueue's in-memory backend as the adapter row uses topiq's: every message built (a
/// clone of the template, as the adapter row publishes one) and sent, then each received,
/// read into a `Value` (what a handler gets) and acknowledged.
async fn omniqueue(messages: u64) -> Result<(), RowError> {
    let (producer, mut consumer) = omniqueue::backends::InMemoryBackend::builder()
        .build_pair()
        .await
        .map_err(failed)?;
    let template = message();
    for _ in 0..messages {
        let message = template.clone();
        producer.send_serde_json(&message).await.map_err(failed)?;
    }
    for _ in 0..messages {
        let delivery = consumer.receive().await.map_err(failed)?;
        let data: Value = delivery
            .payload_serde_json()
            .map_err(failed)?
            .ok_or_else(|| failed("an empty payload"))?;
        std::hint::black_box(&data);
        delivery.ack().await.map_err(|(err, _)| failed(err))?;
    }
    Ok(())
}

/// The queue module: enqueue every message through `queue.enqueue`, then let the trigger call
/// a handler that does nothing for each.
async fn through_module(messages: u64, runs: bool) -> Result<(), RowError> {
    let yaml = format!(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
      topics:
        costs: {{}}
triggers:
  costs:
    type: queue
    function: costs.noop
    config: {{ topic: costs, concurrency: 16, runs: {runs} }}
"
    );
    let config =
        Config::from_yaml_with_variables(&yaml, "costs.yaml", &HashMap::new()).map_err(failed)?;
    let handled = Arc::new(AtomicU64::new(0));
    let all_handled = Arc::new(Notify::new());
    let mut functions = Functions::new();
    {
        let (handled, all_handled) = (Arc::clone(&handled), Arc::clone(&all_handled));
        functions.register("costs.noop", move |message: Message| {
            std::hint::black_box(message.data());
            if handled.fetch_add(1, Ordering::Relaxed) + 1 == messages {
                all_handled.notify_one();
            }
            async { Ok(()) }
        });
    }
    let module = QueueModule::new(config, functions).await.map_err(failed)?;
    let template = message();
    for _ in 0..messages {
        let request = EnqueueRequest {
            topic: "costs".into(),
            data: template.clone(),
            idempotency_key: None,
            delay: None,
            run_at: None,
            traceparent: None,
            baggage: None,
            priority: None,
        };
        module.enqueue(request).await.map_err(failed)?;
    }
    let done = all_handled.notified();
    let workers = module.start_workers();
    done.await;
    workers.shutdown().await;
    module.close().await;
    Ok(())
}
