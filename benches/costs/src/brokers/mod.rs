//! Broker client rows: topiq's adapter and the raw client it is built on, doing the same work
//! against the same broker, so their instructions per message compare client CPU without the
//! machine's noise (the broker runs in a process of its own, which callgrind does not count).
//!
//! Each side publishes its messages one at a time (a publish awaits its acknowledgement or
//! publisher confirm before the next), in batches of `BATCH` (every message of a batch
//! sent, then every acknowledgement awaited) or `BATCH` calls at a time (a new publish
//! started as each one is confirmed, as concurrent application tasks publish), and the
//! end-to-end rows then consume them
//! (prefetch `PREFETCH`), read each payload as JSON and acknowledge it.

pub(crate) mod jetstream;
pub(crate) mod rabbitmq;

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
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
    /// Keeps [`BATCH`] publish calls in flight, each awaiting its own acknowledgement.
    Concurrent,
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
    let template = Arc::new(message());
    if load == Load::Batches {
        for size in batches(messages) {
            let batch = (0..size)
                .map(|_| NewMessage::new(Arc::clone(&template)))
                .collect();
            let receipts = adapter.publish_batch(&topic, batch).await.map_err(failed)?;
            for receipt in receipts {
                receipt.map_err(failed)?;
            }
        }
    } else if load == Load::Concurrent {
        let publish = || adapter.publish(&topic, NewMessage::new(Arc::clone(&template)));
        in_flight(messages, publish).await?;
    } else {
        for _ in 0..messages {
            adapter
                .publish(&topic, NewMessage::new(Arc::clone(&template)))
                .await
                .map_err(failed)?;
        }
    }
    if load == Load::EndToEnd {
        take_and_ack(&adapter, &key, u32::from(PREFETCH), messages).await?;
    }
    adapter.close().await.map_err(failed)
}

/// Runs `messages` calls of `publish`, [`BATCH`] in flight at once: a new one started as
/// each one ends, the first failure returned.
pub(crate) async fn in_flight<F, T, E>(
    messages: u64,
    mut publish: impl FnMut() -> F,
) -> Result<(), RowError>
where
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut running: FuturesUnordered<F> = FuturesUnordered::new();
    for _ in 0..messages {
        if running.len() as u64 >= BATCH
            && let Some(done) = running.next().await
        {
            done.map_err(failed)?;
        }
        running.push(publish());
    }
    while let Some(done) = running.next().await {
        done.map_err(failed)?;
    }
    Ok(())
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
