//! Adapters by class name, as `config.yaml` names them (`adapter.class`).

use std::sync::Arc;

use topiq_adapter::{Capabilities, DynAdapter, SharedAdapter};
use topiq_memory::BuiltinQueueAdapter;

/// An adapter class topiq knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdapterClass {
    /// `modules::queue::BuiltinQueueAdapter`: in-memory, for development and tests.
    Builtin,
}

/// Why an adapter could not be chosen or built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The class name is not one topiq knows.
    #[error("unknown adapter class {given:?}; known classes: {}", known.join(", "))]
    UnknownClass {
        /// The class as written in the config.
        given: String,
        /// Every class topiq knows.
        known: Vec<&'static str>,
    },
}

impl AdapterClass {
    /// Every known class, in the order they are listed to users.
    pub const ALL: &'static [AdapterClass] = &[AdapterClass::Builtin];

    /// The class name as written in `config.yaml`.
    pub fn name(self) -> &'static str {
        match self {
            AdapterClass::Builtin => topiq_memory::CLASS_NAME,
        }
    }

    /// The class written as `name`; an unknown name lists the known ones.
    pub fn from_name(name: &str) -> Result<Self, RegistryError> {
        Self::ALL
            .iter()
            .copied()
            .find(|class| class.name() == name)
            .ok_or_else(|| RegistryError::UnknownClass {
                given: name.to_owned(),
                known: Self::ALL.iter().map(|class| class.name()).collect(),
            })
    }

    /// Builds an adapter of this class.
    pub fn build(self) -> SharedAdapter {
        match self {
            AdapterClass::Builtin => Arc::new(BuiltinQueueAdapter::new()),
        }
    }

    /// Checks the adapter's `config:` map; the error says which option is wrong.
    pub fn check_options(self, options: &serde_json::Value) -> Result<(), String> {
        match self {
            AdapterClass::Builtin => match options {
                serde_json::Value::Null => Ok(()),
                serde_json::Value::Object(map) if map.is_empty() => Ok(()),
                serde_json::Value::Object(map) => Err(format!(
                    "{} takes no options, got {}; write `config: {{}}`",
                    self.name(),
                    map.keys()
                        .map(|key| format!("`{key}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                _ => Err("must be a map of options, such as `config: {}`".into()),
            },
        }
    }

    /// What adapters of this class can honour.
    pub fn capabilities(self) -> Capabilities {
        match self {
            AdapterClass::Builtin => DynAdapter::capabilities(&BuiltinQueueAdapter::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_class_is_found_by_its_config_name() {
        let class = AdapterClass::from_name("modules::queue::BuiltinQueueAdapter").unwrap();
        assert_eq!(class, AdapterClass::Builtin);
        assert!(!class.capabilities().durable);
    }

    #[test]
    fn an_unknown_class_lists_the_known_ones() {
        let err = AdapterClass::from_name("modules::queue::KafkaAdapter").unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("\"modules::queue::KafkaAdapter\""),
            "{message}"
        );
        assert!(
            message.contains("modules::queue::BuiltinQueueAdapter"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_built_adapter_answers_health() {
        AdapterClass::Builtin.build().health().await.unwrap();
    }
}
