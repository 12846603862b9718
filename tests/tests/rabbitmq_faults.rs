//! RabbitMQ under failure. The restart test runs on a RabbitMQ node of its own (it stops and
//! starts it); the others use the machine's RabbitMQ, each in a vhost of its own.
//!
//! Checker: A = messages whose enqueue returned Ok, C = messages handled; A \ C must be empty.
//! Duplicates are counted and printed, not failed: delivery is at-least-once.

// Test helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use serde_json::json;
use topiq_adapter::{
    Adapter, ConsumeOptions, DeadLetters, Error, NewMessage, SubscriptionKey, SubscriptionSpec,
    TopicName, TopicSpec, TriggerName,
};
use topiq_rabbitmq::{QueueType, RabbitMqAdapter, RabbitMqConfig};
use topiq_testkit::{
    FaultProxy, Ledger, RabbitNode, RabbitVhost, handlers_survive_a_broker_restart,
    poison_message_with_a_thousand_behind, rabbitmq_adapter,
};

/// Declares `topic` with one trigger per name in `triggers`, each with `policy` applied.
async fn declared(
    adapter: &RabbitMqAdapter,
    topic: &str,
    triggers: &[&str],
    policy: impl Fn(&mut SubscriptionSpec),
) -> (TopicName, Vec<SubscriptionKey>) {
    let topic = TopicName::new(topic).expect("topic");
    adapter
        .declare_topic(TopicSpec::new(topic.clone()))
        .await
        .expect("declare topic");
    let mut keys = Vec::new();
    for trigger in triggers {
        let key = SubscriptionKey::new(topic.clone(), TriggerName::new(*trigger).expect("trigger"));
        let mut spec = SubscriptionSpec::new(key.clone());
        policy(&mut spec);
        adapter
            .declare_subscription(spec)
            .await
            .expect("declare trigger");
        keys.push(key);
    }
    (topic, keys)
}

const MESSAGES: usize = 20_000;
const PUBLISHERS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_when_rabbitmq_stops_and_starts_mid_stream() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("topiq_rabbitmq=debug"))
        .with_test_writer()
        .try_init();
    let node = RabbitNode::start();
    println!("node {}", node.url());
    let adapter = RabbitMqAdapter::connect(RabbitMqConfig {
        url: node.url(),
        publish_timeout: Duration::from_secs(2),
        reconnect_wait: Duration::from_secs(2),
        ..RabbitMqConfig::default()
    })
    .await
    .expect("connect");
    let (topic, keys) = declared(&adapter, "faults.restart", &["t"], |spec| {
        spec.visibility_timeout = Duration::from_secs(5);
        spec.max_attempts = 100;
    })
    .await;

    let ledger = Ledger::default();
    let consumer = ledger.consume(&adapter, &keys[0], 64);
    let publishers = ledger.publish_all(&adapter, &topic, MESSAGES, PUBLISHERS);

    let started = Instant::now();
    while ledger.next.load(Ordering::SeqCst) < MESSAGES / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "stop_app after {} publishes ({:?})",
        MESSAGES / 3,
        started.elapsed()
    );
    tokio::task::block_in_place(|| node.stop_app());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| node.start_app());
    println!("start_app done ({:?})", started.elapsed());
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let outcome = ledger.settle(Duration::from_secs(120)).await;
    println!("{outcome:?} ({:?})", started.elapsed());
    outcome.assert_nothing_lost(MESSAGES);
    consumer.abort();
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_aborted_mid_handler_has_its_message_delivered_again() {
    let (adapter, _vhost) = rabbitmq_adapter().await;
    let (topic, keys) = declared(&adapter, "faults.abort", &["t"], |_| {}).await;
    let id = adapter
        .publish(&topic, NewMessage::new(json!("in the middle")))
        .await
        .expect("publish")
        .message_id;
    let (got, in_handler) = (Arc::new(tokio::sync::Notify::new()), adapter.clone());
    let worker = {
        let (got, key) = (Arc::clone(&got), keys[0].clone());
        tokio::spawn(async move {
            let mut subscription = in_handler
                .consume(&key, ConsumeOptions::with_prefetch(1))
                .await
                .expect("consume");
            let _delivery = subscription.next().await;
            got.notify_one();
            // The handler never finishes: the task is aborted here.
            std::future::pending::<()>().await;
        })
    };
    got.notified().await;
    worker.abort();
    let _ = worker.await;
    let mut survivor = adapter
        .consume(&keys[0], ConsumeOptions::with_prefetch(1))
        .await
        .expect("consume");
    let again = tokio::time::timeout(Duration::from_secs(10), survivor.next())
        .await
        .expect("delivered again after the abort")
        .expect("open")
        .expect("ok");
    assert_eq!(again.envelope().id, id);
    assert_eq!(again.envelope().attempt, 2, "the aborted attempt counts");
    again.ack().await.expect("ack");
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_reaches_the_dlq_and_the_thousand_behind_it_are_handled() {
    let (adapter, _vhost) = rabbitmq_adapter().await;
    let (topic, keys) = declared(&adapter, "faults.poison", &["t"], |spec| {
        spec.max_attempts = 3
    })
    .await;
    poison_message_with_a_thousand_behind(&adapter, &topic, &keys[0]).await;
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_the_server_closes_does_not_stop_the_other_consumers() {
    let (adapter, vhost) = rabbitmq_adapter().await;
    let (topic, keys) = declared(&adapter, "faults.channel", &["a", "b"], |_| {}).await;
    let mut a = adapter
        .consume(&keys[0], ConsumeOptions::with_prefetch(8))
        .await
        .expect("consume a");
    let mut b = adapter
        .consume(&keys[1], ConsumeOptions::with_prefetch(8))
        .await
        .expect("consume b");
    // Another application's adapter on the same vhost declares a queue topiq owns with other
    // arguments: the broker refuses and closes that declaring channel.
    let other = RabbitMqAdapter::connect(RabbitMqConfig {
        url: vhost.url(),
        queue_type: QueueType::Classic,
        ..RabbitMqConfig::default()
    })
    .await
    .expect("connect");
    other
        .declare_topic(TopicSpec::new(topic.clone()))
        .await
        .expect("the DLQ stream has the same arguments");
    let err = other
        .declare_subscription(SubscriptionSpec::new(keys[0].clone()))
        .await
        .expect_err("a quorum queue redeclared as classic is refused");
    assert!(matches!(err, Error::Broker { .. }), "{err:?}");
    let message = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(
        message.contains("other arguments"),
        "the error says what to do: {message}"
    );
    // The refusing broker closed only that channel: both consumers and both adapters go on.
    other
        .publish(&topic, NewMessage::new(json!("after the refusal")))
        .await
        .expect("the other adapter still publishes");
    for subscription in [&mut a, &mut b] {
        let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("still consuming")
            .expect("open")
            .expect("ok");
        assert_eq!(
            delivery.envelope().data.as_ref(),
            &json!("after the refusal")
        );
        delivery.ack().await.expect("ack");
    }
    other.close().await.ok();
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_holds_across_processes_publishing_at_once() {
    let (first, vhost) = rabbitmq_adapter().await;
    let second = RabbitMqAdapter::connect(RabbitMqConfig {
        url: vhost.url(),
        ..RabbitMqConfig::default()
    })
    .await
    .expect("connect");
    let (topic, keys) = declared(&first, "faults.idem", &["t"], |_| {}).await;
    second
        .declare_topic(TopicSpec::new(topic.clone()))
        .await
        .expect("declare topic");
    second
        .declare_subscription(SubscriptionSpec::new(keys[0].clone()))
        .await
        .expect("declare trigger");
    // Eight publishes of one key, four from each adapter (each its own connection, as two
    // processes would be), all at once.
    let publishes = (0..8).map(|n| {
        let adapter = if n % 2 == 0 { &first } else { &second };
        adapter.publish(
            &topic,
            NewMessage::new(json!({"order": 42, "try": n})).idempotency_key("order-42"),
        )
    });
    let receipts: Vec<_> = futures::future::join_all(publishes)
        .await
        .into_iter()
        .map(|receipt| receipt.expect("publish"))
        .collect();
    let originals = receipts.iter().filter(|receipt| !receipt.duplicate).count();
    assert_eq!(
        originals, 1,
        "exactly one publish is the original: {receipts:?}"
    );
    let id = &receipts[0].message_id;
    assert!(
        receipts.iter().all(|receipt| &receipt.message_id == id),
        "every duplicate names the original's id: {receipts:?}"
    );
    let mut subscription = first
        .consume(&keys[0], ConsumeOptions::with_prefetch(8))
        .await
        .expect("consume");
    let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("the message is delivered")
        .expect("open")
        .expect("ok");
    assert_eq!(&delivery.envelope().id, id);
    delivery.ack().await.expect("ack");
    let again = tokio::time::timeout(Duration::from_secs(2), subscription.next()).await;
    assert!(again.is_err(), "published once only, got {again:?}");
    first.close().await.ok();
    second.close().await.ok();
}

/// An adapter on the machine's RabbitMQ, in `vhost`, reached through `proxy`.
async fn adapter_through(
    proxy: &FaultProxy,
    vhost: &RabbitVhost,
    publish_timeout: Duration,
) -> RabbitMqAdapter {
    let url = vhost
        .url()
        .replace("127.0.0.1:5672", &proxy.address().to_string());
    RabbitMqAdapter::connect(RabbitMqConfig {
        url,
        publish_timeout,
        reconnect_wait: Duration::from_secs(5),
        ..RabbitMqConfig::default()
    })
    .await
    .expect("connect through the proxy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consume_the_client_gave_up_on_leaves_no_consumer_behind_on_the_broker() {
    let vhost = RabbitVhost::create();
    let proxy = FaultProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let adapter = adapter_through(&proxy, &vhost, Duration::from_secs(1)).await;
    let (topic, keys) = declared(&adapter, "faults.slowconsume", &["t"], |spec| {
        spec.max_attempts = 100;
    })
    .await;
    let ledger = Ledger::default();
    for publisher in ledger.publish_all(&adapter, &topic, 40, 1) {
        publisher.await.expect("publisher");
    }
    // Each answer of the broker now takes 400 ms: opening a channel and setting its prefetch
    // take 800 ms, so `basic.consume` reaches the broker, and its answer comes after the
    // client's 1 s bound. Every try leaves a consumer on the broker unless the client closes
    // what it gave up on.
    proxy.set_latency(Duration::from_millis(400));
    let consumer = ledger.consume(&adapter, &keys[0], 8);
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.set_latency(Duration::ZERO);
    let outcome = ledger.settle(Duration::from_secs(30)).await;
    assert_eq!(
        outcome.lost, 0,
        "messages stranded on a consumer the client gave up on: {outcome:?}"
    );
    consumer.abort();
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_its_consumer_on_a_classic_queue_is_dead_lettered_after_its_attempts()
{
    let vhost = RabbitVhost::create();
    let adapter = RabbitMqAdapter::connect(RabbitMqConfig {
        url: vhost.url(),
        queue_type: QueueType::Classic,
        ..RabbitMqConfig::default()
    })
    .await
    .expect("connect");
    let (topic, keys) = declared(&adapter, "faults.crashloop", &["t"], |spec| {
        spec.max_attempts = 3;
        spec.visibility_timeout = Duration::from_secs(1);
    })
    .await;
    let id = adapter
        .publish(&topic, NewMessage::new(json!("kills its consumer")))
        .await
        .expect("publish")
        .message_id;
    // Each round is a process that takes the message and dies during its handler: the
    // delivery and the subscription vanish unsettled, and the channel's closing returns it.
    let mut starts = Vec::new();
    for _ in 0..6 {
        let mut subscription = adapter
            .consume(&keys[0], ConsumeOptions::with_prefetch(1))
            .await
            .expect("consume");
        match tokio::time::timeout(Duration::from_secs(5), subscription.next()).await {
            Ok(Some(Ok(delivery))) => {
                assert_eq!(delivery.envelope().id, id);
                starts.push(delivery.envelope().attempt);
                drop(delivery);
                drop(subscription);
            }
            _ => break,
        }
    }
    assert_eq!(starts, vec![1, 2, 3], "handler starts, by attempt");
    let deadline = Instant::now() + Duration::from_secs(10);
    while adapter.dlq_count(&topic, None).await.expect("dlq_count") != 1 {
        assert!(
            Instant::now() < deadline,
            "the crash loop never reached the DLQ"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_refuses_publishes_with_broker_full_and_loses_nothing_stored() {
    let node = RabbitNode::start();
    let adapter = RabbitMqAdapter::connect(RabbitMqConfig {
        url: node.url(),
        publish_timeout: Duration::from_secs(2),
        ..RabbitMqConfig::default()
    })
    .await
    .expect("connect");
    let (topic, keys) = declared(&adapter, "faults.alarm", &["t"], |_| {}).await;
    let mut accepted = std::collections::HashSet::new();
    for n in 0..20 {
        let receipt = adapter
            .publish(&topic, NewMessage::new(json!(n)))
            .await
            .expect("publish");
        accepted.insert(receipt.message_id.to_string());
    }
    // The node runs out of memory (as far as it knows): it blocks publishers.
    tokio::task::block_in_place(|| node.ctl(&["set_vm_memory_high_watermark", "absolute", "1"]));
    let mut refusals = 0;
    for n in 0..2 {
        let started = Instant::now();
        match adapter
            .publish(&topic, NewMessage::new(json!({"blocked": n})))
            .await
        {
            Err(err) => {
                println!("refused after {:?}: {err}", started.elapsed());
                assert!(
                    matches!(err, Error::BrokerFull { .. }),
                    "an alarm is a typed error: {err:?}"
                );
                assert!(started.elapsed() < Duration::from_secs(4), "it hung");
                refusals += 1;
            }
            Ok(receipt) => panic!("a blocked broker confirmed {}", receipt.message_id),
        }
    }
    assert_eq!(refusals, 2);
    tokio::task::block_in_place(|| node.ctl(&["set_vm_memory_high_watermark", "0.4"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        match adapter
            .publish(&topic, NewMessage::new(json!("after")))
            .await
        {
            Ok(receipt) => break receipt.message_id.to_string(),
            Err(err) => assert!(Instant::now() < deadline, "still refused: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    accepted.insert(after);
    let mut subscription = adapter
        .consume(&keys[0], ConsumeOptions::with_prefetch(32))
        .await
        .expect("consume");
    while !accepted.is_empty() {
        let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .unwrap_or_else(|_| panic!("{} accepted messages never came", accepted.len()))
            .expect("open")
            .expect("ok");
        // A publish refused while blocked may still be stored once the alarm clears (its
        // outcome was unknown): delivered, not counted.
        accepted.remove(&delivery.envelope().id.to_string());
        delivery.ack().await.expect("ack");
    }
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_while_handlers_run_strands_nothing() {
    let node = RabbitNode::start();
    let adapter = RabbitMqAdapter::connect(RabbitMqConfig {
        url: node.url(),
        publish_timeout: Duration::from_secs(2),
        reconnect_wait: Duration::from_secs(2),
        heartbeat: Duration::from_secs(2),
        ..RabbitMqConfig::default()
    })
    .await
    .expect("connect");
    let (topic, keys) = declared(&adapter, "faults.midhandler", &["t"], |spec| {
        spec.visibility_timeout = Duration::from_secs(3);
        spec.max_attempts = 100;
    })
    .await;
    handlers_survive_a_broker_restart(&adapter, &topic, &keys[0], || {
        node.stop_app();
        std::thread::sleep(Duration::from_secs(1));
        node.start_app();
    })
    .await;
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_to_a_deleted_trigger_queue_keeps_every_record_while_others_publish() {
    let (adapter, vhost) = rabbitmq_adapter().await;
    let (topic, keys) = declared(&adapter, "faults.redrivegone", &["t"], |spec| {
        spec.max_attempts = 1;
    })
    .await;
    let (busy, _) = declared(&adapter, "faults.busy", &["b"], |_| {}).await;
    let mut subscription = adapter
        .consume(&keys[0], ConsumeOptions::with_prefetch(8))
        .await
        .expect("consume");
    const RECORDS: u64 = 30;
    for n in 0..RECORDS {
        adapter
            .publish(&topic, NewMessage::new(json!(n)))
            .await
            .expect("publish");
        let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("delivered")
            .expect("open")
            .expect("ok");
        delivery
            .dead_letter(topiq_adapter::Failure::new(
                topiq_adapter::FailureKind::NonRetryable,
                "to the DLQ",
            ))
            .await
            .expect("dead_letter");
    }
    drop(subscription);
    assert_eq!(adapter.dlq_count(&topic, None).await.unwrap(), RECORDS);
    // The trigger's queue is deleted under the adapter (an operator error).
    delete_queue(&vhost, "topiq:t:faults.redrivegone:t").await;
    // Other publishes keep the adapter's publishing channel busy meanwhile.
    let ledger = Ledger::default();
    let publishers = ledger.publish_all(&adapter, &busy, 3_000, 16);
    for _ in 0..RECORDS {
        let redriven = adapter
            .dlq_redrive(&topic, None, topiq_adapter::DlqSelection::All)
            .await;
        assert!(
            redriven.is_err(),
            "a redrive to a deleted queue reported success: {redriven:?}"
        );
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    assert_eq!(
        adapter.dlq_count(&topic, None).await.unwrap(),
        RECORDS,
        "a record was removed although its redrive was returned"
    );
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_a_topic_whose_trigger_queue_was_deleted_fails_while_others_publish() {
    let (adapter, vhost) = rabbitmq_adapter().await;
    let (topic, _) = declared(&adapter, "faults.topicgone", &["t"], |_| {}).await;
    let (busy, _) = declared(&adapter, "faults.busy", &["b"], |_| {}).await;
    // The topic's only trigger queue is deleted under the adapter (an operator error): the
    // broker returns every publish to the topic as unroutable.
    delete_queue(&vhost, "topiq:t:faults.topicgone:t").await;
    // Other publishes share the adapter's publishing channel meanwhile, so the broker's
    // confirms cover several publishes at once.
    let ledger = Ledger::default();
    let publishers = ledger.publish_all(&adapter, &busy, 6_000, 16);
    let unroutable: Vec<_> = (0..8)
        .map(|_| {
            let (adapter, topic) = (adapter.clone(), topic.clone());
            tokio::spawn(async move {
                let mut reported_stored = 0;
                for n in 0..40 {
                    if adapter
                        .publish(&topic, NewMessage::new(json!(n)))
                        .await
                        .is_ok()
                    {
                        reported_stored += 1;
                    }
                }
                reported_stored
            })
        })
        .collect();
    let mut reported_stored = 0;
    for task in unroutable {
        reported_stored += task.await.expect("publisher");
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    assert_eq!(
        reported_stored, 0,
        "publishes that no queue took were reported stored"
    );
    assert_eq!(
        ledger.refused_count(),
        0,
        "a publish that a queue took was reported failed"
    );
    adapter.close().await.ok();
}

/// A batch whose messages go to two lanes, one of which lost its trigger queue: each message
/// is answered by its own fate (the confirms of a batch cover several messages at once, and a
/// return reaches whichever confirm lapin completes next), one batch at a time and four at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_message_by_its_own_fate_when_one_lane_lost_its_queue() {
    let (adapter, vhost) = rabbitmq_adapter().await;
    let topic = TopicName::new("faults.halfgone").expect("topic");
    let mut spec = TopicSpec::new(topic.clone());
    spec.lanes = 2;
    adapter.declare_topic(spec).await.expect("declare topic");
    let key = SubscriptionKey::new(topic.clone(), TriggerName::new("t").expect("trigger"));
    adapter
        .declare_subscription(SubscriptionSpec::new(key.clone()))
        .await
        .expect("declare trigger");
    // Lane 1's queue is deleted under the adapter: its messages come back unroutable.
    delete_queue(&vhost, "topiq:t:faults.halfgone:t:1").await;
    let mut stored = publish_half_returned_batches(&adapter, &topic, 1).await;
    stored += publish_half_returned_batches(&adapter, &topic, 4).await;
    let stats = adapter.stats(&key).await.expect("stats");
    assert_eq!(stats.waiting as usize, stored, "{stats:?}");
    adapter.close().await.ok();
}

/// Publishes 10 batches of 20 from each of `publishers` tasks at once, odd messages to lane 1
/// (whose queue is gone): checks each message's receipt and returns how many were stored.
async fn publish_half_returned_batches(
    adapter: &RabbitMqAdapter,
    topic: &TopicName,
    publishers: usize,
) -> usize {
    let tasks: Vec<_> = (0..publishers)
        .map(|_| {
            let (adapter, topic) = (adapter.clone(), topic.clone());
            tokio::spawn(async move {
                let mut stored = 0;
                for _ in 0..10 {
                    let messages = (0..20).map(|n| NewMessage::new(json!(n)).lane(n % 2));
                    let receipts = adapter
                        .publish_batch(&topic, messages.collect())
                        .await
                        .expect("publish_batch");
                    for (n, receipt) in receipts.iter().enumerate() {
                        assert_eq!(receipt.is_ok(), n % 2 == 0, "message {n}: {receipt:?}");
                    }
                    stored += receipts.len() / 2;
                }
                stored
            })
        })
        .collect();
    let mut stored = 0;
    for task in tasks {
        stored += task.await.expect("publisher");
    }
    stored
}

/// A publish given up on while its confirm is on the way (the caller's own timeout) leaves
/// the next publishes answered by their own fates: its confirm, or a return meant for another,
/// is not taken for theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_given_up_on_mid_flight_does_not_answer_the_next_ones() {
    let (adapter, vhost) = rabbitmq_adapter().await;
    let (stored, _) = declared(&adapter, "faults.kept", &["t"], |_| {}).await;
    let (gone, _) = declared(&adapter, "faults.gone", &["t"], |_| {}).await;
    delete_queue(&vhost, "topiq:t:faults.gone:t").await;
    let mut given_up_mid_flight = 0;
    for n in 0..200 {
        // Polled once and dropped, as a caller's timeout would: sent, when it took the
        // adapter's solo lane (free unless the last one given up on still holds it). A poll
        // slowed down long enough (a busy machine) may see its own confirm already: then it
        // is answered by its fate, stored, and was not given up on.
        let given_up = adapter
            .publish(&stored, NewMessage::new(json!(n)))
            .now_or_never();
        match given_up {
            None => given_up_mid_flight += 1,
            Some(answer) => assert!(answer.is_ok(), "publish {n} to a kept topic: {answer:?}"),
        }
        let returned = adapter.publish(&gone, NewMessage::new(json!(n))).await;
        assert!(
            returned.is_err(),
            "publish {n} to a topic no queue takes: {returned:?}"
        );
        let kept = adapter.publish(&stored, NewMessage::new(json!(n))).await;
        assert!(kept.is_ok(), "publish {n}: {kept:?}");
    }
    assert!(
        given_up_mid_flight >= 100,
        "only {given_up_mid_flight} of 200 publishes were given up on before their confirm"
    );
    adapter.close().await.ok();
}

/// A publish the broker answers by closing its channel (topiq's exchange was deleted under it:
/// 404) fails, and once the exchange is back the next publishes go out on channels opened
/// again: two publishes at a time, so the broker closes both of the adapter's publishing
/// channels (the solo lane's and the task's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_recover_after_the_broker_closes_a_publishing_channel() {
    let (adapter, vhost) = rabbitmq_adapter().await;
    let (topic, _) = declared(&adapter, "faults.reopen", &["t"], |_| {}).await;
    let raw = lapin::Connection::connect(&vhost.url(), lapin::ConnectionProperties::default())
        .await
        .expect("raw connection");
    let operator = raw.create_channel().await.expect("channel");
    for round in 0..3 {
        operator
            .exchange_delete(
                "topiq".into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await
            .expect("delete the exchange");
        // Two at once, so the broker closes both publishing channels.
        for refused in two_at_once(&adapter, &topic, round).await {
            assert!(
                refused.is_err(),
                "round {round}, deleted exchange: {refused:?}"
            );
        }
        operator
            .exchange_declare(
                "topiq".into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("declare the exchange again");
        operator
            .queue_bind(
                "topiq:t:faults.reopen:t".into(),
                "topiq".into(),
                "faults.reopen".into(),
                lapin::options::QueueBindOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("bind the trigger queue again");
        for n in 0..5 {
            for published in two_at_once(&adapter, &topic, n).await {
                assert!(
                    published.is_ok(),
                    "round {round}, publish {n}: {published:?}"
                );
            }
        }
    }
    adapter.close().await.ok();
}

/// Two publishes of `n` started together: the first takes the adapter's solo publishing
/// lane, the second goes through its publishing channel's task.
async fn two_at_once(
    adapter: &RabbitMqAdapter,
    topic: &TopicName,
    n: usize,
) -> [Result<topiq_adapter::PublishReceipt, Error>; 2] {
    let (first, second) = tokio::join!(
        adapter.publish(topic, NewMessage::new(json!(n))),
        adapter.publish(topic, NewMessage::new(json!(n))),
    );
    [first, second]
}

/// Deletes `queue` with a connection of the test's own, as an operator would.
async fn delete_queue(vhost: &RabbitVhost, queue: &str) {
    let raw = lapin::Connection::connect(&vhost.url(), lapin::ConnectionProperties::default())
        .await
        .expect("raw connection");
    raw.create_channel()
        .await
        .expect("channel")
        .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
        .await
        .expect("delete the queue");
}
