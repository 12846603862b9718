//! The conformance suite on `JetStreamAdapter`, each test against its own real nats-server.

use topiq_jetstream::JetStreamAdapter;
use topiq_testkit::{NatsServer, NatsVersion, jetstream_adapter};

async fn adapter() -> (JetStreamAdapter, NatsServer) {
    let server = NatsServer::start_version(NatsVersion::Machine, &[]);
    (jetstream_adapter(&server).await, server)
}

topiq_adapter::conformance_tests!(adapter());

/// Lanes (priority levels): not yet in `conformance_tests!`, which RabbitMQ runs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_hold_their_messages_through_retries_and_redrives() {
    let (adapter, _server) = adapter().await;
    topiq_adapter::conformance::lanes_hold_their_messages_through_retries_and_redrives(adapter)
        .await;
}
