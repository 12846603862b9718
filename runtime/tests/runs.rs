//! Runs recorded by the module on the in-memory adapter and store: every state a trigger
//! reaches, attempts with their errors, the `queue.run_get` and `queue.run_list` calls, and
//! a trigger that opts out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use topiq::{Config, Functions, HandlerError, Message, QueueModule};

fn config(triggers: &str) -> Config {
    let text = format!(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
      shutdown_grace: 2s
triggers:
{triggers}"
    );
    Config::from_yaml_with_variables(&text, "test.yaml", &HashMap::new())
        .unwrap_or_else(|err| panic!("{err}"))
}

const TRIGGERS: &str = "  mailer:
    type: queue
    function: flaky
    config:
      topic: orders
      retry: { backoff: fixed, delay: 100ms, max_attempts: 3 }
  audit:
    type: queue
    function: ok
    config:
      topic: orders
      condition: 'data.audit == true'
  firehose:
    type: queue
    function: ok
    config:
      topic: orders
      runs: false
";

/// `flaky` fails while `data.fail` is above the attempt, with the attempt in its error.
fn functions() -> Functions {
    let mut functions = Functions::new();
    functions.register("ok", |_message: Message| async move { Ok(()) });
    functions.register("flaky", |message: Message| async move {
        let failures = message.data()["fail"].as_u64().unwrap_or(0);
        if u64::from(message.attempt) <= failures {
            return Err(HandlerError::retryable(format!(
                "SMTP timeout on attempt {}",
                message.attempt
            )));
        }
        Ok(())
    });
    functions
}

async fn call(module: &QueueModule, name: &str, args: Value) -> Value {
    module
        .call(name, args)
        .await
        .unwrap_or_else(|err| panic!("{name}: {err}"))
}

async fn enqueue(module: &QueueModule, data: Value) -> String {
    let result = call(
        module,
        "queue.enqueue",
        json!({"topic": "orders", "data": data}),
    )
    .await;
    result["message_id"].as_str().unwrap().to_owned()
}

/// The run of `id` on `trigger` once it is in `state` (waits up to 10 s).
async fn run_in_state(module: &QueueModule, id: &str, trigger: &str, state: &str) -> Value {
    let args = json!({"id": id, "trigger": trigger});
    for _ in 0..200 {
        let runs = call(module, "queue.run_get", args.clone()).await;
        let run = runs["runs"][0].clone();
        if run["state"] == state {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runs = call(module, "queue.run_get", args).await;
    panic!("run of {id} on {trigger} never reached {state}: {runs:#}");
}

fn states(run: &Value) -> Vec<String> {
    let transitions = run["transitions"].as_array().unwrap();
    transitions
        .iter()
        .map(|transition| transition["state"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_message_has_a_run_per_trigger_from_enqueue_to_success() {
    let module = QueueModule::new(config(TRIGGERS), functions())
        .await
        .unwrap();
    // Read-your-writes: the run is there as soon as enqueue returns.
    let id = enqueue(&module, json!({"fail": 2, "audit": false})).await;
    let queued = call(
        &module,
        "queue.run_get",
        json!({"id": id, "trigger": "mailer"}),
    )
    .await;
    assert_eq!(queued["runs"][0]["state"], "queued");
    let workers = module.start_workers();
    let run = run_in_state(&module, &id, "mailer", "succeeded").await;
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    for (n, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["number"], n + 1);
        assert!(
            attempt["instance"].as_str().unwrap().contains(':'),
            "{attempt}"
        );
        assert!(attempt["duration_ms"].is_u64(), "{attempt}");
    }
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[0]["error"]["message"], "SMTP timeout on attempt 1");
    assert_eq!(attempts[2]["outcome"], "succeeded");
    assert_eq!(
        states(&run),
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
    assert_eq!(run["data"], json!({"fail": 2, "audit": false}));
    run_in_state(&module, &id, "audit", "filtered").await;
    let all = call(&module, "queue.run_get", json!({"id": id})).await;
    let triggers: Vec<&str> = all["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(
        triggers,
        ["audit", "mailer"],
        "the firehose trigger records no run"
    );
    let err = module
        .call("queue.run_get", json!({"id": id, "trigger": "firehose"}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unknown_run");
    workers.shutdown().await;
    module.close().await;
}

#[tokio::test]
async fn failed_runs_are_dead_lettered_listed_and_filtered() {
    let module = QueueModule::new(config(TRIGGERS), functions())
        .await
        .unwrap();
    let workers = module.start_workers();
    let failing = enqueue(&module, json!({"fail": 9})).await;
    let fine = enqueue(&module, json!({"fail": 0})).await;
    let dead = run_in_state(&module, &failing, "mailer", "dead_lettered").await;
    assert_eq!(dead["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(dead["attempts"][2]["error"]["kind"], "retries_exhausted");
    run_in_state(&module, &fine, "mailer", "succeeded").await;
    let list = |args: Value| call(&module, "queue.run_list", args);
    let page = list(json!({"trigger": "mailer", "state": "dead_lettered"})).await;
    let ids: Vec<&str> = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [failing.as_str()]);
    let page = list(json!({"topic": "orders", "trigger": "mailer"})).await;
    let ids: Vec<&str> = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [fine.as_str(), failing.as_str()], "newest first");
    let page = list(json!({"error_contains": "smtp"})).await;
    assert_eq!(page["runs"].as_array().unwrap().len(), 1);
    let err = module
        .call("queue.run_list", json!({"state": "lost"}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_argument");
    assert!(err.to_string().contains("dead_lettered"), "{err}");
    workers.shutdown().await;
    module.close().await;
}

#[tokio::test]
async fn a_delayed_message_is_a_delayed_run_until_it_is_due() {
    let module = QueueModule::new(config(TRIGGERS), functions())
        .await
        .unwrap();
    let workers = module.start_workers();
    let args = json!({"topic": "orders", "data": {"fail": 0}, "delay": "1s"});
    let id = call(&module, "queue.enqueue", args).await["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = call(
        &module,
        "queue.run_get",
        json!({"id": id, "trigger": "mailer"}),
    )
    .await;
    assert_eq!(run["runs"][0]["state"], "delayed");
    assert!(run["runs"][0]["run_at"].is_string());
    let run = run_in_state(&module, &id, "mailer", "succeeded").await;
    assert_eq!(states(&run), ["delayed", "running", "succeeded"]);
    workers.shutdown().await;
    module.close().await;
}

#[test]
fn a_bad_runs_section_is_named() {
    let text = "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
runs:
  store: mysql://db/runs
";
    let err = Config::from_yaml_with_variables(text, "test.yaml", &HashMap::new()).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("runs.store") && shown.contains("sqlite://"),
        "{shown}"
    );
}

const SLOW_TRIGGER: &str = "  worker:
    type: queue
    function: slow
    config:
      topic: jobs
      retry: { backoff: fixed, delay: 100ms, max_attempts: 3 }
";

/// `slow` reports progress, returns `{"done": n}` when `data.wait_ms` passed, and counts its
/// calls and the calls dropped before they finished.
fn slow_functions(calls: Arc<AtomicUsize>, dropped: Arc<AtomicUsize>) -> Functions {
    let mut functions = Functions::new();
    functions.register_returning("slow", move |message: Message| {
        let (calls, dropped) = (Arc::clone(&calls), Arc::clone(&dropped));
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let guard = DropCounter(Some(dropped));
            message.progress(json!({"step": 1})).await;
            let wait = message.data()["wait_ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            std::mem::forget(guard);
            Ok(json!({"done": message.data()["n"]}))
        }
    });
    functions
}

/// Counts one drop, unless forgotten: the handler's future was dropped before it finished.
struct DropCounter(Option<Arc<AtomicUsize>>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        if let Some(count) = self.0.take() {
            count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn enqueue_job(module: &QueueModule, data: Value, delay: Option<&str>) -> String {
    let mut args = json!({"topic": "jobs", "data": data});
    if let Some(delay) = delay {
        args["delay"] = json!(delay);
    }
    let result = call(module, "queue.enqueue", args).await;
    result["message_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_result_and_progress_are_kept_and_a_finished_run_is_replayed_to_its_trigger() {
    let (calls, dropped) = (Arc::default(), Arc::default());
    let module = QueueModule::new(config(SLOW_TRIGGER), slow_functions(calls, dropped))
        .await
        .unwrap();
    let workers = module.start_workers();
    let id = enqueue_job(&module, json!({"n": 7}), None).await;
    let run = run_in_state(&module, &id, "worker", "succeeded").await;
    assert_eq!(run["result"], json!({"done": 7}));
    assert_eq!(run["progress"], json!({"step": 1}));
    let replayed = call(
        &module,
        "queue.run_replay",
        json!({"id": id, "data": {"n": 8}}),
    )
    .await;
    let replay = replayed["message_id"].as_str().unwrap();
    assert_ne!(replay, id);
    let run = run_in_state(&module, replay, "worker", "succeeded").await;
    assert_eq!(run["replay_of"], id.as_str());
    assert_eq!(run["result"], json!({"done": 8}));
    let again = call(&module, "queue.run_replay", json!({"id": id})).await;
    let run = run_in_state(
        &module,
        again["message_id"].as_str().unwrap(),
        "worker",
        "succeeded",
    )
    .await;
    assert_eq!(
        run["data"],
        json!({"n": 7}),
        "a replay without data sends the run's own"
    );
    workers.shutdown().await;
    module.close().await;
}

#[tokio::test]
async fn a_waiting_run_cancelled_is_never_handled_and_a_running_one_is_stopped() {
    let (calls, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let functions = slow_functions(Arc::clone(&calls), Arc::clone(&dropped));
    let module = QueueModule::new(config(SLOW_TRIGGER), functions)
        .await
        .unwrap();
    let workers = module.start_workers();
    let waiting = enqueue_job(&module, json!({"n": 1}), Some("1s")).await;
    let cancelled = call(&module, "queue.run_cancel", json!({"id": waiting})).await;
    assert_eq!(cancelled, json!({"cancelled": 1}));
    let run = call(&module, "queue.run_get", json!({"id": waiting})).await;
    assert_eq!(run["runs"][0]["state"], "cancelled");
    let running = enqueue_job(&module, json!({"n": 2, "wait_ms": 60_000}), None).await;
    run_in_state(&module, &running, "worker", "running").await;
    let cancelled = call(
        &module,
        "queue.run_cancel",
        json!({"id": running, "trigger": "worker"}),
    )
    .await;
    assert_eq!(cancelled, json!({"cancelled": 1}));
    let run = run_in_state(&module, &running, "worker", "cancelled").await;
    assert_eq!(run["attempts"][0]["outcome"], "cancelled");
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the running handler was stopped"
    );
    // Past the delayed run's time and a retry's backoff: neither is handed to the handler.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the running run's one call"
    );
    let run = call(&module, "queue.run_get", json!({"id": running})).await;
    assert_eq!(
        run["runs"][0]["attempts"].as_array().unwrap().len(),
        1,
        "never retried"
    );
    let err = module
        .call("queue.run_cancel", json!({"id": running}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "run_state");
    assert!(err.to_string().contains("already finished"), "{err}");
    workers.shutdown().await;
    module.close().await;
}

#[tokio::test]
async fn finished_runs_are_swept_after_their_keep_time() {
    let text = "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
runs:
  succeeded_for: 1s
  failed_for: 1h
triggers:
  mailer:
    type: queue
    function: flaky
    config:
      topic: orders
      retry: { backoff: fixed, delay: 100ms, max_attempts: 1 }
";
    let config = Config::from_yaml_with_variables(text, "test.yaml", &HashMap::new()).unwrap();
    let module = QueueModule::new(config, functions()).await.unwrap();
    let workers = module.start_workers();
    let succeeded = enqueue(&module, json!({"fail": 0})).await;
    let failed = enqueue(&module, json!({"fail": 1})).await;
    run_in_state(&module, &succeeded, "mailer", "succeeded").await;
    run_in_state(&module, &failed, "mailer", "dead_lettered").await;
    let mut swept = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let args = json!({"id": succeeded});
        if let Err(err) = module.call("queue.run_get", args).await {
            assert_eq!(err.code(), "unknown_run");
            swept = true;
            break;
        }
    }
    assert!(
        swept,
        "the succeeded run is swept about a second after it finished"
    );
    let kept = call(&module, "queue.run_get", json!({"id": failed})).await;
    assert_eq!(
        kept["runs"][0]["state"], "dead_lettered",
        "a failed run is kept longer"
    );
    workers.shutdown().await;
    module.close().await;
}

#[tokio::test]
async fn a_redriven_run_reopens_and_keeps_both_laps_of_attempts() {
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut functions = Functions::new();
    {
        let fixed = Arc::clone(&fixed);
        functions.register("flaky", move |_message: Message| {
            let fixed = fixed.load(Ordering::SeqCst);
            async move {
                if fixed {
                    Ok(())
                } else {
                    Err(HandlerError::non_retryable("the DNS is broken"))
                }
            }
        });
    }
    let triggers = "  mailer:
    type: queue
    function: flaky
    config:
      topic: orders
";
    let module = QueueModule::new(config(triggers), functions).await.unwrap();
    let workers = module.start_workers();
    let id = enqueue(&module, json!({})).await;
    run_in_state(&module, &id, "mailer", "dead_lettered").await;
    fixed.store(true, Ordering::SeqCst);
    let redriven = call(&module, "queue.redrive_dlq", json!({"topic": "orders"})).await;
    assert_eq!(redriven, json!({"redriven": 1}));
    let run = run_in_state(&module, &id, "mailer", "succeeded").await;
    assert_eq!(run["laps"], 1);
    let laps: Vec<(u64, u64)> = run["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["lap"].as_u64().unwrap_or(0),
                a["number"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(laps, [(0, 1), (1, 1)]);
    assert_eq!(
        states(&run),
        [
            "queued",
            "running",
            "dead_lettered",
            "queued",
            "running",
            "succeeded"
        ]
    );
    workers.shutdown().await;
    module.close().await;
}

#[tokio::test]
async fn a_message_past_its_retention_is_an_expired_run() {
    let text = "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
      topics:
        orders: { retention: 1s }
triggers:
  mailer:
    type: queue
    function: flaky
    config:
      topic: orders
";
    let config = Config::from_yaml_with_variables(text, "test.yaml", &HashMap::new()).unwrap();
    let module = QueueModule::new(config, functions()).await.unwrap();
    let id = enqueue(&module, json!({"fail": 0})).await;
    // Nobody consumes until the retention ran out: the adapter dead-letters it on receipt.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let workers = module.start_workers();
    let run = run_in_state(&module, &id, "mailer", "expired").await;
    assert!(
        run["attempts"].as_array().unwrap().is_empty(),
        "never handed to the handler"
    );
    workers.shutdown().await;
    module.close().await;
}
