//! The one error type every adapter returns.

use std::time::Duration;

use crate::names::{MessageId, SubscriptionKey, TopicName};

/// A boxed error from a broker client, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in an adapter call, in the user's terms.
///
/// [`Error::is_transient`] tells the caller whether the same call may succeed later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A topic name broke a naming rule.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The name as given.
        topic: String,
        /// The rule it broke.
        reason: &'static str,
    },

    /// A trigger name broke a naming rule.
    #[error("invalid trigger name {trigger:?}: {reason}")]
    InvalidTrigger {
        /// The name as given.
        trigger: String,
        /// The rule it broke.
        reason: &'static str,
    },

    /// The serialized message is larger than the topic allows.
    #[error(
        "message for topic {topic} is {size} bytes, over the limit of {limit} bytes (max_message_bytes); send a reference to the data instead, or raise the limit"
    )]
    PayloadTooLarge {
        /// The topic published to.
        topic: TopicName,
        /// The serialized size of the message data.
        size: usize,
        /// The topic's `max_message_bytes`.
        limit: usize,
    },

    /// An argument is out of its allowed range or shape.
    #[error("invalid argument {argument}: {reason}")]
    InvalidArgument {
        /// Which argument.
        argument: &'static str,
        /// What is wrong with it and what is allowed.
        reason: String,
    },

    /// The topic was never declared on this adapter.
    #[error(
        "unknown topic {topic}: declare it first (a trigger on it, or an entry under `topics:` in config.yaml)"
    )]
    UnknownTopic {
        /// The topic asked for.
        topic: TopicName,
    },

    /// No trigger of that name subscribes to the topic.
    #[error("unknown subscription {key}: no trigger of that name is declared on the topic")]
    UnknownSubscription {
        /// The subscription asked for.
        key: SubscriptionKey,
    },

    /// The delivery's lease ran out before it was settled: the message has been (or will be)
    /// delivered again, so this settlement was not applied.
    #[error(
        "the lease on message {id} expired before it was settled; it is redelivered (raise visibility_timeout or extend the lease)"
    )]
    LeaseExpired {
        /// The message whose lease expired.
        id: MessageId,
    },

    /// The adapter cannot honour an option the caller asked for.
    #[error("{adapter} does not support {option}: {hint}")]
    Unsupported {
        /// The adapter's class name.
        adapter: &'static str,
        /// The option that cannot be honoured.
        option: &'static str,
        /// What to do instead.
        hint: &'static str,
    },

    /// The broker could not be reached, or the connection dropped during the call.
    #[error("broker unavailable: {message}")]
    BrokerUnavailable {
        /// What the adapter was doing, without credentials.
        message: String,
        /// The client's error.
        #[source]
        source: Option<BoxError>,
    },

    /// The broker is out of room and refuses new messages (a JetStream stream at its byte or
    /// message limit, a RabbitMQ memory or disk alarm); stored messages are kept, and the
    /// same publish succeeds once space returns.
    #[error("the broker is full: {message}")]
    BrokerFull {
        /// What is full and what frees it, without credentials.
        message: String,
        /// The client's error.
        #[source]
        source: Option<BoxError>,
    },

    /// The broker did not confirm the call within the adapter's bound; the outcome is unknown.
    #[error("the broker did not answer {operation} within {timeout:?}")]
    Timeout {
        /// The call that timed out.
        operation: &'static str,
        /// The bound that elapsed.
        timeout: Duration,
    },

    /// The broker refused or failed the call.
    #[error("broker error during {operation}")]
    Broker {
        /// The call that failed.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },

    /// The adapter was closed; no more calls are accepted.
    #[error("the adapter is closed")]
    Closed,
}

impl Error {
    /// True when the same call may succeed if tried again later (the broker was down, a
    /// confirmation timed out); false when the input itself is wrong.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::BrokerUnavailable { .. }
                | Error::BrokerFull { .. }
                | Error::Timeout { .. }
                | Error::Broker { .. }
        )
    }

    /// A short stable code for this error, as the call surface reports it
    /// (`invalid_topic`, `payload_too_large`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidTopic { .. } => "invalid_topic",
            Error::InvalidTrigger { .. } => "invalid_trigger",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::UnknownTopic { .. } => "unknown_topic",
            Error::UnknownSubscription { .. } => "unknown_trigger",
            Error::LeaseExpired { .. } => "lease_expired",
            Error::Unsupported { .. } => "unsupported",
            Error::BrokerUnavailable { .. } | Error::Timeout { .. } => "broker_unavailable",
            Error::BrokerFull { .. } => "broker_full",
            Error::Broker { .. } => "broker_error",
            Error::Closed => "closed",
        }
    }
}
