//! JetStream under failure, each test with its own nats-server it can kill.
//!
//! Checker: A = messages whose enqueue returned Ok, C = messages handled; A \ C must be empty.
//! Duplicates are counted and printed, not failed: delivery is at-least-once.

// Test helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use topiq_adapter::{
    Adapter, ConsumeOptions, DeadLetters, NewMessage, SubscriptionKey, SubscriptionSpec, TopicName,
    TopicSpec, TriggerName,
};
use topiq_jetstream::{JetStreamAdapter, JetStreamConfig};
use topiq_testkit::{
    Ledger, NatsServer, handlers_survive_a_broker_restart, jetstream_adapter,
    poison_message_with_a_thousand_behind,
};

/// Declares `topic` with one trigger `t` whose policy `policy` adjusts.
async fn declared(
    adapter: &JetStreamAdapter,
    topic: &str,
    policy: impl FnOnce(&mut SubscriptionSpec),
) -> (TopicName, SubscriptionKey) {
    let topic = TopicName::new(topic).expect("topic");
    let key = SubscriptionKey::new(topic.clone(), TriggerName::new("t").expect("trigger"));
    adapter
        .declare_topic(TopicSpec::new(topic.clone()))
        .await
        .expect("declare topic");
    let mut spec = SubscriptionSpec::new(key.clone());
    policy(&mut spec);
    adapter
        .declare_subscription(spec)
        .await
        .expect("declare trigger");
    (topic, key)
}

/// The next delivery of `subscription`, which must come within `within`; `what` says what
/// its absence would mean.
async fn delivered(
    subscription: &mut topiq_adapter::Subscription,
    within: Duration,
    what: &str,
) -> topiq_adapter::Delivery {
    tokio::time::timeout(within, subscription.next())
        .await
        .expect(what)
        .expect("open")
        .expect("ok")
}

const MESSAGES: usize = 20_000;
const PUBLISHERS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_when_the_server_is_killed_twice() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let mut server = NatsServer::start();
    println!("seed {seed}, server {}", server.url());
    let adapter = JetStreamAdapter::connect(JetStreamConfig {
        url: Some(server.url()),
        publish_timeout: Duration::from_secs(2),
        ..JetStreamConfig::default()
    })
    .await
    .expect("connect");
    let (topic, key) = declared(&adapter, "faults.kill", |spec| {
        spec.visibility_timeout = Duration::from_secs(5);
        spec.max_attempts = 100;
    })
    .await;

    let ledger = Ledger::default();
    let consumer = ledger.consume(&adapter, &key, 64);
    let publishers = ledger.publish_all(&adapter, &topic, MESSAGES, PUBLISHERS);

    // Kill the server twice mid-stream.
    let started = Instant::now();
    for kill_at in [MESSAGES / 4, MESSAGES * 3 / 5] {
        while ledger.next.load(std::sync::atomic::Ordering::SeqCst) < kill_at {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!(
            "SIGKILL after {} publishes ({:?})",
            kill_at,
            started.elapsed()
        );
        server.kill();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.restart();
        println!("restarted ({:?})", started.elapsed());
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let outcome = ledger.settle(Duration::from_secs(120)).await;
    println!("{outcome:?} ({:?})", started.elapsed());
    outcome.assert_nothing_lost(MESSAGES);
    consumer.abort();
    adapter.close().await.ok();
}

/// A paused trigger drops its subscription while its pulls may still be open: what the
/// server sends them then is released, not left to `ack_wait` (which spent an attempt).
/// Failed before the dropped puller kept its reply subscription until its last pull expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_on_their_way_to_a_dropped_consumer_go_to_the_next_at_once() {
    let server = NatsServer::start();
    let adapter = jetstream_adapter(&server).await;
    topiq_adapter::conformance::messages_on_their_way_to_a_dropped_consumer_go_to_the_next_at_once(
        adapter,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_reaches_the_dlq_and_the_thousand_behind_it_are_handled() {
    let server = NatsServer::start();
    let adapter = jetstream_adapter(&server).await;
    let (topic, key) = declared(&adapter, "faults.poison", |spec| spec.max_attempts = 3).await;
    poison_message_with_a_thousand_behind(&adapter, &topic, &key).await;
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_deleted_under_the_adapter_is_recreated() {
    let server = NatsServer::start();
    let adapter = jetstream_adapter(&server).await;
    let (topic, key) = declared(&adapter, "faults.deleted", |_| {}).await;
    let mut subscription = adapter
        .consume(&key, ConsumeOptions::with_prefetch(4))
        .await
        .expect("consume");
    adapter
        .publish(&topic, NewMessage::new(json!("before")))
        .await
        .expect("publish");
    let first = delivered(&mut subscription, Duration::from_secs(10), "delivered").await;
    first.ack().await.expect("ack");

    // An operator (or a bug) deletes the trigger's consumer.
    let client = async_nats::connect(server.url()).await.expect("raw client");
    let js = async_nats::jetstream::new(client);
    js.delete_consumer_from_stream("m-t", "topiq_faults_deleted")
        .await
        .expect("delete consumer");

    // The pull loop notices, recreates it, and consumption goes on. (A recreated fan-out
    // consumer starts at new messages, so publish after it is back.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut published = HashSet::new();
    loop {
        let receipt = adapter
            .publish(&topic, NewMessage::new(json!("after")))
            .await
            .expect("publish");
        published.insert(receipt.message_id);
        if let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_secs(3), subscription.next()).await
        {
            assert_eq!(*delivery.envelope().data, json!("after"));
            assert!(published.contains(&delivery.envelope().id));
            delivery.ack().await.expect("ack");
            break;
        }
        assert!(Instant::now() < deadline, "consumption did not resume");
    }
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_existing_stream_is_a_clear_error_and_is_left_alone() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.expect("raw client");
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "topiq_orders".into(),
        subjects: vec!["someone.else.orders".into()],
        ..Default::default()
    })
    .await
    .expect("a stream of another application");
    let adapter = jetstream_adapter(&server).await;
    let err = adapter
        .declare_topic(TopicSpec::new(TopicName::new("orders").expect("topic")))
        .await
        .expect_err("the name is taken");
    let text = err.to_string() + &format!("{err:?}");
    assert!(text.contains("topiq_orders"), "{text}");
    assert!(
        text.contains("prefix"),
        "the error says how to fix it: {text}"
    );
    let mut stream = js.get_stream("topiq_orders").await.expect("still there");
    let subjects = stream.info().await.expect("info").config.subjects.clone();
    assert_eq!(
        subjects,
        vec!["someone.else.orders".to_owned()],
        "left unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_consumer_gets_a_new_message_at_once_on_its_first_attempt() {
    let server = NatsServer::start();
    let adapter = jetstream_adapter(&server).await;
    let (topic, key) = declared(&adapter, "faults.idle", |spec| spec.max_attempts = 1).await;
    let mut subscription = adapter
        .consume(&key, ConsumeOptions::with_prefetch(8))
        .await
        .expect("consume");
    // Idle longer than any pull heartbeat would be.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let published = Instant::now();
    adapter
        .publish(&topic, NewMessage::new(json!("after a pause")))
        .await
        .expect("publish");
    let delivery = delivered(
        &mut subscription,
        Duration::from_secs(2),
        "delivered within 2s of the publish",
    )
    .await;
    println!("delivered {:?} after the publish", published.elapsed());
    assert_eq!(delivery.envelope().attempt, 1);
    delivery.ack().await.expect("ack");
    adapter.close().await.ok();
}

/// Pull requests expire after 5 s; their unfilled part must free their slots, or a consumer
/// that waited past an expiry could not ask for new messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_waiting_past_its_pull_expiry_gets_every_new_message_at_once() {
    let server = NatsServer::start();
    let adapter = jetstream_adapter(&server).await;
    let (topic, key) = declared(&adapter, "faults.expiry", |_| {}).await;
    let prefetch = 4;
    let mut subscription = adapter
        .consume(&key, ConsumeOptions::with_prefetch(prefetch))
        .await
        .expect("consume");
    // Waiting (and so pulling) through more than one request expiry.
    let waited = tokio::time::timeout(Duration::from_millis(6500), subscription.next()).await;
    assert!(waited.is_err(), "nothing was published, got {waited:?}");
    for n in 0..prefetch {
        adapter
            .publish(&topic, NewMessage::new(json!(n)))
            .await
            .expect("publish");
    }
    let mut deliveries = Vec::new();
    for _ in 0..prefetch {
        let delivery = delivered(
            &mut subscription,
            Duration::from_secs(2),
            "delivered within 2 s: the expired requests freed their slots",
        )
        .await;
        deliveries.push(delivery);
    }
    for delivery in deliveries {
        delivery.ack().await.expect("ack");
    }
    adapter.close().await.ok();
}

/// Stream settings per topic: a topic's entry in `streams` wins over the adapter's defaults,
/// and a full stream refuses a publish with the server's reason instead of dropping a stored
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_topic_stream_settings_apply_and_a_full_stream_refuses_publishes() {
    let server = NatsServer::start();
    let config: topiq_jetstream::JetStreamConfig = serde_json::from_value(json!({
        "url": server.url(),
        "prefix": "settings",
        "streams": {
            "settings.small": {"storage": "memory", "max_bytes": 4096}
        }
    }))
    .expect("config");
    let adapter = topiq_jetstream::JetStreamAdapter::connect(config)
        .await
        .expect("connect");
    let (small, key) = declared(&adapter, "settings.small", |_| {}).await;
    declared(&adapter, "settings.plain", |_| {}).await;

    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("raw"));
    let small_stream = js
        .get_stream("settings_settings_small")
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .config
        .clone();
    assert_eq!(
        small_stream.storage,
        async_nats::jetstream::stream::StorageType::Memory
    );
    assert_eq!(small_stream.max_bytes, 4096);
    assert_eq!(
        small_stream.discard,
        async_nats::jetstream::stream::DiscardPolicy::New
    );
    let plain_stream = js
        .get_stream("settings_settings_plain")
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .config
        .clone();
    assert_eq!(
        plain_stream.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert!(
        plain_stream.max_bytes <= 0,
        "unlimited, got {}",
        plain_stream.max_bytes
    );

    // ~200-byte messages: the 4 KiB stream is full after a few dozen.
    let mut accepted = 0;
    let refusal = loop {
        match adapter
            .publish(
                &small,
                NewMessage::new(json!({"n": accepted, "pad": "x".repeat(150)})),
            )
            .await
        {
            Ok(_) => accepted += 1,
            Err(err) => break err,
        }
        assert!(accepted < 1000, "a 4 KiB stream took {accepted} messages");
    };
    assert!(accepted > 0, "nothing fit");
    let mut text = refusal.to_string();
    let mut source = std::error::Error::source(&refusal);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    println!("accepted {accepted}, then: {text}");
    assert!(
        text.contains("refused") && text.contains("maximum bytes"),
        "the error names the cause: {text}"
    );
    // Every accepted message is still there, in order.
    let mut subscription = adapter
        .consume(&key, ConsumeOptions::with_prefetch(64))
        .await
        .expect("consume");
    for n in 0..accepted {
        let delivery = delivered(&mut subscription, Duration::from_secs(5), "delivered").await;
        assert_eq!(delivery.envelope().data["n"], json!(n));
        delivery.ack().await.expect("ack");
    }
    adapter.close().await.ok();
}

/// An adapter whose publishes give up after `publish_timeout` (three tries).
async fn quick_adapter(server: &NatsServer) -> JetStreamAdapter {
    JetStreamAdapter::connect(JetStreamConfig {
        url: Some(server.url()),
        publish_timeout: Duration::from_secs(1),
        ..JetStreamConfig::default()
    })
    .await
    .expect("connect")
}

/// A batch published while the server is down fails, every message, within about one
/// publish's bound (three `publish_timeout`s) of waiting for its acknowledgements: its waits
/// share one deadline and what is sent again is sent concurrently, not one message's bound
/// after another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_while_the_server_is_down_fails_within_one_publishs_bound() {
    let mut server = NatsServer::start();
    let adapter = quick_adapter(&server).await;
    let (topic, _) = declared(&adapter, "faults.batch", |_| {}).await;
    server.kill();
    let started = Instant::now();
    let batch = (0..20).map(|n| NewMessage::new(json!(n))).collect();
    let results = adapter.publish_batch(&topic, batch).await.expect("batch");
    let took = started.elapsed();
    assert!(
        results.iter().all(Result::is_err),
        "a message was acknowledged by a server that is down: {results:?}"
    );
    // One publish gives up after 3 s here; 20 of them one after another would take 60 s.
    assert!(
        took < Duration::from_secs(15),
        "a batch of 20 took {took:?} to fail"
    );
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_whose_key_cannot_be_recorded_fails_and_sends_nothing() {
    let server = NatsServer::start();
    let adapter = quick_adapter(&server).await;
    let (topic, key) = declared(&adapter, "faults.ledger", |_| {}).await;
    let mut subscription = adapter
        .consume(&key, ConsumeOptions::with_prefetch(4))
        .await
        .expect("consume");
    // The key's ledger is gone (an operator deleted it, or it cannot take writes).
    let client = async_nats::connect(server.url()).await.expect("raw client");
    let js = async_nats::jetstream::new(client);
    js.delete_stream("topiq_faults_ledger_IDEM")
        .await
        .expect("delete the ledger");
    let result = adapter
        .publish(&topic, NewMessage::new(json!("keyed")).idempotency_key("k"))
        .await;
    assert!(
        result.is_err(),
        "an enqueue whose key was not recorded reported success: {result:?}"
    );
    if let Ok(Some(delivery)) =
        tokio::time::timeout(Duration::from_secs(2), subscription.next()).await
    {
        panic!(
            "a failed enqueue was delivered: {:?}",
            delivery.map(|d| d.envelope().clone())
        );
    }
    adapter.close().await.ok();
}

/// A claim in the idempotency ledger that topiq did not write (its target is not a subject)
/// is refused, not published: async-nats no longer checks what topiq publishes to, and a
/// subject with a space in it would break the connection. Other publishes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_claim_whose_target_is_not_a_subject_is_refused_and_the_connection_lives() {
    let server = NatsServer::start();
    let adapter = quick_adapter(&server).await;
    let (topic, _) = declared(&adapter, "faults.badclaim", |_| {}).await;
    let client = async_nats::connect(server.url()).await.expect("raw client");
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        ("Topiq-Id", "0193a0c2-0000-7000-8000-00000000beef"),
        ("Topiq-Key-State", "claimed"),
        ("Topiq-Key-Target", "topiq.t.faults.badclaim reply.here"),
        ("Topiq-Key-Msg-Id", "0193a0c2-0000-7000-8000-00000000beef"),
    ] {
        headers.insert(name, value);
    }
    // The ledger entry of key "k" (hex-encoded in the subject).
    js.publish_with_headers("topiq.idem.faults.badclaim.6b", headers, "\"x\"".into())
        .await
        .expect("send")
        .await
        .expect("stored");
    let keyed = adapter
        .publish(&topic, NewMessage::new(json!(1)).idempotency_key("k"))
        .await;
    let refused = format!("{keyed:?}");
    assert!(refused.contains("not a subject"), "{refused}");
    for n in 0..3 {
        let plain = adapter.publish(&topic, NewMessage::new(json!(n))).await;
        assert!(
            plain.is_ok(),
            "publish {n} after the refused claim: {plain:?}"
        );
    }
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_first_publisher_died_after_its_claim_still_gets_its_message_once() {
    let server = NatsServer::start();
    let adapter = quick_adapter(&server).await;
    let (topic, key) = declared(&adapter, "faults.claim", |_| {}).await;
    let mut subscription = adapter
        .consume(&key, ConsumeOptions::with_prefetch(4))
        .await
        .expect("consume");
    // Another message waits on the topic, so its subject is not empty.
    let other = adapter
        .publish(&topic, NewMessage::new(json!("unrelated")))
        .await
        .expect("publish")
        .message_id;
    // A publisher claimed key "k" (the whole message, in the ledger, as a real claim is
    // written) and died before it published the message.
    let client = async_nats::connect(server.url()).await.expect("raw client");
    let js = async_nats::jetstream::new(client);
    let first_id = "0193a0c2-0000-7000-8000-00000000dead";
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        ("Nats-Msg-Id", format!("claim:{first_id}")),
        ("Topiq-Id", first_id.to_owned()),
        ("Topiq-Idempotency-Key", "k".to_owned()),
        (
            "Topiq-Enqueued-At",
            topiq_adapter::Timestamp::now().to_string(),
        ),
        ("Topiq-Key-State", "claimed".to_owned()),
        ("Topiq-Key-Target", "topiq.t.faults.claim".to_owned()),
        ("Topiq-Key-Msg-Id", first_id.to_owned()),
        ("Nats-Expected-Last-Subject-Sequence", "0".to_owned()),
    ] {
        headers.insert(name, value.as_str());
    }
    let ledger_subject = format!(
        "topiq.idem.faults.claim.{}",
        "k".bytes().map(|b| format!("{b:02x}")).collect::<String>()
    );
    js.publish_with_headers(ledger_subject, headers, "\"claimed, never sent\"".into())
        .await
        .expect("send")
        .await
        .expect("stored");

    let started = Instant::now();
    let receipt = adapter
        .publish(
            &topic,
            NewMessage::new(json!("second")).idempotency_key("k"),
        )
        .await
        .expect("publish");
    println!("took over after {:?}", started.elapsed());
    assert!(receipt.duplicate);
    assert_eq!(receipt.message_id.as_str(), first_id);
    let unrelated = delivered(&mut subscription, Duration::from_secs(10), "the other").await;
    assert_eq!(unrelated.envelope().id, other);
    unrelated.ack().await.expect("ack");
    let delivery = delivered(
        &mut subscription,
        Duration::from_secs(10),
        "the claimed message",
    )
    .await;
    assert_eq!(delivery.envelope().id.as_str(), first_id);
    assert_eq!(*delivery.envelope().data, json!("claimed, never sent"));
    delivery.ack().await.expect("ack");
    // Later publishes with the key are duplicates of it, and nothing more is delivered.
    let again = adapter
        .publish(&topic, NewMessage::new(json!("third")).idempotency_key("k"))
        .await
        .expect("publish");
    assert!(again.duplicate);
    assert_eq!(again.message_id.as_str(), first_id);
    if let Ok(Some(delivery)) =
        tokio::time::timeout(Duration::from_secs(2), subscription.next()).await
    {
        panic!(
            "delivered twice: {:?}",
            delivery.map(|d| d.envelope().clone())
        );
    }
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_whose_topic_is_gone_holds_up_no_other_and_is_dead_lettered() {
    let server = NatsServer::start();
    let adapter = quick_adapter(&server).await;
    let (gone, gone_key) = declared(&adapter, "faults.gone", |_| {}).await;
    let (live, live_key) = declared(&adapter, "faults.live", |_| {}).await;
    let mut stuck = Vec::new();
    for n in 0..3 {
        let receipt = adapter
            .publish(
                &gone,
                NewMessage::new(json!({"n": n})).delay(Duration::from_millis(500)),
            )
            .await
            .expect("publish delayed");
        stuck.push(receipt.message_id);
    }
    // The topic's message stream is deleted under the adapter (its DLQ stays).
    let client = async_nats::connect(server.url()).await.expect("raw client");
    let js = async_nats::jetstream::new(client);
    js.delete_stream("topiq_faults_gone")
        .await
        .expect("delete stream");
    tokio::time::sleep(Duration::from_millis(700)).await;

    let mut subscription = adapter
        .consume(&live_key, ConsumeOptions::with_prefetch(4))
        .await
        .expect("consume");
    let started = Instant::now();
    let id = adapter
        .publish(
            &live,
            NewMessage::new(json!("on time")).delay(Duration::from_millis(500)),
        )
        .await
        .expect("publish delayed")
        .message_id;
    let delivery = delivered(
        &mut subscription,
        Duration::from_secs(8),
        "another topic's delayed message waited behind the undeliverable ones",
    )
    .await;
    assert_eq!(delivery.envelope().id, id);
    println!("delivered after {:?}", started.elapsed());
    delivery.ack().await.expect("ack");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = adapter
            .dlq_list(topiq_adapter::DlqQuery::new(gone.clone()))
            .await
            .expect("dlq_list");
        if page.records.len() == stuck.len() {
            for record in &page.records {
                assert!(stuck.contains(&record.id), "{record:?}");
                assert_eq!(record.trigger, gone_key.trigger);
                assert_eq!(
                    record.error.kind,
                    topiq_adapter::FailureKind::Undeliverable,
                    "{record:?}"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the undeliverable messages never reached the DLQ: {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_at_once_with_broker_full_and_takes_publishes_again_when_space_returns()
 {
    let server = NatsServer::start();
    let config: JetStreamConfig = serde_json::from_value(json!({
        "url": server.url(),
        "publish_timeout": "2s",
        "streams": {"faults.full": {"max_bytes": 4096}}
    }))
    .expect("config");
    let adapter = JetStreamAdapter::connect(config).await.expect("connect");
    let (topic, key) = declared(&adapter, "faults.full", |_| {}).await;
    let mut accepted = Vec::new();
    let (refusal, took) = loop {
        let started = Instant::now();
        let message = NewMessage::new(json!({"n": accepted.len(), "pad": "x".repeat(150)}));
        match adapter.publish(&topic, message).await {
            Ok(receipt) => accepted.push(receipt.message_id),
            Err(err) => break (err, started.elapsed()),
        }
        assert!(
            accepted.len() < 1000,
            "a 4 KiB stream took {} messages",
            accepted.len()
        );
    };
    println!(
        "{} accepted, then refused after {took:?}: {refusal}",
        accepted.len()
    );
    assert!(
        matches!(refusal, topiq_adapter::Error::BrokerFull { .. }),
        "a full stream is a typed error: {refusal:?}"
    );
    assert_eq!(refusal.code(), "broker_full");
    assert!(refusal.is_transient());
    assert!(took < Duration::from_secs(2), "the refusal waited {took:?}");

    // Consuming frees room: the next publish is taken, and nothing stored was lost.
    let mut subscription = adapter
        .consume(&key, ConsumeOptions::with_prefetch(64))
        .await
        .expect("consume");
    for _ in 0..5 {
        let delivery = delivered(&mut subscription, Duration::from_secs(5), "delivered").await;
        assert_eq!(delivery.envelope().id, accepted.remove(0));
        delivery.ack().await.expect("ack");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        match adapter
            .publish(&topic, NewMessage::new(json!("after")))
            .await
        {
            Ok(receipt) => break receipt.message_id,
            Err(err) => assert!(Instant::now() < deadline, "still refused: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    accepted.push(after);
    for id in accepted {
        let delivery = delivered(&mut subscription, Duration::from_secs(5), "delivered").await;
        assert_eq!(delivery.envelope().id, id);
        delivery.ack().await.expect("ack");
    }
    adapter.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_while_handlers_run_strands_nothing() {
    let mut server = NatsServer::start();
    let adapter = JetStreamAdapter::connect(JetStreamConfig {
        url: Some(server.url()),
        publish_timeout: Duration::from_secs(2),
        heartbeat: Duration::from_secs(2),
        ..JetStreamConfig::default()
    })
    .await
    .expect("connect");
    let (topic, key) = declared(&adapter, "faults.midhandler", |spec| {
        spec.visibility_timeout = Duration::from_secs(3);
        spec.max_attempts = 100;
    })
    .await;
    handlers_survive_a_broker_restart(&adapter, &topic, &key, || {
        server.kill();
        std::thread::sleep(Duration::from_secs(1));
        server.restart();
    })
    .await;
    adapter.close().await.ok();
}

/// A trigger's consumers deleted under topiq while 20 messages wait (the first mid-handler):
/// what the server still stores for the trigger (here kept by a second trigger that has not
/// consumed yet) is all delivered, and the loss that cannot be ruled out (messages no other
/// trigger needed are removed with an interest stream's consumer) is reported by `health`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_deleted_with_messages_waiting_skips_none_of_them_and_is_reported() {
    let server = NatsServer::start();
    let adapter = quick_adapter(&server).await;
    let (topic, key) = declared(&adapter, "faults.deletedwaiting", |spec| {
        spec.max_attempts = 100;
    })
    .await;
    let keeper = SubscriptionKey::new(topic.clone(), TriggerName::new("keeper").unwrap());
    adapter
        .declare_subscription(SubscriptionSpec::new(keeper))
        .await
        .expect("declare the second trigger");
    let mut waiting = HashSet::new();
    for n in 0..20 {
        let receipt = adapter
            .publish(&topic, NewMessage::new(json!(n)))
            .await
            .expect("publish");
        waiting.insert(receipt.message_id);
    }
    let mut subscription = adapter
        .consume(&key, ConsumeOptions::with_prefetch(1))
        .await
        .expect("consume");
    let slow = delivered(&mut subscription, Duration::from_secs(10), "the first").await;
    adapter.health().await.expect("healthy before");
    // While the first handler runs, an operator (or a bug) deletes the trigger's consumers.
    let client = async_nats::connect(server.url()).await.expect("raw client");
    let js = async_nats::jetstream::new(client);
    for consumer in ["m-t", "d-t"] {
        js.delete_consumer_from_stream(consumer, "topiq_faults_deletedwaiting")
            .await
            .expect("delete consumer");
    }
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, subscription.next()).await {
            Ok(Some(Ok(delivery))) => {
                let id = delivery.envelope().id.clone();
                delivery.ack().await.expect("ack");
                waiting.remove(&id);
            }
            Ok(Some(Err(err))) => println!("subscription error: {err}"),
            _ => panic!("{} of 20 waiting messages were skipped", waiting.len()),
        }
    }
    let report = adapter
        .health()
        .await
        .expect_err("the deletion is reported");
    let text = format!("{report}: {:?}", std::error::Error::source(&report));
    assert!(text.contains("faults.deletedwaiting/t"), "{text}");
    adapter.close().await.ok();
}
