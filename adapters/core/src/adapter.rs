//! The adapter trait, and its object-safe twin for `Box<dyn ...>` / `Arc<dyn ...>` use.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::dlq::{DlqPage, DlqQuery, DlqSelection};
use crate::error::Result;
use crate::message::{NewMessage, PublishReceipt};
use crate::names::{SubscriptionKey, TopicName, TriggerName};
use crate::spec::{Capabilities, ConsumeOptions, SubscriptionSpec, TopicSpec};
use crate::subscription::Subscription;

/// Counts of one subscription, read from the broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionStats {
    /// Messages waiting for a consumer, delayed ones included.
    pub waiting: u64,
    /// Of `waiting`, those whose delay or retry backoff has not run out yet.
    pub delayed: u64,
    /// Messages delivered and not yet settled.
    pub in_flight: u64,
    /// Records in the trigger's dead-letter queue.
    pub dead_lettered: u64,
}

/// A message broker behind topiq's one contract: its dead-letter queues are the
/// [`DeadLetters`] part of it.
///
/// Every method's mapping onto JetStream and RabbitMQ is in the [crate docs](crate). Methods
/// return futures that are `Send`, so the runtime can spawn them; [`DynAdapter`] is the same
/// contract as a trait object.
pub trait Adapter: DeadLetters {
    /// What the adapter can honour; the runtime checks the config against it before starting.
    fn capabilities(&self) -> Capabilities;

    /// Creates the topic, or updates its options, idempotently. An existing topic whose
    /// options cannot be changed to `spec` is an error, never silently altered.
    fn declare_topic(&self, spec: TopicSpec) -> impl Future<Output = Result<()>> + Send;

    /// Creates one trigger's durable subscription to a declared topic, or updates its policy.
    ///
    /// From then on the subscription receives every message published to the topic, whether a
    /// consumer is attached or not.
    fn declare_subscription(
        &self,
        spec: SubscriptionSpec,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Publishes one message, returning once the broker durably accepted it.
    fn publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> impl Future<Output = Result<PublishReceipt>> + Send;

    /// Publishes several messages, pipelined; one result per message, in order. The outer
    /// error is for failures that concern the whole batch (unknown topic, closed adapter).
    fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> impl Future<Output = Result<Vec<Result<PublishReceipt>>>> + Send;

    /// Publishes one message to one trigger's subscription only (a replay): the topic's
    /// other triggers never see it. Delivered at once; a `deliver_at` or `idempotency_key` is
    /// `Error::InvalidArgument`.
    fn publish_to(
        &self,
        key: &SubscriptionKey,
        message: NewMessage,
    ) -> impl Future<Output = Result<PublishReceipt>> + Send;

    /// Attaches a consumer to a declared subscription.
    fn consume(
        &self,
        key: &SubscriptionKey,
        options: ConsumeOptions,
    ) -> impl Future<Output = Result<Subscription>> + Send;

    /// Counts of one subscription.
    fn stats(
        &self,
        key: &SubscriptionKey,
    ) -> impl Future<Output = Result<SubscriptionStats>> + Send;

    /// Ok when the broker answers.
    fn health(&self) -> impl Future<Output = Result<()>> + Send;

    /// Stops every consumer (their streams end), refuses further calls, and closes the
    /// connection. Deliveries still unsettled are left to the broker to deliver again.
    fn close(&self) -> impl Future<Output = Result<()>> + Send;
}

/// The dead-letter part of the [`Adapter`] contract: inspection, redrive and purge of the
/// records of messages that exhausted their attempts.
///
/// Each broker adapter implements it in its own `dlq` module, beside the code that writes
/// the records.
pub trait DeadLetters: Send + Sync + 'static {
    /// Counts the dead-letter records of a topic, or of one trigger on it.
    fn dlq_count(
        &self,
        topic: &TopicName,
        trigger: Option<&TriggerName>,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Lists dead-letter records, a page at a time, oldest first.
    fn dlq_list(&self, query: DlqQuery) -> impl Future<Output = Result<DlqPage>> + Send;

    /// Sends the selected records back to the trigger each failed on (and no other), with the
    /// attempt count reset, and removes them from the DLQ; returns how many were redriven.
    /// Each copy is durably enqueued before its record is removed.
    fn dlq_redrive(
        &self,
        topic: &TopicName,
        trigger: Option<&TriggerName>,
        selection: DlqSelection,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Deletes the selected records; returns how many.
    fn dlq_purge(
        &self,
        topic: &TopicName,
        trigger: Option<&TriggerName>,
        selection: DlqSelection,
    ) -> impl Future<Output = Result<u64>> + Send;
}

/// [`Adapter`] as a trait object; every `Adapter` is one.
#[allow(missing_docs)] // each method is documented on `Adapter`
pub trait DynAdapter: Send + Sync + 'static {
    fn capabilities(&self) -> Capabilities;
    fn declare_topic(&self, spec: TopicSpec) -> BoxFuture<'_, Result<()>>;
    fn declare_subscription(&self, spec: SubscriptionSpec) -> BoxFuture<'_, Result<()>>;
    fn publish<'a>(
        &'a self,
        topic: &'a TopicName,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<PublishReceipt>>;
    fn publish_batch<'a>(
        &'a self,
        topic: &'a TopicName,
        messages: Vec<NewMessage>,
    ) -> BoxFuture<'a, Result<Vec<Result<PublishReceipt>>>>;
    fn publish_to<'a>(
        &'a self,
        key: &'a SubscriptionKey,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<PublishReceipt>>;
    fn consume<'a>(
        &'a self,
        key: &'a SubscriptionKey,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<Subscription>>;
    fn dlq_count<'a>(
        &'a self,
        topic: &'a TopicName,
        trigger: Option<&'a TriggerName>,
    ) -> BoxFuture<'a, Result<u64>>;
    fn dlq_list(&self, query: DlqQuery) -> BoxFuture<'_, Result<DlqPage>>;
    fn dlq_redrive<'a>(
        &'a self,
        topic: &'a TopicName,
        trigger: Option<&'a TriggerName>,
        selection: DlqSelection,
    ) -> BoxFuture<'a, Result<u64>>;
    fn dlq_purge<'a>(
        &'a self,
        topic: &'a TopicName,
        trigger: Option<&'a TriggerName>,
        selection: DlqSelection,
    ) -> BoxFuture<'a, Result<u64>>;
    fn stats<'a>(&'a self, key: &'a SubscriptionKey) -> BoxFuture<'a, Result<SubscriptionStats>>;
    fn health(&self) -> BoxFuture<'_, Result<()>>;
    fn close(&self) -> BoxFuture<'_, Result<()>>;
}

/// An adapter shared by the runtime's tasks.
pub type SharedAdapter = Arc<dyn DynAdapter>;

impl<A: Adapter> DynAdapter for A {
    fn capabilities(&self) -> Capabilities {
        Adapter::capabilities(self)
    }
    fn declare_topic(&self, spec: TopicSpec) -> BoxFuture<'_, Result<()>> {
        Box::pin(Adapter::declare_topic(self, spec))
    }
    fn declare_subscription(&self, spec: SubscriptionSpec) -> BoxFuture<'_, Result<()>> {
        Box::pin(Adapter::declare_subscription(self, spec))
    }
    fn publish<'a>(
        &'a self,
        topic: &'a TopicName,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<PublishReceipt>> {
        Box::pin(Adapter::publish(self, topic, message))
    }
    fn publish_batch<'a>(
        &'a self,
        topic: &'a TopicName,
        messages: Vec<NewMessage>,
    ) -> BoxFuture<'a, Result<Vec<Result<PublishReceipt>>>> {
        Box::pin(Adapter::publish_batch(self, topic, messages))
    }
    fn publish_to<'a>(
        &'a self,
        key: &'a SubscriptionKey,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<PublishReceipt>> {
        Box::pin(Adapter::publish_to(self, key, message))
    }
    fn consume<'a>(
        &'a self,
        key: &'a SubscriptionKey,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<Subscription>> {
        Box::pin(Adapter::consume(self, key, options))
    }
    fn dlq_count<'a>(
        &'a self,
        topic: &'a TopicName,
        trigger: Option<&'a TriggerName>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(DeadLetters::dlq_count(self, topic, trigger))
    }
    fn dlq_list(&self, query: DlqQuery) -> BoxFuture<'_, Result<DlqPage>> {
        Box::pin(DeadLetters::dlq_list(self, query))
    }
    fn dlq_redrive<'a>(
        &'a self,
        topic: &'a TopicName,
        trigger: Option<&'a TriggerName>,
        selection: DlqSelection,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(DeadLetters::dlq_redrive(self, topic, trigger, selection))
    }
    fn dlq_purge<'a>(
        &'a self,
        topic: &'a TopicName,
        trigger: Option<&'a TriggerName>,
        selection: DlqSelection,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(DeadLetters::dlq_purge(self, topic, trigger, selection))
    }
    fn stats<'a>(&'a self, key: &'a SubscriptionKey) -> BoxFuture<'a, Result<SubscriptionStats>> {
        Box::pin(Adapter::stats(self, key))
    }
    fn health(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(Adapter::health(self))
    }
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(Adapter::close(self))
    }
}
