//! The adapter contract of topiq.
//!
//! topiq's runtime talks to every broker through [`Adapter`] (or its object-safe twin
//! [`DynAdapter`]). The contract is shaped by what the brokers give, so that each adapter is a
//! thin mapping rather than an emulation:
//!
//! - **Topics and subscriptions are declared up front.** [`Adapter::declare_topic`] and
//!   [`Adapter::declare_subscription`] create (idempotently) what a broker needs before the
//!   first publish: a stream, an exchange, a durable consumer, a queue. A subscription is
//!   durable: it receives every message published after it was declared, with or without a
//!   consumer attached. A publish to a topic that was never declared is
//!   [`Error::UnknownTopic`].
//! - **Publishing is confirmed.** [`Adapter::publish`] returns only once the broker durably
//!   accepted the message; a duplicate idempotency key returns the first message's id with
//!   `duplicate: true`.
//! - **Consuming is pull-shaped.** [`Adapter::consume`] attaches one consumer; several consumers
//!   of one subscription compete for its messages. `prefetch` bounds what one consumer holds
//!   unsettled.
//! - **A [`Delivery`] owns its acker.** [`Delivery::ack`], [`Delivery::nack`],
//!   [`Delivery::dead_letter`] and [`Delivery::release`] consume it, so a message is settled once;
//!   [`Delivery::extend_lease`] borrows it. The attempt number and the trigger's attempt limit
//!   travel in the [`Envelope`].
//! - **The lease is the adapter's job.** A delivery not settled within the subscription's
//!   `visibility_timeout` is delivered again with the next attempt number (on the last attempt
//!   it is dead-lettered with [`FailureKind::LeaseExpired`]); a settlement that arrives after
//!   the lease ran out is refused with [`Error::LeaseExpired`], even where the broker would
//!   accept it.
//! - **The dead-letter queue is per (topic, trigger).** Redrive sends a record back to the
//!   trigger that failed, and only to it, with attempts reset.
//! - **Capabilities are declared.** [`Capabilities`] says what the adapter can honour; the
//!   runtime refuses a config that asks for more, at startup.
//!
//! # How each method maps onto the in-memory adapter
//!
//! | contract | in-memory (`BuiltinQueueAdapter`) |
//! |---|---|
//! | [`declare_topic`](Adapter::declare_topic) | a topic record holding its subscriptions, dedup window and DLQ |
//! | [`declare_subscription`](Adapter::declare_subscription) | a queue per trigger, filled by every publish to the topic |
//! | [`publish`](Adapter::publish) | pushed into each trigger queue under that queue's own lock |
//! | [`publish_batch`](Adapter::publish_batch) | one publish per message |
//! | [`publish_to`](Adapter::publish_to) | pushed into that one trigger's queue |
//! | idempotency key | a per-topic map of key → first id, expired after the window |
//! | `deliver_at` / delay | a timer heap per trigger queue |
//! | [`consume`](Adapter::consume) | a stream that takes from the trigger queue while fewer than `prefetch` are unsettled |
//! | attempt number | counted per delivery |
//! | [`Delivery::ack`] | removes it from the in-flight table |
//! | [`Delivery::nack`] | back in the queue after the delay, attempt + 1 |
//! | [`Delivery::dead_letter`] (and every other path into the DLQ: a lease that ran out on the last attempt, a delivery past the limit) | the subscription's `dead_letter_topic` (if set) gets [`DeadLetter::notification`], then a DLQ record, then removed |
//! | [`Delivery::release`] | back at the head of the queue, same attempt |
//! | [`Delivery::extend_lease`] | lease deadline moved to now + visibility timeout |
//! | lease expiry | checked by every consumer and DLQ call |
//! | [`dlq_count`](DeadLetters::dlq_count) | count of the topic's DLQ records |
//! | [`dlq_list`](DeadLetters::dlq_list) | ordered records from a cursor |
//! | [`dlq_redrive`](DeadLetters::dlq_redrive) | record back into its trigger's queue only, attempt 1 |
//! | [`dlq_purge`](DeadLetters::dlq_purge) | records removed |
//! | [`stats`](Adapter::stats) | counts from the trigger queue |
//! | [`health`](Adapter::health) | Ok until closed |
//! | [`close`](Adapter::close) | consumers end; later calls fail with [`Error::Closed`] |
//!
//! How each broker adapter keeps the contract is in its own crate's docs, beside the code
//! that does it (`cargo doc -p topiq-jetstream`, `cargo doc -p topiq-rabbitmq`), and in
//! docs/adapters.md; this table no longer repeats them, so it cannot drift from them.
//!
//! # The conformance suite
//!
//! With the `testkit` feature, `conformance` holds one test per semantic of the contract and
//! `conformance_tests!` instantiates them all for an adapter factory, so every adapter is held
//! to the very same tests.

mod adapter;
mod delivery;
mod dlq;
mod error;
mod message;
mod names;
mod naming;
mod spec;
mod subscription;

#[cfg(feature = "testkit")]
pub mod conformance;

pub use adapter::{Adapter, DeadLetters, DynAdapter, SharedAdapter, SubscriptionStats};
pub use delivery::{Acker, Delivery, Failure, FailureKind, MAX_FAILURE_MESSAGE, Settling};
pub use dlq::{DeadLetter, DlqFilter, DlqPage, DlqQuery, DlqRecordRef, DlqSelection, MAX_DLQ_PAGE};
pub use error::{BoxError, Error, Result};
pub use message::{
    DEFAULT_MAX_MESSAGE_BYTES, Envelope, MAX_DATA_DEPTH, MAX_IDEMPOTENCY_KEY_LEN, NewMessage,
    PublishReceipt, TraceContext, check_depth, check_size, data_too_deep, serialized_len,
};
pub use names::{
    MAX_TOPIC_LEN, MAX_TRIGGER_LEN, MessageId, SubscriptionKey, TopicName, TriggerName,
};
pub use spec::{
    Capabilities, ConsumeOptions, DEFAULT_IDEMPOTENCY_WINDOW, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_VISIBILITY_TIMEOUT, MAX_LANES, MIN_VISIBILITY_TIMEOUT, SubscriptionSpec, TopicSpec,
};
pub use subscription::Subscription;

/// Timestamps in envelopes and DLQ records (UTC, RFC 3339 in JSON).
pub use jiff::Timestamp;
