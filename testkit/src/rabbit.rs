//! RabbitMQ guards: a vhost of its own on the machine's broker, or a node of its own.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{free_port, run_checked, wait_for_port};

/// A RabbitMQ virtual host of its own on the machine's broker (`rabbitmqctl`), so a test's
/// exchanges and queues meet no other run's; deleted with everything in it on drop.
pub struct RabbitVhost {
    name: String,
    users: Vec<String>,
}

/// The machine's RabbitMQ (guest/guest on loopback).
const RABBITMQ_ADDRESS: &str = "127.0.0.1:5672";

fn rabbitmqctl(args: &[&str]) {
    run_checked(
        Command::new("rabbitmqctl").args(args),
        &format!("rabbitmqctl {args:?}"),
        "is rabbitmq-server installed? scripts/test installs it",
        "is RabbitMQ running? `rabbitmq-server -detached` starts it",
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
        let failure = format!(
            "the RabbitMQ node {} {failure} (port {}, log: {})",
            self.node,
            self.port,
            self.dir.join("log").display()
        );
        wait_for_port(&self.host, self.port, Duration::from_secs(60), &failure);
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
        run_checked(
            self.command("rabbitmqctl")
                .args(["-n", self.node.as_str()])
                .args(args),
            &format!("rabbitmqctl -n {} {args:?}", self.node),
            "is rabbitmq-server installed? scripts/test installs it",
            "is the node up?",
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
