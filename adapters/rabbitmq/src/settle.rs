//! Settling a delivery on its channel: ack, requeue or discard, each bounded in time.

use lapin::options::{BasicAckOptions, BasicRejectOptions};
use std::time::Duration;

use topiq_adapter::{Error, Result};
use topiq_adapter_kit::Deadlines;

use crate::Shared;

/// How a delivery goes back to the broker.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Settle {
    Ack,
    /// Back to the queue (delivered again, counted).
    Requeue,
    /// Dropped (a message topiq cannot read).
    Discard,
}

impl Shared {
    /// Acks or rejects a delivery on its channel, bounded by `publish_timeout` through the
    /// adapter's deadlines ([`settle`]).
    pub(crate) async fn settle_delivery(
        &self,
        acker: &lapin::Acker,
        how: Settle,
        operation: &'static str,
    ) -> Result<()> {
        let bound = (&self.deadlines, self.config.publish_timeout);
        settle(acker, how, operation, bound).await
    }
}

/// Acks or rejects a delivery on its channel, bounded by `timeout` through `deadlines`:
/// lapin's settlement can wait forever on a connection that died under it, and a consumer
/// waiting on it would stop.
pub(crate) async fn settle(
    acker: &lapin::Acker,
    how: Settle,
    operation: &'static str,
    (deadlines, timeout): (&Deadlines, Duration),
) -> Result<()> {
    let settling = async {
        match how {
            Settle::Ack => acker.ack(BasicAckOptions::default()).await,
            Settle::Requeue => acker.reject(BasicRejectOptions { requeue: true }).await,
            Settle::Discard => acker.reject(BasicRejectOptions { requeue: false }).await,
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    match deadlines.bound(deadline, settling).await {
        Some(Ok(true)) => Ok(()),
        // lapin's answer when the delivery's channel closed: the broker returned it already.
        Some(Ok(false)) => Err(Error::BrokerUnavailable {
            message: format!(
                "RabbitMQ: cannot {operation}: the delivery's channel closed, so the broker \
                 returned the message to its queue"
            ),
            source: None,
        }),
        Some(Err(err)) => Err(Error::Broker {
            operation,
            source: Box::new(err),
        }),
        None => Err(Error::Timeout { operation, timeout }),
    }
}
