//! Raw lapin doing what `RabbitMqAdapter` does, for the baselines its benchmarks compare
//! with (the throughput bench and the instruction budget): the same topology and the same
//! message properties, under names of the caller's choosing.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

/// Declares a durable topic exchange `exchange` and a quorum queue `queue` with topiq's
/// arguments, bound to it by `routing_key`.
pub async fn declare_like_topiq(
    channel: &Channel,
    exchange: &str,
    queue: &str,
    routing_key: &str,
) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(1000));
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, arguments)
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// The properties topiq sets on a publish: a fresh message id, JSON, persistent, an
/// enqueue-time header.
pub fn properties_like_topiq() -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "topiq-enqueued-at".into(),
        AMQPValue::LongLongInt(topiq_adapter::Timestamp::now().as_millisecond()),
    );
    BasicProperties::default()
        .with_message_id(
            (&*uuid::Uuid::now_v7()
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()))
                .into(),
        )
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}
