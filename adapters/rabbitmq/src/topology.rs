//! The exchange and queues topiq keeps on the broker: a topic's DLQ stream, a trigger's queue,
//! and the delay and retry bucket queues; each declared again on a new connection.

use std::sync::PoisonError;
use std::time::Duration;

use lapin::Channel;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use topiq_adapter::{
    Error, Result, SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec, TriggerName,
};

use crate::layout::{self, Layout};
use crate::{CAPABILITIES, DELIVERY_LIMIT, QueueType, Shared, codec};

/// A queue topiq declares: its arguments and, for trigger queues, its binding.
#[derive(Clone, Debug)]
pub(crate) struct QueueDecl {
    pub(crate) name: String,
    pub(crate) arguments: FieldTable,
    /// Bound to the exchange with this routing key.
    pub(crate) binding: Option<(String, String)>,
    /// A delay bucket: whose waiting messages it holds (a topic's delayed publishes, or one
    /// trigger's retries).
    pub(crate) holds_delayed_of: Option<(TopicName, Option<TriggerName>)>,
}

impl QueueDecl {
    pub(crate) async fn declare(&self, channel: &Channel) -> Result<u32> {
        let queue = channel
            .queue_declare(
                self.name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                self.arguments.clone(),
            )
            .await
            .map_err(declare_error(&self.name))?;
        if let Some((exchange, routing_key)) = &self.binding {
            channel
                .queue_bind(
                    self.name.as_str().into(),
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(declare_error(&self.name))?;
        }
        Ok(queue.message_count())
    }
}

/// A declaration the broker refused: most often an existing queue with other arguments.
pub(crate) fn declare_error(name: &str) -> impl FnOnce(lapin::Error) -> Error + '_ {
    move |err| Error::Broker {
        operation: "declare",
        source: format!(
            "RabbitMQ refused to declare {name:?}: {err}. If it exists with other arguments \
             (queue type, TTL, limits), delete it (with its messages) or change the config back: \
             RabbitMQ cannot change a queue's arguments"
        )
        .into(),
    }
}

pub(crate) fn quorum_arguments(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut pairs = vec![("x-queue-type", AMQPValue::LongString("quorum".into()))];
    pairs.extend(extra.iter().cloned());
    codec::arguments(&pairs)
}

pub(crate) fn millis_value(duration: Duration) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

impl Shared {
    /// Declares the topic's DLQ stream and records the topic.
    pub(crate) async fn declare_topic(&self, spec: TopicSpec) -> Result<()> {
        let shared = self;
        shared.ensure_open()?;
        spec.validate(&CAPABILITIES)?;
        let mut arguments = vec![("x-queue-type", AMQPValue::LongString("stream".into()))];
        if let Some(retention) = spec.dlq_retention {
            let seconds = retention.as_secs().max(1);
            arguments.push((
                "x-max-age",
                AMQPValue::LongString(format!("{seconds}s").into()),
            ));
        }
        shared
            .declare_queue(QueueDecl {
                name: shared.layout.dlq_stream(&spec.name),
                arguments: codec::arguments(&arguments),
                binding: None,
                holds_delayed_of: None,
            })
            .await?;
        shared.declared.add_topic(spec.name.clone(), spec);
        Ok(())
    }

    /// Declares the trigger's queue of each lane of its topic, bound to the lane's routing key,
    /// and records the subscription.
    pub(crate) async fn declare_subscription(&self, spec: SubscriptionSpec) -> Result<()> {
        let shared = self;
        shared.ensure_open()?;
        spec.validate()?;
        shared.topic(&spec.key.topic)?;
        if let Some(dead_letter_topic) = &spec.dead_letter_topic {
            shared.topic(dead_letter_topic)?;
        }
        if spec.max_attempts >= DELIVERY_LIMIT {
            return Err(Error::InvalidArgument {
                argument: "max_attempts",
                reason: format!(
                    "RabbitMQAdapter allows at most {} attempts",
                    DELIVERY_LIMIT - 1
                ),
            });
        }
        if spec.ordered && shared.config.queue_type == QueueType::Classic {
            return Err(Error::Unsupported {
                adapter: CAPABILITIES.adapter,
                option: "ordered triggers on classic queues",
                hint: "use queue_type: quorum (a classic queue does not count deliveries, and counting one by a copy would put it behind its lane's later messages)",
            });
        }
        let mut arguments = Vec::new();
        if spec.ordered {
            // One consumer of each lane queue at a time, across every instance.
            arguments.push(("x-single-active-consumer", AMQPValue::Boolean(true)));
        }
        match shared.config.queue_type {
            QueueType::Quorum => {
                arguments.push(("x-queue-type", AMQPValue::LongString("quorum".into())));
                arguments.push((
                    "x-delivery-limit",
                    AMQPValue::LongLongInt(i64::from(DELIVERY_LIMIT)),
                ));
            }
            QueueType::Classic => {
                arguments.push(("x-queue-type", AMQPValue::LongString("classic".into())));
            }
        }
        let lanes = shared.topic(&spec.key.topic)?.lanes.max(1);
        for lane in 0..lanes {
            shared
                .declare_queue(QueueDecl {
                    name: shared.layout.lane_queue(&spec.key, lane),
                    arguments: codec::arguments(&arguments),
                    binding: Some((
                        shared.layout.exchange().to_owned(),
                        Layout::lane_routing_key(&spec.key.topic, lane).into_owned(),
                    )),
                    holds_delayed_of: None,
                })
                .await?;
        }
        shared.declared.add_subscription(spec);
        Ok(())
    }

    pub(crate) fn declared_queues(&self) -> Vec<QueueDecl> {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn is_declared(&self, name: &str) -> bool {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|queue| queue.name == name)
    }

    /// Declares a queue now and again on every new connection; returns its ready count.
    pub(crate) async fn declare_queue(&self, queue: QueueDecl) -> Result<u32> {
        let session = self.session().await?;
        let count = self
            .bounded("declare", async {
                let channel = session.owned_channel().await?;
                let count = queue.declare(&channel).await?;
                Ok(count)
            })
            .await?;
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match queues.iter_mut().find(|known| known.name == queue.name) {
            Some(known) => *known = queue,
            None => queues.push(queue),
        }
        Ok(count)
    }

    /// The ready count of a queue declared before (0 if it is gone).
    pub(crate) async fn ready_count(&self, name: &str) -> Result<u64> {
        let Some(queue) = self
            .declared_queues()
            .into_iter()
            .find(|queue| queue.name == name)
        else {
            return Ok(0);
        };
        Ok(u64::from(self.declare_queue(queue).await?))
    }

    /// A delay bucket queue: waits `bucket`, then dead-letters (at least once) to
    /// `exchange` with `routing_key`.
    pub(crate) fn bucket_queue(
        name: String,
        bucket: Duration,
        (exchange, routing_key): (&str, &str),
        holds: (TopicName, Option<TriggerName>),
    ) -> QueueDecl {
        QueueDecl {
            name,
            arguments: quorum_arguments(&[
                ("x-message-ttl", millis_value(bucket)),
                (
                    "x-dead-letter-exchange",
                    AMQPValue::LongString(exchange.into()),
                ),
                (
                    "x-dead-letter-routing-key",
                    AMQPValue::LongString(routing_key.into()),
                ),
                (
                    "x-dead-letter-strategy",
                    AMQPValue::LongString("at-least-once".into()),
                ),
                ("x-overflow", AMQPValue::LongString("reject-publish".into())),
            ]),
            binding: None,
            holds_delayed_of: Some(holds),
        }
    }

    /// The delay queue of `lane` of `topic` for `delay` (declared on first use).
    pub(crate) async fn delay_queue(
        &self,
        topic: &TopicName,
        lane: u32,
        delay: Duration,
    ) -> Result<String> {
        let bucket = layout::bucket(delay);
        let name = self.layout.delay_queue(topic, lane, bucket);
        if !self.is_declared(&name) {
            let queue = Self::bucket_queue(
                name.clone(),
                bucket,
                (
                    self.layout.exchange(),
                    &Layout::lane_routing_key(topic, lane),
                ),
                (topic.clone(), None),
            );
            self.declare_queue(queue).await?;
        }
        Ok(name)
    }

    /// The trigger's retry queue of `lane` for `delay` (declared on first use).
    pub(crate) async fn retry_queue(
        &self,
        key: &SubscriptionKey,
        lane: u32,
        delay: Duration,
    ) -> Result<String> {
        let bucket = layout::bucket(delay);
        let name = self.layout.retry_queue(key, lane, bucket);
        if !self.is_declared(&name) {
            let queue = Self::bucket_queue(
                name.clone(),
                bucket,
                ("", &self.layout.lane_queue(key, lane)),
                (key.topic.clone(), Some(key.trigger.clone())),
            );
            self.declare_queue(queue).await?;
        }
        Ok(name)
    }
}
