//! Adapters by class name, as `config.yaml` names them (`adapter.class`). The broker
//! adapters are compiled in by cargo features (`jetstream`, `rabbitmq`); a config naming one
//! this build lacks gets an error that names the feature.

use std::sync::Arc;

use topiq_adapter::{Capabilities, SharedAdapter};
use topiq_adapter_kit::OptionsError;
use topiq_memory::BuiltinQueueAdapter;

/// An adapter class this build of topiq has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdapterClass {
    /// `modules::queue::BuiltinQueueAdapter`: in-memory, for development and tests.
    Builtin,
    /// `modules::queue::JetStreamAdapter`: NATS JetStream.
    #[cfg(feature = "jetstream")]
    JetStream,
    /// `modules::queue::RabbitMQAdapter`: RabbitMQ.
    #[cfg(feature = "rabbitmq")]
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
        /// Every class this build has.
        known: Vec<&'static str>,
    },
    /// topiq knows the class, but this build was compiled without its cargo feature.
    #[error(
        "the adapter class {given:?} is not in this build; enable topiq's cargo feature `{feature}` (or use the `topiq` binary, which has every adapter)"
    )]
    NotBuilt {
        /// The class as written in the config.
        given: String,
        /// The cargo feature that brings it.
        feature: &'static str,
    },
}

/// Every broker adapter topiq has, with the cargo feature that compiles it in.
const BROKER_FEATURES: &[(&str, &str)] = &[
    ("modules::queue::JetStreamAdapter", "jetstream"),
    ("modules::queue::RabbitMQAdapter", "rabbitmq"),
];

impl AdapterClass {
    /// Every class of this build, in the order they are listed to users.
    pub const ALL: &'static [AdapterClass] = &[
        AdapterClass::Builtin,
        #[cfg(feature = "jetstream")]
        AdapterClass::JetStream,
        #[cfg(feature = "rabbitmq")]
        AdapterClass::RabbitMq,
    ];

    /// The `messaging.system` of OpenTelemetry's conventions for spans on this adapter.
    pub fn messaging_system(self) -> &'static str {
        match self {
            AdapterClass::Builtin => "topiq",
            #[cfg(feature = "jetstream")]
            AdapterClass::JetStream => "nats",
            #[cfg(feature = "rabbitmq")]
            AdapterClass::RabbitMq => "rabbitmq",
        }
    }

    /// The class name as written in `config.yaml`.
    pub fn name(self) -> &'static str {
        match self {
            AdapterClass::Builtin => topiq_memory::CLASS_NAME,
            #[cfg(feature = "jetstream")]
            AdapterClass::JetStream => topiq_jetstream::CLASS_NAME,
            #[cfg(feature = "rabbitmq")]
            AdapterClass::RabbitMq => topiq_rabbitmq::CLASS_NAME,
        }
    }

    /// The class written as `name`; an unknown name lists the known ones, and a class this
    /// build lacks names the feature to enable.
    pub fn from_name(name: &str) -> Result<Self, RegistryError> {
        if let Some(class) = Self::ALL.iter().copied().find(|class| class.name() == name) {
            return Ok(class);
        }
        match BROKER_FEATURES.iter().find(|(class, _)| *class == name) {
            Some((_, feature)) => Err(RegistryError::NotBuilt {
                given: name.to_owned(),
                feature,
            }),
            None => Err(RegistryError::UnknownClass {
                given: name.to_owned(),
                known: Self::ALL.iter().map(|class| class.name()).collect(),
            }),
        }
    }

    /// Builds (and for a broker, connects) an adapter of this class with its `config:`
    /// options, already checked by [`check_options`](Self::check_options).
    pub async fn build(
        self,
        options: &serde_json::Value,
    ) -> Result<SharedAdapter, topiq_adapter::Error> {
        let invalid = |err: OptionsError| topiq_adapter::Error::InvalidArgument {
            argument: "adapter config",
            reason: err.to_string(),
        };
        match self {
            AdapterClass::Builtin => {
                let config = topiq_memory::MemoryConfig::from_value(options).map_err(invalid)?;
                Ok(Arc::new(BuiltinQueueAdapter::with_config(config)))
            }
            #[cfg(feature = "jetstream")]
            AdapterClass::JetStream => {
                let config =
                    topiq_jetstream::JetStreamConfig::from_value(options).map_err(invalid)?;
                Ok(Arc::new(
                    topiq_jetstream::JetStreamAdapter::connect(config).await?,
                ))
            }
            #[cfg(feature = "rabbitmq")]
            AdapterClass::RabbitMq => {
                let config =
                    topiq_rabbitmq::RabbitMqConfig::from_value(options).map_err(invalid)?;
                Ok(Arc::new(
                    topiq_rabbitmq::RabbitMqAdapter::connect(config).await?,
                ))
            }
        }
    }

    /// Checks the adapter's `config:` map; the error says which option is wrong.
    pub fn check_options(self, options: &serde_json::Value) -> Result<(), OptionsError> {
        match self {
            AdapterClass::Builtin => topiq_memory::MemoryConfig::from_value(options).map(|_| ()),
            #[cfg(feature = "jetstream")]
            AdapterClass::JetStream => {
                topiq_jetstream::JetStreamConfig::from_value(options).map(|_| ())
            }
            #[cfg(feature = "rabbitmq")]
            AdapterClass::RabbitMq => {
                topiq_rabbitmq::RabbitMqConfig::from_value(options).map(|_| ())
            }
        }
    }

    /// What adapters of this class can honour, known before connecting (each adapter crate
    /// exports its own).
    pub fn capabilities(self) -> Capabilities {
        match self {
            AdapterClass::Builtin => topiq_memory::CAPABILITIES,
            #[cfg(feature = "jetstream")]
            AdapterClass::JetStream => topiq_jetstream::CAPABILITIES,
            #[cfg(feature = "rabbitmq")]
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

    #[cfg(feature = "rabbitmq")]
    #[test]
    fn rabbitmq_options_are_checked_by_name() {
        let class = AdapterClass::from_name("modules::queue::RabbitMQAdapter").unwrap();
        let err = class
            .check_options(&serde_json::json!({"url": "amqp://127.0.0.1", "queue_typ": "quorum"}))
            .unwrap_err();
        assert!(err.to_string().contains("queue_typ"), "{err}");
        class.check_options(&serde_json::Value::Null).unwrap();
    }

    #[cfg(not(feature = "jetstream"))]
    #[test]
    fn a_class_left_out_of_the_build_names_its_feature() {
        let err = AdapterClass::from_name("modules::queue::JetStreamAdapter").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("cargo feature `jetstream`"), "{message}");
    }

    #[cfg(feature = "jetstream")]
    #[test]
    fn jetstream_options_are_checked_by_name() {
        let err = AdapterClass::JetStream
            .check_options(&serde_json::json!({"url": "nats://127.0.0.1:4222", "replica": 3}))
            .unwrap_err();
        assert!(err.to_string().contains("replica"), "{err}");
    }
}
