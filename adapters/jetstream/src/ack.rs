//! Settling a delivery through its `$JS.ACK` reply subject (ADR-15), which is all a received
//! message keeps of itself for that: the message (subject, headers, its copy of the payload)
//! is not carried, moved and kept alive with every delivery until it is settled.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt;

/// Where a delivery's acknowledgements go.
#[derive(Clone, Debug)]
pub(crate) struct AckSubject(Subject);

impl AckSubject {
    /// The reply subject of `message`; `None` when it has none (not a JetStream delivery).
    pub(crate) fn of(message: &async_nats::Message) -> Option<Self> {
        message.reply.clone().map(Self)
    }

    /// Acknowledges the delivery (an empty payload, as `jetstream::Message::ack`), without
    /// waiting for the server.
    pub(crate) async fn ack(&self, client: &Client) -> Result<(), async_nats::Error> {
        self.publish(client, Bytes::new()).await
    }

    /// Sends `kind` without waiting for the server (as `jetstream::Message::ack_with`).
    pub(crate) async fn send(
        &self,
        client: &Client,
        kind: AckKind,
    ) -> Result<(), async_nats::Error> {
        self.publish(client, kind.into()).await
    }

    /// Sends `kind` and waits up to `timeout` for the server to say it took it (as
    /// `jetstream::Message::double_ack_with`).
    pub(crate) async fn confirm(
        &self,
        client: &Client,
        kind: AckKind,
        timeout: Duration,
    ) -> Result<(), async_nats::Error> {
        let inbox = client.new_inbox();
        let mut answers = client.subscribe(inbox.clone()).await?;
        client
            .publish_with_reply(self.0.clone(), inbox, kind.into())
            .await?;
        match tokio::time::timeout(timeout, answers.next()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(Box::new(std::io::Error::other(
                "the subscription for the acknowledgement's answer ended",
            ))),
            Err(_) => Err(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer to an acknowledgement within {timeout:?}"),
            ))),
        }
    }

    async fn publish(&self, client: &Client, payload: Bytes) -> Result<(), async_nats::Error> {
        client
            .publish(self.0.clone(), payload)
            .await
            .map_err(Into::into)
    }
}
