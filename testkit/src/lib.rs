//! What topiq's tests share: guards for real broker processes (a nats-server or a
//! three-node cluster, a RabbitMQ vhost or node, either in a network namespace of the test's
//! own), a PostgreSQL database of the test's own, a TCP fault proxy, raw lapin doing what the
//! RabbitMQ adapter does (`raw_rabbit`, for benchmark baselines), the at-least-once
//! `Ledger`, and fault scenarios run the same way on every broker. A broker that cannot start fails the test: nothing here skips.

// Test support: a broker that cannot start is a test failure, so it panics with the reason.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod certs;
mod fault_proxy;
mod ledger;
mod logs;
mod nats;
mod netns;
mod postgres;
mod rabbit;
pub mod raw_rabbit;
mod scenarios;
mod setup;

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

pub use certs::make_test_certificates;
pub use fault_proxy::FaultProxy;
pub use ledger::{Ledger, Outcome};
pub use logs::CapturedLogs;
pub use nats::{NatsCluster, NatsServer, NatsVersion, jetstream_adapter};
pub use netns::{IsolatedNats, IsolatedRabbit, NetworkNamespace};
pub use postgres::{PostgresDatabase, postgres_server};
pub use rabbit::{RabbitNode, RabbitVhost, rabbitmq_adapter};
pub use scenarios::{handlers_survive_a_broker_restart, poison_message_with_a_thousand_behind};
pub use setup::{Broker, Store};

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Waits until `host:port` takes a TCP connection.
///
/// # Panics
///
/// When it does not within `within`, with `failure` (which server, where its log is).
pub(crate) fn wait_for_port(host: &str, port: u16, within: Duration, failure: &str) {
    let deadline = Instant::now() + within;
    while TcpStream::connect((host, port)).is_err() {
        assert!(Instant::now() < deadline, "{failure}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `command` (shown as `shown`) to completion.
///
/// # Panics
///
/// When it cannot start (`missing` says what to install) or fails (`failed` says what to
/// check): a test that cannot set up its brokers fails, never skips.
pub(crate) fn run_checked(command: &mut Command, shown: &str, missing: &str, failed: &str) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {shown}: {err} ({missing})"));
    assert!(
        output.status.success(),
        "{shown} failed ({}): {}{} ({failed})",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
