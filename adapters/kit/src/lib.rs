//! What topiq's broker adapters share, so each adapter holds only what its broker needs:
//!
//! - [`lease`]: client-side delivery leases and their watcher;
//! - [`Declared`]: the topics and trigger subscriptions a process declared;
//! - [`Held`]: a received message held under a lease, with its claim, extension and DLQ record;
//! - [`Stored`]: what a broker keeps beside a message's data (id, enqueue time, attempts
//!   spent, trace context, ...), turned into the handler's envelope and into the DLQ record;
//! - [`codec`]: a message's data as bytes, and the error for a message topiq did not write;
//! - [`ConnectionOptions`], [`AdapterOptions`] and [`read_options`]: the options every
//!   adapter's `config:` map has, read beside its own; [`Secret`], [`TlsSettings`],
//!   [`duration`] and [`redact_url`]: the pieces of one;
//! - [`Deadlines`]: many waits bounded by their deadlines with one timer;
//! - [`Signal`]: a signal given once (an adapter's close, a run's cancel), and [`ensure_open`]:
//!   the closed-adapter check every call makes first;
//! - [`batch_unanswered`]: the error for a message of a batch that got no outcome.

pub mod codec;
mod connection;
mod deadlines;
mod declared;
pub mod duration;
mod held;
mod json_writer;
pub mod lease;
mod options;
mod redact;
mod secret;
mod signal;
mod stored;
mod tls;

pub use connection::{AdapterOptions, ConnectionOptions, deserialize_options, read_options};
pub use deadlines::{Bounded, Deadlines};
pub use declared::Declared;
pub use held::{Held, ensure_open};
pub use options::OptionsError;
pub use redact::redact_url;
pub use secret::Secret;
pub use signal::Signal;
pub use stored::{Stored, retention_end};
pub use tls::TlsSettings;

/// The error for a message of a batch that got no outcome: cannot happen (an adapter answers
/// each message of a batch), said as an error rather than a panic.
pub fn batch_unanswered() -> topiq_adapter::Error {
    topiq_adapter::Error::Broker {
        operation: "publish",
        source: "a message of the batch got no answer".into(),
    }
}
