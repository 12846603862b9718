//! Runs of messages the broker adapter dead-letters itself, never handing them to a trigger
//! (past their topic's retention, a lease that ran out on the last attempt): read from the
//! recording triggers' DLQs and recorded, so those runs end `expired` or `dead_lettered`.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use topiq_adapter::{
    DeadLetter, DlqFilter, DlqQuery, MAX_DLQ_PAGE, SharedAdapter, Timestamp, TopicName, TriggerName,
};
use topiq_runs::{Change, Origin, RunError, RunEvent, RunKey};

use super::Runs;

/// How often the DLQs are read.
pub(crate) const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// How far back each read looks again (records written while the last read ran).
const OVERLAP: Duration = Duration::from_secs(30);

/// Reads each recording trigger's new DLQ records every [`RECONCILE_EVERY`] until `stop`,
/// starting with those of the last `keep`, and records them.
pub(crate) async fn dead_letters(
    adapter: &SharedAdapter,
    runs: &Runs,
    recording: &BTreeMap<TopicName, Vec<TriggerName>>,
    stop: &CancellationToken,
    keep: Duration,
) {
    let back = |span: Duration| {
        let span = jiff::SignedDuration::try_from(span).unwrap_or(jiff::SignedDuration::MAX);
        Timestamp::now().checked_sub(span).unwrap_or(Timestamp::MIN)
    };
    let mut since = back(keep);
    loop {
        let next_since = back(OVERLAP);
        for (topic, triggers) in recording {
            for trigger in triggers {
                if let Err(err) = read_trigger(adapter, runs, topic, trigger, since).await {
                    tracing::warn!(%topic, %trigger, error = %err, "cannot read the DLQ for the runs of dead-lettered messages");
                }
            }
        }
        since = next_since;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
}

/// Records the DLQ records of `trigger` that failed at or after `since`, a page at a time.
async fn read_trigger(
    adapter: &SharedAdapter,
    runs: &Runs,
    topic: &TopicName,
    trigger: &TriggerName,
    since: Timestamp,
) -> topiq_adapter::Result<()> {
    let mut cursor = None;
    loop {
        let mut query = DlqQuery::new(topic.clone());
        query.trigger = Some(trigger.clone());
        query.filter = DlqFilter {
            since: Some(since),
            ..DlqFilter::default()
        };
        query.limit = MAX_DLQ_PAGE;
        query.cursor = cursor;
        let page = adapter.dlq_list(query).await?;
        let events = page.records.iter().map(event_of);
        runs.recorder().record(events).await;
        cursor = page.next_cursor;
        if cursor.is_none() {
            return Ok(());
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
