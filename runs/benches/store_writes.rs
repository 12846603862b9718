//! The runs stores alone: how long one write of 1,300 runs takes (into a store that already
//! holds 100,000), as the recorder sends them
//! (their `Enqueued` in one write, `Started` + `Finished` in the next) and all in one write.
//! What the module's own benchmark (`tests/benches/runs.rs`) pays per message, without the
//! broker and the handlers beside it.
//!
//! `cargo bench -p topiq-runs --bench store_writes` (uses the machine's PostgreSQL: a database
//! of its own, dropped after).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use topiq_adapter::{MessageId, Timestamp, TopicName, TriggerName};
use topiq_runs::{AttemptOutcome, Change, Next, Origin, RunEvent, RunKey, SharedStore};
use topiq_testkit::PostgresDatabase;

const RUNS: usize = 1_300;
const ROUNDS: usize = 7;
/// Runs stored before the timed writes: a store that has kept a few minutes of load.
const STORED: usize = 100_000;

fn origin() -> Origin {
    Origin {
        topic: TopicName::new("bench").unwrap(),
        data: Arc::new(json!({"to": "someone@example.com", "order": {"number": 1_234_567}})),
        enqueued_at: Timestamp::now(),
        run_at: None,
        replay_of: None,
        idempotency_key: None,
    }
}

fn event(key: &RunKey, change: Change) -> RunEvent {
    RunEvent {
        key: key.clone(),
        at: Timestamp::now(),
        change,
    }
}

fn enqueued(keys: &[RunKey]) -> Vec<RunEvent> {
    keys.iter()
        .map(|key| event(key, Change::Enqueued(origin())))
        .collect()
}

fn handled(keys: &[RunKey]) -> Vec<RunEvent> {
    let started = || Change::Started {
        origin: origin(),
        attempt: 1,
        instance: "host:1".into(),
        traceparent: None,
    };
    let finished = Change::Finished {
        attempt: 1,
        outcome: AttemptOutcome::Succeeded,
        error: None,
        next: Next::Succeeded { result: None },
    };
    keys.iter()
        .flat_map(|key| [event(key, started()), event(key, finished.clone())])
        .collect()
}

async fn timed(store: &SharedStore, events: &[RunEvent]) -> Duration {
    let started = Instant::now();
    store.write(events).await.unwrap();
    started.elapsed()
}

/// [`RUNS`] runs not stored yet.
fn new_keys() -> Vec<RunKey> {
    let trigger = TriggerName::new("bench").unwrap();
    (0..RUNS)
        .map(|_| RunKey::new(MessageId::generate(), trigger.clone()))
        .collect()
}

/// Each run's three events, as one write.
fn all_three(keys: &[RunKey]) -> Vec<RunEvent> {
    let mut all = enqueued(keys);
    all.extend(handled(keys));
    all
}

/// Stores [`STORED`] finished runs.
async fn fill(store: &SharedStore) {
    for _ in 0..STORED / RUNS {
        store.write(&all_three(&new_keys())).await.unwrap();
    }
}

/// Median times of: the `Enqueued` write, the `Started` + `Finished` write, and one write of
/// all three.
async fn measure(store: &SharedStore) -> [Duration; 3] {
    let mut times: [Vec<Duration>; 3] = Default::default();
    for _ in 0..ROUNDS {
        let keys = new_keys();
        times[0].push(timed(store, &enqueued(&keys)).await);
        times[1].push(timed(store, &handled(&keys)).await);
        times[2].push(timed(store, &all_three(&new_keys())).await);
    }
    times.map(|mut samples| {
        samples.sort();
        samples[samples.len() / 2]
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("topiq-store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = PostgresDatabase::create();
    let stores = [
        ("memory", "memory".to_owned()),
        ("SQLite", format!("sqlite://{}/runs.db", dir.display())),
        ("PostgreSQL", database.url()),
    ];
    println!(
        "runs store writes: {RUNS} runs per write, median of {ROUNDS}, {STORED} runs stored before"
    );
    println!();
    println!(
        "| store | Enqueued write | Started + Finished write | the three in one write | runs/s, two writes | runs/s, one write |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, url) in &stores {
        let [enqueue, handle, once] = runtime.block_on(async {
            let store = topiq_runs::open(url).await.unwrap();
            fill(&store).await;
            measure(&store).await
        });
        let per_second = |time: Duration| RUNS as f64 / time.as_secs_f64();
        println!(
            "| {name} | {enqueue:.1?} | {handle:.1?} | {once:.1?} | {:.0} | {:.0} |",
            per_second(enqueue + handle),
            per_second(once)
        );
    }
    drop(database);
    let _ = std::fs::remove_dir_all(dir);
}
