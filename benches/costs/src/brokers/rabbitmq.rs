//! RabbitMQ rows: `RabbitMqAdapter` against raw lapin, each in a vhost of its own on the
//! machine's node (deleted when the row ends).

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, PublisherConfirm};
use topiq_rabbitmq::{RabbitMqAdapter, RabbitMqConfig};
use topiq_testkit::{RabbitVhost, raw_rabbit};

use super::{Load, PREFETCH, batches, in_flight, raw_payload, read_payload, topiq_side};
use crate::rows::{RowError, failed, message};

/// topiq: publish (and consume) through the adapter.
pub(crate) async fn topiq(messages: u64, load: Load) -> Result<(), RowError> {
    let vhost = RabbitVhost::create();
    let adapter = RabbitMqAdapter::connect(RabbitMqConfig {
        url: vhost.url(),
        connection: topiq_rabbitmq::ConnectionOptions {
            prefix: "tq".to_owned(),
            ..Default::default()
        },
        ..RabbitMqConfig::default()
    })
    .await
    .map_err(failed)?;
    topiq_side(adapter, "costs", messages, load).await
}

/// Raw lapin doing what the adapter does: a confirming channel, a durable topic exchange, a
/// quorum queue bound to it; persistent `mandatory` publishes with a message id, a content
/// type and an enqueue-time header, each awaiting its confirm; names as long as topiq's.
pub(crate) async fn raw(messages: u64, load: Load) -> Result<(), RowError> {
    let vhost = RabbitVhost::create();
    let connection = Connection::connect(&vhost.url(), ConnectionProperties::default())
        .await
        .map_err(failed)?;
    let publisher = connection.create_channel().await.map_err(failed)?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(failed)?;
    let queue = "rw:t:costs:t";
    raw_rabbit::declare_like_topiq(&publisher, "rw", queue, "costs")
        .await
        .map_err(failed)?;
    if load == Load::Batches {
        publish_in_batches(&publisher, messages).await?;
    } else if load == Load::Concurrent {
        let template = message();
        let publish = || async { confirmed(send(&publisher, &template).await?).await };
        in_flight(messages, publish).await?;
    } else {
        publish_all(&publisher, messages).await?;
    }
    if load == Load::EndToEnd {
        consume_all(&connection, queue, messages).await?;
    }
    connection.close(0, "done".into()).await.map_err(failed)
}

/// A raw publish as topiq's (`mandatory`, persistent, topiq's properties), sent; its
/// confirm's future returned.
async fn send(
    publisher: &Channel,
    template: &serde_json::Value,
) -> Result<PublisherConfirm, RowError> {
    let payload = raw_payload(template)?;
    publisher
        .basic_publish(
            "rw".into(),
            "costs".into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &payload,
            raw_rabbit::properties_like_topiq(),
        )
        .await
        .map_err(failed)
}

/// Awaits a confirm: an error unless the broker took the message.
async fn confirmed(confirm: PublisherConfirm) -> Result<(), RowError> {
    if confirm.await.map_err(failed)?.is_ack() {
        Ok(())
    } else {
        Err(failed("the broker refused a publish"))
    }
}

/// Publishes `messages` one at a time, each awaiting its confirm.
async fn publish_all(publisher: &Channel, messages: u64) -> Result<(), RowError> {
    let template = message();
    for _ in 0..messages {
        confirmed(send(publisher, &template).await?).await?;
    }
    Ok(())
}

/// Publishes `messages` in batches: every message of a batch sent, then its confirms awaited
/// in order.
async fn publish_in_batches(publisher: &Channel, messages: u64) -> Result<(), RowError> {
    let template = message();
    for size in batches(messages) {
        let mut confirms = Vec::with_capacity(size);
        for _ in 0..size {
            confirms.push(send(publisher, &template).await?);
        }
        for confirm in confirms {
            confirmed(confirm).await?;
        }
    }
    Ok(())
}

/// Consumes `messages` from `queue` (qos `PREFETCH`), reading and acking each.
async fn consume_all(connection: &Connection, queue: &str, messages: u64) -> Result<(), RowError> {
    let channel = connection.create_channel().await.map_err(failed)?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(failed)?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(failed)?;
    for _ in 0..messages {
        let delivery = consumer
            .next()
            .await
            .ok_or_else(|| failed("the consumer ended"))?
            .map_err(failed)?;
        read_payload(&delivery.data)?;
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(failed)?;
    }
    Ok(())
}
