//! A filtered redrive or purge picks DLQ records, not messages: when one message has two
//! records on one trigger (dead-lettered again after the DLQ's duplicate window, or a record
//! appended twice around a lost ack), a filter that matches one of them touches that one only,
//! and a dry run counts what the real run removes. On JetStream (a nats-server of the test's
//! own), with the second record written into the DLQ stream as the adapter would.

// Test helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::{Instant, sleep};
use topiq::{Config, Functions, HandlerError, QueueModule};
use topiq_testkit::NatsServer;

fn config(url: &str) -> Config {
    let text = format!(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::JetStreamAdapter
        config: {{ url: \"{url}\", publish_timeout: 2s }}
triggers:
  fail:
    type: queue
    function: fail
    config:
      topic: orders
"
    );
    Config::from_yaml_with_variables(&text, "test.yaml", &HashMap::new())
        .unwrap_or_else(|err| panic!("{err}"))
}

async fn call(module: &QueueModule, name: &str, args: Value) -> Value {
    module
        .call(name, args)
        .await
        .unwrap_or_else(|err| panic!("{name}: {err}"))
}

async fn dlq_records(module: &QueueModule) -> Vec<Value> {
    call(module, "queue.dlq_list", json!({"topic": "orders"})).await["messages"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_purge_and_redrive_touch_only_the_matching_record_of_a_message() {
    let server = NatsServer::start();
    let mut functions = Functions::new();
    functions.register("fail", |_message: topiq::Message| async {
        Err::<(), _>(HandlerError::non_retryable("first failure"))
    });
    let module = QueueModule::new(config(&server.url()), functions)
        .await
        .unwrap();
    let workers = module.start_workers();
    call(
        &module,
        "queue.enqueue",
        json!({"topic": "orders", "data": "x"}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(record) = dlq_records(&module).await.pop() {
            break record;
        }
        assert!(
            Instant::now() < deadline,
            "the message never reached the DLQ"
        );
        sleep(Duration::from_millis(50)).await;
    };
    workers.shutdown().await;

    // The same message dead-lettered again later, with another error: a second record.
    let mut second = first.clone();
    second["error"]["message"] = json!("second failure");
    second["last_failed_at"] = json!(topiq_adapter::Timestamp::now());
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "the-second-record");
    async_nats::jetstream::new(client)
        .publish_with_headers("topiq.dlq.orders.fail", headers, second.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(dlq_records(&module).await.len(), 2);

    let dry = call(
        &module,
        "queue.redrive_dlq",
        json!({"topic": "orders", "error_contains": "second", "dry_run": true}),
    )
    .await;
    assert_eq!(dry, json!({"would_redrive": 1}));
    let purged = call(
        &module,
        "queue.dlq_purge",
        json!({"topic": "orders", "error_contains": "first"}),
    )
    .await;
    assert_eq!(
        purged,
        json!({"purged": 1}),
        "the filter excluded the second record"
    );
    let left = dlq_records(&module).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["error"]["message"], "second failure");

    let redriven = call(
        &module,
        "queue.redrive_dlq",
        json!({"topic": "orders", "error_contains": "second", "rate_per_sec": 10}),
    )
    .await;
    assert_eq!(redriven, json!({"redriven": 1}));
}

/// A redrive that reports progress fixes its records first (the whole DLQ, when nothing is
/// selected) and tells how far it is after every chunk of 100: what the console's job page
/// shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_redrive_tells_its_progress_chunk_by_chunk() {
    let server = NatsServer::start();
    let mut functions = Functions::new();
    functions.register("fail", |_message: topiq::Message| async {
        Err::<(), _>(HandlerError::non_retryable("fails every time"))
    });
    let module = QueueModule::new(config(&server.url()), functions)
        .await
        .unwrap();
    let workers = module.start_workers();
    let messages: Vec<_> = (0..250).map(|n| json!({"data": n})).collect();
    for batch in messages.chunks(100) {
        call(
            &module,
            "queue.enqueue_batch",
            json!({"topic": "orders", "messages": batch}),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while call(&module, "queue.dlq_count", json!({"topic": "orders"})).await["count"] != 250 {
        assert!(Instant::now() < deadline, "250 records in the DLQ");
        sleep(Duration::from_millis(50)).await;
    }
    let told = std::sync::Mutex::new(Vec::new());
    let request = topiq::DlqRequest {
        topic: "orders".into(),
        ..topiq::DlqRequest::default()
    };
    let redriven = module
        .redrive_dlq_reporting(&request, &|done, total| {
            told.lock().unwrap().push((done, total));
        })
        .await
        .unwrap();
    assert_eq!(redriven, 250);
    assert_eq!(
        told.into_inner().unwrap(),
        [(0, 250), (100, 250), (200, 250), (250, 250)]
    );
    workers.shutdown().await;
    module.close().await;
}
