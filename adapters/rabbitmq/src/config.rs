//! The adapter's `config:` map in `config.yaml`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use topiq_adapter_kit::{
    AdapterOptions, ConnectionOptions, OptionsError, deserialize_options, duration, read_options,
    redact_url,
};

/// The kind of queue each trigger gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    /// Replicated, with a delivery count (RabbitMQ's recommendation for durable work queues).
    #[default]
    Quorum,
    /// Single-node classic queues: no delivery count, so a redelivery after a crash or an
    /// expired lease is counted as one attempt more at most.
    Classic,
}

/// `modules::queue::RabbitMQAdapter`'s options.
#[derive(Clone, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// `amqp://` or `amqps://` URL, credentials and vhost included if wanted
    /// (`amqp://user:pass@host:5672/vhost`); the fields below override its parts.
    #[serde(default = "default_url")]
    pub url: String,
    /// The virtual host.
    #[serde(default)]
    pub vhost: Option<String>,
    /// `user`, `password`, `tls` (with an `amqps://` URL), `name` and `prefix` (read from the
    /// same map).
    #[serde(skip)]
    pub connection: ConnectionOptions,
    /// The trigger queues' type.
    #[serde(default)]
    pub queue_type: QueueType,
    /// How long a publish waits for the broker's confirm (and a settlement for lapin) before
    /// it fails with `Timeout`: noticed within a tenth of it (at most a second) after.
    #[serde(
        default = "default_publish_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub publish_timeout: Duration,
    /// How long a call waits for a lost connection to come back before it fails with
    /// `broker_unavailable`.
    #[serde(
        default = "default_reconnect_wait",
        deserialize_with = "duration::deserialize"
    )]
    pub reconnect_wait: Duration,
    /// A connection the broker stops answering is closed and replaced within twice this
    /// (overrides a `heartbeat` in the URL). Whole seconds, at least 1.
    #[serde(
        default = "default_heartbeat",
        deserialize_with = "duration::deserialize"
    )]
    pub heartbeat: Duration,
}

fn default_url() -> String {
    "amqp://127.0.0.1:5672/%2f".to_owned()
}

fn default_publish_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_reconnect_wait() -> Duration {
    Duration::from_secs(5)
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        Self {
            url: default_url(),
            vhost: None,
            connection: ConnectionOptions::default(),
            queue_type: QueueType::default(),
            publish_timeout: default_publish_timeout(),
            reconnect_wait: default_reconnect_wait(),
            heartbeat: default_heartbeat(),
        }
    }
}

impl RabbitMqConfig {
    /// Reads the adapter's `config:` map (absent: every default, RabbitMQ on loopback) and
    /// checks it; the error names the option.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, OptionsError> {
        read_options(value)
    }
}

impl fmt::Debug for RabbitMqConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqConfig")
            .field("url", &redact_url(&self.url))
            .field("vhost", &self.vhost)
            .field("connection", &self.connection)
            .field("queue_type", &self.queue_type)
            .field("publish_timeout", &self.publish_timeout)
            .field("reconnect_wait", &self.reconnect_wait)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

impl AdapterOptions for RabbitMqConfig {
    fn deserialize_own<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::deserialize(deserializer)
    }

    fn connection_mut(&mut self) -> &mut ConnectionOptions {
        &mut self.connection
    }

    /// Checks the options; the error names the option and what is allowed.
    fn check(&self) -> Result<(), String> {
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            return Err(format!(
                "url must start with amqp:// or amqps://, got {:?}",
                redact_url(&self.url)
            ));
        }
        self.connection.validate()?;
        if self.publish_timeout.is_zero() || self.reconnect_wait.is_zero() {
            return Err("publish_timeout and reconnect_wait must be longer than zero".into());
        }
        if self.heartbeat < Duration::from_secs(1) || self.heartbeat.subsec_nanos() != 0 {
            return Err(format!(
                "heartbeat must be whole seconds, at least 1s (AMQP's unit), got {:?}",
                self.heartbeat
            ));
        }
        if self.connection.tls.is_some() && !self.url.starts_with("amqps://") {
            return Err(
                "tls is set but url is amqp://, which connects without TLS: use amqps://".into(),
            );
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for RabbitMqConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_options(deserializer)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use topiq_adapter_kit::TlsSettings;

    #[test]
    fn credentials_never_reach_debug_output() {
        let config = RabbitMqConfig {
            url: "amqp://app:s3cret@broker:5672/prod".into(),
            connection: ConnectionOptions {
                user: Some("app".into()),
                password: Some("hunter2".into()),
                ..ConnectionOptions::default()
            },
            ..RabbitMqConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn bad_options_are_named() {
        let bad = |config: RabbitMqConfig, word: &str| {
            let err = config.validate().unwrap_err();
            assert!(err.to_string().contains(word), "{err}");
        };
        bad(
            RabbitMqConfig {
                url: "http://x".into(),
                ..RabbitMqConfig::default()
            },
            "url",
        );
        bad(
            RabbitMqConfig {
                connection: ConnectionOptions {
                    user: Some("a".into()),
                    ..ConnectionOptions::default()
                },
                ..RabbitMqConfig::default()
            },
            "password",
        );
        bad(
            RabbitMqConfig {
                connection: ConnectionOptions {
                    prefix: "a.b".into(),
                    ..ConnectionOptions::default()
                },
                ..RabbitMqConfig::default()
            },
            "prefix",
        );
        bad(
            RabbitMqConfig {
                connection: ConnectionOptions {
                    tls: Some(TlsSettings::default()),
                    ..ConnectionOptions::default()
                },
                ..RabbitMqConfig::default()
            },
            "amqps://",
        );
    }
}
