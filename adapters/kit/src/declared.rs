//! What this process declared on its broker: topics and trigger subscriptions.

use std::sync::{PoisonError, RwLock};

use rustc_hash::FxHashMap;
use topiq_adapter::{Error, Result, SubscriptionKey, SubscriptionSpec, TopicName, TriggerName};

/// The topics (each with what the adapter keeps of it, `T`) and subscriptions this process
/// declared; calls on anything else fail with `UnknownTopic` or `UnknownSubscription`.
pub struct Declared<T> {
    /// Looked up on every publish: a fast hash (names are the config's, not an attacker's).
    topics: RwLock<FxHashMap<TopicName, T>>,
    subscriptions: RwLock<FxHashMap<SubscriptionKey, SubscriptionSpec>>,
}

impl<T> Default for Declared<T> {
    fn default() -> Self {
        Self {
            topics: RwLock::default(),
            subscriptions: RwLock::default(),
        }
    }
}

impl<T: Clone> Declared<T> {
    /// The declared topic `name`.
    pub fn topic(&self, name: &TopicName) -> Result<T> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic {
                topic: name.clone(),
            })
    }

    /// Records (or replaces) the topic `name`.
    pub fn add_topic(&self, name: TopicName, topic: T) {
        self.topics
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, topic);
    }

    /// The declared subscription `key`.
    pub fn subscription(&self, key: &SubscriptionKey) -> Result<SubscriptionSpec> {
        self.subscriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
            .ok_or_else(|| Error::UnknownSubscription { key: key.clone() })
    }

    /// Records (or replaces) a subscription.
    pub fn add_subscription(&self, spec: SubscriptionSpec) {
        self.subscriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(spec.key.clone(), spec);
    }

    /// The triggers of `topic` this process declared.
    pub fn triggers_of(&self, topic: &TopicName) -> Vec<TriggerName> {
        self.subscriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .filter(|key| &key.topic == topic)
            .map(|key| key.trigger.clone())
            .collect()
    }

    /// Whether this process declared a trigger of `topic` (on the publish path: allocates
    /// nothing).
    pub fn has_triggers(&self, topic: &TopicName) -> bool {
        self.subscriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .any(|key| &key.topic == topic)
    }

    /// Checks the target of a DLQ call: the topic, and the trigger when one is named.
    pub fn check_dlq(&self, topic: &TopicName, trigger: Option<&TriggerName>) -> Result<()> {
        self.topic(topic)?;
        if let Some(trigger) = trigger {
            self.subscription(&SubscriptionKey::new(topic.clone(), trigger.clone()))?;
        }
        Ok(())
    }
}
