//! Idempotency keys on RabbitMQ, which has no deduplication of its own.
//!
//! Each key gets two small classic queues, `x-max-length` 1 with `reject-publish` and the
//! topic's idempotency window as message TTL (and, a minute later, as queue expiry): the
//! *claim* queue, where the first publisher stores its message, and the *done* queue, where it
//! says the message reached its topic. The broker lets exactly one claim in, across every
//! process; a publisher whose claim is refused returns the first message's id. If the done
//! entry does not appear within `publish_timeout` (the first publisher died between its claim
//! and its publish), the later publisher publishes the claimed message itself, so a key whose
//! first publish failed halfway is never left with no message. Cost: two declarations and
//! three confirmed publishes per keyed publish; meant for keyed publishes at human rates
//! (orders, webhooks), not for every message of a firehose.

use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use topiq_adapter::{Error, MessageId, PublishReceipt, Result, Timestamp};

use crate::codec::{self, Metadata, Properties};
use crate::publish::Prepared;
use crate::settle::Settle;
use crate::topology::QueueDecl;
use crate::{Published, Shared};

/// How often a later publisher looks for the first one's done entry.
const DONE_POLL: Duration = Duration::from_millis(50);
/// A claim's header saying when a delayed message is due (epoch milliseconds).
const DELIVER_AT: &str = "topiq-deliver-at";

fn key_queue(name: String, window: Duration) -> QueueDecl {
    let millis = |duration: Duration| {
        AMQPValue::LongLongInt(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
    };
    QueueDecl {
        name,
        arguments: codec::arguments(&[
            ("x-queue-type", AMQPValue::LongString("classic".into())),
            ("x-max-length", AMQPValue::LongLongInt(1)),
            ("x-overflow", AMQPValue::LongString("reject-publish".into())),
            ("x-message-ttl", millis(window)),
            ("x-expires", millis(window + Duration::from_secs(60))),
        ]),
        binding: None,
        holds_delayed_of: None,
    }
}

/// Declares a key's queue for this call only (keys are not declared again on reconnect).
async fn declare(shared: &Shared, queue: &QueueDecl) -> Result<u32> {
    let session = shared.session().await?;
    shared
        .bounded("declare an idempotency key", async {
            let channel = session.owned_channel().await?;
            let count = queue.declare(&channel).await?;
            Ok(count)
        })
        .await
}

pub(crate) async fn publish_keyed(
    shared: &Shared,
    prepared: &Prepared,
    window: Duration,
) -> Result<PublishReceipt> {
    let key = prepared
        .metadata
        .idempotency_key
        .as_deref()
        .unwrap_or_default();
    let topic = &prepared.topic;
    let claim = key_queue(shared.layout.key_claim_queue(topic, key), window);
    let done = key_queue(shared.layout.key_done_queue(topic, key), window);
    declare(shared, &claim).await?;
    let mut properties = prepared.metadata.properties();
    if let Some(delay) = prepared.delay {
        let due = prepared.metadata.enqueued_at.as_millisecond()
            + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(DELIVER_AT.into(), AMQPValue::LongLongInt(due));
        properties = properties.with_headers(headers);
    }
    match shared
        .publish_confirmed("", &claim.name, &prepared.payload, || properties)
        .await?
    {
        Published::Stored => {
            shared.publish_prepared(prepared).await?;
            mark_done(shared, &done, &prepared.metadata.id).await?;
            Ok(PublishReceipt {
                message_id: prepared.metadata.id.clone(),
                duplicate: false,
            })
        }
        Published::Refused => {
            let first = first_of(shared, prepared, &claim, &done).await?;
            Ok(PublishReceipt {
                message_id: first,
                duplicate: true,
            })
        }
        Published::Returned => Err(Error::Broker {
            operation: "publish",
            source: format!("the idempotency claim queue {:?} is missing", claim.name).into(),
        }),
    }
}

async fn mark_done(shared: &Shared, done: &QueueDecl, id: &MessageId) -> Result<()> {
    declare(shared, done).await?;
    let properties = lapin::BasicProperties::default()
        .with_message_id(id.as_str().into())
        .with_delivery_mode(2);
    // Refused means a done entry is there already (a takeover's, with the same id).
    shared
        .publish_confirmed("", &done.name, b"", || properties)
        .await
        .map(|_| ())
}

/// The id of the message in `queue` (returned to it at once), if there is one.
async fn peek(shared: &Shared, queue: &QueueDecl) -> Result<Option<lapin::message::Delivery>> {
    let session = shared.session().await?;
    shared
        .bounded("read an idempotency key", async {
            let channel = session.owned_channel().await?;
            let got = channel
                .basic_get(queue.name.as_str().into(), BasicGetOptions::default())
                .await
                .map_err(|err| Error::Broker {
                    operation: "read idempotency key",
                    source: Box::new(err),
                })?;
            let delivery = got.map(|got| got.delivery);
            if let Some(delivery) = &delivery {
                let acker = &delivery.acker;
                shared
                    .settle_delivery(acker, Settle::Requeue, "read idempotency key")
                    .await?;
            }
            drop(channel);
            Ok(delivery)
        })
        .await
}

/// The first message's id for a refused claim: from the done entry once it is there; if it
/// does not come within `publish_timeout`, the claimed message is published from here.
async fn first_of(
    shared: &Shared,
    prepared: &Prepared,
    claim: &QueueDecl,
    done: &QueueDecl,
) -> Result<MessageId> {
    let deadline = tokio::time::Instant::now() + shared.config.publish_timeout;
    loop {
        declare(shared, done).await?;
        if let Some(entry) = peek(shared, done).await?
            && let Some(id) = entry.properties.message_id()
        {
            return Ok(MessageId::from_string(id.as_str()));
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(DONE_POLL).await;
    }
    let Some(claimed) = peek(shared, claim).await? else {
        // The claim ran out with the window meanwhile: nothing to return but a fresh try.
        return Err(Error::Timeout {
            operation: "idempotent publish (the first publisher with this key did not finish)",
            timeout: shared.config.publish_timeout,
        });
    };
    let metadata = Metadata::from_properties(&claimed.properties)?;
    let delay = codec::header_of(&claimed.properties, DELIVER_AT)
        .and_then(codec::as_i64)
        .and_then(|due| {
            let left = due - Timestamp::now().as_millisecond();
            u64::try_from(left).ok().map(Duration::from_millis)
        })
        .filter(|left| !left.is_zero());
    tracing::warn!(topic = %prepared.topic, id = %metadata.id, "the first publisher with this idempotency key did not finish; publishing its message");
    let first = Prepared {
        topic: prepared.topic.clone(),
        payload: claimed.data,
        metadata,
        delay,
    };
    shared.publish_prepared(&first).await?;
    mark_done(shared, done, &first.metadata.id).await?;
    Ok(first.metadata.id)
}
