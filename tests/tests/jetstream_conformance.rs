//! The conformance suite on `JetStreamAdapter`, each test against its own real nats-server.

use topiq_jetstream::JetStreamAdapter;
use topiq_testkit::{NatsServer, NatsVersion, jetstream_adapter};

async fn adapter() -> (JetStreamAdapter, NatsServer) {
    let server = NatsServer::start_version(NatsVersion::Machine, &[]);
    (jetstream_adapter(&server).await, server)
}

topiq_adapter::conformance_tests!(adapter());
