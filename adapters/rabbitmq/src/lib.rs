//! `modules::queue::RabbitMQAdapter`: topiq on RabbitMQ (`lapin`).
//!
//! | contract | RabbitMQ |
//! |---|---|
//! | topic | the durable topic exchange `<prefix>` (routing key = topic) and the topic's DLQ stream `<prefix>:dlq:<topic>` (`x-max-age` = DLQ retention) |
//! | trigger | the durable queue `<prefix>:t:<topic>:<trigger>` (quorum by default, `x-delivery-limit` 1000 so a 4.x broker's default of 20 never drops one; no `x-message-ttl`: retention is stamped on each message as `topiq-expires-at` and an expired one dead-lettered as `expired` on receipt) bound to the exchange with the topic: every trigger gets every message, consumers of one trigger compete |
//! | publish | persistent, `mandatory`, on a channel with publisher confirms; returns after the confirm (each broker call bounded by `publish_timeout`, after up to `reconnect_wait` for a lost connection); a nack is an error, and so is a returned (unroutable) message on a topic with triggers |
//! | delay | the topic's delay queue for the delay's bucket (`<prefix>:delay:<topic>:<ms>`, the delay rounded up to two significant digits): a quorum queue with that TTL dead-lettering at-least-once to the exchange with the topic |
//! | consume | a channel per consumer with `basic.qos(prefetch)` and manual acks; the lease is client-side: one that runs out is rejected with requeue (delivered again, counted) and its late settlement refused |
//! | attempt | `topiq-attempt-base` header + the quorum queue's `x-delivery-count` + 1; a delivery past `max_attempts` (a crash on the last attempt) is dead-lettered on receipt |
//! | nack | a copy with the attempt goes to the trigger's retry queue for the delay's bucket (`<prefix>:retry:<topic>:<trigger>:<ms>`, TTL, dead-lettering at-least-once back to the trigger's queue), confirmed, then the original is acked: a crash between the two duplicates, never loses |
//! | dead letter | the record goes to the topic's DLQ stream (confirmed), then the original is acked |
//! | release | a copy with the same attempt goes to the trigger's queue (confirmed), then the original is acked |
//! | DLQ | a stream per topic read from an offset (the cursor); removals (redrive, purge) append a tombstone naming the record's offset, since a stream never deletes one message; a reader first appends a marker and reads up to it, so it knows where the stream ended |
//! | idempotency | two queues per key (`<prefix>:key:…` holding the claim, `<prefix>:keydone:…` saying the message was published), each `x-max-length` 1 with `reject-publish` and the window as TTL: the broker lets one claim in, across processes; a later publish with the key returns the claim's id, and publishes the claimed message itself if the first publisher died before it did |
//! | connection | opened on first use and again after it is lost (backoff, topology declared again); consumers resubscribe; a call waits up to `reconnect_wait` for it, then fails with `broker_unavailable` |
//!
//! The visibility timeout is the client's: RabbitMQ holds an unacked message until its
//! channel closes or its `consumer_timeout` (30 minutes by default) runs out, which also
//! bounds how long a lease can be extended.

mod codec;
mod config;
mod confirms;
mod consumer;
mod dlq;
mod idempotency;
mod layout;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use tokio_util::sync::CancellationToken;
use topiq_adapter::{
    Adapter, Capabilities, ConsumeOptions, DlqPage, DlqQuery, DlqSelection, Error, NewMessage,
    PublishReceipt, Result, Subscription, SubscriptionKey, SubscriptionSpec, SubscriptionStats,
    Timestamp, TopicName, TopicSpec, TriggerName,
};
use topiq_adapter_kit::Declared;
use topiq_adapter_kit::lease::Leases;

pub use config::{QueueType, RabbitMqConfig};
pub use topiq_adapter_kit::TlsSettings as TlsConfig;

use codec::{Metadata, Properties};
pub(crate) use confirms::Published;
use layout::Layout;
use session::{Current, Target};

/// The adapter's class name in `config.yaml`.
pub const CLASS_NAME: &str = "modules::queue::RabbitMQAdapter";

/// The quorum queues' delivery limit: far above any trigger's attempts (topiq counts and
/// dead-letters itself), set so a broker's default (20 on 4.x) never drops a message.
const DELIVERY_LIMIT: u32 = 1000;

/// The largest message topiq publishes (RabbitMQ's default `max_message_size` is 128 MiB;
/// large messages hurt a queue broker long before that).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// What the adapter can honour (known without connecting).
pub const CAPABILITIES: Capabilities = Capabilities {
    adapter: "RabbitMQAdapter",
    durable: true,
    delayed_delivery: true,
    max_delay: Some(layout::MAX_DELAY),
    retention: true,
    max_message_bytes: MAX_MESSAGE_BYTES,
};

/// topiq's RabbitMQ adapter. Cheap to clone.
#[derive(Clone)]
pub struct RabbitMqAdapter {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) config: RabbitMqConfig,
    target: Target,
    pub(crate) layout: Layout,
    current: Current,
    /// Held while connecting, so one caller connects and the others wait for it.
    connecting: tokio::sync::Mutex<()>,
    /// The topics and triggers this process declared.
    declared: Declared<TopicSpec>,
    /// Every queue declared so far, declared again on a new connection.
    queues: Mutex<Vec<QueueDecl>>,
    /// This process's consumers of each subscription, for `stats`' in-flight count.
    consumers: Mutex<HashMap<SubscriptionKey, Vec<Weak<Leases<consumer::Received>>>>>,
    pub(crate) closed: CancellationToken,
    /// Releases of messages dropped subscriptions received but never handed out; `close`
    /// waits for them.
    pub(crate) releases: tokio_util::task::TaskTracker,
}

/// A queue topiq declares: its arguments and, for trigger queues, its binding.
#[derive(Clone, Debug)]
pub(crate) struct QueueDecl {
    name: String,
    arguments: FieldTable,
    /// Bound to the exchange with this routing key.
    binding: Option<(String, String)>,
    /// A delay bucket: whose waiting messages it holds (a topic's delayed publishes, or one
    /// trigger's retries).
    holds_delayed_of: Option<(TopicName, Option<TriggerName>)>,
}

impl QueueDecl {
    async fn declare(&self, channel: &Channel) -> Result<u32> {
        let queue = channel
            .queue_declare(
                self.name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                self.arguments.clone(),
            )
            .await
            .map_err(declare_error(&self.name))?;
        if let Some((exchange, routing_key)) = &self.binding {
            channel
                .queue_bind(
                    self.name.as_str().into(),
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(declare_error(&self.name))?;
        }
        Ok(queue.message_count())
    }
}

/// A declaration the broker refused: most often an existing queue with other arguments.
pub(crate) fn declare_error(name: &str) -> impl FnOnce(lapin::Error) -> Error + '_ {
    move |err| Error::Broker {
        operation: "declare",
        source: format!(
            "RabbitMQ refused to declare {name:?}: {err}. If it exists with other arguments \
             (queue type, TTL, limits), delete it (with its messages) or change the config back: \
             RabbitMQ cannot change a queue's arguments"
        )
        .into(),
    }
}

fn quorum_arguments(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut pairs = vec![("x-queue-type", AMQPValue::LongString("quorum".into()))];
    pairs.extend(extra.iter().cloned());
    codec::arguments(&pairs)
}

fn millis_value(duration: Duration) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

impl Shared {
    /// Runs a broker call bounded by `publish_timeout`: lapin's calls can wait forever on a
    /// connection that died under them.
    pub(crate) async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let timeout = self.config.publish_timeout;
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(Error::Timeout { operation, timeout }))
    }

    pub(crate) fn ensure_open(&self) -> Result<()> {
        if self.closed.is_cancelled() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    pub(crate) fn topic(&self, name: &TopicName) -> Result<TopicSpec> {
        self.declared.topic(name)
    }

    pub(crate) fn subscription(&self, key: &SubscriptionKey) -> Result<SubscriptionSpec> {
        self.declared.subscription(key)
    }

    /// Checks the target of a DLQ call: a declared topic, and trigger when one is named.
    pub(crate) fn check_dlq(&self, topic: &TopicName, trigger: Option<&TriggerName>) -> Result<()> {
        self.declared.check_dlq(topic, trigger)
    }

    fn has_subscriptions(&self, topic: &TopicName) -> bool {
        !self.declared.triggers_of(topic).is_empty()
    }

    fn declared_queues(&self) -> Vec<QueueDecl> {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn is_declared(&self, name: &str) -> bool {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|queue| queue.name == name)
    }

    /// Declares a queue now and again on every new connection; returns its ready count.
    pub(crate) async fn declare_queue(&self, queue: QueueDecl) -> Result<u32> {
        let session = self.session().await?;
        let count = self
            .bounded("declare", async {
                let channel = session.owned_channel().await?;
                let count = queue.declare(&channel).await?;
                Ok(count)
            })
            .await?;
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match queues.iter_mut().find(|known| known.name == queue.name) {
            Some(known) => *known = queue,
            None => queues.push(queue),
        }
        Ok(count)
    }

    /// The ready count of a queue declared before (0 if it is gone).
    async fn ready_count(&self, name: &str) -> Result<u64> {
        let Some(queue) = self
            .declared_queues()
            .into_iter()
            .find(|queue| queue.name == name)
        else {
            return Ok(0);
        };
        Ok(u64::from(self.declare_queue(queue).await?))
    }

    /// A delay bucket queue: waits `bucket`, then dead-letters (at least once) to
    /// `exchange` with `routing_key`.
    fn bucket_queue(
        name: String,
        bucket: Duration,
        (exchange, routing_key): (&str, &str),
        holds: (TopicName, Option<TriggerName>),
    ) -> QueueDecl {
        QueueDecl {
            name,
            arguments: quorum_arguments(&[
                ("x-message-ttl", millis_value(bucket)),
                (
                    "x-dead-letter-exchange",
                    AMQPValue::LongString(exchange.into()),
                ),
                (
                    "x-dead-letter-routing-key",
                    AMQPValue::LongString(routing_key.into()),
                ),
                (
                    "x-dead-letter-strategy",
                    AMQPValue::LongString("at-least-once".into()),
                ),
                ("x-overflow", AMQPValue::LongString("reject-publish".into())),
            ]),
            binding: None,
            holds_delayed_of: Some(holds),
        }
    }

    /// The topic's delay queue for `delay` (declared on first use).
    pub(crate) async fn delay_queue(&self, topic: &TopicName, delay: Duration) -> Result<String> {
        let bucket = layout::bucket(delay);
        let name = self.layout.delay_queue(topic, bucket);
        if !self.is_declared(&name) {
            let queue = Self::bucket_queue(
                name.clone(),
                bucket,
                (&self.layout.exchange(), topic.as_str()),
                (topic.clone(), None),
            );
            self.declare_queue(queue).await?;
        }
        Ok(name)
    }

    /// The trigger's retry queue for `delay` (declared on first use).
    pub(crate) async fn retry_queue(
        &self,
        key: &SubscriptionKey,
        delay: Duration,
    ) -> Result<String> {
        let bucket = layout::bucket(delay);
        let name = self.layout.retry_queue(key, bucket);
        if !self.is_declared(&name) {
            let queue = Self::bucket_queue(
                name.clone(),
                bucket,
                ("", &self.layout.trigger_queue(key)),
                (key.topic.clone(), Some(key.trigger.clone())),
            );
            self.declare_queue(queue).await?;
        }
        Ok(name)
    }

    /// Publishes on the publishing channel and waits for the confirm (`publish_timeout`).
    pub(crate) async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<Published> {
        let session = self.session().await?;
        if session.connection.status().blocked() {
            // A memory or disk alarm: the broker takes no publish until it clears, and a
            // publish sent now would only wait out its timeout.
            return Err(blocked());
        }
        let publishing = async {
            let channel = session.publisher().await?;
            channel
                .publish(exchange, routing_key, payload, properties)
                .await
        };
        match self
            .bounded("publish (waiting for the broker's confirm)", publishing)
            .await
        {
            // Blocked while it waited: say why, rather than that it timed out.
            Err(Error::Timeout { .. }) if session.connection.status().blocked() => Err(blocked()),
            other => other,
        }
    }

    /// Publishes straight to one trigger's queue (release, retry without delay, redrive),
    /// confirmed: the queue must take it.
    pub(crate) async fn publish_to_trigger(
        &self,
        key: &SubscriptionKey,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        let queue = self.layout.trigger_queue(key);
        match self
            .publish_confirmed("", &queue, payload, properties)
            .await?
        {
            Published::Stored => Ok(()),
            Published::Returned => Err(missing_queue(&queue)),
            Published::Refused => Err(refused(&queue)),
        }
    }

    /// Publishes a prepared message to its topic (or its delay queue), confirmed.
    pub(crate) async fn publish_prepared(&self, prepared: &Prepared) -> Result<()> {
        let properties = prepared.metadata.properties();
        let (exchange, routing_key) = match prepared.delay {
            Some(delay) => (
                String::new(),
                self.delay_queue(&prepared.topic, delay).await?,
            ),
            None => (self.layout.exchange(), prepared.topic.as_str().to_owned()),
        };
        match self
            .publish_confirmed(&exchange, &routing_key, &prepared.payload, properties)
            .await?
        {
            Published::Stored => Ok(()),
            // A topic without triggers accepts and drops, as on every adapter.
            Published::Returned if !self.has_subscriptions(&prepared.topic) => Ok(()),
            Published::Returned => Err(missing_queue(&routing_key)),
            Published::Refused => Err(refused(&routing_key)),
        }
    }

    fn prepare(&self, topic: &TopicName, message: NewMessage) -> Result<(Prepared, TopicSpec)> {
        let spec = self.topic(topic)?;
        message.validate(topic, spec.max_message_bytes)?;
        let now = Timestamp::now();
        let delay = match message.deliver_at {
            Some(at) if at > now => {
                let delay = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
                if delay > layout::MAX_DELAY {
                    return Err(Error::InvalidArgument {
                        argument: "delay",
                        reason: format!(
                            "RabbitMQAdapter delays at most {:?} (a 32-bit TTL in milliseconds)",
                            layout::MAX_DELAY
                        ),
                    });
                }
                Some(delay)
            }
            _ => None,
        };
        let prepared = Prepared {
            topic: topic.clone(),
            payload: codec::encode(&message.data)?,
            metadata: Metadata::enqueued(
                now,
                message.trace,
                message.idempotency_key,
                spec.retention,
                message.deliver_at.map_or(now, |at| at.max(now)),
            ),
            delay,
        };
        Ok((prepared, spec))
    }

    async fn publish_one(&self, topic: &TopicName, message: NewMessage) -> Result<PublishReceipt> {
        self.ensure_open()?;
        let (prepared, spec) = self.prepare(topic, message)?;
        if prepared.metadata.idempotency_key.is_some() {
            return idempotency::publish_keyed(self, &prepared, spec.idempotency_window).await;
        }
        self.publish_prepared(&prepared).await?;
        Ok(PublishReceipt {
            message_id: prepared.metadata.id,
            duplicate: false,
        })
    }
}

/// The broker blocks publishing connections while a memory or disk alarm is on.
fn blocked() -> Error {
    Error::BrokerFull {
        message: "RabbitMQ blocks publishing (a memory or disk alarm is on); stored messages are kept, and publishes succeed again once consumers free memory or disk, or the limits are raised".into(),
        source: None,
    }
}

fn missing_queue(target: &str) -> Error {
    Error::Broker {
        operation: "publish",
        source: format!(
            "RabbitMQ returned the message as unroutable: no queue takes {target:?}. A queue \
             topiq declared was deleted under it (a restart declares it again), or the \
             trigger it is meant for is no longer in the config"
        )
        .into(),
    }
}

fn refused(target: &str) -> Error {
    Error::Broker {
        operation: "publish",
        source: format!(
            "RabbitMQ refused the message for {target:?} (nack): check the broker's memory \
             and disk alarms and the queue's length limits"
        )
        .into(),
    }
}

/// A message ready to publish.
pub(crate) struct Prepared {
    pub(crate) topic: TopicName,
    pub(crate) payload: Vec<u8>,
    pub(crate) metadata: Metadata,
    /// Not delivered before this delay has passed.
    pub(crate) delay: Option<Duration>,
}

impl RabbitMqAdapter {
    /// Checks the config; the connection opens on first use (and again whenever it is lost).
    pub async fn connect(config: RabbitMqConfig) -> Result<Self> {
        config.validate().map_err(|reason| Error::InvalidArgument {
            argument: "RabbitMQAdapter config",
            reason,
        })?;
        let target = Target::new(&config).map_err(|reason| Error::InvalidArgument {
            argument: "url",
            reason,
        })?;
        let shared = Arc::new(Shared {
            layout: Layout::new(&config.prefix),
            config,
            target,
            current: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            declared: Declared::default(),
            queues: Mutex::default(),
            consumers: Mutex::default(),
            closed: CancellationToken::new(),
            releases: tokio_util::task::TaskTracker::new(),
        });
        shared.session().await?;
        Ok(Self { shared })
    }
}

impl Adapter for RabbitMqAdapter {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn declare_topic(&self, spec: TopicSpec) -> Result<()> {
        let shared = &self.shared;
        shared.ensure_open()?;
        spec.validate(&Adapter::capabilities(self))?;
        let mut arguments = vec![("x-queue-type", AMQPValue::LongString("stream".into()))];
        if let Some(retention) = spec.dlq_retention {
            let seconds = retention.as_secs().max(1);
            arguments.push((
                "x-max-age",
                AMQPValue::LongString(format!("{seconds}s").into()),
            ));
        }
        shared
            .declare_queue(QueueDecl {
                name: shared.layout.dlq_stream(&spec.name),
                arguments: codec::arguments(&arguments),
                binding: None,
                holds_delayed_of: None,
            })
            .await?;
        shared.declared.add_topic(spec.name.clone(), spec);
        Ok(())
    }

    async fn declare_subscription(&self, spec: SubscriptionSpec) -> Result<()> {
        let shared = &self.shared;
        shared.ensure_open()?;
        spec.validate()?;
        shared.topic(&spec.key.topic)?;
        if let Some(dead_letter_topic) = &spec.dead_letter_topic {
            shared.topic(dead_letter_topic)?;
        }
        if spec.max_attempts >= DELIVERY_LIMIT {
            return Err(Error::InvalidArgument {
                argument: "max_attempts",
                reason: format!(
                    "RabbitMQAdapter allows at most {} attempts",
                    DELIVERY_LIMIT - 1
                ),
            });
        }
        let mut arguments = Vec::new();
        match shared.config.queue_type {
            QueueType::Quorum => {
                arguments.push(("x-queue-type", AMQPValue::LongString("quorum".into())));
                arguments.push((
                    "x-delivery-limit",
                    AMQPValue::LongLongInt(i64::from(DELIVERY_LIMIT)),
                ));
            }
            QueueType::Classic => {
                arguments.push(("x-queue-type", AMQPValue::LongString("classic".into())));
            }
        }
        shared
            .declare_queue(QueueDecl {
                name: shared.layout.trigger_queue(&spec.key),
                arguments: codec::arguments(&arguments),
                binding: Some((shared.layout.exchange(), spec.key.topic.as_str().to_owned())),
                holds_delayed_of: None,
            })
            .await?;
        shared.declared.add_subscription(spec);
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
        let shared = &self.shared;
        shared.ensure_open()?;
        shared.topic(topic)?;
        // All sent, then all confirms awaited (each publish call awaits its own confirm, and
        // they run concurrently on the one confirming channel).
        let publishes = messages
            .into_iter()
            .map(|message| shared.publish_one(topic, message));
        Ok(futures::future::join_all(publishes).await)
    }

    async fn consume(
        &self,
        key: &SubscriptionKey,
        options: ConsumeOptions,
    ) -> Result<Subscription> {
        let spec = self.shared.subscription(key)?;
        options.validate()?;
        self.shared.ensure_open()?;
        let (subscription, leases) =
            consumer::subscribe(Arc::clone(&self.shared), spec, options.prefetch);
        let mut consumers = self
            .shared
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let list = consumers.entry(key.clone()).or_default();
        list.retain(|leases| leases.strong_count() > 0);
        list.push(Arc::downgrade(&leases));
        Ok(subscription)
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
        let ready = shared
            .ready_count(&shared.layout.trigger_queue(key))
            .await?;
        // The bucket queues this process declared: the trigger's retries and the topic's
        // delayed publishes (another process's buckets are not known here).
        let mut delayed = 0;
        for queue in shared.declared_queues() {
            let holds = match &queue.holds_delayed_of {
                Some((topic, None)) => topic == &key.topic,
                Some((topic, Some(trigger))) => topic == &key.topic && trigger == &key.trigger,
                None => false,
            };
            if holds {
                delayed += u64::from(shared.declare_queue(queue).await?);
            }
        }
        let in_flight = shared
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map_or(0, |list| {
                list.iter()
                    .filter_map(Weak::upgrade)
                    .map(|leases| leases.len() as u64)
                    .sum()
            });
        Ok(SubscriptionStats {
            waiting: ready + delayed,
            delayed,
            in_flight,
            dead_lettered: dlq::count(shared, &key.topic, Some(&key.trigger)).await?,
        })
    }

    async fn health(&self) -> Result<()> {
        self.shared.health().await
    }

    async fn close(&self) -> Result<()> {
        let shared = &self.shared;
        // What dropped subscriptions had not handed out goes back first (bounded).
        shared.releases.close();
        let _ =
            tokio::time::timeout(shared.config.publish_timeout * 2, shared.releases.wait()).await;
        shared.closed.cancel();
        let session = shared
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(session) = session {
            let _ = session
                .connection
                .close(200, "topiq adapter closed".into())
                .await;
        }
        Ok(())
    }
}
