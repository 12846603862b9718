//! Connecting to the server(s) of a config: authentication, TLS, heartbeat, and the
//! adapter's shared state.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::ConnectOptions;
use async_nats::jetstream;
use tokio::sync::Mutex;
use topiq_adapter::{Error, Result};
use topiq_adapter_kit::{AdapterOptions, Declared, redact_url};

use crate::config::{JetStreamConfig, UrlCredentials};
use crate::layout::Layout;
use crate::{JetStreamAdapter, Scheduler, Shared, scheduler};

impl JetStreamAdapter {
    /// Connects to the server(s) of `config`.
    pub async fn connect(config: JetStreamConfig) -> Result<Self> {
        config.validate().map_err(|err| Error::InvalidArgument {
            argument: "config",
            reason: err.to_string(),
        })?;
        let (servers, url_credentials) = config.servers();
        let options = connect_options(&config, url_credentials).await?;
        let printable: Vec<String> = servers.iter().map(|url| redact_url(url)).collect();
        let client =
            options
                .connect(servers.as_slice())
                .await
                .map_err(|err| Error::BrokerUnavailable {
                    message: format!("cannot connect to {}", printable.join(", ")),
                    source: Some(Box::new(err)),
                })?;
        let max_payload = client.server_info().max_payload;
        // The context's `timeout` bounds every publish acknowledgement: `try_publish` relies
        // on it and arms no timer of its own while the deadline is further away.
        let js = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .ack_timeout(config.publish_timeout)
            .build(client.clone());
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                js,
                layout: Layout {
                    prefix: config.connection.prefix.clone(),
                },
                config,
                ledgers: RwLock::new(HashMap::new()),
                declared: Declared::default(),
                closed: topiq_adapter_kit::Signal::new(),
                scheduler: Mutex::new(Scheduler::default()),
                lost_consumers: RwLock::new(Vec::new()),
                releases: tokio_util::task::TaskTracker::new(),
                forwards: Arc::new(tokio::sync::Semaphore::new(scheduler::FORWARDS)),
                max_payload,
            }),
        })
    }
}

/// The client's options: heartbeat, name, credentials (the config's over the URL's) and TLS.
async fn connect_options(
    config: &JetStreamConfig,
    url_credentials: Option<UrlCredentials>,
) -> Result<ConnectOptions> {
    // async-nats reconnects after two unanswered pings: pinging every half heartbeat
    // notices a connection that stopped answering within about two heartbeats.
    // Every subject topiq publishes to is made of names checked when they were configured
    // (topic names: ASCII letters, digits, `_`, `-` between dots; trigger names and the
    // prefix: the same without dots; idempotency keys hex-encoded), is an inbox or reply
    // subject async-nats or the server made, or is a claim's target read back from the
    // ledger and checked there (idempotency.rs): async-nats need not scan each one for
    // whitespace again.
    let mut options = ConnectOptions::new()
        .ping_interval((config.heartbeat / 2).max(Duration::from_millis(100)))
        .skip_subject_validation(true);
    let configured = config.connection.user.is_some() || config.token.is_some();
    match url_credentials {
        Some(UrlCredentials::UserPassword(user, password)) if !configured => {
            options = options.user_and_password(user, password);
        }
        Some(UrlCredentials::Token(token)) if !configured => {
            options = options.token(token);
        }
        _ => {}
    }
    if let Some(name) = &config.connection.name {
        options = options.name(name);
    }
    if let (Some(user), Some(password)) = (&config.connection.user, &config.connection.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(seed) = &config.nkey {
        options = options.nkey(seed.expose().to_owned());
    }
    if let Some(path) = &config.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|err| Error::InvalidArgument {
                argument: "creds_file",
                reason: format!("cannot read {}: {err}", path.display()),
            })?;
    }
    if let Some(tls) = &config.connection.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok(options)
}
