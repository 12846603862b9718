//! Adapters by class name, as `config.yaml` names them (`adapter.class`).

use std::sync::Arc;

use topiq_adapter::{Capabilities, DynAdapter, SharedAdapter};
use topiq_jetstream::{JetStreamAdapter, JetStreamConfig};
use topiq_memory::BuiltinQueueAdapter;
use topiq_rabbitmq::{RabbitMqAdapter, RabbitMqConfig};

/// An adapter class topiq knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdapterClass {
    /// `modules::queue::BuiltinQueueAdapter`: in-memory, for development and tests.
    Builtin,
    /// `modules::queue::JetStreamAdapter`: NATS JetStream.
    JetStream,
    /// `modules::queue::RabbitMQAdapter`: RabbitMQ.
    RabbitMq,
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
    pub const ALL: &'static [AdapterClass] = &[
        AdapterClass::Builtin,
        AdapterClass::JetStream,
        AdapterClass::RabbitMq,
    ];

    /// The `messaging.system` of OpenTelemetry's conventions for spans on this adapter.
    pub fn messaging_system(self) -> &'static str {
        match self {
            AdapterClass::Builtin => "topiq",
            AdapterClass::JetStream => "nats",
            AdapterClass::RabbitMq => "rabbitmq",
        }
    }

    /// The class name as written in `config.yaml`.
    pub fn name(self) -> &'static str {
        match self {
            AdapterClass::Builtin => topiq_memory::CLASS_NAME,
            AdapterClass::JetStream => topiq_jetstream::CLASS_NAME,
            AdapterClass::RabbitMq => topiq_rabbitmq::CLASS_NAME,
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

    /// Builds (and for a broker, connects) an adapter of this class with its `config:`
    /// options, already checked by [`check_options`](Self::check_options).
    pub async fn build(
        self,
        options: &serde_json::Value,
    ) -> Result<SharedAdapter, topiq_adapter::Error> {
        match self {
            AdapterClass::Builtin => Ok(Arc::new(BuiltinQueueAdapter::new())),
            AdapterClass::JetStream => {
                let config = JetStreamConfig::from_value(options).map_err(|reason| {
                    topiq_adapter::Error::InvalidArgument {
                        argument: "adapter config",
                        reason,
                    }
                })?;
                Ok(Arc::new(JetStreamAdapter::connect(config).await?))
            }
            AdapterClass::RabbitMq => {
                let config = RabbitMqConfig::from_value(options).map_err(|reason| {
                    topiq_adapter::Error::InvalidArgument {
                        argument: "adapter config",
                        reason,
                    }
                })?;
                Ok(Arc::new(RabbitMqAdapter::connect(config).await?))
            }
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
            AdapterClass::JetStream => JetStreamConfig::from_value(options).map(|_| ()),
            AdapterClass::RabbitMq => RabbitMqConfig::from_value(options).map(|_| ()),
        }
    }

    /// What adapters of this class can honour.
    pub fn capabilities(self) -> Capabilities {
        match self {
            AdapterClass::Builtin => DynAdapter::capabilities(&BuiltinQueueAdapter::new()),
            // Known before connecting; the server's own `max_payload` is checked when topics
            // are declared.
            AdapterClass::JetStream => Capabilities {
                adapter: "JetStreamAdapter",
                durable: true,
                delayed_delivery: true,
                max_delay: None,
                retention: true,
                max_message_bytes: 1024 * 1024 - 4096,
            },
            AdapterClass::RabbitMq => topiq_rabbitmq::CAPABILITIES,
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
        AdapterClass::Builtin
            .build(&serde_json::Value::Null)
            .await
            .unwrap()
            .health()
            .await
            .unwrap();
    }

    #[test]
    fn rabbitmq_options_are_checked_by_name() {
        let class = AdapterClass::from_name("modules::queue::RabbitMQAdapter").unwrap();
        let err = class
            .check_options(&serde_json::json!({"url": "amqp://127.0.0.1", "queue_typ": "quorum"}))
            .unwrap_err();
        assert!(err.contains("queue_typ"), "{err}");
        class.check_options(&serde_json::Value::Null).unwrap();
    }

    #[test]
    fn jetstream_options_are_checked_by_name() {
        let err = AdapterClass::JetStream
            .check_options(&serde_json::json!({"url": "nats://127.0.0.1:4222", "replica": 3}))
            .unwrap_err();
        assert!(err.contains("replica"), "{err}");
    }
}
