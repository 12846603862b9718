//! Retention on the in-memory adapter: a capability the conformance suite does not require of
//! every adapter, so it is tested here.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use topiq_adapter::{
    Adapter, ConsumeOptions, DeadLetters, DlqQuery, FailureKind, NewMessage, SubscriptionKey,
    SubscriptionSpec, TopicName, TopicSpec, TriggerName,
};
use topiq_memory::BuiltinQueueAdapter;

#[tokio::test]
async fn messages_waiting_longer_than_the_retention_are_dead_lettered_as_expired() {
    let adapter = BuiltinQueueAdapter::new();
    let topic = TopicName::new("retained").unwrap();
    let mut spec = TopicSpec::new(topic.clone());
    spec.retention = Some(Duration::from_millis(200));
    adapter.declare_topic(spec).await.unwrap();
    let key = SubscriptionKey::new(topic.clone(), TriggerName::new("t").unwrap());
    adapter
        .declare_subscription(SubscriptionSpec::new(key.clone()))
        .await
        .unwrap();

    adapter
        .publish(&topic, NewMessage::new(json!("stale")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    adapter
        .publish(&topic, NewMessage::new(json!("fresh")))
        .await
        .unwrap();

    let mut subscription = adapter
        .consume(&key, ConsumeOptions::with_prefetch(5))
        .await
        .unwrap();
    let delivery = subscription.next().await.unwrap().unwrap();
    assert_eq!(*delivery.envelope().data, json!("fresh"));
    delivery.ack().await.unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
    assert!(nothing.is_err(), "the expired message was delivered");
    let page = adapter
        .dlq_list(DlqQuery::new(topic.clone()))
        .await
        .unwrap();
    assert_eq!(
        page.records.len(),
        1,
        "the expired message left a DLQ record"
    );
    assert_eq!(*page.records[0].data, json!("stale"));
    assert_eq!(page.records[0].error.kind, FailureKind::Expired);
}

#[tokio::test]
async fn a_topic_option_over_the_adapter_limit_is_refused() {
    let adapter = BuiltinQueueAdapter::new();
    let mut spec = TopicSpec::new(TopicName::new("huge").unwrap());
    spec.max_message_bytes = topiq_memory::MAX_MESSAGE_BYTES + 1;
    let err = adapter.declare_topic(spec).await.unwrap_err();
    assert!(err.to_string().contains("max_message_bytes"), "{err}");
}
