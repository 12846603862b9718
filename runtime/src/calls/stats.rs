//! `queue.stats`: per trigger, the broker's counts and this process's outcomes.

use serde::Serialize;
use topiq_adapter::{TopicName, TriggerName};

use super::{CallError, topic};
use crate::module::QueueModule;
use crate::stats::{HandlerTimes, TriggerCounts};

/// Per-trigger figures of `queue.stats`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TriggerStats {
    /// The topic.
    pub topic: TopicName,
    /// The trigger.
    pub trigger: TriggerName,
    /// Messages waiting (delayed ones included), from the broker.
    pub waiting: u64,
    /// Of `waiting`, those whose delay or retry backoff has not run out yet.
    pub delayed: u64,
    /// Messages delivered and not settled, from the broker.
    pub in_flight: u64,
    /// Records in the trigger's DLQ, from the broker.
    pub dlq: u64,
    /// True while the trigger is paused (`queue.trigger_pause`).
    pub paused: bool,
    /// This process's handler outcomes since it started.
    #[serde(flatten)]
    pub counts: TriggerCounts,
}

/// One trigger's outcomes in this process since it started, read without asking the broker:
/// what a history of throughput and handler time is sampled from.
#[derive(Clone, Debug, PartialEq)]
pub struct TriggerSample {
    /// The topic.
    pub topic: TopicName,
    /// The trigger.
    pub trigger: TriggerName,
    /// The outcome counts.
    pub counts: TriggerCounts,
    /// The handler calls per time bucket.
    pub handler_times: HandlerTimes,
}

impl QueueModule {
    /// Every trigger's outcomes in this process so far (no broker call): cheap enough to
    /// sample every few seconds.
    pub fn trigger_samples(&self) -> Vec<TriggerSample> {
        self.triggers()
            .iter()
            .map(|trigger| TriggerSample {
                topic: trigger.key.topic.clone(),
                trigger: trigger.key.trigger.clone(),
                counts: trigger.counters.snapshot(),
                handler_times: trigger.counters.handler_times(),
            })
            .collect()
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
                delayed: broker.delayed,
                in_flight: broker.in_flight,
                dlq: broker.dead_lettered,
                paused: self.runs().pauses().is_paused(&trigger.key.trigger),
                counts: trigger.counters.snapshot(),
            });
        }
        Ok(rows)
    }
}
