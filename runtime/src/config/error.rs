//! Config errors: each names the file, the line and the key, and says how to fix it.

use std::fmt;
use std::path::PathBuf;

/// Where in which file a config error is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigLocation {
    /// The file, as given on the command line or to [`Config::load`](super::Config::load).
    pub file: String,
    /// 1-based line; 0 when unknown.
    pub line: u64,
    /// 1-based column; 0 when unknown.
    pub column: u64,
}

impl ConfigLocation {
    /// The start of `file`, for a mistake that has no line of its own (a missing section).
    pub fn start_of(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            line: 0,
            column: 0,
        }
    }
}

impl fmt::Display for ConfigLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// A config that cannot be used; nothing was started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the config file: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// A key is missing, unknown, of the wrong type or out of range, or a reference (function,
    /// topic, class) does not resolve.
    #[error("{location}: {key}: {message}{}", snippet_suffix(snippet))]
    Invalid {
        /// Where.
        location: ConfigLocation,
        /// The key path, such as `triggers.send-email.config.concurrency`.
        key: String,
        /// What is wrong and how to fix it. Never contains the value of an environment
        /// variable.
        message: String,
        /// The lines around the error, with a marker, when available.
        snippet: Option<String>,
    },
}

fn snippet_suffix(snippet: &Option<String>) -> String {
    match snippet {
        Some(snippet) => format!("\n{snippet}"),
        None => String::new(),
    }
}

impl ConfigError {
    /// An error at `location` for `key`.
    pub fn invalid(
        location: ConfigLocation,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            location,
            key: key.into(),
            message: message.into(),
            snippet: None,
        }
    }

    /// The location, when the error has one.
    pub fn location(&self) -> Option<&ConfigLocation> {
        match self {
            ConfigError::Invalid { location, .. } => Some(location),
            ConfigError::Read { .. } => None,
        }
    }

    /// The key path, when the error has one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } => None,
        }
    }
}
