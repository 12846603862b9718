//! A trigger's intake from a topic split into lanes (priority levels, or the partitions of
//! per-key order): one subscription per lane, and the order they are asked in. Partitions are
//! asked in turn. Of priority levels, the highest lane goes first, except that every
//! [`SHARE_EVERY`]th pull starts at the next lane in turn (0, 1, ... up to the highest, then
//! 0 again), so a lower lane with messages waiting is served at least once every
//! `SHARE_EVERY × lanes` pulls however busy the higher ones are (the starvation bound).
//!
//! A broker's subscription may be busy a moment before it hands out a message it holds (a
//! round trip to restart the server's lease), so each pull asks every lane and keeps what a
//! lane had ready while a higher one was busy: at most one delivery per lane waits here, and
//! one that waited a quarter of its lease goes first, its lease extended as it is handed out.
//! One whose lease ran out meanwhile (every handler busy for longer) is let go: the broker
//! delivers it again, maybe elsewhere, and this copy must not run beside that one.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::time::Instant;
use topiq_adapter::{Delivery, Subscription};

/// Every this many pulls, the lane whose turn it is goes first.
pub(crate) const SHARE_EVERY: u64 = 8;

/// Lanes in the order a pull looks at them: on the stack, as a trigger has at most
/// [`MAX_LANES`](topiq_adapter::MAX_LANES) of them (a pull allocates nothing).
type LaneList = arrayvec::ArrayVec<usize, { topiq_adapter::MAX_LANES as usize }>;

/// How many lanes a pull looks at: all of them (a topic's spec allows no more than fit in a
/// [`LaneList`]).
fn lane_count(subscriptions: usize) -> usize {
    subscriptions.min(topiq_adapter::MAX_LANES as usize)
}

/// Which lane a pull asks first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LaneOrder {
    /// Priority levels: the highest, except every [`SHARE_EVERY`]th pull.
    HighestFirst,
    /// Partitions of ordered triggers: each lane in turn, one pull each.
    InTurn,
}

/// The subscriptions of one trigger, by lane, what each had ready, and where the rotation
/// stands.
pub(crate) struct Lanes {
    subscriptions: Vec<Subscription>,
    /// Per lane, a delivery taken while a higher lane went first, with when it was taken.
    waiting: Vec<Option<(Delivery, Instant)>>,
    /// A delivery waiting this long goes first (a quarter of the trigger's visibility
    /// timeout).
    max_wait: Duration,
    pulls: u64,
    turn: usize,
    lane_order: LaneOrder,
    /// What a subscription answered when it was asked again right after a pull, if that was
    /// its end or an error: the next pull returns it.
    ended: Option<Option<topiq_adapter::Result<Delivery>>>,
    /// A delivery that waited here `max_wait` or more, kept while its lease is extended: a
    /// pull dropped during the extension (the trigger's loop drops pulls that are not ready)
    /// loses nothing, and the next pull finishes the extension.
    extending: Option<Delivery>,
    /// A subscription ended: every pull answers `None`, and none is polled again (an
    /// adapter's stream may not be polled after its end).
    finished: bool,
}

impl Lanes {
    /// Lane `n` is `subscriptions[n]`; a delivery kept waiting `max_wait` goes first.
    pub(crate) fn new(
        subscriptions: Vec<Subscription>,
        max_wait: Duration,
        lane_order: LaneOrder,
    ) -> Self {
        let waiting = subscriptions.iter().map(|_| None).collect();
        Self {
            subscriptions,
            waiting,
            max_wait,
            pulls: 0,
            turn: 0,
            lane_order,
            ended: None,
            extending: None,
            finished: false,
        }
    }

    /// A delivery ready now, without waiting (`None` when there is none): what fills a batch
    /// behind its first delivery. An end or an error ready instead is kept for the next pull,
    /// which answers with it.
    pub(crate) fn next_ready(&mut self) -> Option<Delivery> {
        match self.next().now_or_never()? {
            Some(Ok(delivery)) => Some(delivery),
            other => {
                self.ended = Some(other);
                None
            }
        }
    }

    /// The next delivery: the first lane, in this pull's order, that has one ready (or one
    /// that waited `max_wait`); `None` once any lane's subscription ended. A delivery that
    /// waited here `max_wait` or more has its lease extended first; one whose lease ran out
    /// meanwhile (the broker gives it to another consumer) is let go, never handed out.
    ///
    /// Safe to drop before it is ready: what it was pulling or extending stays here for the
    /// next call.
    pub(crate) async fn next(&mut self) -> Option<topiq_adapter::Result<Delivery>> {
        loop {
            if let Some(waiting) = &self.extending {
                let extended = waiting.extend_lease().await;
                if let Some(delivery) = self.extending.take() {
                    match extended {
                        Ok(()) => return Some(Ok(delivery)),
                        Err(err) => {
                            let id = &delivery.envelope().id;
                            tracing::warn!(%id, error = %err, "a message that waited for its lane's turn lost its lease; let go (it is delivered again)");
                        }
                    }
                }
                continue;
            }
            let (delivery, waited) = match self.pull().await {
                Some(Ok(taken)) => taken,
                other => return other.map(|result| result.map(|(delivery, _)| delivery)),
            };
            if waited < self.max_wait {
                return Some(Ok(delivery));
            }
            self.extending = Some(delivery);
        }
    }

    /// One pull: the delivery and how long it waited here.
    async fn pull(&mut self) -> Option<topiq_adapter::Result<(Delivery, Duration)>> {
        if self.finished {
            return None;
        }
        if let Some(ended) = self.ended.take() {
            self.finished = ended.is_none();
            return ended.map(|result| result.map(|delivery| (delivery, Duration::ZERO)));
        }
        let order = self.order();
        let next = poll_fn(|cx| {
            // One clock read a poll: when what arrived now came, and how long the rest waited.
            let now = Instant::now();
            for lane in 0..self.subscriptions.len() {
                if self.waiting[lane].is_some() {
                    continue;
                }
                match self.subscriptions[lane].poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(delivery))) => {
                        self.waiting[lane] = Some((delivery, now));
                    }
                    Poll::Ready(other) => {
                        return Poll::Ready(
                            other.map(|result| result.map(|d| (d, Duration::ZERO))),
                        );
                    }
                    Poll::Pending => {}
                }
            }
            let Some((lane, delivery, waited)) = self.pick(&order, now) else {
                return Poll::Pending;
            };
            // Asked again at once, so its subscription asks the broker for the next one
            // while this one is handled (else that round trip would come at the next pull,
            // and a lower lane's delivery, ready by then, would go first). An end or an
            // error it gives now is the next pull's answer.
            match self.subscriptions[lane].poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(next))) => self.waiting[lane] = Some((next, now)),
                Poll::Ready(other) => self.ended = Some(other),
                Poll::Pending => {}
            }
            Poll::Ready(Some(Ok((delivery, waited))))
        })
        .await;
        self.pulls += 1;
        self.finished = next.is_none();
        next
    }

    /// Ends the subscriptions, giving back (without spending an attempt) what waited here.
    pub(crate) async fn give_back(mut self) {
        let waiting: Vec<Delivery> = self
            .waiting
            .iter_mut()
            .filter_map(|slot| slot.take().map(|(delivery, _)| delivery))
            .chain(self.extending.take())
            .collect();
        drop(self);
        for delivery in waiting {
            let id = delivery.envelope().id.clone();
            if let Err(err) = delivery.release().await {
                tracing::warn!(%id, error = %err, "cannot give back a message that waited for its lane's turn; it is delivered again after its lease");
            }
        }
    }

    /// The delivery this pull hands out, with its lane and how long it waited: one that
    /// waited `max_wait` at `now`, else the first lane in `order` that has one.
    fn pick(&mut self, order: &[usize], now: Instant) -> Option<(usize, Delivery, Duration)> {
        let overdue = (0..self.waiting.len()).find(|&lane| {
            self.waiting[lane]
                .as_ref()
                .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= self.max_wait)
        });
        let lane = overdue.or_else(|| {
            order
                .iter()
                .copied()
                .find(|&lane| self.waiting[lane].is_some())
        })?;
        self.waiting[lane]
            .take()
            .map(|(delivery, since)| (lane, delivery, now.saturating_duration_since(since)))
    }

    fn order(&mut self) -> LaneList {
        let count = lane_count(self.subscriptions.len());
        match self.lane_order {
            LaneOrder::HighestFirst => pull_order(self.pulls, &mut self.turn, count),
            LaneOrder::InTurn => {
                let first = self.turn;
                self.turn = (self.turn + 1) % count.max(1);
                (0..count).map(|n| (first + n) % count).collect()
            }
        }
    }
}

/// The order of `count` lanes at pull number `pulls` (from 0): highest first, or (every
/// [`SHARE_EVERY`]th pull) the lane whose `turn` it is, then the others highest first; moves
/// the turn on when it was used.
fn pull_order(pulls: u64, turn: &mut usize, count: usize) -> LaneList {
    let mut order: LaneList = (0..count).rev().collect();
    if count > 1 && (pulls + 1).is_multiple_of(SHARE_EVERY) {
        let first = *turn;
        *turn = (*turn + 1) % count;
        order.retain(|lane| *lane != first);
        order.insert(0, first);
    }
    order
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{SHARE_EVERY, pull_order};

    #[test]
    fn the_highest_lane_goes_first_and_each_lane_gets_its_turn() {
        let mut turn = 0;
        let orders: Vec<Vec<usize>> = (0..SHARE_EVERY * 3)
            .map(|pull| pull_order(pull, &mut turn, 3).to_vec())
            .collect();
        let firsts: Vec<usize> = orders.iter().map(|order| order[0]).collect();
        let mut expected = vec![2; usize::try_from(SHARE_EVERY * 3).unwrap()];
        for lane in 0..3 {
            expected[usize::try_from(SHARE_EVERY).unwrap() * (lane + 1) - 1] = lane;
        }
        assert_eq!(firsts, expected);
        assert_eq!(
            orders[7],
            [0, 2, 1],
            "the turn's lane, then the rest highest first"
        );
        assert_eq!(orders[15], [1, 2, 0]);
        assert_eq!(
            pull_order(7, &mut 0, 1).as_slice(),
            [0],
            "one lane: nothing to rotate"
        );
    }
}

#[cfg(test)]
mod lease_tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use serde_json::json;
    use topiq_adapter::{
        Adapter, ConsumeOptions, NewMessage, SubscriptionKey, SubscriptionSpec, TopicName,
        TopicSpec, TriggerName,
    };
    use topiq_memory::BuiltinQueueAdapter;

    use super::{LaneOrder, Lanes};

    /// A delivery kept waiting here past its lease (every handler busy) is not handed out:
    /// the broker gave it out again, and only that copy runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_delivery_whose_lease_ran_out_is_let_go() {
        let adapter = BuiltinQueueAdapter::new();
        let topic = TopicName::new("lanes").unwrap();
        let mut spec = TopicSpec::new(topic.clone());
        spec.lanes = 2;
        adapter.declare_topic(spec).await.unwrap();
        let key = SubscriptionKey::new(topic.clone(), TriggerName::new("t").unwrap());
        let mut subscription = SubscriptionSpec::new(key.clone());
        subscription.visibility_timeout = Duration::from_secs(1);
        adapter.declare_subscription(subscription).await.unwrap();
        for lane in [0, 1] {
            let message = NewMessage::new(json!(lane)).lane(lane);
            adapter.publish(&topic, message).await.unwrap();
        }
        let mut subscriptions = Vec::new();
        for lane in [0, 1] {
            let options = ConsumeOptions::with_prefetch(2).on_lane(lane);
            subscriptions.push(adapter.consume(&key, options).await.unwrap());
        }
        let mut lanes = Lanes::new(subscriptions, Duration::from_millis(250), LaneOrder::InTurn);
        let first = lanes.next().await.unwrap().unwrap();
        // The other lane's delivery waits here while the first is handled (its lease
        // extended, as a running handler's is), past the waiting one's lease.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            first.extend_lease().await.unwrap();
        }
        first.ack().await.unwrap();
        let next = lanes.next().await.unwrap().unwrap();
        assert_eq!(next.envelope().attempt, 2, "the stale copy was let go");
        next.ack().await.unwrap();
    }
}

#[cfg(test)]
mod cancel_tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures::{FutureExt, StreamExt};
    use serde_json::json;
    use topiq_adapter::{
        Acker, Delivery, Failure, Settling, Subscription, SubscriptionKey, TopicName, TriggerName,
    };

    use super::{LaneOrder, Lanes};

    /// An acker whose lease extension is not done at its first poll (as JetStream's is not
    /// while the client's command channel is full), counting the extensions asked for.
    struct SlowExtension(Arc<AtomicUsize>);

    impl Acker for SlowExtension {
        fn ack(self) -> Settling<'static> {
            Settling::done(Ok(()))
        }
        fn nack(self, _delay: Duration) -> Settling<'static> {
            Settling::done(Ok(()))
        }
        fn dead_letter(self, _failure: Failure) -> Settling<'static> {
            Settling::done(Ok(()))
        }
        fn release(self) -> Settling<'static> {
            Settling::done(Ok(()))
        }
        fn extend_lease(&self) -> Settling<'_> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Settling::pending(async {
                tokio::task::yield_now().await;
                Ok(())
            })
        }
    }

    fn delivery(n: u32, extensions: &Arc<AtomicUsize>) -> topiq_adapter::Result<Delivery> {
        let envelope = crate::testing::envelope("lanes", json!(n));
        Ok(Delivery::new(
            envelope,
            SlowExtension(Arc::clone(extensions)),
        ))
    }

    /// The trigger's loop drops a pull that is not ready at once: a delivery whose lease was
    /// being extended then is handed out by the next pull, not lost (it would come back only
    /// after its lease, with an attempt spent).
    #[tokio::test]
    async fn a_pull_dropped_while_a_lease_is_extended_loses_no_delivery() {
        let extensions = Arc::new(AtomicUsize::new(0));
        let deliveries = vec![delivery(0, &extensions), delivery(1, &extensions)];
        let subscription = Subscription::new(key(), futures::stream::iter(deliveries).boxed());
        // No wait allowed: every delivery has its lease extended before it is handed out.
        let mut lanes = Lanes::new(vec![subscription], Duration::ZERO, LaneOrder::HighestFirst);
        assert!(lanes.next().now_or_never().is_none(), "the extension waits");
        let first = lanes.next().await.unwrap().unwrap();
        assert_eq!(
            *first.envelope().data,
            json!(0),
            "the first delivery, not lost"
        );
        assert_eq!(
            extensions.load(Ordering::SeqCst),
            2,
            "its lease extended again"
        );
        let second = lanes.next().await.unwrap().unwrap();
        assert_eq!(*second.envelope().data, json!(1));
    }

    fn key() -> SubscriptionKey {
        SubscriptionKey::new(
            TopicName::new("lanes").unwrap(),
            TriggerName::new("t").unwrap(),
        )
    }

    /// An adapter's stream ends (its `unfold` panics if polled again): the trigger's loop
    /// may ask again (a batch being filled asks for more), and gets the end again.
    #[tokio::test]
    async fn an_ended_subscription_keeps_answering_its_end() {
        let extensions = Arc::new(AtomicUsize::new(0));
        let stream = futures::stream::unfold(0, move |n| {
            let delivery = (n < 1).then(|| (delivery(n, &extensions), n + 1));
            async move { delivery }
        });
        let subscription = Subscription::new(key(), stream.boxed());
        let wait = Duration::from_secs(60);
        let mut lanes = Lanes::new(vec![subscription], wait, LaneOrder::HighestFirst);
        assert!(lanes.next().await.unwrap().is_ok());
        assert!(lanes.next().await.is_none());
        assert!(lanes.next().await.is_none(), "asked again: ended still");
        assert!(lanes.next_ready().is_none());
    }

    /// A batch fills with what is ready: an error ready in its place is not dropped, the
    /// next pull answers with it (the trigger logs it and waits before pulling again).
    #[tokio::test]
    async fn an_error_met_while_filling_a_batch_is_the_next_pulls_answer() {
        let extensions = Arc::new(AtomicUsize::new(0));
        let failed = Err(topiq_adapter::Error::BrokerUnavailable {
            message: "the broker went away".into(),
            source: None,
        });
        let items = vec![delivery(0, &extensions), failed, delivery(1, &extensions)];
        let subscription = Subscription::new(key(), futures::stream::iter(items).boxed());
        let wait = Duration::from_secs(60);
        let mut lanes = Lanes::new(vec![subscription], wait, LaneOrder::HighestFirst);
        assert!(lanes.next().await.unwrap().is_ok());
        assert!(lanes.next_ready().is_none(), "the error is not a delivery");
        assert!(lanes.next().await.unwrap().is_err(), "the error, kept");
        let last = lanes.next().await.unwrap().unwrap();
        assert_eq!(*last.envelope().data, json!(1));
    }
}
