//! Publishing: a message prepared once (payload, properties, routing), published on a
//! confirming channel and answered by the broker's confirm or return.

use std::time::Duration;

use lapin::BasicProperties;
use topiq_adapter::{
    Error, NewMessage, PublishReceipt, Result, SubscriptionKey, Timestamp, TopicName, TopicSpec,
    check_size,
};

use crate::codec::{self, Metadata, Properties};
use crate::layout::{self, Layout};
use crate::{Published, Shared, idempotency};

impl Shared {
    /// Publishes on the publishing channel and waits for the confirm (`publish_timeout`).
    pub(crate) async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<Published> {
        let session = self.session().await?;
        if session.connection.status().blocked() {
            // A memory or disk alarm: the broker takes no publish until it clears, and a
            // publish sent now would only wait out its timeout.
            return Err(blocked());
        }
        let publishing = async {
            let channel = session.publisher().await?;
            channel
                .publish(exchange, routing_key, payload, properties)
                .await
        };
        match self
            .bounded("publish (waiting for the broker's confirm)", publishing)
            .await
        {
            // Blocked while it waited: say why, rather than that it timed out.
            Err(Error::Timeout { .. }) if session.connection.status().blocked() => Err(blocked()),
            other => other,
        }
    }

    /// Publishes straight to one trigger's queue of the message's lane (release, retry
    /// without delay, redrive), confirmed: the queue must take it. A lane the topic no longer
    /// has goes to lane 0.
    pub(crate) async fn publish_to_trigger(
        &self,
        key: &SubscriptionKey,
        payload: &[u8],
        metadata: &Metadata,
    ) -> Result<()> {
        let lane = self.topic(&key.topic)?.lane_or_first(metadata.lane);
        let queue = self.layout.lane_queue(key, lane);
        let properties = metadata.clone().in_lane(lane).properties();
        match self
            .publish_confirmed("", &queue, payload, properties)
            .await?
        {
            Published::Stored => Ok(()),
            Published::Returned => Err(missing_queue(&queue)),
            Published::Refused => Err(refused(&queue)),
        }
    }

    /// Publishes a prepared message to its topic (or its delay queue), confirmed.
    pub(crate) async fn publish_prepared(&self, prepared: &Prepared) -> Result<()> {
        let properties = prepared.metadata.properties();
        let (topic, lane) = (&prepared.topic, prepared.metadata.lane);
        let (exchange, routing_key) = match prepared.delay {
            Some(delay) => (String::new(), self.delay_queue(topic, lane, delay).await?),
            None => (
                self.layout.exchange(),
                Layout::lane_routing_key(topic, lane),
            ),
        };
        match self
            .publish_confirmed(&exchange, &routing_key, &prepared.payload, properties)
            .await?
        {
            Published::Stored => Ok(()),
            // A topic without triggers accepts and drops, as on every adapter.
            Published::Returned if !self.declared.has_triggers(&prepared.topic) => Ok(()),
            Published::Returned => Err(missing_queue(&routing_key)),
            Published::Refused => Err(refused(&routing_key)),
        }
    }

    pub(crate) fn prepare(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<(Prepared, TopicSpec)> {
        let spec = self.topic(topic)?;
        // What `NewMessage::validate` checks, in its order, the data's depth as it is written
        // and its size from the bytes; then the lane (as on every adapter).
        message.validate_fields()?;
        let payload = codec::encode(&message.data)?;
        check_size(topic, payload.len(), spec.max_message_bytes)?;
        message.check_lane(topic, spec.lanes)?;
        let now = Timestamp::now();
        let delay = match message.deliver_at {
            Some(at) if at > now => {
                let delay = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
                if delay > layout::MAX_DELAY {
                    return Err(Error::InvalidArgument {
                        argument: "delay",
                        reason: format!(
                            "RabbitMQAdapter delays at most {:?} (a 32-bit TTL in milliseconds)",
                            layout::MAX_DELAY
                        ),
                    });
                }
                Some(delay)
            }
            _ => None,
        };
        let prepared = Prepared {
            topic: topic.clone(),
            payload,
            metadata: Metadata::enqueued(
                now,
                message.trace,
                message.idempotency_key,
                spec.retention,
                message.deliver_at.map_or(now, |at| at.max(now)),
            )
            .in_lane(message.lane),
            delay,
        };
        Ok((prepared, spec))
    }

    /// Publishes a new message to one trigger's queue only (a replay), confirmed.
    pub(crate) async fn publish_one_to(
        &self,
        key: &SubscriptionKey,
        message: NewMessage,
    ) -> Result<PublishReceipt> {
        self.ensure_open()?;
        message.check_direct()?;
        self.subscription(key)?;
        let (prepared, _) = self.prepare(&key.topic, message)?;
        self.publish_to_trigger(key, &prepared.payload, &prepared.metadata)
            .await?;
        Ok(PublishReceipt {
            message_id: prepared.metadata.id.clone(),
            duplicate: false,
        })
    }

    pub(crate) async fn publish_one(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<PublishReceipt> {
        self.ensure_open()?;
        let (prepared, spec) = self.prepare(topic, message)?;
        if prepared.metadata.idempotency_key.is_some() {
            return idempotency::publish_keyed(self, &prepared, spec.idempotency_window).await;
        }
        self.publish_prepared(&prepared).await?;
        Ok(PublishReceipt {
            message_id: prepared.metadata.id,
            duplicate: false,
        })
    }
}

/// The broker blocks publishing connections while a memory or disk alarm is on.
fn blocked() -> Error {
    Error::BrokerFull {
        message: "RabbitMQ blocks publishing (a memory or disk alarm is on); stored messages are kept, and publishes succeed again once consumers free memory or disk, or the limits are raised".into(),
        source: None,
    }
}

fn missing_queue(target: &str) -> Error {
    Error::Broker {
        operation: "publish",
        source: format!(
            "RabbitMQ returned the message as unroutable: no queue takes {target:?}. A queue \
             topiq declared was deleted under it (a restart declares it again), or the \
             trigger it is meant for is no longer in the config"
        )
        .into(),
    }
}

pub(crate) fn refused(target: &str) -> Error {
    Error::Broker {
        operation: "publish",
        source: format!(
            "RabbitMQ refused the message for {target:?} (nack): check the broker's memory \
             and disk alarms and the queue's length limits"
        )
        .into(),
    }
}

/// A message ready to publish.
pub(crate) struct Prepared {
    pub(crate) topic: TopicName,
    pub(crate) payload: Vec<u8>,
    pub(crate) metadata: Metadata,
    /// Not delivered before this delay has passed.
    pub(crate) delay: Option<Duration>,
}
