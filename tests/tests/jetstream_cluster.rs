//! topiq on a 3-node JetStream cluster (started from `deploy/nats-cluster/node.conf`): R3
//! streams created through topiq, and no acknowledged message lost when the stream's leader
//! is SIGKILLed mid-stream and restarted later.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use topiq_adapter::{
    Adapter, SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec, TriggerName,
};
use topiq_jetstream::{JetStreamAdapter, JetStreamConfig};
use topiq_testkit::{Ledger, NatsCluster};

const MESSAGES: usize = 20_000;
const PUBLISHERS: usize = 8;

/// The stream's cluster leader and how many replicas it has (leader included).
async fn leader_of(js: &async_nats::jetstream::Context, stream: &str) -> (String, usize) {
    let mut handle = js.get_stream(stream).await.expect("the stream exists");
    let info = handle.info().await.expect("stream info");
    let cluster = info.cluster.clone().expect("a clustered stream");
    (
        cluster.leader.expect("a leader"),
        cluster.replicas.len() + 1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_when_the_stream_leader_is_killed() {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    println!("cluster: {urls:?}");
    let adapter = JetStreamAdapter::connect(JetStreamConfig {
        urls: urls.clone(),
        replicas: 3,
        // As deploy/nats-cluster/config.nats-cluster.yaml: an enqueue waits up to 15 s.
        publish_timeout: Duration::from_secs(5),
        ..JetStreamConfig::default()
    })
    .await
    .expect("connect to the cluster");
    let topic = TopicName::new("failover.orders").unwrap();
    let key = SubscriptionKey::new(topic.clone(), TriggerName::new("t").unwrap());
    // A fresh cluster may take a moment to elect its meta leader: retry the first declare.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(err) = adapter.declare_topic(TopicSpec::new(topic.clone())).await {
        assert!(
            Instant::now() < deadline,
            "cannot declare on the cluster: {err}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut spec = SubscriptionSpec::new(key.clone());
    spec.visibility_timeout = Duration::from_secs(5);
    spec.max_attempts = 100;
    adapter
        .declare_subscription(spec)
        .await
        .expect("declare trigger");

    let servers: Vec<async_nats::ServerAddr> =
        urls.iter().map(|url| url.parse().unwrap()).collect();
    let client = async_nats::connect(servers).await.expect("raw client");
    let js = async_nats::jetstream::new(client);
    let stream = "topiq_failover_orders";
    let (leader, replicas) = leader_of(&js, stream).await;
    assert_eq!(replicas, 3, "topiq created the stream with 3 replicas");
    println!("stream {stream}: leader {leader}, {replicas} replicas");

    let ledger = Ledger::default();
    let consumer = ledger.consume(&adapter, &key, 64);
    let publishers = ledger.publish_all(&adapter, &topic, MESSAGES, PUBLISHERS);

    // The longest time no message was handled, while messages were waiting.
    let started = Instant::now();
    let longest_pause_ms = Arc::new(AtomicU64::new(0));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (ledger, longest, watching) = (
            ledger.clone(),
            Arc::clone(&longest_pause_ms),
            Arc::clone(&watching),
        );
        tokio::spawn(async move {
            let (mut last_count, mut last_change) = (0, Instant::now());
            while watching.load(Ordering::SeqCst) {
                let count = ledger.handled_count();
                if count != last_count {
                    let pause = last_change.elapsed().as_millis() as u64;
                    longest.fetch_max(pause, Ordering::SeqCst);
                    (last_count, last_change) = (count, Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    while ledger.next.load(Ordering::SeqCst) < MESSAGES / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let handled_at_kill = ledger.handled_count();
    println!(
        "SIGKILL {leader} after {} publishes ({:?})",
        MESSAGES / 4,
        started.elapsed()
    );
    cluster.kill(&leader);
    // The remaining nodes elect a new stream leader (followers wait 4-9 s before they try);
    // the node stays down a little longer, while messages flow through the new leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        if let Ok(mut handle) = js.get_stream(stream).await
            && let Ok(info) = handle.info().await
            && let Some(elected) = info.cluster.clone().and_then(|cluster| cluster.leader)
            && elected != leader
        {
            break elected;
        }
        assert!(Instant::now() < deadline, "no new leader within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("new leader {new_leader} ({:?})", started.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let handled_while_down = ledger.handled_count() - handled_at_kill;
    println!(
        "{handled_while_down} handled while {leader} was down ({:?})",
        started.elapsed()
    );
    cluster.restart(&leader);
    println!("{leader} restarted ({:?})", started.elapsed());

    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let outcome = ledger.settle(Duration::from_secs(120)).await;
    watching.store(false, Ordering::SeqCst);
    watcher.await.unwrap();
    println!(
        "{outcome:?}; longest pause in consumption {} ms ({:?})",
        longest_pause_ms.load(Ordering::SeqCst),
        started.elapsed()
    );
    outcome.assert_nothing_lost(MESSAGES);
    assert!(
        handled_while_down > 0,
        "consumption stopped while one node of three was down"
    );
    consumer.abort();
    adapter.close().await.ok();
}
