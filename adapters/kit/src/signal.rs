//! A signal given once: checked with a load, awaited through a `Notify`. An adapter's close is
//! one (every publish and settlement checks it, the loops that sleep wait for it), and so is a
//! run's cancel in the runtime (every run makes one and clones it). A `CancellationToken`
//! would allocate a tree node, and take its lock on every clone, drop and check.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Given once; clones share it.
#[derive(Clone, Debug, Default)]
pub struct Signal(Arc<State>);

#[derive(Debug, Default)]
struct State {
    given: AtomicBool,
    woken: Notify,
}

impl Signal {
    /// A signal not yet given.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives the signal: every check after it answers true, every wait ends.
    pub fn cancel(&self) {
        self.0.given.store(true, Ordering::Release);
        self.0.woken.notify_waiters();
    }

    /// Whether the signal was given.
    pub fn is_cancelled(&self) -> bool {
        self.0.given.load(Ordering::Acquire)
    }

    /// Completes once the signal is given (at once if it was).
    pub async fn cancelled(&self) {
        loop {
            // Registered before the check: a signal given after it wakes this wait.
            let mut woken = pin!(self.0.woken.notified());
            woken.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_clone_sees_the_signal_and_a_waiter_wakes() {
        let signal = Signal::new();
        let clone = signal.clone();
        assert!(!clone.is_cancelled());
        let waiting = tokio::spawn(async move { clone.cancelled().await });
        tokio::task::yield_now().await;
        signal.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the waiter woke")
            .expect("the waiter ran");
        assert!(signal.is_cancelled());
        assert!(signal.clone().is_cancelled());
        // A wait begun after the signal ends at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), signal.cancelled())
            .await
            .expect("a late waiter ends at once");
    }
}
