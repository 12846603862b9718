//! Paused triggers: kept in the runs store (so every instance sharing it, and every restart,
//! sees the same), polled by each instance, and watched by its triggers, which let go of
//! their subscription while paused.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use topiq_adapter::{Timestamp, TriggerName};
use topiq_runs::{SharedStore, StoreError};

/// How often the store is asked which triggers are paused: a pause reaches every instance
/// within this (plus the time its store read takes).
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(250);

/// The triggers paused, as this instance last read them; triggers watch it.
pub(crate) struct Pauses {
    paused: watch::Sender<BTreeSet<TriggerName>>,
}

impl Pauses {
    /// The pauses in `store` now: a trigger paused there never subscribes at start.
    pub(crate) async fn load(store: &SharedStore) -> Result<Self, StoreError> {
        let paused = store.paused_triggers().await?;
        let names = paused.into_iter().map(|pause| pause.trigger).collect();
        Ok(Self {
            paused: watch::Sender::new(names),
        })
    }

    /// Follows the paused triggers; a trigger takes deliveries only while its name is not
    /// in the set.
    pub(crate) fn watch(&self) -> watch::Receiver<BTreeSet<TriggerName>> {
        self.paused.subscribe()
    }

    /// True when `trigger` is paused, as this instance last read it.
    pub(crate) fn is_paused(&self, trigger: &TriggerName) -> bool {
        self.paused.borrow().contains(trigger)
    }

    /// Pauses `trigger` in `store` and here at once (other instances follow within
    /// [`POLL_EVERY`]).
    pub(crate) async fn pause(
        &self,
        store: &SharedStore,
        trigger: &TriggerName,
    ) -> Result<(), StoreError> {
        store.pause_trigger(trigger, Timestamp::now()).await?;
        self.paused
            .send_if_modified(|paused| paused.insert(trigger.clone()));
        Ok(())
    }

    /// Resumes `trigger` in `store` and here at once.
    pub(crate) async fn resume(
        &self,
        store: &SharedStore,
        trigger: &TriggerName,
    ) -> Result<(), StoreError> {
        store.resume_trigger(trigger).await?;
        self.paused
            .send_if_modified(|paused| paused.remove(trigger));
        Ok(())
    }

    /// Reads the paused triggers from `store` every [`POLL_EVERY`] until `stop`; an
    /// unreadable store keeps the last known pauses.
    pub(crate) async fn poll(&self, store: &SharedStore, stop: &CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(POLL_EVERY) => {}
            }
            match store.paused_triggers().await {
                Ok(paused) => {
                    let names: BTreeSet<TriggerName> =
                        paused.into_iter().map(|pause| pause.trigger).collect();
                    self.paused.send_if_modified(|known| {
                        let changed = *known != names;
                        if changed {
                            known.clone_from(&names);
                        }
                        changed
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read paused triggers from the runs store");
                }
            }
        }
    }
}
