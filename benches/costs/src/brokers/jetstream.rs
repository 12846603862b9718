//! JetStream rows: `JetStreamAdapter` against raw async-nats, on a nats-server of the row's
//! own (a free port, a temporary store, stopped when the row ends).

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use topiq_jetstream::{JetStreamAdapter, JetStreamConfig};
use topiq_testkit::NatsServer;

use super::{Load, PREFETCH, batches, raw_payload, read_payload, topiq_side};
use crate::rows::{RowError, failed, message};

/// topiq: publish (and consume) through the adapter.
pub(crate) async fn topiq(messages: u64, load: Load) -> Result<(), RowError> {
    let server = NatsServer::start();
    let adapter = JetStreamAdapter::connect(JetStreamConfig {
        url: Some(server.url()),
        connection: topiq_jetstream::ConnectionOptions {
            prefix: "tq".to_owned(),
            ..Default::default()
        },
        ..JetStreamConfig::default()
    })
    .await
    .map_err(failed)?;
    topiq_side(adapter, "costs", messages, load).await
}

/// Raw async-nats doing what the adapter does: an interest stream with a durable pull
/// consumer from the start, every publish with a `Nats-Msg-Id` (topiq's deduplication id),
/// names as long as topiq's (`tq.t.costs`, `tq_costs`).
pub(crate) async fn raw(messages: u64, load: Load) -> Result<(), RowError> {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.map_err(failed)?;
    let js = jetstream::new(client);
    let subject = "rw.t.costs";
    let stream = js
        .create_stream(stream::Config {
            name: "rw_costs".to_owned(),
            subjects: vec![subject.to_owned()],
            retention: stream::RetentionPolicy::Interest,
            ..Default::default()
        })
        .await
        .map_err(failed)?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("t".to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(failed)?;
    if load == Load::Batches {
        publish_in_batches(&js, subject, messages).await?;
    } else {
        publish_one_at_a_time(&js, subject, messages).await?;
    }
    if load == Load::EndToEnd {
        let mut received = consumer
            .stream()
            .max_messages_per_batch(usize::from(PREFETCH))
            .messages()
            .await
            .map_err(failed)?;
        for _ in 0..messages {
            let message = received
                .next()
                .await
                .ok_or_else(|| failed("the consumer's stream ended"))?
                .map_err(failed)?;
            read_payload(&message.payload)?;
            message.ack().await.map_err(failed)?;
        }
    }
    Ok(())
}

/// A raw publish as topiq's: the message's JSON with a `Nats-Msg-Id`, sent; the
/// acknowledgement's future returned.
async fn send(
    js: &jetstream::Context,
    subject: &'static str,
    template: &serde_json::Value,
) -> Result<jetstream::context::PublishAckFuture, RowError> {
    let mut headers = async_nats::HeaderMap::new();
    // A UUIDv7, as topiq's ids, made by the uuid crate as a raw client's user would.
    let mut id = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut id);
    headers.insert("Nats-Msg-Id", &*id);
    let payload = raw_payload(template)?;
    js.publish_with_headers(subject, headers, payload.into())
        .await
        .map_err(failed)
}

/// Publishes `messages`, each awaiting its acknowledgement before the next.
async fn publish_one_at_a_time(
    js: &jetstream::Context,
    subject: &'static str,
    messages: u64,
) -> Result<(), RowError> {
    let template = message();
    for _ in 0..messages {
        send(js, subject, &template).await?.await.map_err(failed)?;
    }
    Ok(())
}

/// Publishes `messages` in batches: every message of a batch sent, then its acknowledgements
/// awaited in order.
async fn publish_in_batches(
    js: &jetstream::Context,
    subject: &'static str,
    messages: u64,
) -> Result<(), RowError> {
    let template = message();
    for size in batches(messages) {
        let mut acks = Vec::with_capacity(size);
        for _ in 0..size {
            acks.push(send(js, subject, &template).await?);
        }
        for ack in acks {
            ack.await.map_err(failed)?;
        }
    }
    Ok(())
}
