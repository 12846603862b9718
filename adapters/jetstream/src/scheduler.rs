//! Delayed messages on nats-server 2.9 (which has no message schedules): each waits in the
//! delay stream; the `scheduler` consumer NAKs it with its remaining delay (so nothing polls)
//! and, once due, forwards it to its topic with `Nats-Msg-Id` = its id, then acks it.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use topiq_adapter::{Result, Timestamp, TopicName};

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

async fn release_when_due(shared: &Shared, message: jetstream::Message) {
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
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(header::MSG_ID, id.as_str());
    let forwarded = shared
        .publish_confirmed(
            shared.layout.topic_subject(&topic),
            headers,
            message.payload.clone(),
        )
        .await;
    match forwarded {
        Ok(_) => {
            if let Err(err) = message.double_ack().await {
                tracing::warn!(error = %err, %id, "forwarded a delayed message but its ack was lost; the topic's duplicate window absorbs the second copy");
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, %id, "cannot forward a due message; retrying in 1s");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}
