//! The `triggers:` section: each trigger's topic, function, condition, limits, timeouts,
//! retry policy and dead-letter topic.

use std::time::Duration;

use serde_saphyr::Spanned;
use topiq_adapter::{DEFAULT_VISIBILITY_TIMEOUT, MIN_VISIBILITY_TIMEOUT, TopicName, TriggerName};

use super::raw::{BackoffKind, RawQueueMetadata, RawRetry, RawTrigger, RawTriggerConfig};
use super::source::spanned_at;
use super::{
    ConfigError, ConfigLocation, DEFAULT_HANDLER_TIMEOUT, MAX_BATCH_SIZE, MAX_CONCURRENCY,
    TriggerSettings,
};
use crate::condition::Condition;
use crate::ordering::OrderingKey;
use crate::retry::{Backoff, RetryPolicy};

/// One trigger, checked; a warning for a combination that works but may surprise.
pub(super) fn validate_trigger(
    file: &str,
    name: TriggerName,
    raw: RawTrigger,
    warnings: &mut Vec<String>,
) -> Result<TriggerSettings, ConfigError> {
    let key = format!("triggers.{name}");
    if raw.kind.value != "queue" {
        return Err(ConfigError::invalid(
            spanned_at(file, &raw.kind),
            format!("{key}.type"),
            format!(
                "unknown trigger type {:?}; topiq runs `type: queue` triggers",
                raw.kind.value
            ),
        ));
    }
    let at = Place { file, key: &key };
    let config = raw.config;
    let condition = condition(&at, &config)?;
    let concurrency = at.in_range(&config.concurrency, "concurrency", MAX_CONCURRENCY)?;
    let batch_size = at.in_range(&config.batch_size, "batch_size", MAX_BATCH_SIZE)?;
    let (visibility_timeout, timeout) = timeouts(&at, &config, warnings)?;
    let ordering_key = ordering_key(&at, &config, batch_size)?;
    let queue_metadata = config
        .metadata
        .and_then(|metadata| metadata.infrastructure)
        .and_then(|infrastructure| infrastructure.queue);
    let retry = retry(&at, config.retry.as_ref(), queue_metadata.as_ref())?;
    let dead_letter_topic = queue_metadata.and_then(|queue| queue.dead_letter_topic);
    if dead_letter_topic.as_ref() == Some(&config.topic) {
        return Err(ConfigError::invalid(
            spanned_at(file, &raw.function),
            format!("{key}.config.metadata.infrastructure.queue.dead_letter_topic"),
            "is the trigger's own topic: failed messages would be delivered to it again; name another topic",
        ));
    }
    Ok(TriggerSettings {
        name,
        topic: config.topic,
        function: raw.function.value.clone(),
        function_location: spanned_at(file, &raw.function),
        condition,
        retry,
        dead_letter_topic,
        concurrency,
        batch_size,
        visibility_timeout,
        timeout,
        record_runs: config.runs.unwrap_or(true),
        ordering_key_location: ordering_key.as_ref().map(|(_, at)| at.clone()),
        ordering_key: ordering_key.map(|(key, _)| key),
    })
}

/// Where in the file a trigger's checks point: its file and key (`triggers.<name>`).
struct Place<'a> {
    file: &'a str,
    key: &'a str,
}

impl Place<'_> {
    /// An error at `spanned` for `<key>.config.<field>`.
    fn error<T>(
        &self,
        spanned: &Spanned<T>,
        field: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::invalid(
            spanned_at(self.file, spanned),
            format!("{}.config.{field}", self.key),
            message,
        )
    }

    /// `value` (default 1), which must be 1 to `max`.
    fn in_range(
        &self,
        value: &Option<Spanned<u32>>,
        field: &str,
        max: u32,
    ) -> Result<u32, ConfigError> {
        match value {
            None => Ok(1),
            Some(spanned) if (1..=max).contains(&spanned.value) => Ok(spanned.value),
            Some(spanned) => Err(self.error(
                spanned,
                field,
                format!("must be between 1 and {max}, got {}", spanned.value),
            )),
        }
    }
}

fn condition(at: &Place<'_>, config: &RawTriggerConfig) -> Result<Option<Condition>, ConfigError> {
    let Some(source) = &config.condition else {
        return Ok(None);
    };
    Condition::compile(&source.value)
        .map(Some)
        .map_err(|message| at.error(source, "condition", message))
}

/// The compiled `ordering_key` and where it is written; only with `batch_size` 1.
fn ordering_key(
    at: &Place<'_>,
    config: &RawTriggerConfig,
    batch_size: u32,
) -> Result<Option<(OrderingKey, ConfigLocation)>, ConfigError> {
    let Some(source) = &config.ordering_key else {
        return Ok(None);
    };
    if batch_size > 1 {
        return Err(at.error(
            source,
            "ordering_key",
            "needs batch_size 1: a batch would run several messages of one key at once",
        ));
    }
    let key = OrderingKey::compile(&source.value)
        .map_err(|message| at.error(source, "ordering_key", message))?;
    Ok(Some((key, spanned_at(at.file, source))))
}

/// The visibility timeout (at least 1 s) and the handler timeout (above zero).
fn timeouts(
    at: &Place<'_>,
    config: &RawTriggerConfig,
    warnings: &mut Vec<String>,
) -> Result<(Duration, Duration), ConfigError> {
    let visibility_timeout = match &config.visibility_timeout {
        None => DEFAULT_VISIBILITY_TIMEOUT,
        Some(spanned) if spanned.value.0 >= MIN_VISIBILITY_TIMEOUT => spanned.value.0,
        Some(spanned) => {
            let message = format!("must be at least {MIN_VISIBILITY_TIMEOUT:?}");
            return Err(at.error(spanned, "visibility_timeout", message));
        }
    };
    let timeout = match &config.timeout {
        None => DEFAULT_HANDLER_TIMEOUT,
        Some(spanned) if !spanned.value.0.is_zero() => spanned.value.0,
        Some(spanned) => return Err(at.error(spanned, "timeout", "must be longer than zero")),
    };
    if config.timeout.is_some() && timeout > visibility_timeout {
        warnings.push(format!(
            "{}: the handler timeout ({timeout:?}) is longer than the visibility timeout ({visibility_timeout:?}): topiq extends the lease while the handler runs, but if this process stalls the message is delivered again before the handler gives up",
            at.key
        ));
    }
    Ok((visibility_timeout, timeout))
}

/// The retry policy: topiq's `retry:` block, or iii's `max_retries` / `retry_delay_ms`
/// (never both), or the default.
fn retry(
    at: &Place<'_>,
    retry: Option<&Spanned<RawRetry>>,
    queue: Option<&RawQueueMetadata>,
) -> Result<RetryPolicy, ConfigError> {
    let max_retries = queue.and_then(|queue| queue.max_retries.as_ref());
    let retry_delay_ms = queue.and_then(|queue| queue.retry_delay_ms.as_ref());
    match retry {
        Some(retry) if max_retries.is_some() || retry_delay_ms.is_some() => Err(at.error(
            retry,
            "retry",
            "give either `retry:` or metadata.infrastructure.queue.max_retries / retry_delay_ms, not both",
        )),
        Some(retry) => retry_policy(&retry.value).map_err(|message| at.error(retry, "retry", message)),
        None if max_retries.is_none() && retry_delay_ms.is_none() => Ok(RetryPolicy::default()),
        // iii's keys: a fixed delay (1 s unless given), `max_retries` after the first attempt.
        None => Ok(RetryPolicy {
            max_attempts: max_retries.map_or(RetryPolicy::default().max_attempts, |retries| {
                retries.value.saturating_add(1)
            }),
            backoff: Backoff::Fixed(retry_delay_ms.map_or(Duration::from_secs(1), |delay| {
                Duration::from_millis(delay.value)
            })),
        }),
    }
}

/// The policy of a `retry:` block; the error says what is wrong with it.
fn retry_policy(raw: &RawRetry) -> Result<RetryPolicy, String> {
    let max_attempts = raw
        .max_attempts
        .unwrap_or(RetryPolicy::default().max_attempts);
    if max_attempts == 0 {
        return Err("max_attempts must be at least 1 (the first attempt)".into());
    }
    let backoff = match raw.backoff {
        BackoffKind::Fixed => fixed(raw)?,
        BackoffKind::Exponential => exponential(raw)?,
        BackoffKind::Custom => custom(raw)?,
    };
    Ok(RetryPolicy {
        max_attempts,
        backoff,
    })
}

/// Refuses a field given that `kind` (`fixed`, ...) does not take; it takes `allowed`.
fn only(raw: &RawRetry, kind: &str, allowed: &[&str]) -> Result<(), String> {
    let given = [
        ("delay", raw.delay.is_some()),
        ("initial", raw.initial.is_some()),
        ("factor", raw.factor.is_some()),
        ("max", raw.max.is_some()),
        ("delays", raw.delays.is_some()),
    ];
    match given
        .into_iter()
        .find(|(name, given)| *given && !allowed.contains(name))
    {
        Some((name, _)) => Err(format!(
            "`{name}` does not apply to `backoff: {kind}` (it takes {})",
            allowed
                .iter()
                .map(|name| format!("`{name}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => Ok(()),
    }
}

fn fixed(raw: &RawRetry) -> Result<Backoff, String> {
    only(raw, "fixed", &["delay"])?;
    let delay = raw
        .delay
        .ok_or("`backoff: fixed` needs `delay`, such as `delay: 2s`")?;
    Ok(Backoff::Fixed(delay.0))
}

fn exponential(raw: &RawRetry) -> Result<Backoff, String> {
    only(raw, "exponential", &["initial", "factor", "max"])?;
    let initial = raw
        .initial
        .ok_or("`backoff: exponential` needs `initial`, such as `initial: 1s`")?
        .0;
    let factor = raw.factor.unwrap_or(2.0);
    if !(factor.is_finite() && factor >= 1.0) {
        return Err(format!("factor must be a number ≥ 1, got {factor}"));
    }
    let max = raw.max.map_or(Duration::from_secs(300), |max| max.0);
    if max < initial {
        return Err("max must not be shorter than initial".into());
    }
    Ok(Backoff::Exponential {
        initial,
        factor,
        max,
    })
}

fn custom(raw: &RawRetry) -> Result<Backoff, String> {
    only(raw, "custom", &["delays"])?;
    let delays: Vec<Duration> = raw.delays.iter().flatten().map(|delay| delay.0).collect();
    if delays.is_empty() {
        return Err(
            "`backoff: custom` needs a non-empty `delays` list, such as `delays: [1s, 10s, 1m]`"
                .into(),
        );
    }
    Ok(Backoff::Custom(delays))
}

/// The topics a trigger publishes to or reads from, for declaring them.
pub(super) fn topics_of(trigger: &TriggerSettings) -> impl Iterator<Item = &TopicName> {
    std::iter::once(&trigger.topic).chain(&trigger.dead_letter_topic)
}
