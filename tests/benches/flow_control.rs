//! What per-key order and priority cost, through the queue module on each adapter: the
//! in-memory adapter, JetStream (a nats-server of its own) and RabbitMQ (a vhost of its own on
//! the machine's node), in one run.
//!
//! Each round enqueues a backlog, then starts the workers and times until every message is
//! handled (a handler that does nothing, runs not recorded: what remains is the queue's work):
//! - per-key order: a trigger with `ordering_key` over 1,000 keys (16 partitions) against the
//!   same trigger unordered, both with concurrency 16;
//! - priority: a topic with three priority levels (the messages spread over them) against
//!   one without.
//!
//! Rounds alternate between the two sides of each comparison; the table shows medians and
//! the ratios. Run with `cargo bench -p topiq-integration-tests --bench flow_control`;
//! `TOPIQ_BENCH_MESSAGES` sets the messages per round (default 20,000 in memory, 4,000 on
//! the brokers).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Notify;
use topiq::{Config, Functions, Message, QueueModule};
use topiq_testkit::Broker;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 3;

/// Rounds so far: each has a topic of its own, so none sees another's messages or queues.
static ROUND: AtomicUsize = AtomicUsize::new(0);
const KEYS: usize = 1_000;

/// One side of a comparison: its name, its topic options, its trigger options, and the
/// enqueue fields of message `n`.
struct Side {
    name: &'static str,
    topic: &'static str,
    trigger: &'static str,
    extra: fn(usize) -> Value,
}

/// The baseline of both comparisons: a plain topic, an unordered trigger.
const PLAIN: Side = Side {
    name: "plain topic, unordered, 1,000 keys",
    topic: "{}",
    trigger: "",
    extra: |_| json!({}),
};
const ORDERED: Side = Side {
    name: "ordering_key over 1,000 keys, 16 partitions",
    topic: "{ partitions: 16 }",
    trigger: "ordering_key: data.key, ",
    extra: |_| json!({}),
};
const LEVELS: Side = Side {
    name: "3 priority levels, messages spread over them",
    topic: "{ priority_levels: 3 }",
    trigger: "",
    extra: |n| json!({"priority": n % 3}),
};

fn config(broker: &Broker, side: &Side, topic: &str) -> Config {
    let text = format!(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        {adapter}
      topics:
        {topic}: {topic_options}
triggers:
  bench:
    type: queue
    function: noop
    config: {{ topic: {topic}, {trigger_options}concurrency: 16, runs: false }}
",
        adapter = broker.adapter_yaml(),
        topic_options = side.topic,
        trigger_options = side.trigger,
    );
    Config::from_yaml_with_variables(&text, "bench.yaml", &HashMap::new()).unwrap()
}

/// One round of `side`: the backlog enqueued, then the time to handle it all.
async fn round(broker: &Broker, side: &Side, count: usize) -> Duration {
    let handled = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(Notify::new());
    let mut functions = Functions::new();
    let (counter, done) = (Arc::clone(&handled), Arc::clone(&all_done));
    functions.register("noop", move |_message: Message| {
        let (counter, done) = (Arc::clone(&counter), Arc::clone(&done));
        async move {
            if counter.fetch_add(1, Ordering::Relaxed) + 1 == count {
                done.notify_one();
            }
            Ok(())
        }
    });
    let topic = format!("bench{}", ROUND.fetch_add(1, Ordering::Relaxed));
    let module = QueueModule::new(config(broker, side, &topic), functions)
        .await
        .unwrap();
    for start in (0..count).step_by(100) {
        let messages: Vec<Value> = (start..(start + 100).min(count))
            .map(|n| {
                let mut item = json!({"data": {"key": format!("k{}", n % KEYS), "n": n}});
                if let (Some(item), Value::Object(extra)) = (item.as_object_mut(), (side.extra)(n))
                {
                    item.extend(extra);
                }
                item
            })
            .collect();
        let args = json!({"topic": topic, "messages": messages});
        module.call("queue.enqueue_batch", args).await.unwrap();
    }
    let started = Instant::now();
    let workers = module.start_workers();
    all_done.notified().await;
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

/// Medians of `base` and `other` over alternating rounds, with progress on stderr.
async fn compare(
    broker: &Broker,
    label: &str,
    (base, other): (&Side, &Side),
    count: usize,
) -> (f64, f64) {
    let (mut base_rates, mut other_rates) = (Vec::new(), Vec::new());
    for number in 0..ROUNDS {
        for (side, rates) in [(base, &mut base_rates), (other, &mut other_rates)] {
            let elapsed = round(broker, side, count).await;
            let measured = rate(count, elapsed);
            eprintln!(
                "{label}: round {}/{ROUNDS}, {}: {measured:.0} msg/s",
                number + 1,
                side.name
            );
            rates.push(measured);
        }
    }
    (median(base_rates), median(other_rates))
}

fn messages_for(broker: &Broker) -> usize {
    let default = if matches!(broker, Broker::Memory) {
        20_000
    } else {
        4_000
    };
    std::env::var("TOPIQ_BENCH_MESSAGES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for (label, broker) in [
        ("in-memory", Broker::Memory),
        ("JetStream", Broker::jetstream()),
        ("RabbitMQ", Broker::rabbitmq()),
    ] {
        let count = messages_for(&broker);
        for pair in [(&PLAIN, &ORDERED), (&PLAIN, &LEVELS)] {
            let (base, other) = runtime.block_on(compare(&broker, label, pair, count));
            rows.push((label, pair, base, other));
        }
    }
    println!(
        "| adapter | baseline | msg/s | compared | msg/s | ratio |\n|---|---|---|---|---|---|"
    );
    for (label, (base, other), base_rate, other_rate) in rows {
        println!(
            "| {label} | {} | {base_rate:.0} | {} | {other_rate:.0} | {:.2} |",
            base.name,
            other.name,
            other_rate / base_rate
        );
    }
}
