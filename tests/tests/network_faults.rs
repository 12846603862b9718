//! Bad links between topiq and each broker, through a TCP fault proxy of the test's own
//! (`FaultProxy`): every connection reset again and again, a link that stops answering
//! (the broker's bytes swallowed: its acks, answers and heartbeats lost while the connection
//! looks open), and latency. Each: the client notices a dead link, connects again, no enqueue
//! returns Ok without the broker's acknowledgement (checked by the `Ledger`: lost = 0).
//!
//! JetStream runs on a nats-server of the test's own, RabbitMQ in a vhost of its own on the
//! machine's broker. Real cuts (a blackhole route, a link set down) run against a nats-server
//! or a RabbitMQ node in a network namespace of the test's own (`IsolatedNats`,
//! `IsolatedRabbit`).

// Test helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use topiq_adapter::{
    Adapter, Error, NewMessage, SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec,
    TriggerName,
};
use topiq_jetstream::{JetStreamAdapter, JetStreamConfig};
use topiq_rabbitmq::{RabbitMqAdapter, RabbitMqConfig};
use topiq_testkit::{
    FaultProxy, IsolatedNats, IsolatedRabbit, Ledger, NatsServer, NetworkNamespace, RabbitVhost,
};

/// The heartbeat both adapters get here: a dead link is noticed within two of these.
const HEARTBEAT: Duration = Duration::from_secs(2);

async fn declared<A: Adapter>(adapter: &A, topic: &str) -> (TopicName, SubscriptionKey) {
    let topic = TopicName::new(topic).unwrap();
    adapter
        .declare_topic(TopicSpec::new(topic.clone()))
        .await
        .expect("declare topic");
    let key = SubscriptionKey::new(topic.clone(), TriggerName::new("t").unwrap());
    let mut spec = SubscriptionSpec::new(key.clone());
    spec.visibility_timeout = Duration::from_secs(5);
    spec.max_attempts = 100;
    adapter
        .declare_subscription(spec)
        .await
        .expect("declare trigger");
    (topic, key)
}

async fn jetstream(server: &NatsServer) -> (FaultProxy, JetStreamAdapter) {
    let target = server.url().trim_start_matches("nats://").parse().unwrap();
    let proxy = FaultProxy::start(target).await;
    let adapter = JetStreamAdapter::connect(JetStreamConfig {
        url: Some(format!("nats://{}", proxy.address())),
        publish_timeout: Duration::from_secs(2),
        heartbeat: HEARTBEAT,
        ..JetStreamConfig::default()
    })
    .await
    .expect("connect through the proxy");
    (proxy, adapter)
}

async fn rabbitmq(vhost: &RabbitVhost) -> (FaultProxy, RabbitMqAdapter) {
    let proxy = FaultProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let adapter = RabbitMqAdapter::connect(RabbitMqConfig {
        url: vhost
            .url()
            .replace("127.0.0.1:5672", &proxy.address().to_string()),
        publish_timeout: Duration::from_secs(2),
        reconnect_wait: Duration::from_secs(2),
        heartbeat: HEARTBEAT,
        ..RabbitMqConfig::default()
    })
    .await
    .expect("connect through the proxy");
    (proxy, adapter)
}

/// 2,000 messages published and consumed while every connection is reset each second.
async fn resets_lose_nothing<A: Adapter + Clone>(adapter: A, proxy: FaultProxy) {
    const MESSAGES: usize = 2_000;
    let (topic, key) = declared(&adapter, "net.resets").await;
    let ledger = Ledger::default();
    let consumer = ledger.consume(&adapter, &key, 16);
    let publishers = ledger.publish_all(&adapter, &topic, MESSAGES, 16);
    let started = Instant::now();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.reset_all();
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let outcome = ledger.settle(Duration::from_secs(90)).await;
    println!(
        "{outcome:?} after {:?}, {} connections",
        started.elapsed(),
        proxy.connections_accepted()
    );
    outcome.assert_nothing_lost(MESSAGES);
    consumer.abort();
    adapter.close().await.ok();
}

/// The link stops answering mid-stream (the broker's bytes are swallowed): the client gives
/// up on it within two heartbeats and connects again; nothing accepted is lost.
async fn a_silent_link_is_noticed_and_replaced<A: Adapter + Clone>(adapter: A, proxy: FaultProxy) {
    const MESSAGES: usize = 1_000;
    let (topic, key) = declared(&adapter, "net.silent").await;
    let ledger = Ledger::default();
    let consumer = ledger.consume(&adapter, &key, 16);
    let publishers = ledger.publish_all(&adapter, &topic, MESSAGES, 4);
    while ledger.handled_count() < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = proxy.connections_accepted();
    proxy.swallow_broker_to_client(true);
    let silent_since = Instant::now();
    while proxy.connections_accepted() == before {
        assert!(
            silent_since.elapsed() < HEARTBEAT * 5,
            "the client did not notice the dead link"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let noticed = silent_since.elapsed();
    proxy.swallow_broker_to_client(false);
    println!("dead link noticed after {noticed:?} (heartbeat {HEARTBEAT:?})");
    // Two heartbeats, and a second of slack for this shared machine's scheduling.
    assert!(
        noticed <= HEARTBEAT * 2 + Duration::from_secs(1),
        "the dead link went unnoticed for {noticed:?}"
    );
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let outcome = ledger.settle(Duration::from_secs(90)).await;
    println!("{outcome:?}");
    outcome.assert_nothing_lost(MESSAGES);
    consumer.abort();
    adapter.close().await.ok();
}

/// 300 ms added to every answer of the broker: slower, nothing lost.
async fn latency_loses_nothing<A: Adapter + Clone>(adapter: A, proxy: FaultProxy) {
    const MESSAGES: usize = 300;
    let (topic, key) = declared(&adapter, "net.latency").await;
    proxy.set_latency(Duration::from_millis(300));
    let ledger = Ledger::default();
    let consumer = ledger.consume(&adapter, &key, 16);
    let publishers = ledger.publish_all(&adapter, &topic, MESSAGES, 16);
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let outcome = ledger.settle(Duration::from_secs(90)).await;
    println!("{outcome:?}");
    outcome.assert_nothing_lost(MESSAGES);
    consumer.abort();
    adapter.close().await.ok();
}

macro_rules! on_both_brokers {
    ($($scenario:ident),* $(,)?) => {
        mod jetstream {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let server = super::NatsServer::start();
                    let (proxy, adapter) = super::jetstream(&server).await;
                    super::$scenario(adapter, proxy).await;
                }
            )*
        }
        mod rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let vhost = super::RabbitVhost::create();
                    let (proxy, adapter) = super::rabbitmq(&vhost).await;
                    super::$scenario(adapter, proxy).await;
                }
            )*
        }
    };
}

on_both_brokers!(
    resets_lose_nothing,
    a_silent_link_is_noticed_and_replaced,
    latency_loses_nothing,
);

/// Publishes whose confirms never come (the broker's bytes swallowed, the heartbeat too slow
/// to notice first) fail with `Timeout` once `publish_timeout` has passed, not before and not
/// much after (the adapter's deadlines tick every tenth of it): three at once, so one takes
/// the solo lane and two go through the publishing channel's task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_publishes_without_a_confirm_time_out_at_publish_timeout() {
    const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
    let vhost = RabbitVhost::create();
    let proxy = FaultProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let adapter = RabbitMqAdapter::connect(RabbitMqConfig {
        url: vhost
            .url()
            .replace("127.0.0.1:5672", &proxy.address().to_string()),
        publish_timeout: PUBLISH_TIMEOUT,
        heartbeat: Duration::from_secs(60),
        ..RabbitMqConfig::default()
    })
    .await
    .expect("connect through the proxy");
    let (topic, _) = declared(&adapter, "net.unconfirmed").await;
    proxy.swallow_broker_to_client(true);
    let started = Instant::now();
    let publish = |n: u64| adapter.publish(&topic, NewMessage::new(serde_json::json!(n)));
    let outcomes = futures::future::join_all((0..3).map(publish)).await;
    let waited = started.elapsed();
    for outcome in outcomes {
        assert!(
            matches!(outcome, Err(Error::Timeout { .. })),
            "a publish with no confirm: {outcome:?}"
        );
    }
    // A tick (a tenth of the timeout) late at most, and slack for this shared machine.
    assert!(
        waited >= PUBLISH_TIMEOUT && waited < PUBLISH_TIMEOUT * 2,
        "the publishes failed after {waited:?}, against a publish_timeout of {PUBLISH_TIMEOUT:?}"
    );
    // The link is broken for good (bytes lost mid-frame): cut. Closing the adapter as the
    // connection dies ends within its bounds (lapin's close, sent just before its I/O loop
    // stopped, once waited forever here: the fresh-clone CI hung on it).
    proxy.reset_all();
    let closing = tokio::time::timeout(PUBLISH_TIMEOUT * 5, adapter.close()).await;
    assert!(
        closing.is_ok(),
        "closing the adapter on a dead connection hung"
    );
}

/// A real network cut to a server in a namespace of the test's own (`cut` makes it, `heal`
/// undoes it) while messages flow: the client notices within two heartbeats (its health says
/// it is disconnected), connects again once the network is back, and loses nothing accepted.
async fn a_network_cut_is_noticed_and_survived<A: Adapter + Clone>(
    adapter: A,
    network: &NetworkNamespace,
    cut: impl Fn(&NetworkNamespace),
    heal: impl Fn(&NetworkNamespace),
) {
    const MESSAGES: usize = 1_000;
    let (topic, key) = declared(&adapter, "net.cut").await;
    let ledger = Ledger::default();
    let consumer = ledger.consume(&adapter, &key, 16);
    let publishers = ledger.publish_all(&adapter, &topic, MESSAGES, 4);
    while ledger.handled_count() < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cut(network);
    let cut_at = Instant::now();
    while adapter.health().await.is_ok() {
        assert!(
            cut_at.elapsed() < HEARTBEAT * 5,
            "the cut was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let noticed = cut_at.elapsed();
    println!("cut noticed after {noticed:?} (heartbeat {HEARTBEAT:?})");
    assert!(
        noticed <= HEARTBEAT * 2 + Duration::from_secs(1),
        "the cut went unnoticed for {noticed:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    heal(network);
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let outcome = ledger.settle(Duration::from_secs(90)).await;
    println!("{outcome:?}");
    outcome.assert_nothing_lost(MESSAGES);
    consumer.abort();
    adapter.close().await.ok();
}

async fn isolated_jetstream(server: &IsolatedNats) -> JetStreamAdapter {
    JetStreamAdapter::connect(JetStreamConfig {
        url: Some(server.url()),
        publish_timeout: Duration::from_secs(2),
        heartbeat: HEARTBEAT,
        ..JetStreamConfig::default()
    })
    .await
    .expect("connect to the namespace's server")
}

async fn isolated_rabbitmq(node: &IsolatedRabbit) -> RabbitMqAdapter {
    RabbitMqAdapter::connect(RabbitMqConfig {
        url: node.url(),
        publish_timeout: Duration::from_secs(2),
        heartbeat: HEARTBEAT,
        ..RabbitMqConfig::default()
    })
    .await
    .expect("connect to the namespace's node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_a_blackhole_route_half_opening_the_connection_is_survived() {
    let server = IsolatedNats::start();
    let adapter = isolated_jetstream(&server).await;
    a_network_cut_is_noticed_and_survived(
        adapter,
        server.network(),
        |net| net.blackhole(true),
        |net| net.blackhole(false),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_a_link_set_down_is_survived() {
    let server = IsolatedNats::start();
    let adapter = isolated_jetstream(&server).await;
    a_network_cut_is_noticed_and_survived(
        adapter,
        server.network(),
        |net| net.link(false),
        |net| net.link(true),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_blackhole_route_half_opening_the_connection_is_survived() {
    let node = IsolatedRabbit::start();
    let adapter = isolated_rabbitmq(&node).await;
    a_network_cut_is_noticed_and_survived(
        adapter,
        node.network(),
        |net| net.blackhole(true),
        |net| net.blackhole(false),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_link_set_down_is_survived() {
    let node = IsolatedRabbit::start();
    let adapter = isolated_rabbitmq(&node).await;
    a_network_cut_is_noticed_and_survived(
        adapter,
        node.network(),
        |net| net.link(false),
        |net| net.link(true),
    )
    .await;
}
