//! `modules::queue::JetStreamAdapter`: topiq on NATS JetStream (`async-nats`).
//!
//! | contract | JetStream |
//! |---|---|
//! | topic | stream `<PREFIX>_<topic with . as _>` (interest retention) capturing `<prefix>.t.<topic>` (fan-out) and `<prefix>.d.<topic>.*` (one trigger's own copies); `duplicate_window` = idempotency window, no `max_age` (retention is stamped on each message as `Topiq-Expires-At`: an expired one is dead-lettered as `expired` on receipt, never dropped); storage, replicas and `max_bytes` (discard `new`: a full stream refuses publishes) from the adapter's config or the topic's `streams` entry |
//! | trigger | two durable pull consumers: `m-<trigger>` filtering the fan-out subject (`DeliverPolicy::New`) and `d-<trigger>` filtering its own subject (nats-server 2.9 takes one filter per consumer); `AckPolicy::Explicit`, `ack_wait` = visibility timeout + 250 ms (the client's lease starts at receipt, so the server never redelivers while it holds), `max_deliver` and `max_ack_pending` unlimited (topiq counts attempts and bounds in-flight itself) |
//! | publish | `Nats-Msg-Id` = idempotency key or message id, awaits the `PubAck`; a publish without an answer is sent again with the same id, so it cannot duplicate, while one the server refused (a full stream) fails at once with its reason; a keyed publish first claims its key in the topic's ledger stream (`Nats-Expected-Last-Subject-Sequence: 0`, the whole message), so one key is one message for the window, delayed or not (`idempotency.rs`) |
//! | delay | the `<PREFIX>_DELAYED` work-queue stream; a `scheduler` consumer NAKs each message with its remaining delay (no polling) and forwards it when due, with `Nats-Msg-Id` = message id |
//! | consume | pulled inside the subscription's stream, ahead of demand within the free `prefetch` slots: pull requests (5 s expiry, 2 s idle heartbeat) share one reply subscription, a request reserves the slots of what it asks for, and more is asked once half the slots are free (as async-nats's `messages()` does); an expired request's `408` says how much of it was unfilled, freeing those slots; a refused pull (deleted consumer, `409`) gets or recreates the consumer, and 6 s without a message, status or heartbeat (a server restart, a stalled connection) starts over on a new reply subject |
//! | attempt | `Topiq-Attempt-Base` header + the server's delivery count; a lease that runs out on the last attempt is dead-lettered by the lease watcher, and a delivery past `max_attempts` that still arrives is dead-lettered on receipt |
//! | ack / nack / extend | `+ACK` / `-NAK` with the backoff delay / `+WPI`; the lease is tracked client-side, so a late settlement is refused |
//! | dead letter | the record is published to `<PREFIX>_<topic>_DLQ` (`<prefix>.dlq.<topic>.<trigger>`), its `PubAck` awaited, then the message is `+TERM`ed with a confirmed ack |
//! | release | a copy with the same attempt goes to the trigger's own subject (confirmed), then the original is acked |
//! | redrive | a copy with attempts reset goes to the trigger's own subject with a new `Nats-Msg-Id` (confirmed), then the DLQ record is deleted |

mod ack;
mod codec;
mod config;
mod connect;
mod consumer;
mod dlq;
mod idempotency;
mod layout;
mod publish;
mod read_ahead;
mod reply;
mod scheduler;
mod topology;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::{self};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use topiq_adapter::{
    Adapter, Capabilities, ConsumeOptions, DeadLetters, Error, MAX_LANES, NewMessage,
    PublishReceipt, Result, Subscription, SubscriptionKey, SubscriptionSpec, SubscriptionStats,
    TopicName, TopicSpec, TriggerName,
};

pub use config::{JetStreamConfig, Storage};
pub use topiq_adapter_kit::{AdapterOptions, ConnectionOptions, TlsSettings as TlsConfig};

use layout::Layout;
use topiq_adapter_kit::Declared;

/// The adapter's class name in `config.yaml`.
pub const CLASS_NAME: &str = "modules::queue::JetStreamAdapter";

/// Room left in `max_msg_size` for topiq's headers.
const HEADER_ROOM: usize = 4096;

/// nats-server's default `max_payload` (1 MiB).
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// What the adapter can honour, known before connecting: `max_message_bytes` assumes the
/// server's default `max_payload`; a connected adapter reports the server's own.
pub const CAPABILITIES: Capabilities = Capabilities {
    adapter: "JetStreamAdapter",
    durable: true,
    delayed_delivery: true,
    max_delay: None,
    retention: true,
    max_message_bytes: DEFAULT_MAX_PAYLOAD - HEADER_ROOM,
    max_lanes: MAX_LANES,
    read_ahead_counts_settling: false,
};

/// How long `health` waits for a flush of a connected client.
const HEALTH_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How often `health` looks at the client's connection state while its flush waits.
const HEALTH_STATE_POLL: Duration = Duration::from_millis(50);

/// How long `close` waits to flush what the client still buffers.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// topiq's JetStream adapter. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamAdapter {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) layout: Layout,
    pub(crate) config: JetStreamConfig,
    /// The topics and triggers this process declared.
    /// Declared topics, each shared: a publish looks its topic up and holds it, one
    /// reference count instead of copies of the topic's name and subject.
    declared: Declared<Arc<DeclaredTopic>>,
    /// Per topic: idempotency key → first message id, for as long as the window lasts (a
    /// stream keeping the last message per key subject; the KV API of current clients does
    /// not talk to nats-server 2.9).
    ledgers: RwLock<HashMap<TopicName, jetstream::stream::Stream<()>>>,
    pub(crate) closed: topiq_adapter_kit::Signal,
    scheduler: Mutex<Scheduler>,
    /// Releases of messages dropped subscriptions received but never handed out; `close`
    /// waits for them.
    pub(crate) releases: tokio_util::task::TaskTracker,
    /// Bounds how many due delayed messages are forwarded at once.
    pub(crate) forwards: Arc<tokio::sync::Semaphore>,
    /// Consumers deleted under topiq while it used them (`health` reports them until the
    /// process restarts: messages they held may be gone).
    lost_consumers: RwLock<Vec<String>>,
    max_payload: usize,
}

pub(crate) fn broker<E>(operation: &'static str) -> impl FnOnce(E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |err| Error::Broker {
        operation,
        source: Box::new(err),
    }
}

impl Shared {
    /// What the adapter can honour on this server (its `max_payload`).
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_message_bytes: self.max_payload.saturating_sub(HEADER_ROOM),
            ..CAPABILITIES
        }
    }

    /// Ok when the client is connected and the server takes a flush within 5 s. The flush is
    /// raced against the client's own state: a connection the client gives up on while the
    /// flush waits (a cut link fills the socket's buffer, so the flush hangs) is reported at
    /// once, not when the flush times out.
    async fn connected_and_flushed(&self) -> Result<()> {
        let not_connected = || Error::BrokerUnavailable {
            message: "not connected to the server (reconnecting)".into(),
            source: None,
        };
        let connected =
            || self.client.connection_state() == async_nats::connection::State::Connected;
        if !connected() {
            return Err(not_connected());
        }
        let deadline = tokio::time::Instant::now() + HEALTH_FLUSH_TIMEOUT;
        let flush = self.client.flush();
        tokio::pin!(flush);
        loop {
            tokio::select! {
                flushed = &mut flush => {
                    return flushed.map_err(|err| Error::BrokerUnavailable {
                        message: "the server does not answer".into(),
                        source: Some(Box::new(err)),
                    });
                }
                () = tokio::time::sleep(HEALTH_STATE_POLL) => {
                    if !connected() {
                        return Err(not_connected());
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::BrokerUnavailable {
                            message: format!(
                                "the server did not take a flush within {HEALTH_FLUSH_TIMEOUT:?}"
                            ),
                            source: None,
                        });
                    }
                }
            }
        }
    }

    pub(crate) fn ensure_open(&self) -> Result<()> {
        topiq_adapter_kit::ensure_open(&self.closed)
    }

    pub(crate) fn topic(&self, name: &TopicName) -> Result<TopicSpec> {
        self.ensure_open()?;
        self.declared_topic(name).map(|topic| topic.spec.clone())
    }

    fn declared_topic(&self, name: &TopicName) -> Result<Arc<DeclaredTopic>> {
        self.ensure_open()?;
        self.declared.topic(name)
    }

    /// Records (and logs) that `consumer` of `key` was deleted under topiq.
    pub(crate) fn report_lost_consumer(&self, key: &SubscriptionKey, consumer: &str) {
        tracing::error!(trigger = %key, consumer, "the trigger's consumer was deleted under topiq (by an operator, a bug, or a restart of a memory-storage server); on an interest stream the server removed with it the messages no other trigger still needed, which may include ones this trigger never handled; it is created again from its last known ack floor, and health reports the loss until the process restarts");
        let entry = format!("{key} ({consumer})");
        let mut lost = self
            .lost_consumers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !lost.contains(&entry) {
            lost.push(entry);
        }
    }

    /// The triggers of `topic` declared by this process.
    pub(crate) fn triggers_of(&self, topic: &TopicName) -> Vec<TriggerName> {
        self.declared.triggers_of(topic)
    }

    pub(crate) fn subscription(&self, key: &SubscriptionKey) -> Result<SubscriptionSpec> {
        self.ensure_open()?;
        self.declared.subscription(key)
    }

    /// Checks the target of a DLQ call: a declared topic, and trigger when one is named.
    pub(crate) fn check_dlq(&self, topic: &TopicName, trigger: Option<&TriggerName>) -> Result<()> {
        self.ensure_open()?;
        self.declared.check_dlq(topic, trigger)
    }
}

/// The delay scheduler's task and the delay stream's duplicate window.
#[derive(Default)]
struct Scheduler {
    task: Option<JoinHandle<()>>,
    duplicate_window: Duration,
}

/// A declared topic and the subject its publishes go to (built once, shared by every publish).
pub(crate) struct DeclaredTopic {
    spec: TopicSpec,
    subject: Subject,
}

impl Adapter for JetStreamAdapter {
    fn capabilities(&self) -> Capabilities {
        self.shared.capabilities()
    }

    async fn declare_topic(&self, spec: TopicSpec) -> Result<()> {
        self.shared.declare_topic(spec).await
    }

    async fn declare_subscription(&self, spec: SubscriptionSpec) -> Result<()> {
        self.shared.declare_subscription(spec).await
    }

    async fn publish(&self, topic: &TopicName, message: NewMessage) -> Result<PublishReceipt> {
        self.shared.publish_one(topic, message).await
    }

    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Result<PublishReceipt>>> {
        self.shared.publish_many(topic, messages).await
    }

    async fn publish_to(
        &self,
        key: &SubscriptionKey,
        message: NewMessage,
    ) -> Result<PublishReceipt> {
        self.shared.publish_to_trigger(key, message).await
    }

    async fn consume(
        &self,
        key: &SubscriptionKey,
        options: ConsumeOptions,
    ) -> Result<Subscription> {
        let spec = self.shared.subscription(key)?;
        options.validate()?;
        options.check_lane(&key.topic, self.shared.topic(&key.topic)?.lanes)?;
        Ok(consumer::subscribe(Arc::clone(&self.shared), spec, options))
    }

    async fn stats(&self, key: &SubscriptionKey) -> Result<SubscriptionStats> {
        let shared = &self.shared;
        shared.subscription(key)?;
        let mut stream = shared
            .js
            .get_stream_no_info(shared.layout.topic_stream(&key.topic))
            .await
            .map_err(broker("get stream"))?;
        let mut waiting = 0;
        let mut in_flight = 0;
        let lanes = shared.topic(&key.topic)?.lanes.max(1);
        let names = (0..lanes).flat_map(|lane| {
            [
                Layout::main_consumer(&key.trigger, lane),
                Layout::direct_consumer(&key.trigger, lane),
            ]
        });
        for name in names {
            let info = stream
                .consumer_info(&name)
                .await
                .map_err(broker("consumer info"))?;
            waiting += info.num_pending;
            in_flight += info.num_ack_pending as u64;
        }
        let delayed = dlq::subject_count(
            shared,
            &shared.layout.delay_stream(),
            &shared.layout.delay_subject(&key.topic),
        )
        .await?;
        let _ = &mut stream;
        Ok(SubscriptionStats {
            waiting: waiting + delayed,
            delayed,
            in_flight,
            dead_lettered: self.dlq_count(&key.topic, Some(&key.trigger)).await?,
        })
    }

    async fn health(&self) -> Result<()> {
        self.shared.ensure_open()?;
        let lost = self
            .shared
            .lost_consumers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if !lost.is_empty() {
            return Err(Error::Broker {
                operation: "health",
                source: format!(
                    "consumers were deleted under topiq: {}; messages they held may be lost (see the error log); restart topiq once checked",
                    lost.join(", ")
                )
                .into(),
            });
        }
        self.shared.connected_and_flushed().await
    }

    async fn close(&self) -> Result<()> {
        // What dropped subscriptions had not handed out goes back first (bounded).
        self.shared.releases.close();
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, self.shared.releases.wait()).await;
        self.shared.closed.cancel();
        if let Some(scheduler) = self.shared.scheduler.lock().await.task.take() {
            scheduler.abort();
        }
        // Bounded: with the server gone, a flush waits for a reconnection that may never come.
        match tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, self.shared.client.flush()).await {
            Ok(flushed) => flushed.map_err(broker("flush")),
            Err(_) => Err(Error::Timeout {
                operation: "flush at close",
                timeout: CLOSE_FLUSH_TIMEOUT,
            }),
        }
    }
}
