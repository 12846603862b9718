//! RabbitMQ rows: `RabbitMqAdapter` against raw lapin, each in a vhost of its own on the
//! machine's node (deleted when the row ends).

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use topiq_rabbitmq::{RabbitMqAdapter, RabbitMqConfig};
use topiq_testkit::{RabbitVhost, raw_rabbit};

use super::{PREFETCH, raw_payload, read_payload, topiq_side};
use crate::rows::{RowError, failed, message};

/// topiq: publish (and `consume`) through the adapter.
pub(crate) async fn topiq(messages: u64, consume: bool) -> Result<(), RowError> {
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
    topiq_side(adapter, "costs", messages, consume).await
}

/// Raw lapin doing what the adapter does: a confirming channel, a durable topic exchange, a
/// quorum queue bound to it; persistent `mandatory` publishes with a message id, a content
/// type and an enqueue-time header, each awaiting its confirm; names as long as topiq's.
pub(crate) async fn raw(messages: u64, consume: bool) -> Result<(), RowError> {
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
    publish_all(&publisher, messages).await?;
    if consume {
        consume_all(&connection, queue, messages).await?;
    }
    connection.close(0, "done".into()).await.map_err(failed)
}

/// Publishes `messages` one at a time, each awaiting its confirm.
async fn publish_all(publisher: &Channel, messages: u64) -> Result<(), RowError> {
    let template = message();
    for _ in 0..messages {
        let payload = raw_payload(&template)?;
        let confirm = publisher
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
            .map_err(failed)?
            .await
            .map_err(failed)?;
        if !confirm.is_ack() {
            return Err(failed("the broker refused a publish"));
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
