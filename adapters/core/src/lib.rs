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
//! | [`declare_topic`](Adapter::declare_topic) | a topic record holding its subscriptions, dedup window and DLQ | `get_or_create_stream` with a collision-free stream name for the topic (stream names cannot hold `.`), then a diff of `info.config` against the wanted one (`get_or_create_stream` does not compare): `duplicate_window` = idempotency window, no `max_age` (retention is stamped on each message and an expired one dead-lettered as `expired` on receipt), `max_msg_size` = max_message_bytes plus header room; mutable fields changed with `update_stream`, an immutable conflict is an error | the durable topic exchange `topiq` (declared once per connection); retention is stamped on each message (`topiq-expires-at`) and an expired one dead-lettered as `expired` on receipt |
//! | [`declare_subscription`](Adapter::declare_subscription) | a queue per trigger, filled by every publish to the topic | durable pull consumer named after the trigger: `AckPolicy::Explicit`, `ack_wait` = visibility timeout, `DeliverPolicy::New`, `filter_subject` = the topic's subject, `max_deliver` = max_attempts + 1 (so an expired last lease comes back to the adapter to dead-letter), `max_ack_pending` generous or -1 (a NAK-delayed message holds a pending slot for its whole delay); trigger-only copies (redrive, release) need 2.10's `filter_subjects` or a per-trigger subject scheme on 2.9 | durable quorum queue per trigger bound to the exchange with routing key = topic, its name hashed when `topiq.<topic>.<trigger>` would pass AMQP's 255 bytes; `x-delivery-limit` set explicitly (4.x defaults to 20) |
//! | [`publish`](Adapter::publish) | pushed into each trigger queue under that queue's own lock | `publish_with_headers` (`Nats-Msg-Id` = idempotency key or message id; id, enqueued-at, trace headers), awaits the `PubAck`; a timed-out publish (or error 10158 on a cluster) is sent again with the same `Nats-Msg-Id`; for `duplicate: true` the ack's `sequence` is the original's, whose id header is read back | `basic_publish` persistent with headers; awaits the publisher confirm with a timeout; a nack is an error. `mandatory` returns (which lapin attaches to the next confirm: correlate by message id) are errors only where the topic has subscriptions, since a topic without triggers accepts and drops on every adapter; `UnknownTopic` comes from the adapter's own set of declared topics |
//! | [`publish_batch`](Adapter::publish_batch) | one publish per message | all publishes sent, then all `PubAck`s awaited | all publishes sent, then all confirms awaited |
//! | idempotency key | a per-topic map of key → first id, expired after the window | the stream's duplicate window on `Nats-Msg-Id` | no native dedup: a durable per-key record shared by all processes, expiring after the window (mechanism fixed and documented by the RabbitMQ adapter) |
//! | `deliver_at` / delay | a timer heap per trigger queue | nats-server 2.9 has no schedules: a delay stream whose scheduler consumer (`max_ack_pending` -1, since every waiting message holds a slot) NAKs with the remaining delay until due, then publishes to the topic with a deterministic `Nats-Msg-Id` | a quorum TTL queue per delay bucket (a fixed set of delays, so the number of queues is bounded) with `dead-letter-strategy: at-least-once` and `overflow: reject-publish`, entered with routing key = topic so dead-lettering keeps it |
//! | [`consume`](Adapter::consume) | a stream that takes from the trigger queue while fewer than `prefetch` are unsettled | long-polling `batch()` pulls sized to the free slots (`messages()` pulls ahead, and buffered messages spend their `ack_wait`), two in flight, with `expires`; a failed pull gets or recreates the consumer (the JetStream crate docs say why there is no idle heartbeat) | a channel with `basic_qos(prefetch)` (a `u16`: clamped) and `basic_consume` (manual ack) |
//! | attempt number | counted per delivery | the message's `info().delivered`, or the `topiq-attempt` header of a released copy | `x-delivery-count` + 1 (it counts every return up to 4.2, channel closes included; 4.3+ counts only rejects: use `x-acquired-count` there), or the `topiq-attempt` header of a retry copy |
//! | [`Delivery::ack`] | removes it from the in-flight table | `AckKind::Ack` (refused client-side after the lease ran out) | `basic_ack` on the delivery's channel, once |
//! | [`Delivery::nack`] | back in the queue after the delay, attempt + 1 | `AckKind::Nak(Some(delay))`, delay computed by topiq (the consumer's `backoff` does not apply to NAKs); the message holds a pending slot until redelivered | a copy with `topiq-attempt` + 1 to the trigger's retry queue for that delay (TTL, dead-lettering back to the trigger's queue), confirmed, then `basic_ack` of the original |
//! | [`Delivery::dead_letter`] (and every other path into the DLQ: a lease that ran out on the last attempt, a delivery past the limit) | the subscription's `dead_letter_topic` (if set) gets [`DeadLetter::notification`], then a DLQ record, then removed | publish the record to the DLQ stream, await its `PubAck`, then `AckKind::Term`; the max-deliveries advisory (plain core NATS: lost when nobody listens) is only a backstop | publish the record to the trigger's DLQ queue, await the confirm, then `basic_ack` |
//! | [`Delivery::release`] | back at the head of the queue, same attempt | republish to the trigger-only subject with the attempt in a header and a fresh `Nats-Msg-Id`, await the `PubAck`, then ack the original | publish a copy with `topiq-attempt` to the trigger's queue through the default exchange, await the confirm, then `basic_ack` the original |
//! | [`Delivery::extend_lease`] | lease deadline moved to now + visibility timeout | `AckKind::Progress` (`+WPI`), which restarts `ack_wait` | a client-side lease restart (RabbitMQ holds unacked messages until the channel closes or its `consumer_timeout`) |
//! | lease expiry | checked by every consumer and DLQ call | the server redelivers after `ack_wait`; the client refuses its late ack | the client-side lease runs out: `basic_reject(requeue)` and the late settlement is refused |
//! | [`dlq_count`](Adapter::dlq_count) | count of the topic's DLQ records | message count of the DLQ stream's subject for the topic/trigger | records minus removed ones (a stream queue keeps everything; see `dlq_list`) |
//! | [`dlq_list`](Adapter::dlq_list) | ordered records from a cursor | ordered consumer / direct get from a sequence; the cursor is the stream sequence | a stream queue read from an offset (`x-stream-offset`, manual ack), skipping offsets recorded as removed; the cursor is the offset |
//! | [`dlq_redrive`](Adapter::dlq_redrive) | record back into its trigger's queue only, attempt 1 | publish to the trigger-only subject with a new `Nats-Msg-Id`, await `PubAck`, then delete the DLQ message | publish to the trigger's queue through the default exchange, confirmed, then record the offset as removed (streams never delete single messages) |
//! | [`dlq_purge`](Adapter::dlq_purge) | records removed | `purge` by subject, or delete by sequence | offsets recorded as removed; retention (`max-age`) reclaims the space |
//! | [`stats`](Adapter::stats) | counts from the trigger queue | consumer info `num_pending` plus the delay stream's count for waiting; `num_ack_pending` includes NAK-delayed messages | the trigger queue's ready count plus the retry and delay bucket queues the process declared (no management plugin needed); in flight = the process's own unsettled deliveries |
//! | [`health`](Adapter::health) | Ok until closed | a ping round trip (`flush`) within 5 s | connection and channel status |
//! | [`close`](Adapter::close) | consumers end; later calls fail with [`Error::Closed`] | drain the client | close channels, then the connection |
//!
//! The JetStream and RabbitMQ columns were the plan the adapters' own crates implement, checked
//! against the clients' and brokers' documentation and issue trackers; where an adapter refines
//! a row (JetStream's pulls, RabbitMQ's DLQ stream per topic and its idempotency queues), its
//! crate docs and docs/adapters.md say how.
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
mod spec;
mod subscription;

#[cfg(feature = "testkit")]
pub mod conformance;

pub use adapter::{Adapter, DynAdapter, SharedAdapter, SubscriptionStats};
pub use delivery::{Acker, Delivery, Failure, FailureKind, MAX_FAILURE_MESSAGE};
pub use dlq::{DeadLetter, DlqFilter, DlqPage, DlqQuery, DlqRecordRef, DlqSelection, MAX_DLQ_PAGE};
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
