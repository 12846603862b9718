//! topiq's JetStream adapter against raw async-nats, on one nats-server, in one run.
//!
//! `cargo bench -p topiq-integration-tests --bench jetstream` starts its own nats-server (the
//! machine's) and prints a table with topiq/raw ratios:
//! - publish throughput: 256 concurrent publish calls, batches of 256, and one at a time;
//! - end-to-end throughput: publish → pull → payload parsed as JSON → ack, 256 in flight;
//! - p50/p99 latency from publish to receipt at a fixed 5,000 msg/s, with the sides in turn
//!   and side by side (both publishing at once, each at 5,000 msg/s, so a stall of the
//!   machine lands on both; the target is judged there, on the median round), and a control:
//!   side by side with raw on both sides, the noise floor of the comparison. nats-server and
//!   the benchmark share the cores (on cores of their own, as the RabbitMQ benchmark runs,
//!   both sides' tails were longer and noisier).
//!
//! Both sides do the same work: every raw publish carries a `Nats-Msg-Id` (what makes
//! topiq's retried publish safe), both are driven by the same loop, and both consumers parse
//! the payload before acking. One extra row shows raw without `Nats-Msg-Id`, for scale.
//!
//! The machine's noise is spread over both sides: throughput and latency run in rounds that
//! alternate which side goes first (the table shows the median throughput, p50/p99 over every
//! latency sample, and the median of the rounds' p99 differences), and one-at-a-time
//! publishes take turns message by message.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use topiq_adapter::{Adapter, NewMessage, SubscriptionKey, TopicName};
use topiq_jetstream::{JetStreamAdapter, JetStreamConfig};
use topiq_testkit::NatsServer;

use support::{
    END_TO_END, LatencyRound, LatencySide, ONE_AT_A_TIME, PIPELINED, ROUNDS, Report, WINDOW, bytes,
    compare, declare, latency, measured, payload, rate, topiq_batches, topiq_concurrent,
    topiq_end_to_end, topiq_latency_side,
};

/// The allocator the `topiq` binary ships with, for both sides alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

async fn topiq(url: &str, name: &str) -> (JetStreamAdapter, TopicName, SubscriptionKey) {
    let adapter = JetStreamAdapter::connect(JetStreamConfig {
        url: Some(url.to_owned()),
        connection: topiq_jetstream::ConnectionOptions {
            prefix: "tq".to_owned(),
            ..Default::default()
        },
        ..JetStreamConfig::default()
    })
    .await
    .unwrap();
    let (topic, key) = declare(&adapter, name).await;
    (adapter, topic, key)
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
        println!("  [{}/7] {what}", step.fetch_add(1, Ordering::SeqCst) + 1);
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
        // until their ack wait ran out. All are created before the clock starts (a stream's
        // creation is not part of a message's cost).
        let (mut raw_streams, mut topiq_streams) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            raw_streams.push(raw(&url, &format!("e2e{round}")).await);
            topiq_streams.push(topiq(&url, &format!("e2e{round}")).await);
        }
        let (raw_e2e, topiq_e2e_rate) = compare(
            pid,
            END_TO_END,
            async |round| raw_end_to_end(&raw_streams[round], END_TO_END).await,
            async |round| {
                let (adapter, topic, key) = &topiq_streams[round];
                topiq_end_to_end(adapter, topic, key, END_TO_END).await
            },
        )
        .await;
        for (adapter, _, _) in &topiq_streams {
            adapter.close().await.ok();
        }

        progress("latency at 5,000 msg/s, in turn");
        let round = async |name: String| {
            let raw_stream = raw(&url, &name).await;
            let (adapter, topic, key) = topiq(&url, &name).await;
            LatencyRound {
                raw: raw_latency_side(&raw_stream).await,
                topiq: topiq_latency_side(&adapter, &topic, &key).await,
                finish: async move {
                    adapter.close().await.ok();
                }
                .boxed(),
            }
        };
        // Every round's samples go into one distribution per side: a stall of the machine
        // lands on either side alike over the rounds, instead of deciding one round's p99.
        let in_turn = latency(false, round).await;
        progress("latency at 5,000 msg/s each, side by side");
        let side_by_side = latency(true, round).await;
        progress("control: raw vs raw, side by side");
        let control = latency(true, async |name: String| {
            let (first, second) = (raw(&url, &name).await, raw(&url, &format!("{name}c")).await);
            LatencyRound {
                raw: raw_latency_side(&first).await,
                topiq: raw_latency_side(&second).await,
                finish: async {}.boxed(),
            }
        })
        .await;
        Report {
            raw_name: "raw async-nats",
            concurrent: (raw_conc, topiq_conc),
            batches: (raw_batch, topiq_batch),
            one_at_a_time: (raw_one, topiq_one),
            end_to_end: (raw_e2e, topiq_e2e_rate),
            side_by_side,
            in_turn,
            control,
            for_scale: Some((
                "raw, 256 concurrent calls, no `Nats-Msg-Id`",
                raw_plain.rate,
            )),
        }
        .print();
        topiq_publish.close().await.ok();
    });
    drop(server);
}
