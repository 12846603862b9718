//! The streams and consumers topiq keeps on the server: a topic's stream (created, or checked
//! and its limits updated), a trigger's two consumers, and their settings.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use topiq_adapter::{
    Error, MAX_LANES, Result, SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec, TriggerName,
};

use crate::config::{ResolvedStream, Storage};
use crate::layout::Layout;
use crate::{DeclaredTopic, HEADER_ROOM, Shared, broker};

/// A stream's byte limit with "unlimited" in one spelling (the server answers -1 for 0).
fn unlimited_as_negative(max_bytes: i64) -> i64 {
    if max_bytes <= 0 { -1 } else { max_bytes }
}

/// How much longer than a delivery's lease the server waits for its ack: the client's lease
/// starts when it receives the message, a little after the server sent it.
pub(crate) const ACK_WAIT_MARGIN: Duration = Duration::from_millis(250);

impl Shared {
    /// Creates or checks the topic's stream (and its DLQ stream, ledger and the delay
    /// scheduler) and records the topic.
    pub(crate) async fn declare_topic(self: &Arc<Self>, spec: TopicSpec) -> Result<()> {
        self.ensure_open()?;
        spec.validate(&self.capabilities())?;
        let settings = self.config.stream_settings(spec.name.as_str());
        let lane_subjects: Vec<String> = (1..MAX_LANES)
            .flat_map(|lane| self.lane_subjects(&spec.name, lane))
            .collect();
        self.ensure_stream_with(self.topic_stream(&spec, settings), &lane_subjects)
            .await?;
        let mut dlq_stream = self.topic_stream_config(
            self.layout.dlq_stream(&spec.name),
            vec![self.layout.dlq_wildcard(&spec.name)],
            settings,
        );
        dlq_stream.max_age = spec.dlq_retention.unwrap_or_default();
        self.ensure_stream(dlq_stream).await?;
        self.ensure_ledger(&spec, settings).await?;
        self.start_scheduler(spec.idempotency_window).await?;
        self.declared.add_topic(
            spec.name.clone(),
            Arc::new(DeclaredTopic {
                subject: self.layout.topic_subject(&spec.name).into(),
                spec,
            }),
        );
        Ok(())
    }

    /// The subjects of `lane` of `topic`: its fan-out subject and its triggers' own.
    fn lane_subjects(&self, topic: &TopicName, lane: u32) -> [String; 2] {
        [
            self.layout.lane_subject(topic, lane),
            self.layout.direct_wildcard(topic, lane),
        ]
    }

    /// The topic's own stream: the subjects of each of its lanes.
    fn topic_stream(&self, spec: &TopicSpec, settings: ResolvedStream) -> stream::Config {
        let subjects = (0..spec.lanes.max(1))
            .flat_map(|lane| self.lane_subjects(&spec.name, lane))
            .collect();
        let mut topic_stream =
            self.topic_stream_config(self.layout.topic_stream(&spec.name), subjects, settings);
        topic_stream.retention = stream::RetentionPolicy::Interest;
        if let Some(max_bytes) = settings.max_bytes {
            // A full stream refuses the publish: never is a stored message dropped for it.
            topic_stream.max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
            topic_stream.discard = stream::DiscardPolicy::New;
        }
        // No `max_age`: the stream would drop an expired message silently. Retention is
        // stamped on each message (`Topiq-Expires-At`) and an expired one is dead-lettered
        // when its trigger reaches it (docs/configuration.md, retention).
        topic_stream.max_age = Duration::ZERO;
        topic_stream.duplicate_window = spec.idempotency_window;
        topic_stream.max_message_size =
            i32::try_from(spec.max_message_bytes + HEADER_ROOM).unwrap_or(i32::MAX);
        topic_stream
    }

    /// The topic's idempotency ledger: one message per key, for the window.
    async fn ensure_ledger(&self, spec: &TopicSpec, settings: ResolvedStream) -> Result<()> {
        let mut ledger = self.topic_stream_config(
            self.layout.ledger_stream(&spec.name),
            vec![self.layout.ledger_wildcard(&spec.name)],
            settings,
        );
        ledger.max_age = spec.idempotency_window;
        ledger.max_messages_per_subject = 1;
        self.ensure_stream(ledger).await?;
        let ledger = self
            .js
            .get_stream_no_info(self.layout.ledger_stream(&spec.name))
            .await
            .map_err(broker("get the idempotency ledger"))?;
        self.ledgers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(spec.name.clone(), ledger);
        Ok(())
    }

    /// Creates or checks the trigger's two consumers and records the subscription.
    pub(crate) async fn declare_subscription(&self, spec: SubscriptionSpec) -> Result<()> {
        spec.validate()?;
        let shared = self;
        shared.topic(&spec.key.topic)?;
        if let Some(dead_letter_topic) = &spec.dead_letter_topic {
            shared.topic(dead_letter_topic)?;
        }
        let stream = shared
            .js
            .get_stream_no_info(shared.layout.topic_stream(&spec.key.topic))
            .await
            .map_err(broker("get stream"))?;
        let lanes = shared.topic(&spec.key.topic)?.lanes.max(1);
        for lane in 0..lanes {
            shared.declare_lane_consumers(&stream, &spec, lane).await?;
        }
        shared.declared.add_subscription(spec);
        Ok(())
    }

    /// Creates or checks the trigger's two consumers of `lane`: its fan-out messages and
    /// its own copies.
    async fn declare_lane_consumers(
        &self,
        stream: &jetstream::stream::Stream<()>,
        spec: &SubscriptionSpec,
        lane: u32,
    ) -> Result<()> {
        let (topic, trigger) = (&spec.key.topic, &spec.key.trigger);
        for (name, filter, policy) in [
            (
                Layout::main_consumer(trigger, lane),
                self.layout.lane_subject(topic, lane),
                jetstream::consumer::DeliverPolicy::New,
            ),
            (
                Layout::direct_consumer(trigger, lane),
                self.layout.direct_subject(topic, trigger, lane),
                jetstream::consumer::DeliverPolicy::All,
            ),
        ] {
            let config = Shared::trigger_consumer_config(name.clone(), filter, spec, policy);
            match stream.get_consumer::<pull::Config>(&name).await {
                Ok(existing) => {
                    let current = &existing.cached_info().config;
                    if current.filter_subject != config.filter_subject {
                        return Err(Error::Broker {
                            operation: "declare consumer",
                            source: format!(
                                "consumer {name} exists with filter {:?}, topiq needs {:?}; it belongs to something else: change `prefix`, or delete it",
                                current.filter_subject, config.filter_subject
                            )
                            .into(),
                        });
                    }
                    if current.ack_wait != config.ack_wait
                        || current.max_ack_pending != config.max_ack_pending
                    {
                        stream
                            .update_consumer(config)
                            .await
                            .map_err(broker("update consumer"))?;
                    }
                }
                Err(_) => {
                    stream
                        .create_consumer(config)
                        .await
                        .map_err(broker("create consumer"))?;
                }
            }
        }
        Ok(())
    }

    /// Creates the stream, or checks an existing one: subjects, storage and retention must
    /// match; limits are updated.
    pub(crate) async fn ensure_stream(&self, wanted: stream::Config) -> Result<()> {
        self.ensure_stream_with(wanted, &[]).await
    }

    /// [`ensure_stream`](Self::ensure_stream), where the subjects in `may_vary` (a topic's
    /// lanes beyond lane 0) may be added to an existing stream; none is ever removed, so the
    /// messages of a lane a config no longer has stay until it has it again.
    pub(crate) async fn ensure_stream_with(
        &self,
        mut wanted: stream::Config,
        may_vary: &[String],
    ) -> Result<()> {
        match self.js.get_stream(&wanted.name).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(broker("stream info"))?;
                let current = info.config.clone();
                for subject in &current.subjects {
                    if may_vary.contains(subject) && !wanted.subjects.contains(subject) {
                        wanted.subjects.push(subject.clone());
                    }
                }
                check_same_stream(&current, &wanted, may_vary)?;
                if let Some(updated) = updated_limits(current, &wanted) {
                    self.js
                        .update_stream(updated)
                        .await
                        .map_err(broker("update stream"))?;
                }
                Ok(())
            }
            Err(err)
                if matches!(
                    err.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref js)
                        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                self.js
                    .create_stream(wanted)
                    .await
                    .map(|_| ())
                    .map_err(broker("create stream"))
            }
            Err(err) => Err(Error::BrokerUnavailable {
                message: format!("cannot read stream {}", wanted.name),
                source: Some(Box::new(err)),
            }),
        }
    }

    /// A stream with the adapter's storage and replicas.
    pub(crate) fn stream_config(&self, name: String, subjects: Vec<String>) -> stream::Config {
        self.topic_stream_config(name, subjects, self.config.default_stream_settings())
    }

    /// A stream of one topic, with its settings.
    pub(crate) fn topic_stream_config(
        &self,
        name: String,
        subjects: Vec<String>,
        settings: ResolvedStream,
    ) -> stream::Config {
        stream::Config {
            name,
            subjects,
            storage: match settings.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: settings.replicas,
            ..Default::default()
        }
    }

    /// Makes sure the trigger's own consumer exists before a copy is published to its subject:
    /// on an interest stream, a message nobody is interested in is dropped at once.
    pub(crate) async fn ensure_direct_consumer(
        &self,
        topic: &TopicName,
        trigger: &TriggerName,
        lane: u32,
    ) -> Result<()> {
        let key = SubscriptionKey::new(topic.clone(), trigger.clone());
        let spec = self
            .declared
            .subscription(&key)
            .unwrap_or_else(|_| SubscriptionSpec::new(key));
        let stream = self
            .js
            .get_stream_no_info(self.layout.topic_stream(topic))
            .await
            .map_err(broker("get stream"))?;
        let name = Layout::direct_consumer(trigger, lane);
        stream
            .get_or_create_consumer(
                &name,
                Shared::trigger_consumer_config(
                    name.clone(),
                    self.layout.direct_subject(topic, trigger, lane),
                    &spec,
                    jetstream::consumer::DeliverPolicy::All,
                ),
            )
            .await
            .map(|_| ())
            .map_err(broker("ensure the trigger's own consumer"))
    }

    /// A consumer of a trigger: leased for its visibility timeout, and one message in flight
    /// at a time when the trigger is ordered (`max_ack_pending` 1: the server hands out the
    /// next only after the one before was acked or terminated, and redelivers a nacked one
    /// before any later one).
    pub(crate) fn trigger_consumer_config(
        name: String,
        filter_subject: String,
        spec: &SubscriptionSpec,
        deliver_policy: jetstream::consumer::DeliverPolicy,
    ) -> pull::Config {
        let mut config = Self::consumer_config(
            name,
            filter_subject,
            spec.visibility_timeout,
            deliver_policy,
        );
        if spec.ordered {
            config.max_ack_pending = 1;
        }
        config
    }

    /// A durable pull consumer whose deliveries are leased for `visibility_timeout`. The
    /// server waits [`ACK_WAIT_MARGIN`] longer than the client's lease before it delivers
    /// again, so a redelivery never overlaps a lease the client still honours.
    pub(crate) fn consumer_config(
        name: String,
        filter_subject: String,
        visibility_timeout: Duration,
        deliver_policy: jetstream::consumer::DeliverPolicy,
    ) -> pull::Config {
        pull::Config {
            durable_name: Some(name),
            filter_subject,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: visibility_timeout + ACK_WAIT_MARGIN,
            deliver_policy,
            max_deliver: -1,
            max_ack_pending: -1,
            ..Default::default()
        }
    }
}

/// An existing stream must have the subjects (those in `may_vary` aside, which are added),
/// retention and storage topiq needs: otherwise it belongs to another topic or application,
/// and is left alone.
fn check_same_stream(
    current: &stream::Config,
    wanted: &stream::Config,
    may_vary: &[String],
) -> Result<()> {
    let fixed = |subjects: &[String]| {
        let mut fixed: Vec<String> = subjects
            .iter()
            .filter(|subject| !may_vary.contains(subject))
            .cloned()
            .collect();
        fixed.sort();
        fixed
    };
    if fixed(&current.subjects) == fixed(&wanted.subjects)
        && current.retention == wanted.retention
        && current.storage == wanted.storage
    {
        return Ok(());
    }
    Err(Error::Broker {
        operation: "declare stream",
        source: format!(
            "stream {} exists with other settings (subjects {:?}, retention {:?}, storage {:?}; topiq needs {:?}, {:?}, {:?}); it belongs to another topic or application: change `prefix`, or delete the stream",
            wanted.name,
            current.subjects,
            current.retention,
            current.storage,
            wanted.subjects,
            wanted.retention,
            wanted.storage
        )
        .into(),
    })
}

/// `current` with the limits of `wanted`, when any differs (limits change in place).
fn updated_limits(current: stream::Config, wanted: &stream::Config) -> Option<stream::Config> {
    let mut subjects = current.subjects.clone();
    subjects.sort();
    let mut wanted_subjects = wanted.subjects.clone();
    wanted_subjects.sort();
    let changed = subjects != wanted_subjects
        || current.max_age != wanted.max_age
        || current.duplicate_window != wanted.duplicate_window
        || current.max_message_size != wanted.max_message_size
        || current.num_replicas != wanted.num_replicas
        || unlimited_as_negative(current.max_bytes) != unlimited_as_negative(wanted.max_bytes)
        || current.discard != wanted.discard;
    changed.then_some(stream::Config {
        subjects: wanted.subjects.clone(),
        max_age: wanted.max_age,
        duplicate_window: wanted.duplicate_window,
        max_message_size: wanted.max_message_size,
        num_replicas: wanted.num_replicas,
        max_bytes: wanted.max_bytes,
        discard: wanted.discard,
        ..current
    })
}
