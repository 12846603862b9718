//! RabbitMQ credentials: they work from the config's fields, a wrong one is a clear error at
//! once (not retried), and neither ever reaches an error or the logs (at TRACE, lapin's own
//! logs included).

// Test helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use topiq_adapter::{
    Adapter, ConsumeOptions, NewMessage, SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec,
    TriggerName,
};
use topiq_rabbitmq::{RabbitMqAdapter, RabbitMqConfig};
use topiq_testkit::{CapturedLogs, RabbitNode, RabbitVhost, free_port, make_test_certificates};

const PASSWORD: &str = "s3cret-Pa55word";
const WRONG: &str = "wr0ng-Pa55word";

/// The error, its sources and its `Debug` form, as one text.
fn everything_said(err: &topiq_adapter::Error) -> String {
    let mut said = format!("{err} / {err:?}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        said.push_str(&format!(" / {cause} / {cause:?}"));
        source = cause.source();
    }
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_work_and_stay_out_of_errors_and_logs() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let mut vhost = RabbitVhost::create();
    let user = vhost.add_user(PASSWORD);
    let config = |password: &str| RabbitMqConfig {
        url: vhost.url_without_credentials(),
        connection: topiq_rabbitmq::ConnectionOptions {
            user: Some(user.clone()),
            password: Some(password.into()),
            ..Default::default()
        },
        reconnect_wait: Duration::from_secs(1),
        ..RabbitMqConfig::default()
    };

    // The right password: a message goes through.
    let adapter = RabbitMqAdapter::connect(config(PASSWORD))
        .await
        .expect("connect with the right password");
    let topic = TopicName::new("auth.check").unwrap();
    let key = SubscriptionKey::new(topic.clone(), TriggerName::new("t").unwrap());
    adapter
        .declare_topic(TopicSpec::new(topic.clone()))
        .await
        .unwrap();
    adapter
        .declare_subscription(SubscriptionSpec::new(key.clone()))
        .await
        .unwrap();
    adapter
        .publish(&topic, NewMessage::new(json!("authenticated")))
        .await
        .unwrap();
    let mut subscription = adapter
        .consume(&key, ConsumeOptions::with_prefetch(1))
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("delivered")
        .unwrap()
        .unwrap();
    delivery.ack().await.unwrap();
    adapter.close().await.unwrap();

    // A wrong password: a clear error naming the broker, never the password.
    let err = RabbitMqAdapter::connect(config(WRONG))
        .await
        .err()
        .expect("a wrong password is refused");
    let said = everything_said(&err);
    assert_eq!(
        err.code(),
        "invalid_argument",
        "refused at once, not retried: {said}"
    );
    assert!(
        said.contains("refused the login"),
        "the error says why: {said}"
    );
    assert!(
        said.contains("127.0.0.1:5672"),
        "the error names the broker: {said}"
    );
    assert!(
        !said.contains(WRONG),
        "the password reached the error: {said}"
    );

    let logged = logs.text();
    assert!(!logged.is_empty(), "nothing was logged at TRACE");
    assert!(!logged.contains(PASSWORD), "the password reached the logs");
    assert!(
        !logged.contains(WRONG),
        "the wrong password reached the logs"
    );
    assert!(!format!("{:?}", config(PASSWORD)).contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_right_ca_connects_and_without_it_is_refused() {
    let dir = std::env::temp_dir().join(format!("topiq-rabbit-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    make_test_certificates(&dir);
    // The node runs as the `rabbitmq` user: it must read the (test-only) key.
    let _ = std::process::Command::new("chmod")
        .args(["a+r"])
        .arg(dir.join("server.key"))
        .status();
    let tls_port = free_port();
    let path = |name: &str| dir.join(name).display().to_string();
    let node = RabbitNode::start_with(&format!(
        "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
         ssl_options.cacertfile = {}\n\
         ssl_options.certfile = {}\n\
         ssl_options.keyfile = {}\n\
         ssl_options.verify = verify_none\n\
         ssl_options.fail_if_no_peer_cert = false",
        path("ca.pem"),
        path("server.pem"),
        path("server.key")
    ));
    let config = |ca: Option<std::path::PathBuf>| RabbitMqConfig {
        url: format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f"),
        connection: topiq_rabbitmq::ConnectionOptions {
            tls: Some(topiq_rabbitmq::TlsConfig {
                ca,
                ..Default::default()
            }),
            ..Default::default()
        },
        reconnect_wait: Duration::from_secs(1),
        ..RabbitMqConfig::default()
    };
    let adapter = RabbitMqAdapter::connect(config(Some(dir.join("ca.pem"))))
        .await
        .expect("the broker's CA is trusted");
    adapter.health().await.expect("healthy over TLS");
    let topic = TopicName::new("tls.check").unwrap();
    adapter
        .declare_topic(TopicSpec::new(topic.clone()))
        .await
        .expect("declare over TLS");
    adapter.close().await.expect("close");
    let err = RabbitMqAdapter::connect(config(None))
        .await
        .err()
        .expect("an unknown CA is refused");
    assert_eq!(err.code(), "broker_unavailable", "{err}");
    drop(node);
    std::fs::remove_dir_all(&dir).ok();
}
