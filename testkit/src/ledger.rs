//! The at-least-once checker of the fault tests.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use topiq_adapter::{Adapter, ConsumeOptions, NewMessage, SubscriptionKey, TopicName};

/// The at-least-once checker of the fault tests, fed by [`Ledger::publish_all`] and
/// [`Ledger::consume`]: A = ids whose enqueue returned Ok, C = ids handled (acked);
/// lost = A \ C must be empty, duplicates (C counted twice) are allowed and reported.
#[derive(Clone, Default)]
pub struct Ledger {
    accepted: Arc<Mutex<Vec<String>>>,
    handled: Arc<Mutex<Vec<String>>>,
    refused: Arc<AtomicUsize>,
    /// The next message number to publish (publishers take numbers from it).
    pub next: Arc<AtomicUsize>,
}

/// What a [`Ledger`] found.
#[derive(Debug)]
pub struct Outcome {
    /// Publishes that returned Ok.
    pub accepted: usize,
    /// Publishes that failed (each with a transient error).
    pub refused: usize,
    /// Accepted messages never handled.
    pub lost: usize,
    /// Handlings beyond the first of a message.
    pub duplicates: usize,
}

impl Outcome {
    /// What every outage test asserts: no message whose enqueue returned Ok went unhandled,
    /// and more than half of the `published` enqueues succeeded despite the outage.
    ///
    /// # Panics
    ///
    /// When either does not hold.
    pub fn assert_nothing_lost(&self, published: usize) {
        assert_eq!(
            self.lost, 0,
            "messages whose enqueue returned Ok were never handled"
        );
        assert!(
            self.accepted > published / 2,
            "too few publishes succeeded: {self:?}"
        );
    }
}

impl Ledger {
    /// How many publishes failed so far.
    pub fn refused_count(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// How many handlings were recorded so far.
    pub fn handled_count(&self) -> usize {
        self.handled.lock().unwrap().len()
    }

    /// Publishes `total` messages `{"n": n}` to `topic` from `publishers` concurrent tasks;
    /// an error must be transient (an outage), never a wrong input.
    pub fn publish_all<A: Adapter + Clone>(
        &self,
        adapter: &A,
        topic: &TopicName,
        total: usize,
        publishers: usize,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..publishers)
            .map(|_| {
                let (ledger, adapter, topic) = (self.clone(), adapter.clone(), topic.clone());
                tokio::spawn(async move {
                    loop {
                        let n = ledger.next.fetch_add(1, Ordering::SeqCst);
                        if n >= total {
                            return;
                        }
                        let message = NewMessage::new(serde_json::json!({"n": n}));
                        match adapter.publish(&topic, message).await {
                            Ok(receipt) => ledger
                                .accepted
                                .lock()
                                .unwrap()
                                .push(receipt.message_id.to_string()),
                            Err(err) => {
                                assert!(
                                    err.is_transient(),
                                    "an outage error must be transient: {err}"
                                );
                                ledger.refused.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect()
    }

    /// Consumes `key` and acks every delivery, recording each acked id as handled.
    pub fn consume<A: Adapter + Clone>(
        &self,
        adapter: &A,
        key: &SubscriptionKey,
        prefetch: u32,
    ) -> tokio::task::JoinHandle<()> {
        let (ledger, adapter, key) = (self.clone(), adapter.clone(), key.clone());
        tokio::spawn(async move {
            let mut subscription = adapter
                .consume(&key, ConsumeOptions::with_prefetch(prefetch))
                .await
                .expect("consume");
            while let Some(delivery) = subscription.next().await {
                let Ok(delivery) = delivery else { continue };
                let id = delivery.envelope().id.to_string();
                if delivery.ack().await.is_ok() {
                    ledger.handled.lock().unwrap().push(id);
                }
            }
        })
    }

    /// Consumes `key` like a runtime whose handlers take `handler_time`: up to `prefetch`
    /// deliveries are handled at once, each acked when its handler ends (an ack that fails,
    /// say because the broker restarted meanwhile, leaves the message to come again).
    pub fn consume_slowly<A: Adapter + Clone>(
        &self,
        adapter: &A,
        key: &SubscriptionKey,
        prefetch: u32,
        handler_time: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let (ledger, adapter, key) = (self.clone(), adapter.clone(), key.clone());
        tokio::spawn(async move {
            let mut subscription = adapter
                .consume(&key, ConsumeOptions::with_prefetch(prefetch))
                .await
                .expect("consume");
            while let Some(delivery) = subscription.next().await {
                let Ok(delivery) = delivery else { continue };
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(handler_time).await;
                    let id = delivery.envelope().id.to_string();
                    if delivery.ack().await.is_ok() {
                        ledger.handled.lock().unwrap().push(id);
                    }
                });
            }
        })
    }

    /// Waits until a message is handled after `since` (consumption resumed) and says how long
    /// after `since` that was; `None` if nothing is handled within `within`.
    pub async fn resumed_after(&self, within: Duration) -> Option<Duration> {
        let since = Instant::now();
        let before = self.handled_count();
        while since.elapsed() < within {
            if self.handled_count() > before {
                return Some(since.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Waits up to `within` for every accepted message to be handled, then says what was
    /// found.
    pub async fn settle(&self, within: Duration) -> Outcome {
        let accepted: HashSet<String> = self.accepted.lock().unwrap().iter().cloned().collect();
        let deadline = Instant::now() + within;
        loop {
            let handled = self.handled.lock().unwrap().clone();
            let seen: HashSet<&String> = handled.iter().collect();
            let lost = accepted.iter().filter(|id| !seen.contains(id)).count();
            if lost == 0 || Instant::now() > deadline {
                return Outcome {
                    accepted: accepted.len(),
                    refused: self.refused.load(Ordering::SeqCst),
                    lost,
                    duplicates: handled.len() - seen.len(),
                };
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
