//! topiq's RabbitMQ adapter against raw lapin, on one RabbitMQ node, in one run.
//!
//! `cargo bench -p topiq-integration-tests --bench rabbitmq` starts a RabbitMQ node of its own
//! (free port, temporary data directory) and prints a table with topiq/raw ratios, for quorum
//! queues:
//! - publish throughput with publisher confirms: 256 concurrent publish calls, batches of 256,
//!   and one at a time;
//! - end-to-end throughput: publish → consume → payload parsed as JSON → ack, topiq's prefetch
//!   equal to raw's (256);
//! - p50/p99 latency from publish to receipt at a fixed 5,000 msg/s, side by side (both sides
//!   at once, each at 5,000 msg/s; the target is judged there, on the median round) and in
//!   turn, and a control: side by side with raw on both sides, the noise floor of the
//!   comparison. During the latency runs the node and the benchmark run on cores of their own
//!   (`taskset`): sharing them, the OS preempts one for the other mid-message and that, not
//!   either client, sets RabbitMQ's tail.
//!
//! Both sides do the same work: raw publishes persistent, `mandatory` messages with a message
//! id and an enqueue-time header through a topic exchange to a quorum queue with the same
//! arguments as topiq's, awaits each confirm, and its consumer parses the payload before
//! acking. Names have the same length on both sides.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::Value;
use topiq_adapter::{Adapter, NewMessage, SubscriptionKey, TopicName};
use topiq_rabbitmq::RabbitMqAdapter;
use topiq_testkit::{RabbitNode, raw_rabbit};

use support::{
    END_TO_END, LatencyRound, LatencySide, ONE_AT_A_TIME, PIPELINED, ROUNDS, Report, SeparateCores,
    WINDOW, bytes, compare, latency, payload, rate, topiq_batches, topiq_concurrent,
    topiq_end_to_end, topiq_latency_side,
};

/// The allocator the `topiq` binary ships with, for both sides alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Raw lapin: a confirming channel, a topic exchange and a quorum queue bound to it.
#[derive(Clone)]
struct Raw {
    connection: Arc<Connection>,
    publisher: Channel,
    routing_key: String,
    queue: String,
}

async fn raw(url: &str, name: &str) -> Raw {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let publisher = connection.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // Names as long as topiq's (`tq`, `tq:t:<name>:t`).
    let queue = format!("rw:t:{name}:t");
    raw_rabbit::declare_like_topiq(&publisher, "rw", &queue, name)
        .await
        .unwrap();
    Raw {
        connection: Arc::new(connection),
        publisher,
        routing_key: name.to_owned(),
        queue,
    }
}

impl Raw {
    /// Sends message `n`; the future it returns resolves with the confirm.
    async fn send(&self, n: usize) -> lapin::PublisherConfirm {
        self.publisher
            .basic_publish(
                "rw".into(),
                self.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &bytes(n),
                raw_rabbit::properties_like_topiq(),
            )
            .await
            .unwrap()
    }

    async fn publish(&self, n: usize) {
        let confirmation = self.send(n).await.await.unwrap();
        assert!(confirmation.is_ack());
    }

    /// A consumer of the queue, `WINDOW` unacked at most (as topiq's prefetch).
    async fn consumer(&self) -> lapin::Consumer {
        let channel = self.connection.create_channel().await.unwrap();
        channel
            .basic_qos(WINDOW as u16, BasicQosOptions::default())
            .await
            .unwrap();
        channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap()
    }
}

async fn topiq(url: &str, name: &str) -> (RabbitMqAdapter, TopicName, SubscriptionKey) {
    support::rabbitmq_topiq(url, name).await
}

/// Keeps `WINDOW` publishes in flight, each a publish awaiting its confirm.
async fn raw_concurrent(raw: &Raw, count: usize) -> f64 {
    let started = Instant::now();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    for n in 0..count {
        if in_flight.len() >= WINDOW {
            in_flight.next().await.unwrap();
        }
        let raw = raw.clone();
        in_flight.push(async move { raw.publish(n).await });
    }
    while in_flight.next().await.is_some() {}
    rate(count, started.elapsed())
}

/// `WINDOW` publishes at once (each sent and confirmed), awaited together, batch after batch:
/// what topiq's `publish_batch` does. (Sending 256 one after the other before awaiting any
/// confirm is slower with lapin: each send waits for its frame to be written.)
async fn raw_batches(raw: &Raw, count: usize) -> f64 {
    let started = Instant::now();
    let mut n = 0;
    while n < count {
        let batch = (n..(n + WINDOW).min(count)).map(|i| raw.publish(i));
        n += batch.len();
        futures::future::join_all(batch).await;
    }
    rate(count, started.elapsed())
}

/// One publish at a time, raw and topiq taking turns message by message.
async fn one_at_a_time(
    raw: &Raw,
    adapter: &RabbitMqAdapter,
    topic: &TopicName,
    count: usize,
) -> (f64, f64) {
    let (mut raw_time, mut topiq_time) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for n in 0..count {
        let started = Instant::now();
        raw.publish(n).await;
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
    let mut consumer = raw.consumer().await;
    let started = Instant::now();
    let receiving = tokio::spawn(async move {
        for _ in 0..count {
            let delivery = consumer.next().await.unwrap().unwrap();
            std::hint::black_box(serde_json::from_slice::<Value>(&delivery.data).unwrap());
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    });
    raw_concurrent(raw, count).await;
    receiving.await.unwrap();
    rate(count, started.elapsed())
}

async fn raw_latency_side(raw: &Raw) -> LatencySide {
    let mut consumer = raw.consumer().await;
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    let receiving = tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let at = Instant::now();
            let n = serde_json::from_slice::<Value>(&delivery.data).unwrap()["n"]
                .as_u64()
                .unwrap() as usize;
            sink.lock().unwrap().push((n, at));
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    });
    let raw = raw.clone();
    let publish = Box::new(move |n| {
        let raw = raw.clone();
        async move { raw.publish(n).await }.boxed()
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
    let node = RabbitNode::start();
    let url = node.url();
    let pid = node.pid();
    println!(
        "topiq RabbitMQAdapter vs raw lapin on one RabbitMQ node ({url}), quorum queues, 2 worker threads, window {WINDOW}, median of {ROUNDS} rounds"
    );
    let step = AtomicUsize::new(0);
    let progress = |what: &str| {
        println!("  [{}/7] {what}", step.fetch_add(1, Ordering::SeqCst) + 1);
    };
    runtime.block_on(async {
        let raw_publish = raw(&url, "publish").await;
        let (topiq_publish, topic_publish, _) = topiq(&url, "publish").await;
        progress("publish, 256 concurrent calls");
        let concurrent = compare(
            pid,
            PIPELINED,
            async |_| raw_concurrent(&raw_publish, PIPELINED).await,
            async |_| topiq_concurrent(&topiq_publish, &topic_publish, PIPELINED).await,
        )
        .await;
        progress("publish, batches of 256");
        let batches = compare(
            pid,
            PIPELINED,
            async |_| raw_batches(&raw_publish, PIPELINED).await,
            async |_| topiq_batches(&topiq_publish, &topic_publish, PIPELINED).await,
        )
        .await;
        progress("publish, one at a time");
        let one = one_at_a_time(&raw_publish, &topiq_publish, &topic_publish, ONE_AT_A_TIME).await;

        progress("end to end");
        // A fresh queue per round, so each round starts empty; all declared before the
        // clock starts (a queue's creation is not part of a message's cost).
        let (mut raw_queues, mut topiq_queues) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            raw_queues.push(raw(&url, &format!("e2e{round}")).await);
            topiq_queues.push(topiq(&url, &format!("e2e{round}")).await);
        }
        let end_to_end = compare(
            pid,
            END_TO_END,
            async |round| raw_end_to_end(&raw_queues[round], END_TO_END).await,
            async |round| {
                let (adapter, topic, key) = &topiq_queues[round];
                topiq_end_to_end(adapter, topic, key, END_TO_END).await
            },
        )
        .await;
        for (adapter, _, _) in &topiq_queues {
            adapter.close().await.ok();
        }

        progress("latency at 5,000 msg/s, in turn");
        let cores = SeparateCores::split(pid);
        let round = async |name: String| {
            let raw_queue = raw(&url, &name).await;
            let (adapter, topic, key) = topiq(&url, &name).await;
            LatencyRound {
                raw: raw_latency_side(&raw_queue).await,
                topiq: topiq_latency_side(&adapter, &topic, &key).await,
                finish: async move {
                    adapter.close().await.ok();
                    raw_queue.connection.close(200, "done".into()).await.ok();
                }
                .boxed(),
            }
        };
        let in_turn = latency(false, round).await;
        progress("latency at 5,000 msg/s each, side by side");
        let side_by_side = latency(true, round).await;
        progress("control: raw vs raw, side by side");
        let control = latency(true, async |name: String| {
            let (first, second) = (raw(&url, &name).await, raw(&url, &format!("{name}c")).await);
            LatencyRound {
                raw: raw_latency_side(&first).await,
                topiq: raw_latency_side(&second).await,
                finish: async move {
                    first.connection.close(200, "done".into()).await.ok();
                    second.connection.close(200, "done".into()).await.ok();
                }
                .boxed(),
            }
        })
        .await;
        drop(cores);
        Report {
            raw_name: "raw lapin",
            concurrent,
            batches,
            one_at_a_time: one,
            end_to_end,
            side_by_side,
            in_turn,
            control,
            for_scale: None,
        }
        .print();
        topiq_publish.close().await.ok();
    });
    drop(node);
}
