//! Flow control on the in-memory adapter, JetStream and RabbitMQ, each with two module
//! instances on one trigger sharing one runs store: pausing a trigger (every instance stops
//! taking messages within a second, running calls finish, enqueue goes on, the pause
//! survives restarts, resuming hands everything out once, on its first attempt).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use topiq::{Config, Functions, Message, QueueModule, Workers};
use topiq_testkit::{Broker, Store};

/// Generates each scenario on the three adapters: the brokers with PostgreSQL (what
/// replicas share), the in-memory adapter with SQLite.
macro_rules! on_every_adapter {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                use topiq_testkit::{Broker, Store};
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn jetstream() {
                    super::$scenario(Broker::jetstream(), Store::postgres()).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn rabbitmq() {
                    super::$scenario(Broker::rabbitmq(), Store::postgres()).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    super::$scenario(Broker::Memory, Store::sqlite()).await;
                }
            }
        )*
    };
}

on_every_adapter!(a_pause_holds_on_every_instance_and_across_restarts);

fn config(broker: &Broker, store: &Store) -> Config {
    let text = format!(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        {adapter}
      shutdown_grace: 5s
runs:
  store: {store}
triggers:
  mailer:
    type: queue
    function: work
    config:
      topic: orders
      concurrency: 2
",
        adapter = broker.adapter_yaml(),
        store = store.url(),
    );
    Config::from_yaml_with_variables(&text, "test.yaml", &HashMap::new())
        .unwrap_or_else(|err| panic!("{err}"))
}

/// One handler call: the message's `n`, its attempt, when it started and whether it
/// finished.
#[derive(Clone, Debug)]
struct Call {
    n: u64,
    attempt: u32,
    started: Instant,
    finished: bool,
}

/// `work` waits `data.wait_ms` and records each call.
#[derive(Clone, Default)]
struct Work {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Work {
    fn functions(&self) -> Functions {
        let calls = Arc::clone(&self.calls);
        let mut functions = Functions::new();
        functions.register("work", move |message: Message| {
            let calls = Arc::clone(&calls);
            async move {
                let at = {
                    let mut calls = calls.lock().unwrap();
                    calls.push(Call {
                        n: message.data()["n"].as_u64().unwrap(),
                        attempt: message.attempt,
                        started: Instant::now(),
                        finished: false,
                    });
                    calls.len() - 1
                };
                let wait = message.data()["wait_ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                calls.lock().unwrap()[at].finished = true;
                Ok(())
            }
        });
        functions
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.calls().len() < count {
            assert!(
                Instant::now() < deadline,
                "{} calls of {count}",
                self.calls().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An instance: a module of its own on the brokers; on the in-memory adapter, one sharing
/// `beside`'s adapter when given (the broker is the process's).
async fn instance(
    broker: &Broker,
    store: &Store,
    work: &Work,
    beside: Option<&QueueModule>,
) -> QueueModule {
    let config = config(broker, store);
    match (broker, beside) {
        (Broker::Memory, Some(beside)) => {
            QueueModule::new_on(config, work.functions(), beside.adapter().clone()).await
        }
        _ => QueueModule::new(config, work.functions()).await,
    }
    .unwrap()
}

/// Two instances on one trigger, their workers running.
async fn two_instances(
    broker: &Broker,
    store: &Store,
    work: &Work,
) -> [(QueueModule, Option<Workers>); 2] {
    let first = instance(broker, store, work, None).await;
    let second = instance(broker, store, work, Some(&first)).await;
    let first_workers = first.start_workers();
    let second_workers = second.start_workers();
    [(first, Some(first_workers)), (second, Some(second_workers))]
}

async fn call(module: &QueueModule, name: &str, args: Value) -> Value {
    module
        .call(name, args)
        .await
        .unwrap_or_else(|err| panic!("{name}: {err}"))
}

async fn enqueue(module: &QueueModule, n: u64, wait_ms: u64) {
    let data = json!({"n": n, "wait_ms": wait_ms});
    call(
        module,
        "queue.enqueue",
        json!({"topic": "orders", "data": data}),
    )
    .await;
}

async fn stats_row(module: &QueueModule) -> Value {
    call(module, "queue.stats", json!({})).await["triggers"][0].clone()
}

async fn a_pause_holds_on_every_instance_and_across_restarts(broker: Broker, store: Store) {
    let work = Work::default();
    let [(first, first_workers), (second, second_workers)] =
        two_instances(&broker, &store, &work).await;
    for n in 0..20 {
        enqueue(&first, n, 300).await;
    }
    work.wait_for(2, Duration::from_secs(20)).await;
    call(&first, "queue.trigger_pause", json!({"trigger": "mailer"})).await;
    let paused_at = Instant::now();
    for n in 20..25 {
        enqueue(&second, n, 0).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = work.calls();
    let late: Vec<&Call> = calls
        .iter()
        .filter(|call| call.started > paused_at + Duration::from_secs(1))
        .collect();
    assert!(late.is_empty(), "started over 1s after the pause: {late:?}");
    assert!(
        calls.iter().all(|call| call.finished),
        "running calls finish: {calls:?}"
    );
    let taken = calls.len() as u64;
    assert!(taken < 20, "the pause came while a backlog waited: {taken}");
    for module in [&first, &second] {
        let row = stats_row(module).await;
        assert_eq!(row["paused"], true, "{row}");
        assert_eq!(row["waiting"], 25 - taken, "messages accumulate: {row}");
        let metrics = module.metrics_text().await;
        assert!(
            metrics.contains("topiq_trigger_paused{topic=\"orders\",trigger=\"mailer\"} 1"),
            "{metrics}"
        );
    }
    let listed = call(&second, "queue.trigger_list", json!({})).await;
    assert_eq!(listed["triggers"][0]["paused"], true, "{listed}");

    // Every instance restarts: the pause holds.
    stop(&second, second_workers, &broker).await;
    stop(&first, first_workers, &broker).await;
    let restarted = instance(&broker, &store, &work, Some(&first)).await;
    let workers = restarted.start_workers();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(work.calls().len() as u64, taken, "paused after the restart");
    assert_eq!(stats_row(&restarted).await["paused"], true);

    call(
        &restarted,
        "queue.trigger_resume",
        json!({"trigger": "mailer"}),
    )
    .await;
    work.wait_for(25, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = work.calls();
    let handled: HashSet<u64> = calls.iter().map(|call| call.n).collect();
    assert_eq!(handled.len(), 25, "every message handled: {calls:?}");
    assert_eq!(calls.len(), 25, "none twice: {calls:?}");
    assert!(
        calls.iter().all(|call| call.attempt == 1),
        "a pause spends no attempt: {calls:?}"
    );
    assert_eq!(stats_row(&restarted).await["paused"], false);
    workers.shutdown().await;
    restarted.close().await;
}

/// Stops an instance: its workers, and (except on the in-memory adapter, whose messages
/// live in the adapter) its adapter.
async fn stop(module: &QueueModule, workers: Option<Workers>, broker: &Broker) {
    if let Some(workers) = workers {
        workers.shutdown().await;
    }
    if !matches!(broker, Broker::Memory) {
        module.close().await;
    }
}
