//! Run records in the running module: the events each trigger reports, the recorder that
//! writes them in batches, and the sweep of finished runs past their keep time.

mod cancels;
pub(crate) mod reconcile;
mod recorder;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use topiq_adapter::{Envelope, Timestamp, TriggerName};
use topiq_runs::{
    AttemptOutcome, Change, Next, Origin, Retention, RunError, RunEvent, RunKey, SharedStore,
    StoreError,
};

use crate::config::RunsSettings;
use crate::control::Pauses;
pub(crate) use cancels::{Cancels, RunCancel};
pub(crate) use recorder::{Recorder, RecorderSeries};

/// How often finished runs past their keep time are swept, at most (more often when a keep
/// time is short: half of the shorter one).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The module's run records: where they go and who this instance is.
pub(crate) struct Runs {
    recorder: Recorder,
    cancels: Cancels,
    pauses: Pauses,
    settings: RunsSettings,
    /// `host:pid`, on every attempt this instance runs (shared by their records).
    instance: Arc<str>,
}

impl Runs {
    /// Opens the store `settings` names.
    pub(crate) async fn open(settings: RunsSettings) -> Result<Self, StoreError> {
        let store = topiq_runs::open(settings.store()).await?;
        tracing::info!(store = %topiq_runs::shown_address(settings.store()), "recording runs");
        let pauses = Pauses::load(&store).await?;
        Ok(Self {
            recorder: Recorder::new(store),
            cancels: Cancels::default(),
            pauses,
            settings,
            instance: instance_name().into(),
        })
    }

    pub(crate) fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    pub(crate) fn store(&self) -> &SharedStore {
        self.recorder.store()
    }

    pub(crate) fn cancels(&self) -> &Cancels {
        &self.cancels
    }

    /// The paused triggers, followed from the store.
    pub(crate) fn pauses(&self) -> &Pauses {
        &self.pauses
    }

    /// Writes events, follows cancels and pauses, and sweeps old runs until `stop`;
    /// `deadline` bounds the last writes.
    pub(crate) async fn run(&self, stop: CancellationToken, deadline: Duration) {
        let shortest = self.settings.succeeded_for.min(self.settings.failed_for);
        let every = SWEEP_EVERY
            .min(shortest / 2)
            .max(Duration::from_millis(100));
        let sweeping = async {
            loop {
                self.sweep().await;
                tokio::time::sleep(every).await;
            }
        };
        let until_stop = async {
            tokio::select! {
                () = stop.cancelled() => {}
                () = sweeping => {}
            }
        };
        let keep = self.settings.failed_for;
        tokio::join!(
            self.recorder.run(stop.clone(), deadline),
            self.cancels.poll(self.store(), &stop, keep),
            self.pauses.poll(self.store(), &stop),
            until_stop,
        );
    }

    async fn sweep(&self) {
        let now = Timestamp::now();
        let before = |keep: Duration| {
            now.checked_sub(
                jiff::SignedDuration::try_from(keep).unwrap_or(jiff::SignedDuration::MAX),
            )
            .unwrap_or(Timestamp::MIN)
        };
        let retention = Retention {
            succeeded_before: before(self.settings.succeeded_for),
            failed_before: before(self.settings.failed_for),
        };
        match self.store().sweep(retention).await {
            Ok(0) => {}
            Ok(swept) => tracing::debug!(swept, "swept finished runs past their keep time"),
            Err(err) => tracing::warn!(error = %err, "cannot sweep finished runs"),
        }
    }

    /// The event of `envelope`'s attempt starting on `trigger`.
    pub(crate) fn started(
        &self,
        trigger: &TriggerName,
        envelope: &Envelope,
        traceparent: Option<String>,
    ) -> RunEvent {
        event(
            trigger,
            envelope,
            Change::Started {
                origin: origin(envelope),
                attempt: envelope.attempt,
                instance: self.instance.clone(),
                traceparent,
            },
        )
    }
}

/// What a delivery tells of its message's beginning.
pub(crate) fn origin(envelope: &Envelope) -> Origin {
    Origin {
        topic: envelope.topic.clone(),
        data: Arc::clone(&envelope.data),
        enqueued_at: envelope.enqueued_at,
        run_at: None,
        replay_of: None,
        idempotency_key: envelope.idempotency_key.clone(),
    }
}

/// `change` to the run of `envelope` on `trigger`, now.
pub(crate) fn event(trigger: &TriggerName, envelope: &Envelope, change: Change) -> RunEvent {
    RunEvent {
        key: RunKey::new(envelope.id.clone(), trigger.clone()),
        at: Timestamp::now(),
        change,
    }
}

/// The event of `envelope`'s attempt ending at `at` with `outcome` and going `next`.
pub(crate) fn finished(
    trigger: &TriggerName,
    envelope: &Envelope,
    (outcome, error, next): (AttemptOutcome, Option<RunError>, Next),
    at: Timestamp,
) -> RunEvent {
    RunEvent {
        key: RunKey::new(envelope.id.clone(), trigger.clone()),
        at,
        change: Change::Finished {
            attempt: envelope.attempt,
            outcome,
            error,
            next,
        },
    }
}

/// `host:pid` of this process.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}
