//! `queue.enqueue` and `queue.enqueue_batch`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use topiq_adapter::{MessageId, NewMessage, PublishReceipt, Timestamp, TopicName, TraceContext};

use super::{CallError, MAX_BATCH, timestamp};
use crate::config::parse_duration;
use crate::module::QueueModule;
use crate::telemetry;

/// Arguments of `queue.enqueue`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// The topic.
    pub topic: String,
    /// The payload: any JSON value.
    pub data: Value,
    /// Enqueues with the same key inside the topic's window return the first message's id.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Deliver no sooner than this from now: `"5s"`, `"250ms"`.
    #[serde(default)]
    pub delay: Option<String>,
    /// Deliver no sooner than this time (RFC 3339).
    #[serde(default)]
    pub run_at: Option<String>,
    /// W3C `traceparent` of the caller, the parent of the publish span (over the HTTP API,
    /// the request's `traceparent` header when this is not given).
    #[serde(default)]
    pub traceparent: Option<String>,
    /// W3C `baggage` to carry.
    #[serde(default)]
    pub baggage: Option<String>,
    /// 0 (the default) to the topic's `priority_levels` - 1: with a backlog, higher ones are
    /// handed out first.
    #[serde(default)]
    pub priority: Option<u32>,
}

/// The result of `queue.enqueue` and of each `queue.enqueue_batch` item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnqueueResult {
    /// The message's id (the first message's, for a duplicate).
    pub message_id: MessageId,
    /// True when the idempotency key was seen inside the window and nothing was enqueued.
    pub duplicate: bool,
}

impl EnqueueResult {
    /// `{"message_id": ..., "duplicate": ...}`.
    pub fn to_json(&self) -> Value {
        json!({ "message_id": self.message_id, "duplicate": self.duplicate })
    }
}

impl From<PublishReceipt> for EnqueueResult {
    fn from(receipt: PublishReceipt) -> Self {
        Self {
            message_id: receipt.message_id,
            duplicate: receipt.duplicate,
        }
    }
}

/// One message of `queue.enqueue_batch`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    /// The payload.
    pub data: Value,
    /// As in `queue.enqueue`.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// As in `queue.enqueue`.
    #[serde(default)]
    pub delay: Option<String>,
    /// As in `queue.enqueue`.
    #[serde(default)]
    pub run_at: Option<String>,
    /// As in `queue.enqueue`.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// As in `queue.enqueue`.
    #[serde(default)]
    pub baggage: Option<String>,
    /// As in `queue.enqueue`.
    #[serde(default)]
    pub priority: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EnqueueBatchRequest {
    pub(super) topic: String,
    pub(super) messages: Vec<BatchItem>,
}

impl QueueModule {
    /// `message` in the lane of `priority` on `topic`; a priority the topic has no level for
    /// is refused, naming the option that gives it levels, and so is any priority on a topic
    /// in per-key order.
    pub(super) fn in_lane(
        &self,
        topic: &TopicName,
        message: NewMessage,
        priority: Option<u32>,
    ) -> Result<NewMessage, CallError> {
        if self.ordering(topic).is_some() {
            if priority.is_some() {
                return Err(CallError::invalid(format!(
                    "priority: topic {topic} keeps per-key order (a trigger on it has an ordering_key), so its messages have no priority; leave priority out"
                )));
            }
            // Its partition is its key's (`QueueModule::keyed`, on every publish).
            return Ok(message);
        }
        let Some(priority) = priority else {
            return Ok(message);
        };
        let levels = self.topic(topic).map_or(1, |spec| spec.lanes);
        if priority >= levels {
            return Err(CallError::invalid(format!(
                "priority {priority}: topic {topic} has {levels} priority level(s), 0 to {} (higher first); set topics.{topic}.priority_levels for more",
                levels - 1
            )));
        }
        Ok(message.lane(priority))
    }

    fn new_message(
        &self,
        data: Value,
        idempotency_key: Option<String>,
        delay: Option<&str>,
        run_at: Option<&str>,
    ) -> Result<NewMessage, CallError> {
        let mut message = NewMessage::new(data);
        message.idempotency_key = idempotency_key;
        match (delay, run_at) {
            (Some(_), Some(_)) => {
                return Err(CallError::invalid(
                    "give either `delay` or `run_at`, not both",
                ));
            }
            (Some(delay), None) => {
                let delay = parse_duration(delay)
                    .map_err(|reason| CallError::invalid(format!("delay: {reason}")))?;
                if Timestamp::now().checked_add(delay).is_err() {
                    return Err(CallError::invalid(
                        "delay: too far in the future (past year 9999)",
                    ));
                }
                message = message.delay(delay);
            }
            (None, Some(run_at)) => {
                message = message.deliver_at(timestamp("run_at", run_at)?);
            }
            (None, None) => {}
        }
        if let (Some(at), Some(max_delay)) =
            (message.deliver_at, self.adapter().capabilities().max_delay)
        {
            let wait = at.duration_since(Timestamp::now());
            if Duration::try_from(wait).is_ok_and(|wait| wait > max_delay) {
                return Err(CallError::invalid(format!(
                    "the delay is longer than {} allows ({max_delay:?})",
                    self.adapter().capabilities().adapter
                )));
            }
        }
        Ok(message)
    }

    /// `queue.enqueue`.
    pub async fn enqueue(&self, request: EnqueueRequest) -> Result<EnqueueResult, CallError> {
        let topic = self.topic_named(&request.topic)?;
        let message = self
            .new_message(
                request.data,
                request.idempotency_key,
                request.delay.as_deref(),
                request.run_at.as_deref(),
            )?
            .trace(TraceContext {
                traceparent: request.traceparent,
                baggage: request.baggage,
            });
        let message = self.in_lane(&topic, message, request.priority)?;
        Ok(self.publish(&topic, message).await?.into())
    }

    /// `queue.enqueue_batch`: one result per message, in order.
    pub async fn enqueue_batch(
        &self,
        topic_name: &str,
        items: Vec<BatchItem>,
    ) -> Result<Vec<Result<EnqueueResult, CallError>>, CallError> {
        let topic = self.topic_named(topic_name)?;
        if items.is_empty() || items.len() > MAX_BATCH {
            return Err(CallError::invalid(format!(
                "messages: give 1 to {MAX_BATCH} messages, got {}",
                items.len()
            )));
        }
        if self.topic(&topic).is_none() {
            return Err(topiq_adapter::Error::UnknownTopic { topic }.into());
        }
        // A message with bad arguments gets its error in its slot; the others are published.
        let mut results: Vec<Option<Result<EnqueueResult, CallError>>> = Vec::new();
        let mut messages = Vec::new();
        let mut slots = Vec::new();
        for item in items {
            match self.batch_message(&topic, item) {
                Ok(message) => {
                    slots.push(results.len());
                    results.push(None);
                    messages.push(message);
                }
                Err(err) => results.push(Some(Err(err))),
            }
        }
        if !messages.is_empty() {
            let published = self.publish_batch_traced(&topic, messages).await?;
            for (slot, result) in slots.into_iter().zip(published) {
                results[slot] = Some(result.map(Into::into).map_err(Into::into));
            }
        }
        Ok(results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(CallError::invalid(
                        "the adapter returned no result for this message",
                    ))
                })
            })
            .collect())
    }

    fn batch_message(&self, topic: &TopicName, item: BatchItem) -> Result<NewMessage, CallError> {
        let trace = TraceContext {
            traceparent: item.traceparent,
            baggage: item.baggage,
        };
        let message = self.new_message(
            item.data,
            item.idempotency_key,
            item.delay.as_deref(),
            item.run_at.as_deref(),
        )?;
        self.in_lane(topic, message.trace(trace), item.priority)
    }

    /// Publishes `messages` in one publish span, counted in the metrics.
    async fn publish_batch_traced(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<topiq_adapter::Result<PublishReceipt>>, CallError> {
        let first = messages.first().map(|message| &message.trace);
        let span = telemetry::publish_span(
            self.messaging_system(),
            topic,
            messages.len(),
            first.unwrap_or(&TraceContext::default()),
        );
        let origins: Vec<_> = messages
            .iter()
            .map(|message| self.origin_of(topic, message))
            .collect();
        let messages: Vec<NewMessage> = messages
            .into_iter()
            .map(|mut message| {
                message.trace =
                    telemetry::publish_context(&span, std::mem::take(&mut message.trace));
                self.keyed(topic, message)
            })
            .collect();
        let count = messages.len() as u64;
        let publishing = self.adapter().publish_batch(topic, messages);
        let published = match telemetry::in_span(span, publishing, |_, published| published).await {
            Ok(published) => published,
            Err(err) => {
                self.metrics().published(topic, count, false);
                return Err(err.into());
            }
        };
        let enqueued = published
            .iter()
            .zip(&origins)
            .filter_map(|(result, origin)| Some((result.as_ref().ok()?, origin.as_ref()?)))
            .flat_map(|(receipt, origin)| self.enqueued_events(topic, receipt, origin));
        self.runs().recorder().record(enqueued).await;
        let accepted = published.iter().filter(|result| result.is_ok()).count() as u64;
        self.metrics().published(topic, accepted, true);
        self.metrics()
            .published(topic, published.len() as u64 - accepted, false);
        Ok(published)
    }
}
