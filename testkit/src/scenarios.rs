//! Fault scenarios run the same way on every broker.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use topiq_adapter::{Adapter, ConsumeOptions, NewMessage, SubscriptionKey, TopicName};

use crate::Ledger;

/// The broker restarts while handlers run: 400 messages stored, then consumed by handlers of
/// 300 ms eight at a time (so a restart always lands in the middle of some); after 40,
/// `restart` stops and starts the broker. Prints how long after it consumption resumed, and
/// asserts that every accepted message was handled.
///
/// # Panics
///
/// When consumption never resumes or an accepted message is never handled.
pub async fn handlers_survive_a_broker_restart<A: Adapter + Clone>(
    adapter: &A,
    topic: &TopicName,
    key: &SubscriptionKey,
    restart: impl FnOnce(),
) {
    const MESSAGES: usize = 400;
    let ledger = Ledger::default();
    for publisher in ledger.publish_all(adapter, topic, MESSAGES, 4) {
        publisher.await.expect("publisher");
    }
    let consumer = ledger.consume_slowly(adapter, key, 8, Duration::from_millis(300));
    while ledger.handled_count() < 40 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::block_in_place(restart);
    let resumed = ledger.resumed_after(Duration::from_secs(60)).await;
    println!("consumption resumed {resumed:?} after the broker was back");
    assert!(resumed.is_some(), "consumption never resumed");
    let outcome = ledger.settle(Duration::from_secs(120)).await;
    println!("{outcome:?}");
    outcome.assert_nothing_lost(MESSAGES);
    consumer.abort();
}

/// A poison message (nacked on every attempt) published ahead of 1,000 healthy ones on `key`,
/// whose trigger allows 3 attempts: every healthy message is handled, and the poison one ends
/// in the DLQ after its 3 attempts, alone.
///
/// # Panics
///
/// When any of that does not happen within a minute.
pub async fn poison_message_with_a_thousand_behind<A: Adapter>(
    adapter: &A,
    topic: &TopicName,
    key: &SubscriptionKey,
) {
    let poison = adapter
        .publish(topic, NewMessage::new(serde_json::json!({"poison": true})))
        .await
        .expect("publish poison")
        .message_id;
    let mut healthy = HashSet::new();
    for chunk in 0..10 {
        let batch = (0..100)
            .map(|n| NewMessage::new(serde_json::json!({"n": chunk * 100 + n})))
            .collect();
        for result in adapter.publish_batch(topic, batch).await.expect("batch") {
            healthy.insert(result.expect("publish").message_id);
        }
    }
    let mut subscription = adapter
        .consume(key, ConsumeOptions::with_prefetch(32))
        .await
        .expect("consume");
    let (mut handled, mut poison_attempts) = (HashSet::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while handled.len() < healthy.len() || poison_attempts < 3 {
        assert!(
            Instant::now() < deadline,
            "handled {} of 1000, the poison message {poison_attempts} times",
            handled.len()
        );
        let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_secs(1), subscription.next()).await
        else {
            continue;
        };
        if delivery.envelope().id == poison {
            poison_attempts += 1;
            delivery
                .nack(Duration::from_millis(50))
                .await
                .expect("nack");
        } else {
            handled.insert(delivery.envelope().id.clone());
            delivery.ack().await.expect("ack");
        }
    }
    assert_eq!(handled, healthy);
    let page = adapter
        .dlq_list(topiq_adapter::DlqQuery::new(topic.clone()))
        .await
        .expect("list");
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].id, poison);
    assert_eq!(page.records[0].attempts, 3);
}
