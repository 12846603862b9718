//! Span names (`publish orders`), made once per topic and kept for the life of the process:
//! an OpenTelemetry span's name is a `Cow<'static, str>`, and a name made for each span is an
//! allocation and a copy on the way in and a free on the exporter's side. The module makes
//! spans only for declared topics (an enqueue to any other is refused first) and for the
//! topics its triggers subscribe to, so the names are as many as the distinct topic names the
//! process's configurations declare, kept across `QueueModule`s (a few dozen bytes each).

use std::sync::{OnceLock, PoisonError, RwLock};

use topiq_adapter::TopicName;

/// One operation's span names, by topic.
struct Names {
    operation: &'static str,
    by_topic: OnceLock<RwLock<foldhash::HashMap<Box<str>, &'static str>>>,
}

/// The names of publish spans.
static PUBLISH: Names = Names::new("publish");

/// The names of process spans.
static PROCESS: Names = Names::new("process");

impl Names {
    const fn new(operation: &'static str) -> Self {
        Self {
            operation,
            by_topic: OnceLock::new(),
        }
    }

    /// `<operation> <topic>`, the name OpenTelemetry's messaging conventions give.
    fn of(&self, topic: &TopicName) -> &'static str {
        let by_topic = self.by_topic.get_or_init(RwLock::default);
        let known = by_topic
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic.as_str())
            .copied();
        if let Some(name) = known {
            return name;
        }
        let mut by_topic = by_topic.write().unwrap_or_else(PoisonError::into_inner);
        by_topic
            .entry(topic.as_str().into())
            .or_insert_with(|| Box::leak(format!("{} {topic}", self.operation).into_boxed_str()))
    }
}

/// The name of a publish span to `topic`.
pub(super) fn publish(topic: &TopicName) -> &'static str {
    PUBLISH.of(topic)
}

/// The name of a process span of `topic`.
pub(super) fn process(topic: &TopicName) -> &'static str {
    PROCESS.of(topic)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_topics_name_is_made_once() {
        let topic = TopicName::new("names.once").unwrap();
        let first = publish(&topic);
        assert_eq!(first, "publish names.once");
        assert!(std::ptr::eq(first, publish(&topic)));
        assert_eq!(process(&topic), "process names.once");
    }
}
