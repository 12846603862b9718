//! The highest rate topiq's RabbitMQ adapter reaches end to end with publisher confirms, and
//! the latency at it, beside omniqueue's RabbitMQ backend, which publishes without confirms.
//!
//! `cargo bench -p topiq-integration-tests --bench rabbitmq_ceiling` starts a RabbitMQ node of
//! its own (free port, temporary data directory). Each round moves `MESSAGES` messages through
//! a fresh quorum queue, unthrottled: publishers as fast as they go, a consumer (prefetch
//! `PREFETCH`) that parses each payload as JSON and acks it. For each message it records the
//! time from the start of its publish to its receipt.
//!
//! - **topiq**: `WINDOWS` publish calls in flight at most (each returns after its confirm: a
//!   message is stored before its publish succeeds), one row per window;
//! - **omniqueue 0.3** (`RabbitMqBackend`, its defaults): `send_serde_json` one after the
//!   other, each returning once written to the socket (no confirms: a message can be lost
//!   without the publisher knowing), so the backlog grows as fast as the client writes.
//!
//! Rounds alternate between the sides; the table shows medians. The ceiling is the highest
//! rate whose p99 stays under `P99_BOUND`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use omniqueue::backends::rabbitmq::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, ConnectionProperties, FieldTable,
    RabbitMqBackend, RabbitMqConfig as OmniConfig,
};
use serde_json::Value;
use topiq_adapter::{Adapter, ConsumeOptions, NewMessage};
use topiq_testkit::{RabbitNode, raw_rabbit};

use support::{ms, payload, percentile, rabbitmq_topiq, rate};

/// The allocator the `topiq` binary ships with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Messages a round.
const MESSAGES: usize = 20_000;
/// Rounds per row.
const ROUNDS: usize = 3;
/// Publish calls in flight at most, topiq's rows.
const WINDOWS: [usize; 5] = [16, 64, 128, 256, 1024];
/// Unacknowledged deliveries a consumer holds, on both sides.
const PREFETCH: u16 = 256;
/// A rate counts as reachable when its p99, publish to receipt, stays under this.
const P99_BOUND: Duration = Duration::from_millis(100);

/// One round: its rate (msg/s, the first publish to the last receipt) and every message's
/// publish-to-receipt time.
struct Round {
    rate: f64,
    latencies: Vec<Duration>,
}

/// Each message's publish start and receipt, by its number.
#[derive(Clone)]
struct Clock {
    started: Arc<Mutex<Vec<Option<Instant>>>>,
    received: Arc<Mutex<Vec<Option<Instant>>>>,
}

impl Clock {
    fn new() -> Self {
        Self {
            started: Arc::new(Mutex::new(vec![None; MESSAGES])),
            received: Arc::new(Mutex::new(vec![None; MESSAGES])),
        }
    }

    fn publishing(&self, n: usize) {
        self.started.lock().unwrap()[n] = Some(Instant::now());
    }

    fn received(&self, data: &Value) {
        let n = data["n"].as_u64().unwrap() as usize;
        self.received.lock().unwrap()[n] = Some(Instant::now());
    }

    /// The round, once every message was received; `began` is when publishing started.
    fn round(&self, began: Instant) -> Round {
        let started = self.started.lock().unwrap();
        let received = self.received.lock().unwrap();
        let mut latencies: Vec<Duration> = started
            .iter()
            .zip(received.iter())
            .map(|(sent, got)| got.unwrap().duration_since(sent.unwrap()))
            .collect();
        latencies.sort();
        let last = received.iter().map(|at| at.unwrap()).max().unwrap();
        Round {
            rate: rate(MESSAGES, last.duration_since(began)),
            latencies,
        }
    }
}

/// topiq: `window` publish calls in flight, a consumer acking each message.
async fn topiq_round(url: &str, name: &str, window: usize) -> Round {
    let (adapter, topic, key) = rabbitmq_topiq(url, name).await;
    let mut subscription = adapter
        .consume(&key, ConsumeOptions::with_prefetch(u32::from(PREFETCH)))
        .await
        .unwrap();
    let clock = Clock::new();
    let receiving = {
        let clock = clock.clone();
        tokio::spawn(async move {
            for _ in 0..MESSAGES {
                let delivery = subscription.next().await.unwrap().unwrap();
                clock.received(&delivery.envelope().data);
                delivery.ack().await.unwrap();
            }
        })
    };
    let began = Instant::now();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    for n in 0..MESSAGES {
        if in_flight.len() >= window {
            in_flight.next().await.unwrap();
        }
        let (adapter, topic, clock) = (adapter.clone(), topic.clone(), clock.clone());
        in_flight.push(async move {
            clock.publishing(n);
            adapter
                .publish(&topic, NewMessage::new(payload(n)))
                .await
                .unwrap();
        });
    }
    while in_flight.next().await.is_some() {}
    receiving.await.unwrap();
    adapter.close().await.ok();
    clock.round(began)
}

/// omniqueue: sends one after the other without confirms, a consumer acking each message.
async fn omniqueue_round(url: &str, name: &str) -> Round {
    let queue = format!("oq:t:{name}:t");
    let declaring = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = declaring.create_channel().await.unwrap();
    raw_rabbit::declare_like_topiq(&channel, "oq", &queue, name)
        .await
        .unwrap();
    declaring.close(200, "declared".into()).await.ok();
    let (producer, mut consumer) = RabbitMqBackend::builder(OmniConfig {
        uri: url.to_owned(),
        connection_properties: ConnectionProperties::default(),
        publish_exchange: "oq".to_owned(),
        publish_routing_key: name.to_owned(),
        publish_options: BasicPublishOptions::default(),
        publish_properties: BasicProperties::default(),
        consume_queue: queue,
        consumer_tag: String::new(),
        consume_options: BasicConsumeOptions::default(),
        consume_arguments: FieldTable::default(),
        consume_prefetch_count: Some(PREFETCH),
        requeue_on_nack: false,
    })
    .build_pair()
    .await
    .unwrap();
    let clock = Clock::new();
    let receiving = {
        let clock = clock.clone();
        tokio::spawn(async move {
            for _ in 0..MESSAGES {
                let delivery = consumer.receive().await.unwrap();
                let data: Value = delivery.payload_serde_json().unwrap().unwrap();
                clock.received(&data);
                delivery.ack().await.map_err(|(err, _)| err).unwrap();
            }
        })
    };
    let began = Instant::now();
    for n in 0..MESSAGES {
        clock.publishing(n);
        producer.send_serde_json(&payload(n)).await.unwrap();
    }
    receiving.await.unwrap();
    clock.round(began)
}

/// A row's medians: rate, p50 and p99 (each the median over the rounds).
struct Row {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

impl Row {
    fn of(rounds: &[Round]) -> Self {
        let median_of = |mut values: Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let at = |p: f64| {
            let seconds = rounds
                .iter()
                .map(|round| percentile(&round.latencies, p).as_secs_f64())
                .collect();
            Duration::from_secs_f64(median_of(seconds))
        };
        Self {
            rate: median_of(rounds.iter().map(|round| round.rate).collect()),
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node = RabbitNode::start();
    let url = node.url();
    println!(
        "topiq RabbitMQAdapter (publisher confirms) vs omniqueue 0.3 RabbitMqBackend (no confirms), end to end on quorum queues ({url}), {MESSAGES} messages a round, prefetch {PREFETCH}, median of {ROUNDS} rounds"
    );
    let (topiq, omniqueue) = runtime.block_on(async {
        let mut topiq: Vec<Vec<Round>> = WINDOWS.iter().map(|_| Vec::new()).collect();
        let mut omniqueue = Vec::new();
        for round in 0..ROUNDS {
            for (index, window) in WINDOWS.iter().enumerate() {
                let done = topiq_round(&url, &format!("ceil{round}w{window}"), *window).await;
                println!(
                    "  round {}/{ROUNDS}: topiq, {window} in flight: {:.0} msg/s",
                    round + 1,
                    done.rate
                );
                topiq[index].push(done);
            }
            let done = omniqueue_round(&url, &format!("ceil{round}oq")).await;
            println!(
                "  round {}/{ROUNDS}: omniqueue: {:.0} msg/s",
                round + 1,
                done.rate
            );
            omniqueue.push(done);
        }
        (topiq, omniqueue)
    });
    print_table(&topiq, &omniqueue);
    drop(node);
}

fn print_table(topiq: &[Vec<Round>], omniqueue: &[Round]) {
    let rows: Vec<(usize, Row)> = WINDOWS
        .iter()
        .zip(topiq)
        .map(|(window, rounds)| (*window, Row::of(rounds)))
        .collect();
    let peer = Row::of(omniqueue);
    println!();
    println!("| side | msg/s | p50 publish → receipt (ms) | p99 (ms) |");
    println!("|---|---:|---:|---:|");
    for (window, row) in &rows {
        println!(
            "| topiq, confirmed, {window} publish calls in flight | {:.0} | {:.2} | {:.2} |",
            row.rate,
            ms(row.p50),
            ms(row.p99)
        );
    }
    println!(
        "| omniqueue, unconfirmed, sent one after the other | {:.0} | {:.2} | {:.2} |",
        peer.rate,
        ms(peer.p50),
        ms(peer.p99)
    );
    println!();
    let fastest = |bounded: bool| {
        rows.iter()
            .filter(|(_, row)| !bounded || row.p99 <= P99_BOUND)
            .max_by(|(_, a), (_, b)| a.rate.total_cmp(&b.rate))
    };
    match fastest(true) {
        Some((window, row)) => println!(
            "highest confirmed rate with p99 under {P99_BOUND:?}: {:.0} msg/s ({window} in flight); omniqueue unconfirmed: {:.0} msg/s; topiq / omniqueue: {:.2}",
            row.rate,
            peer.rate,
            row.rate / peer.rate
        ),
        None => println!("no window kept topiq's p99 under {P99_BOUND:?}"),
    }
    if let Some((window, row)) = fastest(false) {
        println!(
            "highest confirmed rate at any p99: {:.0} msg/s ({window} in flight); topiq / omniqueue: {:.2}",
            row.rate,
            row.rate / peer.rate
        );
    }
}
