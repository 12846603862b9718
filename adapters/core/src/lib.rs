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
//! # How each method maps onto each broker
//!
//! | contract | in-memory (`BuiltinQueueAdapter`) | NATS JetStream (`async-nats`) | RabbitMQ (`lapin`) |
//! |---|---|---|---|
//! | [`declare_topic`](Adapter::declare_topic) | a topic record holding its subscriptions, dedup window and DLQ | `get_or_create_stream` for the topic's subjects: `duplicate_window` = idempotency window, `max_age` = retention, `max_msg_size` = max_message_bytes; mutable fields updated with `update_stream`, an immutable conflict is an error | the durable topic exchange `topiq` (declared once per connection); retention becomes `x-message-ttl` on the topic's queues |
//! | [`declare_subscription`](Adapter::declare_subscription) | a queue per trigger, filled by every publish to the topic | durable pull consumer named after the trigger: `AckPolicy::Explicit`, `ack_wait` = visibility timeout, `DeliverPolicy::New`, `filter_subject` = the topic's subject, `max_ack_pending` ≥ the sum of prefetches | durable quorum queue `topiq.<topic>.<trigger>` bound to the exchange with routing key = topic |
//! | [`publish`](Adapter::publish) | pushed into each trigger queue under that queue's own lock | `publish_with_headers` (`Nats-Msg-Id` = idempotency key or message id; id, enqueued-at, trace headers), awaits the `PubAck`; a timed-out publish is sent again with the same `Nats-Msg-Id`; `duplicate: true` reads the first id from the stored message at the acked sequence | `basic_publish` with `mandatory`, persistent, headers; awaits the publisher confirm with a timeout; a `basic.return` or a nack is an error |
//! | [`publish_batch`](Adapter::publish_batch) | one publish per message | all publishes sent, then all `PubAck`s awaited | all publishes sent, then all confirms awaited |
//! | idempotency key | a per-topic map of key → first id, expired after the window | the stream's duplicate window on `Nats-Msg-Id` | no native dedup: a durable per-key record shared by all processes, expiring after the window (mechanism fixed and documented by the RabbitMQ adapter) |
//! | `deliver_at` / delay | a timer heap per trigger queue | nats-server 2.9 has no schedules: a delay stream whose scheduler consumer NAKs with the remaining delay until due, then publishes to the topic | a per-delay TTL queue dead-lettering into the exchange with the original routing key |
//! | [`consume`](Adapter::consume) | a stream that takes from the trigger queue while fewer than `prefetch` are unsettled | `consumer.messages()` / `fetch` with `expires` and idle heartbeats, at most `prefetch` outstanding; rebuilt on a missed heartbeat or a deleted consumer | a channel with `basic_qos(prefetch)` and `basic_consume` (manual ack) |
//! | attempt number | counted per delivery | the message's `num_delivered` | `x-delivery-count` + 1, or the `topiq-attempt` header of a retry copy |
//! | [`Delivery::ack`] | removes it from the in-flight table | `AckKind::Ack` (refused client-side after the lease ran out) | `basic_ack` on the delivery's channel, once |
//! | [`Delivery::nack`] | back in the queue after the delay, attempt + 1 | `AckKind::Nak(Some(delay))`, delay computed by topiq (the consumer's `backoff` does not apply to NAKs) | a copy with `topiq-attempt` + 1 to the trigger's retry queue for that delay (TTL, dead-lettering back to the trigger's queue), confirmed, then `basic_ack` of the original |
//! | [`Delivery::dead_letter`] | a DLQ record, then removed | publish the record to the DLQ stream, await its `PubAck`, then `AckKind::Term`; the max-deliveries advisory is kept as a backstop | publish the record to the trigger's DLQ queue, await the confirm, then `basic_ack` |
//! | [`Delivery::release`] | back at the head of the queue, same attempt | republish with the attempt in a header and a fresh `Nats-Msg-Id`, await the `PubAck`, then ack the original | `basic_nack(requeue)` (a quorum queue counts it; the adapter subtracts requeues it made) |
//! | [`Delivery::extend_lease`] | lease deadline moved to now + visibility timeout | `AckKind::Progress` (`+WPI`), which restarts `ack_wait` | a client-side lease restart (RabbitMQ holds unacked messages until the channel closes or its `consumer_timeout`) |
//! | lease expiry | checked by every consumer and DLQ call | the server redelivers after `ack_wait`; the client refuses its late ack | the client-side lease runs out: `basic_nack(requeue)` and the late settlement is refused |
//! | [`dlq_count`](Adapter::dlq_count) | count of the topic's DLQ records | message count of the DLQ stream's subject for the topic/trigger | message count of the trigger's DLQ queue(s) |
//! | [`dlq_list`](Adapter::dlq_list) | ordered records from a cursor | ordered consumer / direct get from a sequence; the cursor is the stream sequence | non-destructive read of the DLQ (a stream queue read from an offset); the cursor is the offset |
//! | [`dlq_redrive`](Adapter::dlq_redrive) | record back into its trigger's queue only, attempt 1 | publish to the trigger-only subject with a new `Nats-Msg-Id`, await `PubAck`, then delete the DLQ message | publish to the trigger's queue through the default exchange, confirmed, then remove the record |
//! | [`dlq_purge`](Adapter::dlq_purge) | records removed | `purge` by subject, or delete by sequence | records removed from the trigger's DLQ |
//! | [`stats`](Adapter::stats) | counts from the trigger queue | consumer info: `num_pending`, `num_ack_pending` | queue declare (passive): message and consumer counts |
//! | [`health`](Adapter::health) | Ok until closed | connection state + a `$JS.API.INFO` round trip | connection and channel status |
//! | [`close`](Adapter::close) | consumers end; later calls fail with [`Error::Closed`] | drain the client | close channels, then the connection |
//!
//! The JetStream and RabbitMQ columns are the plan the adapters' own crates implement; where an
//! adapter refines a row, its crate docs say so.
//!
//! # The conformance suite
//!
//! With the `testkit` feature, [`conformance`] holds one test per semantic of the contract and
//! [`conformance_tests!`] instantiates them all for an adapter factory, so every adapter is held
//! to the very same tests.

mod adapter;
mod delivery;
mod dlq;
mod error;
mod message;
mod names;
mod spec;
mod subscription;

#[cfg(feature = "testkit")]
pub mod conformance;

pub use adapter::{Adapter, DynAdapter, SharedAdapter, SubscriptionStats};
pub use delivery::{Acker, Delivery, Failure, FailureKind};
pub use dlq::{DeadLetter, DlqFilter, DlqPage, DlqQuery, DlqSelection, MAX_DLQ_PAGE};
pub use error::{BoxError, Error, Result};
pub use message::{
    DEFAULT_MAX_MESSAGE_BYTES, Envelope, MAX_IDEMPOTENCY_KEY_LEN, NewMessage, PublishReceipt,
    TraceContext, serialized_len,
};
pub use names::{
    MAX_TOPIC_LEN, MAX_TRIGGER_LEN, MessageId, SubscriptionKey, TopicName, TriggerName,
};
pub use spec::{
    Capabilities, ConsumeOptions, DEFAULT_IDEMPOTENCY_WINDOW, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_VISIBILITY_TIMEOUT, SubscriptionSpec, TopicSpec,
};
pub use subscription::Subscription;

/// Timestamps in envelopes and DLQ records (UTC, RFC 3339 in JSON).
pub use jiff::Timestamp;
