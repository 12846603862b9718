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
async fn dead_letters_free_their_place_and_a_redrive_is_never_refused() {
    let (adapter, topic) = bounded(1, &["t"]).await;
    publish(&adapter, &topic, 0).await.unwrap();
    let mut subscription = consume(&adapter, &topic, "t").await;
    let delivery = subscription.next().await.unwrap().unwrap();
    let failure = Failure {
        message: "bad data".into(),
        kind: FailureKind::NonRetryable,
    };
    delivery.dead_letter(failure).await.unwrap();
    // The record is in the DLQ; the topic has room again.
    publish(&adapter, &topic, 1).await.unwrap();
    let redriven = adapter
        .dlq_redrive(&topic, None, DlqSelection::All)
        .await
        .unwrap();
    assert_eq!(redriven, 1);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let delivery = subscription.next().await.unwrap().unwrap();
        seen.push(delivery.envelope().data["n"].as_u64().unwrap());
        delivery.ack().await.unwrap();
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 1]);
    // Both settled: room for one again, and no more.
    publish(&adapter, &topic, 2).await.unwrap();
    assert!(publish(&adapter, &topic, 3).await.is_err());
}

#[tokio::test]
async fn a_batch_past_the_bound_is_refused_message_by_message() {
    let (adapter, topic) = bounded(2, &["t"]).await;
    let messages = (0..3).map(|n| NewMessage::new(json!({ "n": n }))).collect();
    let results = adapter.publish_batch(&topic, messages).await.unwrap();
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    assert!(
        matches!(results[2], Err(Error::BrokerFull { .. })),
        "{results:?}"
    );
}
