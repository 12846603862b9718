//! The adapter's `config:` map in `config.yaml`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use topiq_adapter_kit::{
    AdapterOptions, ConnectionOptions, OptionsError, Secret, deserialize_options, duration,
    read_options, redact_url,
};

/// Where the stream data is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// On disk (JetStream's default): survives a server restart.
    #[default]
    File,
    /// In memory: lost when the server restarts.
    Memory,
}

/// `modules::queue::JetStreamAdapter`'s options.
#[derive(Clone, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct JetStreamConfig {
    /// `user`, `password`, `tls`, `name` and `prefix` (read from the same map).
    #[serde(skip)]
    pub connection: ConnectionOptions,
    /// One server, such as `nats://127.0.0.1:4222`.
    #[serde(default)]
    pub url: Option<String>,
    /// Several servers of one cluster.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Token authentication.
    #[serde(default)]
    pub token: Option<Secret>,
    /// A `.creds` file (JWT and NKey seed) for decentralized authentication.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// An NKey seed (`SU...`) for NKey authentication.
    #[serde(default)]
    pub nkey: Option<Secret>,
    /// Where streams keep their data (every topic's, unless `streams` says otherwise).
    #[serde(default)]
    pub storage: Storage,
    /// Stream replicas (1, or 3 on a cluster).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// The most bytes a topic's stream holds; a publish to a full stream is refused (never
    /// is an older message dropped). Unlimited when absent.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Per topic: stream settings that differ from the ones above.
    #[serde(default)]
    pub streams: BTreeMap<String, StreamSettings>,
    /// How long a publish waits for the server's acknowledgement before it is sent again.
    #[serde(
        default = "default_publish_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub publish_timeout: Duration,
    /// A connection that stops answering is replaced within about twice this: the client
    /// pings the server every half of it and gives up after two unanswered pings.
    #[serde(
        default = "default_heartbeat",
        deserialize_with = "duration::deserialize"
    )]
    pub heartbeat: Duration,
}

/// One topic's stream settings; each absent one is the adapter's.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// Where the topic's streams keep their data.
    #[serde(default)]
    pub storage: Option<Storage>,
    /// The topic's stream replicas.
    #[serde(default)]
    pub replicas: Option<usize>,
    /// The most bytes the topic's stream holds.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// The stream settings of one topic, with the adapter's defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ResolvedStream {
    pub(crate) storage: Storage,
    pub(crate) replicas: usize,
    pub(crate) max_bytes: Option<u64>,
}

fn check_replicas(field: &str, replicas: usize) -> Result<(), String> {
    if replicas == 0 || replicas > 5 {
        return Err(format!("{field} must be 1 to 5, got {replicas}"));
    }
    Ok(())
}

fn check_max_bytes(field: &str, max_bytes: Option<u64>) -> Result<(), String> {
    match max_bytes {
        Some(bytes) if bytes == 0 || i64::try_from(bytes).is_err() => Err(format!(
            "{field} must be 1 to {}, got {bytes}; leave it out for no limit",
            i64::MAX
        )),
        _ => Ok(()),
    }
}

fn default_replicas() -> usize {
    1
}

fn default_publish_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            url: None,
            urls: Vec::new(),
            connection: ConnectionOptions::default(),
            token: None,
            creds_file: None,
            nkey: None,
            storage: Storage::File,
            replicas: 1,
            max_bytes: None,
            streams: BTreeMap::new(),
            publish_timeout: default_publish_timeout(),
            heartbeat: default_heartbeat(),
        }
    }
}

impl fmt::Debug for JetStreamConfig {
    /// Credentials are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field(
                "urls",
                &self
                    .urls
                    .iter()
                    .map(|url| redact_url(url))
                    .collect::<Vec<_>>(),
            )
            .field("connection", &self.connection)
            .field("token", &self.token)
            .field("creds_file", &self.creds_file)
            .field("nkey", &self.nkey)
            .field("storage", &self.storage)
            .field("replicas", &self.replicas)
            .field("max_bytes", &self.max_bytes)
            .field("streams", &self.streams)
            .field("publish_timeout", &self.publish_timeout)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

/// Credentials written in a server URL.
pub(crate) enum UrlCredentials {
    UserPassword(String, String),
    Token(String),
}

impl JetStreamConfig {
    /// Reads the options from the adapter's `config:` value.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, OptionsError> {
        if value.is_null() {
            return Err(OptionsError::Invalid(
                "needs at least `url`, such as `url: nats://127.0.0.1:4222`".into(),
            ));
        }
        read_options(value)
    }

    /// The adapter's own stream settings (for streams of no one topic, and the defaults).
    pub(crate) fn default_stream_settings(&self) -> ResolvedStream {
        ResolvedStream {
            storage: self.storage,
            replicas: self.replicas,
            max_bytes: self.max_bytes,
        }
    }

    /// The stream settings of `topic`: its entry in `streams` over the adapter's.
    pub(crate) fn stream_settings(&self, topic: &str) -> ResolvedStream {
        let defaults = self.default_stream_settings();
        let Some(own) = self.streams.get(topic) else {
            return defaults;
        };
        ResolvedStream {
            storage: own.storage.unwrap_or(defaults.storage),
            replicas: own.replicas.unwrap_or(defaults.replicas),
            max_bytes: own.max_bytes.or(defaults.max_bytes),
        }
    }

    /// The server URLs without credentials, and the credentials found in them, if any.
    pub(crate) fn servers(&self) -> (Vec<String>, Option<UrlCredentials>) {
        let urls = match &self.url {
            Some(url) => vec![url.clone()],
            None => self.urls.clone(),
        };
        let mut credentials = None;
        let stripped = urls
            .into_iter()
            .map(|url| match url.split_once("://") {
                Some((scheme, rest)) => match rest.rsplit_once('@') {
                    Some((userinfo, host)) => {
                        credentials.get_or_insert_with(|| match userinfo.split_once(':') {
                            Some((user, password)) => {
                                UrlCredentials::UserPassword(user.to_owned(), password.to_owned())
                            }
                            None => UrlCredentials::Token(userinfo.to_owned()),
                        });
                        format!("{scheme}://{host}")
                    }
                    None => url,
                },
                None => url,
            })
            .collect();
        (stripped, credentials)
    }
}

impl AdapterOptions for JetStreamConfig {
    fn deserialize_own<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::deserialize(deserializer)
    }

    fn connection_mut(&mut self) -> &mut ConnectionOptions {
        &mut self.connection
    }

    /// Checks the options against each other.
    fn check(&self) -> Result<(), String> {
        if self.url.is_none() && self.urls.is_empty() {
            return Err("give `url` (one server) or `urls` (a cluster)".into());
        }
        if self.url.is_some() && !self.urls.is_empty() {
            return Err("give either `url` or `urls`, not both".into());
        }
        self.connection.validate()?;
        if self.publish_timeout.is_zero() {
            // Zero would leave no time for the server's acknowledgement: every publish would
            // fail (after being sent, so possibly stored).
            return Err("publish_timeout must be longer than zero".into());
        }
        let methods = [
            self.connection.user.is_some(),
            self.token.is_some(),
            self.creds_file.is_some(),
            self.nkey.is_some(),
        ];
        if methods.into_iter().filter(|given| *given).count() > 1 {
            return Err(
                "give one way to authenticate: `user`/`password`, `token`, `creds_file` or `nkey`"
                    .into(),
            );
        }
        check_replicas("replicas", self.replicas)?;
        check_max_bytes("max_bytes", self.max_bytes)?;
        for (topic, settings) in &self.streams {
            topiq_adapter::TopicName::new(topic.as_str())
                .map_err(|err| format!("streams: {topic:?} is not a topic name: {err}"))?;
            if let Some(replicas) = settings.replicas {
                check_replicas(&format!("streams.{topic}.replicas"), replicas)?;
            }
            check_max_bytes(&format!("streams.{topic}.max_bytes"), settings.max_bytes)?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for JetStreamConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_options(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_never_reach_debug_output() {
        let config = JetStreamConfig::from_value(&json!({
            "url": "nats://app:hunter2@127.0.0.1:4222",
            "token": null,
        }))
        .unwrap();
        let with_password = JetStreamConfig {
            connection: ConnectionOptions {
                user: Some("app".into()),
                password: Some("s3cret".into()),
                ..ConnectionOptions::default()
            },
            ..config
        };
        let printed = format!("{with_password:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cret"),
            "{printed}"
        );
    }

    #[test]
    fn urls_are_shown_without_their_credentials() {
        // One redaction for every URL topiq shows: `scheme://host:port`.
        assert_eq!(redact_url("nats://app:p@ss@host:4222"), "nats://host:4222");
        assert_eq!(
            redact_url("nats://s3cr3t-token@host:4222"),
            "nats://host:4222"
        );
        assert_eq!(redact_url("nats://host:4222"), "nats://host:4222");
    }

    #[test]
    fn bad_options_are_named() {
        let err =
            JetStreamConfig::from_value(&json!({"url": "nats://x", "prefx": "a"})).unwrap_err();
        assert!(err.to_string().contains("prefx"), "{err}");
        let err = JetStreamConfig::from_value(&json!({})).unwrap_err();
        assert!(err.to_string().contains("url"), "{err}");
        let err =
            JetStreamConfig::from_value(&json!({"url": "nats://x", "prefix": "a.b"})).unwrap_err();
        assert!(err.to_string().contains("prefix"), "{err}");
        let err = JetStreamConfig::from_value(&json!({"url": "nats://x", "publish_timeout": "0s"}))
            .unwrap_err();
        assert!(err.to_string().contains("publish_timeout"), "{err}");
    }

    #[test]
    fn stream_settings_are_checked_and_resolved_per_topic() {
        for (streams, named) in [
            (json!({"not a topic!": {}}), "not a topic!"),
            (json!({"a.b": {"replicas": 9}}), "streams.a.b.replicas"),
            (json!({"a.b": {"max_bytes": 0}}), "streams.a.b.max_bytes"),
            (json!({"a.b": {"max_byte": 1}}), "max_byte"),
        ] {
            let err = JetStreamConfig::from_value(&json!({"url": "nats://x", "streams": streams}))
                .unwrap_err();
            assert!(err.to_string().contains(named), "{err}");
        }
        let config = JetStreamConfig::from_value(&json!({
            "url": "nats://x",
            "replicas": 3,
            "max_bytes": 1000,
            "streams": {"a.b": {"storage": "memory", "max_bytes": 10}}
        }))
        .unwrap();
        let own = config.stream_settings("a.b");
        assert_eq!(
            (own.storage, own.replicas, own.max_bytes),
            (Storage::Memory, 3, Some(10))
        );
        let other = config.stream_settings("c");
        assert_eq!(
            (other.storage, other.replicas, other.max_bytes),
            (Storage::File, 3, Some(1000))
        );
    }
}
