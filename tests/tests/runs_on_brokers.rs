//! Runs recorded by the module on JetStream, RabbitMQ and the in-memory adapter, into SQLite
//! and PostgreSQL: every state, attempts with errors, results, progress, replay and
//! read-your-writes; cancel across two instances on one trigger (the brokers: the in-memory
//! adapter is one process's); and the store going down under load (PostgreSQL
//! through a fault proxy): consumption pauses, nothing is lost, and it resumes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use topiq::{Config, Functions, HandlerError, Message, QueueModule};
use topiq_testkit::{Broker, FaultProxy, PostgresDatabase, Store};

/// Generates each scenario on both brokers with both SQL stores.
macro_rules! on_brokers_and_stores {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn jetstream_sqlite() {
                    super::$scenario(super::Broker::jetstream(), super::Store::sqlite()).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn jetstream_postgres() {
                    super::$scenario(super::Broker::jetstream(), super::Store::postgres()).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn rabbitmq_sqlite() {
                    super::$scenario(super::Broker::rabbitmq(), super::Store::sqlite()).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn rabbitmq_postgres() {
                    super::$scenario(super::Broker::rabbitmq(), super::Store::postgres()).await;
                }
            }
        )*
    };
}

on_brokers_and_stores!(
    every_state_is_recorded,
    cancel_reaches_the_instance_running_the_run,
    a_message_past_its_retention_is_an_expired_run,
);

/// Generates each scenario on the in-memory adapter with both SQL stores.
macro_rules! in_memory_with_sql_stores {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory_sqlite() {
                    super::super::$scenario(super::super::Broker::Memory, super::super::Store::sqlite()).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory_postgres() {
                    super::super::$scenario(super::super::Broker::Memory, super::super::Store::postgres()).await;
                }
            }
        )*
    };
}

mod in_memory {
    in_memory_with_sql_stores!(
        every_state_is_recorded,
        a_message_past_its_retention_is_an_expired_run
    );
}

const TRIGGERS: &str = "triggers:
  mailer:
    type: queue
    function: work
    config:
      topic: orders
      retry: { backoff: fixed, delay: 200ms, max_attempts: 3 }
  audit:
    type: queue
    function: work
    config:
      topic: orders
      condition: 'data.audit == true'
";

fn config(broker: &Broker, store: &str, triggers: &str) -> Config {
    let text = format!(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        {adapter}
      topics:
        stale: {{ retention: 1s }}
      shutdown_grace: 2s
runs:
  store: {store}
{triggers}",
        adapter = broker.adapter_yaml()
    );
    Config::from_yaml_with_variables(&text, "test.yaml", &HashMap::new())
        .unwrap_or_else(|err| panic!("{err}"))
}

/// `work` fails while `data.fail` is at least the attempt, reports progress, waits
/// `data.wait_ms`, returns `{"n": data.n}`; it counts its calls and the calls stopped early.
#[derive(Clone, Default)]
struct Work {
    calls: Arc<AtomicUsize>,
    stopped: Arc<AtomicUsize>,
}

impl Work {
    fn functions(&self) -> Functions {
        let work = self.clone();
        let mut functions = Functions::new();
        functions.register_returning("work", move |message: Message| {
            let work = work.clone();
            async move {
                work.calls.fetch_add(1, Ordering::SeqCst);
                let stopped = StopCounter(Some(Arc::clone(&work.stopped)));
                message.progress(json!({"attempt": message.attempt})).await;
                let data = message.data().clone();
                let wait = data["wait_ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                std::mem::forget(stopped);
                if data["fail"].as_u64().unwrap_or(0) >= u64::from(message.attempt) {
                    return Err(HandlerError::retryable(format!(
                        "failed attempt {}",
                        message.attempt
                    )));
                }
                Ok(json!({"n": data["n"]}))
            }
        });
        functions
    }
}

/// Counts one when dropped unfinished (forgotten when the call finishes).
struct StopCounter(Option<Arc<AtomicUsize>>);

impl Drop for StopCounter {
    fn drop(&mut self) {
        if let Some(count) = self.0.take() {
            count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn call(module: &QueueModule, name: &str, args: Value) -> Value {
    module
        .call(name, args)
        .await
        .unwrap_or_else(|err| panic!("{name}: {err}"))
}

async fn enqueue(module: &QueueModule, args: Value) -> String {
    let result = call(module, "queue.enqueue", args).await;
    result["message_id"].as_str().unwrap().to_owned()
}

/// The run of `id` on `trigger` once it is in `state` (within 20 s).
async fn run_in(module: &QueueModule, id: &str, trigger: &str, state: &str) -> Value {
    let args = json!({"id": id, "trigger": trigger});
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let runs = module.call("queue.run_get", args.clone()).await;
        if let Ok(runs) = &runs
            && runs["runs"][0]["state"] == state
        {
            return runs["runs"][0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{id} on {trigger} never {state}: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn outcomes(run: &Value) -> Vec<&str> {
    let attempts = run["attempts"].as_array().unwrap();
    attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("-"))
        .collect()
}

async fn every_state_is_recorded(broker: Broker, store: Store) {
    let work = Work::default();
    let module = QueueModule::new(config(&broker, &store.url(), TRIGGERS), work.functions())
        .await
        .unwrap();
    let later = enqueue(
        &module,
        json!({"topic": "orders", "data": {"n": 0}, "delay": "2s"}),
    )
    .await;
    let waiting = call(
        &module,
        "queue.run_get",
        json!({"id": later, "trigger": "mailer"}),
    )
    .await;
    assert_eq!(
        waiting["runs"][0]["state"], "delayed",
        "read-your-writes, before any worker"
    );
    let workers = module.start_workers();
    let flaky = enqueue(
        &module,
        json!({"topic": "orders", "data": {"n": 1, "fail": 2, "audit": true}}),
    )
    .await;
    let dead = enqueue(
        &module,
        json!({"topic": "orders", "data": {"n": 2, "fail": 9}}),
    )
    .await;
    let run = run_in(&module, &flaky, "mailer", "succeeded").await;
    assert_eq!(outcomes(&run), ["failed", "failed", "succeeded"]);
    assert_eq!(run["attempts"][0]["error"]["message"], "failed attempt 1");
    assert_eq!(run["result"], json!({"n": 1}));
    assert_eq!(run["progress"], json!({"attempt": 3}));
    let states: Vec<&str> = run["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "queued",
            "running",
            "retrying",
            "running",
            "retrying",
            "running",
            "succeeded"
        ]
    );
    run_in(&module, &flaky, "audit", "succeeded").await;
    run_in(&module, &dead, "audit", "filtered").await;
    let run = run_in(&module, &dead, "mailer", "dead_lettered").await;
    assert_eq!(run["attempts"][2]["error"]["kind"], "retries_exhausted");
    run_in(&module, &later, "mailer", "succeeded").await;
    let replay = call(
        &module,
        "queue.run_replay",
        json!({"id": dead, "trigger": "mailer", "data": {"n": 3}}),
    )
    .await;
    let replay = replay["message_id"].as_str().unwrap().to_owned();
    let run = run_in(&module, &replay, "mailer", "succeeded").await;
    assert_eq!(run["replay_of"], dead.as_str());
    let audit = module
        .call("queue.run_get", json!({"id": replay, "trigger": "audit"}))
        .await;
    assert_eq!(
        audit.unwrap_err().code(),
        "unknown_run",
        "a replay goes to its trigger only"
    );
    let listed = call(
        &module,
        "queue.run_list",
        json!({"trigger": "mailer", "state": "dead_lettered"}),
    )
    .await;
    assert_eq!(listed["runs"].as_array().unwrap().len(), 1);
    workers.shutdown().await;
    module.close().await;
}

const ONE_TRIGGER: &str = "triggers:
  mailer:
    type: queue
    function: work
    config:
      topic: orders
      retry: { backoff: fixed, delay: 200ms, max_attempts: 3 }
";

async fn cancel_reaches_the_instance_running_the_run(broker: Broker, store: Store) {
    let (work_a, work_b) = (Work::default(), Work::default());
    let a = QueueModule::new(
        config(&broker, &store.url(), ONE_TRIGGER),
        work_a.functions(),
    )
    .await
    .unwrap();
    let b = QueueModule::new(
        config(&broker, &store.url(), ONE_TRIGGER),
        work_b.functions(),
    )
    .await
    .unwrap();
    let (workers_a, workers_b) = (a.start_workers(), b.start_workers());
    let long = enqueue(
        &a,
        json!({"topic": "orders", "data": {"n": 1, "wait_ms": 120_000}}),
    )
    .await;
    let delayed = enqueue(
        &b,
        json!({"topic": "orders", "data": {"n": 2}, "delay": "2s"}),
    )
    .await;
    // A new run is seen from another instance within 1 s (B holds its event back a little,
    // to write it with the run's next one).
    let enqueued = Instant::now();
    run_in(&a, &delayed, "mailer", "delayed").await;
    assert!(
        enqueued.elapsed() < Duration::from_secs(1),
        "another instance saw the new run after {:?}",
        enqueued.elapsed()
    );
    run_in(&b, &long, "mailer", "running").await;
    // Cancel from A, whichever instance runs it; the delayed one from B.
    let asked = Instant::now();
    assert_eq!(
        call(&a, "queue.run_cancel", json!({"id": long})).await,
        json!({"cancelled": 1})
    );
    assert_eq!(
        call(&b, "queue.run_cancel", json!({"id": delayed})).await,
        json!({"cancelled": 1})
    );
    // The running handler is stopped on its instance within 1 s.
    let stopped = || work_a.stopped.load(Ordering::SeqCst) + work_b.stopped.load(Ordering::SeqCst);
    while stopped() == 0 && asked.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        stopped(),
        1,
        "the running handler was stopped on its instance"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "the cancel reached the running handler after {:?}",
        asked.elapsed()
    );
    let run = run_in(&b, &long, "mailer", "cancelled").await;
    assert_eq!(outcomes(&run), ["cancelled"]);
    // Past the delayed message's time: neither instance hands it to its handler.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = work_a.calls.load(Ordering::SeqCst) + work_b.calls.load(Ordering::SeqCst);
    assert_eq!(calls, 1, "only the long run was ever handled");
    let run = call(&a, "queue.run_get", json!({"id": delayed})).await;
    assert_eq!(run["runs"][0]["state"], "cancelled");
    assert!(run["runs"][0]["attempts"].as_array().unwrap().is_empty());
    tokio::join!(workers_a.shutdown(), workers_b.shutdown());
    tokio::join!(a.close(), b.close());
}

const STALE_TRIGGER: &str = "triggers:
  late:
    type: queue
    function: work
    config:
      topic: stale
";

/// The adapter dead-letters a message past its retention without handing it to the trigger;
/// its run ends `expired` all the same.
async fn a_message_past_its_retention_is_an_expired_run(broker: Broker, store: Store) {
    let work = Work::default();
    let module = QueueModule::new(
        config(&broker, &store.url(), STALE_TRIGGER),
        work.functions(),
    )
    .await
    .unwrap();
    let id = enqueue(&module, json!({"topic": "stale", "data": {"n": 1}})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let workers = module.start_workers();
    let run = run_in(&module, &id, "late", "expired").await;
    assert!(run["attempts"].as_array().unwrap().is_empty(), "{run}");
    assert_eq!(
        work.calls.load(Ordering::SeqCst),
        0,
        "never handed to the handler"
    );
    workers.shutdown().await;
    module.close().await;
}

/// A database of the test's own on the machine's PostgreSQL, reached through a fault proxy,
/// and its URL through the proxy.
async fn proxied_postgres() -> (PostgresDatabase, FaultProxy, String) {
    let database = PostgresDatabase::create();
    let server: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = FaultProxy::start(server).await;
    let url = format!(
        "postgres://postgres@{}/{}",
        proxy.address(),
        database.name()
    );
    (database, proxy, url)
}

/// PostgreSQL behind a fault proxy that is cut while messages flow: settlements wait and
/// readiness says so, and once it is back every run ends succeeded, none lost.
async fn the_store_going_down_loses_nothing(broker: Broker) {
    let (_database, proxy, url) = proxied_postgres().await;
    let work = Work::default();
    let module = QueueModule::new(config(&broker, &url, ONE_TRIGGER), work.functions())
        .await
        .unwrap();
    let workers = module.start_workers();
    let mut ids = Vec::new();
    for n in 0..100 {
        ids.push(
            enqueue(
                &module,
                json!({"topic": "orders", "data": {"n": n, "wait_ms": 20}}),
            )
            .await,
        );
    }
    proxy.refuse_new(true);
    proxy.reset_all();
    for n in 100..200 {
        ids.push(
            enqueue(
                &module,
                json!({"topic": "orders", "data": {"n": n, "wait_ms": 20}}),
            )
            .await,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match module.readiness().await {
            Err(reasons) if reasons.iter().any(|r| r.contains("runs store")) => break,
            _ => assert!(
                Instant::now() < deadline,
                "readiness never named the runs store"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.refuse_new(false);
    for id in &ids {
        let run = run_in(&module, id, "mailer", "succeeded").await;
        assert!(run["result"]["n"].is_u64(), "{run}");
    }
    assert!(module.readiness().await.is_ok(), "ready again");
    workers.shutdown().await;
    module.close().await;
}

/// A shutdown while PostgreSQL is cut: the settlements waiting for their records leave their
/// messages unsettled, so another instance, with the store back, handles and records them all.
async fn a_shutdown_with_the_store_down_leaves_the_messages_for_redelivery(broker: Broker) {
    let (_database, proxy, url) = proxied_postgres().await;
    let triggers = "triggers:
  mailer:
    type: queue
    function: work
    config:
      topic: orders
      concurrency: 20
      visibility_timeout: 2s
";
    let first = Work::default();
    let module = QueueModule::new(config(&broker, &url, triggers), first.functions())
        .await
        .unwrap();
    proxy.refuse_new(true);
    proxy.reset_all();
    let workers = module.start_workers();
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(enqueue(&module, json!({"topic": "orders", "data": {"n": n}})).await);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.calls.load(Ordering::SeqCst) < 20 {
        assert!(
            Instant::now() < deadline,
            "the handlers ran {:?} of 20",
            first.calls
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    workers.shutdown().await;
    module.close().await;
    proxy.refuse_new(false);
    let second = Work::default();
    let module = QueueModule::new(config(&broker, &url, triggers), second.functions())
        .await
        .unwrap();
    let workers = module.start_workers();
    for id in &ids {
        run_in(&module, id, "mailer", "succeeded").await;
    }
    assert_eq!(
        second.calls.load(Ordering::SeqCst),
        20,
        "every message came back"
    );
    workers.shutdown().await;
    module.close().await;
}

mod a_shutdown_with_the_store_down_leaves_the_messages_for_redelivery {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_postgres() {
        super::a_shutdown_with_the_store_down_leaves_the_messages_for_redelivery(
            super::Broker::jetstream(),
        )
        .await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_postgres() {
        super::a_shutdown_with_the_store_down_leaves_the_messages_for_redelivery(
            super::Broker::rabbitmq(),
        )
        .await;
    }
}

mod the_store_going_down_loses_nothing {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_postgres() {
        super::the_store_going_down_loses_nothing(super::Broker::jetstream()).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_postgres() {
        super::the_store_going_down_loses_nothing(super::Broker::rabbitmq()).await;
    }
}
