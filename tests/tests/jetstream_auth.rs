//! JetStream credentials: they work, and they never reach an error or the logs.

// Test helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use topiq_adapter::Adapter;
use topiq_jetstream::{JetStreamAdapter, JetStreamConfig};
use topiq_testkit::{CapturedLogs, NatsServer, make_test_certificates};

const PASSWORD: &str = "s3cret-Pa55word";

#[tokio::test]
async fn user_and_password_work_and_stay_out_of_errors_and_logs() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let server = NatsServer::start_with(&["--user", "app", "--pass", PASSWORD]);
    let config = |password: &str| JetStreamConfig {
        url: Some(server.url()),
        connection: topiq_jetstream::ConnectionOptions {
            user: Some("app".into()),
            password: Some(password.into()),
            ..Default::default()
        },
        ..JetStreamConfig::default()
    };
    let adapter = JetStreamAdapter::connect(config(PASSWORD))
        .await
        .expect("the right password connects");
    adapter.health().await.expect("healthy");
    adapter.close().await.expect("close");

    let wrong = "wr0ng-Pa55word";
    let err = JetStreamAdapter::connect(config(wrong))
        .await
        .err()
        .expect("a wrong password is refused");
    let shown = format!("{err} / {err:?}");
    assert!(
        !shown.contains(wrong),
        "the password reached the error: {shown}"
    );
    assert_eq!(err.code(), "broker_unavailable");

    let url_with_password = format!(
        "nats://app:{PASSWORD}@{}",
        server.url().trim_start_matches("nats://")
    );
    let config_in_url = JetStreamConfig {
        url: Some(url_with_password),
        ..JetStreamConfig::default()
    };
    assert!(!format!("{config_in_url:?}").contains(PASSWORD));
    let adapter = JetStreamAdapter::connect(config_in_url)
        .await
        .expect("credentials in the URL connect");
    adapter.close().await.expect("close");

    let logged = logs.text();
    assert!(
        !logged.is_empty(),
        "nothing was logged: the check would be empty"
    );
    assert!(!logged.contains(PASSWORD), "the password reached the logs");
    assert!(
        !logged.contains(wrong),
        "the wrong password reached the logs"
    );
}

#[tokio::test]
async fn tls_with_the_right_ca_connects_and_without_it_is_refused() {
    let dir = std::env::temp_dir().join(format!("topiq-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    make_test_certificates(&dir);
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    let server = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        cert.to_str().expect("utf-8 path"),
        "--tlskey",
        key.to_str().expect("utf-8 path"),
    ]);
    let config = |ca: Option<std::path::PathBuf>| JetStreamConfig {
        url: Some(server.url().replace("nats://", "tls://")),
        connection: topiq_jetstream::ConnectionOptions {
            tls: Some(topiq_jetstream::TlsConfig {
                ca,
                ..Default::default()
            }),
            ..Default::default()
        },
        ..JetStreamConfig::default()
    };
    let adapter = JetStreamAdapter::connect(config(Some(dir.join("ca.pem"))))
        .await
        .expect("the server's CA is trusted");
    adapter.health().await.expect("healthy over TLS");
    adapter.close().await.expect("close");
    let err = JetStreamAdapter::connect(config(None))
        .await
        .err()
        .expect("an unknown CA is refused");
    assert_eq!(err.code(), "broker_unavailable", "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
