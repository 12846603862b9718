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
async fn lanes_keep_their_messages_apart() {
    let (adapter, _server) = adapter().await;
    topiq_adapter::conformance::lanes_keep_their_messages_apart(adapter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_and_a_redrive_stay_in_their_lane() {
    let (adapter, _server) = adapter().await;
    topiq_adapter::conformance::a_retry_and_a_redrive_stay_in_their_lane(adapter).await;
}
