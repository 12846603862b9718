//! Publishing: a message prepared once (payload, properties, routing), published on a
//! confirming channel and answered by the broker's confirm or return.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::ShortString;
use topiq_adapter::{
    Error, NewMessage, PublishReceipt, Result, SubscriptionKey, Timestamp, TopicName, TopicSpec,
    check_size,
};

use crate::codec::{self, Metadata, Properties};
use crate::confirms::{ConfirmingChannel, Outgoing};
use crate::layout::{self, Layout};
use crate::session::Session;
use crate::{Published, Shared, idempotency};

impl Shared {
    /// Publishes on the publishing channel and waits for the confirm: the channel (if it
    /// must be opened again) and the confirm within one `publish_timeout`. The message's
    /// properties are made (`properties`) where the publish is sent: passed down by value,
    /// every layer's future would keep a copy of them (some 300 bytes each).
    pub(crate) async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: impl FnOnce() -> BasicProperties,
    ) -> Result<Published> {
        let session = self.session().await?;
        let deadline = tokio::time::Instant::now() + self.config.publish_timeout;
        let channel = self.open_publisher(&session, deadline).await?;
        let (target, bound) = ((exchange, routing_key), (&self.deadlines, deadline));
        channel
            .publish(target, payload, properties, bound)
            .await
            .unwrap_or_else(|| Err(self.timed_out(&session)))
    }

    /// Publishes straight to one trigger's queue of the message's lane (release, retry
    /// without delay, redrive), confirmed: the queue must take it. A lane the topic no longer
    /// has goes to lane 0.
    pub(crate) async fn publish_to_trigger(
        &self,
        key: &SubscriptionKey,
        payload: &[u8],
        metadata: &Metadata,
    ) -> Result<()> {
        let lane = self.topic(&key.topic)?.lane_or_first(metadata.lane);
        let queue = self.layout.lane_queue(key, lane);
        let properties = || metadata.clone().in_lane(lane).properties();
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
        let properties = || prepared.metadata.properties();
        let (topic, lane) = (&prepared.topic, prepared.metadata.lane);
        let (exchange, routing_key) = match prepared.delay {
            // Boxed, as the keyed path is: declaring a delay queue is rare and large inline.
            Some(delay) => {
                let declaring = Box::pin(self.delay_queue(topic, lane, delay));
                ("", Cow::Owned(declaring.await?))
            }
            None => (
                self.layout.exchange(),
                Layout::lane_routing_key(topic, lane),
            ),
        };
        let published = self
            .publish_confirmed(exchange, &routing_key, &prepared.payload, properties)
            .await?;
        self.to_topic(topic, &routing_key, published)
    }

    /// What the broker's answer to a publish to `topic` (routed by `routing_key`) means.
    fn to_topic(&self, topic: &TopicName, routing_key: &str, published: Published) -> Result<()> {
        match published {
            Published::Stored => Ok(()),
            // A topic without triggers accepts and drops, as on every adapter.
            Published::Returned if !self.declared.has_triggers(topic) => Ok(()),
            Published::Returned => Err(missing_queue(routing_key)),
            Published::Refused => Err(refused(routing_key)),
        }
    }

    /// Publishes a batch (`publish_batch`): one result per message, in order. The plain
    /// messages (neither keyed nor delayed) are handed to the publishing channel all at once
    /// and their confirms awaited by one deadline (`publish_timeout`), so a batch pays one
    /// hand-over and no timer per message; keyed and delayed ones are published as a single
    /// publish is, alongside.
    pub(crate) async fn publish_many(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Result<PublishReceipt>>> {
        self.ensure_open()?;
        let spec = self.topic(topic)?;
        let mut prepared: Vec<Result<Prepared>> = messages
            .into_iter()
            .map(|message| self.prepare_for(&spec, topic, message))
            .collect();
        let (mut plain, others): (Vec<&mut Prepared>, Vec<&mut Prepared>) = prepared
            .iter_mut()
            .filter_map(|ready| ready.as_mut().ok())
            .partition(|ready| ready.is_plain());
        let window = spec.idempotency_window;
        let (plain_outcomes, other_outcomes) = futures::join!(
            self.publish_plain(topic, &mut plain),
            futures::future::join_all(
                others
                    .iter()
                    .map(|ready| self.publish_single(ready, window))
            ),
        );
        let (mut plain_outcomes, mut other_outcomes) =
            (plain_outcomes.into_iter(), other_outcomes.into_iter());
        let mut next = |ready: &Prepared| {
            let outcome = if ready.is_plain() {
                plain_outcomes
                    .next()
                    .map(|outcome| outcome.map(|()| ready.receipt()))
            } else {
                other_outcomes.next()
            };
            outcome.unwrap_or_else(|| Err(topiq_adapter_kit::batch_unanswered()))
        };
        Ok(prepared
            .into_iter()
            .map(|ready| ready.and_then(|ready| next(&ready)))
            .collect())
    }

    /// A keyed or delayed message of a batch, published as `publish` does.
    async fn publish_single(
        &self,
        prepared: &Prepared,
        window: Duration,
    ) -> Result<PublishReceipt> {
        if prepared.metadata.idempotency_key.is_some() {
            return Box::pin(idempotency::publish_keyed(self, prepared, window)).await;
        }
        self.publish_prepared(prepared).await?;
        Ok(prepared.receipt())
    }

    /// Hands the plain messages of a batch to the publishing channel at once (their payloads
    /// moved, not copied) and awaits each confirm, bounded as a single publish is: the
    /// session first (within `reconnect_wait`), then the channel and every confirm by one
    /// `publish_timeout`.
    async fn publish_plain(
        &self,
        topic: &TopicName,
        batch: &mut [&mut Prepared],
    ) -> Vec<Result<()>> {
        if batch.is_empty() {
            return Vec::new();
        }
        let session = match self.session().await {
            Ok(session) => session,
            Err(err) => return each_fails(batch.len(), err),
        };
        let deadline = tokio::time::Instant::now() + self.config.publish_timeout;
        let channel = match self.open_publisher(&session, deadline).await {
            Ok(channel) => channel,
            Err(err) => return each_fails(batch.len(), err),
        };
        let exchange: ShortString = self.layout.exchange().into();
        let outgoing = batch
            .iter_mut()
            .map(|ready| Outgoing {
                exchange: exchange.clone(),
                routing_key: Layout::lane_routing_key(topic, ready.metadata.lane)
                    .into_owned()
                    .into(),
                payload: std::mem::take(&mut ready.payload),
                properties: ready.metadata.properties(),
            })
            .collect();
        let answers = channel.publish_batch(outgoing, deadline).await;
        answers
            .into_iter()
            .zip(batch)
            .map(|(answer, ready)| match answer {
                Some(Ok(Published::Stored)) => Ok(()),
                Some(Ok(other)) => {
                    let routing_key = Layout::lane_routing_key(topic, ready.metadata.lane);
                    self.to_topic(topic, &routing_key, other)
                }
                Some(Err(err)) => Err(err),
                None => Err(self.timed_out(&session)),
            })
            .collect()
    }

    /// The session's publishing channels, opened again by `deadline` if one was closed;
    /// `BrokerFull` while the broker blocks publishing (a memory or disk alarm: it takes no
    /// publish until it clears, and a publish sent now would only wait out its timeout),
    /// whether that was so before or while it waited.
    async fn open_publisher(
        &self,
        session: &Session,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<ConfirmingChannel>> {
        if session.connection.status().blocked() {
            return Err(blocked());
        }
        // Open, as nearly always: no timer armed for a wait that does not happen.
        if let Some(channel) = session.open_publisher_now() {
            return Ok(channel);
        }
        // Boxed, as `session`'s slow path is: rarely run, and large inline.
        match tokio::time::timeout_at(deadline, Box::pin(session.publisher())).await {
            Ok(Ok(channel)) => Ok(channel),
            // Blocked while it waited: say why, rather than that it timed out.
            Ok(Err(Error::Timeout { .. })) if session.connection.status().blocked() => {
                Err(blocked())
            }
            Ok(Err(err)) => Err(err),
            Err(_) => Err(self.timed_out(session)),
        }
    }

    /// A publish that had no confirm within `publish_timeout`: blocked, if the broker blocks
    /// publishing now (say why, rather than that it timed out).
    fn timed_out(&self, session: &Session) -> Error {
        if session.connection.status().blocked() {
            return blocked();
        }
        Error::Timeout {
            operation: "publish (waiting for the broker's confirm)",
            timeout: self.config.publish_timeout,
        }
    }

    pub(crate) fn prepare(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<(Prepared, TopicSpec)> {
        let spec = self.topic(topic)?;
        let prepared = self.prepare_for(&spec, topic, message)?;
        Ok((prepared, spec))
    }

    /// [`Shared::prepare`] for a topic already looked up (a batch looks it up once).
    fn prepare_for(
        &self,
        spec: &TopicSpec,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<Prepared> {
        // What `NewMessage::validate` checks, in its order, the data's depth as it is written
        // and its size from the bytes; then the lane (as on every adapter).
        message.validate_fields()?;
        let payload = codec::encode(&message.data)?;
        check_size(topic, payload.len(), spec.max_message_bytes)?;
        message.check_lane(topic, spec.lanes)?;
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
        Ok(Prepared {
            topic: topic.clone(),
            payload,
            metadata: Metadata::enqueued(
                now,
                message.trace,
                message.idempotency_key,
                spec.retention,
                message.deliver_at.map_or(now, |at| at.max(now)),
            )
            .in_lane(message.lane),
            delay,
        })
    }

    /// Publishes a new message to one trigger's queue only (a replay), confirmed.
    pub(crate) async fn publish_one_to(
        &self,
        key: &SubscriptionKey,
        message: NewMessage,
    ) -> Result<PublishReceipt> {
        self.ensure_open()?;
        message.check_direct()?;
        self.subscription(key)?;
        let (prepared, _) = self.prepare(&key.topic, message)?;
        self.publish_to_trigger(key, &prepared.payload, &prepared.metadata)
            .await?;
        Ok(prepared.receipt())
    }

    pub(crate) async fn publish_one(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<PublishReceipt> {
        self.ensure_open()?;
        let (prepared, spec) = self.prepare(topic, message)?;
        if prepared.metadata.idempotency_key.is_some() {
            // Boxed: a keyed publish's future is large, and inline it would double the size
            // of every plain publish's future (moved whole when a caller spawns or collects it).
            let keyed = idempotency::publish_keyed(self, &prepared, spec.idempotency_window);
            return Box::pin(keyed).await;
        }
        self.publish_prepared(&prepared).await?;
        Ok(prepared.receipt())
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

pub(crate) fn refused(target: &str) -> Error {
    Error::Broker {
        operation: "publish",
        source: format!(
            "RabbitMQ refused the message for {target:?} (nack): check the broker's memory \
             and disk alarms and the queue's length limits"
        )
        .into(),
    }
}

/// `err` for the first of `count` messages of a batch that could not be sent, and the same
/// failure, said again, for each of the others.
fn each_fails(count: usize, err: Error) -> Vec<Result<()>> {
    let again = |err: &Error| match err {
        Error::Closed => Error::Closed,
        Error::Timeout { operation, timeout } => Error::Timeout {
            operation,
            timeout: *timeout,
        },
        Error::BrokerFull { .. } => blocked(),
        other => Error::BrokerUnavailable {
            message: other.to_string(),
            source: None,
        },
    };
    let mut outcomes = Vec::with_capacity(count);
    outcomes.extend((1..count).map(|_| Err(again(&err))));
    outcomes.insert(0, Err(err));
    outcomes
}

/// A message ready to publish.
pub(crate) struct Prepared {
    pub(crate) topic: TopicName,
    pub(crate) payload: Vec<u8>,
    pub(crate) metadata: Metadata,
    /// Not delivered before this delay has passed.
    pub(crate) delay: Option<Duration>,
}

impl Prepared {
    /// Neither keyed nor delayed: published straight to its topic's exchange.
    fn is_plain(&self) -> bool {
        self.metadata.idempotency_key.is_none() && self.delay.is_none()
    }

    /// The receipt of this message, published.
    fn receipt(&self) -> PublishReceipt {
        PublishReceipt {
            message_id: self.metadata.id.clone(),
            duplicate: false,
        }
    }
}
