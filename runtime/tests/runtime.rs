//! The queue module end to end on the in-memory adapter: triggers, conditions, retries with
//! each backoff, the DLQ and redrive, the `queue.*` calls, timeouts and graceful shutdown.
//!
//! Timing tests run on tokio's paused clock, so they check exact attempt times without
//! sleeping.

// Test helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};
use topiq::{Config, Functions, HandlerError, Message, QueueModule};

/// What a handler saw.
#[derive(Clone, Debug)]
struct Seen {
    trigger: String,
    id: String,
    attempt: u32,
    data: Value,
    at: Instant,
}

fn seen(message: &Message) -> Seen {
    Seen {
        trigger: message.trigger().to_string(),
        id: message.id.to_string(),
        attempt: message.attempt,
        data: message.data().clone(),
        at: Instant::now(),
    }
}

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

/// Registers `name` as a handler that reports each call and then returns `outcome(call)`.
fn recording(
    functions: &mut Functions,
    name: &str,
    events: mpsc::UnboundedSender<Seen>,
    outcome: impl Fn(&Message) -> Result<(), HandlerError> + Send + Sync + 'static,
) {
    let outcome = Arc::new(outcome);
    functions.register(name, move |message: Message| {
        let events = events.clone();
        let outcome = Arc::clone(&outcome);
        async move {
            events.send(seen(&message)).ok();
            outcome(&message)
        }
    });
}

async fn next(events: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    timeout(Duration::from_secs(120), events.recv())
        .await
        .expect("no handler call in time")
        .expect("channel open")
}

async fn nothing_more(events: &mut mpsc::UnboundedReceiver<Seen>) {
    if let Ok(Some(extra)) = timeout(Duration::from_secs(5), events.recv()).await {
        panic!("unexpected handler call: {extra:?}");
    }
}

async fn enqueue(module: &QueueModule, topic: &str, data: Value) -> String {
    let result = module
        .call("queue.enqueue", json!({"topic": topic, "data": data}))
        .await
        .unwrap_or_else(|err| panic!("enqueue failed: {err}"));
    result["message_id"]
        .as_str()
        .expect("message_id")
        .to_owned()
}

const TWO_TRIGGERS: &str = "  send:
    type: queue
    function: record
    config:
      topic: orders
  audit:
    type: queue
    function: record
    config:
      topic: orders
      condition: 'data.priority == \"high\"'
";

#[tokio::test(start_paused = true)]
async fn every_trigger_gets_every_message_and_conditions_filter() {
    let (events, mut received) = mpsc::unbounded_channel();
    let mut functions = Functions::new();
    recording(&mut functions, "record", events, |_| Ok(()));
    let module = QueueModule::new(config(TWO_TRIGGERS), functions)
        .await
        .unwrap();
    let workers = module.start_workers();

    let low = enqueue(&module, "orders", json!({"priority": "low"})).await;
    let high = enqueue(&module, "orders", json!({"priority": "high"})).await;
    let mut calls = HashSet::new();
    for _ in 0..3 {
        let seen = next(&mut received).await;
        calls.insert((seen.trigger, seen.id));
    }
    nothing_more(&mut received).await;
    let expected: HashSet<_> = [
        ("send".to_owned(), low.clone()),
        ("send".to_owned(), high.clone()),
        ("audit".to_owned(), high),
    ]
    .into_iter()
    .collect();
    assert_eq!(calls, expected);

    let stats = module
        .call("queue.stats", json!({"topic": "orders"}))
        .await
        .unwrap();
    let audit = stats["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["trigger"] == "audit")
        .unwrap()
        .clone();
    assert_eq!(audit["filtered"], 1, "{stats}");
    assert_eq!(audit["succeeded"], 1, "{stats}");
    assert_eq!(audit["waiting"], 0, "{stats}");
    workers.shutdown().await;
}

/// Runs a trigger whose handler always fails and returns the gaps between its attempts.
async fn attempt_gaps(retry_yaml: &str) -> (Vec<Duration>, QueueModule) {
    let (events, mut received) = mpsc::unbounded_channel();
    let mut functions = Functions::new();
    recording(&mut functions, "flaky", events, |_| {
        Err(HandlerError::retryable("still down"))
    });
    let triggers = format!(
        "  flaky:
    type: queue
    function: flaky
    config:
      topic: jobs
{retry_yaml}"
    );
    let module = QueueModule::new(config(&triggers), functions)
        .await
        .unwrap();
    let workers = module.start_workers();
    enqueue(&module, "jobs", json!({"job": 1})).await;
    let max_attempts = module.config().triggers[0].retry.max_attempts;
    let mut times = Vec::new();
    for attempt in 1..=max_attempts {
        let seen = next(&mut received).await;
        assert_eq!(seen.attempt, attempt);
        times.push(seen.at);
    }
    nothing_more(&mut received).await;
    workers.shutdown().await;
    let gaps = times.windows(2).map(|pair| pair[1] - pair[0]).collect();
    (gaps, module)
}

fn assert_gaps(gaps: &[Duration], expected_ms: &[u64]) {
    assert_eq!(gaps.len(), expected_ms.len(), "{gaps:?}");
    for (gap, expected) in gaps.iter().zip(expected_ms) {
        let expected = Duration::from_millis(*expected);
        assert!(
            *gap >= expected && *gap <= expected + Duration::from_millis(20),
            "attempt gap {gap:?}, expected {expected:?} (all: {gaps:?})"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn fixed_backoff_waits_retry_delay_ms_between_attempts() {
    let (gaps, module) = attempt_gaps(
        "      metadata:
        infrastructure:
          queue:
            max_retries: 3
            retry_delay_ms: 2000
",
    )
    .await;
    assert_gaps(&gaps, &[2000, 2000, 2000]);
    let count = module
        .call("queue.dlq_count", json!({"topic": "jobs"}))
        .await
        .unwrap();
    assert_eq!(count, json!({"count": 1}));
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_grows_and_stops_at_max() {
    let (gaps, _) = attempt_gaps(
        "      retry:
        backoff: exponential
        initial: 1s
        factor: 2
        max: 3s
        max_attempts: 5
",
    )
    .await;
    assert_gaps(&gaps, &[1000, 2000, 3000, 3000]);
}

#[tokio::test(start_paused = true)]
async fn custom_backoff_follows_the_list() {
    let (gaps, _) = attempt_gaps(
        "      retry:
        backoff: custom
        delays: [500ms, 5s]
        max_attempts: 4
",
    )
    .await;
    assert_gaps(&gaps, &[500, 5000, 5000]);
}

#[tokio::test(start_paused = true)]
async fn a_non_retryable_error_goes_straight_to_the_dlq_and_its_topic() {
    let (events, mut received) = mpsc::unbounded_channel();
    let mut functions = Functions::new();
    recording(&mut functions, "charge", events.clone(), |_| {
        Err(HandlerError::non_retryable("card declined"))
    });
    recording(&mut functions, "alert", events, |_| Ok(()));
    let triggers = "  charge:
    type: queue
    function: charge
    config:
      topic: payments
      metadata:
        infrastructure:
          queue:
            max_retries: 5
            dead_letter_topic: payments.failed
  alert:
    type: queue
    function: alert
    config:
      topic: payments.failed
";
    let module = QueueModule::new(config(triggers), functions).await.unwrap();
    let workers = module.start_workers();
    let id = enqueue(&module, "payments", json!({"amount": 42})).await;

    let first = next(&mut received).await;
    assert_eq!((first.trigger.as_str(), first.attempt), ("charge", 1));
    let alert = next(&mut received).await;
    assert_eq!(alert.trigger, "alert");
    assert_eq!(alert.data["id"], id.as_str());
    assert_eq!(alert.data["data"], json!({"amount": 42}));
    assert_eq!(alert.data["attempts"], 1);
    assert_eq!(alert.data["error"]["kind"], "non_retryable");
    assert_eq!(alert.data["error"]["message"], "card declined");
    nothing_more(&mut received).await;

    let list = module
        .call(
            "queue.dlq_list",
            json!({"topic": "payments", "trigger": "charge"}),
        )
        .await
        .unwrap();
    let record = &list["messages"][0];
    assert_eq!(record["id"], id.as_str());
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["error"]["kind"], "non_retryable");
    assert_eq!(list["next_cursor"], Value::Null);
    workers.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn redrive_delivers_again_to_the_failing_trigger_only() {
    let (events, mut received) = mpsc::unbounded_channel();
    let fixed = Arc::new(AtomicUsize::new(0));
    let mut functions = Functions::new();
    let is_fixed = Arc::clone(&fixed);
    recording(&mut functions, "send", events.clone(), move |_| {
        if is_fixed.load(Ordering::SeqCst) == 1 {
            Ok(())
        } else {
            Err(HandlerError::non_retryable("smtp rejected"))
        }
    });
    recording(&mut functions, "audit", events, |_| Ok(()));
    let triggers = "  send:
    type: queue
    function: send
    config:
      topic: emails
  audit:
    type: queue
    function: audit
    config:
      topic: emails
";
    let module = QueueModule::new(config(triggers), functions).await.unwrap();
    let workers = module.start_workers();
    let ids: Vec<String> = [
        enqueue(&module, "emails", json!({"n": 1})).await,
        enqueue(&module, "emails", json!({"n": 2})).await,
    ]
    .into();
    for _ in 0..4 {
        next(&mut received).await;
    }
    nothing_more(&mut received).await;
    assert_eq!(
        module
            .call(
                "queue.dlq_count",
                json!({"topic": "emails", "trigger": "send"})
            )
            .await
            .unwrap(),
        json!({"count": 2})
    );

    let dry = module
        .call(
            "queue.redrive_dlq",
            json!({"topic": "emails", "ids": [ids[0]], "dry_run": true}),
        )
        .await
        .unwrap();
    assert_eq!(dry, json!({"would_redrive": 1}));
    nothing_more(&mut received).await;

    fixed.store(1, Ordering::SeqCst);
    let redriven = module
        .call(
            "queue.redrive_dlq",
            json!({"topic": "emails", "error_contains": "smtp", "rate_per_sec": 1}),
        )
        .await
        .unwrap();
    assert_eq!(redriven, json!({"redriven": 2}));
    let mut again = HashSet::new();
    for _ in 0..2 {
        let seen = next(&mut received).await;
        assert_eq!(seen.trigger, "send", "redrive reached another trigger");
        assert_eq!(seen.attempt, 1);
        again.insert(seen.id);
    }
    assert_eq!(again, ids.iter().cloned().collect());
    nothing_more(&mut received).await;
    assert_eq!(
        module
            .call("queue.dlq_count", json!({"topic": "emails"}))
            .await
            .unwrap(),
        json!({"count": 0})
    );
    workers.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn purge_deletes_records_and_logs_nothing_delivered() {
    let (events, mut received) = mpsc::unbounded_channel();
    let mut functions = Functions::new();
    recording(&mut functions, "bad", events, |_| {
        Err(HandlerError::non_retryable("no"))
    });
    let triggers = "  bad:
    type: queue
    function: bad
    config:
      topic: t
";
    let module = QueueModule::new(config(triggers), functions).await.unwrap();
    let workers = module.start_workers();
    for n in 0..3 {
        enqueue(&module, "t", json!(n)).await;
        next(&mut received).await;
    }
    let purged = module
        .call("queue.dlq_purge", json!({"topic": "t"}))
        .await
        .unwrap();
    assert_eq!(purged, json!({"purged": 3}));
    nothing_more(&mut received).await;
    workers.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn idempotent_and_delayed_enqueue() {
    let (events, mut received) = mpsc::unbounded_channel();
    let mut functions = Functions::new();
    recording(&mut functions, "record", events, |_| Ok(()));
    let triggers = "  record:
    type: queue
    function: record
    config:
      topic: t
";
    let module = QueueModule::new(config(triggers), functions).await.unwrap();
    let workers = module.start_workers();
    let args = json!({"topic": "t", "data": {"order": 7}, "idempotency_key": "order-7"});
    let first = module.call("queue.enqueue", args.clone()).await.unwrap();
    let second = module.call("queue.enqueue", args).await.unwrap();
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!(first["message_id"], second["message_id"]);
    next(&mut received).await;
    nothing_more(&mut received).await;

    let enqueued_at = Instant::now();
    module
        .call(
            "queue.enqueue",
            json!({"topic": "t", "data": "later", "delay": "30s"}),
        )
        .await
        .unwrap();
    let seen = next(&mut received).await;
    assert_eq!(seen.data, json!("later"));
    assert!(
        seen.at - enqueued_at >= Duration::from_secs(29),
        "delivered after {:?}",
        seen.at - enqueued_at
    );
    workers.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_times_out_is_retried_then_dead_lettered_as_timeout() {
    let mut functions = Functions::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    functions.register("hang", move |_message: Message| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    });
    let triggers = "  hang:
    type: queue
    function: hang
    config:
      topic: t
      timeout: 2s
      visibility_timeout: 1s
      retry:
        backoff: fixed
        delay: 1s
        max_attempts: 2
";
    let module = QueueModule::new(config(triggers), functions).await.unwrap();
    let workers = module.start_workers();
    enqueue(&module, "t", json!("slow")).await;
    sleep(Duration::from_secs(30)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "two attempts, each cut by the timeout"
    );
    let list = module
        .call("queue.dlq_list", json!({"topic": "t"}))
        .await
        .unwrap();
    assert_eq!(list["messages"][0]["error"]["kind"], "timeout", "{list}");
    assert_eq!(list["messages"][0]["attempts"], 2, "{list}");
    workers.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_long_handler_keeps_its_lease_and_runs_once() {
    let (events, mut received) = mpsc::unbounded_channel();
    let mut functions = Functions::new();
    functions.register("long", move |message: Message| {
        let events = events.clone();
        async move {
            events.send(seen(&message)).ok();
            sleep(Duration::from_secs(10)).await;
            Ok(())
        }
    });
    let triggers = "  long:
    type: queue
    function: long
    config:
      topic: t
      visibility_timeout: 2s
      timeout: 1m
";
    let module = QueueModule::new(config(triggers), functions).await.unwrap();
    let workers = module.start_workers();
    enqueue(&module, "t", json!("long")).await;
    assert_eq!(next(&mut received).await.attempt, 1);
    nothing_more(&mut received).await;
    sleep(Duration::from_secs(20)).await;
    let stats = module.call("queue.stats", json!({})).await.unwrap();
    assert_eq!(stats["triggers"][0]["succeeded"], 1, "{stats}");
    assert_eq!(stats["triggers"][0]["in_flight"], 0, "{stats}");
    workers.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn at_most_concurrency_handlers_run_at_once() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut functions = Functions::new();
    let (r, p, d) = (Arc::clone(&running), Arc::clone(&peak), Arc::clone(&done));
    functions.register("work", move |_message: Message| {
        let (running, peak, done) = (Arc::clone(&r), Arc::clone(&p), Arc::clone(&d));
        async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            sleep(Duration::from_millis(100)).await;
            running.fetch_sub(1, Ordering::SeqCst);
            done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let triggers = "  work:
    type: queue
    function: work
    config:
      topic: t
      concurrency: 3
";
    let module = QueueModule::new(config(triggers), functions).await.unwrap();
    let workers = module.start_workers();
    for n in 0..20 {
        enqueue(&module, "t", json!(n)).await;
    }
    sleep(Duration::from_secs(5)).await;
    assert_eq!(done.load(Ordering::SeqCst), 20);
    assert_eq!(peak.load(Ordering::SeqCst), 3);
    workers.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn batch_functions_get_batches_and_settle_each_message() {
    let (events, mut received) = mpsc::unbounded_channel::<Vec<Value>>();
    let mut functions = Functions::new();
    functions.register_batch("bulk", move |messages: Vec<Message>| {
        let events = events.clone();
        async move {
            events
                .send(messages.iter().map(|m| m.data().clone()).collect())
                .ok();
            messages
                .iter()
                .map(|m| {
                    if m.data() == &json!(3) {
                        Err(HandlerError::non_retryable("three is bad"))
                    } else {
                        Ok(())
                    }
                })
                .collect()
        }
    });
    let triggers = "  bulk:
    type: queue
    function: bulk
    config:
      topic: t
      batch_size: 4
";
    let module = QueueModule::new(config(triggers), functions).await.unwrap();
    for n in 0..6 {
        enqueue(&module, "t", json!(n)).await;
    }
    let workers = module.start_workers();
    let first = timeout(Duration::from_secs(10), received.recv())
        .await
        .unwrap()
        .unwrap();
    let second = timeout(Duration::from_secs(10), received.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, vec![json!(0), json!(1), json!(2), json!(3)]);
    assert_eq!(second, vec![json!(4), json!(5)]);
    sleep(Duration::from_secs(1)).await;
    let count = module
        .call("queue.dlq_count", json!({"topic": "t"}))
        .await
        .unwrap();
    assert_eq!(count, json!({"count": 1}));
    workers.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_retried_like_an_error() {
    let (events, mut received) = mpsc::unbounded_channel();
    let mut functions = Functions::new();
    recording(&mut functions, "boom", events, |message| {
        if message.attempt == 1 {
            panic!("handler bug");
        }
        Ok(())
    });
    let triggers = "  boom:
    type: queue
    function: boom
    config:
      topic: t
";
    let module = QueueModule::new(config(triggers), functions).await.unwrap();
    let workers = module.start_workers();
    enqueue(&module, "t", json!(1)).await;
    assert_eq!(next(&mut received).await.attempt, 1);
    assert_eq!(next(&mut received).await.attempt, 2);
    nothing_more(&mut received).await;
    workers.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_finishes_running_handlers_and_loses_nothing() {
    let handled = Arc::new(std::sync::Mutex::new(Vec::<(String, u32)>::new()));
    let functions = |handled: Arc<std::sync::Mutex<Vec<(String, u32)>>>, work: Duration| {
        let mut functions = Functions::new();
        functions.register("slow", move |message: Message| {
            let handled = Arc::clone(&handled);
            async move {
                sleep(work).await;
                handled
                    .lock()
                    .unwrap()
                    .push((message.id.to_string(), message.attempt));
                Ok(())
            }
        });
        functions
    };
    let triggers = "  slow:
    type: queue
    function: slow
    config:
      topic: t
      concurrency: 4
";
    // The first instance runs 10s handlers but has a 2s grace: its running handlers are
    // abandoned and their messages released.
    let module = QueueModule::new(
        config(triggers),
        functions(Arc::clone(&handled), Duration::from_secs(10)),
    )
    .await
    .unwrap();
    let mut ids = HashSet::new();
    for n in 0..12 {
        ids.insert(enqueue(&module, "t", json!(n)).await);
    }
    let workers = module.start_workers();
    sleep(Duration::from_secs(25)).await;
    let before = handled.lock().unwrap().len();
    assert_eq!(before, 8, "two rounds of 4 done in 25s");
    workers.shutdown().await;
    assert_eq!(
        handled.lock().unwrap().len(),
        8,
        "abandoned calls do not count"
    );

    // A second instance on the same queue (same adapter) handles the rest.
    let stats = module.call("queue.stats", json!({})).await.unwrap();
    assert_eq!(
        stats["triggers"][0]["waiting"], 4,
        "released, not lost: {stats}"
    );
    assert_eq!(stats["triggers"][0]["in_flight"], 0, "{stats}");
    let adapter = module.adapter().clone();
    let _ = adapter;
    let workers = module.start_workers();
    sleep(Duration::from_secs(30)).await;
    workers.shutdown().await;
    let handled = handled.lock().unwrap().clone();
    let handled_ids: HashSet<_> = handled.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(handled_ids, ids, "every message handled");
    assert_eq!(handled.len(), 12, "none twice");
    assert!(
        handled.iter().all(|(_, attempt)| *attempt == 1),
        "a release at shutdown must not spend an attempt: {handled:?}"
    );
}

#[tokio::test]
async fn bad_calls_get_coded_errors() {
    let mut functions = Functions::new();
    functions.register("noop", |_message: Message| async { Ok(()) });
    let module = QueueModule::new(
        config("  noop:\n    type: queue\n    function: noop\n    config:\n      topic: t\n"),
        functions,
    )
    .await
    .unwrap();
    let code = |result: Result<Value, topiq::CallError>| {
        result.expect_err("must fail").to_json()["error"]["code"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        code(
            module
                .call("queue.enqueue", json!({"topic": "bad topic", "data": 1}))
                .await
        ),
        "invalid_topic"
    );
    assert_eq!(
        code(
            module
                .call("queue.enqueue", json!({"topic": "other", "data": 1}))
                .await
        ),
        "unknown_topic"
    );
    assert_eq!(
        code(
            module
                .call(
                    "queue.enqueue",
                    json!({"topic": "t", "data": "x".repeat(200_000)})
                )
                .await
        ),
        "payload_too_large"
    );
    assert_eq!(
        code(
            module
                .call(
                    "queue.enqueue",
                    json!({"topic": "t", "data": 1, "color": "red"})
                )
                .await
        ),
        "invalid_argument"
    );
    assert_eq!(
        code(module.call("queue.enqueue", json!({"topic": "t"})).await),
        "invalid_argument"
    );
    assert_eq!(
        code(
            module
                .call(
                    "queue.enqueue",
                    json!({"topic": "t", "data": 1, "delay": "soon"})
                )
                .await
        ),
        "invalid_argument"
    );
    assert_eq!(
        code(module.call("queue.nope", json!({})).await),
        "unknown_call"
    );
    assert_eq!(
        code(
            module
                .call("queue.dlq_count", json!({"topic": "t", "trigger": "ghost"}))
                .await
        ),
        "unknown_trigger"
    );
    let batch = module
        .call(
            "queue.enqueue_batch",
            json!({"topic": "t", "messages": [{"data": 1}, {"data": "x".repeat(200_000)}, {"data": 3, "delay": "1s"}]}),
        )
        .await
        .unwrap();
    let results = batch["results"].as_array().unwrap();
    assert!(results[0]["message_id"].is_string());
    assert_eq!(results[1]["error"]["code"], "payload_too_large");
    assert!(results[2]["message_id"].is_string());
}

#[tokio::test]
async fn a_trigger_naming_an_unregistered_function_fails_at_startup() {
    let err = QueueModule::new(
        config("  t:\n    type: queue\n    function: emails.send\n    config:\n      topic: t\n"),
        Functions::with_builtins(),
    )
    .await
    .err()
    .expect("must fail");
    let text = err.to_string();
    assert!(
        text.starts_with("test.yaml:10:15: triggers.t.function"),
        "{text}"
    );
    assert!(text.contains("builtin.log"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_filtered_purge_touches_only_the_matching_records_of_a_shared_message() {
    let (events, mut received) = mpsc::unbounded_channel();
    let mut functions = Functions::new();
    recording(&mut functions, "smtp", events.clone(), |_| {
        Err(HandlerError::non_retryable("SMTP refused"))
    });
    recording(&mut functions, "disk", events, |_| {
        Err(HandlerError::non_retryable("disk full"))
    });
    let triggers = "  smtp:
    type: queue
    function: smtp
    config:
      topic: t
  disk:
    type: queue
    function: disk
    config:
      topic: t
";
    let module = QueueModule::new(config(triggers), functions).await.unwrap();
    let workers = module.start_workers();
    enqueue(&module, "t", json!("shared")).await;
    next(&mut received).await;
    next(&mut received).await;
    nothing_more(&mut received).await;
    let dry = module
        .call(
            "queue.redrive_dlq",
            json!({"topic": "t", "error_contains": "SMTP", "dry_run": true}),
        )
        .await
        .unwrap();
    assert_eq!(dry, json!({"would_redrive": 1}));
    let purged = module
        .call(
            "queue.dlq_purge",
            json!({"topic": "t", "error_contains": "SMTP"}),
        )
        .await
        .unwrap();
    assert_eq!(purged, json!({"purged": 1}));
    let left = module
        .call("queue.dlq_list", json!({"topic": "t"}))
        .await
        .unwrap();
    assert_eq!(left["messages"].as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left["messages"][0]["trigger"], "disk", "{left}");
    workers.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn absurd_delays_are_refused_or_capped_never_a_panic() {
    let (events, mut received) = mpsc::unbounded_channel();
    let mut functions = Functions::new();
    recording(&mut functions, "later", events, |_| {
        Err(HandlerError::retryable("come back much later").retry_after(Duration::MAX))
    });
    let triggers = "  later:
    type: queue
    function: later
    config:
      topic: t
";
    let module = QueueModule::new(config(triggers), functions).await.unwrap();
    let err = module
        .call(
            "queue.enqueue",
            json!({"topic": "t", "data": 1, "delay": "100000years"}),
        )
        .await
        .expect_err("too far");
    assert_eq!(err.code(), "invalid_argument", "{err}");
    let workers = module.start_workers();
    enqueue(&module, "t", json!("retry me")).await;
    assert_eq!(next(&mut received).await.attempt, 1);
    nothing_more(&mut received).await;
    let stats = module.call("queue.stats", json!({})).await.unwrap();
    assert_eq!(
        stats["triggers"][0]["waiting"], 1,
        "retried later, not lost: {stats}"
    );
    workers.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_enqueue_to_a_full_in_memory_topic_waits_then_fails_as_broker_full() {
    let text = "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
        config: { max_messages: 2, publish_timeout: 2s }
triggers:
  slow:
    type: queue
    function: record
    config: { topic: orders }
";
    let config = Config::from_yaml_with_variables(text, "test.yaml", &HashMap::new())
        .unwrap_or_else(|err| panic!("{err}"));
    let (events, _seen) = mpsc::unbounded_channel();
    let mut functions = Functions::new();
    recording(&mut functions, "record", events, |_| Ok(()));
    // No workers: nothing takes the messages.
    let module = QueueModule::new(config, functions).await.unwrap();
    enqueue(&module, "orders", json!(1)).await;
    enqueue(&module, "orders", json!(2)).await;
    let started = Instant::now();
    let refused = module
        .call("queue.enqueue", json!({"topic": "orders", "data": 3}))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(refused.code(), "broker_full", "{refused}");
    assert!(refused.to_string().contains("max_messages"), "{refused}");
    module.close().await;
}
