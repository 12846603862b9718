//! HTTP functions in an embedded module: registered by `topiq_server::register_http_functions`,
//! refused when the application registers the same name, and named in the error of a module
//! started without them; their answers as run results, their progress, and their cancel.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use topiq::{Config, Functions, Message, QueueModule};

fn config() -> Config {
    let text = "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
functions:
  emails.send:
    http:
      url: http://127.0.0.1:9/emails
triggers:
  send:
    type: queue
    function: emails.send
    config:
      topic: emails
";
    Config::from_yaml_with_variables(text, "test.yaml", &HashMap::new())
        .unwrap_or_else(|err| panic!("{err}"))
}

#[tokio::test]
async fn a_module_started_without_its_http_functions_says_how_to_register_them() {
    let err = QueueModule::new(config(), Functions::new())
        .await
        .err()
        .expect("the trigger's function is not registered");
    let message = err.to_string();
    assert!(message.contains("triggers.send.function"), "{message}");
    assert!(message.contains("register_http_functions"), "{message}");
}

#[tokio::test]
async fn registered_http_functions_start_the_module() {
    let config = config();
    let mut functions = Functions::new();
    topiq_server::register_http_functions(&config, &mut functions).unwrap();
    assert_eq!(functions.names(), ["emails.send"]);
    let module = QueueModule::new(config, functions).await.unwrap();
    module.close().await;
}

#[test]
fn an_http_function_the_application_registers_too_is_refused() {
    let mut functions = Functions::new();
    functions.register("emails.send", |_message: Message| async { Ok(()) });
    let err = topiq_server::register_http_functions(&config(), &mut functions).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("functions.emails.send"), "{message}");
    assert!(message.contains("keep one of them"), "{message}");
}

/// A receiver for the HTTP function: `/done` answers `{"sent": <data.n>}` after reporting
/// progress through the module; `hang_url` never answers and counts the requests abandoned.
struct Receiver {
    url: String,
    hang_url: String,
    module: Arc<OnceLock<QueueModule>>,
    abandoned: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start() -> Self {
        let module: Arc<OnceLock<QueueModule>> = Arc::default();
        let abandoned = Arc::new(AtomicUsize::new(0));
        let done_module = Arc::clone(&module);
        let hang_count = Arc::clone(&abandoned);
        let app = axum::Router::new()
            .route(
                "/done",
                axum::routing::post(move |headers: HeaderMap, Json(envelope): Json<Value>| {
                    let module = Arc::clone(&done_module);
                    async move {
                        let trigger = headers[topiq_server::TRIGGER_HEADER].to_str().unwrap();
                        let progress = json!({"id": envelope["id"], "trigger": trigger, "progress": {"half": true}});
                        let module = module.get().unwrap();
                        module.call("queue.run_progress", progress).await.unwrap();
                        Json(json!({"sent": envelope["data"]["n"]}))
                    }
                }),
            )
            ;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hang_url = format!("http://{}/hang", hang.local_addr().unwrap());
        tokio::spawn(never_answer(hang, hang_count));
        Self {
            url,
            hang_url,
            module,
            abandoned,
        }
    }
}

/// Takes requests and never answers; counts each connection the client closes (a request
/// abandoned).
async fn never_answer(listener: tokio::net::TcpListener, abandoned: Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    loop {
        let (mut connection, _) = listener.accept().await.unwrap();
        let abandoned = Arc::clone(&abandoned);
        tokio::spawn(async move {
            let mut buffer = [0_u8; 4096];
            while let Ok(read) = connection.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
            }
            abandoned.fetch_add(1, Ordering::SeqCst);
        });
    }
}

async fn module_calling(receiver: &Receiver) -> QueueModule {
    let text = format!(
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
functions:
  done:
    http:
      url: {url}/done
  hang:
    http:
      url: {hang_url}
      timeout: 10m
triggers:
  done:
    type: queue
    function: done
    config:
      topic: done
  hang:
    type: queue
    function: hang
    config:
      topic: hang
      timeout: 10m
",
        url = receiver.url,
        hang_url = receiver.hang_url
    );
    let config = Config::from_yaml_with_variables(&text, "test.yaml", &HashMap::new()).unwrap();
    let mut functions = Functions::new();
    topiq_server::register_http_functions(&config, &mut functions).unwrap();
    let module = QueueModule::new(config, functions).await.unwrap();
    receiver.module.set(module.clone()).ok();
    module
}

async fn run_of(module: &QueueModule, id: &str, state: &str) -> Value {
    for _ in 0..200 {
        let runs = module
            .call("queue.run_get", json!({"id": id}))
            .await
            .unwrap();
        if runs["runs"][0]["state"] == state {
            return runs["runs"][0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the run of {id} never reached {state}");
}

async fn enqueue(module: &QueueModule, topic: &str, data: Value) -> String {
    let result = module
        .call("queue.enqueue", json!({"topic": topic, "data": data}))
        .await
        .unwrap();
    result["message_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_functions_answer_is_its_runs_result_and_it_reports_progress() {
    let receiver = Receiver::start().await;
    let module = module_calling(&receiver).await;
    let workers = module.start_workers();
    let id = enqueue(&module, "done", json!({"n": 5})).await;
    let run = run_of(&module, &id, "succeeded").await;
    assert_eq!(run["result"], json!({"sent": 5}));
    assert_eq!(run["progress"], json!({"half": true}));
    workers.shutdown().await;
    module.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_http_function_abandons_its_request() {
    let receiver = Receiver::start().await;
    let module = module_calling(&receiver).await;
    let workers = module.start_workers();
    let id = enqueue(&module, "hang", json!({})).await;
    run_of(&module, &id, "running").await;
    let cancelled = module
        .call("queue.run_cancel", json!({"id": id}))
        .await
        .unwrap();
    assert_eq!(cancelled, json!({"cancelled": 1}));
    let run = run_of(&module, &id, "cancelled").await;
    assert_eq!(run["attempts"][0]["outcome"], "cancelled");
    for _ in 0..100 {
        if receiver.abandoned.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        receiver.abandoned.load(Ordering::SeqCst),
        1,
        "the request was abandoned"
    );
    workers.shutdown().await;
    module.close().await;
}
