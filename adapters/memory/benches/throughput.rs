//! Throughput of `BuiltinQueueAdapter` against its peers, in one process, on one allocator.
//!
//! Every pipeline moves the same 200-byte JSON message from a producer task to a consumer task
//! that reads it as a `serde_json::Value` and acknowledges it:
//!
//! - **bare tokio mpsc**: send a clone of the value → receive → ack on a second channel (the
//!   floor: no queue semantics at all);
//! - **omniqueue in-memory** (0.3): a clone of the value (the message built, as the other
//!   pipelines build theirs; before 2026-12-07 the template was sent by reference)
//!   `send_serde_json(&message)` → `receive` →
//!   `payload_serde_json::<Value>()` → `ack` (an unbounded channel of bytes: no lease, no
//!   attempts, no DLQ);
//! - **BuiltinQueueAdapter**: `publish` of a clone of the value → a delivery from `consume`
//!   → `ack`, with everything topiq's contract does per message.
//!
//! Three loads: **backlog** (the producer runs free and the queue grows; topiq's bound set out
//! of reach), **at the bound** (topiq's `max_messages` of 1,000 keeps the producer waiting for
//! room; the peers, which have no bound, get a window of 1,000 unacknowledged messages) and
//! **window 256** (the producer waits while 256 messages are unacknowledged, below topiq's
//! bound, so every hand-off is live). Rounds
//! alternate the pipelines; the table shows medians. `cargo bench -p topiq-memory` runs it on
//! glibc malloc (`--bench throughput`) and on mimalloc, the `topiq` binary's allocator
//! (`--bench throughput_mimalloc`). `TOPIQ_BENCH_MESSAGES` sets the messages per round
//! (default 200,000), `TOPIQ_BENCH_ROUNDS` the rounds (default 5).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use omniqueue::backends::InMemoryBackend;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use topiq_adapter::{
    Adapter, ConsumeOptions, NewMessage, SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec,
    TriggerName, serialized_len,
};
use topiq_memory::{BuiltinQueueAdapter, MemoryConfig};

const PREFETCH: u32 = 64;
const WINDOW: usize = 256;
const BOUND: usize = 1_000;

fn main() {
    run("glibc malloc");
}

/// How far the producer may run ahead of the acknowledgements.
#[derive(Clone, Copy)]
enum Load {
    Backlog,
    AtBound,
    Window,
}

impl Load {
    fn name(self) -> String {
        match self {
            Load::Backlog => "backlog".to_owned(),
            Load::AtBound => format!("at the bound ({BOUND})"),
            Load::Window => format!("window {WINDOW}"),
        }
    }

    /// A peer's producer's permits: unbounded for a backlog, else the window.
    fn permits(self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(match self {
            Load::Backlog => Semaphore::MAX_PERMITS,
            Load::AtBound => BOUND,
            Load::Window => WINDOW,
        }))
    }

    /// topiq's producer's permits: at the bound, the adapter's bound holds it back instead.
    fn topiq_permits(self) -> Arc<Semaphore> {
        match self {
            Load::AtBound => Load::Backlog.permits(),
            other => other.permits(),
        }
    }

    /// The adapter's options: the bound out of reach but at the bound.
    fn topiq_config(self) -> MemoryConfig {
        let max_messages = match self {
            Load::AtBound => BOUND as u64,
            Load::Backlog | Load::Window => u64::MAX,
        };
        MemoryConfig {
            max_messages,
            ..MemoryConfig::default()
        }
    }
}

/// Takes one permit for good; the consumer gives it back after the ack.
async fn take_permit(permits: &Semaphore) {
    permits.acquire().await.unwrap().forget();
}

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

async fn bare_mpsc(count: usize, template: &Value, load: Load) -> Duration {
    let (send, mut receive) = mpsc::unbounded_channel::<(u64, Value)>();
    let (ack, mut acks) = mpsc::unbounded_channel::<u64>();
    let permits = load.permits();
    let started = Instant::now();
    let consumer = {
        let permits = Arc::clone(&permits);
        tokio::spawn(async move {
            while let Some((id, data)) = receive.recv().await {
                std::hint::black_box(&data);
                ack.send(id).unwrap();
                permits.add_permits(1);
            }
        })
    };
    let template = template.clone();
    let producer = tokio::spawn(async move {
        for id in 0..count as u64 {
            take_permit(&permits).await;
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

async fn omniqueue(count: usize, template: &Value, load: Load) -> Duration {
    let (producer, mut consumer) = InMemoryBackend::builder().build_pair().await.unwrap();
    let permits = load.permits();
    let started = Instant::now();
    let consumer = {
        let permits = Arc::clone(&permits);
        tokio::spawn(async move {
            for _ in 0..count {
                let delivery = consumer.receive().await.unwrap();
                let data: Value = delivery.payload_serde_json().unwrap().unwrap();
                std::hint::black_box(&data);
                delivery.ack().await.map_err(|(err, _)| err).unwrap();
                permits.add_permits(1);
            }
        })
    };
    let template = template.clone();
    let producer = tokio::spawn(async move {
        for _ in 0..count {
            take_permit(&permits).await;
            let message = template.clone();
            producer.send_serde_json(&message).await.unwrap();
        }
    });
    consumer.await.unwrap();
    let elapsed = started.elapsed();
    producer.await.unwrap();
    elapsed
}

async fn adapter(count: usize, template: &Value, load: Load) -> Duration {
    let adapter = BuiltinQueueAdapter::with_config(load.topiq_config());
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
    let permits = load.topiq_permits();
    let started = Instant::now();
    let consumer = {
        let permits = Arc::clone(&permits);
        tokio::spawn(async move {
            for _ in 0..count {
                let delivery = subscription.next().await.unwrap().unwrap();
                std::hint::black_box(&delivery.envelope().data);
                delivery.ack().await.unwrap();
                permits.add_permits(1);
            }
        })
    };
    let producer = {
        let adapter = adapter.clone();
        let template = template.clone();
        tokio::spawn(async move {
            for _ in 0..count {
                take_permit(&permits).await;
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

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|value| *value > 0)
        .unwrap_or(default)
}

/// One load's medians: bare mpsc, omniqueue, topiq.
async fn measure(load: Load, count: usize, rounds: usize, template: &Value) -> [f64; 3] {
    let mut rates: [Vec<f64>; 3] = Default::default();
    // Warm-up, not measured.
    bare_mpsc(count / 10, template, load).await;
    omniqueue(count / 10, template, load).await;
    adapter(count / 10, template, load).await;
    for round in 1..=rounds {
        let bare = rate(count, bare_mpsc(count, template, load).await);
        let omni = rate(count, omniqueue(count, template, load).await);
        let ours = rate(count, adapter(count, template, load).await);
        println!(
            "  {} round {round}/{rounds}: bare mpsc {bare:>9.0}, omniqueue {omni:>9.0}, BuiltinQueueAdapter {ours:>9.0} msg/s",
            load.name()
        );
        for (all, one) in rates.iter_mut().zip([bare, omni, ours]) {
            all.push(one);
        }
    }
    rates.map(median)
}

/// Runs both loads and prints the table; `allocator` names the global allocator.
pub(crate) fn run(allocator: &str) {
    let count = env_number("TOPIQ_BENCH_MESSAGES", 200_000);
    let rounds = env_number("TOPIQ_BENCH_ROUNDS", 5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let template = message();
    println!(
        "topiq in-memory throughput ({allocator}): {count} messages of {} bytes per round, {rounds} rounds, 2 worker threads, prefetch {PREFETCH}",
        serialized_len(&template)
    );
    let results: Vec<(Load, [f64; 3])> = runtime.block_on(async {
        let mut results = Vec::new();
        for load in [Load::Backlog, Load::AtBound, Load::Window] {
            results.push((load, measure(load, count, rounds, &template).await));
        }
        results
    });
    println!();
    println!(
        "| load ({allocator}, median of {rounds}) | bare mpsc | omniqueue | BuiltinQueueAdapter | topiq / omniqueue | topiq / bare |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (load, [bare, omni, ours]) in results {
        println!(
            "| {} | {bare:.0} | {omni:.0} | {ours:.0} | {:.2} | {:.2} |",
            load.name(),
            ours / omni,
            ours / bare
        );
    }
}
