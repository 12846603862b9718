//! What a topic shares with its trigger queues, so a queue needs nothing of the topic itself.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use topiq_adapter::{
    DeadLetter, NewMessage, PublishReceipt, Result, Timestamp, TopicName, TopicSpec,
};

use crate::dlq_store::DeadLetterStore;

/// Locks a mutex; a panic while it was held left data that is still consistent for these
/// structures (every update is a single push, pop or insert), so poisoning is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Counts itself in a counter for as long as it lives: a consumer parked for a message, a
/// publisher waiting for room (whoever could wake them skips the wake-up while none are).
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    pub(crate) fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a topic's queues share with it: its DLQ and whether the adapter is closed.
pub(crate) struct TopicShared {
    pub(crate) name: TopicName,
    pub(crate) spec: RwLock<TopicSpec>,
    pub(crate) dlq: Mutex<DeadLetterStore>,
    pub(crate) closed: Arc<AtomicBool>,
}

impl TopicShared {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn store_dead_letters(&self, records: Vec<DeadLetter>) {
        if records.is_empty() {
            return;
        }
        let mut dlq = lock(&self.dlq);
        for record in records {
            dlq.insert(record);
        }
    }

    pub(crate) fn dlq(&self) -> MutexGuard<'_, DeadLetterStore> {
        let retention = read(&self.spec).dlq_retention;
        let mut dlq = lock(&self.dlq);
        dlq.expire(retention, Timestamp::now());
        dlq
    }
}

/// Where a trigger's dead-letter notifications go: its `dead_letter_topic`.
pub(crate) trait DeadLetterTarget: Send + Sync {
    /// The topic's name, for logs.
    fn name(&self) -> &TopicName;
    /// Publishes a notification to the topic.
    fn publish(&self, message: NewMessage) -> Result<PublishReceipt>;
}
