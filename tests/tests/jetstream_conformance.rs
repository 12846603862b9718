//! The conformance suite on `JetStreamAdapter`, each test against its own real nats-server.

use topiq_integration_tests::NatsServer;
use topiq_jetstream::{JetStreamAdapter, JetStreamConfig};

async fn adapter() -> (JetStreamAdapter, NatsServer) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let server = NatsServer::start();
    eprintln!("nats-server at {}", server.url());
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
