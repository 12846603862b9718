//! The in-memory adapter's bound (`max_messages`): a full topic makes publishes wait, then
//! refuses them as a full broker does, and every way a message leaves frees its place.

// Test helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use topiq_adapter::{
    Adapter, ConsumeOptions, DeadLetters, DlqSelection, Error, Failure, FailureKind, NewMessage,
    Subscription, SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec, TriggerName,
};
use topiq_memory::{BuiltinQueueAdapter, MemoryConfig};

const WAIT: Duration = Duration::from_millis(300);

/// An adapter holding at most `max` messages per topic, with topic `bounded` and the
/// triggers `triggers` on it.
async fn bounded(max: u64, triggers: &[&str]) -> (BuiltinQueueAdapter, TopicName) {
    let adapter = BuiltinQueueAdapter::with_config(MemoryConfig {
        max_messages: max,
        publish_timeout: WAIT,
    });
    let topic = TopicName::new("bounded").unwrap();
    adapter
        .declare_topic(TopicSpec::new(topic.clone()))
        .await
        .unwrap();
    for trigger in triggers {
        let key = SubscriptionKey::new(topic.clone(), TriggerName::new(*trigger).unwrap());
        adapter
            .declare_subscription(SubscriptionSpec::new(key))
            .await
            .unwrap();
    }
    (adapter, topic)
}

async fn consume(adapter: &BuiltinQueueAdapter, topic: &TopicName, trigger: &str) -> Subscription {
    let key = SubscriptionKey::new(topic.clone(), TriggerName::new(trigger).unwrap());
    adapter
        .consume(&key, ConsumeOptions::with_prefetch(10))
        .await
        .unwrap()
}

async fn publish(adapter: &BuiltinQueueAdapter, topic: &TopicName, n: u64) -> Result<(), Error> {
    adapter
        .publish(topic, NewMessage::new(json!({ "n": n })))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_full_topic_refuses_a_publish_after_the_timeout_and_keeps_what_it_holds() {
    let (adapter, topic) = bounded(3, &["t"]).await;
    for n in 0..3 {
        publish(&adapter, &topic, n).await.unwrap();
    }
    let started = Instant::now();
    let refused = publish(&adapter, &topic, 3).await.unwrap_err();
    assert!(started.elapsed() >= WAIT, "refused before the timeout");
    assert!(matches!(refused, Error::BrokerFull { .. }), "{refused:?}");
    assert_eq!(refused.code(), "broker_full");
    let text = refused.to_string();
    assert!(
        text.contains("bounded") && text.contains("max_messages"),
        "{text}"
    );

    let mut subscription = consume(&adapter, &topic, "t").await;
    for n in 0..3 {
        let delivery = subscription.next().await.unwrap().unwrap();
        assert_eq!(*delivery.envelope().data, json!({ "n": n }));
        delivery.ack().await.unwrap();
    }
    let nothing = tokio::time::timeout(WAIT, subscription.next()).await;
    assert!(nothing.is_err(), "the refused message was published");
}

#[tokio::test]
async fn a_waiting_publish_goes_through_once_a_message_is_settled() {
    let (adapter, topic) = bounded(1, &["t"]).await;
    publish(&adapter, &topic, 0).await.unwrap();
    let waiting = tokio::spawn({
        let (adapter, topic) = (adapter.clone(), topic.clone());
        async move { publish(&adapter, &topic, 1).await }
    });
    tokio::time::sleep(WAIT / 3).await;
    assert!(!waiting.is_finished(), "the publish did not wait for room");
    let mut subscription = consume(&adapter, &topic, "t").await;
    let first = subscription.next().await.unwrap().unwrap();
    first.ack().await.unwrap();
    waiting.await.unwrap().unwrap();
    let second = subscription.next().await.unwrap().unwrap();
    assert_eq!(*second.envelope().data, json!({ "n": 1 }));
}

#[tokio::test]
async fn a_message_holds_its_place_until_every_trigger_settled_it() {
    let (adapter, topic) = bounded(1, &["a", "b"]).await;
    publish(&adapter, &topic, 0).await.unwrap();
    let mut a = consume(&adapter, &topic, "a").await;
    a.next().await.unwrap().unwrap().ack().await.unwrap();
    let refused = publish(&adapter, &topic, 1).await.unwrap_err();
    assert!(matches!(refused, Error::BrokerFull { .. }), "{refused:?}");
    let mut b = consume(&adapter, &topic, "b").await;
    b.next().await.unwrap().unwrap().ack().await.unwrap();
    publish(&adapter, &topic, 1).await.unwrap();
}

#[tokio::test]
async fn dead_letters_free_their_place_and_a_redrive_needs_room() {
    let (adapter, topic) = bounded(1, &["t"]).await;
    publish(&adapter, &topic, 0).await.unwrap();
    let mut subscription = consume(&adapter, &topic, "t").await;
    let delivery = subscription.next().await.unwrap().unwrap();
    let failure = Failure {
        message: "bad data".into(),
        kind: FailureKind::NonRetryable,
    };
    delivery.dead_letter(failure).await.unwrap();
    // The record is in the DLQ; the topic has room again, which a new message takes.
    publish(&adapter, &topic, 1).await.unwrap();
    let refused = adapter
        .dlq_redrive(&topic, None, DlqSelection::All)
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::BrokerFull { .. }), "{refused:?}");
    assert_eq!(adapter.dlq_count(&topic, None).await.unwrap(), 1);
    let second = subscription.next().await.unwrap().unwrap();
    assert_eq!(*second.envelope().data, json!({ "n": 1 }));
    second.ack().await.unwrap();
    let redriven = adapter
        .dlq_redrive(&topic, None, DlqSelection::All)
        .await
        .unwrap();
    assert_eq!(redriven, 1);
    let again = subscription.next().await.unwrap().unwrap();
    assert_eq!(*again.envelope().data, json!({ "n": 0 }));
    // The redriven message holds the place until it is settled.
    assert!(publish(&adapter, &topic, 2).await.is_err());
    again.ack().await.unwrap();
    publish(&adapter, &topic, 2).await.unwrap();
}

#[tokio::test]
async fn a_duplicate_is_answered_at_once_on_a_full_topic() {
    let (adapter, topic) = bounded(1, &["t"]).await;
    let keyed = || NewMessage::new(json!("once")).idempotency_key("order-7");
    let first = adapter.publish(&topic, keyed()).await.unwrap();
    let started = Instant::now();
    let again = adapter.publish(&topic, keyed()).await.unwrap();
    assert!(started.elapsed() < WAIT, "the duplicate waited for room");
    assert!(again.duplicate);
    assert_eq!(again.message_id, first.message_id);
}

#[tokio::test]
async fn closing_the_adapter_stops_a_waiting_publish() {
    let adapter = BuiltinQueueAdapter::with_config(MemoryConfig {
        max_messages: 1,
        publish_timeout: Duration::from_secs(60),
    });
    let topic = TopicName::new("bounded").unwrap();
    adapter
        .declare_topic(TopicSpec::new(topic.clone()))
        .await
        .unwrap();
    let key = SubscriptionKey::new(topic.clone(), TriggerName::new("t").unwrap());
    adapter
        .declare_subscription(SubscriptionSpec::new(key))
        .await
        .unwrap();
    publish(&adapter, &topic, 0).await.unwrap();
    let waiting = tokio::spawn({
        let (adapter, topic) = (adapter.clone(), topic.clone());
        async move { publish(&adapter, &topic, 1).await }
    });
    tokio::time::sleep(WAIT / 3).await;
    adapter.close().await.unwrap();
    let stopped = tokio::time::timeout(WAIT, waiting).await;
    let result = stopped
        .expect("the publish still waits after close")
        .unwrap();
    assert!(matches!(result, Err(Error::Closed)), "{result:?}");
}

#[tokio::test]
async fn a_batch_past_the_bound_waits_once_and_is_refused_message_by_message() {
    let (adapter, topic) = bounded(2, &["t"]).await;
    let messages = (0..5).map(|n| NewMessage::new(json!({ "n": n }))).collect();
    let started = Instant::now();
    let results = adapter.publish_batch(&topic, messages).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= WAIT && waited < 2 * WAIT, "waited {waited:?}");
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    for refused in &results[2..] {
        assert!(
            matches!(refused, Err(Error::BrokerFull { .. })),
            "{results:?}"
        );
    }
}
