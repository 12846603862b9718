//! The connection: opened on first use, opened again (with the topology declared again)
//! after it was lost, one attempt at a time; each call waits at most `reconnect_wait` for it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{FieldTable, LongString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionBuilder, ConnectionProperties, ExchangeKind};
use tokio::time::Instant;
use topiq_adapter::{Error, Result};

use crate::config::RabbitMqConfig;
use crate::confirms::ConfirmingChannel;
use crate::{Shared, unavailable};
use topiq_adapter_kit::redact_url;

/// The first wait after a failed connection attempt; it doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long reopening the publishing channel may take.
const REOPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// One open connection and its publishing channels (publisher confirms on).
pub(crate) struct Session {
    pub(crate) connection: Connection,
    /// Read on every publish (one `Arc` clone); replaced under `reopening` when either of
    /// its channels was closed (a channel-level error, or a solo lane whose confirm never
    /// came).
    publisher: RwLock<Arc<ConfirmingChannel>>,
    reopening: tokio::sync::Mutex<()>,
}

impl Session {
    pub(crate) fn is_open(&self) -> bool {
        self.connection.status().connected()
    }

    /// The publishing channels, if they are open now (nearly always): taken without a wait.
    pub(crate) fn open_publisher_now(&self) -> Option<Arc<ConfirmingChannel>> {
        let channel = Arc::clone(&self.publisher.read().unwrap_or_else(|e| e.into_inner()));
        channel.is_open().then_some(channel)
    }

    /// The publishing channels, both opened again if a channel-level error closed either.
    pub(crate) async fn publisher(&self) -> Result<Arc<ConfirmingChannel>> {
        if let Some(channel) = self.open_publisher_now() {
            return Ok(channel);
        }
        let _reopening = self.reopening.lock().await;
        if let Some(channel) = self.open_publisher_now() {
            return Ok(channel);
        }
        let channel = Arc::new(
            tokio::time::timeout(REOPEN_TIMEOUT, confirming_channel(&self.connection))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Timeout {
                        operation: "open the publishing channel",
                        timeout: REOPEN_TIMEOUT,
                    })
                })?,
        );
        *self.publisher.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&channel);
        Ok(channel)
    }

    /// A fresh channel for declarations, reads and consumers (an error there closes only
    /// it), closed when dropped: a call given up on (its bound ran out while the broker had
    /// already registered a consumer or handed out a message) leaves nothing open behind.
    pub(crate) async fn owned_channel(&self) -> Result<OpenChannel> {
        self.connection
            .create_channel()
            .await
            .map(OpenChannel)
            .map_err(unavailable("open a channel"))
    }
}

/// A channel that is closed when dropped, which makes the broker cancel its consumers and
/// return what they held unsettled. A consumer's is shared (`Arc`) by the consumer and every
/// delivery it handed out, so a dropped subscription stops taking messages (`basic.cancel`)
/// while its running handlers can still settle theirs on it.
pub(crate) struct OpenChannel(Channel);

impl std::ops::Deref for OpenChannel {
    type Target = Channel;

    fn deref(&self) -> &Channel {
        &self.0
    }
}

impl Drop for OpenChannel {
    fn drop(&mut self) {
        let channel = self.0.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { channel.close(200, "done".into()).await });
        }
    }
}

/// The publishing channels: the task's and the solo lane's (a closed one of them makes
/// [`Session::publisher`] open both again; the other closes when the last publish holding
/// it is done).
async fn confirming_channel(connection: &Connection) -> Result<ConfirmingChannel> {
    Ok(ConfirmingChannel::new(
        publishing_channel(connection).await?,
        publishing_channel(connection).await?,
    ))
}

/// A channel with publisher confirms on.
async fn publishing_channel(connection: &Connection) -> Result<Channel> {
    let channel = connection
        .create_channel()
        .await
        .map_err(unavailable("open the publishing channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable("enable publisher confirms"))?;
    Ok(channel)
}

/// A login the broker refused (wrong credentials, or no access to the vhost): trying again
/// cannot help.
fn is_access_refused(err: &lapin::Error) -> bool {
    // 403 ACCESS_REFUSED: the login; 530 NOT_ALLOWED: the vhost (missing, or not the user's).
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(refusal) if matches!(refusal.get_id(), 403 | 530))
}

/// Where and how to connect, resolved from the config once.
pub(crate) struct Target {
    uri: AMQPUri,
    shown: String,
    name: Option<String>,
    tls: Option<topiq_adapter_kit::TlsSettings>,
}

impl Target {
    pub(crate) fn new(config: &RabbitMqConfig) -> std::result::Result<Self, String> {
        let mut uri: AMQPUri = config.url.parse().map_err(|err| {
            format!(
                "url {:?} is not an AMQP URL: {err}",
                redact_url(&config.url)
            )
        })?;
        if let Some(vhost) = &config.vhost {
            uri.vhost.clone_from(vhost);
        }
        // lapin closes a connection after two negotiated heartbeats without a byte, looking
        // every half heartbeat: negotiating 4/5 of `heartbeat` notices a dead link within
        // two of the configured ones.
        let negotiated = (config.heartbeat.as_secs() * 4 / 5).max(1);
        uri.query.heartbeat = Some(u16::try_from(negotiated).unwrap_or(u16::MAX));
        if let (Some(user), Some(password)) = (&config.connection.user, &config.connection.password)
        {
            uri.authority.userinfo.username.clone_from(user);
            password
                .expose()
                .clone_into(&mut uri.authority.userinfo.password);
        }
        let shown = format!(
            "{}:{} (vhost {:?})",
            uri.authority.host, uri.authority.port, uri.vhost
        );
        Ok(Self {
            uri,
            shown,
            name: config.connection.name.clone(),
            tls: config.connection.tls.clone(),
        })
    }

    /// Host, port and vhost, never credentials.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    fn tls_config(&self) -> Result<OwnedTLSConfig> {
        let Some(tls) = &self.tls else {
            return Ok(OwnedTLSConfig::default());
        };
        let read = |path: &std::path::PathBuf, what: &str| {
            std::fs::read(path).map_err(|err| Error::InvalidArgument {
                argument: "tls",
                reason: format!("cannot read the {what} {}: {err}", path.display()),
            })
        };
        let cert_chain = match &tls.ca {
            Some(path) => {
                Some(String::from_utf8_lossy(&read(path, "CA certificate")?).into_owned())
            }
            None => None,
        };
        let identity = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read(cert, "client certificate")?,
                key: read(key, "client key")?,
            }),
            _ => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }

    async fn connect(&self) -> Result<Session> {
        let mut properties = ConnectionProperties::default();
        if let Some(name) = &self.name {
            properties = properties.with_connection_name(LongString::from(name.as_str()));
        }
        let connection = ConnectionBuilder::new()
            .map_err(unavailable("start the client"))?
            .with_uri(self.uri.clone())
            .with_properties(properties)
            .with_tls_config(self.tls_config()?)
            .connect()
            .await
            .map_err(|err| {
                if is_access_refused(&err) {
                    Error::InvalidArgument {
                        argument: "credentials",
                        reason: format!(
                            "RabbitMQ at {} refused the login: check the user and password \
                             (config or URL), that the vhost exists, and the user's permissions \
                             on it",
                            self.shown
                        ),
                    }
                } else {
                    Error::BrokerUnavailable {
                        message: format!("RabbitMQ: cannot connect to {}", self.shown),
                        source: Some(Box::new(err)),
                    }
                }
            })?;
        let publisher = RwLock::new(Arc::new(confirming_channel(&connection).await?));
        Ok(Session {
            connection,
            publisher,
            reopening: tokio::sync::Mutex::new(()),
        })
    }
}

/// The open session, or `None` before the first connect.
pub(crate) type Current = RwLock<Option<Arc<Session>>>;

impl Shared {
    /// The open session; connects (and declares the topology again) if there is none, trying
    /// for up to `reconnect_wait`.
    pub(crate) async fn session(&self) -> Result<Arc<Session>> {
        self.ensure_open()?;
        if let Some(session) = self.current_session() {
            return Ok(session);
        }
        // Boxed: its future is large, and inline it would make every caller's (a publish's
        // among them) that much larger to move, though it is rarely run.
        Box::pin(self.connect_session()).await
    }

    /// [`Shared::session`] when there is no open session: waits for the connecting lock and
    /// connects, trying for up to `reconnect_wait`.
    async fn connect_session(&self) -> Result<Arc<Session>> {
        let deadline = Instant::now() + self.config.reconnect_wait;
        let Ok(_connecting) = tokio::time::timeout_at(deadline, self.connecting.lock()).await
        else {
            return Err(self.unavailable_for_now(None));
        };
        // Whoever held the lock may have connected meanwhile.
        if let Some(session) = self.current_session() {
            return Ok(session);
        }
        let mut backoff = INITIAL_BACKOFF;
        loop {
            self.ensure_open()?;
            let attempt = self.open_session();
            let failure = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(session)) => return self.keep(session).await,
                // Trying again cannot help a refused login.
                Ok(Err(err @ Error::InvalidArgument { .. })) => return Err(err),
                Ok(Err(err)) => err,
                Err(_) => return Err(self.unavailable_for_now(None)),
            };
            if Instant::now() + backoff >= deadline {
                // A declaration the broker keeps refusing (right after a restart a queue may
                // not be ready; a conflicting one never is) is reported as itself.
                return Err(match failure {
                    failure @ Error::Broker { .. } => failure,
                    failure => self.unavailable_for_now(Some(failure)),
                });
            }
            tracing::warn!(broker = %self.target.shown(), error = %failure, "RabbitMQ connection failed; trying again");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A new connection with the whole topology declared on it; closed again when a
    /// declaration fails, so a retry does not leave a connection behind.
    async fn open_session(&self) -> Result<Arc<Session>> {
        let session = Arc::new(self.target.connect().await?);
        if let Err(err) = self.declare_all(&session).await {
            let closing = session.connection.close(200, "declaration failed".into());
            let _ = tokio::time::timeout(REOPEN_TIMEOUT, closing).await;
            return Err(err);
        }
        Ok(session)
    }

    /// Makes `session` the current one, unless `close` ran while it connected: then it must
    /// not outlive the adapter, and is closed.
    async fn keep(&self, session: Arc<Session>) -> Result<Arc<Session>> {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&session));
        if self.closed.is_cancelled() {
            self.current
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let closing = session.connection.close(200, "closed".into());
            let _ = tokio::time::timeout(REOPEN_TIMEOUT, closing).await;
            return Err(Error::Closed);
        }
        Ok(session)
    }

    /// Ok while a connection is open. A lost one is reported at once (readiness probes
    /// must not wait out `reconnect_wait`) and connected again in the background, so an
    /// adapter nothing else uses heals too; before the first connection, connects.
    pub(crate) async fn health(self: &Arc<Self>) -> Result<()> {
        self.ensure_open()?;
        if self.current_session().is_some() {
            return Ok(());
        }
        let lost = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if !lost {
            return self.session().await.map(|_| ());
        }
        // Nobody connecting yet: start it (whoever holds the lock is connecting already).
        if self.connecting.try_lock().is_ok() {
            let shared = Arc::clone(self);
            tokio::spawn(async move { shared.session().await });
        }
        Err(Error::BrokerUnavailable {
            message: format!(
                "the connection to RabbitMQ at {} was lost (connecting again)",
                self.target.shown()
            ),
            source: None,
        })
    }

    fn current_session(&self) -> Option<Arc<Session>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|session| session.is_open())
            .cloned()
    }

    fn unavailable_for_now(&self, cause: Option<Error>) -> Error {
        Error::BrokerUnavailable {
            message: format!(
                "RabbitMQ at {} is not reachable (waited {:?})",
                self.target.shown(),
                self.config.reconnect_wait
            ),
            source: cause.map(|err| Box::new(err) as topiq_adapter::BoxError),
        }
    }

    /// Declares the exchange and everything declared so far on a new session.
    async fn declare_all(&self, session: &Session) -> Result<()> {
        let channel = session.owned_channel().await?;
        channel
            .exchange_declare(
                self.layout.exchange().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(crate::topology::declare_error(self.layout.exchange()))?;
        let queues = self.declared_queues();
        for queue in queues {
            queue.declare(&channel).await?;
        }
        Ok(())
    }
}
