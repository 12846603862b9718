//! The `queue.*` call surface: every call takes and returns JSON, callable by name
//! ([`QueueModule::call`]) or through typed methods.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use topiq_adapter::{
    DeadLetter, DlqFilter, DlqQuery, DlqRecordRef, DlqSelection, MAX_DLQ_PAGE, MessageId,
    NewMessage, PublishReceipt, SubscriptionKey, Timestamp, TopicName, TraceContext, TriggerName,
};

use tracing::Instrument;

use crate::config::parse_duration;
use crate::module::QueueModule;
use crate::stats::TriggerCounts;
use crate::telemetry;

/// The calls [`QueueModule::call`] knows.
pub const CALLS: &[&str] = &[
    "queue.enqueue",
    "queue.enqueue_batch",
    "queue.dlq_count",
    "queue.dlq_list",
    "queue.redrive_dlq",
    "queue.dlq_purge",
    "queue.stats",
];

/// The most messages in one `queue.enqueue_batch`.
pub const MAX_BATCH: usize = 100;

/// A call that failed; [`CallError::to_json`] is its `{"error": {"code", "message"}}` form.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No call has that name.
    #[error("unknown call {name:?}; known calls: {}", CALLS.join(", "))]
    UnknownCall {
        /// The name asked for.
        name: String,
    },
    /// An argument is missing, unknown or malformed.
    #[error("{message}")]
    InvalidArgument {
        /// What is wrong and what is expected.
        message: String,
    },
    /// The adapter refused the call (bad topic, payload too large, broker down...).
    #[error(transparent)]
    Adapter(#[from] topiq_adapter::Error),
}

impl CallError {
    fn invalid(message: impl Into<String>) -> Self {
        CallError::InvalidArgument {
            message: message.into(),
        }
    }

    /// The stable error code: `invalid_topic`, `payload_too_large`, `invalid_argument`,
    /// `unknown_topic`, `unknown_trigger`, `unknown_call`, `broker_unavailable`, ...
    pub fn code(&self) -> &'static str {
        match self {
            CallError::UnknownCall { .. } => "unknown_call",
            CallError::InvalidArgument { .. } => "invalid_argument",
            CallError::Adapter(err) => err.code(),
        }
    }

    /// `{"error": {"code": ..., "message": ...}}`.
    pub fn to_json(&self) -> Value {
        json!({"error": {"code": self.code(), "message": self.to_string()}})
    }
}

fn parse_args<T: for<'de> Deserialize<'de>>(call: &str, args: Value) -> Result<T, CallError> {
    serde_json::from_value(args).map_err(|err| CallError::invalid(format!("{call}: {err}")))
}

fn topic(name: &str) -> Result<TopicName, CallError> {
    Ok(TopicName::new(name)?)
}

fn trigger(name: Option<&str>) -> Result<Option<TriggerName>, CallError> {
    name.map(TriggerName::new).transpose().map_err(Into::into)
}

/// Arguments of `queue.enqueue`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// The topic.
    pub topic: String,
    /// The payload: any JSON value.
    pub data: Value,
    /// Enqueues with the same key inside the topic's window return the first message's id.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Deliver no sooner than this from now: `"5s"`, `"250ms"`.
    #[serde(default)]
    pub delay: Option<String>,
    /// Deliver no sooner than this time (RFC 3339).
    #[serde(default)]
    pub run_at: Option<String>,
    /// W3C `traceparent` of the caller, the parent of the publish span (over the HTTP API,
    /// the request's `traceparent` header when this is not given).
    #[serde(default)]
    pub traceparent: Option<String>,
    /// W3C `baggage` to carry.
    #[serde(default)]
    pub baggage: Option<String>,
}

/// The result of `queue.enqueue` and of each `queue.enqueue_batch` item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnqueueResult {
    /// The message's id (the first message's, for a duplicate).
    pub message_id: MessageId,
    /// True when the idempotency key was seen inside the window and nothing was enqueued.
    pub duplicate: bool,
}

impl EnqueueResult {
    /// `{"message_id": ..., "duplicate": ...}`.
    pub fn to_json(&self) -> Value {
        json!({ "message_id": self.message_id, "duplicate": self.duplicate })
    }
}

impl From<PublishReceipt> for EnqueueResult {
    fn from(receipt: PublishReceipt) -> Self {
        Self {
            message_id: receipt.message_id,
            duplicate: receipt.duplicate,
        }
    }
}

/// One message of `queue.enqueue_batch`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    /// The payload.
    pub data: Value,
    /// As in `queue.enqueue`.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// As in `queue.enqueue`.
    #[serde(default)]
    pub delay: Option<String>,
    /// As in `queue.enqueue`.
    #[serde(default)]
    pub run_at: Option<String>,
    /// As in `queue.enqueue`.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// As in `queue.enqueue`.
    #[serde(default)]
    pub baggage: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueBatchRequest {
    topic: String,
    messages: Vec<BatchItem>,
}

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
        })
    }

    fn has_filter(&self) -> bool {
        self.error_contains.is_some() || self.since.is_some() || self.until.is_some()
    }

    fn ids(&self) -> Option<Vec<MessageId>> {
        self.ids
            .as_ref()
            .map(|ids| ids.iter().map(MessageId::from_string).collect())
    }
}

fn timestamp(argument: &str, text: &str) -> Result<Timestamp, CallError> {
    text.parse::<Timestamp>().map_err(|err| {
        CallError::invalid(format!(
            "{argument}: {text:?} is not an RFC 3339 time such as \"2026-11-23T10:00:00Z\" ({err})"
        ))
    })
}

/// Per-trigger figures of `queue.stats`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TriggerStats {
    /// The topic.
    pub topic: TopicName,
    /// The trigger.
    pub trigger: TriggerName,
    /// Messages waiting (delayed ones included), from the broker.
    pub waiting: u64,
    /// Messages delivered and not settled, from the broker.
    pub in_flight: u64,
    /// Records in the trigger's DLQ, from the broker.
    pub dlq: u64,
    /// This process's handler outcomes since it started.
    #[serde(flatten)]
    pub counts: TriggerCounts,
}

impl QueueModule {
    /// Runs the call `name` with JSON `args`; the result is the call's JSON result.
    pub async fn call(&self, name: &str, args: Value) -> Result<Value, CallError> {
        match name {
            "queue.enqueue" => {
                let result = self.enqueue(parse_args(name, args)?).await?;
                Ok(result.to_json())
            }
            "queue.enqueue_batch" => {
                let request: EnqueueBatchRequest = parse_args(name, args)?;
                let results = self.enqueue_batch(&request.topic, request.messages).await?;
                let results: Vec<Value> = results
                    .into_iter()
                    .map(|result| match result {
                        Ok(receipt) => receipt.to_json(),
                        Err(err) => err.to_json(),
                    })
                    .collect();
                Ok(json!({ "results": results }))
            }
            "queue.dlq_count" => {
                let request: DlqRequest = parse_args(name, args)?;
                Ok(json!({ "count": self.dlq_count(&request).await? }))
            }
            "queue.dlq_list" => {
                let request: DlqRequest = parse_args(name, args)?;
                let (messages, next_cursor) = self.dlq_list(&request).await?;
                Ok(json!({ "messages": messages, "next_cursor": next_cursor }))
            }
            "queue.redrive_dlq" => {
                let request: DlqRequest = parse_args(name, args)?;
                let count = self.redrive_dlq(&request).await?;
                Ok(if request.dry_run {
                    json!({ "would_redrive": count })
                } else {
                    json!({ "redriven": count })
                })
            }
            "queue.dlq_purge" => {
                let request: DlqRequest = parse_args(name, args)?;
                Ok(json!({ "purged": self.dlq_purge(&request).await? }))
            }
            "queue.stats" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct StatsRequest {
                    #[serde(default)]
                    topic: Option<String>,
                }
                let request: StatsRequest = parse_args(name, args)?;
                let triggers = self.stats(request.topic.as_deref()).await?;
                Ok(json!({ "triggers": triggers }))
            }
            _ => Err(CallError::UnknownCall {
                name: name.to_owned(),
            }),
        }
    }

    fn new_message(
        &self,
        data: Value,
        idempotency_key: Option<String>,
        delay: Option<&str>,
        run_at: Option<&str>,
    ) -> Result<NewMessage, CallError> {
        let mut message = NewMessage::new(data);
        message.idempotency_key = idempotency_key;
        match (delay, run_at) {
            (Some(_), Some(_)) => {
                return Err(CallError::invalid(
                    "give either `delay` or `run_at`, not both",
                ));
            }
            (Some(delay), None) => {
                let delay = parse_duration(delay)
                    .map_err(|reason| CallError::invalid(format!("delay: {reason}")))?;
                if Timestamp::now().checked_add(delay).is_err() {
                    return Err(CallError::invalid(
                        "delay: too far in the future (past year 9999)",
                    ));
                }
                message = message.delay(delay);
            }
            (None, Some(run_at)) => {
                message = message.deliver_at(timestamp("run_at", run_at)?);
            }
            (None, None) => {}
        }
        if let (Some(at), Some(max_delay)) =
            (message.deliver_at, self.adapter().capabilities().max_delay)
        {
            let wait = at.duration_since(Timestamp::now());
            if Duration::try_from(wait).is_ok_and(|wait| wait > max_delay) {
                return Err(CallError::invalid(format!(
                    "the delay is longer than {} allows ({max_delay:?})",
                    self.adapter().capabilities().adapter
                )));
            }
        }
        Ok(message)
    }

    /// `queue.enqueue`.
    pub async fn enqueue(&self, request: EnqueueRequest) -> Result<EnqueueResult, CallError> {
        let topic = topic(&request.topic)?;
        let message = self
            .new_message(
                request.data,
                request.idempotency_key,
                request.delay.as_deref(),
                request.run_at.as_deref(),
            )?
            .trace(TraceContext {
                traceparent: request.traceparent,
                baggage: request.baggage,
            });
        Ok(self.publish(&topic, message).await?.into())
    }

    /// `queue.enqueue_batch`: one result per message, in order.
    pub async fn enqueue_batch(
        &self,
        topic_name: &str,
        items: Vec<BatchItem>,
    ) -> Result<Vec<Result<EnqueueResult, CallError>>, CallError> {
        let topic = topic(topic_name)?;
        if items.is_empty() || items.len() > MAX_BATCH {
            return Err(CallError::invalid(format!(
                "messages: give 1 to {MAX_BATCH} messages, got {}",
                items.len()
            )));
        }
        if self.topic(&topic).is_none() {
            return Err(topiq_adapter::Error::UnknownTopic { topic }.into());
        }
        let mut results: Vec<Option<Result<EnqueueResult, CallError>>> = Vec::new();
        let mut messages = Vec::new();
        let mut slots = Vec::new();
        for item in items {
            let trace = TraceContext {
                traceparent: item.traceparent,
                baggage: item.baggage,
            };
            match self.new_message(
                item.data,
                item.idempotency_key,
                item.delay.as_deref(),
                item.run_at.as_deref(),
            ) {
                Ok(message) => {
                    let message = message.trace(trace);
                    slots.push(results.len());
                    results.push(None);
                    messages.push(message);
                }
                Err(err) => results.push(Some(Err(err))),
            }
        }
        if !messages.is_empty() {
            let span = telemetry::publish_span(self.messaging_system(), &topic, messages.len());
            for message in &mut messages {
                message.trace =
                    telemetry::publish_context(&span, std::mem::take(&mut message.trace));
            }
            let count = messages.len() as u64;
            let published = match self
                .adapter()
                .publish_batch(&topic, messages)
                .instrument(span)
                .await
            {
                Ok(published) => published,
                Err(err) => {
                    self.metrics().published(&topic, count, false);
                    return Err(err.into());
                }
            };
            let accepted = published.iter().filter(|result| result.is_ok()).count() as u64;
            self.metrics().published(&topic, accepted, true);
            self.metrics()
                .published(&topic, published.len() as u64 - accepted, false);
            for (slot, result) in slots.into_iter().zip(published) {
                results[slot] = Some(result.map(Into::into).map_err(Into::into));
            }
        }
        Ok(results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(CallError::invalid(
                        "the adapter returned no result for this message",
                    ))
                })
            })
            .collect())
    }

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
    /// `chunk`, one chunk per second when `paced`; logs progress.
    async fn per_trigger(
        &self,
        topic: &TopicName,
        selected: Selected,
        chunk: usize,
        paced: bool,
        operation: DlqOperation,
    ) -> Result<u64, CallError> {
        let parts: Vec<(TriggerName, DlqSelection)> = match selected {
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
        };
        let total: usize = parts
            .iter()
            .map(|(_, selection)| selection_len(selection))
            .sum();
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
        }
        Ok(done)
    }

    /// `queue.redrive_dlq`: sends the selected records back to the trigger each failed on,
    /// with attempts reset; with `dry_run`, only counts them. Logged with its counts.
    pub async fn redrive_dlq(&self, request: &DlqRequest) -> Result<u64, CallError> {
        let (topic, trigger) = self.dlq_target(request)?;
        if request.rate_per_sec == Some(0) {
            return Err(CallError::invalid("rate_per_sec: must be at least 1"));
        }
        let everything =
            request.ids.is_none() && !request.has_filter() && request.rate_per_sec.is_none();
        if everything && !request.dry_run {
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
            .per_trigger(&topic, selected, MAX_DLQ_PAGE, false, DlqOperation::Purge)
            .await?;
        log_dlq_operation("purge", &topic, trigger.as_ref(), "selected", purged);
        Ok(purged)
    }

    /// `queue.stats`: per trigger (of one topic, or all), the broker's counts and this
    /// process's outcomes.
    pub async fn stats(&self, topic_name: Option<&str>) -> Result<Vec<TriggerStats>, CallError> {
        let topic = topic_name.map(topic).transpose()?;
        if let Some(topic) = &topic
            && self.topic(topic).is_none()
        {
            return Err(topiq_adapter::Error::UnknownTopic {
                topic: topic.clone(),
            }
            .into());
        }
        let mut rows = Vec::new();
        for trigger in self.triggers() {
            if topic
                .as_ref()
                .is_some_and(|topic| topic != &trigger.key.topic)
            {
                continue;
            }
            let broker = self.adapter().stats(&trigger.key).await?;
            rows.push(TriggerStats {
                topic: trigger.key.topic.clone(),
                trigger: trigger.key.trigger.clone(),
                waiting: broker.waiting,
                in_flight: broker.in_flight,
                dlq: broker.dead_lettered,
                counts: trigger.counters.snapshot(),
            });
        }
        Ok(rows)
    }
}

/// The records a filtered or by-id redrive or purge touches.
enum Selected {
    /// Every record of these ids on one trigger.
    Ids(TriggerName, Vec<MessageId>),
    /// Exactly these records.
    Records(Vec<DlqRecordRef>),
}

impl Selected {
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
