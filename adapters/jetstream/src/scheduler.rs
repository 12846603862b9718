//! Delayed messages on nats-server 2.9 (which has no message schedules): each waits in the
//! delay stream; the `scheduler` consumer NAKs it with its remaining delay (so nothing polls)
//! and, once due, forwards it to its topic with `Nats-Msg-Id` = its id, then acks it. Each
//! forward runs on its own task, so one that cannot finish holds up no other message.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures::StreamExt;
use topiq_adapter::{Error, Failure, FailureKind, Result, SubscriptionKey, Timestamp, TopicName};

use crate::codec::{self, Headers, Metadata, Stamp};
use crate::layout::{Layout, header};
use crate::{Shared, broker};

/// The longest single NAK delay; longer waits are NAKed again when it runs out.
const MAX_NAK_DELAY: Duration = Duration::from_secs(24 * 3600);

pub(crate) async fn ensure_consumer(
    shared: &Shared,
) -> Result<jetstream::consumer::Consumer<pull::Config>> {
    let stream = shared
        .js
        .get_stream_no_info(shared.layout.delay_stream())
        .await
        .map_err(broker("get delay stream"))?;
    stream
        .get_or_create_consumer(
            Layout::SCHEDULER,
            Shared::consumer_config(
                Layout::SCHEDULER.to_owned(),
                shared.layout.delay_wildcard(),
                Duration::from_secs(30),
                jetstream::consumer::DeliverPolicy::All,
            ),
        )
        .await
        .map_err(broker("get scheduler consumer"))
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    mut consumer: jetstream::consumer::Consumer<pull::Config>,
) {
    loop {
        if shared.closed.is_cancelled() {
            return;
        }
        let batch = consumer
            .batch()
            .max_messages(100)
            .expires(Duration::from_secs(5))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(error = %err, "the delay scheduler cannot pull; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Ok(again) = ensure_consumer(&shared).await {
                    consumer = again;
                }
                continue;
            }
        };
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => release_when_due(&shared, message).await,
                Err(err) => {
                    tracing::warn!(error = %err, "the delay scheduler's pull was interrupted; pulling again in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Ok(again) = ensure_consumer(&shared).await {
                        consumer = again;
                    }
                    break;
                }
            }
        }
    }
}

async fn release_when_due(shared: &Arc<Shared>, message: jetstream::Message) {
    let text = |name: async_nats::HeaderName| {
        message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .map(|value| value.as_str().to_owned())
    };
    let due = text(header::DELIVER_AT).and_then(|at| Timestamp::from_str(&at).ok());
    let topic = text(header::TOPIC).and_then(|topic| TopicName::new(topic).ok());
    let (Some(due), Some(topic), Some(id)) = (due, topic, text(header::ID)) else {
        tracing::error!(subject = %message.subject, "a delayed message without its topiq headers; terminating it");
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    let remaining = Duration::try_from(due.duration_since(Timestamp::now())).unwrap_or_default();
    if !remaining.is_zero() {
        // A day at most per NAK: the server's delay is an int64 of nanoseconds.
        let wait = remaining.min(MAX_NAK_DELAY);
        let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
        return;
    }
    // Forwarded on a task of its own (at most FORWARDS at once): one message whose topic
    // cannot take it holds up no other topic's delayed messages.
    let Ok(permit) = Arc::clone(&shared.forwards).acquire_owned().await else {
        return;
    };
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        forward(&shared, message, topic, id).await;
        drop(permit);
    });
}

/// Publishes a due message to its topic (`Nats-Msg-Id` = its id, so a second forward is
/// absorbed), then acks it. A forward that fails is tried again after a growing wait, unless
/// the topic's stream is gone (the server says so): then nothing can take the message, and
/// it is dead-lettered on the topic's triggers as `undeliverable`, with the reason.
async fn forward(shared: &Shared, message: jetstream::Message, topic: TopicName, id: String) {
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(header::MSG_ID, id.as_str());
    let lane = headers
        .get(header::LANE)
        .and_then(|lane| lane.as_str().parse::<u32>().ok())
        .unwrap_or(0);
    let lane = shared
        .topic(&topic)
        .map_or(0, |spec| spec.lane_or_first(lane));
    let forwarded = shared
        .publish_confirmed(
            shared.layout.lane_subject(&topic, lane),
            headers,
            message.payload.clone(),
        )
        .await;
    let err = match forwarded {
        Ok(_) => {
            if let Err(err) = message.double_ack().await {
                tracing::warn!(error = %err, %id, "forwarded a delayed message but its ack was lost; the topic's duplicate window absorbs the second copy");
            }
            return;
        }
        Err(err) => err,
    };
    if topic_stream_is_gone(shared, &topic).await {
        match dead_letter_undeliverable(shared, &message, &topic, &err).await {
            Ok(()) => return,
            Err(dlq_err) => {
                tracing::error!(error = %dlq_err, %id, %topic, "cannot dead-letter an undeliverable delayed message; it is tried again");
            }
        }
    }
    let tries = message.info().map_or(1, |info| info.delivered.max(1));
    let wait = FORWARD_BACKOFF
        .saturating_mul(1 << tries.min(8))
        .min(MAX_FORWARD_BACKOFF);
    tracing::warn!(error = %err, %id, %topic, retry_in = ?wait, "cannot forward a due message");
    let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
}

/// True only when the server says the topic's stream does not exist (not when it cannot be
/// asked: an election, a lost connection).
async fn topic_stream_is_gone(shared: &Shared, topic: &TopicName) -> bool {
    match shared
        .js
        .get_stream(shared.layout.topic_stream(topic))
        .await
    {
        Ok(_) => false,
        Err(err) => matches!(
            err.kind(),
            jetstream::context::GetStreamErrorKind::JetStream(ref js)
                if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
        ),
    }
}

/// The first wait after a failed forward; it doubles up to [`MAX_FORWARD_BACKOFF`].
const FORWARD_BACKOFF: Duration = Duration::from_millis(250);
const MAX_FORWARD_BACKOFF: Duration = Duration::from_secs(30);

/// How many due messages are forwarded at once.
pub(crate) const FORWARDS: usize = 32;

/// Writes a DLQ record of an undeliverable delayed message for every trigger of its topic this
/// process knows, then terminates it. Fails (and the message stays) when no trigger is known
/// or a record cannot be written.
async fn dead_letter_undeliverable(
    shared: &Shared,
    message: &jetstream::Message,
    topic: &TopicName,
    reason: &Error,
) -> Result<()> {
    let triggers = shared.triggers_of(topic);
    if triggers.is_empty() {
        return Err(Error::UnknownTopic {
            topic: topic.clone(),
        });
    }
    let stored_at = message.info().map_or_else(
        |_| Timestamp::now(),
        |info| codec::stored_at(&info.published),
    );
    let metadata = Metadata::from_headers(message.headers.as_ref(), stored_at)?;
    let data = Arc::new(codec::decode(&message.payload)?);
    for trigger in triggers {
        let key = SubscriptionKey::new(topic.clone(), trigger.clone());
        let failure = Failure::new(
            FailureKind::Undeliverable,
            format!("the delayed message could not be published to its topic: {reason}"),
        );
        let record = metadata.dead_letter(&key, Arc::clone(&data), 0, failure);
        let payload = serde_json::to_vec(&record).map_err(broker("encode DLQ record"))?;
        let dedup = format!("undeliverable:{trigger}:{}", metadata.id);
        shared
            .publish_confirmed(
                shared.layout.dlq_subject(topic, &trigger),
                metadata.headers(&dedup, Stamp::Copy),
                payload.into(),
            )
            .await?;
    }
    tracing::error!(id = %metadata.id, %topic, error = %reason, "a delayed message could not be published to its topic; dead-lettered as undeliverable");
    message
        .double_ack_with(AckKind::Term)
        .await
        .map_err(|err| Error::Broker {
            operation: "terminate an undeliverable delayed message",
            source: err,
        })
}

impl Shared {
    /// Starts the delay scheduler (once) and keeps the delay stream's duplicate window at
    /// least `idempotency_window`, the longest of the declared topics': a keyed delayed
    /// message that is published again (by a process taking its key over) is then stored once.
    pub(crate) async fn start_scheduler(
        self: &Arc<Self>,
        idempotency_window: Duration,
    ) -> Result<()> {
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
            let consumer = ensure_consumer(self).await?;
            scheduler.task = Some(tokio::spawn(run(Arc::clone(self), consumer)));
        }
        Ok(())
    }
}
