//! topiq's JetStream adapter against raw async-nats, on one nats-server, in one run.
//!
//! `cargo bench -p topiq-integration-tests --bench jetstream` starts its own nats-server (the
//! machine's) and prints a table with topiq/raw ratios:
//! - publish throughput, pipelined (a window of 256 unacknowledged publishes) and one at a time;
//! - end-to-end throughput: publish → pull → payload parsed as JSON → ack, 256 in flight;
//! - p50/p99 latency from publish to receipt at a fixed 5,000 msg/s.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use serde_json::{Value, json};
use topiq_adapter::{
    Adapter, ConsumeOptions, NewMessage, SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec,
    TriggerName,
};
use topiq_integration_tests::NatsServer;
use topiq_jetstream::{JetStreamAdapter, JetStreamConfig};

const WINDOW: usize = 256;
const PIPELINED: usize = 20_000;
const ONE_AT_A_TIME: usize = 2_000;
const END_TO_END: usize = 20_000;
const RATE: usize = 5_000;
const LATENCY_SECONDS: usize = 3;

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
    let subject = format!("raw.{name}");
    let stream = format!("RAW_{name}");
    js.create_stream(stream::Config {
        name: stream.clone(),
        subjects: vec![subject.clone()],
        retention: stream::RetentionPolicy::Interest,
        ..Default::default()
    })
    .await
    .unwrap();
    Raw {
        js,
        subject,
        stream,
    }
}

impl Raw {
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
        prefix: format!("bench{name}"),
        ..JetStreamConfig::default()
    })
    .await
    .unwrap();
    let topic = TopicName::new(format!("bench.{name}")).unwrap();
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

async fn raw_pipelined(raw: &Raw, count: usize) -> f64 {
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for n in 0..count {
        pending.push_back(raw.js.publish(raw.subject.clone(), bytes(n)).await.unwrap());
        if pending.len() >= WINDOW {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for ack in pending {
        ack.await.unwrap();
    }
    rate(count, started.elapsed())
}

/// Keeps `WINDOW` publishes in flight, each one `publish` call (which returns after its
/// acknowledgement), the way concurrent application tasks enqueue.
async fn topiq_pipelined(adapter: &JetStreamAdapter, topic: &TopicName, count: usize) -> f64 {
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

/// The raw pipeline with the one header topiq's retry safety needs: `Nats-Msg-Id`.
async fn raw_pipelined_with_msg_id(raw: &Raw, count: usize) -> f64 {
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for n in 0..count {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", topiq_adapter::MessageId::generate().as_str());
        pending.push_back(
            raw.js
                .publish_with_headers(raw.subject.clone(), headers, bytes(n))
                .await
                .unwrap(),
        );
        if pending.len() >= WINDOW {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for ack in pending {
        ack.await.unwrap();
    }
    rate(count, started.elapsed())
}

async fn raw_one_at_a_time(raw: &Raw, count: usize) -> f64 {
    let started = Instant::now();
    for n in 0..count {
        raw.js
            .publish(raw.subject.clone(), bytes(n))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    rate(count, started.elapsed())
}

async fn topiq_one_at_a_time(adapter: &JetStreamAdapter, topic: &TopicName, count: usize) -> f64 {
    let started = Instant::now();
    for n in 0..count {
        adapter
            .publish(topic, NewMessage::new(payload(n)))
            .await
            .unwrap();
    }
    rate(count, started.elapsed())
}

async fn raw_end_to_end(raw: &Raw, count: usize) -> f64 {
    let consumer = raw.consumer().await;
    let started = Instant::now();
    let receiving = tokio::spawn(async move {
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(WINDOW)
            .messages()
            .await
            .unwrap();
        for _ in 0..count {
            let message = messages.next().await.unwrap().unwrap();
            // A handler gets the payload as JSON on both sides.
            std::hint::black_box(serde_json::from_slice::<Value>(&message.payload).unwrap());
            message.ack().await.unwrap();
        }
    });
    raw_pipelined(raw, count).await;
    receiving.await.unwrap();
    rate(count, started.elapsed())
}

async fn topiq_end_to_end(
    adapter: &JetStreamAdapter,
    topic: &TopicName,
    key: &SubscriptionKey,
    count: usize,
) -> f64 {
    let mut subscription = adapter
        .consume(
            key,
            ConsumeOptions {
                prefetch: WINDOW as u32,
            },
        )
        .await
        .unwrap();
    let started = Instant::now();
    let receiving = tokio::spawn(async move {
        for _ in 0..count {
            let delivery = subscription.next().await.unwrap().unwrap();
            delivery.ack().await.unwrap();
        }
    });
    topiq_pipelined(adapter, topic, count).await;
    receiving.await.unwrap();
    rate(count, started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Publishes `RATE` msg/s for `LATENCY_SECONDS` with `publish(n)`, records publish → receipt.
async fn paced<P, Fut>(
    publish: P,
    received: Arc<std::sync::Mutex<Vec<(usize, Instant)>>>,
) -> (Duration, Duration)
where
    P: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let total = RATE * LATENCY_SECONDS;
    let mut sent_at = vec![Instant::now(); total];
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let per_tick = RATE / 1000;
    let mut n = 0;
    let mut publishes = Vec::with_capacity(total);
    while n < total {
        ticker.tick().await;
        for _ in 0..per_tick {
            sent_at[n] = Instant::now();
            publishes.push(tokio::spawn(publish(n)));
            n += 1;
        }
    }
    for publish in publishes {
        publish.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies: Vec<Duration> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(n, at)| at.duration_since(sent_at[*n]))
        .collect();
    latencies.sort();
    (percentile(&latencies, 0.5), percentile(&latencies, 0.99))
}

async fn raw_latency(raw: &Raw) -> (Duration, Duration) {
    let consumer = raw.consumer().await;
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    let receiving = tokio::spawn(async move {
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(WINDOW)
            .messages()
            .await
            .unwrap();
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
    let result = paced(
        move |n| {
            let (js, subject) = (js.clone(), subject.clone());
            async move {
                js.publish(subject, bytes(n)).await.unwrap().await.unwrap();
            }
        },
        received,
    )
    .await;
    receiving.abort();
    result
}

async fn topiq_latency(
    adapter: &JetStreamAdapter,
    topic: &TopicName,
    key: &SubscriptionKey,
) -> (Duration, Duration) {
    let mut subscription = adapter
        .consume(
            key,
            ConsumeOptions {
                prefetch: WINDOW as u32,
            },
        )
        .await
        .unwrap();
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
    let (adapter_clone, topic_clone) = (adapter.clone(), topic.clone());
    let result = paced(
        move |n| {
            let (adapter, topic) = (adapter_clone.clone(), topic_clone.clone());
            async move {
                adapter
                    .publish(&topic, NewMessage::new(payload(n)))
                    .await
                    .unwrap();
            }
        },
        received,
    )
    .await;
    receiving.abort();
    result
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
    println!(
        "topiq JetStreamAdapter vs raw async-nats on one nats-server ({url}), 2 worker threads, window {WINDOW}"
    );
    let step = AtomicUsize::new(0);
    let progress = |what: &str| {
        println!("  [{}/8] {what}", step.fetch_add(1, Ordering::SeqCst) + 1);
    };
    runtime.block_on(async {
        let raw_publish = raw(&url, "publish").await;
        let (topiq_publish, topic_publish, _) = topiq(&url, "publish").await;
        progress("publish, pipelined: raw");
        let raw_pipe = raw_pipelined(&raw_publish, PIPELINED).await;
        let raw_pipe_id = raw_pipelined_with_msg_id(&raw_publish, PIPELINED).await;
        progress("publish, pipelined: topiq");
        let topiq_pipe = topiq_pipelined(&topiq_publish, &topic_publish, PIPELINED).await;
        progress("publish, one at a time: raw");
        let raw_one = raw_one_at_a_time(&raw_publish, ONE_AT_A_TIME).await;
        progress("publish, one at a time: topiq");
        let topiq_one = topiq_one_at_a_time(&topiq_publish, &topic_publish, ONE_AT_A_TIME).await;

        let raw_e2e_stream = raw(&url, "e2e").await;
        let (topiq_e2e, topic_e2e, key_e2e) = topiq(&url, "e2e").await;
        progress("end to end: raw");
        let raw_e2e = raw_end_to_end(&raw_e2e_stream, END_TO_END).await;
        progress("end to end: topiq");
        let topiq_e2e_rate = topiq_end_to_end(&topiq_e2e, &topic_e2e, &key_e2e, END_TO_END).await;

        let raw_latency_stream = raw(&url, "latency").await;
        let (topiq_lat, topic_lat, key_lat) = topiq(&url, "latency").await;
        progress("latency at 5,000 msg/s: raw");
        let (raw_p50, raw_p99) = raw_latency(&raw_latency_stream).await;
        progress("latency at 5,000 msg/s: topiq");
        let (topiq_p50, topiq_p99) = topiq_latency(&topiq_lat, &topic_lat, &key_lat).await;

        println!();
        println!("| measure | raw async-nats | topiq | topiq/raw |");
        println!("|---|---:|---:|---:|");
        println!("| publish, pipelined (msg/s) | {raw_pipe:.0} | {topiq_pipe:.0} | {:.2} |", topiq_pipe / raw_pipe);
        println!("| publish, pipelined, raw with `Nats-Msg-Id` (msg/s) | {raw_pipe_id:.0} | {topiq_pipe:.0} | {:.2} |", topiq_pipe / raw_pipe_id);
        println!("| publish, one at a time (msg/s) | {raw_one:.0} | {topiq_one:.0} | {:.2} |", topiq_one / raw_one);
        println!("| end to end: publish → pull → ack (msg/s) | {raw_e2e:.0} | {topiq_e2e_rate:.0} | {:.2} |", topiq_e2e_rate / raw_e2e);
        println!("| p50 latency at 5,000 msg/s (ms) | {:.3} | {:.3} | +{:.3} ms |", ms(raw_p50), ms(topiq_p50), ms(topiq_p50) - ms(raw_p50));
        println!("| p99 latency at 5,000 msg/s (ms) | {:.3} | {:.3} | +{:.3} ms |", ms(raw_p99), ms(topiq_p99), ms(topiq_p99) - ms(raw_p99));
        println!();
        let throughput_met = topiq_pipe / raw_pipe >= 0.9 && topiq_e2e_rate / raw_e2e >= 0.9;
        let latency_met = ms(topiq_p99) - ms(raw_p99) <= 0.3;
        println!("targets: throughput ≥ 0.9× raw → {}; p99 ≤ raw + 0.3 ms → {}",
            if throughput_met { "met" } else { "NOT met" },
            if latency_met { "met" } else { "NOT met" });
        for adapter in [topiq_publish, topiq_e2e, topiq_lat] {
            adapter.close().await.ok();
        }
    });
    drop(server);
}
