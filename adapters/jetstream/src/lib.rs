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

mod codec;
mod config;
mod consumer;
mod dlq;
mod idempotency;
mod layout;
mod scheduler;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, consumer::pull, stream};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use topiq_adapter::{
    Adapter, Capabilities, ConsumeOptions, DlqPage, DlqQuery, DlqSelection, Error, MessageId,
    NewMessage, PublishReceipt, Result, Subscription, SubscriptionKey, SubscriptionSpec,
    SubscriptionStats, Timestamp, TopicName, TopicSpec, TriggerName,
};

pub use config::{JetStreamConfig, Storage, TlsConfig};

use codec::{Metadata, Stamp};
use layout::{Layout, header};

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
};

/// A publish is sent again (same id) until this many acknowledgement timeouts have passed.
const PUBLISH_TRIES: u32 = 3;

/// How long a publish answered by no stream (no responders) is retried: a cluster elects a
/// stream's new leader within this.
const NO_RESPONDERS_RETRY: Duration = Duration::from_secs(12);

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
    topics: RwLock<HashMap<TopicName, DeclaredTopic>>,
    /// Per topic: idempotency key → first message id, for as long as the window lasts (a
    /// stream keeping the last message per key subject; the KV API of current clients does
    /// not talk to nats-server 2.9).
    ledgers: RwLock<HashMap<TopicName, jetstream::stream::Stream<()>>>,
    subscriptions: RwLock<HashMap<SubscriptionKey, SubscriptionSpec>>,
    pub(crate) closed: tokio_util::sync::CancellationToken,
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

impl JetStreamAdapter {
    /// Connects to the server(s) of `config`.
    pub async fn connect(config: JetStreamConfig) -> Result<Self> {
        config.validate().map_err(|reason| Error::InvalidArgument {
            argument: "config",
            reason,
        })?;
        let (servers, url_credentials) = config.servers();
        // async-nats reconnects after two unanswered pings: pinging every half heartbeat
        // notices a connection that stopped answering within about two heartbeats.
        let mut options = async_nats::ConnectOptions::new()
            .ping_interval((config.heartbeat / 2).max(Duration::from_millis(100)));
        let configured = config.user.is_some() || config.token.is_some();
        match url_credentials {
            Some(config::UrlCredentials::UserPassword(user, password)) if !configured => {
                options = options.user_and_password(user, password);
            }
            Some(config::UrlCredentials::Token(token)) if !configured => {
                options = options.token(token);
            }
            _ => {}
        }
        if let Some(name) = &config.name {
            options = options.name(name);
        }
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if let Some(seed) = &config.nkey {
            options = options.nkey(seed.clone());
        }
        if let Some(path) = &config.creds_file {
            options =
                options
                    .credentials_file(path)
                    .await
                    .map_err(|err| Error::InvalidArgument {
                        argument: "creds_file",
                        reason: format!("cannot read {}: {err}", path.display()),
                    })?;
        }
        if let Some(tls) = &config.tls {
            options = options.require_tls(true);
            if let Some(ca) = &tls.ca {
                options = options.add_root_certificates(ca.clone());
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let printable: Vec<String> = servers.iter().map(|url| config::redact_url(url)).collect();
        let client =
            options
                .connect(servers.as_slice())
                .await
                .map_err(|err| Error::BrokerUnavailable {
                    message: format!("cannot connect to {}", printable.join(", ")),
                    source: Some(Box::new(err)),
                })?;
        let max_payload = client.server_info().max_payload;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .ack_timeout(config.publish_timeout)
            .build(client.clone());
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                js,
                layout: Layout::new(&config.prefix),
                config,
                topics: RwLock::new(HashMap::new()),
                ledgers: RwLock::new(HashMap::new()),
                subscriptions: RwLock::new(HashMap::new()),
                closed: tokio_util::sync::CancellationToken::new(),
                scheduler: Mutex::new(Scheduler::default()),
                lost_consumers: RwLock::new(Vec::new()),
                releases: tokio_util::task::TaskTracker::new(),
                forwards: Arc::new(tokio::sync::Semaphore::new(scheduler::FORWARDS)),
                max_payload,
            }),
        })
    }
}

/// When a retention that starts at `from` runs out (`None`: kept until handled).
pub(crate) fn retention_end(retention: Option<Duration>, from: Timestamp) -> Option<Timestamp> {
    let retention = retention?;
    Some(from.checked_add(retention).unwrap_or(Timestamp::MAX))
}

/// A stream's byte limit with "unlimited" in one spelling (the server answers -1 for 0).
fn unlimited_as_negative(max_bytes: i64) -> i64 {
    if max_bytes <= 0 { -1 } else { max_bytes }
}

/// How much longer than a delivery's lease the server waits for its ack: the client's lease
/// starts when it receives the message, a little after the server sent it.
pub(crate) const ACK_WAIT_MARGIN: Duration = Duration::from_millis(250);

impl Shared {
    pub(crate) fn ensure_open(&self) -> Result<()> {
        if self.closed.is_cancelled() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    pub(crate) fn topic(&self, name: &TopicName) -> Result<TopicSpec> {
        self.ensure_open()?;
        self.declared_topic(name).map(|topic| topic.spec)
    }

    fn declared_topic(&self, name: &TopicName) -> Result<DeclaredTopic> {
        self.ensure_open()?;
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic {
                topic: name.clone(),
            })
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
        self.subscriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .filter(|key| &key.topic == topic)
            .map(|key| key.trigger.clone())
            .collect()
    }

    pub(crate) fn subscription(&self, key: &SubscriptionKey) -> Result<SubscriptionSpec> {
        self.ensure_open()?;
        self.subscriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
            .ok_or_else(|| Error::UnknownSubscription { key: key.clone() })
    }

    /// Creates the stream, or checks an existing one: subjects, storage and retention must
    /// match; limits are updated.
    async fn ensure_stream(&self, wanted: stream::Config) -> Result<()> {
        match self.js.get_stream(&wanted.name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(broker("stream info"))?
                    .clone();
                let current = info.config;
                let mut subjects = current.subjects.clone();
                let mut wanted_subjects = wanted.subjects.clone();
                subjects.sort();
                wanted_subjects.sort();
                if subjects != wanted_subjects
                    || current.retention != wanted.retention
                    || current.storage != wanted.storage
                {
                    return Err(Error::Broker {
                        operation: "declare stream",
                        source: format!(
                            "stream {} exists with other settings (subjects {:?}, retention {:?}, storage {:?}; topiq needs {:?}, {:?}, {:?}); it belongs to another topic or application: change `prefix`, or delete the stream",
                            wanted.name,
                            current.subjects,
                            current.retention,
                            current.storage,
                            wanted.subjects,
                            wanted.retention,
                            wanted.storage
                        )
                        .into(),
                    });
                }
                let changed = current.max_age != wanted.max_age
                    || current.duplicate_window != wanted.duplicate_window
                    || current.max_message_size != wanted.max_message_size
                    || current.num_replicas != wanted.num_replicas
                    || unlimited_as_negative(current.max_bytes)
                        != unlimited_as_negative(wanted.max_bytes)
                    || current.discard != wanted.discard;
                if changed {
                    let updated = stream::Config {
                        max_age: wanted.max_age,
                        duplicate_window: wanted.duplicate_window,
                        max_message_size: wanted.max_message_size,
                        num_replicas: wanted.num_replicas,
                        max_bytes: wanted.max_bytes,
                        discard: wanted.discard,
                        ..current
                    };
                    self.js
                        .update_stream(updated)
                        .await
                        .map_err(broker("update stream"))?;
                }
                Ok(())
            }
            Err(err)
                if matches!(
                    err.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref js)
                        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                self.js
                    .create_stream(wanted)
                    .await
                    .map(|_| ())
                    .map_err(broker("create stream"))
            }
            Err(err) => Err(Error::BrokerUnavailable {
                message: format!("cannot read stream {}", wanted.name),
                source: Some(Box::new(err)),
            }),
        }
    }

    /// A stream with the adapter's storage and replicas.
    fn stream_config(&self, name: String, subjects: Vec<String>) -> stream::Config {
        self.topic_stream_config(name, subjects, self.config.default_stream_settings())
    }

    /// A stream of one topic, with its settings.
    fn topic_stream_config(
        &self,
        name: String,
        subjects: Vec<String>,
        settings: config::ResolvedStream,
    ) -> stream::Config {
        stream::Config {
            name,
            subjects,
            storage: match settings.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: settings.replicas,
            ..Default::default()
        }
    }

    /// Publishes and waits for the `PubAck`, sending again with the same `Nats-Msg-Id` when
    /// the acknowledgement times out.
    pub(crate) async fn publish_confirmed(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck> {
        self.publish_confirmed_with(subject.into(), || headers.clone(), payload)
            .await
    }

    /// [`Shared::publish_confirmed`] building the headers for each try, so the hot path builds
    /// them once and copies nothing.
    async fn publish_confirmed_with(
        &self,
        subject: Subject,
        headers: impl Fn() -> HeaderMap,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck> {
        // Within the same bound as before (`PUBLISH_TRIES` acknowledgement timeouts), a try
        // that fails at once (no responders while a cluster elects the stream's new leader,
        // or right after a server restart) is sent again after a short, growing wait, so an
        // election of a few seconds delays publishes instead of failing them.
        let started = tokio::time::Instant::now();
        let deadline = started + self.config.publish_timeout * PUBLISH_TRIES;
        let mut backoff = Duration::from_millis(25);
        let mut last_error = None;
        let mut tries = 0;
        while tokio::time::Instant::now() < deadline {
            if tries > 0 {
                tokio::time::sleep(backoff.min(deadline - tokio::time::Instant::now())).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            tries += 1;
            // Every try, its acknowledgement included, ends by the deadline.
            let attempt = async {
                let future = self
                    .js
                    .publish_with_headers(subject.clone(), headers(), payload.clone())
                    .await
                    .map_err(|err| Box::new(err) as topiq_adapter::BoxError)?;
                Ok::<_, topiq_adapter::BoxError>(future.await)
            };
            let ack = match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => break,
                Ok(Err(err)) => {
                    last_error = Some(err);
                    continue;
                }
                Ok(Ok(ack)) => ack,
            };
            match ack {
                Ok(ack) => return Ok(ack),
                // No answer (or no JetStream yet, as right after a server restart): sent again
                // with the same `Nats-Msg-Id`, so it cannot duplicate. "No responders" reads
                // as StreamNotFound: also what a stream that is really gone answers, so it is
                // retried only as long as a leader election takes.
                Err(err)
                    if matches!(
                        err.kind(),
                        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                    ) || (err.kind() == PublishErrorKind::StreamNotFound
                        && started.elapsed() < NO_RESPONDERS_RETRY) =>
                {
                    last_error = Some(Box::new(err));
                }
                // The server answered no (a full stream, say): final, and said as it is.
                Err(err) => {
                    let full = is_full(&err);
                    let refused = Box::new(Refused {
                        subject: subject.to_string(),
                        source: err,
                    });
                    return Err(if full {
                        Error::BrokerFull {
                            message: format!(
                                "the stream taking {subject} is at its limit; stored messages are kept, and publishes succeed again once they are consumed or the limit (max_bytes) is raised"
                            ),
                            source: Some(refused),
                        }
                    } else {
                        Error::Broker {
                            operation: "publish",
                            source: refused,
                        }
                    });
                }
            }
        }
        Err(Error::BrokerUnavailable {
            message: format!(
                "no acknowledgement for a publish to {subject} after {tries} tries in {:?}",
                self.config.publish_timeout * PUBLISH_TRIES
            ),
            source: last_error,
        })
    }

    pub(crate) fn ledger(&self, topic: &TopicName) -> Result<jetstream::stream::Stream<()>> {
        self.ledgers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic {
                topic: topic.clone(),
            })
    }

    /// Everything a publish sends, built before anything is sent (so bad input fails alone).
    fn prepare(&self, topic: &TopicName, message: NewMessage) -> Result<Prepared> {
        let declared = self.declared_topic(topic)?;
        message.validate(topic, declared.spec.max_message_bytes)?;
        let payload = codec::encode(&message.data)?;
        let id = MessageId::generate();
        let now = Timestamp::now();
        let due = message.deliver_at.filter(|at| *at > now);
        let metadata = Metadata {
            id: id.clone(),
            enqueued_at: now,
            attempt_base: 0,
            first_failed_at: None,
            traceparent: message.trace.traceparent,
            baggage: message.trace.baggage,
            idempotency_key: message.idempotency_key,
            expires_at: retention_end(declared.spec.retention, due.unwrap_or(now)),
        };
        Ok(match due {
            // Forwarded later by the scheduler: the copy on the topic carries the enqueue time.
            Some(at) => Prepared {
                topic: topic.clone(),
                subject: self.layout.delay_subject(topic).into(),
                // The message id, not the idempotency key: keys are decided by the ledger
                // (`idempotency.rs`), and the delay stream's window is not the topic's.
                dedup_id: format!("{topic}:{id}"),
                metadata,
                payload,
                deliver_at: Some(at),
            },
            None => Prepared {
                topic: topic.clone(),
                subject: declared.subject,
                dedup_id: String::new(),
                metadata,
                payload,
                deliver_at: None,
            },
        })
    }

    pub(crate) async fn publish_one(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<PublishReceipt> {
        let prepared = self.prepare(topic, message)?;
        if prepared.metadata.idempotency_key.is_some() {
            // Rare and large: boxed, so every publish future stays small.
            return Box::pin(idempotency::publish_keyed(self, prepared)).await;
        }
        self.publish_prepared(&prepared).await?;
        Ok(prepared.receipt())
    }

    /// Publishes a prepared message and waits for its `PubAck`.
    pub(crate) async fn publish_prepared(
        &self,
        prepared: &Prepared,
    ) -> Result<jetstream::publish::PublishAck> {
        self.publish_confirmed_with(
            prepared.subject.clone(),
            || prepared.headers(),
            prepared.payload.clone(),
        )
        .await
    }

    /// Sends every message, then awaits every acknowledgement: one round trip for the batch.
    /// A message whose send or acknowledgement failed is sent again alone (same dedup id).
    async fn publish_many(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Vec<Result<PublishReceipt>> {
        let mut prepared = Vec::with_capacity(messages.len());
        let mut sent = Vec::with_capacity(messages.len());
        for message in messages {
            match self.prepare(topic, message) {
                // A keyed message claims its key first: published alone, below.
                Ok(ready) if ready.metadata.idempotency_key.is_some() => {
                    sent.push(None);
                    prepared.push(Ok(ready));
                }
                Ok(ready) => {
                    let future = self
                        .js
                        .publish_with_headers(
                            ready.subject.clone(),
                            ready.headers(),
                            ready.payload.clone(),
                        )
                        .await
                        .ok();
                    sent.push(future);
                    prepared.push(Ok(ready));
                }
                Err(err) => {
                    sent.push(None);
                    prepared.push(Err(err));
                }
            }
        }
        let acks = futures::future::join_all(sent.into_iter().map(|future| async move {
            match future {
                Some(future) => future.await.ok(),
                None => None,
            }
        }))
        .await;
        let mut receipts = Vec::with_capacity(prepared.len());
        for (ready, ack) in prepared.into_iter().zip(acks) {
            let receipt = match (ready, ack) {
                (Err(err), _) => Err(err),
                (Ok(ready), _) if ready.metadata.idempotency_key.is_some() => {
                    Box::pin(idempotency::publish_keyed(self, ready)).await
                }
                (Ok(ready), Some(_)) => Ok(ready.receipt()),
                (Ok(ready), None) => self.publish_prepared(&ready).await.map(|_| ready.receipt()),
            };
            receipts.push(receipt);
        }
        receipts
    }

    /// Starts the delay scheduler (once) and keeps the delay stream's duplicate window at
    /// least `idempotency_window`, the longest of the declared topics': a keyed delayed
    /// message that is published again (by a process taking its key over) is then stored once.
    async fn start_scheduler(self: &Arc<Self>, idempotency_window: Duration) -> Result<()> {
        let mut scheduler = self.scheduler.lock().await;
        if scheduler.task.is_some() && scheduler.duplicate_window >= idempotency_window {
            return Ok(());
        }
        let window = scheduler.duplicate_window.max(idempotency_window);
        let mut delay = self.stream_config(
            self.layout.delay_stream(),
            vec![self.layout.delay_wildcard()],
        );
        delay.retention = stream::RetentionPolicy::WorkQueue;
        delay.duplicate_window = window;
        self.ensure_stream(delay).await?;
        scheduler.duplicate_window = window;
        if scheduler.task.is_none() {
            let consumer = scheduler::ensure_consumer(self).await?;
            scheduler.task = Some(tokio::spawn(scheduler::run(Arc::clone(self), consumer)));
        }
        Ok(())
    }

    /// Makes sure the trigger's own consumer exists before a copy is published to its subject:
    /// on an interest stream, a message nobody is interested in is dropped at once.
    pub(crate) async fn ensure_direct_consumer(
        &self,
        topic: &TopicName,
        trigger: &TriggerName,
    ) -> Result<()> {
        let key = SubscriptionKey::new(topic.clone(), trigger.clone());
        let ack_wait = self
            .subscriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .map_or(topiq_adapter::DEFAULT_VISIBILITY_TIMEOUT, |spec| {
                spec.visibility_timeout
            });
        let stream = self
            .js
            .get_stream_no_info(self.layout.topic_stream(topic))
            .await
            .map_err(broker("get stream"))?;
        let name = Layout::direct_consumer(trigger);
        stream
            .get_or_create_consumer(
                &name,
                Shared::consumer_config(
                    name.clone(),
                    self.layout.direct_subject(topic, trigger),
                    ack_wait,
                    jetstream::consumer::DeliverPolicy::All,
                ),
            )
            .await
            .map(|_| ())
            .map_err(broker("ensure the trigger's own consumer"))
    }

    /// A durable pull consumer whose deliveries are leased for `visibility_timeout`. The
    /// server waits [`ACK_WAIT_MARGIN`] longer than the client's lease before it delivers
    /// again, so a redelivery never overlaps a lease the client still honours.
    pub(crate) fn consumer_config(
        name: String,
        filter_subject: String,
        visibility_timeout: Duration,
        deliver_policy: jetstream::consumer::DeliverPolicy,
    ) -> pull::Config {
        pull::Config {
            durable_name: Some(name),
            filter_subject,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: visibility_timeout + ACK_WAIT_MARGIN,
            deliver_policy,
            max_deliver: -1,
            max_ack_pending: -1,
            ..Default::default()
        }
    }
}

/// The delay scheduler's task and the delay stream's duplicate window.
#[derive(Default)]
struct Scheduler {
    task: Option<JoinHandle<()>>,
    duplicate_window: Duration,
}

/// A declared topic and the subject its publishes go to (built once, shared by every publish).
#[derive(Clone)]
struct DeclaredTopic {
    spec: TopicSpec,
    subject: Subject,
}

/// One message ready to send.
pub(crate) struct Prepared {
    pub(crate) topic: TopicName,
    pub(crate) subject: Subject,
    pub(crate) metadata: Metadata,
    /// The `Nats-Msg-Id` of a delayed publish; a direct one uses the message id.
    dedup_id: String,
    pub(crate) payload: Bytes,
    deliver_at: Option<Timestamp>,
}

impl Prepared {
    /// The receipt of this message, published.
    pub(crate) fn receipt(&self) -> PublishReceipt {
        PublishReceipt {
            message_id: self.metadata.id.clone(),
            duplicate: false,
        }
    }

    /// Its headers: the dedup id (the message id: a publish sent again, by this process or by
    /// one taking its key over, is stored once), the metadata, and where it waits when
    /// delayed. A keyed message carries its enqueue time, since another process that takes
    /// its key over may publish it (docs: idempotency).
    pub(crate) fn headers(&self) -> HeaderMap {
        match self.deliver_at {
            Some(at) => {
                let mut headers = self.metadata.headers(&self.dedup_id, Stamp::Copy);
                headers.insert(header::DELIVER_AT, at.to_string().as_str());
                headers.insert(header::TOPIC, self.topic.as_str());
                headers
            }
            None if self.metadata.idempotency_key.is_some() => self
                .metadata
                .headers(self.metadata.id.as_str(), Stamp::Copy),
            None => self
                .metadata
                .headers(self.metadata.id.as_str(), Stamp::First),
        }
    }
}

/// True when the server refused a publish for lack of room: a stream at its byte or message
/// limit (discard `new`), or a server out of storage.
fn is_full(err: &jetstream::context::PublishError) -> bool {
    let text = err.to_string();
    [
        "maximum bytes",
        "maximum messages",
        "insufficient resources",
        "insufficient storage",
    ]
    .iter()
    .any(|reason| text.contains(reason))
}

/// A publish the server answered with an error (a full stream, a wrong last sequence): the
/// subject it went to, and the server's reason.
#[derive(Debug, thiserror::Error)]
#[error("the server refused a publish to {subject}: {source}")]
pub(crate) struct Refused {
    subject: String,
    #[source]
    pub(crate) source: jetstream::context::PublishError,
}

impl Adapter for JetStreamAdapter {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_message_bytes: self.shared.max_payload.saturating_sub(HEADER_ROOM),
            ..CAPABILITIES
        }
    }

    async fn declare_topic(&self, spec: TopicSpec) -> Result<()> {
        let shared = &self.shared;
        shared.ensure_open()?;
        spec.validate(&Adapter::capabilities(self))?;
        let settings = shared.config.stream_settings(spec.name.as_str());
        let mut topic_stream = shared.topic_stream_config(
            shared.layout.topic_stream(&spec.name),
            vec![
                shared.layout.topic_subject(&spec.name),
                shared.layout.direct_wildcard(&spec.name),
            ],
            settings,
        );
        topic_stream.retention = stream::RetentionPolicy::Interest;
        if let Some(max_bytes) = settings.max_bytes {
            // A full stream refuses the publish: never is a stored message dropped for it.
            topic_stream.max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
            topic_stream.discard = stream::DiscardPolicy::New;
        }
        // No `max_age`: the stream would drop an expired message silently. Retention is
        // stamped on each message (`Topiq-Expires-At`) and an expired one is dead-lettered
        // when its trigger reaches it (docs/configuration.md, retention).
        topic_stream.max_age = Duration::ZERO;
        topic_stream.duplicate_window = spec.idempotency_window;
        topic_stream.max_message_size =
            i32::try_from(spec.max_message_bytes + HEADER_ROOM).unwrap_or(i32::MAX);
        shared.ensure_stream(topic_stream).await?;
        let mut dlq_stream = shared.topic_stream_config(
            shared.layout.dlq_stream(&spec.name),
            vec![shared.layout.dlq_wildcard(&spec.name)],
            settings,
        );
        dlq_stream.max_age = spec.dlq_retention.unwrap_or_default();
        shared.ensure_stream(dlq_stream).await?;
        let mut ledger = shared.topic_stream_config(
            shared.layout.ledger_stream(&spec.name),
            vec![shared.layout.ledger_wildcard(&spec.name)],
            settings,
        );
        ledger.max_age = spec.idempotency_window;
        ledger.max_messages_per_subject = 1;
        shared.ensure_stream(ledger).await?;
        let ledger = shared
            .js
            .get_stream_no_info(shared.layout.ledger_stream(&spec.name))
            .await
            .map_err(broker("get the idempotency ledger"))?;
        shared
            .ledgers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(spec.name.clone(), ledger);
        shared.start_scheduler(spec.idempotency_window).await?;
        shared
            .topics
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                spec.name.clone(),
                DeclaredTopic {
                    subject: shared.layout.topic_subject(&spec.name).into(),
                    spec,
                },
            );
        Ok(())
    }

    async fn declare_subscription(&self, spec: SubscriptionSpec) -> Result<()> {
        spec.validate()?;
        let shared = &self.shared;
        shared.topic(&spec.key.topic)?;
        if let Some(dead_letter_topic) = &spec.dead_letter_topic {
            shared.topic(dead_letter_topic)?;
        }
        let stream = shared
            .js
            .get_stream_no_info(shared.layout.topic_stream(&spec.key.topic))
            .await
            .map_err(broker("get stream"))?;
        let trigger = &spec.key.trigger;
        for (name, filter, policy) in [
            (
                Layout::main_consumer(trigger),
                shared.layout.topic_subject(&spec.key.topic),
                jetstream::consumer::DeliverPolicy::New,
            ),
            (
                Layout::direct_consumer(trigger),
                shared.layout.direct_subject(&spec.key.topic, trigger),
                jetstream::consumer::DeliverPolicy::All,
            ),
        ] {
            let config =
                Shared::consumer_config(name.clone(), filter, spec.visibility_timeout, policy);
            match stream.get_consumer::<pull::Config>(&name).await {
                Ok(existing) => {
                    let current = &existing.cached_info().config;
                    if current.filter_subject != config.filter_subject {
                        return Err(Error::Broker {
                            operation: "declare consumer",
                            source: format!(
                                "consumer {name} exists with filter {:?}, topiq needs {:?}; it belongs to something else: change `prefix`, or delete it",
                                current.filter_subject, config.filter_subject
                            )
                            .into(),
                        });
                    }
                    if current.ack_wait != config.ack_wait {
                        stream
                            .update_consumer(config)
                            .await
                            .map_err(broker("update consumer"))?;
                    }
                }
                Err(_) => {
                    stream
                        .create_consumer(config)
                        .await
                        .map_err(broker("create consumer"))?;
                }
            }
        }
        shared
            .subscriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(spec.key.clone(), spec);
        Ok(())
    }

    async fn publish(&self, topic: &TopicName, message: NewMessage) -> Result<PublishReceipt> {
        self.shared.publish_one(topic, message).await
    }

    async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Result<PublishReceipt>>> {
        self.shared.topic(topic)?;
        Ok(self.shared.publish_many(topic, messages).await)
    }

    async fn consume(
        &self,
        key: &SubscriptionKey,
        options: ConsumeOptions,
    ) -> Result<Subscription> {
        let spec = self.shared.subscription(key)?;
        options.validate()?;
        Ok(consumer::subscribe(
            Arc::clone(&self.shared),
            spec,
            options.prefetch,
        ))
    }

    async fn dlq_count(&self, topic: &TopicName, trigger: Option<&TriggerName>) -> Result<u64> {
        dlq::count(&self.shared, topic, trigger).await
    }

    async fn dlq_list(&self, query: DlqQuery) -> Result<DlqPage> {
        dlq::list(&self.shared, query).await
    }

    async fn dlq_redrive(
        &self,
        topic: &TopicName,
        trigger: Option<&TriggerName>,
        selection: DlqSelection,
    ) -> Result<u64> {
        dlq::redrive(&self.shared, topic, trigger, selection).await
    }

    async fn dlq_purge(
        &self,
        topic: &TopicName,
        trigger: Option<&TriggerName>,
        selection: DlqSelection,
    ) -> Result<u64> {
        dlq::purge(&self.shared, topic, trigger, selection).await
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
        for name in [
            Layout::main_consumer(&key.trigger),
            Layout::direct_consumer(&key.trigger),
        ] {
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
            dead_lettered: dlq::count(shared, &key.topic, Some(&key.trigger)).await?,
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
        if self.shared.client.connection_state() != async_nats::connection::State::Connected {
            return Err(Error::BrokerUnavailable {
                message: "not connected to the server (reconnecting)".into(),
                source: None,
            });
        }
        let ping = tokio::time::timeout(Duration::from_secs(5), self.shared.client.flush()).await;
        match ping {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(Error::BrokerUnavailable {
                message: "the server does not answer".into(),
                source: Some(Box::new(err)),
            }),
            Err(elapsed) => Err(Error::BrokerUnavailable {
                message: "the server did not answer a ping within 5s".into(),
                source: Some(Box::new(elapsed)),
            }),
        }
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
