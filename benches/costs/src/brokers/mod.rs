//! Broker client rows: topiq's adapter and the raw client it is built on, doing the same work
//! against the same broker, so their instructions per message compare client CPU without the
//! machine's noise (the broker runs in a process of its own, which callgrind does not count).
//!
//! Each side publishes its messages one at a time (a publish awaits its acknowledgement or
//! publisher confirm before the next), and the end-to-end rows then consume them (prefetch
//! `PREFETCH`), read each payload as JSON and acknowledge it.

pub(crate) mod jetstream;
pub(crate) mod rabbitmq;

use futures::StreamExt;
use serde_json::Value;
use topiq_adapter::{
    Adapter, ConsumeOptions, NewMessage, SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec,
    TriggerName,
};

use crate::rows::{RowError, failed, message};

/// Deliveries a consumer holds unsettled, on both sides.
pub(crate) const PREFETCH: u16 = 64;

/// Declares topic `name` with one trigger, `t`.
pub(crate) async fn declare<A: Adapter>(
    adapter: &A,
    name: &str,
) -> Result<(TopicName, SubscriptionKey), RowError> {
    let topic = TopicName::new(name).map_err(failed)?;
    let key = SubscriptionKey::new(topic.clone(), TriggerName::new("t").map_err(failed)?);
    adapter
        .declare_topic(TopicSpec::new(topic.clone()))
        .await
        .map_err(failed)?;
    adapter
        .declare_subscription(SubscriptionSpec::new(key.clone()))
        .await
        .map_err(failed)?;
    Ok((topic, key))
}

/// topiq's side: publishes `messages` one at a time, then (`consume`) takes and acks each.
pub(crate) async fn topiq_side<A: Adapter>(
    adapter: A,
    name: &str,
    messages: u64,
    consume: bool,
) -> Result<(), RowError> {
    let (topic, key) = declare(&adapter, name).await?;
    let template = std::sync::Arc::new(message());
    for _ in 0..messages {
        adapter
            .publish(&topic, NewMessage::new(std::sync::Arc::clone(&template)))
            .await
            .map_err(failed)?;
    }
    if consume {
        let mut deliveries = adapter
            .consume(&key, ConsumeOptions::with_prefetch(u32::from(PREFETCH)))
            .await
            .map_err(failed)?;
        for _ in 0..messages {
            let delivery = deliveries
                .next()
                .await
                .ok_or_else(|| failed("the subscription ended"))?
                .map_err(failed)?;
            std::hint::black_box(&delivery.envelope().data);
            delivery.ack().await.map_err(failed)?;
        }
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
