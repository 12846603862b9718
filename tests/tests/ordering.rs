//! Per-key order on the in-memory adapter, JetStream and RabbitMQ, each with two module
//! instances on one ordered trigger: under retries and a crash of the instance running a
//! message, a checker sees no key with two messages in flight at once and each key's messages
//! handled in enqueue order; a message whose key cannot be evaluated is dead-lettered with
//! the reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use topiq::{Config, Functions, HandlerError, Message, QueueModule};
use topiq_testkit::{Broker, Store};

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

on_every_adapter!(
    each_key_runs_one_at_a_time_in_order_through_retries_and_a_crash,
    a_message_whose_key_fails_is_dead_lettered_with_the_reason,
    an_instance_stopping_keeps_its_key_until_its_call_ends,
);

const KEYS: u64 = 12;
const PER_KEY: u64 = 8;

/// The trigger `ledger` on `accounts` (4 partitions), ordered by `data.key`.
fn config(broker: &Broker, store: &Store) -> Config {
    let text = format!(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        {adapter}
      topics:
        accounts: {{ partitions: 4 }}
      shutdown_grace: 5s
runs:
  store: {store}
triggers:
  ledger:
    type: queue
    function: apply
    config:
      topic: accounts
      ordering_key: data.key
      concurrency: 4
      visibility_timeout: 2s
      retry: {{ backoff: fixed, delay: 200ms, max_attempts: 10 }}
",
        adapter = broker.adapter_yaml(),
        store = store.url(),
    );
    Config::from_yaml_with_variables(&text, "test.yaml", &HashMap::new())
        .unwrap_or_else(|err| panic!("{err}"))
}

/// What the handlers saw, across both instances.
#[derive(Default)]
struct Ledger {
    in_flight: HashMap<String, usize>,
    /// Per key, the seq of each call as it started, in start order.
    started: BTreeMap<String, Vec<u64>>,
    /// Per key, the seq of each call that succeeded, in order.
    done: BTreeMap<String, Vec<u64>>,
    /// Keys seen with two calls at once.
    overlaps: Vec<String>,
    /// The instance running the call that hangs, once it started.
    hung_on: Option<usize>,
    /// The instance that started the last call.
    last_on: Option<usize>,
}

/// Leaves the key when the call ends, also when it is dropped (a crash).
struct InFlight(Arc<Mutex<Ledger>>, String);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut ledger = self.0.lock().unwrap();
        *ledger.in_flight.get_mut(&self.1).unwrap() -= 1;
    }
}

/// `apply` on instance `instance`: fails while `attempt <= data.fails`, hangs on the first
/// attempt of `data.hang`, and records everything in `ledger`.
fn functions(ledger: &Arc<Mutex<Ledger>>, instance: usize) -> Functions {
    let ledger = Arc::clone(ledger);
    let mut functions = Functions::new();
    functions.register("apply", move |message: Message| {
        let ledger = Arc::clone(&ledger);
        async move {
            let key = message.data()["key"].as_str().unwrap().to_owned();
            let seq = message.data()["seq"].as_u64().unwrap();
            let _in_flight = {
                let mut book = ledger.lock().unwrap();
                let count = book.in_flight.entry(key.clone()).or_default();
                *count += 1;
                if *count > 1 {
                    book.overlaps.push(key.clone());
                }
                book.started.entry(key.clone()).or_default().push(seq);
                book.last_on = Some(instance);
                InFlight(Arc::clone(&ledger), key.clone())
            };
            if message.data()["hang"] == true && message.attempt == 1 {
                ledger.lock().unwrap().hung_on = Some(instance);
                std::future::pending::<()>().await;
            }
            let wait = message.data()["wait_ms"].as_u64().unwrap_or(5);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let fails = message.data()["fails"].as_u64().unwrap_or(0);
            if u64::from(message.attempt) <= fails {
                return Err(HandlerError::retryable("not yet"));
            }
            ledger
                .lock()
                .unwrap()
                .done
                .entry(key)
                .or_default()
                .push(seq);
            Ok(())
        }
    });
    functions
}

async fn instance(
    broker: &Broker,
    store: &Store,
    ledger: &Arc<Mutex<Ledger>>,
    (number, beside): (usize, Option<&QueueModule>),
) -> QueueModule {
    let functions = functions(ledger, number);
    match (broker, beside) {
        (Broker::Memory, Some(beside)) => {
            QueueModule::new_on(config(broker, store), functions, beside.adapter().clone()).await
        }
        _ => QueueModule::new(config(broker, store), functions).await,
    }
    .unwrap()
}

async fn call(module: &QueueModule, name: &str, args: Value) -> Value {
    module
        .call(name, args)
        .await
        .unwrap_or_else(|err| panic!("{name}: {err}"))
}

/// Polls `done` every 20 ms until it holds; panics with `what` after `within`.
async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 12 keys x 8 messages, enqueued interleaved; every third key's fourth message fails
/// twice, one message hangs on its first attempt. The instance running the hanging call
/// crashes (its workers aborted, the call dropped unsettled) and starts again.
async fn each_key_runs_one_at_a_time_in_order_through_retries_and_a_crash(
    broker: Broker,
    store: Store,
) {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let first = instance(&broker, &store, &ledger, (0, None)).await;
    let second = instance(&broker, &store, &ledger, (1, Some(&first))).await;
    let items: Vec<Value> = (0..PER_KEY)
        .flat_map(|seq| (0..KEYS).map(move |key| (key, seq)))
        .map(|(key, seq)| {
            let fails = if key % 3 == 0 && seq == 3 { 2 } else { 0 };
            let hang = key == 7 && seq == 2;
            json!({"data": {"key": format!("k{key}"), "seq": seq, "fails": fails, "hang": hang}})
        })
        .collect();
    for chunk in items.chunks(24) {
        let args = json!({"topic": "accounts", "messages": chunk});
        call(&first, "queue.enqueue_batch", args).await;
    }
    let mut workers = [Some(first.start_workers()), Some(second.start_workers())];
    eventually("the hanging call", Duration::from_secs(30), || {
        ledger.lock().unwrap().hung_on.is_some()
    })
    .await;
    let crashed = ledger.lock().unwrap().hung_on.unwrap();
    workers[crashed].take().unwrap().abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    workers[crashed] = Some([&first, &second][crashed].start_workers());
    eventually("every message handled", Duration::from_secs(90), || {
        let book = ledger.lock().unwrap();
        book.done.len() == usize::try_from(KEYS).unwrap()
            && book
                .done
                .values()
                .all(|done| done.last() == Some(&(PER_KEY - 1)))
    })
    .await;
    for workers in workers.into_iter().flatten() {
        workers.shutdown().await;
    }
    check(&ledger.lock().unwrap());
    first.close().await;
    if !matches!(broker, Broker::Memory) {
        second.close().await;
    }
}

/// The checker: no key had two calls at once, each key's calls started in enqueue order,
/// and its messages succeeded in that order.
fn check(book: &Ledger) {
    assert!(
        book.overlaps.is_empty(),
        "two in flight: {:?}",
        book.overlaps
    );
    let in_order: Vec<u64> = (0..PER_KEY).collect();
    for key in 0..KEYS {
        let key = format!("k{key}");
        // At least once: a crash between a call's end and its ack runs it again, right
        // after (its key waits for it).
        let mut done = book.done[&key].clone();
        done.dedup();
        assert_eq!(
            done, in_order,
            "{key} handled out of order: {:?}",
            book.done[&key]
        );
        let started = &book.started[&key];
        assert!(
            started.windows(2).all(|pair| pair[0] <= pair[1]),
            "{key} started out of order: {started:?}"
        );
    }
}

/// A message without the key's field cannot be put in order: the ordered trigger
/// dead-letters it, naming the expression, and the key's other messages go on. A priority
/// on a topic in per-key order is refused.
async fn a_message_whose_key_fails_is_dead_lettered_with_the_reason(broker: Broker, store: Store) {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let module = instance(&broker, &store, &ledger, (0, None)).await;
    let keyless = json!({"topic": "accounts", "data": {"seq": 0}});
    let id = call(&module, "queue.enqueue", keyless).await["message_id"].clone();
    let keyed = json!({"topic": "accounts", "data": {"key": "k1", "seq": 1}});
    call(&module, "queue.enqueue", keyed).await;
    let prioritized = json!({"topic": "accounts", "data": {"key": "k1"}, "priority": 1});
    let refused = module.call("queue.enqueue", prioritized).await.unwrap_err();
    assert!(refused.to_string().contains("per-key order"), "{refused}");
    let workers = module.start_workers();
    eventually("the keyed message handled", Duration::from_secs(30), || {
        ledger.lock().unwrap().done.contains_key("k1")
    })
    .await;
    let mut records = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        records = call(&module, "queue.dlq_list", json!({"topic": "accounts"})).await;
        if records["messages"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = &records["messages"][0];
    assert_eq!(record["data"], json!({"seq": 0}), "{records}");
    assert_eq!(record["attempts"], 1, "{record}");
    let error = record["error"]["message"].as_str().unwrap();
    assert!(error.contains("`data.key` failed"), "{record}");
    // Its run ends dead-lettered after one attempt, with the same reason.
    let args = json!({"id": id, "trigger": "ledger"});
    let run = call(&module, "queue.run_get", args).await["runs"][0].clone();
    assert_eq!(run["state"], "dead_lettered", "{run}");
    assert_eq!(run["attempts"].as_array().unwrap().len(), 1, "{run}");
    let reason = run["attempts"][0]["error"]["message"].as_str().unwrap();
    assert!(reason.contains("`data.key` failed"), "{run}");
    assert!(
        ledger
            .lock()
            .unwrap()
            .started
            .values()
            .flatten()
            .all(|&seq| seq == 1)
    );
    workers.shutdown().await;
    module.close().await;
}

/// An instance that stops while it runs a key's message (a deploy) keeps that key until the
/// call ends: the other instance takes the key's next message only then.
async fn an_instance_stopping_keeps_its_key_until_its_call_ends(broker: Broker, store: Store) {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let first = instance(&broker, &store, &ledger, (0, None)).await;
    let second = instance(&broker, &store, &ledger, (1, Some(&first))).await;
    for (seq, wait_ms) in [(0, 1500), (1, 5), (2, 5)] {
        let data = json!({"key": "k0", "seq": seq, "wait_ms": wait_ms});
        call(
            &first,
            "queue.enqueue",
            json!({"topic": "accounts", "data": data}),
        )
        .await;
    }
    let mut workers = [Some(first.start_workers()), Some(second.start_workers())];
    eventually("the slow call", Duration::from_secs(30), || {
        ledger.lock().unwrap().started.contains_key("k0")
    })
    .await;
    let running_on = ledger.lock().unwrap().last_on.unwrap();
    // Waits for the running call (the shutdown grace), as a deploy's SIGTERM does.
    workers[running_on].take().unwrap().shutdown().await;
    eventually(
        "the key's messages handled",
        Duration::from_secs(30),
        || {
            ledger
                .lock()
                .unwrap()
                .done
                .get("k0")
                .is_some_and(|done| done.len() >= 3)
        },
    )
    .await;
    for workers in workers.into_iter().flatten() {
        workers.shutdown().await;
    }
    {
        let book = ledger.lock().unwrap();
        assert!(
            book.overlaps.is_empty(),
            "two in flight: {:?}",
            book.overlaps
        );
        assert_eq!(book.done["k0"], [0, 1, 2]);
    }
    first.close().await;
    if !matches!(broker, Broker::Memory) {
        second.close().await;
    }
}
