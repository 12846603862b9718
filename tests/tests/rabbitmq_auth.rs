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
use topiq_integration_tests::{CapturedLogs, RabbitVhost};
use topiq_rabbitmq::{RabbitMqAdapter, RabbitMqConfig};

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
        user: Some(user.clone()),
        password: Some(password.into()),
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
        .consume(&key, ConsumeOptions { prefetch: 1 })
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
