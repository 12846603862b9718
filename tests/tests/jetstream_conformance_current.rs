//! The conformance suite on `JetStreamAdapter` against a current nats-server release (the
//! pinned one `deploy/local/ensure-brokers` downloads), beside the machine's 2.9.

use topiq_jetstream::JetStreamAdapter;
use topiq_testkit::{NatsServer, NatsVersion, jetstream_adapter};

async fn adapter() -> (JetStreamAdapter, NatsServer) {
    let server = NatsServer::start_version(NatsVersion::Current, &[]);
    (jetstream_adapter(&server).await, server)
}

topiq_adapter::conformance_tests!(adapter());
