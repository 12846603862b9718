//! Throughput through the queue module on the in-memory adapter: enqueue → trigger → handler →
//! ack, next to the adapter alone (publish → deliver → ack) in the same run, and the same
//! through the runtime with tracing on (every publish and process span recorded by
//! OpenTelemetry and handed to its batch processor, whose exporter discards them) on a second
//! runtime whose threads have that subscriber, rounds alternating with tracing off.
//!
//! Last, priority's overhead: a topic with three priority levels against one without.
//!
//! Run with `cargo bench -p topiq-server`; `TOPIQ_BENCH_MESSAGES` sets the messages per round
//! (default 200,000). Every pipeline's producer waits while `TOPIQ_BENCH_WINDOW` messages
//! (default 256, as issue 20 measured) are published and not yet handled; 0 lets it run free,
//! building a backlog. To profile one pipeline, `TOPIQ_BENCH_ONLY` runs it alone for its
//! rounds: `adapter`, `runtime`, `unrecorded` (the runtime with `runs: false`), `omniqueue`
//! (each message built, as topiq's producer builds each), `omniqueue-by-reference` (the
//! template serialized by reference, no message built) or `apalis` (apalis's in-memory
//! storage and a worker).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis_core::backend::memory::{MemorySink, MemoryStorage, MemoryStorageError};
use apalis_core::task::Task;
use apalis_core::worker::builder::WorkerBuilder;
use futures::{SinkExt, StreamExt};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use serde_json::{Value, json};
use tokio::sync::Notify;
use topiq::{Config, Functions, Message, QueueModule};
use topiq_adapter::{
    Adapter, ConsumeOptions, NewMessage, SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec,
    TriggerName,
};
use topiq_memory::BuiltinQueueAdapter;
use tracing_subscriber::layer::SubscriberExt;

/// The same allocator as the `topiq` binary (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 5;

/// Spans the exporter got (and dropped).
static EXPORTED: AtomicUsize = AtomicUsize::new(0);

/// An exporter that drops what it gets: what remains is the cost of recording the spans.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        EXPORTED.fetch_add(batch.len(), Ordering::Relaxed);
        Ok(())
    }
}

/// A runtime like the plain one whose threads record spans into OpenTelemetry.
fn traced_runtime() -> (
    tokio::runtime::Runtime,
    SdkTracerProvider,
    tracing::Dispatch,
) {
    let processor = BatchSpanProcessor::builder(Discard)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(65_536)
                .with_scheduled_delay(Duration::from_millis(100))
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .build();
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry().with(topiq::span_layer(provider.tracer("bench"))),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(move || {
            // The guard lives as long as the thread: this runtime's threads keep the subscriber.
            std::mem::forget(tracing::dispatcher::set_default(&dispatch));
        })
        .enable_all()
        .build()
        .unwrap();
    // With a single subscriber registered, `tracing` caches the first answer to "is this
    // span recorded?" for every thread: the plain runtime's "no". A second one (that records
    // nothing) makes it ask each thread's own subscriber. Kept for the whole run.
    let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    (runtime, provider, second)
}
const CONCURRENCY: u32 = 100;

/// The producer's window (`TOPIQ_BENCH_WINDOW`, 0 = none): how many messages it may have
/// published that the consumer has not yet handled. 256 by default, as issue 20 measured.
static WINDOW: AtomicUsize = AtomicUsize::new(256);

/// Holds a producer back while [`WINDOW`] messages are unhandled (no limit when it is 0).
#[derive(Clone)]
struct Window(Option<Arc<tokio::sync::Semaphore>>);

impl Window {
    fn new() -> Self {
        match WINDOW.load(Ordering::Relaxed) {
            0 => Window(None),
            size => Window(Some(Arc::new(tokio::sync::Semaphore::new(size)))),
        }
    }

    async fn enter(&self) {
        if let Some(room) = &self.0 {
            room.acquire().await.unwrap().forget();
        }
    }

    fn leave(&self) {
        if let Some(room) = &self.0 {
            room.add_permits(1);
        }
    }
}

/// Counts the messages a pipeline's handler took, and tells when the last of `count` came.
#[derive(Clone)]
struct Tally {
    count: usize,
    handled: Arc<AtomicUsize>,
    finished: Arc<Notify>,
}

impl Tally {
    fn new(count: usize) -> Self {
        Tally {
            count,
            handled: Arc::new(AtomicUsize::new(0)),
            finished: Arc::new(Notify::new()),
        }
    }

    /// Notes one message handled.
    fn one(&self) {
        if self.handled.fetch_add(1, Ordering::Relaxed) + 1 == self.count {
            self.finished.notify_one();
        }
    }

    /// Done once all `count` messages are handled.
    async fn all(&self) {
        self.finished.notified().await;
    }
}

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
        .consume(&key, ConsumeOptions::with_prefetch(CONCURRENCY))
        .await
        .unwrap();
    let started = Instant::now();
    let window = Window::new();
    let consumer = {
        let window = window.clone();
        tokio::spawn(async move {
            for _ in 0..count {
                let delivery = subscription.next().await.unwrap().unwrap();
                delivery.ack().await.unwrap();
                window.leave();
            }
        })
    };
    let producer = {
        let (adapter, template) = (adapter.clone(), template.clone());
        tokio::spawn(async move {
            for _ in 0..count {
                window.enter().await;
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

/// How the peer's producer gets each message it sends.
#[derive(Clone, Copy)]
enum Sent {
    /// Built for each send (a clone of the template), as topiq's producer builds each message
    /// it enqueues: the work an application does for a message it sends.
    Built,
    /// The template itself, serialized by reference: no message built (the row this
    /// benchmark printed before 2026-12-07).
    ByReference,
}

/// The peer: omniqueue's in-memory backend (0.3), each message sent as JSON (built, or the
/// template by reference: `sent`), parsed back into a `Value` for a handler that does nothing,
/// then acknowledged.
async fn omniqueue(count: usize, template: &Value, sent: Sent) -> Duration {
    let (producer, mut consumer) = omniqueue::backends::InMemoryBackend::builder()
        .build_pair()
        .await
        .unwrap();
    let started = Instant::now();
    let window = Window::new();
    let consumer = {
        let window = window.clone();
        tokio::spawn(async move {
            for _ in 0..count {
                let delivery = consumer.receive().await.unwrap();
                let data: Value = delivery.payload_serde_json().unwrap().unwrap();
                std::hint::black_box(&data);
                delivery.ack().await.map_err(|(err, _)| err).unwrap();
                window.leave();
            }
        })
    };
    let template = template.clone();
    let producer = tokio::spawn(async move {
        for _ in 0..count {
            window.enter().await;
            match sent {
                Sent::Built => {
                    let message = template.clone();
                    producer.send_serde_json(&message).await.unwrap();
                }
                Sent::ByReference => producer.send_serde_json(&template).await.unwrap(),
            }
        }
    });
    consumer.await.unwrap();
    producer.await.unwrap();
    started.elapsed()
}

/// The second peer: apalis (1.0)'s in-memory storage and a worker, each message built and
/// pushed as a task (the `Value` itself, as topiq's in-memory adapter hands it over: no JSON),
/// run by a handler that does nothing. A worker holds apalis's storage, so the producer
/// pushes through a sink of its own into the storage's channel (`new_with`), as an
/// application that publishes while its worker runs does. (A clone of the storage's own sink
/// would share its lock, which the worker takes on another thread to check the channel, and
/// apalis's `start_send` panics when it finds that lock taken.)
async fn apalis(count: usize, template: &Value) -> Duration {
    type Sender = futures::channel::mpsc::UnboundedSender<Task<Value>>;
    let sink_of = |sender: Sender| {
        let sink = Box::new(sender.sink_map_err(MemoryStorageError::from))
            as Box<
                dyn futures::Sink<Task<Value>, Error = MemoryStorageError> + Send + Sync + Unpin,
            >;
        MemorySink::new(Arc::new(futures::lock::Mutex::new(sink)))
    };
    let (sender, receiver) = futures::channel::mpsc::unbounded::<Task<Value>>();
    let storage = MemoryStorage::new_with(sink_of(sender.clone()), receiver.boxed());
    let sink = sink_of(sender);
    let tally = Tally::new(count);
    let window = Window::new();
    let worker = {
        let (tally, window) = (tally.clone(), window.clone());
        WorkerBuilder::new("bench")
            .backend(storage)
            .build(move |task: Value| {
                std::hint::black_box(&task);
                window.leave();
                tally.one();
                async { Ok::<(), std::io::Error>(()) }
            })
    };
    let worker = tokio::spawn(worker.run());
    let started = Instant::now();
    let done = tally.all();
    let template = template.clone();
    let producer = tokio::spawn(async move {
        let mut sink = sink;
        for _ in 0..count {
            window.enter().await;
            sink.send(Task::new(template.clone())).await.unwrap();
        }
    });
    done.await;
    producer.await.unwrap();
    let elapsed = started.elapsed();
    worker.abort();
    elapsed
}

async fn through_runtime(count: usize, template: &Value) -> Duration {
    through_levels(count, template, 1).await
}

/// [`through_runtime`] with the trigger's runs not recorded (`runs: false`).
async fn through_runtime_unrecorded(count: usize, template: &Value) -> Duration {
    through_module(count, template, 1, false).await
}

async fn through_levels(count: usize, template: &Value, levels: u32) -> Duration {
    through_module(count, template, levels, true).await
}

/// [`through_runtime`] on a topic with `levels` priority levels, the messages spread evenly
/// over them, runs recorded in memory (the default) or not.
async fn through_module(count: usize, template: &Value, levels: u32, runs: bool) -> Duration {
    let yaml = format!(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
      topics:
        bench: {{ priority_levels: {levels} }}
triggers:
  bench:
    type: queue
    function: bench.noop
    config:
      topic: bench
      concurrency: {CONCURRENCY}
      runs: {runs}
"
    );
    let config = Config::from_yaml_with_variables(&yaml, "bench.yaml", &HashMap::new()).unwrap();
    let tally = Tally::new(count);
    let window = Window::new();
    let mut functions = Functions::new();
    {
        let (tally, window) = (tally.clone(), window.clone());
        functions.register("bench.noop", move |message: Message| {
            std::hint::black_box(message.data());
            window.leave();
            tally.one();
            async { Ok(()) }
        });
    }
    let module = QueueModule::new(config, functions).await.unwrap();
    let topic = TopicName::new("bench").unwrap();
    let workers = module.start_workers();
    let started = Instant::now();
    let done = tally.all();
    let producer = {
        let (module, template) = (module.clone(), template.clone());
        tokio::spawn(async move {
            for n in 0..count {
                window.enter().await;
                let lane = u32::try_from(n).unwrap() % levels;
                module
                    .publish(&topic, NewMessage::new(template.clone()).lane(lane))
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

/// Runs `pipeline` alone for [`ROUNDS`] rounds, printing each round's rate (for a profiler).
async fn only(pipeline: &str, count: usize, template: &Value) {
    for round in 1..=ROUNDS {
        let elapsed = match pipeline {
            "adapter" => adapter_only(count, template).await,
            "runtime" => through_runtime(count, template).await,
            "unrecorded" => through_runtime_unrecorded(count, template).await,
            "omniqueue" => omniqueue(count, template, Sent::Built).await,
            "omniqueue-by-reference" => omniqueue(count, template, Sent::ByReference).await,
            "apalis" => apalis(count, template).await,
            other => {
                panic!(
                    "TOPIQ_BENCH_ONLY={other}: pick adapter, runtime, unrecorded, omniqueue, omniqueue-by-reference or apalis"
                )
            }
        };
        println!(
            "  round {round}/{ROUNDS}: {pipeline} {:>10.0} msg/s",
            rate(count, elapsed)
        );
    }
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
    if let Some(size) = std::env::var("TOPIQ_BENCH_WINDOW")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        WINDOW.store(size, Ordering::Relaxed);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let template = message();
    if let Ok(pipeline) = std::env::var("TOPIQ_BENCH_ONLY") {
        runtime.block_on(only(&pipeline, count, &template));
        return;
    }
    println!(
        "topiq runtime throughput: {count} messages per round, {ROUNDS} rounds, 2 worker threads, concurrency {CONCURRENCY}, a handler that does nothing, mimalloc, {}",
        match WINDOW.load(Ordering::Relaxed) {
            0 => "no window (the producer runs free: a backlog)".to_owned(),
            size => format!("a window of {size} (the producer waits while {size} are unhandled)"),
        }
    );
    let pipelines = runtime.block_on(pipelines(count, &template));
    let tracing = tracing_off_and_on(&runtime, count, &template);
    pipelines.print();
    tracing.print();
    println!(
        "target: ≥ 500,000 msg/s through the runtime → {}",
        if pipelines.module >= 500_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    priority_overhead(&runtime, count, &template);
}

/// Part 1's medians, msg/s.
struct Pipelines {
    adapter: f64,
    module: f64,
    unrecorded: f64,
    peer: f64,
    peer_by_reference: f64,
    apalis: f64,
}

/// Part 1, with no subscriber at all (how the target is judged): adapter alone vs runtime,
/// and omniqueue's in-memory backend and apalis's as the peers, rounds alternating.
async fn pipelines(count: usize, template: &Value) -> Pipelines {
    adapter_only(count / 10, template).await;
    through_runtime(count / 10, template).await;
    omniqueue(count / 10, template, Sent::Built).await;
    apalis(count / 10, template).await;
    let mut rates: [Vec<f64>; 6] = Default::default();
    for round in 1..=ROUNDS {
        let a = rate(count, adapter_only(count, template).await);
        let m = rate(count, through_runtime(count, template).await);
        let u = rate(count, through_runtime_unrecorded(count, template).await);
        let p = rate(count, omniqueue(count, template, Sent::Built).await);
        let r = rate(count, omniqueue(count, template, Sent::ByReference).await);
        let z = rate(count, apalis(count, template).await);
        println!(
            "  round {round}/{ROUNDS}: adapter alone {a:>10.0}, runtime {m:>10.0}, runtime without runs {u:>10.0}, omniqueue {p:>10.0} (by reference {r:>10.0}), apalis {z:>10.0} msg/s"
        );
        for (all, one) in rates.iter_mut().zip([a, m, u, p, r, z]) {
            all.push(one);
        }
    }
    let [adapter, module, unrecorded, peer, peer_by_reference, apalis] = rates.map(median);
    Pipelines {
        adapter,
        module,
        unrecorded,
        peer,
        peer_by_reference,
        apalis,
    }
}

impl Pipelines {
    fn print(&self) {
        let Pipelines {
            adapter: a,
            module: m,
            unrecorded: u,
            peer: p,
            peer_by_reference: r,
            apalis: z,
        } = *self;
        println!();
        println!("| pipeline (median of {ROUNDS}) | messages/s | ratio |");
        println!("|---|---:|---:|");
        println!("| BuiltinQueueAdapter alone: publish → deliver → ack | {a:.0} | 1.00 |");
        println!(
            "| QueueModule: enqueue → trigger → handler → ack | {m:.0} | {:.2} |",
            m / a
        );
        println!(
            "| QueueModule, runs not recorded (`runs: false`) | {u:.0} | {:.2} |",
            u / a
        );
        println!(
            "| omniqueue in-memory: each message built, sent as JSON → receive → parse → ack (no lease, attempts or DLQ) | {p:.0} | {:.2} |",
            p / a
        );
        println!(
            "| omniqueue in-memory, the template sent by reference (no message built; not comparable with topiq's rows, which build each) | {r:.0} | {:.2} |",
            r / a
        );
        println!(
            "| apalis 1.0 in-memory storage and worker: each message built, pushed as a task (the `Value`, no JSON) → handler (no lease, ack, attempts or DLQ) | {z:.0} | {:.2} |",
            z / a
        );
        println!();
        println!(
            "QueueModule / omniqueue (each side building each message): {:.2} (runs recorded), {:.2} (runs not recorded)",
            m / p,
            u / p
        );
        println!(
            "QueueModule / apalis: {:.2} (runs recorded), {:.2} (runs not recorded)",
            m / z,
            u / z
        );
    }
}

/// Part 2's medians: msg/s with tracing off and on, and the rounds' own differences (µs).
struct Tracing {
    off: f64,
    on: f64,
    paired: f64,
}

/// Part 2: tracing off vs on, rounds alternating, both with two subscribers registered;
/// checks that every span reached the exporter.
fn tracing_off_and_on(
    runtime: &tokio::runtime::Runtime,
    count: usize,
    template: &Value,
) -> Tracing {
    let (traced, provider, _second) = traced_runtime();
    let (mut off, mut on, mut paired) = (Vec::new(), Vec::new(), Vec::new());
    traced.block_on(through_runtime(count / 10, template));
    provider.force_flush().ok();
    for round in 1..=ROUNDS {
        let o = rate(count, runtime.block_on(through_runtime(count, template)));
        let t = rate(count, traced.block_on(through_runtime(count, template)));
        // The exporter's thread drains its queue now, not during the next round.
        provider.force_flush().ok();
        println!(
            "  round {round}/{ROUNDS}: tracing off {o:>10.0} msg/s, tracing on {t:>10.0} msg/s"
        );
        off.push(o);
        on.push(t);
        // Each round's own difference: its two halves ran a moment apart, on the same load.
        paired.push((1.0 / t - 1.0 / o) * 1e6);
    }
    provider.shutdown().ok();
    // Two spans per message (publish, process), warm-up included: fewer would mean the
    // processor dropped spans, and tracing would look cheaper than it is.
    let expected = 2 * (count / 10 + ROUNDS * count);
    let exported = EXPORTED.load(Ordering::Relaxed);
    println!("  spans recorded and exported with tracing on: {exported} of {expected}");
    assert_eq!(exported, expected, "the span processor dropped spans");
    Tracing {
        off: median(off),
        on: median(on),
        paired: median(paired),
    }
}

impl Tracing {
    fn print(&self) {
        let Tracing {
            off: o,
            on: t,
            paired,
        } = *self;
        println!();
        println!("| QueueModule (median of {ROUNDS}, alternating) | messages/s | ratio |");
        println!("|---|---:|---:|");
        println!("| tracing off | {o:.0} | 1.00 |");
        println!(
            "| tracing on: every publish and process span recorded by OpenTelemetry | {t:.0} | {:.2} |",
            t / o
        );
        println!();
        println!(
            "tracing costs {:.1}% of the runtime's throughput ({:.2} µs per message; median of the rounds' own differences {paired:.2} µs)",
            (1.0 - t / o) * 100.0,
            (1.0 / t - 1.0 / o) * 1e6,
        );
    }
}

/// Part 3: a topic without priority levels against one with three, rounds alternating.
fn priority_overhead(runtime: &tokio::runtime::Runtime, count: usize, template: &Value) {
    let (mut one, mut three) = (Vec::new(), Vec::new());
    runtime.block_on(through_levels(count / 10, template, 3));
    for round in 1..=ROUNDS {
        let o = rate(count, runtime.block_on(through_levels(count, template, 1)));
        let t = rate(count, runtime.block_on(through_levels(count, template, 3)));
        println!("  round {round}/{ROUNDS}: 1 level {o:>10.0} msg/s, 3 levels {t:>10.0} msg/s");
        one.push(o);
        three.push(t);
    }
    let (o, t) = (median(one), median(three));
    println!();
    println!(
        "| priority on the in-memory adapter (median of {ROUNDS}, alternating) | messages/s | ratio |"
    );
    println!("|---|---:|---:|");
    println!("| no priority levels | {o:.0} | 1.00 |");
    println!(
        "| 3 priority levels, messages spread over them | {t:.0} | {:.2} |",
        t / o
    );
}
