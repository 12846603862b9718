//! What every broker adapter keeps of a message it received and holds under a lease, besides
//! the broker's own handle of it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use topiq_adapter::{
    DeadLetter, Envelope, Error, Failure, Result, SubscriptionKey, SubscriptionSpec, TopicName,
};

use crate::lease::{self, Lease};
use crate::{Signal, Stored};

/// A received message held by this process: its subscription, metadata, data, attempt and
/// lease.
pub struct Held {
    /// The subscription it was received on.
    pub key: SubscriptionKey,
    /// What the broker keeps beside its data.
    pub metadata: Stored,
    /// Its data.
    pub data: Arc<Value>,
    /// This delivery's attempt.
    pub attempt: u32,
    /// The subscription's attempt limit.
    pub max_attempts: u32,
    /// The subscription's visibility timeout: the lease's length.
    pub visibility_timeout: Duration,
    /// The subscription's `dead_letter_topic`.
    pub dead_letter_topic: Option<TopicName>,
    /// Whether the subscription is ordered (a release must keep the message first).
    pub ordered: bool,
    /// The lease, holding one of the subscription's prefetch slots.
    pub lease: Mutex<Lease>,
    /// Cancelled when the adapter closes: no settlement is taken after that.
    closed: Signal,
}

impl Held {
    /// `metadata` and `data` received on `spec`'s subscription at `attempt`, its lease
    /// starting now and holding `permit`, by an adapter that is closed when `closed` is
    /// cancelled.
    pub fn new(
        spec: &SubscriptionSpec,
        metadata: Stored,
        data: Arc<Value>,
        attempt: u32,
        permit: OwnedSemaphorePermit,
        closed: &Signal,
    ) -> Self {
        Self {
            key: spec.key.clone(),
            metadata,
            data,
            attempt,
            max_attempts: spec.max_attempts,
            visibility_timeout: spec.visibility_timeout,
            dead_letter_topic: spec.dead_letter_topic.clone(),
            ordered: spec.ordered,
            lease: Mutex::new(Lease::new(spec.visibility_timeout, permit)),
            closed: closed.clone(),
        }
    }

    /// What the handler sees.
    pub fn envelope(&self) -> Envelope {
        self.metadata.envelope(
            self.key.topic.clone(),
            Arc::clone(&self.data),
            self.attempt,
            self.max_attempts,
        )
    }

    /// Claims the lease for a settlement: `Closed` once the adapter is closed, `LeaseExpired`
    /// once the lease is settled or ran out (the broker may have delivered the message again,
    /// or the watcher dead-lettered it).
    pub fn claim(&self) -> Result<()> {
        ensure_open(&self.closed)?;
        lease::claim(&self.lease, &self.metadata.id)
    }

    /// Extends the lease by the visibility timeout: `LeaseExpired` once it is settled or ran
    /// out.
    pub fn extend(&self) -> Result<()> {
        lease::extend(&self.lease, self.visibility_timeout, &self.metadata.id)
    }

    /// The failure of a lease that ran out after `attempts` attempts.
    pub fn lease_expired(&self, attempts: u32) -> Failure {
        Failure::lease_expired(self.visibility_timeout, attempts, self.max_attempts)
    }

    /// The DLQ record of this message failing for good after `attempts` attempts.
    pub fn dead_letter(&self, error: Failure, attempts: u32) -> DeadLetter {
        self.metadata
            .dead_letter(&self.key, Arc::clone(&self.data), attempts, error)
    }
}

/// `Closed` once `closed` is cancelled: the check every adapter call makes first.
pub fn ensure_open(closed: &Signal) -> Result<()> {
    if closed.is_cancelled() {
        Err(Error::Closed)
    } else {
        Ok(())
    }
}
