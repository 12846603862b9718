//! Publishing: a message prepared once (payload, metadata, subject), sent and confirmed by
//! the server's `PubAck`, sent again with the same `Nats-Msg-Id` when no answer came, and
//! refused at once when the server says why (a full stream).

use std::future::IntoFuture;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use topiq_adapter::{
    Error, NewMessage, PublishReceipt, Result, SubscriptionKey, Timestamp, TopicName, check_size,
};

use crate::codec::{self, Headers, Metadata, Stamp};
use crate::layout::header;
use crate::{DeclaredTopic, Shared, idempotency};

/// What a publish's acknowledgement future gives.
type AckResult =
    std::result::Result<jetstream::publish::PublishAck, jetstream::context::PublishError>;

/// Polls `future` once: its output when it is ready at once.
async fn poll_once<F: std::future::Future>(
    mut future: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx))).await
}

/// A publish is sent again (same id) until this many acknowledgement timeouts have passed.
pub(crate) const PUBLISH_TRIES: u32 = 3;

/// How long a publish answered by no stream (no responders) is retried: a cluster elects a
/// stream's new leader within this.
const NO_RESPONDERS_RETRY: Duration = Duration::from_secs(12);

impl Shared {
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
    pub(crate) async fn publish_confirmed_with(
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
        // The first try starts at once: only a try after it reads the clock first.
        while tries == 0 || tokio::time::Instant::now() < deadline {
            if tries > 0 {
                tokio::time::sleep(backoff.min(deadline - tokio::time::Instant::now())).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            tries += 1;
            // Every try, its acknowledgement included, ends by the deadline.
            let first = tries == 1;
            let attempt = self.try_publish(&subject, headers(), payload.clone(), deadline, first);
            let ack = match attempt.await {
                None => break,
                Some(Err(err)) => {
                    last_error = Some(err);
                    continue;
                }
                Some(Ok(ack)) => ack,
            };
            match ack {
                Ok(ack) => return Ok(ack),
                Err(err) if worth_another_try(&err, started.elapsed()) => {
                    last_error = Some(Box::new(err));
                }
                // The server answered no (a full stream, say): final, and said as it is.
                Err(err) => return Err(refusal(&subject, err)),
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

    /// One try: sends the message and waits for its acknowledgement, both by `deadline`
    /// (`None` once it passed). The hot path arms no timer of its own: sending into the
    /// client's buffer is ready at once unless the connection is backed up, and the wait for
    /// the acknowledgement is bounded by the client itself: a `PublishAckFuture` times out
    /// after the context's `timeout`, which `connect` sets to `publish_timeout`. Only a send
    /// that waits, or a try that could outlast the deadline, gets a timer. The `first` try,
    /// sent at once, started `PUBLISH_TRIES` client timeouts before the deadline: its
    /// acknowledgement cannot outlast it, so it reads no clock.
    async fn try_publish(
        &self,
        subject: &Subject,
        headers: HeaderMap,
        payload: Bytes,
        deadline: tokio::time::Instant,
        first: bool,
    ) -> Option<std::result::Result<AckResult, topiq_adapter::BoxError>> {
        let send = self
            .js
            .publish_with_headers(subject.clone(), headers, payload);
        let mut send = std::pin::pin!(send);
        let (sent, at_once) = match poll_once(send.as_mut()).await {
            std::task::Poll::Ready(sent) => (sent, true),
            std::task::Poll::Pending => {
                (tokio::time::timeout_at(deadline, send).await.ok()?, false)
            }
        };
        let acknowledgement = match sent {
            Ok(acknowledgement) => acknowledgement,
            Err(err) => return Some(Err(Box::new(err))),
        };
        if (first && at_once)
            || deadline.saturating_duration_since(tokio::time::Instant::now())
                > self.config.publish_timeout
        {
            return Some(Ok(acknowledgement.await));
        }
        tokio::time::timeout_at(deadline, acknowledgement.into_future())
            .await
            .ok()
            .map(Ok)
    }

    /// Everything a publish sends, built before anything is sent (so bad input fails alone).
    pub(crate) fn prepare(&self, topic: &TopicName, message: NewMessage) -> Result<Prepared> {
        self.prepare_for(&*self.declared_topic(topic)?, topic, message)
    }

    /// [`Shared::prepare`] for a topic already looked up (a batch looks it up once).
    fn prepare_for(
        &self,
        declared: &DeclaredTopic,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<Prepared> {
        // What `NewMessage::validate` checks, in its order, the data's depth as it is written
        // and its size from the bytes; then the lane (as on every adapter).
        message.validate_fields()?;
        let payload = codec::encode(&message.data)?;
        check_size(topic, payload.len(), declared.spec.max_message_bytes)?;
        message.check_lane(topic, declared.spec.lanes)?;
        let now = Timestamp::now();
        let due = message.deliver_at.filter(|at| *at > now);
        let lane = message.lane;
        let metadata = Metadata::enqueued(
            now,
            message.trace,
            message.idempotency_key,
            declared.spec.retention,
            due.unwrap_or(now),
        )
        .in_lane(lane);
        Ok(match due {
            // Forwarded later by the scheduler: the copy on the topic carries the enqueue time.
            Some(at) => Prepared {
                topic: topic.clone(),
                subject: self.layout.delay_subject(topic).into(),
                // The message id, not the idempotency key: keys are decided by the ledger
                // (`idempotency.rs`), and the delay stream's window is not the topic's.
                dedup_id: format!("{topic}:{}", metadata.id),
                metadata,
                payload,
                deliver_at: Some(at),
            },
            None if lane > 0 => Prepared {
                topic: topic.clone(),
                subject: self.layout.lane_subject(topic, lane).into(),
                dedup_id: String::new(),
                metadata,
                payload,
                deliver_at: None,
            },
            None => Prepared {
                topic: topic.clone(),
                subject: declared.subject.clone(),
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

    /// Publishes a new message to one trigger's own subject (a replay), confirmed.
    pub(crate) async fn publish_to_trigger(
        &self,
        key: &SubscriptionKey,
        message: NewMessage,
    ) -> Result<PublishReceipt> {
        message.check_direct()?;
        self.subscription(key)?;
        let mut prepared = self.prepare(&key.topic, message)?;
        let lane = prepared.metadata.lane;
        self.ensure_direct_consumer(&key.topic, &key.trigger, lane)
            .await?;
        prepared.subject = self
            .layout
            .direct_subject(&key.topic, &key.trigger, lane)
            .into();
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
    /// A send or an acknowledgement that has to wait does so by one deadline for the whole
    /// batch (`publish_timeout` from the first wait); a message whose send or
    /// acknowledgement failed is then sent again alone (same dedup id), and keyed messages
    /// are published alone. Fails as a whole only when `topic` was not declared.
    pub(crate) async fn publish_many(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Result<PublishReceipt>>> {
        let declared = self.declared_topic(topic)?;
        let mut deadline = BatchDeadline::new(self.config.publish_timeout);
        // Each message prepared, and beside it its acknowledgement's future (`None`: not
        // sent). Two vectors, so a prepared message is not moved with its future.
        let mut prepared = Vec::with_capacity(messages.len());
        let mut acks = Vec::with_capacity(messages.len());
        for message in messages {
            let ready = self.prepare_for(&declared, topic, message);
            let ack = match &ready {
                // A keyed message claims its key first: published alone, below.
                Ok(ready) if ready.metadata.idempotency_key.is_none() => {
                    let subject = ready.subject.clone();
                    let (headers, payload) = (ready.headers(), ready.payload.clone());
                    let send = self.js.publish_with_headers(subject, headers, payload);
                    deadline.bound(send).await.and_then(|sent| sent.ok())
                }
                _ => None,
            };
            prepared.push(ready);
            acks.push(ack);
        }
        let acknowledged = acknowledgements(acks, &mut deadline).await;
        let settled = |(ready, acked): (&Result<Prepared>, &bool)| ready.is_err() || *acked;
        if prepared.iter().zip(&acknowledged).all(settled) {
            // The common case: every message answered, in one pass.
            return Ok(prepared
                .into_iter()
                .map(|ready| ready.map(Prepared::into_receipt))
                .collect());
        }
        Ok(self.publish_rest(prepared, acknowledged).await)
    }

    /// The receipts of a batch some of whose messages are not answered yet: those (keyed
    /// messages, and those without an acknowledgement) are published alone, concurrently, so
    /// the batch ends within one publish's bound of this.
    async fn publish_rest(
        &self,
        prepared: Vec<Result<Prepared>>,
        acknowledged: Vec<bool>,
    ) -> Vec<Result<PublishReceipt>> {
        let mut alone = Vec::new();
        let slots: Vec<Option<Result<PublishReceipt>>> = prepared
            .into_iter()
            .zip(acknowledged)
            .map(|(ready, acked)| match ready {
                Err(err) => Some(Err(err)),
                // Only an unkeyed message was sent, so only one can be acknowledged.
                Ok(ready) if acked => Some(Ok(ready.into_receipt())),
                Ok(ready) => {
                    alone.push(ready);
                    None
                }
            })
            .collect();
        let mut published =
            futures::future::join_all(alone.into_iter().map(|ready| self.publish_alone(ready)))
                .await
                .into_iter();
        slots
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| {
                    published
                        .next()
                        .unwrap_or_else(|| Err(topiq_adapter_kit::batch_unanswered()))
                })
            })
            .collect()
    }

    /// A message of a batch published as a single publish is: a keyed one through its key's
    /// ledger, any other sent again with its own tries (same dedup id).
    async fn publish_alone(&self, ready: Prepared) -> Result<PublishReceipt> {
        if ready.metadata.idempotency_key.is_some() {
            return Box::pin(idempotency::publish_keyed(self, ready)).await;
        }
        self.publish_prepared(&ready).await?;
        Ok(ready.receipt())
    }
}

/// Whether the server acknowledged each of a batch's messages (`None`: not sent): awaited in
/// order, as they come (by the time an earlier one is in, most later ones are too, and one
/// ready at its first poll arms no timer; polling them all at once arms one each), by
/// `deadline`.
async fn acknowledgements(
    acks: Vec<Option<jetstream::context::PublishAckFuture>>,
    deadline: &mut BatchDeadline,
) -> Vec<bool> {
    let mut acknowledged = Vec::with_capacity(acks.len());
    for ack in acks {
        let acked = match ack {
            Some(future) => deadline
                .bound(future.into_future())
                .await
                .is_some_and(|ack| ack.is_ok()),
            None => false,
        };
        acknowledged.push(acked);
    }
    acknowledged
}

/// One deadline for every wait of a batch: `timeout` from the first wait, the clock read
/// only then (a batch whose sends and acknowledgements are all ready when asked reads none).
struct BatchDeadline {
    timeout: Duration,
    at: Option<tokio::time::Instant>,
}

impl BatchDeadline {
    fn new(timeout: Duration) -> Self {
        Self { timeout, at: None }
    }

    /// `future`'s output, if it is ready now or by the deadline.
    async fn bound<F: std::future::Future>(&mut self, future: F) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        if let std::task::Poll::Ready(output) = poll_once(future.as_mut()).await {
            return Some(output);
        }
        let timeout = self.timeout;
        let at = *self
            .at
            .get_or_insert_with(|| tokio::time::Instant::now() + timeout);
        tokio::time::timeout_at(at, future).await.ok()
    }
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
    /// The receipt of this message, published, taken from it.
    pub(crate) fn into_receipt(self) -> PublishReceipt {
        PublishReceipt {
            message_id: self.metadata.id,
            duplicate: false,
        }
    }

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

/// No answer (or no JetStream yet, as right after a server restart): sent again with the
/// same `Nats-Msg-Id`, so it cannot duplicate. "No responders" reads as `StreamNotFound`:
/// also what a stream that is really gone answers, so it is retried only as long as a leader
/// election takes.
fn worth_another_try(err: &jetstream::context::PublishError, since_first_try: Duration) -> bool {
    matches!(
        err.kind(),
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
    ) || (err.kind() == PublishErrorKind::StreamNotFound && since_first_try < NO_RESPONDERS_RETRY)
}

/// The server's no to a publish to `subject`: `BrokerFull` for a full stream, else `Broker`.
fn refusal(subject: &Subject, err: jetstream::context::PublishError) -> Error {
    let full = is_full(&err);
    let refused = Box::new(Refused {
        subject: subject.to_string(),
        source: err,
    });
    if full {
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
