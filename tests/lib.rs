//! Cross-crate integration tests of topiq; the tests live in `tests/tests/`.
//!
//! Each adapter runs the one conformance suite of `topiq_adapter::conformance`
//! (`memory_conformance.rs`, `jetstream_conformance.rs`). This library holds the helpers they
//! share: a real `nats-server` started for one test and stopped when it ends.

// Test support: a broker that cannot start is a test failure, so it panics with the reason.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use topiq_adapter::{Adapter, ConsumeOptions, NewMessage, SubscriptionKey, TopicName};

mod fault_proxy;
mod netns;

pub use fault_proxy::FaultProxy;
pub use netns::{IsolatedNats, IsolatedRabbit, NetworkNamespace};

/// A `nats-server` with JetStream on a free loopback port and a temporary store, killed and
/// cleaned up on drop.
///
/// [`NatsVersion`] says which binary.
pub struct NatsServer {
    child: Child,
    binary: String,
    port: u16,
    store: PathBuf,
    extra: Vec<String>,
}

/// Which nats-server binary a test runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatsVersion {
    /// The machine's (Debian's 2.9): `NATS_SERVER_BIN`, `nats-server` on the `PATH`, or
    /// `/usr/sbin/nats-server`.
    Machine,
    /// The current release that `deploy/local/ensure-brokers` downloads into `target/brokers`
    /// (or `TOPIQ_NATS_SERVER_CURRENT`).
    Current,
}

impl NatsVersion {
    fn binary(self) -> String {
        match self {
            NatsVersion::Machine => std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| {
                if Command::new("nats-server")
                    .arg("--version")
                    .output()
                    .is_ok()
                {
                    "nats-server".into()
                } else {
                    "/usr/sbin/nats-server".into()
                }
            }),
            NatsVersion::Current => {
                std::env::var("TOPIQ_NATS_SERVER_CURRENT").unwrap_or_else(|_| {
                    let pinned = include_str!("../deploy/local/nats-server-current.txt");
                    let version = pinned
                        .lines()
                        .find_map(|line| line.strip_prefix("nats-server-bin=="))
                        .and_then(|rest| rest.split_whitespace().next())
                        .expect("a pinned version in deploy/local/nats-server-current.txt");
                    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join("../target/brokers")
                        .join(format!("nats-server-{version}"))
                        .join("nats-server");
                    assert!(
                        path.exists(),
                        "{} is missing: run deploy/local/ensure-brokers (scripts/test does)",
                        path.display()
                    );
                    path.display().to_string()
                })
            }
        }
    }
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// When the binary is missing or the server does not come up within 10 s: a missing broker
    /// is a test failure, never a skip.
    pub fn start() -> Self {
        Self::start_version(NatsVersion::Machine, &[])
    }

    /// Starts the machine's server with extra command-line arguments (such as `--user`).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_version(NatsVersion::Machine, extra)
    }

    /// Starts a server of `version` with extra command-line arguments.
    pub fn start_version(version: NatsVersion, extra: &[&str]) -> Self {
        let binary = version.binary();
        let port = free_port();
        let store = std::env::temp_dir().join(format!("topiq-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&store).expect("create the server's store dir");
        let extra: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
        let child = spawn(&binary, port, &store, &extra);
        let server = Self {
            child,
            binary,
            port,
            store,
            extra,
        };
        server.wait_until_up();
        server
    }

    /// SIGKILLs the server: no clean shutdown, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.binary, self.port, &self.store, &self.extra);
        self.wait_until_up();
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server process's id (benchmarks read its CPU time from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// A `JetStreamAdapter` connected to `server` with the default options.
///
/// # Panics
///
/// When it cannot connect.
pub async fn jetstream_adapter(server: &NatsServer) -> topiq_jetstream::JetStreamAdapter {
    let config = topiq_jetstream::JetStreamConfig {
        url: Some(server.url()),
        ..topiq_jetstream::JetStreamConfig::default()
    };
    topiq_jetstream::JetStreamAdapter::connect(config)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to {}: {err}", server.url()))
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

fn spawn(binary: &str, port: u16, store: &std::path::Path, extra: &[String]) -> Child {
    Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot start {binary} (install nats-server, or set NATS_SERVER_BIN): {err}")
        })
}

/// A 3-node JetStream cluster on loopback, each node started from
/// `deploy/nats-cluster/node.conf` (the file operators use) with free ports and a temporary
/// store; killed and removed on drop.
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    dir: PathBuf,
}

struct ClusterNode {
    name: String,
    client_port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts the three nodes and waits until each takes connections.
    ///
    /// # Panics
    ///
    /// When `nats-server` is missing or a node does not start.
    pub fn start() -> Self {
        let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(8)
            .collect();
        let dir = std::env::temp_dir().join(format!("topiq-nats-cluster-{suffix}"));
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let nodes = (0..3)
            .map(|index| {
                let name = format!("n{}", index + 1);
                let store = dir.join(&name);
                std::fs::create_dir_all(&store).unwrap();
                let routes: Vec<String> = (0..3)
                    .filter(|other| *other != index)
                    .map(|other| format!("nats-route://127.0.0.1:{}", ports[other].1))
                    .collect();
                let env = vec![
                    ("NODE_NAME".to_owned(), name.clone()),
                    (
                        "CLIENT_LISTEN".to_owned(),
                        format!("127.0.0.1:{}", ports[index].0),
                    ),
                    (
                        "CLUSTER_LISTEN".to_owned(),
                        format!("127.0.0.1:{}", ports[index].1),
                    ),
                    ("ROUTE_A".to_owned(), routes[0].clone()),
                    ("ROUTE_B".to_owned(), routes[1].clone()),
                    ("STORE_DIR".to_owned(), store.to_string_lossy().into_owned()),
                ];
                ClusterNode {
                    name,
                    client_port: ports[index].0,
                    env,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self { nodes, dir };
        for index in 0..3 {
            cluster.spawn(index);
        }
        for node in &cluster.nodes {
            wait_for_port(node.client_port);
        }
        cluster
    }

    fn spawn(&mut self, index: usize) {
        let config = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/nats-cluster/node.conf"
        );
        let node = &mut self.nodes[index];
        let child = Command::new(NatsVersion::Machine.binary())
            .args(["-c", config])
            .envs(node.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start nats-server: {err}"));
        node.child = Some(child);
    }

    /// `nats://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("nats://127.0.0.1:{}", node.client_port))
            .collect()
    }

    /// SIGKILLs the node called `name` (`n1`, `n2`, `n3`).
    pub fn kill(&mut self, name: &str) {
        let node = self.node(name);
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node called `name` again, with its store, and waits for its port.
    pub fn restart(&mut self, name: &str) {
        self.kill(name);
        let node = self.node(name);
        self.spawn(node);
        wait_for_port(self.nodes[node].client_port);
    }

    fn node(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|node| node.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server did not open port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// A RabbitMQ virtual host of its own on the machine's broker (`rabbitmqctl`), so a test's
/// exchanges and queues meet no other run's; deleted with everything in it on drop.
pub struct RabbitVhost {
    name: String,
    users: Vec<String>,
}

/// The machine's RabbitMQ (guest/guest on loopback).
const RABBITMQ_ADDRESS: &str = "127.0.0.1:5672";

fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run rabbitmqctl {args:?}: {err} (is rabbitmq-server installed? scripts/test installs it)"));
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed ({}): {}{} (is RabbitMQ running? `rabbitmq-server -detached` starts it)",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl RabbitVhost {
    /// Creates a fresh vhost that `guest` may use.
    ///
    /// # Panics
    ///
    /// When RabbitMQ is not running or `rabbitmqctl` fails: a missing broker fails the test.
    pub fn create() -> Self {
        let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(12)
            .collect();
        let name = format!("topiq-test-{suffix}");
        rabbitmqctl(&["add_vhost", &name]);
        let vhost = Self {
            name,
            users: Vec::new(),
        };
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &vhost.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        vhost
    }

    /// Adds a user with `password` and every permission on this vhost (deleted on drop);
    /// returns its name.
    pub fn add_user(&mut self, password: &str) -> String {
        let user = format!("{}-user{}", self.name, self.users.len());
        rabbitmqctl(&["add_user", &user, password]);
        self.users.push(user.clone());
        rabbitmqctl(&["set_permissions", "-p", &self.name, &user, ".*", ".*", ".*"]);
        user
    }

    /// `amqp://127.0.0.1:5672/<vhost>`, no credentials.
    pub fn url_without_credentials(&self) -> String {
        format!("amqp://{RABBITMQ_ADDRESS}/{}", self.name)
    }

    /// `amqp://guest:guest@127.0.0.1:5672/<vhost>`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{RABBITMQ_ADDRESS}/{}", self.name)
    }
}

impl Drop for RabbitVhost {
    fn drop(&mut self) {
        for user in &self.users {
            let _ = Command::new("rabbitmqctl")
                .args(["delete_user", user])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A `RabbitMqAdapter` on a vhost of its own (returned with it: keep it alive).
///
/// # Panics
///
/// When RabbitMQ is not running or the adapter cannot connect.
pub async fn rabbitmq_adapter() -> (topiq_rabbitmq::RabbitMqAdapter, RabbitVhost) {
    let vhost = RabbitVhost::create();
    let config = topiq_rabbitmq::RabbitMqConfig {
        url: vhost.url(),
        ..topiq_rabbitmq::RabbitMqConfig::default()
    };
    let adapter = topiq_rabbitmq::RabbitMqAdapter::connect(config)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to RabbitMQ at {RABBITMQ_ADDRESS}: {err}"));
    (adapter, vhost)
}

/// A RabbitMQ node of the test's own (free AMQP and distribution ports, temporary data
/// directory), so a test can stop and start it without touching the machine's; stopped and
/// removed on drop. Starts in a few seconds.
pub struct RabbitNode {
    node: String,
    /// Where the node listens for AMQP.
    host: String,
    port: u16,
    dir: PathBuf,
    /// The network namespace the node runs in, if not the host's.
    namespace: Option<String>,
}

impl RabbitNode {
    /// Starts the node and waits until it takes connections.
    ///
    /// # Panics
    ///
    /// When `rabbitmq-server` is missing or the node does not start within a minute.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts the node with `extra` lines in its `rabbitmq.conf` (such as a TLS listener).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_with(extra: &str) -> Self {
        Self::launch("127.0.0.1", free_port(), extra, None)
    }

    /// Starts the node inside network `namespace`, listening on `host`:5672, `guest`
    /// allowed in from outside loopback.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub(crate) fn start_in(namespace: &str, host: &str) -> Self {
        let guest_from_anywhere = "loopback_users = none";
        Self::launch(host, 5672, guest_from_anywhere, Some(namespace.to_owned()))
    }

    fn launch(host: &str, port: u16, extra: &str, namespace: Option<String>) -> Self {
        let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(8)
            .collect();
        let dist_port = free_port();
        let dir = std::env::temp_dir().join(format!("topiq-rabbit-{suffix}"));
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = {host}:{port}\n{extra}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        // rabbitmq-server runs as the `rabbitmq` user when started by root.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let node = Self {
            node: format!("topiq-{suffix}@localhost"),
            host: host.to_owned(),
            port,
            dir,
            namespace,
        };
        let path = |name: &str| node.dir.join(name).to_string_lossy().into_owned();
        let status = node
            .command("rabbitmq-server")
            .arg("-detached")
            .current_dir(&node.dir)
            .env("RABBITMQ_NODENAME", &node.node)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", path("pid"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", path("feature_flags"))
            // No scheduler busy-waiting: on a 2-core machine the Erlang VM's spinning takes
            // the CPU the tests and benchmark clients need (RabbitMQ's advice for shared hosts).
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "+sbwt none +sbwtdcpu none +sbwtdio none",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("cannot run rabbitmq-server (scripts/test installs it)");
        assert!(
            status.success(),
            "rabbitmq-server -detached failed: {status}"
        );
        node.wait_for_port("did not open its port within a minute");
        node
    }

    /// `program`, run in the node's network namespace.
    fn command(&self, program: &str) -> Command {
        match &self.namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace, program]);
                command
            }
            None => Command::new(program),
        }
    }

    fn wait_for_port(&self, failure: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect((self.host.as_str(), self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the RabbitMQ node {} {failure} (port {}, log: {})",
                self.node,
                self.port,
                self.dir.join("log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `amqp://guest:guest@<host>:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}:{}/%2f", self.host, self.port)
    }

    /// The Erlang node name (`rabbitmqctl -n <name> ...`).
    pub fn name(&self) -> String {
        self.node.clone()
    }

    /// The node's operating-system process id (for CPU accounting).
    ///
    /// # Panics
    ///
    /// When the node wrote no pid file.
    pub fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|pid| pid.trim().parse().ok())
            .expect("the node's pid file")
    }

    /// Runs `rabbitmqctl` on this node with `args`.
    ///
    /// # Panics
    ///
    /// When the command fails.
    pub fn ctl(&self, args: &[&str]) {
        let output = self
            .command("rabbitmqctl")
            .args(["-n", self.node.as_str()])
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("cannot run rabbitmqctl {args:?}: {err}"));
        assert!(
            output.status.success(),
            "rabbitmqctl -n {} {args:?} failed ({}): {}{}",
            self.node,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `rabbitmqctl stop_app`: the node closes every connection and takes none.
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]);
    }

    /// `rabbitmqctl start_app`, then waits until the port answers again.
    pub fn start_app(&self) {
        self.ctl(&["start_app"]);
        self.wait_for_port("did not come back within a minute");
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = self
            .command("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The at-least-once checker of the fault tests, fed by [`Ledger::publish_all`] and
/// [`Ledger::consume`]: A = ids whose enqueue returned Ok, C = ids handled (acked);
/// lost = A \ C must be empty, duplicates (C counted twice) are allowed and reported.
#[derive(Clone, Default)]
pub struct Ledger {
    accepted: Arc<Mutex<Vec<String>>>,
    handled: Arc<Mutex<Vec<String>>>,
    refused: Arc<AtomicUsize>,
    /// The next message number to publish (publishers take numbers from it).
    pub next: Arc<AtomicUsize>,
}

/// What a [`Ledger`] found.
#[derive(Debug)]
pub struct Outcome {
    /// Publishes that returned Ok.
    pub accepted: usize,
    /// Publishes that failed (each with a transient error).
    pub refused: usize,
    /// Accepted messages never handled.
    pub lost: usize,
    /// Handlings beyond the first of a message.
    pub duplicates: usize,
}

impl Outcome {
    /// What every outage test asserts: no message whose enqueue returned Ok went unhandled,
    /// and more than half of the `published` enqueues succeeded despite the outage.
    ///
    /// # Panics
    ///
    /// When either does not hold.
    pub fn assert_nothing_lost(&self, published: usize) {
        assert_eq!(
            self.lost, 0,
            "messages whose enqueue returned Ok were never handled"
        );
        assert!(
            self.accepted > published / 2,
            "too few publishes succeeded: {self:?}"
        );
    }
}

impl Ledger {
    /// How many publishes failed so far.
    pub fn refused_count(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// How many handlings were recorded so far.
    pub fn handled_count(&self) -> usize {
        self.handled.lock().unwrap().len()
    }

    /// Publishes `total` messages `{"n": n}` to `topic` from `publishers` concurrent tasks;
    /// an error must be transient (an outage), never a wrong input.
    pub fn publish_all<A: Adapter + Clone>(
        &self,
        adapter: &A,
        topic: &TopicName,
        total: usize,
        publishers: usize,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..publishers)
            .map(|_| {
                let (ledger, adapter, topic) = (self.clone(), adapter.clone(), topic.clone());
                tokio::spawn(async move {
                    loop {
                        let n = ledger.next.fetch_add(1, Ordering::SeqCst);
                        if n >= total {
                            return;
                        }
                        let message = NewMessage::new(serde_json::json!({"n": n}));
                        match adapter.publish(&topic, message).await {
                            Ok(receipt) => ledger
                                .accepted
                                .lock()
                                .unwrap()
                                .push(receipt.message_id.to_string()),
                            Err(err) => {
                                assert!(
                                    err.is_transient(),
                                    "an outage error must be transient: {err}"
                                );
                                ledger.refused.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect()
    }

    /// Consumes `key` and acks every delivery, recording each acked id as handled.
    pub fn consume<A: Adapter + Clone>(
        &self,
        adapter: &A,
        key: &SubscriptionKey,
        prefetch: u32,
    ) -> tokio::task::JoinHandle<()> {
        let (ledger, adapter, key) = (self.clone(), adapter.clone(), key.clone());
        tokio::spawn(async move {
            let mut subscription = adapter
                .consume(&key, ConsumeOptions { prefetch })
                .await
                .expect("consume");
            while let Some(delivery) = subscription.next().await {
                let Ok(delivery) = delivery else { continue };
                let id = delivery.envelope().id.to_string();
                if delivery.ack().await.is_ok() {
                    ledger.handled.lock().unwrap().push(id);
                }
            }
        })
    }

    /// Consumes `key` like a runtime whose handlers take `handler_time`: up to `prefetch`
    /// deliveries are handled at once, each acked when its handler ends (an ack that fails,
    /// say because the broker restarted meanwhile, leaves the message to come again).
    pub fn consume_slowly<A: Adapter + Clone>(
        &self,
        adapter: &A,
        key: &SubscriptionKey,
        prefetch: u32,
        handler_time: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let (ledger, adapter, key) = (self.clone(), adapter.clone(), key.clone());
        tokio::spawn(async move {
            let mut subscription = adapter
                .consume(&key, ConsumeOptions { prefetch })
                .await
                .expect("consume");
            while let Some(delivery) = subscription.next().await {
                let Ok(delivery) = delivery else { continue };
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(handler_time).await;
                    let id = delivery.envelope().id.to_string();
                    if delivery.ack().await.is_ok() {
                        ledger.handled.lock().unwrap().push(id);
                    }
                });
            }
        })
    }

    /// Waits until a message is handled after `since` (consumption resumed) and says how long
    /// after `since` that was; `None` if nothing is handled within `within`.
    pub async fn resumed_after(&self, within: Duration) -> Option<Duration> {
        let since = Instant::now();
        let before = self.handled_count();
        while since.elapsed() < within {
            if self.handled_count() > before {
                return Some(since.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Waits up to `within` for every accepted message to be handled, then says what was
    /// found.
    pub async fn settle(&self, within: Duration) -> Outcome {
        let accepted: HashSet<String> = self.accepted.lock().unwrap().iter().cloned().collect();
        let deadline = Instant::now() + within;
        loop {
            let handled = self.handled.lock().unwrap().clone();
            let seen: HashSet<&String> = handled.iter().collect();
            let lost = accepted.iter().filter(|id| !seen.contains(id)).count();
            if lost == 0 || Instant::now() > deadline {
                return Outcome {
                    accepted: accepted.len(),
                    refused: self.refused.load(Ordering::SeqCst),
                    lost,
                    duplicates: handled.len() - seen.len(),
                };
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The broker restarts while handlers run: 400 messages stored, then consumed by handlers of
/// 300 ms eight at a time (so a restart always lands in the middle of some); after 40,
/// `restart` stops and starts the broker. Prints how long after it consumption resumed, and
/// asserts that every accepted message was handled.
///
/// # Panics
///
/// When consumption never resumes or an accepted message is never handled.
pub async fn handlers_survive_a_broker_restart<A: Adapter + Clone>(
    adapter: &A,
    topic: &TopicName,
    key: &SubscriptionKey,
    restart: impl FnOnce(),
) {
    const MESSAGES: usize = 400;
    let ledger = Ledger::default();
    for publisher in ledger.publish_all(adapter, topic, MESSAGES, 4) {
        publisher.await.expect("publisher");
    }
    let consumer = ledger.consume_slowly(adapter, key, 8, Duration::from_millis(300));
    while ledger.handled_count() < 40 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::block_in_place(restart);
    let resumed = ledger.resumed_after(Duration::from_secs(60)).await;
    println!("consumption resumed {resumed:?} after the broker was back");
    assert!(resumed.is_some(), "consumption never resumed");
    let outcome = ledger.settle(Duration::from_secs(120)).await;
    println!("{outcome:?}");
    outcome.assert_nothing_lost(MESSAGES);
    consumer.abort();
}

/// Collects everything logged, at every level, into one buffer (for checks that a secret
/// never reaches the logs).
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 (`server.pem`, `server.key`) in
/// `dir`, made with the `openssl` command.
///
/// # Panics
///
/// When `openssl` is missing or fails.
pub fn make_test_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (deploy/local/ensure-brokers installs it)");
        assert!(status.success(), "openssl {args:?} failed");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=topiq test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("write ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
}

/// A poison message (nacked on every attempt) published ahead of 1,000 healthy ones on `key`,
/// whose trigger allows 3 attempts: every healthy message is handled, and the poison one ends
/// in the DLQ after its 3 attempts, alone.
///
/// # Panics
///
/// When any of that does not happen within a minute.
pub async fn poison_message_with_a_thousand_behind<A: Adapter>(
    adapter: &A,
    topic: &TopicName,
    key: &SubscriptionKey,
) {
    let poison = adapter
        .publish(topic, NewMessage::new(serde_json::json!({"poison": true})))
        .await
        .expect("publish poison")
        .message_id;
    let mut healthy = HashSet::new();
    for chunk in 0..10 {
        let batch = (0..100)
            .map(|n| NewMessage::new(serde_json::json!({"n": chunk * 100 + n})))
            .collect();
        for result in adapter.publish_batch(topic, batch).await.expect("batch") {
            healthy.insert(result.expect("publish").message_id);
        }
    }
    let mut subscription = adapter
        .consume(key, ConsumeOptions { prefetch: 32 })
        .await
        .expect("consume");
    let (mut handled, mut poison_attempts) = (HashSet::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while handled.len() < healthy.len() || poison_attempts < 3 {
        assert!(
            Instant::now() < deadline,
            "handled {} of 1000, the poison message {poison_attempts} times",
            handled.len()
        );
        let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_secs(1), subscription.next()).await
        else {
            continue;
        };
        if delivery.envelope().id == poison {
            poison_attempts += 1;
            delivery
                .nack(Duration::from_millis(50))
                .await
                .expect("nack");
        } else {
            handled.insert(delivery.envelope().id.clone());
            delivery.ack().await.expect("ack");
        }
    }
    assert_eq!(handled, healthy);
    let page = adapter
        .dlq_list(topiq_adapter::DlqQuery::new(topic.clone()))
        .await
        .expect("list");
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].id, poison);
    assert_eq!(page.records[0].attempts, 3);
}
