//! A consumer attached to one trigger's subscription: a stream of deliveries.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use futures::stream::BoxStream;

use crate::delivery::Delivery;
use crate::error::Result;
use crate::names::SubscriptionKey;

/// A stream of [`Delivery`]s for one subscription, at most `prefetch` of them unsettled at once.
///
/// Several `Subscription`s on the same key compete: each message goes to one of them. An `Err`
/// item reports a broker problem the adapter could not recover from by itself; the stream ends
/// when the adapter is closed. Dropping the subscription stops consuming; deliveries already
/// handed out stay valid and can still be settled.
pub struct Subscription {
    key: SubscriptionKey,
    deliveries: BoxStream<'static, Result<Delivery>>,
}

impl Subscription {
    /// Wraps an adapter's stream of deliveries for `key`.
    pub fn new(key: SubscriptionKey, deliveries: BoxStream<'static, Result<Delivery>>) -> Self {
        Self { key, deliveries }
    }

    /// The topic and trigger consumed.
    pub fn key(&self) -> &SubscriptionKey {
        &self.key
    }
}

impl Stream for Subscription {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.deliveries.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}
