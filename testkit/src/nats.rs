//! nats-server guards: one server on a free port, a three-node cluster, each killed and
//! cleaned up on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for_port};

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
    pub(crate) fn binary(self) -> String {
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
                    let pinned = include_str!("../../deploy/local/nats-server-current.txt");
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
        let failure = format!("nats-server did not start on port {}", self.port);
        wait_for_port("127.0.0.1", self.port, Duration::from_secs(10), &failure);
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
            wait_for_cluster_port(node.client_port);
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
        wait_for_cluster_port(self.nodes[node].client_port);
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

fn wait_for_cluster_port(port: u16) {
    let failure = format!("nats-server did not open port {port}");
    wait_for_port("127.0.0.1", port, Duration::from_secs(20), &failure);
}
