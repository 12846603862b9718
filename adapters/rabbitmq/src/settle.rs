//! Settling a delivery on its channel: ack, requeue or discard, each bounded in time.

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicRejectOptions};
use topiq_adapter::{Error, Result};

/// How a delivery goes back to the broker.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Settle {
    Ack,
    /// Back to the queue (delivered again, counted).
    Requeue,
    /// Dropped (a message topiq cannot read).
    Discard,
}

/// Acks or rejects a delivery on its channel, bounded by `timeout`: lapin's settlement can
/// wait forever on a connection that died under it, and a consumer waiting on it would stop.
pub(crate) async fn settle(
    acker: &lapin::Acker,
    how: Settle,
    operation: &'static str,
    timeout: Duration,
) -> Result<()> {
    let settling = async {
        match how {
            Settle::Ack => acker.ack(BasicAckOptions::default()).await,
            Settle::Requeue => acker.reject(BasicRejectOptions { requeue: true }).await,
            Settle::Discard => acker.reject(BasicRejectOptions { requeue: false }).await,
        }
    };
    match tokio::time::timeout(timeout, settling).await {
        Ok(Ok(true)) => Ok(()),
        // lapin's answer when the delivery's channel closed: the broker returned it already.
        Ok(Ok(false)) => Err(Error::BrokerUnavailable {
            message: format!(
                "RabbitMQ: cannot {operation}: the delivery's channel closed, so the broker \
                 returned the message to its queue"
            ),
            source: None,
        }),
        Ok(Err(err)) => Err(Error::Broker {
            operation,
            source: Box::new(err),
        }),
        Err(_) => Err(Error::Timeout { operation, timeout }),
    }
}
