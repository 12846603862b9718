//! What the service tests share: the real `topiq` binary run with a config of the test's own,
//! reached only through its HTTP API and its CLI, and an HTTP receiver standing in for an
//! application's endpoints.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use topiq_testkit::{NatsServer, free_port};

/// The broker a service test runs on.
pub enum Broker {
    /// The built-in in-memory adapter.
    Memory,
    /// JetStream on a nats-server of the test's own.
    JetStream(NatsServer),
}

impl Broker {
    pub fn jetstream() -> Self {
        Broker::JetStream(NatsServer::start())
    }

    fn adapter_yaml(&self) -> String {
        match self {
            Broker::Memory => "class: modules::queue::BuiltinQueueAdapter".into(),
            Broker::JetStream(server) => format!(
                "class: modules::queue::JetStreamAdapter\n        config: {{ url: \"{}\", publish_timeout: 2s }}",
                server.url()
            ),
        }
    }

    /// Kills the broker (JetStream only).
    pub fn kill(&mut self) {
        if let Broker::JetStream(server) = self {
            server.kill();
        }
    }
}

/// A running `topiq run`; SIGTERMed and its folder removed on drop.
pub struct Service {
    child: Child,
    folder: PathBuf,
    pub api: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Parts of a config: topics (under the module), and the top-level `functions:`, `api:`
/// extras and `triggers:`.
#[derive(Default)]
pub struct Parts<'a> {
    pub topics: &'a str,
    pub functions: &'a str,
    pub api: &'a str,
    pub triggers: &'a str,
    /// The body of `telemetry:` (empty: the section is left out).
    pub telemetry: &'a str,
    /// More top-level sections, as written (`console:`, `schedules:`).
    pub extra: &'a str,
}

pub fn topiq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_topiq"))
}

/// An HTTP client (with the TLS provider topiq installs: reqwest here has none of its own).
pub fn http_client() -> reqwest::Client {
    topiq_server::install_tls_provider();
    reqwest::Client::new()
}

/// Writes `text` as `config.yaml` in a fresh folder.
pub fn write_config(text: &str) -> (PathBuf, PathBuf) {
    let folder = std::env::temp_dir().join(format!(
        "topiq-service-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    (folder, path)
}

impl Service {
    /// Starts `topiq run` on `broker` with `parts`, and waits until `/readyz` answers 200.
    pub async fn start(broker: &Broker, parts: Parts<'_>, env: &[(&str, &str)]) -> Self {
        let text = format!(
            "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        {adapter}
      topics:
{topics}
      shutdown_grace: 2s
api:
  listen: 127.0.0.1:0
{api}
functions:
{functions}
triggers:
{triggers}
{telemetry}
{extra}",
            telemetry = if parts.telemetry.is_empty() {
                String::new()
            } else {
                format!("telemetry:\n{}\n", indent(parts.telemetry, 2, ""))
            },
            adapter = broker.adapter_yaml(),
            topics = indent(parts.topics, 8, "{}"),
            api = indent(parts.api, 2, ""),
            functions = indent(parts.functions, 2, "{}"),
            triggers = indent(parts.triggers, 2, "{}"),
            extra = parts.extra,
        );
        let (folder, path) = write_config(&text);
        let log = std::fs::File::create(folder.join("topiq.log")).unwrap();
        let mut command = topiq();
        // A broker adapter's runs go to `topiq-runs.db` in the working directory: the folder.
        command
            .current_dir(&folder)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().unwrap();
        let token = env
            .iter()
            .find(|(name, _)| *name == "TEST_API_TOKEN")
            .map(|(_, value)| (*value).to_owned());
        let mut service = Self {
            child,
            folder,
            api: String::new(),
            token,
            http: http_client(),
        };
        service.wait_ready().await;
        service
    }

    /// Waits for the address the API listens on (port 0: the log says which), then for
    /// `/readyz` to answer 200.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("topiq run exited ({status}):\n{}", self.log());
            }
            if self.api.is_empty() {
                if let Some(address) = listening_address(&self.log()) {
                    self.api = format!("http://{address}");
                }
                assert!(
                    Instant::now() < deadline,
                    "topiq run did not listen within 30s:\n{}",
                    self.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if let Ok(response) = self.http.get(format!("{}/readyz", self.api)).send().await
                && response.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "topiq run not ready within 30s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What `topiq run` logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.folder.join("topiq.log")).unwrap_or_default()
    }

    /// `POST /v1/call/{name}` with `args` (and the token, when the service has one).
    pub async fn call(&self, name: &str, args: Value) -> (StatusCode, Value) {
        self.call_with_headers(name, args, &[]).await
    }

    /// [`Service::call`] with extra request headers.
    pub async fn call_with_headers(
        &self,
        name: &str,
        args: Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}/v1/call/{name}", self.api))
            .header("content-type", "application/json")
            .body(args.to_string());
        for (header, value) in headers {
            request = request.header(*header, *value);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        let json =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON ({status}): {body}"));
        (status, json)
    }

    /// A call that must succeed: its result.
    pub async fn ok(&self, name: &str, args: Value) -> Value {
        let (status, body) = self.call(name, args).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}\n{}", self.log());
        body
    }

    /// The DLQ count of `topic`.
    pub async fn dlq_count(&self, topic: &str) -> u64 {
        self.ok("queue.dlq_count", json!({"topic": topic})).await["count"]
            .as_u64()
            .unwrap()
    }

    /// The DLQ records of `topic`.
    pub async fn dlq_records(&self, topic: &str) -> Vec<Value> {
        self.ok("queue.dlq_list", json!({"topic": topic})).await["messages"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Runs the `topiq` CLI against this service's API (`--api`, and the token from the
    /// environment when the service has one).
    pub async fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = topiq();
        command.args(args).arg("--api").arg(&self.api);
        if let Some(token) = &self.token {
            command.env("TOPIQ_API_TOKEN", token);
        }
        let stdin = stdin.map(str::to_owned);
        tokio::task::spawn_blocking(move || run_with_stdin(command, stdin))
            .await
            .unwrap()
    }
}

/// Runs `command`, feeding `stdin` when given.
pub fn run_with_stdin(mut command: Command, stdin: Option<String>) -> Output {
    use std::io::Write;
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// The address in the log line `HTTP API listening address=127.0.0.1:40123` (or its JSON
/// form, `"address":"127.0.0.1:40123"`).
pub fn listening_address(log: &str) -> Option<String> {
    let line = log
        .lines()
        .find(|line| line.contains("HTTP API listening"))?;
    let after = &line[line.find("address")? + "address".len()..];
    let address: String = after
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    (!address.is_empty()).then_some(address)
}

/// `text`'s lines indented by `by` spaces; `empty` when it is blank.
fn indent(text: &str, by: usize, empty: &str) -> String {
    if text.trim().is_empty() {
        return format!("{}{empty}", " ".repeat(by));
    }
    text.lines()
        .map(|line| format!("{}{line}", " ".repeat(by)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `check` every 50 ms until it returns true; panics with `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    /// The client's address: one per TCP connection.
    pub peer: SocketAddr,
    pub headers: HeaderMap,
    pub body: Value,
    pub at: Instant,
}

/// An HTTP server standing in for an application's endpoints; what each path answers:
/// - `/ok`: 200;
/// - `/reject`: 400 with `no such recipient`;
/// - `/request-timeout`: 408;
/// - `/throttle`: 429 with `Retry-After: 1` the first time a message comes, 200 after;
/// - `/error`: 500 with `database down`;
/// - `/slow`: 200 after 2 s;
/// - `/hold`: 200 with a 40 KiB body after 200 ms, counting how many are held at once;
/// - `/switch`: 400 with `switched off` until [`Receiver::switch_on`], 200 after.
#[derive(Clone)]
pub struct Receiver {
    pub address: SocketAddr,
    requests: Arc<Mutex<Vec<Received>>>,
    holding: Arc<Holding>,
}

/// `/hold` requests in progress, and the most at once.
#[derive(Default)]
struct Holding {
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    /// Whether `/switch` answers 200.
    switched_on: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
struct ReceiverState {
    requests: Arc<Mutex<Vec<Received>>>,
    holding: Arc<Holding>,
}

impl Receiver {
    pub async fn start() -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let holding = Arc::new(Holding::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/{behaviour}", post(answer))
            .route("/v1/traces", post(otlp_export))
            .route("/v1/metrics", post(otlp_export))
            .with_state(ReceiverState {
                requests: Arc::clone(&requests),
                holding: Arc::clone(&holding),
            });
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        Self {
            address,
            requests,
            holding,
        }
    }

    /// Makes `/switch` answer 200 from now on.
    pub fn switch_on(&self) {
        self.holding
            .switched_on
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The most `/hold` requests that were in progress at once.
    pub fn most_held_at_once(&self) -> usize {
        self.holding.most.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.address)
    }

    /// Every request to `path`, in arrival order.
    pub fn requests(&self, path: &str) -> Vec<Received> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|request| request.path == path)
            .cloned()
            .collect()
    }
}

/// An OTLP/HTTP collector's endpoints (JSON bodies): records each export under its path,
/// `v1/traces` or `v1/metrics`.
async fn otlp_export(
    State(ReceiverState { requests, .. }): State<ReceiverState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    requests.lock().unwrap().push(Received {
        path: uri.path().trim_start_matches('/').to_owned(),
        peer,
        headers,
        body,
        at: Instant::now(),
    });
    (StatusCode::OK, axum::Json(json!({}))).into_response()
}

async fn answer(
    State(ReceiverState { requests, holding }): State<ReceiverState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    Path(behaviour): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = body["data"]["n"].clone();
    let seen_before = {
        let mut requests = requests.lock().unwrap();
        let seen = requests
            .iter()
            .any(|r| r.path == behaviour && r.body["id"] == body["id"]);
        requests.push(Received {
            path: behaviour.clone(),
            peer,
            headers,
            body,
            at: Instant::now(),
        });
        seen
    };
    match behaviour.as_str() {
        "ok" => StatusCode::OK.into_response(),
        "json" => axum::Json(json!({"ok": true, "n": n})).into_response(),
        "reject" => (StatusCode::BAD_REQUEST, "no such recipient").into_response(),
        "request-timeout" => StatusCode::REQUEST_TIMEOUT.into_response(),
        "throttle" if !seen_before => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response(),
        "throttle" => StatusCode::OK.into_response(),
        "error" => (StatusCode::INTERNAL_SERVER_ERROR, "database down").into_response(),
        "hold" => {
            use std::sync::atomic::Ordering::SeqCst;
            let now = holding.now.fetch_add(1, SeqCst) + 1;
            holding.most.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            holding.now.fetch_sub(1, SeqCst);
            (StatusCode::OK, "held ".repeat(8 * 1024)).into_response()
        }
        "switch"
            if holding
                .switched_on
                .load(std::sync::atomic::Ordering::SeqCst) =>
        {
            StatusCode::OK.into_response()
        }
        "switch" => (StatusCode::BAD_REQUEST, "switched off").into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            StatusCode::OK.into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
