//! Idempotency keys: one key, one message, for the topic's whole window, whether the message
//! is delayed or not.
//!
//! The topic's ledger stream (the last entry per key subject, `max_age` = the window) is the
//! one place a key is decided. A publisher first *claims* the key: it writes the whole message
//! there with `Nats-Expected-Last-Subject-Sequence: 0`, which the server stores only while the
//! key has no entry, across every process. Then it publishes the message (to the topic, or to
//! the delay stream) and marks the key *done*. A later publisher with the key is refused its
//! claim, reads the entry and returns its id as a duplicate. If the entry stays a claim longer
//! than a publish can take (the first publisher died between claim and publish), the later one
//! publishes the claimed message itself, with the claim's dedup id, so a key is never left
//! without its message, and a message the first publisher did store is not stored twice.
//! A claim the server does not confirm fails the enqueue: nothing is sent then.

use std::sync::PoisonError;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use topiq_adapter::{Error, MessageId, PublishReceipt, Result, Timestamp, TopicName};

use crate::Shared;
use crate::codec;
use crate::layout::header;
use crate::publish::{PUBLISH_TRIES, Prepared, Refused};

/// How often a publisher waiting for another's claim to be marked done reads the entry again.
const POLL: Duration = Duration::from_millis(50);

/// How many times a claim is tried when the entry it lost to expires before it is read.
const CLAIM_ROUNDS: usize = 3;

/// The ledger's own headers on an entry.
mod ledger_header {
    use async_nats::HeaderName;

    /// `claimed` (the entry holds the message) or `done` (it was published).
    pub(crate) const STATE: HeaderName = HeaderName::from_static("Topiq-Key-State");
    /// Where the claimed message goes (the topic, or the delay stream).
    pub(crate) const TARGET: HeaderName = HeaderName::from_static("Topiq-Key-Target");
    /// The claimed message's own `Nats-Msg-Id` (the claim has one of its own).
    pub(crate) const MSG_ID: HeaderName = HeaderName::from_static("Topiq-Key-Msg-Id");
}

const CLAIMED: &str = "claimed";
const DONE: &str = "done";

/// Publishes a message with an idempotency key: the first with the key in the window, or a
/// duplicate naming the first message's id.
pub(crate) async fn publish_keyed(shared: &Shared, prepared: Prepared) -> Result<PublishReceipt> {
    let key = prepared
        .metadata
        .idempotency_key
        .as_deref()
        .unwrap_or_default();
    let subject = shared
        .layout
        .ledger_subject(&prepared.topic, &ledger_key(key));
    for _ in 0..CLAIM_ROUNDS {
        match claim(shared, &subject, &prepared).await? {
            Claim::Ours(sequence) => {
                shared.publish_prepared(&prepared).await?;
                mark_done(shared, &subject, &prepared.metadata.id, sequence).await;
                return Ok(prepared.receipt());
            }
            Claim::Taken => {
                if let Some(first) = first_message(shared, &prepared, &subject).await? {
                    return Ok(first);
                }
            }
        }
    }
    Err(Error::Broker {
        operation: "claim idempotency key",
        source: format!(
            "the entry of key {key:?} in {} kept changing; try again",
            shared.layout.ledger_stream(&prepared.topic)
        )
        .into(),
    })
}

/// The outcome of a claim.
enum Claim {
    /// This publish holds the key: its entry's stream sequence.
    Ours(u64),
    /// Another entry holds it.
    Taken,
}

/// Writes the claim: the message and where it goes, stored only if the key has no entry.
async fn claim(shared: &Shared, subject: &str, prepared: &Prepared) -> Result<Claim> {
    let mut headers = prepared.headers();
    let own_msg_id = headers
        .get(header::MSG_ID)
        .map(|value| value.as_str().to_owned())
        .unwrap_or_default();
    headers.insert(ledger_header::MSG_ID, own_msg_id.as_str());
    // Sent again after a lost acknowledgement, the claim is deduplicated as itself.
    headers.insert(
        header::MSG_ID,
        format!("claim:{}", prepared.metadata.id).as_str(),
    );
    headers.insert(header::ID, prepared.metadata.id.as_str());
    headers.insert(ledger_header::STATE, CLAIMED);
    headers.insert(ledger_header::TARGET, prepared.subject.as_str());
    headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
    let claimed = shared
        .publish_confirmed(subject.to_owned(), headers, prepared.payload.clone())
        .await;
    match claimed {
        Ok(ack) => Ok(Claim::Ours(ack.sequence)),
        Err(err) if is_wrong_last_sequence(&err) => Ok(Claim::Taken),
        Err(err) => Err(err),
    }
}

/// True when the server refused a publish because the subject already had an entry.
fn is_wrong_last_sequence(err: &Error) -> bool {
    let Error::Broker { source, .. } = err else {
        return false;
    };
    source
        .downcast_ref::<Refused>()
        .is_some_and(|refused| refused.source.kind() == PublishErrorKind::WrongLastSequence)
}

/// Marks the key done (replacing its claim). A failure is only logged: the message is stored,
/// and a later publisher that finds the claim publishes it again with its dedup id, which the
/// stream absorbs.
async fn mark_done(shared: &Shared, subject: &str, id: &MessageId, claim_sequence: u64) {
    let mut headers = HeaderMap::new();
    headers.insert(header::MSG_ID, format!("done:{id}").as_str());
    headers.insert(header::ID, id.as_str());
    headers.insert(ledger_header::STATE, DONE);
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        claim_sequence.to_string().as_str(),
    );
    if let Err(err) = shared
        .publish_confirmed(subject.to_owned(), headers, Bytes::new())
        .await
        && !is_wrong_last_sequence(&err)
    {
        tracing::warn!(%id, error = %err, "cannot mark an idempotency key done; a later publish with the key republishes it under the same dedup id");
    }
}

/// An entry of the ledger, as read back.
struct Entry {
    sequence: u64,
    id: MessageId,
    /// The claimed message (its target subject, headers and payload) while not done.
    claimed: Option<(String, HeaderMap, Bytes)>,
    written_at: Timestamp,
}

/// The key's entry, `None` when it has none (it expired).
async fn read_entry(shared: &Shared, prepared: &Prepared, subject: &str) -> Result<Option<Entry>> {
    let ledger = shared.ledger(&prepared.topic)?;
    let message = match ledger.get_last_raw_message_by_subject(subject).await {
        Ok(message) => message,
        Err(err)
            if err.kind()
                == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
        {
            return Ok(None);
        }
        Err(err) => {
            return Err(Error::Broker {
                operation: "read idempotency key",
                source: Box::new(err),
            });
        }
    };
    let text = |name| {
        message
            .headers
            .get(name)
            .map(|value: &async_nats::HeaderValue| value.as_str().to_owned())
    };
    let state = text(ledger_header::STATE);
    let id = match text(header::ID) {
        Some(id) => MessageId::from_string(id),
        // An entry written before claims existed: its payload is the first id.
        None => MessageId::from_string(String::from_utf8_lossy(&message.payload)),
    };
    let claimed = match (
        state.as_deref(),
        text(ledger_header::TARGET),
        text(ledger_header::MSG_ID),
    ) {
        (Some(CLAIMED), Some(target), Some(msg_id)) => {
            // Published again as it is (async-nats does not check the subjects topiq
            // publishes to): one that is not a subject would break the connection's protocol.
            if !is_subject(&target) {
                return Err(topiq_adapter_kit::codec::foreign(
                    "its idempotency claim names a target that is not a subject",
                ));
            }
            Some((
                target,
                claimed_headers(&message.headers, &msg_id),
                message.payload.clone(),
            ))
        }
        _ => None,
    };
    Ok(Some(Entry {
        sequence: message.sequence,
        id,
        claimed,
        written_at: codec::stored_at(&message.time),
    }))
}

/// Whether `text` can be published to: not empty, no whitespace or control characters.
fn is_subject(text: &str) -> bool {
    !text.is_empty()
        && !text
            .bytes()
            .any(|byte| byte.is_ascii_whitespace() || byte.is_ascii_control())
}

/// The claimed message's own headers: the claim's control headers dropped (its dedup id,
/// its expected sequence, the ledger's), the message's dedup id restored, so publishing it
/// again is stored once whoever does it.
fn claimed_headers(claim: &HeaderMap, msg_id: &str) -> HeaderMap {
    let control = [
        ledger_header::STATE,
        ledger_header::TARGET,
        ledger_header::MSG_ID,
        header::MSG_ID,
    ];
    let mut headers = HeaderMap::new();
    for (name, values) in claim.iter() {
        let text: &str = name.as_ref();
        if control.iter().any(|own| own == name) || text.starts_with("Nats-Expected-") {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::MSG_ID, msg_id);
    headers
}

/// The receipt of a publish that lost its claim: the first message's id (published by this
/// publisher when the claim was left behind), or `None` when the entry expired meanwhile and
/// the key is free again.
async fn first_message(
    shared: &Shared,
    prepared: &Prepared,
    subject: &str,
) -> Result<Option<PublishReceipt>> {
    // Longer than the first publisher's publish may take, acknowledgements included.
    // By the server's clock (the entry's age) or, should the clocks disagree, by this one.
    let takeover_after = shared.config.publish_timeout * (PUBLISH_TRIES + 1);
    let first_read = tokio::time::Instant::now();
    loop {
        let Some(entry) = read_entry(shared, prepared, subject).await? else {
            return Ok(None);
        };
        // A claim of this very publish (its acknowledgement was lost) is not a duplicate.
        let duplicate = entry.id != prepared.metadata.id;
        let receipt = PublishReceipt {
            message_id: entry.id.clone(),
            duplicate,
        };
        let Some((target, headers, payload)) = entry.claimed else {
            return Ok(Some(receipt));
        };
        let age = Timestamp::now().duration_since(entry.written_at);
        let abandoned = Duration::try_from(age).is_ok_and(|age| age >= takeover_after)
            || first_read.elapsed() >= takeover_after;
        if !duplicate || abandoned {
            shared.publish_confirmed(target, headers, payload).await?;
            mark_done(shared, subject, &entry.id, entry.sequence).await;
            return Ok(Some(receipt));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Idempotency keys are any text; ledger keys are limited to subject-safe characters.
fn ledger_key(key: &str) -> String {
    key.bytes().map(|byte| format!("{byte:02x}")).collect()
}

impl Shared {
    pub(crate) fn ledger(&self, topic: &TopicName) -> Result<jetstream::stream::Stream<()>> {
        self.ledgers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic {
                topic: topic.clone(),
            })
    }
}
