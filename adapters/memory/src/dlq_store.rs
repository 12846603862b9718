//! The dead-letter records of one topic, every trigger, in the order they failed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use topiq_adapter::{
    DeadLetter, DlqFilter, DlqPage, DlqSelection, MessageId, Timestamp, TriggerName,
};

/// Records keyed by an increasing sequence number, which is also the listing cursor.
#[derive(Default)]
pub(crate) struct DeadLetterStore {
    records: BTreeMap<u64, DeadLetter>,
    per_trigger: HashMap<TriggerName, u64>,
    next_seq: u64,
}

impl DeadLetterStore {
    pub(crate) fn insert(&mut self, record: DeadLetter) {
        self.next_seq += 1;
        *self.per_trigger.entry(record.trigger.clone()).or_default() += 1;
        self.records.insert(self.next_seq, record);
    }

    /// Drops records last failed longer than `retention` ago.
    pub(crate) fn expire(&mut self, retention: Option<Duration>, now: Timestamp) {
        let Some(retention) = retention else { return };
        let Ok(cutoff) = now.checked_sub(retention) else {
            return;
        };
        // Records are stored in the order they failed, so the expired ones are at the front.
        while let Some((&seq, record)) = self.records.first_key_value() {
            if record.last_failed_at >= cutoff {
                break;
            }
            self.remove(seq);
        }
    }

    pub(crate) fn count(&self, trigger: Option<&TriggerName>) -> u64 {
        match trigger {
            Some(trigger) => self.per_trigger.get(trigger).copied().unwrap_or(0),
            None => self.records.len() as u64,
        }
    }

    pub(crate) fn list(
        &self,
        trigger: Option<&TriggerName>,
        filter: &DlqFilter,
        limit: usize,
        after: u64,
    ) -> DlqPage {
        let mut matching = self
            .records
            .range(after.saturating_add(1)..)
            .filter(|(_, record)| selects(record, trigger) && filter.matches(record));
        let mut records = Vec::new();
        let mut last_seq = after;
        for (seq, record) in matching.by_ref().take(limit) {
            records.push(record.clone());
            last_seq = *seq;
        }
        let next_cursor = matching.next().map(|_| last_seq.to_string());
        let newest = self.records.last_key_value().map_or(after, |(seq, _)| *seq);
        let read_to = next_cursor
            .clone()
            .unwrap_or_else(|| newest.max(after).to_string());
        DlqPage {
            records,
            next_cursor,
            read_to,
        }
    }

    /// Copies of the selected records with their sequence numbers, oldest first.
    pub(crate) fn select(
        &self,
        trigger: Option<&TriggerName>,
        selection: &DlqSelection,
    ) -> Vec<(u64, DeadLetter)> {
        let ids: Option<HashSet<&MessageId>> = match selection {
            DlqSelection::Ids(ids) => Some(ids.iter().collect()),
            _ => None,
        };
        self.records
            .iter()
            .filter(|(_, record)| {
                selects(record, trigger)
                    && match &ids {
                        Some(ids) => ids.contains(&record.id),
                        None => selection.selects(record),
                    }
            })
            .map(|(seq, record)| (*seq, record.clone()))
            .collect()
    }

    /// Removes one record; false when it was already gone.
    pub(crate) fn remove(&mut self, seq: u64) -> bool {
        let Some(record) = self.records.remove(&seq) else {
            return false;
        };
        if let Some(count) = self.per_trigger.get_mut(&record.trigger) {
            *count = count.saturating_sub(1);
        }
        true
    }
}

fn selects(record: &DeadLetter, trigger: Option<&TriggerName>) -> bool {
    trigger.is_none_or(|trigger| &record.trigger == trigger)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use topiq_adapter::{Failure, FailureKind, MessageId, TopicName};

    fn record(trigger: &str, failed_at: Timestamp) -> DeadLetter {
        DeadLetter {
            id: MessageId::generate(),
            topic: TopicName::new("t").unwrap(),
            trigger: TriggerName::new(trigger).unwrap(),
            data: Arc::new(serde_json::json!(null)),
            attempts: 1,
            first_failed_at: failed_at,
            last_failed_at: failed_at,
            error: Failure::new(FailureKind::NonRetryable, "x"),
            traceparent: None,
            baggage: None,
            idempotency_key: None,
            enqueued_at: failed_at,
            lane: 0,
        }
    }

    #[test]
    fn retention_drops_records_older_than_it_and_keeps_counts_right() {
        let now = Timestamp::now();
        let mut store = DeadLetterStore::default();
        store.insert(record("a", now - Duration::from_secs(120)));
        store.insert(record("b", now - Duration::from_secs(90)));
        store.insert(record("a", now - Duration::from_secs(10)));
        store.expire(Some(Duration::from_secs(60)), now);
        assert_eq!(store.count(None), 1);
        assert_eq!(store.count(Some(&TriggerName::new("a").unwrap())), 1);
        assert_eq!(store.count(Some(&TriggerName::new("b").unwrap())), 0);
        store.expire(None, now + Duration::from_secs(3600));
        assert_eq!(store.count(None), 1, "no retention keeps everything");
    }

    #[test]
    fn a_foreign_cursor_is_a_clear_error() {
        let mut query = topiq_adapter::DlqQuery::new(TopicName::new("t").unwrap());
        query.cursor = Some("abc".into());
        let err = query.validate().unwrap_err();
        assert!(err.to_string().contains("cursor"), "{err}");
    }
}
