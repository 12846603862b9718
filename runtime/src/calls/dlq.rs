//! The DLQ calls: `queue.dlq_count`, `dlq_list`, `redrive_dlq` and `dlq_purge`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use topiq_adapter::{
    DeadLetter, DlqFilter, DlqQuery, DlqRecordRef, DlqSelection, MAX_DLQ_PAGE, MessageId,
    SubscriptionKey, TopicName, TriggerName,
};

use super::{CallError, timestamp, topic, trigger};
use crate::module::QueueModule;

/// Which DLQ records a call is about.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqRequest {
    /// The topic.
    pub topic: String,
    /// One trigger, or every trigger on the topic.
    #[serde(default)]
    pub trigger: Option<String>,
    /// Only these message ids.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    /// Only records whose error contains this text.
    #[serde(default)]
    pub error_contains: Option<String>,
    /// Only records last failed at or after this time (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// Only records last failed before this time (RFC 3339).
    #[serde(default)]
    pub until: Option<String>,
    /// Only records whose id or idempotency key is this text, or whose data contains it.
    #[serde(default)]
    pub contains: Option<String>,
    /// Listing: records per page (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Listing: the `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Redrive: count what would be redriven, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Redrive: at most this many messages per second.
    #[serde(default)]
    pub rate_per_sec: Option<u32>,
}

impl DlqRequest {
    fn filter(&self) -> Result<DlqFilter, CallError> {
        Ok(DlqFilter {
            error_contains: self.error_contains.clone(),
            since: self
                .since
                .as_deref()
                .map(|at| timestamp("since", at))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|at| timestamp("until", at))
                .transpose()?,
            contains: self.contains.clone(),
        })
    }

    fn has_filter(&self) -> bool {
        self.error_contains.is_some()
            || self.since.is_some()
            || self.until.is_some()
            || self.contains.is_some()
    }

    fn ids(&self) -> Option<Vec<MessageId>> {
        self.ids
            .as_ref()
            .map(|ids| ids.iter().map(MessageId::from_string).collect())
    }
}

impl QueueModule {
    fn dlq_target(
        &self,
        request: &DlqRequest,
    ) -> Result<(TopicName, Option<TriggerName>), CallError> {
        let topic = topic(&request.topic)?;
        if self.topic(&topic).is_none() {
            return Err(topiq_adapter::Error::UnknownTopic { topic }.into());
        }
        let trigger = trigger(request.trigger.as_deref())?;
        if let Some(name) = &trigger {
            let known = self
                .triggers()
                .iter()
                .any(|t| t.key.topic == topic && &t.key.trigger == name);
            if !known {
                return Err(topiq_adapter::Error::UnknownSubscription {
                    key: SubscriptionKey::new(topic, name.clone()),
                }
                .into());
            }
        }
        Ok((topic, trigger))
    }

    /// `queue.dlq_count`.
    pub async fn dlq_count(&self, request: &DlqRequest) -> Result<u64, CallError> {
        let (topic, trigger) = self.dlq_target(request)?;
        Ok(self.adapter().dlq_count(&topic, trigger.as_ref()).await?)
    }

    /// `queue.dlq_list`: one page of records and the cursor of the next.
    pub async fn dlq_list(
        &self,
        request: &DlqRequest,
    ) -> Result<(Vec<DeadLetter>, Option<String>), CallError> {
        let (topic, trigger) = self.dlq_target(request)?;
        let limit = request.limit.unwrap_or(100);
        if limit == 0 || limit > MAX_DLQ_PAGE {
            return Err(CallError::invalid(format!(
                "limit: must be between 1 and {MAX_DLQ_PAGE}, got {limit}"
            )));
        }
        let ids: Option<HashSet<MessageId>> = request.ids().map(|ids| ids.into_iter().collect());
        let page = self
            .adapter()
            .dlq_list(DlqQuery {
                topic,
                trigger,
                filter: request.filter()?,
                limit,
                cursor: request.cursor.clone(),
            })
            .await?;
        let records = match ids {
            None => page.records,
            Some(ids) => page
                .records
                .into_iter()
                .filter(|record| ids.contains(&record.id))
                .collect(),
        };
        Ok((records, page.next_cursor))
    }

    /// What a filtered or by-id redrive or purge touches: the records matching the request's
    /// filter and ids, each named exactly (a message can have several records on one
    /// trigger, and a filter picks records, not messages). Ids of one trigger without a
    /// filter (and not for a dry run, which counts what is there) are taken as given, without
    /// reading the DLQ: every record of those ids is selected, and the adapter skips ids it
    /// does not hold.
    async fn matching_records(
        &self,
        topic: &TopicName,
        trigger: Option<&TriggerName>,
        request: &DlqRequest,
    ) -> Result<Selected, CallError> {
        if let (Some(trigger), Some(ids), false) = (
            trigger,
            request.ids(),
            request.has_filter() || request.dry_run,
        ) {
            let mut seen = HashSet::new();
            let ids = ids
                .into_iter()
                .filter(|id| seen.insert(id.clone()))
                .collect();
            return Ok(Selected::Ids(trigger.clone(), ids));
        }
        let wanted: Option<HashSet<MessageId>> = request.ids().map(|ids| ids.into_iter().collect());
        let mut query = DlqQuery {
            topic: topic.clone(),
            trigger: trigger.cloned(),
            filter: request.filter()?,
            limit: MAX_DLQ_PAGE,
            cursor: None,
        };
        let mut records = Vec::new();
        let mut seen = HashSet::new();
        loop {
            let page = self.adapter().dlq_list(query.clone()).await?;
            for record in page.records {
                let selected = wanted
                    .as_ref()
                    .is_none_or(|wanted| wanted.contains(&record.id));
                let reference = record.reference();
                if selected && seen.insert(reference.clone()) {
                    records.push(reference);
                }
            }
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => return Ok(Selected::Records(records)),
            }
        }
    }

    /// Applies `operation` (redrive or purge) to `selected`, trigger by trigger, in chunks of
    /// `chunk`, one chunk per second when `paced`; logs progress and tells `progress`.
    async fn per_trigger(
        &self,
        topic: &TopicName,
        selected: Selected,
        chunk: usize,
        paced: bool,
        operation: DlqOperation,
        progress: &DlqProgress<'_>,
    ) -> Result<u64, CallError> {
        let parts = selected.chunks_by_trigger(chunk);
        let total: usize = parts
            .iter()
            .map(|(_, selection)| selection_len(selection))
            .sum();
        progress(0, total as u64);
        let mut done = 0;
        let mut in_chunk = 0;
        let mut started = tokio::time::Instant::now();
        for (trigger, selection) in parts {
            if paced && in_chunk >= chunk {
                tokio::time::sleep_until(started + Duration::from_secs(1)).await;
                started = tokio::time::Instant::now();
                in_chunk = 0;
            }
            in_chunk += selection_len(&selection);
            done += match operation {
                DlqOperation::Redrive => {
                    self.adapter()
                        .dlq_redrive(topic, Some(&trigger), selection)
                        .await?
                }
                DlqOperation::Purge => {
                    self.adapter()
                        .dlq_purge(topic, Some(&trigger), selection)
                        .await?
                }
            };
            tracing::info!(%topic, done, total, "dlq progress");
            progress(done, total as u64);
        }
        Ok(done)
    }

    /// `queue.redrive_dlq`: sends the selected records back to the trigger each failed on,
    /// with attempts reset; with `dry_run`, only counts them. Logged with its counts.
    pub async fn redrive_dlq(&self, request: &DlqRequest) -> Result<u64, CallError> {
        self.redrive(request, &|_, _| {}, true).await
    }

    /// [`redrive_dlq`](Self::redrive_dlq), telling `progress` (redriven, of how many) after
    /// each chunk of 100: the records are fixed first (every one in the DLQ, when the request
    /// selects no ids and sets no filter), so a message that fails again meanwhile is not
    /// redriven twice.
    pub async fn redrive_dlq_reporting(
        &self,
        request: &DlqRequest,
        progress: &DlqProgress<'_>,
    ) -> Result<u64, CallError> {
        self.redrive(request, progress, false).await
    }

    /// A redrive; a whole DLQ goes back in one broker operation when `whole_at_once`.
    async fn redrive(
        &self,
        request: &DlqRequest,
        progress: &DlqProgress<'_>,
        whole_at_once: bool,
    ) -> Result<u64, CallError> {
        let (topic, trigger) = self.dlq_target(request)?;
        if request.rate_per_sec == Some(0) {
            return Err(CallError::invalid("rate_per_sec: must be at least 1"));
        }
        let everything =
            request.ids.is_none() && !request.has_filter() && request.rate_per_sec.is_none();
        if everything && whole_at_once && !request.dry_run {
            let redriven = self
                .adapter()
                .dlq_redrive(&topic, trigger.as_ref(), DlqSelection::All)
                .await?;
            log_dlq_operation("redrive", &topic, trigger.as_ref(), "all", redriven);
            return Ok(redriven);
        }
        let selected = self
            .matching_records(&topic, trigger.as_ref(), request)
            .await?;
        if request.dry_run {
            return Ok(selected.len() as u64);
        }
        let chunk = request.rate_per_sec.map_or(100, |rate| rate as usize);
        let redriven = self
            .per_trigger(
                &topic,
                selected,
                chunk,
                request.rate_per_sec.is_some(),
                DlqOperation::Redrive,
                progress,
            )
            .await?;
        log_dlq_operation("redrive", &topic, trigger.as_ref(), "selected", redriven);
        Ok(redriven)
    }

    /// `queue.dlq_purge`: deletes the selected records (all, or by ids and filter). Logged with
    /// its count.
    pub async fn dlq_purge(&self, request: &DlqRequest) -> Result<u64, CallError> {
        let (topic, trigger) = self.dlq_target(request)?;
        if request.ids.is_none() && !request.has_filter() {
            let purged = self
                .adapter()
                .dlq_purge(&topic, trigger.as_ref(), DlqSelection::All)
                .await?;
            log_dlq_operation("purge", &topic, trigger.as_ref(), "all", purged);
            return Ok(purged);
        }
        let selected = self
            .matching_records(&topic, trigger.as_ref(), request)
            .await?;
        let purged = self
            .per_trigger(
                &topic,
                selected,
                MAX_DLQ_PAGE,
                false,
                DlqOperation::Purge,
                &|_, _| {},
            )
            .await?;
        log_dlq_operation("purge", &topic, trigger.as_ref(), "selected", purged);
        Ok(purged)
    }
}

/// What a long DLQ operation tells as it goes: done so far, of how many.
pub type DlqProgress<'a> = dyn Fn(u64, u64) + Send + Sync + 'a;

/// The records a filtered or by-id redrive or purge touches.
enum Selected {
    /// Every record of these ids on one trigger.
    Ids(TriggerName, Vec<MessageId>),
    /// Exactly these records.
    Records(Vec<DlqRecordRef>),
}

impl Selected {
    /// The selection in chunks of at most `chunk`, each split by the trigger it is for.
    fn chunks_by_trigger(self, chunk: usize) -> Vec<(TriggerName, DlqSelection)> {
        match self {
            Selected::Ids(trigger, ids) => ids
                .chunks(chunk.max(1))
                .map(|part| (trigger.clone(), DlqSelection::Ids(part.to_vec())))
                .collect(),
            Selected::Records(records) => records
                .chunks(chunk.max(1))
                .flat_map(|part| {
                    let mut by_trigger: BTreeMap<TriggerName, Vec<DlqRecordRef>> = BTreeMap::new();
                    for reference in part {
                        by_trigger
                            .entry(reference.trigger.clone())
                            .or_default()
                            .push(reference.clone());
                    }
                    by_trigger
                        .into_iter()
                        .map(|(trigger, refs)| (trigger, DlqSelection::Records(refs)))
                })
                .collect(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Selected::Ids(_, ids) => ids.len(),
            Selected::Records(records) => records.len(),
        }
    }
}

/// How many ids or records `selection` names.
fn selection_len(selection: &DlqSelection) -> usize {
    match selection {
        DlqSelection::Ids(ids) => ids.len(),
        DlqSelection::Records(records) => records.len(),
        _ => 0,
    }
}

/// What a filtered redrive or purge does to each selected record.
#[derive(Clone, Copy)]
enum DlqOperation {
    Redrive,
    Purge,
}

fn log_dlq_operation(
    operation: &str,
    topic: &TopicName,
    trigger: Option<&TriggerName>,
    selection: &str,
    count: u64,
) {
    tracing::info!(
        operation,
        %topic,
        trigger = trigger.map_or("(all)", |trigger| trigger.as_str()),
        selection,
        count,
        requested_by = "queue call",
        "dlq {operation}"
    );
}
