//! Broker client rows: topiq's adapter and the raw client it is built on, doing the same work
//! against the same broker, so their instructions per message compare client CPU without the
//! machine's noise (the broker runs in a process of its own, which callgrind does not count).
//!
//! Each side publishes its messages one at a time (a publish awaits its acknowledgement or
//! publisher confirm before the next) or in batches of `BATCH` (every message of a batch
//! sent, then every acknowledgement awaited), and the end-to-end rows then consume them
//! (prefetch `PREFETCH`), read each payload as JSON and acknowledge it.

pub(crate) mod jetstream;
pub(crate) mod rabbitmq;

use serde_json::Value;
use topiq_adapter::{Adapter, NewMessage};

use crate::rows::{RowError, declare, failed, message, take_and_ack};

/// Deliveries a consumer holds unsettled, on both sides.
pub(crate) const PREFETCH: u16 = 64;

/// Messages a batch publishes (the last batch of a row may hold fewer).
pub(crate) const BATCH: u64 = 50;

/// What a broker row does with its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// Publishes one at a time, each awaiting its acknowledgement.
    Publish,
    /// Publishes in batches of [`BATCH`]: all sent, then every acknowledgement awaited.
    Batches,
    /// Publishes one at a time, then consumes, reads and acks each.
    EndToEnd,
}

/// The sizes of the batches `messages` make: [`BATCH`] each, the rest in the last.
pub(crate) fn batches(messages: u64) -> impl Iterator<Item = usize> {
    let mut left = messages;
    std::iter::from_fn(move || {
        let size = left.min(BATCH);
        left -= size;
        (size > 0).then_some(size as usize)
    })
}

/// topiq's side: publishes `messages` (one at a time or in batches, as `load` says), then,
/// end to end, takes and acks each.
pub(crate) async fn topiq_side<A: Adapter>(
    adapter: A,
    name: &str,
    messages: u64,
    load: Load,
) -> Result<(), RowError> {
    let (topic, key) = declare(&adapter, name).await?;
    let template = std::sync::Arc::new(message());
    if load == Load::Batches {
        for size in batches(messages) {
            let batch = (0..size)
                .map(|_| NewMessage::new(std::sync::Arc::clone(&template)))
                .collect();
            let receipts = adapter.publish_batch(&topic, batch).await.map_err(failed)?;
            for receipt in receipts {
                receipt.map_err(failed)?;
            }
        }
    } else {
        for _ in 0..messages {
            adapter
                .publish(&topic, NewMessage::new(std::sync::Arc::clone(&template)))
                .await
                .map_err(failed)?;
        }
    }
    if load == Load::EndToEnd {
        take_and_ack(&adapter, &key, u32::from(PREFETCH), messages).await?;
    }
    adapter.close().await.map_err(failed)
}

/// The payload a raw side sends: the rows' message as JSON, written per message as topiq
/// writes it.
pub(crate) fn raw_payload(template: &Value) -> Result<Vec<u8>, RowError> {
    serde_json::to_vec(template).map_err(failed)
}

/// What a raw consumer does with a payload: read it as JSON, as topiq does for a handler.
pub(crate) fn read_payload(payload: &[u8]) -> Result<(), RowError> {
    let data: Value = serde_json::from_slice(payload).map_err(failed)?;
    std::hint::black_box(&data);
    Ok(())
}
