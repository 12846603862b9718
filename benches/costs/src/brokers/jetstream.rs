//! JetStream rows: `JetStreamAdapter` against raw async-nats, on a nats-server of the row's
//! own (a free port, a temporary store, stopped when the row ends).

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use topiq_jetstream::{JetStreamAdapter, JetStreamConfig};
use topiq_testkit::NatsServer;

use super::{PREFETCH, raw_payload, read_payload, topiq_side};
use crate::rows::{RowError, failed, message};

/// topiq: publish (and `consume`) through the adapter.
pub(crate) async fn topiq(messages: u64, consume: bool) -> Result<(), RowError> {
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
    topiq_side(adapter, "costs", messages, consume).await
}

/// Raw async-nats doing what the adapter does: an interest stream with a durable pull
/// consumer from the start, every publish with a `Nats-Msg-Id` (topiq's deduplication id),
/// names as long as topiq's (`tq.t.costs`, `tq_costs`).
pub(crate) async fn raw(messages: u64, consume: bool) -> Result<(), RowError> {
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
    let template = message();
    for _ in 0..messages {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", topiq_adapter::MessageId::generate().as_str());
        let payload = raw_payload(&template)?;
        js.publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
    }
    if consume {
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
