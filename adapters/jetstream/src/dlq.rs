//! DLQ operations over a topic's `_DLQ` stream.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use topiq_adapter::{
    DeadLetter, DeadLetters, DlqPage, DlqQuery, DlqSelection, Error, MAX_DLQ_PAGE, Result,
    TopicName, TriggerName,
};

use crate::codec::{Headers, Metadata};
use crate::{JetStreamAdapter, Shared, broker};

fn filter(shared: &Shared, topic: &TopicName, trigger: Option<&TriggerName>) -> String {
    match trigger {
        Some(trigger) => shared.layout.dlq_subject(topic, trigger),
        None => shared.layout.dlq_wildcard(topic),
    }
}

/// Messages stored under `subject` (a wildcard sums its subjects).
pub(crate) async fn subject_count(shared: &Shared, stream: &str, subject: &str) -> Result<u64> {
    let stream = shared
        .js
        .get_stream_no_info(stream)
        .await
        .map_err(broker("get stream"))?;
    let mut subjects = stream
        .info_with_subjects(subject)
        .await
        .map_err(broker("stream info"))?;
    let mut total = 0;
    while let Some(entry) = subjects.next().await {
        let (_, count) = entry.map_err(broker("stream info"))?;
        total += count as u64;
    }
    Ok(total)
}

/// Up to `limit` stored records after sequence `after`, with their sequences.
async fn read_after(
    shared: &Shared,
    topic: &TopicName,
    trigger: Option<&TriggerName>,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, DeadLetter)>> {
    let stream = shared
        .js
        .get_stream_no_info(shared.layout.dlq_stream(topic))
        .await
        .map_err(broker("get stream"))?;
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter(shared, topic, trigger),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ack_policy: jetstream::consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(broker("read DLQ"))?;
    let mut messages = consumer
        .fetch()
        .max_messages(limit)
        .messages()
        .await
        .map_err(broker("read DLQ"))?;
    let mut records = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.map_err(|err| Error::Broker {
            operation: "read DLQ",
            source: err,
        })?;
        let sequence = message
            .info()
            .map_err(|err| Error::Broker {
                operation: "read DLQ",
                source: err,
            })?
            .stream_sequence;
        let record: DeadLetter =
            serde_json::from_slice(&message.payload).map_err(broker("decode DLQ record"))?;
        records.push((sequence, record));
    }
    let name = consumer.cached_info().name.clone();
    let _ = stream.delete_consumer(&name).await;
    Ok(records)
}

/// Every stored record matching `keep`, oldest first, with its sequence.
async fn scan(
    shared: &Shared,
    topic: &TopicName,
    trigger: Option<&TriggerName>,
    keep: impl Fn(&DeadLetter) -> bool,
) -> Result<Vec<(u64, DeadLetter)>> {
    let mut found = Vec::new();
    let mut after = 0;
    loop {
        let page = read_after(shared, topic, trigger, after, MAX_DLQ_PAGE).await?;
        let Some((last, _)) = page.last() else {
            return Ok(found);
        };
        after = *last;
        found.extend(page.into_iter().filter(|(_, record)| keep(record)));
    }
}

/// The page of `query`'s records after sequence `after`.
async fn page_after(shared: &Shared, query: &DlqQuery, mut after: u64) -> Result<DlqPage> {
    let mut records = Vec::new();
    let mut last_returned = after;
    loop {
        let page = read_after(
            shared,
            &query.topic,
            query.trigger.as_ref(),
            after,
            MAX_DLQ_PAGE,
        )
        .await?;
        let Some((last, _)) = page.last() else {
            return Ok(DlqPage {
                records,
                next_cursor: None,
                read_to: after.to_string(),
            });
        };
        after = *last;
        for (sequence, record) in page {
            if !query.filter.matches(&record) {
                continue;
            }
            if records.len() == query.limit {
                // One more match exists: this page is not the last.
                let cursor = last_returned.to_string();
                return Ok(DlqPage {
                    records,
                    next_cursor: Some(cursor.clone()),
                    read_to: cursor,
                });
            }
            last_returned = sequence;
            records.push(record);
        }
    }
}

/// What happens to a selected record before it is deleted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Removal {
    /// Its copy is published to the failing trigger (confirmed) first.
    Redrive,
    /// Nothing: it is deleted.
    Purge,
}

/// Removes the selected records one by one; a redrive's copy is confirmed before its record
/// goes. Returns how many were removed.
async fn remove_selected(
    shared: &Shared,
    topic: &TopicName,
    trigger: Option<&TriggerName>,
    selection: DlqSelection,
    removal: Removal,
) -> Result<u64> {
    shared.check_dlq(topic, trigger)?;
    let selected = scan(shared, topic, trigger, |record| selection.selects(record)).await?;
    let stream = shared
        .js
        .get_stream_no_info(shared.layout.dlq_stream(topic))
        .await
        .map_err(broker("get stream"))?;
    let mut removed = 0;
    for (sequence, record) in selected {
        if removal == Removal::Redrive {
            send_back(shared, topic, sequence, &record).await?;
        }
        if stream
            .delete_message(sequence)
            .await
            .map_err(broker("delete DLQ record"))?
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Publishes a record's message to its trigger's own subject, attempts reset.
async fn send_back(
    shared: &Shared,
    topic: &TopicName,
    sequence: u64,
    record: &DeadLetter,
) -> Result<()> {
    let spec = shared.topic(topic)?;
    let mut metadata = Metadata::redriven(record, spec.retention);
    metadata.lane = spec.lane_or_first(metadata.lane);
    let lane = metadata.lane;
    shared
        .ensure_direct_consumer(topic, &record.trigger, lane)
        .await?;
    // A new dedup id per redrive, or the topic's duplicate window would swallow the copy.
    let dedup = format!("redrive:{}:{sequence}", record.id);
    shared
        .publish_confirmed(
            shared.layout.direct_subject(topic, &record.trigger, lane),
            metadata.headers(&dedup, crate::codec::Stamp::Copy),
            crate::codec::encode(&record.data)?,
        )
        .await
        .map(|_| ())
}

impl DeadLetters for JetStreamAdapter {
    async fn dlq_count(&self, topic: &TopicName, trigger: Option<&TriggerName>) -> Result<u64> {
        let shared = &self.shared;
        shared.check_dlq(topic, trigger)?;
        let stream = shared.layout.dlq_stream(topic);
        subject_count(shared, &stream, &filter(shared, topic, trigger)).await
    }

    async fn dlq_list(&self, query: DlqQuery) -> Result<DlqPage> {
        self.shared
            .check_dlq(&query.topic, query.trigger.as_ref())?;
        let after = query.validate()?;
        page_after(&self.shared, &query, after).await
    }

    async fn dlq_redrive(
        &self,
        topic: &TopicName,
        trigger: Option<&TriggerName>,
        selection: DlqSelection,
    ) -> Result<u64> {
        remove_selected(&self.shared, topic, trigger, selection, Removal::Redrive).await
    }

    async fn dlq_purge(
        &self,
        topic: &TopicName,
        trigger: Option<&TriggerName>,
        selection: DlqSelection,
    ) -> Result<u64> {
        remove_selected(&self.shared, topic, trigger, selection, Removal::Purge).await
    }
}
