//! TLS to a broker.

use std::path::PathBuf;

use serde::Deserialize;

/// TLS options of a broker connection.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// CA certificate(s) (PEM) to trust, besides the system's.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), with `key`, for mutual TLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Client key (PKCS#8 PEM), with `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl TlsSettings {
    /// Checks the options against each other; the error names them.
    pub fn validate(&self) -> Result<(), String> {
        if self.cert.is_some() != self.key.is_some() {
            return Err("tls.cert and tls.key go together: give both or neither".into());
        }
        Ok(())
    }
}
