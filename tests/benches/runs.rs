//! What recording runs costs: end-to-end throughput through the queue module (enqueue →
//! trigger → handler → settle) with runs off, recorded into SQLite and into PostgreSQL, on
//! the in-memory adapter and on JetStream, in one run, with the ratios to runs off.
//!
//! `cargo bench -p topiq-integration-tests --bench runs` starts its own nats-server and uses
//! the machine's PostgreSQL (a database of its own, dropped after). `TOPIQ_BENCH_RUN_MESSAGES`
//! sets the messages per round (default 20,000). Rounds alternate the stores, so the machine's
//! noise lands on each alike; the table shows each one's median, and how many events each
//! store write carried (the group commit at work).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;
use topiq::{Config, Functions, Message, QueueModule};
use topiq_adapter::{NewMessage, TopicName};
use topiq_testkit::{NatsServer, PostgresDatabase};

/// The allocator the `topiq` binary ships with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 3;
const CONCURRENCY: u32 = 100;

/// Where runs go in a pipeline.
#[derive(Clone, Copy, PartialEq)]
enum Runs {
    Off,
    Memory,
    Sqlite,
    Postgres,
}

impl Runs {
    const ALL: [Runs; 4] = [Runs::Off, Runs::Memory, Runs::Sqlite, Runs::Postgres];

    fn name(self) -> &'static str {
        match self {
            Runs::Off => "runs off",
            Runs::Memory => "runs in memory",
            Runs::Sqlite => "runs in SQLite",
            Runs::Postgres => "runs in PostgreSQL",
        }
    }
}

/// What one round measured.
struct Round {
    rate: f64,
    events_per_write: f64,
}

fn config(adapter: &str, runs: Runs, stores: &Stores) -> Config {
    let (section, record) = match runs {
        Runs::Off => (String::new(), "false"),
        Runs::Memory => ("runs:\n  store: memory\n".to_owned(), "true"),
        Runs::Sqlite => (format!("runs:\n  store: {}\n", stores.sqlite), "true"),
        Runs::Postgres => (
            format!("runs:\n  store: {}\n", stores.postgres.url()),
            "true",
        ),
    };
    let yaml = format!(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        {adapter}
{section}triggers:
  bench:
    type: queue
    function: bench.noop
    config:
      topic: bench
      concurrency: {CONCURRENCY}
      runs: {record}
"
    );
    Config::from_yaml_with_variables(&yaml, "bench.yaml", &HashMap::new()).unwrap()
}

/// The stores every round writes to (each round's runs have new ids).
struct Stores {
    sqlite: String,
    postgres: PostgresDatabase,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `series` from the module's metrics text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

async fn round(config: Config, count: usize) -> Round {
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
    let template = json!({"to": "someone@example.com", "order": {"number": 1234567, "items": 3}});
    let started = Instant::now();
    let done = finished.notified();
    let producer = tokio::spawn(publish_all(module.clone(), topic, template, count));
    done.await;
    producer.await.unwrap();
    let elapsed = started.elapsed();
    let text = module.metrics_text().await;
    let writes = metric(&text, "topiq_runs_writes_total");
    let events = metric(&text, "topiq_runs_events_written_total");
    workers.shutdown().await;
    module.close().await;
    Round {
        rate: count as f64 / elapsed.as_secs_f64(),
        events_per_write: if writes > 0.0 { events / writes } else { 0.0 },
    }
}

/// Publishes `count` messages, 256 at a time in flight.
async fn publish_all(module: QueueModule, topic: TopicName, template: Value, count: usize) {
    let mut in_flight: futures::stream::FuturesUnordered<tokio::task::JoinHandle<()>> =
        futures::stream::FuturesUnordered::new();
    for _ in 0..count {
        if in_flight.len() >= 256 {
            in_flight.next().await.unwrap().unwrap();
        }
        let (module, topic, data) = (module.clone(), topic.clone(), template.clone());
        in_flight.push(tokio::spawn(async move {
            module.publish(&topic, NewMessage::new(data)).await.unwrap();
        }));
    }
    while let Some(result) = in_flight.next().await {
        result.unwrap();
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Rounds of every store on `adapter`, alternating; each store's median rate and batching.
async fn pipeline(
    name: &str,
    adapter: &str,
    stores: &Stores,
    count: usize,
) -> Vec<(Runs, f64, f64)> {
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); Runs::ALL.len()];
    let mut batching: Vec<Vec<f64>> = vec![Vec::new(); Runs::ALL.len()];
    round(config(adapter, Runs::Sqlite, stores), count / 10).await;
    for n in 1..=ROUNDS {
        for (i, runs) in Runs::ALL.into_iter().enumerate() {
            let measured = round(config(adapter, runs, stores), count).await;
            println!(
                "  {name} round {n}/{ROUNDS}: {:<20} {:>9.0} msg/s, {:>6.1} events per store write",
                runs.name(),
                measured.rate,
                measured.events_per_write
            );
            rates[i].push(measured.rate);
            batching[i].push(measured.events_per_write);
        }
    }
    Runs::ALL
        .into_iter()
        .zip(rates.into_iter().zip(batching))
        .map(|(runs, (rates, batching))| (runs, median(rates), median(batching)))
        .collect()
}

fn main() {
    let count: usize = std::env::var("TOPIQ_BENCH_RUN_MESSAGES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("topiq-runs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stores = Stores {
        sqlite: format!("sqlite://{}/runs.db", dir.display()),
        postgres: PostgresDatabase::create(),
        _dir: TempDir(dir),
    };
    let server = NatsServer::start();
    let jetstream = format!(
        "class: modules::queue::JetStreamAdapter\n        config: {{ url: \"{}\" }}",
        server.url()
    );
    println!(
        "runs recording cost: {count} messages per round, {ROUNDS} rounds, concurrency {CONCURRENCY}, a handler that does nothing, 2 worker threads"
    );
    let memory = "class: modules::queue::BuiltinQueueAdapter";
    // TOPIQ_BENCH_RUN_ADAPTERS=jetstream measures JetStream alone (the target's adapter).
    let adapters = std::env::var("TOPIQ_BENCH_RUN_ADAPTERS").unwrap_or("memory,jetstream".into());
    let results = runtime.block_on(async {
        let mut results = Vec::new();
        if adapters.contains("memory") {
            let rows = pipeline("memory", memory, &stores, count * 5).await;
            results.push(("BuiltinQueueAdapter", rows));
        }
        if adapters.contains("jetstream") {
            let rows = pipeline("jetstream", &jetstream, &stores, count).await;
            results.push(("JetStreamAdapter", rows));
        }
        results
    });
    println!();
    println!(
        "| adapter | runs | messages/s (median of {ROUNDS}) | ratio to runs off | events per store write |"
    );
    println!("|---|---|---:|---:|---:|");
    for (adapter, rows) in &results {
        let off = rows[0].1;
        for (runs, rate, batching) in rows {
            println!(
                "| {adapter} | {} | {rate:.0} | {:.2} | {batching:.1} |",
                runs.name(),
                rate / off
            );
        }
    }
    let Some((_, jetstream)) = results
        .iter()
        .find(|(adapter, _)| *adapter == "JetStreamAdapter")
    else {
        return;
    };
    let worst = jetstream[2].1.min(jetstream[3].1) / jetstream[0].1;
    println!();
    println!(
        "target: recording on either store ≥ 0.5× runs off on JetStream → {:.2} {}",
        worst,
        if worst >= 0.5 { "met" } else { "NOT met" }
    );
}
