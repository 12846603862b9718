//! Priority on the in-memory adapter, with one instance and with two sharing the adapter:
//! under a backlog the highest level is handed out first, and a lower level with messages
//! waiting is served at least once every `8 × levels` handouts (the starvation bound); a
//! priority the topic has no level for is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use topiq::{Config, Functions, Message, QueueModule};

/// Handouts within which a waiting level is served: 8 pulls per turn, 3 levels.
const BOUND: usize = 8 * 3;

fn config() -> Config {
    let text = "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
      topics:
        jobs: { priority_levels: 3 }
triggers:
  work:
    type: queue
    function: record
    config:
      topic: jobs
";
    Config::from_yaml_with_variables(text, "test.yaml", &HashMap::new())
        .unwrap_or_else(|err| panic!("{err}"))
}

/// Records each message's priority (`data.p`) in handling order.
fn functions(order: &Arc<Mutex<Vec<u64>>>) -> Functions {
    let order = Arc::clone(order);
    let mut functions = Functions::new();
    functions.register("record", move |message: Message| {
        let order = Arc::clone(&order);
        async move {
            order
                .lock()
                .unwrap()
                .push(message.data()["p"].as_u64().unwrap());
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok(())
        }
    });
    functions
}

/// 40 messages at priority 0, then 40 at priority 2.
async fn backlog(module: &QueueModule) {
    for p in [0, 2] {
        for _ in 0..40 {
            let args = json!({"topic": "jobs", "data": {"p": p}, "priority": p});
            module.call("queue.enqueue", args).await.unwrap();
        }
    }
}

async fn wait_for(order: &Arc<Mutex<Vec<u64>>>, count: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while order.lock().unwrap().len() < count {
        assert!(Instant::now() < deadline, "{:?}", order.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    order.lock().unwrap().clone()
}

/// How many low messages were handled before the last high one.
fn lows_before_the_last_high(order: &[u64]) -> usize {
    let last_high = order.iter().rposition(|&p| p == 2).unwrap();
    order[..last_high].iter().filter(|&&p| p == 0).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_goes_highest_first_and_lower_levels_keep_moving() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let module = QueueModule::new(config(), functions(&order)).await.unwrap();
    backlog(&module).await;
    let workers = module.start_workers();
    let order = wait_for(&order, 80).await;
    let lows: Vec<usize> = (0..order.len()).filter(|&at| order[at] == 0).collect();
    assert!(
        lows[0] < BOUND,
        "the first low one came at {}: {order:?}",
        lows[0]
    );
    let last_high = order.iter().rposition(|&p| p == 2).unwrap();
    for pair in lows.windows(2).filter(|pair| pair[1] < last_high) {
        assert!(
            pair[1] - pair[0] <= BOUND,
            "a low one waited past the bound: {order:?}"
        );
    }
    let lows_early = lows_before_the_last_high(&order);
    assert!(
        (1..=6).contains(&lows_early),
        "{lows_early} low first: {order:?}"
    );
    workers.shutdown().await;
    module.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_hand_out_the_highest_first() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let first = QueueModule::new(config(), functions(&order)).await.unwrap();
    let adapter = first.adapter().clone();
    let second = QueueModule::new_on(config(), functions(&order), adapter)
        .await
        .unwrap();
    backlog(&first).await;
    let workers = [first.start_workers(), second.start_workers()];
    let order = wait_for(&order, 80).await;
    let lows_early = lows_before_the_last_high(&order);
    assert!(
        (1..=12).contains(&lows_early),
        "{lows_early} low first: {order:?}"
    );
    for workers in workers {
        workers.shutdown().await;
    }
    first.close().await;
}

#[tokio::test]
async fn a_priority_without_its_level_is_refused() {
    let module = QueueModule::new(config(), functions(&Arc::default()))
        .await
        .unwrap();
    let args = json!({"topic": "jobs", "data": {}, "priority": 3});
    let err = module.call("queue.enqueue", args).await.unwrap_err();
    assert_eq!(err.code(), "invalid_argument");
    assert!(
        err.to_string().contains("3 priority level(s), 0 to 2")
            && err.to_string().contains("priority_levels"),
        "{err}"
    );
    let batch = json!({"topic": "jobs", "messages": [{"data": 1, "priority": 2}, {"data": 2, "priority": 9}]});
    let results = module.call("queue.enqueue_batch", batch).await.unwrap();
    assert!(results["results"][0]["message_id"].is_string(), "{results}");
    assert_eq!(results["results"][1]["error"]["code"], "invalid_argument");
    module.close().await;
}
