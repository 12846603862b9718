//! A nats-server in a network namespace of the test's own, reached over a veth pair, so a
//! test can cut the network for real: a blackhole route (a half-open connection: nothing
//! reaches the server, the server sees nothing wrong) or the link set down. Needs root and
//! iproute2 (`ip netns`), as on this machine and in CI.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::NatsVersion;

/// A nats-server with JetStream on `10.213.<n>.2:4222` inside namespace `tq-<n>`, the host
/// side at `10.213.<n>.1`; the server is killed and the namespace (and its veth pair) removed
/// on drop.
pub struct IsolatedNats {
    namespace: String,
    host_link: String,
    server_ip: String,
    child: Child,
    store: PathBuf,
}

/// Runs `ip` with `args`.
///
/// # Panics
///
/// When it fails: a test that cannot make its network fails, never skips.
fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run ip {args:?}: {err} (iproute2 is needed)"));
    assert!(
        output.status.success(),
        "ip {args:?} failed: {} (the network tests need root)",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl IsolatedNats {
    /// Makes the namespace and the veth pair, starts the server in it and waits until the
    /// host reaches it.
    ///
    /// # Panics
    ///
    /// When the namespace cannot be made or the server does not come up within 10 s.
    pub fn start() -> Self {
        // One subnet per test process (nextest runs each test in its own).
        let n = std::process::id() % 250 + 1;
        let namespace = format!("tq-{n}");
        let (host_link, ns_link) = (format!("tqh{n}"), format!("tqn{n}"));
        let server_ip = format!("10.213.{n}.2");
        let _ = Command::new("ip")
            .args(["netns", "del", &namespace])
            .output();
        ip(&["netns", "add", &namespace]);
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link,
        ]);
        ip(&["link", "set", &ns_link, "netns", &namespace]);
        ip(&[
            "addr",
            "add",
            &format!("10.213.{n}.1/30"),
            "dev",
            &host_link,
        ]);
        ip(&["link", "set", &host_link, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", namespace.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{server_ip}/30"), "dev", &ns_link]);
        inside(&["link", "set", &ns_link, "up"]);
        inside(&["link", "set", "lo", "up"]);
        let store = std::env::temp_dir().join(format!("topiq-netns-{n}-{}", std::process::id()));
        std::fs::create_dir_all(&store).expect("create the server's store dir");
        let child = Command::new("ip")
            .args(["netns", "exec", &namespace])
            .arg(NatsVersion::Machine.binary())
            .args(["-a", &server_ip, "-p", "4222", "-js", "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server in the namespace");
        let server = Self {
            namespace,
            host_link,
            server_ip,
            child,
            store,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((server.server_ip.as_str(), 4222)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server in the namespace did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `nats://<server ip>:4222`.
    pub fn url(&self) -> String {
        format!("nats://{}:4222", self.server_ip)
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

impl Drop for IsolatedNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let route = format!("{}/32", self.server_ip);
        let _ = Command::new("ip")
            .args(["route", "del", "blackhole", &route])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
