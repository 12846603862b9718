//! Runs of messages the broker adapter dead-letters itself, never handing them to a trigger
//! (past their topic's retention, a lease that ran out on the last attempt): read from the
//! recording triggers' DLQs and recorded, so those runs end `expired` or `dead_lettered`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use topiq_adapter::{
    DeadLetter, DlqFilter, DlqQuery, MAX_DLQ_PAGE, SharedAdapter, Timestamp, TopicName, TriggerName,
};
use topiq_runs::{Change, Origin, RunError, RunEvent, RunKey};

use super::Runs;

/// How often the DLQs are read.
pub(crate) const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// Reads each recording trigger's new DLQ records every [`RECONCILE_EVERY`] until `stop`,
/// starting with those of the last `keep`, and records them. Each trigger's read goes on from
/// where the last one ended (the listing's `read_to`), not from the DLQ's start.
pub(crate) async fn dead_letters(
    adapter: &SharedAdapter,
    runs: &Runs,
    recording: &BTreeMap<TopicName, Vec<TriggerName>>,
    stop: &CancellationToken,
    keep: Duration,
) {
    let keep = jiff::SignedDuration::try_from(keep).unwrap_or(jiff::SignedDuration::MAX);
    let since = Timestamp::now().checked_sub(keep).unwrap_or(Timestamp::MIN);
    let mut places: HashMap<(TopicName, TriggerName), String> = HashMap::new();
    loop {
        for (topic, triggers) in recording {
            for trigger in triggers {
                let key = (topic.clone(), trigger.clone());
                let place = places.get(&key).cloned();
                match read_trigger(adapter, runs, topic, trigger, since, place).await {
                    Ok(read_to) => {
                        places.insert(key, read_to);
                    }
                    Err(err) => {
                        tracing::warn!(%topic, %trigger, error = %err, "cannot read the DLQ for the runs of dead-lettered messages");
                    }
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
}

/// Records the DLQ records of `trigger` after `place` (the first time, with none: those that
/// failed at or after `since`), a page at a time; returns where this read ended.
async fn read_trigger(
    adapter: &SharedAdapter,
    runs: &Runs,
    topic: &TopicName,
    trigger: &TriggerName,
    since: Timestamp,
    place: Option<String>,
) -> topiq_adapter::Result<String> {
    let mut query = DlqQuery::new(topic.clone());
    query.trigger = Some(trigger.clone());
    query.limit = MAX_DLQ_PAGE;
    if place.is_none() {
        query.filter = DlqFilter {
            since: Some(since),
            ..DlqFilter::default()
        };
    }
    query.cursor = place;
    loop {
        let page = adapter.dlq_list(query.clone()).await?;
        let events = page.records.iter().map(event_of);
        runs.recorder().record(events).await;
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return Ok(page.read_to),
        }
    }
}

/// The run event a DLQ record stands for.
fn event_of(record: &DeadLetter) -> RunEvent {
    let origin = Origin {
        topic: record.topic.clone(),
        data: record.data.clone(),
        enqueued_at: record.enqueued_at,
        run_at: None,
        replay_of: None,
        idempotency_key: record.idempotency_key.clone(),
    };
    let error = RunError {
        kind: record.error.kind.to_string(),
        message: record.error.message.clone(),
    };
    RunEvent {
        key: RunKey::new(record.id.clone(), record.trigger.clone()),
        at: record.last_failed_at,
        change: Change::DeadLettered { origin, error },
    }
}
