//! Brokers in a network namespace of the test's own, reached over a veth pair, so a test can
//! cut the network for real: a blackhole route (a half-open connection: nothing reaches the
//! server, the server sees nothing wrong) or the link set down. Needs root and iproute2
//! (`ip netns`), as on this machine and in CI.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{NatsVersion, RabbitNode, run_checked, wait_for_port};

/// Namespace `tq-<n>` with address `10.213.<n>.2`, linked to the host's `10.213.<n>.1` by a
/// veth pair; removed (with the pair and any blackhole route) on drop.
pub struct NetworkNamespace {
    name: String,
    host_link: String,
    server_ip: String,
}

/// Runs `ip` with `args`.
///
/// # Panics
///
/// When it fails: a test that cannot make its network fails, never skips.
fn ip(args: &[&str]) {
    run_checked(
        Command::new("ip").args(args),
        &format!("ip {args:?}"),
        "iproute2 is needed",
        "the network tests need root",
    );
}

/// Claims a free `n` (1..=250) by creating namespace `tq-<n>`, which fails when another test
/// holds it: tests run in parallel processes, and a namespace another test uses is never
/// touched.
fn claim_subnet() -> u32 {
    let first = std::process::id() % 250;
    (0..250)
        .map(|offset| (first + offset) % 250 + 1)
        .find(|n| {
            Command::new("ip")
                .args(["netns", "add", &format!("tq-{n}")])
                .output()
                .is_ok_and(|output| output.status.success())
        })
        .expect("no free network namespace tq-1 ... tq-250 (`ip netns list`; delete stale ones)")
}

impl NetworkNamespace {
    /// Makes the namespace and the veth pair, both ends up.
    ///
    /// # Panics
    ///
    /// When `ip` fails.
    pub fn create() -> Self {
        let n = claim_subnet();
        let name = format!("tq-{n}");
        let (host_link, ns_link) = (format!("tqh{n}"), format!("tqn{n}"));
        let server_ip = format!("10.213.{n}.2");
        let namespace = Self {
            name,
            host_link,
            server_ip,
        };
        ip(&[
            "link",
            "add",
            &namespace.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &ns_link,
        ]);
        ip(&["link", "set", &ns_link, "netns", &namespace.name]);
        let host_address = format!("10.213.{n}.1/30");
        ip(&["addr", "add", &host_address, "dev", &namespace.host_link]);
        ip(&["link", "set", &namespace.host_link, "up"]);
        let server_address = format!("{}/30", namespace.server_ip);
        namespace.inside(&["addr", "add", &server_address, "dev", &ns_link]);
        namespace.inside(&["link", "set", &ns_link, "up"]);
        namespace.inside(&["link", "set", "lo", "up"]);
        namespace
    }

    /// Runs `ip` with `args` inside the namespace.
    fn inside(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", self.name.as_str(), "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address a server inside listens on.
    pub fn server_ip(&self) -> &str {
        &self.server_ip
    }

    /// Adds (or removes) a blackhole route to the server: the host's packets to it vanish,
    /// while the server keeps the connection open (half-open).
    pub fn blackhole(&self, on: bool) {
        let route = format!("{}/32", self.server_ip);
        ip(&["route", if on { "add" } else { "del" }, "blackhole", &route]);
    }

    /// Sets the host side of the link down (or up again).
    pub fn link(&self, up: bool) {
        ip(&[
            "link",
            "set",
            &self.host_link,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for NetworkNamespace {
    fn drop(&mut self) {
        let route = format!("{}/32", self.server_ip);
        let _ = Command::new("ip")
            .args(["route", "del", "blackhole", &route])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
    }
}

/// A nats-server with JetStream on port 4222 inside a [`NetworkNamespace`]; killed on drop.
pub struct IsolatedNats {
    child: Child,
    store: PathBuf,
    // Dropped last: the server goes first.
    network: NetworkNamespace,
}

impl IsolatedNats {
    /// Makes the namespace, starts the server in it and waits until the host reaches it.
    ///
    /// # Panics
    ///
    /// When the namespace cannot be made or the server does not come up within 10 s.
    pub fn start() -> Self {
        let network = NetworkNamespace::create();
        let store = std::env::temp_dir().join(format!("topiq-netns-{}", std::process::id()));
        std::fs::create_dir_all(&store).expect("create the server's store dir");
        let child = Command::new("ip")
            .args(["netns", "exec", network.name()])
            .arg(NatsVersion::Machine.binary())
            .args(["-a", network.server_ip(), "-p", "4222", "-js", "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server in the namespace");
        let server = Self {
            child,
            store,
            network,
        };
        wait_for_port(
            server.network.server_ip(),
            4222,
            Duration::from_secs(10),
            "nats-server in the namespace did not start",
        );
        server
    }

    /// `nats://<server ip>:4222`.
    pub fn url(&self) -> String {
        format!("nats://{}:4222", self.network.server_ip())
    }

    /// The namespace, to cut.
    pub fn network(&self) -> &NetworkNamespace {
        &self.network
    }
}

impl Drop for IsolatedNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A RabbitMQ node of the test's own on port 5672 inside a [`NetworkNamespace`]; stopped on
/// drop.
pub struct IsolatedRabbit {
    node: RabbitNode,
    // Dropped last: the node stops first.
    network: NetworkNamespace,
}

impl IsolatedRabbit {
    /// Makes the namespace, starts the node in it and waits until the host reaches it.
    ///
    /// # Panics
    ///
    /// When the namespace cannot be made or the node does not come up within a minute.
    pub fn start() -> Self {
        let network = NetworkNamespace::create();
        let node = RabbitNode::start_in(network.name(), network.server_ip());
        Self { node, network }
    }

    /// `amqp://guest:guest@<server ip>:5672/%2f` (the node's `guest` may log in from
    /// elsewhere than loopback: its config says so).
    pub fn url(&self) -> String {
        self.node.url()
    }

    /// The namespace, to cut.
    pub fn network(&self) -> &NetworkNamespace {
        &self.network
    }
}
