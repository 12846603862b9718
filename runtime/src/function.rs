//! Functions: the application's named handlers that triggers call.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;
use topiq_adapter::{Envelope, TriggerName};

use crate::config::{ConfigError, TriggerSettings};
use crate::runs::{RunCancel, Runs};

/// A message as a handler receives it: the [`Envelope`] (`id`, `topic`, `data`, `attempt`,
/// `max_attempts`, `enqueued_at`, trace context, idempotency key) and the trigger that runs.
#[derive(Clone)]
pub struct Message {
    envelope: Envelope,
    trigger: TriggerName,
    cancel: Option<RunCancel>,
    runs: Option<Arc<Runs>>,
}

impl Message {
    pub(crate) fn new(envelope: Envelope, trigger: TriggerName) -> Self {
        Self {
            envelope,
            trigger,
            cancel: None,
            runs: None,
        }
    }

    /// The message of a run that is recorded in `runs` and cancelled through `cancel`.
    pub(crate) fn recorded(mut self, runs: Option<Arc<Runs>>, cancel: Option<RunCancel>) -> Self {
        self.runs = runs;
        self.cancel = cancel;
        self
    }

    /// Keeps `progress` on this message's run (`queue.run_get` shows the last one). It is
    /// written with the next batch of run events: the handler does not wait for the store
    /// (not even while it is down). Nothing happens for a trigger that records no runs.
    pub async fn progress(&self, progress: Value) {
        let Some(runs) = &self.runs else {
            return;
        };
        let change = topiq_runs::Change::Progress(progress);
        let event = crate::runs::event(&self.trigger, &self.envelope, change);
        runs.recorder().record([event]).await;
    }

    /// True once the run was cancelled (`queue.run_cancel`). The runtime stops awaiting the
    /// handler then; work the handler spawned can watch this, or [`cancelled`](Self::cancelled),
    /// to stop too.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(RunCancel::is_cancelled)
    }

    /// Completes when the run is cancelled (never, for a trigger that records no runs).
    pub async fn cancelled(&self) {
        match &self.cancel {
            Some(cancel) => cancel.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// The trigger whose function is running.
    pub fn trigger(&self) -> &TriggerName {
        &self.trigger
    }

    /// The payload.
    pub fn data(&self) -> &Value {
        &self.envelope.data
    }

    /// The payload as `T`; a payload of the wrong shape is a non-retryable error (retrying
    /// cannot fix it).
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        T::deserialize(self.data()).map_err(|err| {
            HandlerError::non_retryable(format!("the message data has the wrong shape: {err}"))
        })
    }

    /// The whole envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The schedule that enqueued this message and the tick it fired for (read from its
    /// idempotency key, `schedule:<name>:<tick>`); `None` for a message enqueued otherwise.
    pub fn schedule_tick(&self) -> Option<(&str, jiff::Timestamp)> {
        let key = self.envelope().idempotency_key.as_deref()?;
        crate::schedules::parse_tick_key(key)
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("envelope", &self.envelope)
            .field("trigger", &self.trigger)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Deref for Message {
    type Target = Envelope;

    fn deref(&self) -> &Envelope {
        &self.envelope
    }
}

/// A handler's failure, and what the runtime should do next.
///
/// Any `std::error::Error` converts into a retryable `HandlerError`, so `?` works in
/// handlers; use [`HandlerError::non_retryable`] for failures a retry cannot fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerError {
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl HandlerError {
    /// A failure worth retrying (a timeout, a 503): retried after the trigger's backoff.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }

    /// A failure no retry can fix (bad input): the message goes straight to the DLQ.
    pub fn non_retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    /// Retries after `delay` instead of the trigger's backoff (such as an HTTP `Retry-After`).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// The error message, as stored in the DLQ record.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the runtime retries it.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The requested retry delay, if any.
    pub fn requested_delay(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(err: E) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        HandlerError::retryable(message)
    }
}

/// A function that handles one message at a time.
pub trait Handler: Send + Sync + 'static {
    /// Handles `message`; `Ok` acknowledges it, with the result its run keeps, if any.
    fn call(&self, message: Message) -> BoxFuture<'static, Result<Option<Value>, HandlerError>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn call(&self, message: Message) -> BoxFuture<'static, Result<Option<Value>, HandlerError>> {
        let call = self(message);
        Box::pin(async move { call.await.map(|()| None) })
    }
}

/// A handler whose success returns a JSON result, which its run keeps (see
/// [`Functions::register_returning`]).
pub struct Returning<F>(pub F);

impl<F, Fut> Handler for Returning<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
{
    fn call(&self, message: Message) -> BoxFuture<'static, Result<Option<Value>, HandlerError>> {
        let call = (self.0)(message);
        Box::pin(async move { call.await.map(Some) })
    }
}

/// A function that handles up to `batch_size` messages per call and reports an outcome per
/// message, in the order it received them.
pub trait BatchHandler: Send + Sync + 'static {
    /// Handles `messages`; returns one result per message.
    fn call(&self, messages: Vec<Message>) -> BoxFuture<'static, Vec<Result<(), HandlerError>>>;
}

impl<F, Fut> BatchHandler for F
where
    F: Fn(Vec<Message>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Result<(), HandlerError>>> + Send + 'static,
{
    fn call(&self, messages: Vec<Message>) -> BoxFuture<'static, Vec<Result<(), HandlerError>>> {
        Box::pin(self(messages))
    }
}

/// A registered function.
#[derive(Clone)]
pub(crate) enum Function {
    Single(Arc<dyn Handler>),
    Batch(Arc<dyn BatchHandler>),
}

/// The application's functions by name, looked up by triggers at startup.
#[derive(Clone, Default)]
pub struct Functions {
    functions: HashMap<String, Function>,
    duplicates: Vec<String>,
}

/// The built-in function that logs each message and succeeds.
pub const BUILTIN_LOG: &str = "builtin.log";

/// The built-in function that always fails (retryable), to watch retries and the DLQ.
pub const BUILTIN_FAIL: &str = "builtin.fail";

impl Functions {
    /// No functions.
    pub fn new() -> Self {
        Self::default()
    }

    /// `builtin.log` and `builtin.fail`.
    pub fn with_builtins() -> Self {
        let mut functions = Self::new();
        functions
            .register(BUILTIN_LOG, |message: Message| async move {
                tracing::info!(
                    trigger = %message.trigger(),
                    topic = %message.topic,
                    id = %message.id,
                    attempt = message.attempt,
                    data = %message.data(),
                    "builtin.log"
                );
                Ok(())
            })
            .register(BUILTIN_FAIL, |message: Message| async move {
                Err(HandlerError::retryable(format!(
                    "builtin.fail fails every message (attempt {} of {})",
                    message.attempt, message.max_attempts
                )))
            });
        functions
    }

    /// Registers `handler` as `name`. Registering a name twice is reported when the module
    /// starts.
    pub fn register(&mut self, name: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.insert(name.into(), Function::Single(Arc::new(handler)))
    }

    /// Registers `handler` as `name`; the JSON value it returns on success is kept on the
    /// message's run (`result`).
    pub fn register_returning<F, Fut>(&mut self, name: impl Into<String>, handler: F) -> &mut Self
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
    {
        self.register(name, Returning(handler))
    }

    /// Registers a batch function as `name`, for triggers with `batch_size`.
    pub fn register_batch(
        &mut self,
        name: impl Into<String>,
        handler: impl BatchHandler,
    ) -> &mut Self {
        self.insert(name.into(), Function::Batch(Arc::new(handler)))
    }

    fn insert(&mut self, name: String, function: Function) -> &mut Self {
        if self.functions.insert(name.clone(), function).is_some() {
            self.duplicates.push(name);
        }
        self
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Function> {
        self.functions.get(name)
    }

    /// Whether `name` is registered, and how many messages its calls take.
    pub fn kind(&self, name: &str) -> Option<FunctionKind> {
        self.functions.get(name).map(|function| match function {
            Function::Single(_) => FunctionKind::Single,
            Function::Batch(_) => FunctionKind::Batch,
        })
    }

    pub(crate) fn duplicates(&self) -> &[String] {
        &self.duplicates
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.functions.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// How many messages a function's calls take, as far as a check of the config knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FunctionKind {
    /// One message a call ([`Functions::register`]).
    Single,
    /// A batch a call ([`Functions::register_batch`]).
    Batch,
    /// Registered by the application, shape unknown (`topiq check --function NAME`).
    Either,
}

/// Checks that `trigger` can call a function of `kind` (`None`: no such function; `unknown`
/// then says where functions come from). One check for the module and `topiq check`.
pub fn check_trigger_function(
    trigger: &TriggerSettings,
    kind: Option<FunctionKind>,
    unknown: impl FnOnce() -> String,
) -> Result<(), ConfigError> {
    let problem = match (kind, trigger.batch_size > 1) {
        (None, _) => format!("unknown function {:?}; {}", trigger.function, unknown()),
        (Some(FunctionKind::Single), true) => format!(
            "the trigger has batch_size {} but {:?} handles one message at a time; register it with Functions::register_batch or remove batch_size",
            trigger.batch_size, trigger.function
        ),
        (Some(FunctionKind::Batch), false) => format!(
            "{:?} is a batch function; give the trigger a batch_size above 1",
            trigger.function
        ),
        _ => return Ok(()),
    };
    Err(ConfigError::invalid(
        trigger.function_location.clone(),
        format!("triggers.{}.function", trigger.name),
        problem,
    ))
}

impl fmt::Debug for Functions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Functions")
            .field("names", &self.names())
            .finish()
    }
}
