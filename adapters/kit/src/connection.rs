//! The options every broker adapter's `config:` map has, and reading a map into them and
//! the adapter's own.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::{OptionsError, Secret, TlsSettings};

/// The longest name prefix: the broker names built from it must stay within their limits.
const MAX_PREFIX: usize = 32;

/// What every broker adapter's `config:` map holds beside its own options: who connects,
/// over what, under which name, and the prefix of every name topiq creates on the broker.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionOptions {
    /// User name, with `password`.
    #[serde(default)]
    pub user: Option<String>,
    /// Password, with `user`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS to the broker.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// The connection's name, shown by the broker's monitoring.
    #[serde(default)]
    pub name: Option<String>,
    /// Prefix of every name topiq creates on the broker (streams and subjects, exchanges and
    /// queues), so several applications can share one: 1 to 32 letters, digits, `_` and `-`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self {
            user: None,
            password: None,
            tls: None,
            name: None,
            prefix: default_prefix(),
        }
    }
}

fn default_prefix() -> String {
    "topiq".to_owned()
}

impl ConnectionOptions {
    /// The keys of these options in a `config:` map.
    pub const KEYS: [&str; 5] = ["user", "password", "tls", "name", "prefix"];

    /// Checks the options against each other; the error names them.
    pub fn validate(&self) -> Result<(), String> {
        if self.user.is_some() != self.password.is_some() {
            return Err("`user` and `password` go together: give both or neither".into());
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        let allowed = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-';
        if self.prefix.is_empty()
            || self.prefix.len() > MAX_PREFIX
            || !self.prefix.bytes().all(allowed)
        {
            return Err(format!(
                "prefix must be 1 to {MAX_PREFIX} letters, digits, `_` or `-`, got {:?}",
                self.prefix
            ));
        }
        Ok(())
    }
}

/// An adapter's options: its own, read by serde (a derive with `#[serde(remote = "Self")]`,
/// so the adapter's `Deserialize` can be [`deserialize_options`]), and the shared
/// [`ConnectionOptions`] from the same map.
pub trait AdapterOptions: Sized {
    /// Reads the adapter's own options; every [`ConnectionOptions::KEYS`] is taken out first.
    fn deserialize_own<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>;

    /// Where the connection options go.
    fn connection_mut(&mut self) -> &mut ConnectionOptions;

    /// Checks the options against each other; the error names the option.
    fn check(&self) -> Result<(), String>;

    /// [`check`](Self::check) as an [`OptionsError`].
    fn validate(&self) -> Result<(), OptionsError> {
        self.check().map_err(OptionsError::Invalid)
    }
}

/// Reads an adapter's `config:` map (absent: an empty one) and checks it; the error names the
/// option.
pub fn read_options<T: AdapterOptions>(value: &serde_json::Value) -> Result<T, OptionsError> {
    let options: T = match value {
        serde_json::Value::Null => split(serde_json::Map::new())?,
        serde_json::Value::Object(map) => split(map.clone())?,
        other => {
            return Err(OptionsError::Invalid(format!(
                "the adapter's config must be a map of options, got {other}"
            )));
        }
    };
    options.validate()?;
    Ok(options)
}

/// Reads an adapter's options with any serde deserializer; nothing is checked.
pub fn deserialize_options<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: AdapterOptions,
{
    let map = serde_json::Map::deserialize(deserializer)?;
    split(map).map_err(serde::de::Error::custom)
}

/// The [`ConnectionOptions::KEYS`] of `own` into [`ConnectionOptions`], the rest into `T`.
fn split<T: AdapterOptions>(mut own: serde_json::Map<String, Value>) -> Result<T, OptionsError> {
    let shared: serde_json::Map<_, _> = ConnectionOptions::KEYS
        .iter()
        .filter_map(|key| own.remove_entry(*key))
        .collect();
    let connection = serde_json::from_value(shared.into())?;
    let mut options = T::deserialize_own(Value::Object(own)).map_err(|err| {
        let message = err.to_string();
        if message.starts_with("unknown field") {
            OptionsError::Invalid(format!(
                "{message}, or one of the connection options `user`, `password`, `tls`, \
                 `name`, `prefix`"
            ))
        } else {
            OptionsError::Unreadable(err)
        }
    })?;
    *options.connection_mut() = connection;
    Ok(options)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(remote = "Self", deny_unknown_fields)]
    struct Own {
        #[serde(default)]
        url: Option<String>,
        #[serde(skip)]
        connection: ConnectionOptions,
    }

    impl AdapterOptions for Own {
        fn deserialize_own<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            Self::deserialize(deserializer)
        }
        fn connection_mut(&mut self) -> &mut ConnectionOptions {
            &mut self.connection
        }
        fn check(&self) -> Result<(), String> {
            self.connection.validate()
        }
    }

    impl<'de> Deserialize<'de> for Own {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserialize_options(deserializer)
        }
    }

    #[test]
    fn the_shared_keys_and_the_adapters_own_are_read_apart() {
        let map = json!({"url": "nats://x", "user": "app", "password": "pw", "prefix": "p"});
        for own in [
            read_options::<Own>(&map).unwrap(),
            serde_json::from_value(map.clone()).unwrap(),
        ] {
            assert_eq!(own.url.as_deref(), Some("nats://x"));
            assert_eq!(own.connection.user.as_deref(), Some("app"));
            assert_eq!(own.connection.prefix, "p");
        }
        let own = read_options::<Own>(&Value::Null).unwrap();
        assert_eq!((own.connection.prefix.as_str(), own.url), ("topiq", None));
    }

    #[test]
    fn an_unknown_key_is_named_with_every_key_that_would_do() {
        let err = read_options::<Own>(&json!({"prefx": "p"})).unwrap_err();
        assert!(read_options::<Own>(&json!({"prefix": "a.b"})).is_err());
        let shown = err.to_string();
        assert!(
            shown.contains("prefx") && shown.contains("`url`"),
            "{shown}"
        );
        assert!(shown.contains("`prefix`"), "{shown}");
    }

    #[test]
    fn bad_connection_options_are_named() {
        let bad = |options: ConnectionOptions, word: &str| {
            let err = options.validate().unwrap_err();
            assert!(err.contains(word), "{err}");
        };
        let user_alone = ConnectionOptions {
            user: Some("a".into()),
            ..ConnectionOptions::default()
        };
        bad(user_alone, "password");
        for prefix in ["", "a.b", &"x".repeat(33)] {
            let prefix = ConnectionOptions {
                prefix: prefix.into(),
                ..ConnectionOptions::default()
            };
            bad(prefix, "prefix");
        }
    }
}
