//! The publishing channel: publisher confirms, each matched with the publish it answers and
//! with that publish's own returned message.
//!
//! lapin attaches a `basic.return` to whichever confirm it completes next, and the broker
//! confirms several publishes with one `multiple` ack; under concurrent publishes the return
//! of one message can so reach another publish's confirm, and the returned message's own
//! publish sees a plain ack. Here one task owns every confirm of the channel. When one is
//! ready, it first reads every other confirm the same ack completed, and only then answers
//! each publish by the message id its return carries.
//!
//! A second channel, the solo lane (`solo.rs`), carries at most one publish at a time, sent
//! and awaited by its caller with no hand-over: its return can only be its own. A publish
//! takes the lane when it is free and goes to the task otherwise, so a caller publishing one
//! message at a time pays what a raw lapin publish does, and concurrent callers still
//! pipeline theirs.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use lapin::Confirmation;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use topiq_adapter::{Error, MessageId, Result};
use topiq_adapter_kit::Deadlines;

use crate::solo::{SoloLane, SoloTurn, mandatory};
use crate::unavailable;

/// What the broker did with a confirmed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Published {
    /// Stored by every queue it was routed to.
    Stored,
    /// Routed to no queue and returned (publishes are `mandatory`).
    Returned,
    /// Refused (a full `reject-publish` queue, or a broker error).
    Refused,
}

/// A channel in confirm mode whose publishes one task of its own sends and answers, beside
/// the solo lane.
pub(crate) struct ConfirmingChannel {
    channel: Channel,
    requests: mpsc::UnboundedSender<Request>,
    /// The second channel, for a publish made while no other is in flight on it.
    solo: Arc<SoloLane>,
}

/// A publish to send: where to, and what (published `mandatory`).
pub(crate) struct Outgoing {
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) payload: Vec<u8>,
    pub(crate) properties: BasicProperties,
}

/// The broker's answer to one publish handed to the channel's task, once it comes.
type Answer = oneshot::Receiver<Result<Published>>;

/// The broker's answer to each message of a batch, in order: `None` for one unanswered by
/// the deadline.
pub(crate) type BatchAnswers = Vec<Option<Result<Published>>>;

/// What a caller hands the channel's task.
enum Request {
    /// One publish, and where its answer goes. Boxed: a publish (its properties alone are
    /// some 300 bytes) moves through the channel as a pointer.
    One(Box<Outgoing>, oneshot::Sender<Result<Published>>),
    /// A batch's publishes, answered into one list its caller reads.
    Batch(BatchRequest),
}

/// A batch's publishes on their way to the task: answered that the task stopped if they are
/// dropped before it takes them (as a dropped channel tells a single publish), so their
/// caller does not wait out its deadline for them.
struct BatchRequest {
    publishes: Vec<Outgoing>,
    reply: Arc<BatchReply>,
}

impl Drop for BatchRequest {
    fn drop(&mut self) {
        // Empty once the task took them.
        for index in 0..self.publishes.len() {
            self.reply.note(index, Err(publisher_gone()));
        }
    }
}

/// A publish sent and not yet answered.
struct Waiting {
    /// Its message id: the key its returned message is matched by.
    id: Option<MessageId>,
    reply: Reply,
}

/// Where one publish's answer goes.
enum Reply {
    /// To its caller alone.
    One(oneshot::Sender<Result<Published>>),
    /// Into its batch's list.
    InBatch(BatchPart),
}

impl Reply {
    /// Answers the publish; its caller may have given up waiting: nobody to tell then.
    fn send(self, outcome: Result<Published>) {
        match self {
            Reply::One(answer) => {
                let _ = answer.send(outcome);
            }
            Reply::InBatch(part) => part.answer(outcome),
        }
    }
}

/// The answers to a batch: each publish's, filled in as its confirm is read, and read by the
/// batch's caller once every one is in (or at its deadline). One list and one wake-up for the
/// batch, where each publish had a channel of its own and a timer.
struct BatchReply {
    answered: Mutex<Answered>,
    /// Told once every publish is answered.
    done: Notify,
}

/// A batch's answers so far.
struct Answered {
    answers: BatchAnswers,
    /// How many publishes are still unanswered.
    left: usize,
}

impl BatchReply {
    /// The reply to a batch of `count` publishes, none answered yet.
    fn new(count: usize) -> Self {
        Self {
            answered: Mutex::new(Answered {
                answers: (0..count).map(|_| None).collect(),
                left: count,
            }),
            done: Notify::new(),
        }
    }

    fn answered(&self) -> MutexGuard<'_, Answered> {
        self.answered.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes the `index`th publish's answer.
    fn note(&self, index: usize, outcome: Result<Published>) {
        let all_in = {
            let mut answered = self.answered();
            // Taken already when its caller's deadline passed: nobody to tell.
            if let Some(answer) = answered.answers.get_mut(index) {
                *answer = Some(outcome);
            }
            answered.left = answered.left.saturating_sub(1);
            answered.left == 0
        };
        if all_in {
            self.done.notify_one();
        }
    }

    /// Every answer in so far, in order (`None` for a publish not answered yet).
    fn take(&self) -> BatchAnswers {
        std::mem::take(&mut self.answered().answers)
    }
}

/// One publish of a batch, until it is answered: answered that the task stopped if it is
/// dropped unanswered (as a dropped channel tells a single publish), so its caller does not
/// wait out the deadline for it.
struct BatchPart {
    reply: Option<Arc<BatchReply>>,
    index: usize,
}

impl BatchPart {
    fn answer(mut self, outcome: Result<Published>) {
        if let Some(reply) = self.reply.take() {
            reply.note(self.index, outcome);
        }
    }
}

impl Drop for BatchPart {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            reply.note(self.index, Err(publisher_gone()));
        }
    }
}

impl ConfirmingChannel {
    /// Takes `channel` and `solo` (confirm mode already on) and starts the task that
    /// publishes on `channel`; the task ends once this is dropped and every publish sent on
    /// it is answered.
    pub(crate) fn new(channel: Channel, solo: Channel) -> Self {
        let (requests, incoming) = mpsc::unbounded_channel();
        tokio::spawn(publish_and_answer(channel.clone(), incoming));
        let solo = Arc::new(SoloLane::new(solo));
        Self {
            channel,
            requests,
            solo,
        }
    }

    /// Whether both channels are open (a channel-level error closes one).
    pub(crate) fn is_open(&self) -> bool {
        self.channel.status().connected() && self.solo.channel.status().connected()
    }

    /// Publishes `mandatory` and returns the broker's answer, `None` when none came by
    /// `deadline` (a publish whose caller gave up before it was sent is not sent). On the
    /// solo lane when it is free (held to the deadline by the lane's watchdog), through the
    /// channel's task otherwise (by `deadlines`).
    pub(crate) async fn publish(
        &self,
        (exchange, routing_key): (&str, &str),
        payload: &[u8],
        properties: impl FnOnce() -> BasicProperties,
        (deadlines, deadline): (&Deadlines, Instant),
    ) -> Option<Result<Published>> {
        if let Some(turn) = SoloTurn::take(&self.solo) {
            // Pinned where it is made: lapin's publish future inside it is large.
            let publishing = pin!(turn.publish((exchange, routing_key), payload, properties));
            return self.solo.bound(publishing, deadline).await;
        }
        let sent = self.send(Outgoing {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            payload: payload.to_vec(),
            properties: properties(),
        });
        match sent {
            Ok(answer) => deadlines.bound(deadline, answered(answer)).await,
            Err(err) => Some(Err(err)),
        }
    }

    /// Publishes a batch `mandatory` through the channel's task, handed over at once, each
    /// answered by `deadline`. (Not on the solo lane: it would send them one after another,
    /// each waiting for lapin to write the one before, where the task sends them all at
    /// once.) Not sent if this is dropped before the task takes it.
    pub(crate) async fn publish_batch(
        &self,
        batch: Vec<Outgoing>,
        deadline: Instant,
    ) -> BatchAnswers {
        let count = batch.len();
        if count == 0 {
            return Vec::new();
        }
        let reply = Arc::new(BatchReply::new(count));
        let request = Request::Batch(BatchRequest {
            publishes: batch,
            reply: Arc::clone(&reply),
        });
        // Refused, the request is dropped, answering each publish that the task stopped.
        let _ = self.requests.send(request);
        // Told once every answer is in; what is in by the deadline otherwise.
        let _ = tokio::time::timeout_at(deadline, reply.done.notified()).await;
        reply.take()
    }

    /// Hands `publish` to the channel's task and returns where its answer will come. Not
    /// sent if the answer is dropped before it is.
    fn send(&self, publish: Outgoing) -> Result<Answer> {
        let (answer, answered) = oneshot::channel();
        self.requests
            .send(Request::One(Box::new(publish), answer))
            .map_err(|_| publisher_gone())?;
        Ok(answered)
    }
}

/// The broker's answer to a publish handed over with [`ConfirmingChannel::send`].
async fn answered(answer: Answer) -> Result<Published> {
    answer.await.map_err(|_| publisher_gone())?
}

/// The publishing task stopped (the runtime is shutting down).
fn publisher_gone() -> Error {
    Error::BrokerUnavailable {
        message: "RabbitMQ: the publishing channel's task has stopped (shutting down)".into(),
        source: None,
    }
}

/// A confirm that came in (or the error that stopped the publish), with the publish it
/// answers.
type Confirmed = (Waiting, lapin::Result<Confirmation>);

/// Sends every publish requested on `channel` and answers each, in rounds: each round takes
/// every confirm that is in, so all those one ack completed are read before any is answered.
///
/// The task sends the publishes itself so that it holds every confirm lapin registered: a
/// publish whose confirm came in is one poll away from done.
async fn publish_and_answer(channel: Channel, mut incoming: mpsc::UnboundedReceiver<Request>) {
    let mut in_flight = FuturesUnordered::new();
    let mut returns = Returns::default();
    // Kept from round to round: a round of a batch's confirms is read into it without
    // growing a new list each time.
    let mut round = Vec::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(first) = in_flight.next() => {
                // lapin completes every confirm of one ack under one lock, and
                // `wait_for_confirms` takes that lock when first polled: once it has, every
                // confirm completed with `first` is ready (the call is polled once, never
                // awaited). lapin marks a publish sent before it reads the broker's answer to
                // it, on the same thread, so each of those publishes is ready too. With no
                // other publish in flight there is nothing else to wait for (one publish at a
                // time, the common case, takes no lock).
                if in_flight.is_empty() {
                    returns.answer_one(first);
                } else {
                    let _ = channel.wait_for_confirms().now_or_never();
                    round.push(returns.read(first));
                    while let Some(Some(next)) = in_flight.next().now_or_never() {
                        round.push(returns.read(next));
                    }
                    returns.answer(&mut round);
                }
                if in_flight.is_empty() {
                    // A return always comes before the confirm of its own publish.
                    returns.clear();
                }
            }
            request = incoming.recv(), if open => match request {
                Some(request) => {
                    let more = std::iter::from_fn(|| incoming.try_recv().ok());
                    for request in std::iter::once(request).chain(more) {
                        take_request(request, &mut |publish, reply| {
                            in_flight.push(send_and_confirm(&channel, publish, reply));
                        });
                    }
                }
                None => open = false,
            },
            else => return,
        }
    }
}

/// Hands each publish of `request` to `send` with where its answer goes; none when its
/// caller gave up before the task took it.
fn take_request(request: Request, send: &mut impl FnMut(Outgoing, Reply)) {
    match request {
        Request::One(publish, answer) => {
            if !answer.is_closed() {
                send(*publish, Reply::One(answer));
            }
        }
        // Its caller holds the other reference while it waits.
        Request::Batch(mut batch) if Arc::strong_count(&batch.reply) > 1 => {
            for (index, publish) in std::mem::take(&mut batch.publishes).into_iter().enumerate() {
                let part = BatchPart {
                    reply: Some(Arc::clone(&batch.reply)),
                    index,
                };
                send(publish, Reply::InBatch(part));
            }
        }
        Request::Batch(_) => {}
    }
}

/// Sends `publish` and waits for its confirm.
async fn send_and_confirm(channel: &Channel, publish: Outgoing, reply: Reply) -> Confirmed {
    let Outgoing {
        exchange,
        routing_key,
        payload,
        properties,
    } = publish;
    // Read without allocating: an id topiq made is kept inline.
    let id = properties
        .message_id()
        .as_ref()
        .map(|id| MessageId::from_string(id.as_str()));
    let sending = channel.basic_publish(exchange, routing_key, mandatory(), &payload, properties);
    let confirmation = match sending.await {
        Ok(confirm) => confirm.await,
        Err(err) => Err(err),
    };
    (Waiting { id, reply }, confirmation)
}

/// Returned messages read and not yet matched with their publish, by message id, with how
/// many (one id may be published twice at once).
#[derive(Default)]
struct Returns(HashMap<Option<MessageId>, usize>);

impl Returns {
    /// Answers each publish of a round whose confirms were all [`read`](Self::read) (so
    /// every return the round carried is noted), emptying it.
    fn answer(&mut self, round: &mut Vec<(Waiting, Result<Published>)>) {
        for (waiting, outcome) in round.drain(..) {
            self.reply(waiting, outcome);
        }
    }

    /// [`answer`](Self::answer) for a round of one publish (the only one in flight).
    fn answer_one(&mut self, confirmed: Confirmed) {
        let (waiting, outcome) = self.read(confirmed);
        self.reply(waiting, outcome);
    }

    /// What a publish's confirm says, noting the return it carries. (A confirm is some 400
    /// bytes, with room for a returned message: a round keeps what it says, not it.)
    fn read(&mut self, (waiting, result): Confirmed) -> (Waiting, Result<Published>) {
        (waiting, self.outcome(result))
    }

    /// What a confirm says, noting the return it carries.
    fn outcome(&mut self, result: lapin::Result<Confirmation>) -> Result<Published> {
        match result {
            Ok(Confirmation::Ack(carried)) => {
                self.note(carried);
                Ok(Published::Stored)
            }
            Ok(Confirmation::Nack(carried)) => {
                self.note(carried);
                Ok(Published::Refused)
            }
            Ok(Confirmation::NotRequested) => Ok(Published::Stored),
            Err(err) => Err(unavailable("publish")(err)),
        }
    }

    /// Answers a publish: returned when a return of its message id was read.
    fn reply(&mut self, waiting: Waiting, outcome: Result<Published>) {
        let outcome = match (outcome, self.take(&waiting.id)) {
            (Ok(Published::Stored), true) => Ok(Published::Returned),
            (other, _) => other,
        };
        waiting.reply.send(outcome);
    }

    /// Forgets every return: called when no publish is in flight, so none can match.
    fn clear(&mut self) {
        self.0.clear();
    }

    fn note(&mut self, carried: Option<lapin::message::BasicReturnMessage>) {
        if let Some(returned) = carried {
            let id = returned.delivery.properties.message_id().as_ref();
            let id = id.map(|id| MessageId::from_string(id.as_str()));
            *self.0.entry(id).or_default() += 1;
        }
    }

    /// Whether a return of `id` was read (taking it).
    fn take(&mut self, id: &Option<MessageId>) -> bool {
        match self.0.get_mut(id) {
            Some(count) if *count > 1 => {
                *count -= 1;
                true
            }
            Some(_) => {
                self.0.remove(id);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use lapin::{Connection, ConnectionProperties};

    /// The machine's RabbitMQ (`deploy/local/ensure-brokers` starts it); the test's queue is
    /// its own (server-named and exclusive: deleted with the connection).
    const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    async fn confirming(connection: &Connection) -> Channel {
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        channel
    }

    /// A connection to the machine's RabbitMQ, a publishing channel on it, and a queue of the
    /// test's own (server-named and exclusive: deleted with the connection).
    async fn publisher_with_queue() -> (Connection, ConfirmingChannel, lapin::Queue) {
        let connection = Connection::connect(URL, ConnectionProperties::default())
            .await
            .expect("the machine's RabbitMQ");
        let publisher =
            ConfirmingChannel::new(confirming(&connection).await, confirming(&connection).await);
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = publisher
            .solo
            .channel
            .queue_declare("".into(), exclusive, FieldTable::default())
            .await
            .expect("queue");
        (connection, publisher, queue)
    }

    /// A publish of `body` to `queue` on the default exchange.
    fn outgoing(queue: &str, body: &[u8]) -> Outgoing {
        Outgoing {
            exchange: "".into(),
            routing_key: queue.into(),
            payload: body.to_vec(),
            properties: BasicProperties::default(),
        }
    }

    #[test]
    fn a_batch_dropped_before_the_task_took_it_is_answered_that_the_task_stopped() {
        let reply = Arc::new(BatchReply::new(3));
        let request = Request::Batch(BatchRequest {
            publishes: (0..3).map(|_| outgoing("q", b"{}")).collect(),
            reply: Arc::clone(&reply),
        });
        // As the channel drops what it holds when the task stops.
        drop(request);
        assert!(
            reply.done.notified().now_or_never().is_some(),
            "its caller would wait out its deadline"
        );
        let answers = reply.take();
        assert_eq!(answers.len(), 3);
        for answer in answers {
            assert!(
                matches!(answer, Some(Err(Error::BrokerUnavailable { .. }))),
                "{answer:?}"
            );
        }
    }

    #[test]
    fn a_batch_is_done_once_every_part_is_answered_and_a_part_answered_late_lands_nowhere() {
        let reply = Arc::new(BatchReply::new(2));
        let part = |index| BatchPart {
            reply: Some(Arc::clone(&reply)),
            index,
        };
        let (first, second) = (part(0), part(1));
        first.answer(Ok(Published::Returned));
        assert!(
            reply.done.notified().now_or_never().is_none(),
            "done at one of two"
        );
        // The caller's deadline passes: it reads what is in.
        let answers = reply.take();
        assert!(matches!(answers[..], [Some(Ok(Published::Returned)), None]));
        // Dropped unanswered after that (the task stopped): noted nowhere, and done.
        drop(second);
        assert!(reply.done.notified().now_or_never().is_some());
        assert!(reply.take().is_empty());
    }

    #[tokio::test]
    async fn a_batch_given_up_on_is_not_sent_and_a_late_one_answers_no_other() {
        let (connection, publisher, queue) = publisher_with_queue().await;
        let name = queue.name().as_str();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Polled once (handed over) and dropped, as a caller's timeout would, before this
        // single-threaded runtime ran the publishing task.
        let batch = (0..5).map(|_| outgoing(name, b"{}")).collect();
        let given_up = publisher.publish_batch(batch, deadline).now_or_never();
        assert!(given_up.is_none(), "answered before the task ran");
        // Due at once: the task takes it (its caller waits for the timer's next tick), and
        // its caller reads what is in by then; the rest of its confirms are noted nowhere.
        let batch = (0..4).map(|_| outgoing(name, b"{}")).collect();
        let late = publisher.publish_batch(batch, Instant::now()).await;
        assert_eq!(late.len(), 4);
        for answer in &late {
            assert!(
                matches!(answer, None | Some(Ok(Published::Stored))),
                "{answer:?}"
            );
        }
        let batch = (0..3).map(|_| outgoing(name, b"{}")).collect();
        let answers = publisher.publish_batch(batch, deadline).await;
        let stored: Vec<_> = answers
            .into_iter()
            .map(|answer| {
                answer
                    .expect("answered by the deadline")
                    .expect("published")
            })
            .collect();
        assert_eq!(stored, vec![Published::Stored; 3]);
        // The task takes requests in order: the given-up batch, had it been sent, would be
        // in the queue before the answered one.
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let counted = publisher
            .solo
            .channel
            .queue_declare(name.into(), passive, FieldTable::default())
            .await
            .expect("the queue's count");
        assert_eq!(
            counted.message_count(),
            4 + 3,
            "the given-up batch was sent, or the late one was not"
        );
        connection.close(200, "done".into()).await.expect("close");
    }

    #[tokio::test]
    async fn a_publish_given_up_on_holds_the_solo_lane_until_its_confirm_is_in() {
        let (connection, publisher, queue) = publisher_with_queue().await;
        let bound = (
            &Deadlines::new(Duration::from_secs(1)),
            Instant::now() + Duration::from_secs(10),
        );
        let target = ("", queue.name().as_str());
        let publish = || publisher.publish(target, b"{}", BasicProperties::default, bound);
        // Polled once (it takes the lane and is sent) and dropped, as a caller's timeout would.
        assert!(
            publish().now_or_never().is_none(),
            "answered before its confirm came"
        );
        assert!(
            publisher.solo.busy.load(Ordering::Acquire),
            "the lane was freed while the given-up publish's confirm was on the way"
        );
        let freed = async {
            while publisher.solo.busy.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), freed)
            .await
            .expect("the lane is freed once the confirm is in");
        let answer = publish().await.expect("answered by the deadline");
        assert_eq!(answer.expect("publish"), Published::Stored);
        connection.close(200, "done".into()).await.expect("close");
    }
}
