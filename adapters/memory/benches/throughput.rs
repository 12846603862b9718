//! Throughput of `BuiltinQueueAdapter` against a bare tokio mpsc pipeline, in one process.
//!
//! Both pipelines move the same 200-byte JSON messages from a producer task to a consumer
//! task that acknowledges each one: the bare one through `tokio::sync::mpsc` (send → receive →
//! ack on a second channel), the adapter through publish → deliver → ack. Prints a table with
//! both rates and their ratio. Run with `cargo bench -p topiq-memory`; `TOPIQ_BENCH_MESSAGES`
//! sets the messages per round (default 200,000).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use topiq_adapter::{
    Adapter, ConsumeOptions, NewMessage, SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec,
    TriggerName, serialized_len,
};
use topiq_memory::BuiltinQueueAdapter;

const ROUNDS: usize = 7;
const PREFETCH: u32 = 64;

fn message() -> Value {
    let value = json!({
        "id": "9f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b",
        "to": "someone@example.com",
        "subject": "Order shipped",
        "order": {"number": 1_234_567, "items": 3, "total": 99.95, "currency": "EUR"},
        "tags": ["transactional", "shipping"],
    });
    assert!(
        (190..=210).contains(&serialized_len(&value)),
        "{}",
        serialized_len(&value)
    );
    value
}

async fn bare_mpsc(count: usize, template: &Value) -> Duration {
    let (send, mut receive) = mpsc::unbounded_channel::<(u64, Value)>();
    let (ack, mut acks) = mpsc::unbounded_channel::<u64>();
    let started = Instant::now();
    let consumer = tokio::spawn(async move {
        while let Some((id, data)) = receive.recv().await {
            std::hint::black_box(&data);
            ack.send(id).unwrap();
        }
    });
    let template = template.clone();
    let producer = tokio::spawn(async move {
        for id in 0..count as u64 {
            send.send((id, template.clone())).unwrap();
        }
    });
    for _ in 0..count {
        acks.recv().await.unwrap();
    }
    let elapsed = started.elapsed();
    producer.await.unwrap();
    consumer.await.unwrap();
    elapsed
}

async fn adapter(count: usize, template: &Value) -> Duration {
    let adapter = BuiltinQueueAdapter::new();
    let topic = TopicName::new("bench.throughput").unwrap();
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
        .consume(&key, ConsumeOptions::with_prefetch(PREFETCH))
        .await
        .unwrap();
    let started = Instant::now();
    let consumer = tokio::spawn(async move {
        for _ in 0..count {
            let delivery = subscription.next().await.unwrap().unwrap();
            std::hint::black_box(&delivery.envelope().data);
            delivery.ack().await.unwrap();
        }
    });
    let producer = {
        let adapter = adapter.clone();
        let template = template.clone();
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
    let elapsed = started.elapsed();
    producer.await.unwrap();
    adapter.close().await.unwrap();
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
        "topiq in-memory throughput: {count} messages of {} bytes per round, {ROUNDS} rounds, 2 worker threads, prefetch {PREFETCH}",
        serialized_len(&template)
    );
    let (mut bare_rates, mut adapter_rates) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        // Warm-up, not measured.
        bare_mpsc(count / 10, &template).await;
        adapter(count / 10, &template).await;
        for round in 1..=ROUNDS {
            let bare = rate(count, bare_mpsc(count, &template).await);
            let ours = rate(count, adapter(count, &template).await);
            println!(
                "  round {round}/{ROUNDS}: bare mpsc {bare:>12.0} msg/s, BuiltinQueueAdapter {ours:>12.0} msg/s"
            );
            bare_rates.push(bare);
            adapter_rates.push(ours);
        }
    });
    let bare = median(bare_rates);
    let ours = median(adapter_rates);
    println!();
    println!("| pipeline (median of {ROUNDS}) | messages/s | ratio |");
    println!("|---|---:|---:|");
    println!("| bare tokio mpsc: send → receive → ack | {bare:.0} | 1.00 |");
    println!(
        "| BuiltinQueueAdapter: publish → deliver → ack | {ours:.0} | {:.2} |",
        ours / bare
    );
    println!();
    println!(
        "target: ratio ≥ 0.50 → {}",
        if ours / bare >= 0.5 { "met" } else { "NOT met" }
    );
}
