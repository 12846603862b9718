//! Flow control on the in-memory adapter, JetStream and RabbitMQ, each with two module
//! instances on one trigger sharing one runs store: pausing a trigger (every instance stops
//! taking messages within a second, running calls finish, enqueue goes on, the pause
//! survives restarts, resuming hands everything out once, on its first attempt); schedules
//! (each tick fires once whichever instances run; after downtime `catch_up` decides);
//! priority under a backlog with two instances (the higher level first, the lower one still
//! moving).

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

on_every_adapter!(
    a_pause_holds_on_every_instance_and_across_restarts,
    two_instances_fire_each_tick_once,
    after_downtime_catch_up_decides_the_missed_ticks,
    priority_goes_highest_first_with_two_instances,
);

/// The config of every instance: the adapter, the store, the trigger `mailer` on `orders`
/// calling `work`, `pulse` on `beats` calling `beat`, and the `schedules:` section given.
fn config(broker: &Broker, store: &Store) -> Config {
    config_with(broker, store, "")
}

fn config_with(broker: &Broker, store: &Store, schedules: &str) -> Config {
    let text = config_text(broker, store, schedules);
    Config::from_yaml_with_variables(&text, "test.yaml", &HashMap::new())
        .unwrap_or_else(|err| panic!("{err}"))
}

/// The text of [`config_with`].
fn config_text(broker: &Broker, store: &Store, schedules: &str) -> String {
    format!(
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
  pulse:
    type: queue
    function: beat
    config:
      topic: beats
{schedules}",
        adapter = broker.adapter_yaml(),
        store = store.url(),
    )
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

/// `work` waits `data.wait_ms` and records each call; `beat` records the schedule and tick
/// of each message.
#[derive(Clone, Default)]
struct Work {
    calls: Arc<Mutex<Vec<Call>>>,
    beats: Arc<Mutex<Vec<(String, jiff::Timestamp)>>>,
}

impl Work {
    fn functions(&self) -> Functions {
        let calls = Arc::clone(&self.calls);
        let beats = Arc::clone(&self.beats);
        let mut functions = Functions::new();
        functions.register("beat", move |message: Message| {
            let beats = Arc::clone(&beats);
            async move {
                let (name, tick) = message.schedule_tick().expect("a schedule's message");
                beats.lock().unwrap().push((name.to_owned(), tick));
                Ok(())
            }
        });
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
    instance_of(broker, config(broker, store), work, beside).await
}

/// An instance running `config` (see [`instance`]).
async fn instance_of(
    broker: &Broker,
    config: Config,
    work: &Work,
    beside: Option<&QueueModule>,
) -> QueueModule {
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

impl Work {
    fn beats(&self) -> Vec<(String, jiff::Timestamp)> {
        self.beats.lock().unwrap().clone()
    }
}

const HEARTBEAT: &str = "schedules:
  heartbeat:
    every: 1s
    topic: beats
    data: { kind: beat }
";

async fn two_instances_fire_each_tick_once(broker: Broker, store: Store) {
    let work = Work::default();
    // The schedule is made with the first instance and fires from its next second on (ticks
    // that fell before the workers start are still on time then). It starts when the first
    // instance declares it, the schedule's first `last_tick`: reading the clock before the
    // instance is made would count the seconds its set-up (broker, store) takes, and a set-up
    // that crosses a whole second would expect a tick the schedule never had.
    let first = instance_of(
        &broker,
        config_with(&broker, &store, HEARTBEAT),
        &work,
        None,
    )
    .await;
    let declared = call(&first, "queue.schedule_list", json!({})).await;
    let created: jiff::Timestamp = declared["schedules"][0]["last_tick"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let second_config = config_with(&broker, &store, HEARTBEAT);
    let second = instance_of(&broker, second_config, &work, Some(&first)).await;
    let workers = [first.start_workers(), second.start_workers()];
    tokio::time::sleep(Duration::from_secs(20)).await;
    call(
        &second,
        "queue.schedule_pause",
        json!({"name": "heartbeat"}),
    )
    .await;
    let paused = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let beats = work.beats();
    let ticks: Vec<jiff::Timestamp> = beats.iter().map(|(_, tick)| *tick).collect();
    let distinct: HashSet<jiff::Timestamp> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick fired twice: {ticks:?}");
    // One tick per whole second between the schedule's creation and its pause (the last
    // one may fall while the pause is written).
    let seconds = paused.as_second() - created.as_second();
    let count = i64::try_from(ticks.len()).unwrap();
    assert!(
        count == seconds || count == seconds - 1,
        "{count} ticks over {seconds}s (declared {created}, paused {paused}): {ticks:?}"
    );
    assert!(beats.iter().all(|(name, _)| name == "heartbeat"));
    assert!(
        ticks.iter().all(|tick| *tick > created && *tick <= paused),
        "{ticks:?}"
    );
    let listed = call(&first, "queue.schedule_list", json!({})).await;
    let schedule = &listed["schedules"][0];
    assert_eq!(
        (schedule["name"].as_str(), schedule["paused"].as_bool()),
        (Some("heartbeat"), Some(true))
    );
    let latest = ticks.iter().max().unwrap();
    assert_eq!(schedule["last_tick"], latest.to_string(), "{schedule}");
    for workers in workers {
        workers.shutdown().await;
    }
    first.close().await;
    if !matches!(broker, Broker::Memory) {
        second.close().await;
    }
}

async fn after_downtime_catch_up_decides_the_missed_ticks(broker: Broker, store: Store) {
    // Hourly schedules made three hours ago and never fired since: every instance was down.
    // Clear of the ten seconds after a full hour, when that hour's tick is on time anyway.
    let now = jiff::Timestamp::now();
    if now.as_second().rem_euclid(3600) < 15 {
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    let runs_store = topiq_runs::open(&store.url()).await.unwrap();
    let three_hours_ago = now
        .checked_sub(jiff::SignedDuration::from_hours(3))
        .unwrap();
    for (name, catch_up) in [("catch-up-last", "last"), ("catch-up-none", "none")] {
        let spec: topiq_runs::ScheduleSpec = serde_json::from_value(json!({
            "every": "1h", "topic": "beats", "catch_up": catch_up,
        }))
        .unwrap();
        runs_store
            .put_schedule(name, &spec, false, three_hours_ago)
            .await
            .unwrap();
    }
    let work = Work::default();
    let started = Instant::now();
    let [(first, first_workers), (second, second_workers)] =
        two_instances(&broker, &store, &work).await;
    // Watched for at least 3 s, and 1 s past the first beat (a second firing would come
    // within 250 ms): a loaded machine may take longer than 3 s to start both instances.
    let first_beat = Instant::now() + Duration::from_secs(15);
    while work.beats().is_empty() && Instant::now() < first_beat {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let watched = (started + Duration::from_secs(3)).max(Instant::now() + Duration::from_secs(1));
    tokio::time::sleep_until(watched.into()).await;
    let hour = jiff::Timestamp::from_second(now.as_second() / 3600 * 3600).unwrap();
    assert_eq!(
        work.beats(),
        [("catch-up-last".to_owned(), hour)],
        "the latest missed tick fires once; none fires nothing"
    );
    let listed = call(&first, "queue.schedule_list", json!({})).await;
    let last = listed["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|schedule| schedule["name"] == "catch-up-last")
        .unwrap()
        .clone();
    assert_eq!(last["last_tick"], hour.to_string(), "{last}");
    stop(&second, second_workers, &broker).await;
    stop(&first, first_workers, &broker).await;
    if matches!(broker, Broker::Memory) {
        first.close().await;
    }
}

const LEVELS: &str = "      topics:\n        orders: { priority_levels: 3 }\n";

/// 40 messages at priority 0, then 40 at 2, waiting before two instances start: the high
/// ones go first, and the low ones keep moving (the starvation bound).
async fn priority_goes_highest_first_with_two_instances(broker: Broker, store: Store) {
    let work = Work::default();
    let config = || {
        let text = config_text(&broker, &store, "").replace(
            "      shutdown_grace",
            &format!("{LEVELS}      shutdown_grace"),
        );
        Config::from_yaml_with_variables(&text, "test.yaml", &HashMap::new())
            .unwrap_or_else(|err| panic!("{err}"))
    };
    let first = instance_of(&broker, config(), &work, None).await;
    let second = instance_of(&broker, config(), &work, Some(&first)).await;
    for p in [0_u64, 2] {
        for n in 0..40 {
            let data = json!({"n": p * 100 + n, "wait_ms": 5});
            let args = json!({"topic": "orders", "data": data, "priority": p});
            call(&first, "queue.enqueue", args).await;
        }
    }
    let workers = [first.start_workers(), second.start_workers()];
    work.wait_for(80, Duration::from_secs(60)).await;
    let calls = work.calls();
    let last_high = calls.iter().rposition(|call| call.n >= 200).unwrap();
    let lows_early = calls[..last_high]
        .iter()
        .filter(|call| call.n < 100)
        .count();
    assert!(
        (1..=16).contains(&lows_early),
        "{lows_early} low before the last high: {:?}",
        calls.iter().map(|call| call.n).collect::<Vec<_>>()
    );
    assert!(calls.iter().all(|call| call.attempt == 1), "{calls:?}");
    for workers in workers {
        workers.shutdown().await;
    }
    first.close().await;
    if !matches!(broker, Broker::Memory) {
        second.close().await;
    }
}
