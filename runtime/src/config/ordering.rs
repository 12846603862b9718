//! Per-key order across the config: the ordered triggers of a topic share one key, the topic
//! is split into that many partitions (its lanes), and priority levels are not for it.

use std::collections::BTreeMap;

use serde_saphyr::Spanned;
use topiq_adapter::{Capabilities, MAX_LANES, TopicName, TopicSpec};

use super::raw::RawTopic;
use super::source::spanned_at;
use super::{ConfigError, ConfigLocation, TriggerSettings};
use crate::ordering::{DEFAULT_PARTITIONS, TopicOrdering};

/// The `partitions` written under `topics:`.
pub(super) fn partitions_of(
    raw_topics: &BTreeMap<TopicName, RawTopic>,
) -> BTreeMap<TopicName, Spanned<u32>> {
    raw_topics
        .iter()
        .filter_map(|(name, raw)| Some((name.clone(), raw.partitions.clone()?)))
        .collect()
}

/// The per-key order of each topic with ordered triggers; sets those topics' lanes to their
/// partitions. `file` is the modules' file (where `partitions` is written).
pub(super) fn topic_orderings(
    file: &str,
    partitions: BTreeMap<TopicName, Spanned<u32>>,
    triggers: &[TriggerSettings],
    topics: &mut BTreeMap<TopicName, TopicSpec>,
    capabilities: &Capabilities,
) -> Result<BTreeMap<TopicName, TopicOrdering>, ConfigError> {
    let mut orderings: BTreeMap<TopicName, TopicOrdering> = BTreeMap::new();
    for trigger in triggers {
        let Some(key) = &trigger.ordering_key else {
            continue;
        };
        if let Some(existing) = orderings.get(&trigger.topic) {
            if &existing.key != key {
                return Err(trigger_error(
                    file,
                    trigger,
                    format!(
                        "differs from `{}`, the ordering_key of another trigger on {}: a topic's ordered triggers share its partitions, so they share one key",
                        existing.key.source(),
                        trigger.topic
                    ),
                ));
            }
            continue;
        }
        if topics
            .get(&trigger.topic)
            .is_some_and(|spec| spec.lanes > 1)
        {
            return Err(trigger_error(
                file,
                trigger,
                format!(
                    "topic {} has priority_levels: a higher priority would overtake its key's earlier messages; use per-key order or priority on a topic, not both",
                    trigger.topic
                ),
            ));
        }
        let count = match partitions.get(&trigger.topic) {
            Some(count) => partition_count(file, &trigger.topic, count, capabilities)?,
            None => DEFAULT_PARTITIONS.min(capabilities.max_lanes),
        };
        let ordering = TopicOrdering {
            key: key.clone(),
            partitions: count,
        };
        orderings.insert(trigger.topic.clone(), ordering);
    }
    if let Some((topic, count)) = partitions
        .iter()
        .find(|(topic, _)| !orderings.contains_key(*topic))
    {
        return Err(ConfigError::invalid(
            spanned_at(file, count),
            format!("modules[0].config.topics.{topic}.partitions"),
            format!(
                "is for topics with ordered triggers, and no trigger on {topic} has an ordering_key; remove it or add one"
            ),
        ));
    }
    for (topic, ordering) in &orderings {
        if let Some(spec) = topics.get_mut(topic) {
            spec.lanes = ordering.partitions;
        }
    }
    Ok(orderings)
}

/// An error at `trigger`'s `ordering_key`.
fn trigger_error(file: &str, trigger: &TriggerSettings, message: String) -> ConfigError {
    let at = trigger
        .ordering_key_location
        .clone()
        .unwrap_or_else(|| ConfigLocation::start_of(file));
    let field = format!("triggers.{}.config.ordering_key", trigger.name);
    ConfigError::invalid(at, field, message)
}

/// A topic's `partitions`: 1 to [`MAX_LANES`], and no more than the adapter's lanes.
fn partition_count(
    file: &str,
    topic: &TopicName,
    count: &Spanned<u32>,
    capabilities: &Capabilities,
) -> Result<u32, ConfigError> {
    let limit = MAX_LANES.min(capabilities.max_lanes);
    if (1..=limit).contains(&count.value) {
        return Ok(count.value);
    }
    Err(ConfigError::invalid(
        spanned_at(file, count),
        format!("modules[0].config.topics.{topic}.partitions"),
        format!(
            "must be 1 to {limit} on {} (each partition runs one message at a time), got {}",
            capabilities.adapter, count.value
        ),
    ))
}
