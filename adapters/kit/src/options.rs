//! Why an adapter's `config:` map was refused.

/// Why an adapter's `config:` map was refused; the message names the option.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// An option is unknown, missing or of the wrong type.
    #[error("{0}")]
    Unreadable(#[from] serde_json::Error),
    /// The options do not fit together, or a value is out of its range.
    #[error("{0}")]
    Invalid(String),
}
