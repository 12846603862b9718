//! The conformance suite on `JetStreamAdapter` against a current nats-server release (the
//! pinned one `deploy/local/ensure-brokers` downloads), beside the machine's 2.9.

use topiq_integration_tests::{NatsServer, NatsVersion};
use topiq_jetstream::{JetStreamAdapter, JetStreamConfig};

async fn adapter() -> (JetStreamAdapter, NatsServer) {
    let server = NatsServer::start_version(NatsVersion::Current, &[]);
    let config = JetStreamConfig {
        url: Some(server.url()),
        ..JetStreamConfig::default()
    };
    let adapter = JetStreamAdapter::connect(config)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to {}: {err}", server.url()));
    (adapter, server)
}

topiq_adapter::conformance_tests!(adapter());
