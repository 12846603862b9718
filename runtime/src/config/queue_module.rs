//! The `modules:` section: the one queue module, its adapter and its topics.

use std::collections::BTreeMap;

use serde_saphyr::Spanned;
use topiq_adapter::{Capabilities, DEFAULT_IDEMPOTENCY_WINDOW, Error, TopicName, TopicSpec};

use super::raw::{RawAdapter, RawModule, RawTopic};
use super::source::spanned_at;
use super::{AdapterSettings, ConfigError, ConfigLocation, QUEUE_MODULE_CLASS};
use crate::registry::AdapterClass;

/// The one `modules:` entry, of class [`QUEUE_MODULE_CLASS`].
pub(super) fn the_queue_module(
    modules: Option<(String, Vec<RawModule>)>,
) -> Result<(String, RawModule), ConfigError> {
    let Some((file, modules)) = modules else {
        return Err(ConfigError::invalid(
            ConfigLocation::start_of("config"),
            "modules",
            format!(
                "missing: add `modules:` with one `- class: {QUEUE_MODULE_CLASS}` entry and its adapter"
            ),
        ));
    };
    let mut queue_modules = modules.into_iter();
    let module = match (queue_modules.next(), queue_modules.next()) {
        (Some(module), None) => module,
        (None, _) => {
            return Err(ConfigError::invalid(
                ConfigLocation::start_of(&file),
                "modules",
                format!("is empty: add one `- class: {QUEUE_MODULE_CLASS}` entry"),
            ));
        }
        (Some(_), Some(second)) => {
            return Err(ConfigError::invalid(
                spanned_at(&file, &second.class),
                "modules[1].class",
                "topiq runs one queue module; remove the second entry",
            ));
        }
    };
    if module.class.value != QUEUE_MODULE_CLASS {
        return Err(ConfigError::invalid(
            spanned_at(&file, &module.class),
            "modules[0].class",
            format!(
                "unknown module class {:?}; topiq runs {QUEUE_MODULE_CLASS}",
                module.class.value
            ),
        ));
    }
    Ok((file, module))
}

/// The adapter's class and its checked `config:` options.
pub(super) fn adapter_settings(
    file: &str,
    adapter_config: RawAdapter,
) -> Result<AdapterSettings, ConfigError> {
    let class = AdapterClass::from_name(&adapter_config.class.value).map_err(|err| {
        ConfigError::invalid(
            spanned_at(file, &adapter_config.class),
            "modules[0].config.adapter.class",
            err.to_string(),
        )
    })?;
    let (options, location) = match adapter_config.config {
        Some(spanned) => (spanned.value.clone(), spanned_at(file, &spanned)),
        None => (
            serde_json::Value::Null,
            spanned_at(file, &adapter_config.class),
        ),
    };
    if let Some(path) = quoted_reference(&options, "modules[0].config.adapter.config") {
        return Err(ConfigError::invalid(
            location,
            path,
            "`${...}` is expanded only in unquoted values; remove the quotes around it",
        ));
    }
    class.check_options(&options).map_err(|err| {
        ConfigError::invalid(
            location.clone(),
            "modules[0].config.adapter.config",
            err.to_string(),
        )
    })?;
    Ok(AdapterSettings {
        class,
        options,
        location,
    })
}

/// The declared topics, each checked against what the adapter can honour.
pub(super) fn topics(
    file: &str,
    raw_topics: BTreeMap<TopicName, RawTopic>,
    capabilities: &Capabilities,
) -> Result<BTreeMap<TopicName, TopicSpec>, ConfigError> {
    let mut topics = BTreeMap::new();
    for (name, raw) in raw_topics {
        let spec = topic(file, name.clone(), raw, capabilities)?;
        topics.insert(name, spec);
    }
    Ok(topics)
}

/// A topic, checked by the one rule every adapter applies ([`TopicSpec::validate`]).
fn topic(
    file: &str,
    name: TopicName,
    raw: RawTopic,
    capabilities: &Capabilities,
) -> Result<TopicSpec, ConfigError> {
    let key = format!("modules[0].config.topics.{name}");
    let mut spec = TopicSpec::new(name);
    let limit_at = raw.max_message_bytes.as_ref().map_or_else(
        || ConfigLocation::start_of(file),
        |limit| spanned_at(file, limit),
    );
    if let Some(limit) = raw.max_message_bytes {
        spec.max_message_bytes = limit.value;
    }
    spec.idempotency_window = raw
        .idempotency_window
        .map_or(DEFAULT_IDEMPOTENCY_WINDOW, |window| window.0);
    spec.retention = raw.retention.map(|retention| retention.0);
    spec.dlq_retention = raw.dlq_retention.map(|retention| retention.0);
    if let Some(levels) = &raw.priority_levels {
        spec.lanes = priority_levels(file, &key, levels, capabilities)?;
    }
    spec.validate(capabilities).map_err(|err| match err {
        Error::InvalidArgument { argument, reason } if argument == "max_message_bytes" => {
            ConfigError::invalid(limit_at, format!("{key}.{argument}"), reason)
        }
        Error::InvalidArgument { argument, reason } => ConfigError::invalid(
            ConfigLocation::start_of(file),
            format!("{key}.{argument}"),
            reason,
        ),
        Error::Unsupported {
            adapter,
            option,
            hint,
        } => ConfigError::invalid(
            ConfigLocation::start_of(file),
            key,
            format!("{adapter} cannot honour {option}; {hint}"),
        ),
        other => ConfigError::invalid(ConfigLocation::start_of(file), key, other.to_string()),
    })?;
    Ok(spec)
}

/// The most priority levels a topic takes (a lane each).
pub(super) const MAX_PRIORITY_LEVELS: u32 = 10;

/// A topic's `priority_levels` (its lanes): 1 to [`MAX_PRIORITY_LEVELS`], and no more than the adapter
/// splits a topic into.
pub(super) fn priority_levels(
    file: &str,
    key: &str,
    levels: &Spanned<u32>,
    capabilities: &Capabilities,
) -> Result<u32, ConfigError> {
    let error = |message: String| {
        ConfigError::invalid(
            spanned_at(file, levels),
            format!("{key}.priority_levels"),
            message,
        )
    };
    if levels.value == 0 || levels.value > MAX_PRIORITY_LEVELS {
        return Err(error(format!(
            "must be 1 to {MAX_PRIORITY_LEVELS} (priorities 0 to priority_levels - 1, higher first), got {}",
            levels.value
        )));
    }
    if levels.value > capabilities.max_lanes {
        return Err(error(format!(
            "{} honours at most {} priority level(s); lower priority_levels or use an adapter that has more",
            capabilities.adapter, capabilities.max_lanes
        )));
    }
    Ok(levels.value)
}

/// The key path of the first string in `value` that still holds a `${...}` reference (it was
/// quoted, so it was not expanded).
fn quoted_reference(value: &serde_json::Value, path: &str) -> Option<String> {
    match value {
        serde_json::Value::String(text) if text.contains("${") => Some(path.to_owned()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| quoted_reference(item, &format!("{path}[{index}]"))),
        serde_json::Value::Object(fields) => fields
            .iter()
            .find_map(|(key, item)| quoted_reference(item, &format!("{path}.{key}"))),
        _ => None,
    }
}
