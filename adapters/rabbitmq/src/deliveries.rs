//! A trigger's deliveries from its RabbitMQ consumer, as a stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio_util::sync::ReusableBoxFuture;
use topiq_adapter::{Delivery, Result};

use crate::consumer::{Consuming, Ready};

/// What a wait ends with: the next delivery (`None` once the adapter is closed) and the
/// consumer's state back.
type Waited = (Option<Result<Delivery>>, Box<Consuming>);

/// The deliveries of one consumer. A delivery lapin has already received, with a slot free,
/// is handed out in the stream's own poll, with no future made or moved (a lapin delivery is
/// some 400 bytes); anything else (opening the consumer, waiting for a delivery or a slot,
/// settling one that is not handed out) runs in a future that owns the state until it is
/// done, its allocation kept for the next wait.
pub(crate) struct Deliveries {
    /// The consumer's state between waits; in `wait` during one.
    state: Option<Box<Consuming>>,
    wait: ReusableBoxFuture<'static, Waited>,
}

impl Deliveries {
    /// The deliveries of the consumer `state` opens.
    pub(crate) fn new(state: Box<Consuming>) -> Self {
        Self {
            state: Some(state),
            wait: ReusableBoxFuture::new(futures::future::pending()),
        }
    }
}

impl Stream for Deliveries {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(mut state) = this.state.take() {
            match state.take_ready(cx) {
                Ready::Delivery(delivery) => {
                    this.state = Some(state);
                    return Poll::Ready(Some(Ok(delivery)));
                }
                Ready::Wait(taken) => this.wait.set(state.wait_next(taken)),
            }
        }
        let (next, state) = std::task::ready!(this.wait.poll(cx));
        this.state = Some(state);
        Poll::Ready(next)
    }
}
