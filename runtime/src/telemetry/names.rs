//! Span names (`publish orders`), made once per topic and kept for the life of the process:
//! an OpenTelemetry span's name is a `Cow<'static, str>`, and a name made for each span is an
//! allocation and a copy on the way in and a free on the exporter's side. The module makes
//! spans only for declared topics (an enqueue to any other is refused first) and for the
//! topics its triggers subscribe to, so the names are as many as the distinct topic names the
//! process's configurations declare, kept across `QueueModule`s (a few dozen bytes each).

use std::cell::Cell;
use std::sync::{OnceLock, PoisonError, RwLock};
use std::thread::LocalKey;

use topiq_adapter::TopicName;

/// One operation's span names, by topic.
struct Names {
    operation: &'static str,
    by_topic: OnceLock<RwLock<foldhash::HashMap<Box<str>, &'static str>>>,
    /// The name this thread was given last: a thread mostly handles one topic's messages in
    /// a row, and a name found here takes no lock and no hash.
    last: &'static LocalKey<Cell<Option<&'static str>>>,
}

thread_local! {
    static LAST_PUBLISH: Cell<Option<&'static str>> = const { Cell::new(None) };
    static LAST_PROCESS: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// The names of publish spans.
static PUBLISH: Names = Names::new("publish", &LAST_PUBLISH);

/// The names of process spans.
static PROCESS: Names = Names::new("process", &LAST_PROCESS);

impl Names {
    const fn new(
        operation: &'static str,
        last: &'static LocalKey<Cell<Option<&'static str>>>,
    ) -> Self {
        Self {
            operation,
            by_topic: OnceLock::new(),
            last,
        }
    }

    /// `<operation> <topic>`, the name OpenTelemetry's messaging conventions give.
    fn of(&self, topic: &TopicName) -> &'static str {
        let last = self.last.get();
        // A name ends with its topic, after the operation and a space.
        if let Some(name) = last
            && name.get(self.operation.len() + 1..) == Some(topic.as_str())
        {
            return name;
        }
        let name = self.kept(topic);
        self.last.set(Some(name));
        name
    }

    /// The name kept for `topic` (made the first time).
    fn kept(&self, topic: &TopicName) -> &'static str {
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

    #[test]
    fn each_topic_gets_its_own_name_however_they_alternate() {
        let (a, b) = (
            TopicName::new("names.a").unwrap(),
            TopicName::new("names.ab").unwrap(),
        );
        for _ in 0..2 {
            assert_eq!(publish(&a), "publish names.a");
            assert_eq!(publish(&b), "publish names.ab");
            assert_eq!(process(&b), "process names.ab");
            assert_eq!(process(&a), "process names.a");
        }
    }
}
