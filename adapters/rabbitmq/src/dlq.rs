//! DLQ operations over a topic's dead-letter stream.
//!
//! A stream keeps every entry until its retention (`x-max-age`) drops it and never deletes a
//! single one, so a removal (redrive, purge) appends a tombstone naming the record's offset.
//! A reader first appends a marker of its own and reads from its starting offset up to that
//! marker: AMQP does not say where a stream ends, the marker does. Every operation reads the
//! entries from its starting offset on, so its cost grows with the stream (bounded by the
//! DLQ retention).

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use topiq_adapter::{
    DeadLetter, DeadLetters, DlqPage, DlqQuery, DlqSelection, Error, MessageId, Result,
    SubscriptionKey, TopicName, TriggerName,
};

use crate::codec::{self, Metadata, header};
use crate::session::OpenChannel;
use crate::settle::Settle;
use crate::{Published, RabbitMqAdapter, Shared};

/// How many stream entries a reader takes unacknowledged.
const READ_AHEAD: u16 = 500;

async fn append_entry(
    shared: &Shared,
    topic: &TopicName,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<()> {
    let stream = shared.layout.dlq_stream(topic);
    match shared
        .publish_confirmed("", &stream, payload, || properties)
        .await?
    {
        Published::Stored => Ok(()),
        Published::Returned | Published::Refused => Err(Error::Broker {
            operation: "dead-letter",
            source: format!("the DLQ stream {stream:?} did not take the entry").into(),
        }),
    }
}

/// Appends a record to its topic's DLQ stream, confirmed.
pub(crate) async fn append(shared: &Shared, record: &DeadLetter) -> Result<()> {
    let payload = serde_json::to_vec(record).map_err(|err| Error::Broker {
        operation: "encode DLQ record",
        source: Box::new(err),
    })?;
    let properties = BasicProperties::default()
        .with_message_id(record.id.as_str().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    append_entry(shared, &record.topic, &payload, properties).await
}

fn with_header(name: &str, value: AMQPValue) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(codec::arguments(&[(name, value)]))
}

/// Appends a tombstone that removes the record at `offset`.
async fn remove(shared: &Shared, topic: &TopicName, offset: u64) -> Result<()> {
    let offset = AMQPValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX));
    append_entry(shared, topic, b"", with_header(header::REMOVES, offset)).await
}

/// The records from `from` on that no tombstone removed, with their offsets, oldest first,
/// and the offset after the last entry read.
///
/// A stream has no end a reader could see: the reader first appends a marker of its own and
/// reads up to it.
async fn live_records(
    shared: &Shared,
    topic: &TopicName,
    from: u64,
) -> Result<(Vec<(u64, DeadLetter)>, u64)> {
    let marker = MessageId::generate();
    let marker_text = AMQPValue::LongString(marker.as_str().into());
    append_entry(shared, topic, b"", with_header(header::MARKER, marker_text)).await?;
    let stream = shared.layout.dlq_stream(topic);
    let (channel, mut entries) = open_reader(shared, &stream, from).await?;
    let mut records = Vec::new();
    let mut removed = HashSet::new();
    let timeout = shared.config.publish_timeout;
    let end = loop {
        let entry = next_entry(&mut entries, timeout).await?;
        shared
            .settle_delivery(&entry.acker, Settle::Ack, "read DLQ")
            .await?;
        match read_entry(&entry, &stream) {
            Entry::Marker(seen, offset) if seen == marker.as_str() => {
                break offset.map_or(from, |offset| offset + 1);
            }
            Entry::Removes(offset) => {
                removed.insert(offset);
            }
            Entry::Record(offset, record) => records.push((offset, *record)),
            Entry::Marker(..) | Entry::Other => {}
        }
    };
    // The consumer is cancelled, and only then its channel closed: a consumer dropped after
    // the close has been sent would send its `basic.cancel` on a closed channel, which
    // RabbitMQ answers by closing the whole connection (every publish on it fails).
    let tag = entries.tag();
    let cancel = channel.basic_cancel(tag, BasicCancelOptions::default());
    let _ = tokio::time::timeout(timeout, cancel).await;
    drop(entries);
    drop(channel);
    records.retain(|(offset, _)| !removed.contains(offset));
    Ok((records, end))
}

/// A consumer of the DLQ stream `stream` from offset `from`, on a channel of its own.
async fn open_reader(
    shared: &Shared,
    stream: &str,
    from: u64,
) -> Result<(OpenChannel, lapin::Consumer)> {
    let session = shared.session().await?;
    shared
        .bounded("read DLQ", async {
            let channel = session.owned_channel().await?;
            channel
                .basic_qos(READ_AHEAD, BasicQosOptions::default())
                .await
                .map_err(crate::unavailable("set the prefetch"))?;
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-stream-offset".into(),
                AMQPValue::LongLongInt(i64::try_from(from).unwrap_or(i64::MAX)),
            );
            let entries = channel
                .basic_consume(
                    stream.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    arguments,
                )
                .await
                .map_err(|err| Error::Broker {
                    operation: "read DLQ",
                    source: format!("cannot read the DLQ stream {stream:?}: {err}").into(),
                })?;
            Ok((channel, entries))
        })
        .await
}

/// The stream's next entry, within `timeout`.
async fn next_entry(
    entries: &mut lapin::Consumer,
    timeout: Duration,
) -> Result<lapin::message::Delivery> {
    match tokio::time::timeout(timeout, entries.next()).await {
        Err(_) => Err(Error::Timeout {
            operation: "read DLQ (waiting for the stream's next entry)",
            timeout,
        }),
        Ok(None) => Err(Error::BrokerUnavailable {
            message: "the DLQ stream's reader was closed".into(),
            source: None,
        }),
        Ok(Some(entry)) => entry.map_err(crate::unavailable("read DLQ")),
    }
}

/// What one entry of a DLQ stream is.
enum Entry {
    /// A reader's marker, with its text and offset.
    Marker(String, Option<u64>),
    /// A tombstone removing the record at this offset.
    Removes(u64),
    /// A record at its offset.
    Record(u64, Box<DeadLetter>),
    /// Anything else (logged, skipped).
    Other,
}

fn read_entry(entry: &lapin::message::Delivery, stream: &str) -> Entry {
    let properties = &entry.properties;
    let offset_of = |name: &str| {
        codec::header_of(properties, name)
            .and_then(codec::as_i64)
            .and_then(|offset| u64::try_from(offset).ok())
    };
    if let Some(seen) = codec::header_of(properties, header::MARKER) {
        let text = codec::as_text(seen).unwrap_or_default();
        return Entry::Marker(text, offset_of(header::STREAM_OFFSET));
    }
    if let Some(target) = offset_of(header::REMOVES) {
        return Entry::Removes(target);
    }
    let Some(offset) = offset_of(header::STREAM_OFFSET) else {
        return Entry::Other;
    };
    match serde_json::from_slice::<DeadLetter>(&entry.data) {
        Ok(record) => Entry::Record(offset, Box::new(record)),
        Err(err) => {
            tracing::warn!(%offset, stream = %stream, error = %err, "skipping a DLQ entry that is not a record");
            Entry::Other
        }
    }
}

fn on_trigger(record: &DeadLetter, trigger: Option<&TriggerName>) -> bool {
    trigger.is_none_or(|trigger| &record.trigger == trigger)
}

/// The page of `query`'s records from offset `from`.
async fn page_from(shared: &Shared, query: &DlqQuery, from: u64) -> Result<DlqPage> {
    let (live, end) = live_records(shared, &query.topic, from).await?;
    let mut matching = live.into_iter().filter(|(_, record)| {
        on_trigger(record, query.trigger.as_ref()) && query.filter.matches(record)
    });
    let records: Vec<(u64, DeadLetter)> = matching.by_ref().take(query.limit).collect();
    let next_cursor = match (matching.next(), records.last()) {
        (Some(_), Some((last, _))) => Some((last + 1).to_string()),
        _ => None,
    };
    let read_to = next_cursor.clone().unwrap_or_else(|| end.to_string());
    Ok(DlqPage {
        records: records.into_iter().map(|(_, record)| record).collect(),
        next_cursor,
        read_to,
    })
}

async fn selected(
    shared: &Shared,
    topic: &TopicName,
    trigger: Option<&TriggerName>,
    selection: &DlqSelection,
) -> Result<Vec<(u64, DeadLetter)>> {
    shared.check_dlq(topic, trigger)?;
    let (mut records, _) = live_records(shared, topic, 0).await?;
    records.retain(|(_, record)| on_trigger(record, trigger) && selection.selects(record));
    Ok(records)
}

impl DeadLetters for RabbitMqAdapter {
    async fn dlq_count(&self, topic: &TopicName, trigger: Option<&TriggerName>) -> Result<u64> {
        let selection = DlqSelection::All;
        Ok(selected(&self.shared, topic, trigger, &selection)
            .await?
            .len() as u64)
    }

    async fn dlq_list(&self, query: DlqQuery) -> Result<DlqPage> {
        let from = query.validate()?;
        self.shared
            .check_dlq(&query.topic, query.trigger.as_ref())?;
        page_from(&self.shared, &query, from).await
    }

    /// Each selected record goes back to the trigger it failed on, attempts reset
    /// (confirmed), then its tombstone is appended: a crash between the two redrives it
    /// twice, never loses it.
    async fn dlq_redrive(
        &self,
        topic: &TopicName,
        trigger: Option<&TriggerName>,
        selection: DlqSelection,
    ) -> Result<u64> {
        let shared = &self.shared;
        let records = selected(&self.shared, topic, trigger, &selection).await?;
        let mut redriven = 0;
        for (offset, record) in records {
            let metadata = Metadata::redriven(&record, shared.topic(topic)?.retention);
            let payload = codec::encode(&record.data)?;
            let key = SubscriptionKey::new(record.topic.clone(), record.trigger.clone());
            shared.publish_to_trigger(&key, &payload, &metadata).await?;
            remove(shared, topic, offset).await?;
            redriven += 1;
        }
        Ok(redriven)
    }

    async fn dlq_purge(
        &self,
        topic: &TopicName,
        trigger: Option<&TriggerName>,
        selection: DlqSelection,
    ) -> Result<u64> {
        let shared = &self.shared;
        let records = selected(&self.shared, topic, trigger, &selection).await?;
        for (offset, _) in &records {
            remove(shared, topic, *offset).await?;
        }
        Ok(records.len() as u64)
    }
}
