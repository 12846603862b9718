//! A consumer's deliveries from its trigger queue, as a stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio_util::sync::ReusableBoxFuture;
use topiq_adapter::{Delivery, Result};

use crate::queue::{ConsumerSlot, TriggerQueue};

/// The deliveries of `queue` to one consumer, until the adapter is closed. One ready at once
/// is taken in the stream's own poll, with no future made or moved; a wait runs in a future
/// whose allocation is kept for the next wait.
pub(crate) struct Deliveries {
    queue: Arc<TriggerQueue>,
    slot: Arc<ConsumerSlot>,
    wait: ReusableBoxFuture<'static, Option<Delivery>>,
    /// Whether `wait` is a wait in progress.
    waiting: bool,
}

impl Deliveries {
    /// The deliveries of `queue` within `slot`'s prefetch.
    pub(crate) fn new(queue: Arc<TriggerQueue>, slot: Arc<ConsumerSlot>) -> Self {
        Self {
            queue,
            slot,
            wait: ReusableBoxFuture::new(std::future::ready(None)),
            waiting: false,
        }
    }
}

impl Stream for Deliveries {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if !this.waiting {
            if let Poll::Ready(next) = this.queue.ready_delivery(&this.slot) {
                return Poll::Ready(next.map(Ok));
            }
            let (queue, slot) = (Arc::clone(&this.queue), Arc::clone(&this.slot));
            this.wait
                .set(async move { queue.wait_for_delivery(&slot).await });
            this.waiting = true;
        }
        let next = std::task::ready!(this.wait.poll(cx));
        this.waiting = false;
        Poll::Ready(next.map(Ok))
    }
}
