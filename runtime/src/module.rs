//! The queue module: a validated config, its adapter and functions, started.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use topiq_adapter::{
    NewMessage, PublishReceipt, SharedAdapter, SubscriptionKey, SubscriptionSpec, TopicName,
    TopicSpec, TriggerName,
};

use crate::config::{Config, ConfigError, ConfigLocation, TriggerSettings};
use crate::function::{Function, Functions, check_trigger_function};
use crate::metrics::Metrics;
use crate::runs::{Runs, reconcile};
use crate::schedules;
use crate::stats::TriggerCounters;
use crate::telemetry;
use crate::trigger::{LaneOrder, Lifecycle, Trigger};

/// How often the broker's counts are read for exported gauges.
const BROKER_COUNTS_EVERY: Duration = Duration::from_secs(15);

/// How long a read of the broker's counts for the metrics may take.
const BROKER_COUNTS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the module could not start; nothing was left half-started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The config is invalid (including a trigger naming an unregistered function).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The runs store cannot be opened.
    #[error("cannot open the runs store: {0}")]
    Runs(#[source] topiq_runs::StoreError),
    /// The broker refused to create a topic or a subscription, or could not be reached.
    #[error("cannot set up {what} on the broker: {source}")]
    Broker {
        /// The topic or subscription.
        what: String,
        /// The adapter's error.
        #[source]
        source: topiq_adapter::Error,
    },
}

/// Why the service run beside the module ([`QueueModule::run_beside`]) ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError<E> {
    /// It returned an error.
    #[error(transparent)]
    Failed(E),
    /// Its task panicked.
    #[error("the service beside the module failed: {0}")]
    Panicked(#[source] tokio::task::JoinError),
}

/// The queue module: enqueue and DLQ calls, and the triggers once [`QueueModule::start_workers`]
/// runs them. Cheap to clone.
#[derive(Clone)]
pub struct QueueModule {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    adapter: SharedAdapter,
    topics: BTreeMap<TopicName, TopicSpec>,
    triggers: Vec<Arc<Trigger>>,
    metrics: Metrics,
    runs: Arc<Runs>,
    /// Per topic, its triggers that record runs.
    recording: BTreeMap<TopicName, Vec<TriggerName>>,
    /// Stops the runs writer, once the triggers stopped.
    stop_runs: CancellationToken,
    runs_writer: Mutex<Option<JoinHandle<()>>>,
}

impl QueueModule {
    /// Checks the config against `functions`, connects the adapter, and declares every topic
    /// and trigger subscription. No trigger runs until [`start_workers`](Self::start_workers).
    pub async fn new(config: Config, functions: Functions) -> Result<Self, StartError> {
        resolve_functions(&config, &functions)?;
        let adapter = config
            .adapter
            .class
            .build(&config.adapter.options)
            .await
            .map_err(|source| StartError::Broker {
                what: format!("the adapter {}", config.adapter.class.name()),
                source,
            })?;
        Self::new_on(config, functions, adapter).await
    }

    /// [`new`](Self::new) on an adapter built already, such as another module's (two
    /// modules of one process sharing the in-memory adapter behave as two instances on one
    /// broker). Closing either module closes the adapter.
    pub async fn new_on(
        config: Config,
        functions: Functions,
        adapter: SharedAdapter,
    ) -> Result<Self, StartError> {
        let resolved = resolve_functions(&config, &functions)?;
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        for spec in config.topics.values() {
            adapter
                .declare_topic(spec.clone())
                .await
                .map_err(|source| StartError::Broker {
                    what: format!("topic {}", spec.name),
                    source,
                })?;
        }
        let runs = Runs::open(config.runs.clone())
            .await
            .map_err(StartError::Runs)?;
        schedules::declare_schedules(runs.store(), &config.schedules)
            .await
            .map_err(StartError::Runs)?;
        let runs = Arc::new(runs);
        let mut metrics = Metrics::new(config.telemetry.otlp.is_some());
        metrics.declare_topics(config.topics.keys());
        metrics.register_runs(runs.recorder().series());
        let mut triggers = Vec::with_capacity(resolved.len());
        let mut recording: BTreeMap<TopicName, Vec<TriggerName>> = BTreeMap::new();
        for (settings, function) in resolved {
            let records = settings.record_runs.then(|| Arc::clone(&runs));
            if records.is_some() {
                let on_topic = recording.entry(settings.topic.clone()).or_default();
                on_topic.push(settings.name.clone());
            }
            let mut trigger =
                declare_trigger(&config, &adapter, (&metrics, &runs), settings, function).await?;
            trigger.runs = records;
            triggers.push(Arc::new(trigger));
        }
        let stop_runs = CancellationToken::new();
        let writer = spawn_runs_writer(&config, &adapter, &runs, &recording, &stop_runs);
        Ok(Self {
            inner: Arc::new(Inner {
                topics: config.topics.clone(),
                config,
                adapter,
                triggers,
                metrics,
                runs,
                recording,
                stop_runs,
                runs_writer: Mutex::new(Some(writer)),
            }),
        })
    }

    pub(crate) fn runs(&self) -> &Runs {
        &self.inner.runs
    }

    /// The `Enqueued` events of a message just published on `topic`: one per trigger of the
    /// topic that records runs.
    /// (An iterator, not a list: the in-memory store takes them as they come, with no list
    /// allocated for each publish.)
    pub(crate) fn enqueued_events<'a>(
        &'a self,
        topic: &TopicName,
        receipt: &'a PublishReceipt,
        origin: &'a topiq_runs::Origin,
    ) -> impl Iterator<Item = topiq_runs::RunEvent> + Send + 'a {
        let triggers = match self.inner.recording.get(topic) {
            Some(triggers) if !receipt.duplicate => triggers.as_slice(),
            _ => &[],
        };
        let at = origin.enqueued_at;
        triggers.iter().map(move |trigger| topiq_runs::RunEvent {
            key: topiq_runs::RunKey::new(receipt.message_id.clone(), trigger.clone()),
            at,
            change: topiq_runs::Change::Enqueued(origin.clone()),
        })
    }

    /// What a message about to be published on `topic` tells of its runs' beginning; `None`
    /// when no trigger of the topic records runs.
    pub(crate) fn origin_of(
        &self,
        topic: &TopicName,
        message: &NewMessage,
    ) -> Option<topiq_runs::Origin> {
        self.inner
            .recording
            .contains_key(topic)
            .then(|| topiq_runs::Origin {
                topic: topic.clone(),
                data: Arc::clone(&message.data),
                enqueued_at: topiq_adapter::Timestamp::now(),
                run_at: message.deliver_at,
                replay_of: None,
                idempotency_key: message.idempotency_key.clone(),
            })
    }

    /// The config it runs.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The adapter, for calls the module does not wrap.
    pub fn adapter(&self) -> &SharedAdapter {
        &self.inner.adapter
    }

    pub(crate) fn topic(&self, name: &TopicName) -> Option<&TopicSpec> {
        self.inner.topics.get(name)
    }

    /// The declared topic called `name`, if any.
    pub(crate) fn declared_topic(&self, name: &str) -> Option<&TopicName> {
        self.inner.topics.get_key_value(name).map(|(name, _)| name)
    }

    /// `message` in its key's partition when `topic` is in per-key order (every publish
    /// path goes through here: enqueue, schedules, replays); unchanged otherwise.
    pub(crate) fn keyed(&self, topic: &TopicName, message: NewMessage) -> NewMessage {
        match self.ordering(topic) {
            Some(ordering) => {
                let key = message.idempotency_key.as_deref();
                let lane = ordering.lane_of(topic, &message.data, key);
                message.lane(lane)
            }
            None => message,
        }
    }

    /// The per-key order of `topic`, when it has ordered triggers.
    pub(crate) fn ordering(&self, topic: &TopicName) -> Option<&crate::ordering::TopicOrdering> {
        self.inner.config.ordering.get(topic)
    }

    pub(crate) fn triggers(&self) -> &[Arc<Trigger>] {
        &self.inner.triggers
    }

    /// Publishes `message` to `topic` (declared in the config) and returns once the broker
    /// accepted it.
    pub async fn publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<PublishReceipt, topiq_adapter::Error> {
        if self.topic(topic).is_none() {
            return Err(topiq_adapter::Error::UnknownTopic {
                topic: topic.clone(),
            });
        }
        let span = telemetry::publish_span(self.messaging_system(), topic, 1, &message.trace);
        let origin = self.origin_of(topic, &message);
        let mut message = self.keyed(topic, message);
        message.trace = telemetry::publish_context(&span, std::mem::take(&mut message.trace));
        let publishing = self.inner.adapter.publish(topic, message);
        let published = telemetry::in_span(span, publishing, telemetry::record_published).await;
        self.inner.metrics.published(topic, 1, published.is_ok());
        if let (Ok(receipt), Some(origin)) = (&published, &origin) {
            let events = self.enqueued_events(topic, receipt, origin);
            self.inner.runs.recorder().record(events).await;
        }
        published
    }

    /// The module's metrics as OpenMetrics text (what `GET /metrics` serves), with the
    /// broker's counts (waiting, in flight, DLQ) read now.
    ///
    /// When the broker does not answer within 5 s, the counters are still served,
    /// `topiq_broker_up` says 0 and the broker gauges keep their last values.
    pub async fn metrics_text(&self) -> String {
        self.refresh_broker_counts().await;
        self.inner.metrics.encode().unwrap_or_default()
    }

    /// Reads waiting, in-flight and DLQ counts from the broker into the gauges (bounded by
    /// [`BROKER_COUNTS_TIMEOUT`]); records whether the broker answered.
    async fn refresh_broker_counts(&self) {
        let read = tokio::time::timeout(BROKER_COUNTS_TIMEOUT, self.stats(None)).await;
        match read {
            Ok(Ok(rows)) => {
                for row in rows {
                    let key = SubscriptionKey::new(row.topic.clone(), row.trigger.clone());
                    self.inner
                        .metrics
                        .set_broker_counts(&key, row.waiting, row.in_flight, row.dlq);
                    self.inner.metrics.set_paused(&key, row.paused);
                }
                self.inner.metrics.set_broker_up(true);
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot read the broker's counts for the metrics");
                self.inner.metrics.set_broker_up(false);
            }
            Err(_) => {
                tracing::warn!(timeout = ?BROKER_COUNTS_TIMEOUT, "the broker's counts did not come in time for the metrics");
                self.inner.metrics.set_broker_up(false);
            }
        }
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// `messaging.system` of this module's adapter, for spans.
    pub(crate) fn messaging_system(&self) -> &'static str {
        self.inner.config.adapter.class.messaging_system()
    }

    /// Starts every trigger: each pulls its deliveries and calls its function.
    pub fn start_workers(&self) -> Workers {
        let lifecycle = Lifecycle {
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            calls: TaskTracker::new(),
        };
        let mut tasks = Vec::new();
        for trigger in &self.inner.triggers {
            let task = lifecycle
                .calls
                .spawn(Arc::clone(trigger).run(lifecycle.clone()));
            tasks.push(task.abort_handle());
        }
        lifecycle
            .calls
            .spawn(schedules::run_ticker(self.clone(), lifecycle.stop.clone()));
        if self.inner.metrics.exports_otlp() {
            // Exported gauges need the broker's counts without a scrape asking for them.
            // Tracked with the triggers, so shutdown waits for it; it stops at the stop signal,
            // also in the middle of a read.
            let (module, stop) = (self.clone(), lifecycle.stop.clone());
            lifecycle.calls.spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = module.refresh_broker_counts() => {}
                    }
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(BROKER_COUNTS_EVERY) => {}
                    }
                }
            });
        }
        tracing::info!(
            adapter = self.inner.config.adapter.class.name(),
            triggers = self.inner.triggers.len(),
            "topiq queue module running"
        );
        Workers {
            lifecycle,
            grace: self.inner.config.shutdown_grace,
            tasks,
        }
    }

    /// Runs the triggers until `shutdown` completes, then stops gracefully and closes the
    /// adapter. Use with [`shutdown_signal`](crate::shutdown_signal) in a binary.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) {
        let nothing_beside = |_stop| async { Ok::<(), std::convert::Infallible>(()) };
        if let Err(ServiceError::Panicked(err)) = self.run_beside(shutdown, nothing_beside).await {
            tracing::error!(error = %err, "the shutdown of the module failed");
        }
    }

    /// Runs the triggers and `service` (an HTTP API, say: it gets a future that completes
    /// when it should stop) until `shutdown` completes. Then the service is told to stop
    /// while the triggers stop; both get the config's `shutdown_grace`, and the adapter closes
    /// after both, so a request in progress can still reach the broker.
    pub async fn run_beside<S, E>(
        &self,
        shutdown: impl Future<Output = ()>,
        service: impl FnOnce(WaitForCancellationFutureOwned) -> S,
    ) -> Result<(), ServiceError<E>>
    where
        S: Future<Output = Result<(), E>> + Send + 'static,
        E: Send + 'static,
    {
        let workers = self.start_workers();
        let stop_service = CancellationToken::new();
        let serving = tokio::spawn(service(stop_service.clone().cancelled_owned()));
        shutdown.await;
        tracing::info!("shutting down");
        stop_service.cancel();
        let grace = self.inner.config.shutdown_grace;
        let service_finished = async {
            match tokio::time::timeout(grace, serving).await {
                Ok(Ok(served)) => served.map_err(ServiceError::Failed),
                Ok(Err(panicked)) => Err(ServiceError::Panicked(panicked)),
                Err(_) => {
                    tracing::warn!(
                        ?grace,
                        "the service beside the module is still running after the grace period; closing anyway"
                    );
                    Ok(())
                }
            }
        };
        let ((), served) = tokio::join!(workers.shutdown(), service_finished);
        self.close().await;
        served
    }

    /// Whether the module is ready for traffic: the adapter reaches its broker and every
    /// trigger not paused holds its subscription. `Err` lists what is not ready.
    pub async fn readiness(&self) -> Result<(), Vec<String>> {
        let mut not_ready = Vec::new();
        if let Err(err) = self.inner.adapter.health().await {
            not_ready.push(format!("adapter: {err}"));
        }
        if !self.inner.runs.recorder().is_healthy() {
            not_ready.push("runs store: refuses writes; settlements wait until it is back".into());
        }
        for trigger in &self.inner.triggers {
            let paused = self.inner.runs.pauses().is_paused(&trigger.settings.name);
            if !paused && !trigger.subscribed.load(Ordering::Relaxed) {
                not_ready.push(format!("trigger {}: not subscribed", trigger.settings.name));
            }
        }
        if not_ready.is_empty() {
            Ok(())
        } else {
            Err(not_ready)
        }
    }

    /// Writes the last run events, then closes the adapter: no more calls are accepted.
    pub async fn close(&self) {
        self.inner.stop_runs.cancel();
        let writer = self
            .inner
            .runs_writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer
            && let Err(err) = writer.await
        {
            tracing::error!(error = %err, "the runs writer failed");
        }
        if let Err(err) = self.inner.adapter.close().await {
            tracing::warn!(error = %err, "closing the adapter failed");
        }
    }
}

/// Each trigger's settings with the function it calls; an unknown function, a batch
/// mismatch or a name registered twice is a [`ConfigError`].
fn resolve_functions(
    config: &Config,
    functions: &Functions,
) -> Result<Vec<(TriggerSettings, Function)>, ConfigError> {
    if let Some(name) = functions.duplicates().first() {
        return Err(ConfigError::invalid(
            ConfigLocation::start_of("(application)"),
            "functions",
            format!("the function {name:?} was registered twice; register each name once"),
        ));
    }
    let mut resolved = Vec::with_capacity(config.triggers.len());
    for settings in &config.triggers {
        check_trigger_function(settings, functions.kind(&settings.function), || {
            unknown_function_hint(config, functions, &settings.function)
        })?;
        if let Some(function) = functions.get(&settings.function) {
            resolved.push((settings.clone(), function.clone()));
        }
    }
    Ok(resolved)
}

/// Where the functions a trigger can name come from, for an unknown one.
fn unknown_function_hint(config: &Config, functions: &Functions, name: &str) -> String {
    if config.functions.iter().any(|http| http.name == name) {
        return format!(
            "it is an HTTP function of `functions:`, which the embedded module calls once `topiq_server::register_http_functions` registered it (`topiq run` does); registered: {}",
            functions.names().join(", ")
        );
    }
    format!(
        "registered: {}. Register it with Functions::register",
        functions.names().join(", ")
    )
}

/// Starts the task that writes run events, follows cancels and sweeps (and, when a trigger
/// records runs, reads the DLQ for runs the adapter dead-lettered itself) until `stop`.
fn spawn_runs_writer(
    config: &Config,
    adapter: &SharedAdapter,
    runs: &Arc<Runs>,
    recording: &BTreeMap<TopicName, Vec<TriggerName>>,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let (runs, stop) = (Arc::clone(runs), stop.clone());
    let (adapter, recording) = (Arc::clone(adapter), recording.clone());
    let (deadline, keep) = (config.shutdown_grace, config.runs.failed_for);
    tokio::spawn(async move {
        let reconciling = async {
            if !recording.is_empty() {
                reconcile::dead_letters(&adapter, &runs, &recording, &stop, keep).await;
            }
        };
        tokio::join!(runs.run(stop.clone(), deadline), reconciling);
    })
}

/// Declares `settings`' subscription on the broker and builds its trigger.
async fn declare_trigger(
    config: &Config,
    adapter: &SharedAdapter,
    (metrics, runs): (&Metrics, &Runs),
    settings: TriggerSettings,
    function: Function,
) -> Result<Trigger, StartError> {
    let key = SubscriptionKey::new(settings.topic.clone(), settings.name.clone());
    let lanes = config.topics.get(&key.topic).map_or(1, |topic| topic.lanes);
    let mut spec = SubscriptionSpec::new(key.clone());
    spec.max_attempts = settings.retry.max_attempts;
    spec.visibility_timeout = settings.visibility_timeout;
    spec.dead_letter_topic = settings.dead_letter_topic.clone();
    spec.ordered = settings.ordering_key.is_some();
    // Partitions are equals: taken in turn. Priority levels: the highest first.
    let lane_order = if config.ordering.contains_key(&key.topic) {
        LaneOrder::InTurn
    } else {
        LaneOrder::HighestFirst
    };
    let settles_in_slot = lanes > 1
        && lane_order == LaneOrder::HighestFirst
        && adapter.capabilities().read_ahead_counts_settling;
    adapter
        .declare_subscription(spec)
        .await
        .map_err(|source| StartError::Broker {
            what: format!("trigger {key}"),
            source,
        })?;
    let counters = TriggerCounters::new(metrics.trigger(&key));
    Ok(Trigger {
        settings,
        key,
        function,
        adapter: Arc::clone(adapter),
        counters,
        subscribed: AtomicBool::new(false),
        messaging_system: config.adapter.class.messaging_system(),
        runs: None,
        pauses: runs.pauses().watch(),
        lanes,
        lane_order,
        settles_in_slot,
    })
}

/// The running triggers of a module.
pub struct Workers {
    lifecycle: Lifecycle,
    grace: Duration,
    /// The triggers' tasks, for [`abort`](Self::abort).
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Workers {
    /// Stops at once, as a crash would: running calls are dropped unsettled (each message
    /// is delivered again once its lease runs out, as the next attempt) and nothing waits.
    /// For a supervisor that must exit now, and for tests of what a crash does.
    pub fn abort(self) {
        self.lifecycle.stop.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Graceful stop: no new deliveries are taken; running calls get the grace period to
    /// finish; calls still running then are abandoned and their messages released for
    /// redelivery without spending an attempt.
    pub async fn shutdown(self) {
        self.lifecycle.stop.cancel();
        self.lifecycle.calls.close();
        if tokio::time::timeout(self.grace, self.lifecycle.calls.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "handlers still running after the grace period; releasing their messages");
            self.lifecycle.abort.cancel();
            // Abandoned calls release their messages; bound the wait for those settlements.
            if tokio::time::timeout(Duration::from_secs(5), self.lifecycle.calls.wait())
                .await
                .is_err()
            {
                tracing::error!(
                    "settlements still running 5s after the grace period; their messages are delivered again after their leases"
                );
            }
        }
    }
}
