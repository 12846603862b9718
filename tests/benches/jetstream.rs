//! topiq's JetStream adapter against raw async-nats, on one nats-server, in one run.
//!
//! `cargo bench -p topiq-integration-tests --bench jetstream` starts its own nats-server (the
//! machine's) and prints a table with topiq/raw ratios:
//! - publish throughput: 256 concurrent publish calls, batches of 256, and one at a time;
//! - end-to-end throughput: publish → pull → payload parsed as JSON → ack, 256 in flight;
//! - p50/p99 latency from publish to receipt at a fixed 5,000 msg/s, with the sides in turn
//!   and side by side (both publishing at once, each at 5,000 msg/s, so a stall of the
//!   machine lands on both; the target is judged there).
//!
//! Both sides do the same work: every raw publish carries a `Nats-Msg-Id` (what makes
//! topiq's retried publish safe), both are driven by the same loop, and both consumers parse
//! the payload before acking. One extra row shows raw without `Nats-Msg-Id`, for scale.
//!
//! The machine's noise is spread over both sides: throughput and latency run in rounds that
//! alternate which side goes first (the table shows the median throughput, and p50/p99 over
//! every latency sample), and one-at-a-time publishes take turns message by message.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use topiq_adapter::{
    Adapter, ConsumeOptions, NewMessage, SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec,
    TriggerName,
};
use topiq_integration_tests::NatsServer;
use topiq_jetstream::{JetStreamAdapter, JetStreamConfig};

/// The allocator the `topiq` binary ships with, for both sides alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WINDOW: usize = 256;
const PIPELINED: usize = 20_000;
const ONE_AT_A_TIME: usize = 5_000;
const END_TO_END: usize = 20_000;
const RATE: usize = 5_000;
const LATENCY_SECONDS: usize = 2;
/// Latency rounds per side; the table shows p50 and p99 over all their samples.
const LATENCY_ROUNDS: usize = 8;
/// Rounds per throughput measure; the table shows the median.
const ROUNDS: usize = 7;

fn payload(n: usize) -> Value {
    json!({"n": n, "to": "someone@example.com", "subject": "Order shipped", "total": 99.95})
}

fn bytes(n: usize) -> bytes::Bytes {
    serde_json::to_vec(&payload(n)).unwrap().into()
}

struct Raw {
    js: jetstream::Context,
    subject: String,
    stream: String,
}

async fn raw(url: &str, name: &str) -> Raw {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    // Names as long as topiq's (`tq.t.<name>`, `tq_<name>`): every subject is parsed and
    // hashed on each publish, delivery and ack, so their length is part of the cost.
    let subject = format!("rw.t.{name}");
    let stream = format!("RW_{name}");
    js.create_stream(stream::Config {
        name: stream.clone(),
        subjects: vec![subject.clone()],
        retention: stream::RetentionPolicy::Interest,
        ..Default::default()
    })
    .await
    .unwrap();
    let raw = Raw {
        js,
        subject,
        stream,
    };
    // A consumer from the start, like a topiq trigger's: an interest stream without one
    // drops what it stores at once, which would flatter raw.
    raw.consumer().await;
    raw
}

impl Raw {
    /// The consumer's messages, pulled `WINDOW` at a time (as topiq's prefetch).
    async fn messages(
        consumer: jetstream::consumer::Consumer<pull::Config>,
    ) -> jetstream::consumer::pull::Stream {
        consumer
            .stream()
            .max_messages_per_batch(WINDOW)
            .messages()
            .await
            .unwrap()
    }

    async fn consumer(&self) -> jetstream::consumer::Consumer<pull::Config> {
        self.js
            .get_stream(&self.stream)
            .await
            .unwrap()
            .create_consumer(pull::Config {
                durable_name: Some("raw".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: -1,
                ..Default::default()
            })
            .await
            .unwrap()
    }
}

/// The trigger's deliveries, `WINDOW` at most unsettled (as raw's pull batch).
async fn consume(adapter: &JetStreamAdapter, key: &SubscriptionKey) -> topiq_adapter::Subscription {
    adapter
        .consume(
            key,
            ConsumeOptions {
                prefetch: WINDOW as u32,
            },
        )
        .await
        .unwrap()
}

async fn topiq(url: &str, name: &str) -> (JetStreamAdapter, TopicName, SubscriptionKey) {
    let adapter = JetStreamAdapter::connect(JetStreamConfig {
        url: Some(url.to_owned()),
        prefix: "tq".to_owned(),
        ..JetStreamConfig::default()
    })
    .await
    .unwrap();
    let topic = TopicName::new(name).unwrap();
    let key = SubscriptionKey::new(topic.clone(), TriggerName::new("t").unwrap());
    adapter
        .declare_topic(TopicSpec::new(topic.clone()))
        .await
        .unwrap();
    adapter
        .declare_subscription(SubscriptionSpec::new(key.clone()))
        .await
        .unwrap();
    (adapter, topic, key)
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// The headers of a raw publish: a fresh `Nats-Msg-Id`, or none.
fn raw_headers(with_msg_id: bool) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    if with_msg_id {
        headers.insert("Nats-Msg-Id", topiq_adapter::MessageId::generate().as_str());
    }
    headers
}

/// Keeps `WINDOW` publishes in flight, each a publish awaiting its acknowledgement, the way
/// concurrent application tasks publish.
async fn raw_concurrent(raw: &Raw, count: usize, with_msg_id: bool) -> f64 {
    let started = Instant::now();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    for n in 0..count {
        if in_flight.len() >= WINDOW {
            in_flight.next().await.unwrap();
        }
        let (js, subject) = (raw.js.clone(), raw.subject.clone());
        in_flight.push(async move {
            js.publish_with_headers(subject, raw_headers(with_msg_id), bytes(n))
                .await
                .unwrap()
                .await
                .unwrap();
        });
    }
    while in_flight.next().await.is_some() {}
    rate(count, started.elapsed())
}

/// The same loop as [`raw_concurrent`], each future one `publish` call.
async fn topiq_concurrent(adapter: &JetStreamAdapter, topic: &TopicName, count: usize) -> f64 {
    let started = Instant::now();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    for n in 0..count {
        if in_flight.len() >= WINDOW {
            let receipt: topiq_adapter::Result<topiq_adapter::PublishReceipt> =
                in_flight.next().await.unwrap();
            receipt.unwrap();
        }
        let (adapter, topic) = (adapter.clone(), topic.clone());
        in_flight.push(async move { adapter.publish(&topic, NewMessage::new(payload(n))).await });
    }
    while let Some(result) = in_flight.next().await {
        result.unwrap();
    }
    rate(count, started.elapsed())
}

/// Sends `WINDOW` publishes, then awaits their acknowledgements, batch after batch.
async fn raw_batches(raw: &Raw, count: usize) -> f64 {
    let started = Instant::now();
    let mut n = 0;
    while n < count {
        let mut acks = Vec::with_capacity(WINDOW);
        for i in n..(n + WINDOW).min(count) {
            let ack = raw
                .js
                .publish_with_headers(raw.subject.clone(), raw_headers(true), bytes(i))
                .await
                .unwrap();
            acks.push(ack.into_future());
        }
        n += acks.len();
        for ack in futures::future::join_all(acks).await {
            ack.unwrap();
        }
    }
    rate(count, started.elapsed())
}

/// `publish_batch` with `WINDOW` messages, batch after batch.
async fn topiq_batches(adapter: &JetStreamAdapter, topic: &TopicName, count: usize) -> f64 {
    let started = Instant::now();
    let mut n = 0;
    while n < count {
        let batch: Vec<NewMessage> = (n..(n + WINDOW).min(count))
            .map(|i| NewMessage::new(payload(i)))
            .collect();
        n += batch.len();
        for receipt in adapter.publish_batch(topic, batch).await.unwrap() {
            receipt.unwrap();
        }
    }
    rate(count, started.elapsed())
}

/// One publish at a time, raw and topiq taking turns message by message (so the machine's
/// noise falls on both alike); each side's rate counts only its own publishes' time.
async fn one_at_a_time(
    raw: &Raw,
    adapter: &JetStreamAdapter,
    topic: &TopicName,
    count: usize,
) -> (f64, f64) {
    let (mut raw_time, mut topiq_time) = (Duration::ZERO, Duration::ZERO);
    for n in 0..count {
        let started = Instant::now();
        raw.js
            .publish_with_headers(raw.subject.clone(), raw_headers(true), bytes(n))
            .await
            .unwrap()
            .await
            .unwrap();
        raw_time += started.elapsed();
        let started = Instant::now();
        adapter
            .publish(topic, NewMessage::new(payload(n)))
            .await
            .unwrap();
        topiq_time += started.elapsed();
    }
    (rate(count, raw_time), rate(count, topiq_time))
}

async fn raw_end_to_end(raw: &Raw, count: usize) -> f64 {
    let consumer = raw.consumer().await;
    let started = Instant::now();
    let receiving = tokio::spawn(async move {
        let mut messages = Raw::messages(consumer).await;
        for _ in 0..count {
            let message = messages.next().await.unwrap().unwrap();
            // A handler gets the payload as JSON on both sides.
            std::hint::black_box(serde_json::from_slice::<Value>(&message.payload).unwrap());
            message.ack().await.unwrap();
        }
    });
    raw_concurrent(raw, count, true).await;
    receiving.await.unwrap();
    rate(count, started.elapsed())
}

async fn topiq_end_to_end(
    adapter: &JetStreamAdapter,
    topic: &TopicName,
    key: &SubscriptionKey,
    count: usize,
) -> f64 {
    let mut subscription = consume(adapter, key).await;
    let started = Instant::now();
    let receiving = tokio::spawn(async move {
        for _ in 0..count {
            let delivery = subscription.next().await.unwrap().unwrap();
            delivery.ack().await.unwrap();
        }
    });
    topiq_concurrent(adapter, topic, count).await;
    receiving.await.unwrap();
    rate(count, started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// One side of a latency run: how it publishes message `n`, and what its consumer received.
struct LatencySide {
    publish: Box<dyn Fn(usize) -> futures::future::BoxFuture<'static, ()> + Send + Sync>,
    received: Arc<std::sync::Mutex<Vec<(usize, Instant)>>>,
    receiving: tokio::task::JoinHandle<()>,
}

/// Publishes `RATE` msg/s on every side for `LATENCY_SECONDS`, the sides taking turns message
/// by message within each millisecond, and returns each side's publish → receipt latencies
/// (after one warm-up message per side).
async fn paced(sides: &[LatencySide]) -> Vec<Vec<Duration>> {
    // One message through each side first, so neither side's measurement includes its
    // consumer's start (getting the consumer, the first pull).
    for side in sides {
        (side.publish)(0).await;
        while side.received.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        side.received.lock().unwrap().clear();
    }
    let total = RATE * LATENCY_SECONDS;
    let mut sent_at = vec![vec![Instant::now(); total]; sides.len()];
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let per_tick = RATE / 1000;
    let mut n = 0;
    let mut publishes = Vec::with_capacity(total * sides.len());
    while n < total {
        ticker.tick().await;
        for _ in 0..per_tick {
            for (side, sent_at) in sides.iter().zip(&mut sent_at) {
                sent_at[n] = Instant::now();
                publishes.push(tokio::spawn((side.publish)(n)));
            }
            n += 1;
        }
    }
    for publish in publishes {
        publish.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for side in sides {
        while side.received.lock().unwrap().len() < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        side.receiving.abort();
    }
    sides
        .iter()
        .zip(&sent_at)
        .map(|(side, sent_at)| {
            let mut latencies: Vec<Duration> = side
                .received
                .lock()
                .unwrap()
                .iter()
                .map(|(n, at)| at.duration_since(sent_at[*n]))
                .collect();
            latencies.sort();
            latencies
        })
        .collect()
}

async fn raw_latency_side(raw: &Raw) -> LatencySide {
    let consumer = raw.consumer().await;
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    let receiving = tokio::spawn(async move {
        let mut messages = Raw::messages(consumer).await;
        while let Some(Ok(message)) = messages.next().await {
            let at = Instant::now();
            let n = serde_json::from_slice::<Value>(&message.payload).unwrap()["n"]
                .as_u64()
                .unwrap() as usize;
            sink.lock().unwrap().push((n, at));
            message.ack().await.unwrap();
        }
    });
    let (js, subject) = (raw.js.clone(), raw.subject.clone());
    let publish = Box::new(move |n| {
        let (js, subject) = (js.clone(), subject.clone());
        async move {
            js.publish_with_headers(subject, raw_headers(true), bytes(n))
                .await
                .unwrap()
                .await
                .unwrap();
        }
        .boxed()
    });
    LatencySide {
        publish,
        received,
        receiving,
    }
}

async fn topiq_latency_side(
    adapter: &JetStreamAdapter,
    topic: &TopicName,
    key: &SubscriptionKey,
) -> LatencySide {
    let mut subscription = consume(adapter, key).await;
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    let receiving = tokio::spawn(async move {
        while let Some(Ok(delivery)) = subscription.next().await {
            let at = Instant::now();
            let n = delivery.envelope().data["n"].as_u64().unwrap() as usize;
            sink.lock().unwrap().push((n, at));
            delivery.ack().await.unwrap();
        }
    });
    let (adapter, topic) = (adapter.clone(), topic.clone());
    let publish = Box::new(move |n| {
        let (adapter, topic) = (adapter.clone(), topic.clone());
        async move {
            adapter
                .publish(&topic, NewMessage::new(payload(n)))
                .await
                .unwrap();
        }
        .boxed()
    });
    LatencySide {
        publish,
        received,
        receiving,
    }
}

/// Latency samples of `LATENCY_ROUNDS` rounds per side, pooled per side (raw, topiq). In
/// turn, each round runs one side after the other (alternating which goes first); side by
/// side, both publish at once, each at `RATE`, so every stall of the machine lands on both.
async fn latency(url: &str, side_by_side: bool) -> (Vec<Duration>, Vec<Duration>) {
    let (mut raw_samples, mut topiq_samples) = (Vec::new(), Vec::new());
    let mode = if side_by_side {
        "side by side"
    } else {
        "in turn"
    };
    for round in 0..LATENCY_ROUNDS {
        let name = format!("latency{}{round}", if side_by_side { "s" } else { "t" });
        let raw_stream = raw(url, &name).await;
        let (adapter, topic, key) = topiq(url, &name).await;
        let raw_side = raw_latency_side(&raw_stream).await;
        let topiq_side = topiq_latency_side(&adapter, &topic, &key).await;
        let raw_first = round % 2 == 0;
        let (raw_round, topiq_round) = match (side_by_side, raw_first) {
            (true, true) => {
                let mut both = paced(&[raw_side, topiq_side]).await;
                let topiq = both.pop().unwrap();
                (both.pop().unwrap(), topiq)
            }
            (true, false) => {
                let mut both = paced(&[topiq_side, raw_side]).await;
                let raw = both.pop().unwrap();
                (raw, both.pop().unwrap())
            }
            (false, true) => {
                let raw = paced(&[raw_side]).await.pop().unwrap();
                (raw, paced(&[topiq_side]).await.pop().unwrap())
            }
            (false, false) => {
                let topiq = paced(&[topiq_side]).await.pop().unwrap();
                (paced(&[raw_side]).await.pop().unwrap(), topiq)
            }
        };
        adapter.close().await.ok();
        println!(
            "      {mode} round {}/{LATENCY_ROUNDS}: p50 raw {:.3} ms, topiq {:.3} ms; p99 raw {:.3} ms, topiq {:.3} ms",
            round + 1,
            ms(percentile(&raw_round, 0.5)),
            ms(percentile(&topiq_round, 0.5)),
            ms(percentile(&raw_round, 0.99)),
            ms(percentile(&topiq_round, 0.99))
        );
        raw_samples.extend(raw_round);
        topiq_samples.extend(topiq_round);
    }
    raw_samples.sort();
    topiq_samples.sort();
    (raw_samples, topiq_samples)
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is the first, utime the
    // twelfth and stime the thirteenth; both in clock ticks of 1/100 s on Linux.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

/// A measured rate and the CPU it cost per message, in the benchmark and in the server.
struct Measured {
    rate: f64,
    client_us: f64,
    server_us: f64,
}

async fn measured(
    server: u32,
    count: usize,
    run: impl std::future::Future<Output = f64>,
) -> Measured {
    let (client_before, server_before) = (cpu_seconds(std::process::id()), cpu_seconds(server));
    let rate = run.await;
    let per_message = |seconds: f64| seconds * 1e6 / count as f64;
    Measured {
        rate,
        client_us: per_message(cpu_seconds(std::process::id()) - client_before),
        server_us: per_message(cpu_seconds(server) - server_before),
    }
}

/// Medians over the rounds of one side.
fn median(mut runs: Vec<Measured>) -> Measured {
    let middle = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let mut rates: Vec<f64> = runs.iter().map(|run| run.rate).collect();
    let mut clients: Vec<f64> = runs.iter().map(|run| run.client_us).collect();
    let mut servers: Vec<f64> = runs.iter().map(|run| run.server_us).collect();
    runs.clear();
    Measured {
        rate: middle(&mut rates),
        client_us: middle(&mut clients),
        server_us: middle(&mut servers),
    }
}

/// Runs raw and topiq `ROUNDS` times each, alternating which goes first (the machine's
/// noise then hits both alike), and returns the median of each side.
async fn compare(
    server: u32,
    count: usize,
    raw: impl AsyncFn(usize) -> f64,
    topiq: impl AsyncFn(usize) -> f64,
) -> (Measured, Measured) {
    let (mut raw_runs, mut topiq_runs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            raw_runs.push(measured(server, count, raw(round)).await);
            topiq_runs.push(measured(server, count, topiq(round)).await);
        } else {
            topiq_runs.push(measured(server, count, topiq(round)).await);
            raw_runs.push(measured(server, count, raw(round)).await);
        }
        println!(
            "      round {}/{ROUNDS}: raw {:.0} msg/s, topiq {:.0} msg/s",
            round + 1,
            raw_runs[round].rate,
            topiq_runs[round].rate
        );
    }
    (median(raw_runs), median(topiq_runs))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = NatsServer::start();
    let url = server.url();
    let pid = server.pid();
    println!(
        "topiq JetStreamAdapter vs raw async-nats on one nats-server ({url}), 2 worker threads, window {WINDOW}, median of {ROUNDS} rounds"
    );
    let step = AtomicUsize::new(0);
    let progress = |what: &str| {
        println!("  [{}/6] {what}", step.fetch_add(1, Ordering::SeqCst) + 1);
    };
    runtime.block_on(async {
        let raw_publish = raw(&url, "publish").await;
        let (topiq_publish, topic_publish, _) = topiq(&url, "publish").await;
        progress("publish, 256 concurrent calls");
        let raw_plain = measured(
            pid,
            PIPELINED,
            raw_concurrent(&raw_publish, PIPELINED, false),
        )
        .await;
        let (raw_conc, topiq_conc) = compare(
            pid,
            PIPELINED,
            async |_| raw_concurrent(&raw_publish, PIPELINED, true).await,
            async |_| topiq_concurrent(&topiq_publish, &topic_publish, PIPELINED).await,
        )
        .await;
        progress("publish, batches of 256");
        let (raw_batch, topiq_batch) = compare(
            pid,
            PIPELINED,
            async |_| raw_batches(&raw_publish, PIPELINED).await,
            async |_| topiq_batches(&topiq_publish, &topic_publish, PIPELINED).await,
        )
        .await;
        progress("publish, one at a time");
        let (raw_one, topiq_one) =
            one_at_a_time(&raw_publish, &topiq_publish, &topic_publish, ONE_AT_A_TIME).await;

        progress("end to end");
        // A fresh stream per round: a dropped consumer's pending pull would hold messages
        // until their ack wait ran out.
        let (raw_e2e, topiq_e2e_rate) = compare(
            pid,
            END_TO_END,
            async |round| {
                let stream = raw(&url, &format!("e2e{round}")).await;
                raw_end_to_end(&stream, END_TO_END).await
            },
            async |round| {
                let (adapter, topic, key) = topiq(&url, &format!("e2e{round}")).await;
                let rate = topiq_end_to_end(&adapter, &topic, &key, END_TO_END).await;
                adapter.close().await.ok();
                rate
            },
        )
        .await;

        progress("latency at 5,000 msg/s, in turn");
        // Every round's samples go into one distribution per side: a stall of the machine
        // lands on either side alike over the rounds, instead of deciding one round's p99.
        let (raw_turns, topiq_turns) = latency(&url, false).await;
        progress("latency at 5,000 msg/s each, side by side");
        let (raw_pairs, topiq_pairs) = latency(&url, true).await;
        println!();
        println!("| measure | raw async-nats | topiq | topiq/raw |");
        println!("|---|---:|---:|---:|");
        let row = |what: &str, raw: f64, topiq: f64| {
            println!("| {what} | {raw:.0} | {topiq:.0} | {:.2} |", topiq / raw);
        };
        row(
            "publish, 256 concurrent calls (msg/s)",
            raw_conc.rate,
            topiq_conc.rate,
        );
        row(
            "publish, batches of 256 (msg/s)",
            raw_batch.rate,
            topiq_batch.rate,
        );
        row("publish, one at a time (msg/s)", raw_one, topiq_one);
        row(
            "end to end: publish → pull → parse → ack (msg/s)",
            raw_e2e.rate,
            topiq_e2e_rate.rate,
        );
        let latency_rows = |how: &str, raw: &[Duration], topiq: &[Duration]| {
            for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
                let (raw, topiq) = (ms(percentile(raw, p)), ms(percentile(topiq, p)));
                println!(
                    "| {name} latency at 5,000 msg/s, {how} (ms) | {raw:.3} | {topiq:.3} | {:+.3} ms |",
                    topiq - raw
                );
            }
        };
        latency_rows("side by side", &raw_pairs, &topiq_pairs);
        latency_rows("in turn", &raw_turns, &topiq_turns);
        println!(
            "| for scale: raw, 256 concurrent calls, no `Nats-Msg-Id` (msg/s) | {:.0} | | |",
            raw_plain.rate
        );
        println!();
        println!("CPU per message (µs), benchmark process / nats-server:");
        println!();
        println!("| measure | raw client | topiq client | raw server | topiq server |");
        println!("|---|---:|---:|---:|---:|");
        let cpu = |what: &str, raw: &Measured, topiq: &Measured| {
            println!(
                "| {what} | {:.1} | {:.1} | {:.1} | {:.1} |",
                raw.client_us, topiq.client_us, raw.server_us, topiq.server_us
            );
        };
        cpu("publish, 256 concurrent calls", &raw_conc, &topiq_conc);
        cpu("publish, batches of 256", &raw_batch, &topiq_batch);
        cpu("end to end", &raw_e2e, &topiq_e2e_rate);
        println!();
        let throughput_met = [
            topiq_conc.rate / raw_conc.rate,
            topiq_batch.rate / raw_batch.rate,
            topiq_one / raw_one,
            topiq_e2e_rate.rate / raw_e2e.rate,
        ]
        .iter()
        .all(|ratio| *ratio >= 0.9);
        let latency_met =
            ms(percentile(&topiq_pairs, 0.99)) - ms(percentile(&raw_pairs, 0.99)) <= 0.3;
        println!(
            "targets: throughput ≥ 0.9× raw → {}; p99 side by side ≤ raw + 0.3 ms → {}",
            if throughput_met { "met" } else { "NOT met" },
            if latency_met { "met" } else { "NOT met" }
        );
        topiq_publish.close().await.ok();
    });
    drop(server);
}
