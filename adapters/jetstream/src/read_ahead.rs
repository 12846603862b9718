//! A puller's read-ahead: the slots reserved for what its pull requests may still deliver or
//! delivered and it has not handed out, and the messages that waited while nobody asked.

use std::collections::VecDeque;
use std::sync::Arc;

use async_nats::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Counts what a puller has asked for and not handed out, so it never asks for more than its
/// read-ahead (`ahead`) nor beyond its free slots.
///
/// Invariant: one reserved slot for each message the outstanding requests may still deliver,
/// each one received and waiting in the reply subscription, and each delivery in the backlog.
pub(crate) struct ReadAhead {
    /// One permit per delivery unsettled or on its way (the consumer's `prefetch`).
    slots: Arc<Semaphore>,
    /// How many deliveries may be on their way or received and not yet handed out.
    ahead: usize,
    /// The reserved slots (a count, not a semaphore: only this puller takes and frees them).
    reserved: Vec<OwnedSemaphorePermit>,
    /// What was already waiting when the consumer asked again, with when nobody asked any
    /// more (it may have waited since then).
    backlog: VecDeque<(async_nats::Message, Instant)>,
}

impl ReadAhead {
    /// A read-ahead of `ahead` deliveries within `slots`, nothing reserved.
    pub(crate) fn new(slots: Arc<Semaphore>, ahead: usize) -> Self {
        Self {
            slots,
            ahead,
            reserved: Vec::new(),
            backlog: VecDeque::new(),
        }
    }

    /// The consumer's slots, from which a request's slots are taken, and a delivery's when
    /// none was reserved for it.
    pub(crate) fn slots(&self) -> &Arc<Semaphore> {
        &self.slots
    }

    /// How many slots are reserved.
    pub(crate) fn reserved(&self) -> usize {
        self.reserved.len()
    }

    /// How many more messages there is room for: free slots, within the read-ahead.
    pub(crate) fn room(&self) -> usize {
        self.slots.available_permits().min(self.left())
    }

    /// How many more may be reserved within the read-ahead, free slots or not.
    pub(crate) fn left(&self) -> usize {
        self.ahead.saturating_sub(self.reserved.len())
    }

    /// Records the slots of a pull request that was sent.
    pub(crate) fn reserve(&mut self, fresh: Vec<OwnedSemaphorePermit>) {
        self.reserved.extend(fresh);
    }

    /// The reserved slot of a delivery handed out now (`None` when nothing was reserved for
    /// it: the caller waits for a free one).
    pub(crate) fn take_slot(&mut self) -> Option<OwnedSemaphorePermit> {
        self.reserved.pop()
    }

    /// A request expired with `unfilled` of its messages never sent: their slots are freed.
    pub(crate) fn expired(&mut self, unfilled: usize) {
        let keep = self.reserved.len().saturating_sub(unfilled);
        self.reserved.truncate(keep);
    }

    /// Keeps `message`, which waited since `since`, to be handed out before anything new.
    pub(crate) fn wait(&mut self, message: async_nats::Message, since: Instant) {
        self.backlog.push_back((message, since));
    }

    /// The message that waited longest, with when it began to wait.
    pub(crate) fn next_waiting(&mut self) -> Option<(async_nats::Message, Instant)> {
        self.backlog.pop_front()
    }

    /// The outstanding requests are forgotten (their reply subscription is dropped), so their
    /// slots are freed. What already arrived in the backlog stays to be handed out, each with
    /// its slot kept: its delivery is the server's, whatever became of the request. The
    /// requests' statuses go with them: an old expiry would free a new request's slots.
    pub(crate) fn start_over(&mut self) {
        self.backlog.retain(|(message, _)| is_delivery(message));
        self.reserved.truncate(self.backlog.len());
    }

    /// The deliveries never handed out, for the puller's release when it is dropped.
    pub(crate) fn take_waiting(&mut self) -> Vec<async_nats::Message> {
        self.backlog
            .drain(..)
            .map(|(message, _)| message)
            .filter(is_delivery)
            .collect()
    }
}

/// Whether `message` is a delivery, not a status of the pull requests.
pub(crate) fn is_delivery(message: &async_nats::Message) -> bool {
    matches!(message.status, None | Some(StatusCode::OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery() -> async_nats::Message {
        async_nats::Message {
            subject: "inbox".into(),
            reply: Some("$JS.ACK.s.c.1.1.1.0.0".into()),
            payload: bytes::Bytes::from_static(b"{}"),
            headers: None,
            status: None,
            description: None,
            length: 2,
        }
    }

    fn expiry(unfilled: usize) -> async_nats::Message {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Pending-Messages", unfilled.to_string().as_str());
        async_nats::Message {
            status: Some(StatusCode::TIMEOUT),
            description: Some("Request Timeout".into()),
            headers: Some(headers),
            reply: None,
            payload: bytes::Bytes::new(),
            ..delivery()
        }
    }

    /// Sends a request for all the room there is, as the puller does.
    fn pull(read_ahead: &mut ReadAhead) -> usize {
        let room = read_ahead.room();
        let fresh = (0..room)
            .map(|_| Arc::clone(read_ahead.slots()).try_acquire_owned())
            .collect::<Result<Vec<_>, _>>()
            .expect("free slots");
        read_ahead.reserve(fresh);
        room
    }

    /// A request of 4: two messages waited while nobody asked, then the puller started over
    /// (a refused pull). Its next request may ask only for what the two left room for, and
    /// once they are handed out, what stays reserved is exactly that request's own.
    #[test]
    fn a_start_over_keeps_the_slots_of_what_already_arrived() {
        let slots = Arc::new(Semaphore::new(100));
        let mut read_ahead = ReadAhead::new(Arc::clone(&slots), 4);
        assert_eq!(pull(&mut read_ahead), 4);
        let now = Instant::now();
        read_ahead.wait(delivery(), now);
        read_ahead.wait(delivery(), now);
        read_ahead.wait(expiry(2), now);

        read_ahead.start_over();
        assert_eq!(read_ahead.reserved(), 2, "the two waiting keep their slots");
        let asked = pull(&mut read_ahead);
        assert_eq!(asked, 2, "the new request asks only for the room left");

        let mut handed_out = Vec::new();
        while let Some((message, _)) = read_ahead.next_waiting() {
            assert!(is_delivery(&message), "an old request's status is dropped");
            handed_out.push(read_ahead.take_slot().expect("a reserved slot"));
        }
        assert_eq!(handed_out.len(), 2);
        assert_eq!(
            read_ahead.reserved(),
            asked,
            "one slot reserved for each message the new request may still deliver"
        );
        assert_eq!(slots.available_permits(), 100 - 4);
    }

    /// What the puller releases when dropped is deliveries only: a status has nothing to give
    /// back.
    #[test]
    fn what_waits_is_released_without_statuses() {
        let mut read_ahead = ReadAhead::new(Arc::new(Semaphore::new(4)), 4);
        let now = Instant::now();
        read_ahead.wait(expiry(1), now);
        read_ahead.wait(delivery(), now);
        assert_eq!(read_ahead.take_waiting().len(), 1);
    }
}
