//! Throughput through the queue module on the in-memory adapter: enqueue → trigger → handler →
//! ack, next to the adapter alone (publish → deliver → ack) in the same run.
//!
//! Run with `cargo bench -p topiq`; `TOPIQ_BENCH_MESSAGES` sets the messages per round
//! (default 200,000).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;
use topiq::{Config, Functions, Message, QueueModule};
use topiq_adapter::{
    Adapter, ConsumeOptions, NewMessage, SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec,
    TriggerName,
};
use topiq_memory::BuiltinQueueAdapter;

/// The same allocator as the `topiq` binary (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 5;
const CONCURRENCY: u32 = 100;

fn message() -> Value {
    json!({
        "id": "9f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b",
        "to": "someone@example.com",
        "subject": "Order shipped",
        "order": {"number": 1_234_567, "items": 3, "total": 99.95, "currency": "EUR"},
        "tags": ["transactional", "shipping"],
    })
}

async fn adapter_only(count: usize, template: &Value) -> Duration {
    let adapter = BuiltinQueueAdapter::new();
    let topic = TopicName::new("bench").unwrap();
    let key = SubscriptionKey::new(topic.clone(), TriggerName::new("bench").unwrap());
    adapter
        .declare_topic(TopicSpec::new(topic.clone()))
        .await
        .unwrap();
    adapter
        .declare_subscription(SubscriptionSpec::new(key.clone()))
        .await
        .unwrap();
    let mut subscription = adapter
        .consume(
            &key,
            ConsumeOptions {
                prefetch: CONCURRENCY,
            },
        )
        .await
        .unwrap();
    let started = Instant::now();
    let consumer = tokio::spawn(async move {
        for _ in 0..count {
            let delivery = subscription.next().await.unwrap().unwrap();
            delivery.ack().await.unwrap();
        }
    });
    let producer = {
        let (adapter, template) = (adapter.clone(), template.clone());
        tokio::spawn(async move {
            for _ in 0..count {
                adapter
                    .publish(&topic, NewMessage::new(template.clone()))
                    .await
                    .unwrap();
            }
        })
    };
    consumer.await.unwrap();
    producer.await.unwrap();
    let elapsed = started.elapsed();
    adapter.close().await.unwrap();
    elapsed
}

async fn through_runtime(count: usize, template: &Value) -> Duration {
    let yaml = format!(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
triggers:
  bench:
    type: queue
    function: bench.noop
    config:
      topic: bench
      concurrency: {CONCURRENCY}
"
    );
    let config = Config::from_yaml_with_variables(&yaml, "bench.yaml", &HashMap::new()).unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(Notify::new());
    let mut functions = Functions::new();
    {
        let (handled, finished) = (Arc::clone(&handled), Arc::clone(&finished));
        functions.register("bench.noop", move |message: Message| {
            std::hint::black_box(message.data());
            if handled.fetch_add(1, Ordering::Relaxed) + 1 == count {
                finished.notify_one();
            }
            async { Ok(()) }
        });
    }
    let module = QueueModule::new(config, functions).await.unwrap();
    let topic = TopicName::new("bench").unwrap();
    let workers = module.start_workers();
    let started = Instant::now();
    let done = finished.notified();
    let producer = {
        let (module, template) = (module.clone(), template.clone());
        tokio::spawn(async move {
            for _ in 0..count {
                module
                    .publish(&topic, NewMessage::new(template.clone()))
                    .await
                    .unwrap();
            }
        })
    };
    done.await;
    producer.await.unwrap();
    let elapsed = started.elapsed();
    workers.shutdown().await;
    module.close().await;
    elapsed
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn main() {
    let count: usize = std::env::var("TOPIQ_BENCH_MESSAGES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let template = message();
    println!(
        "topiq runtime throughput: {count} messages per round, {ROUNDS} rounds, 2 worker threads, concurrency {CONCURRENCY}, a handler that does nothing, mimalloc"
    );
    let (mut bare, mut module) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        adapter_only(count / 10, &template).await;
        through_runtime(count / 10, &template).await;
        for round in 1..=ROUNDS {
            let a = rate(count, adapter_only(count, &template).await);
            let m = rate(count, through_runtime(count, &template).await);
            println!(
                "  round {round}/{ROUNDS}: adapter alone {a:>10.0} msg/s, through the runtime {m:>10.0} msg/s"
            );
            bare.push(a);
            module.push(m);
        }
    });
    let (a, m) = (median(bare), median(module));
    println!();
    println!("| pipeline (median of {ROUNDS}) | messages/s | ratio |");
    println!("|---|---:|---:|");
    println!("| BuiltinQueueAdapter alone: publish → deliver → ack | {a:.0} | 1.00 |");
    println!(
        "| QueueModule: enqueue → trigger → handler → ack | {m:.0} | {:.2} |",
        m / a
    );
    println!();
    println!(
        "target: ≥ 500,000 msg/s through the runtime → {}",
        if m >= 500_000.0 { "met" } else { "NOT met" }
    );
}
