//! The signal an adapter's `close` gives everything it runs: waited on by the loops that
//! sleep (a cancellation token), and checked by every publish and settlement (a flag: a
//! token's check takes its lock, and cloning one takes it twice, once for each count).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Cancelled once, when the adapter closes; clones share it.
#[derive(Clone, Debug, Default)]
pub struct CloseSignal(Arc<Signal>);

#[derive(Debug, Default)]
struct Signal {
    /// Set before the token is cancelled: whoever sees the token cancelled sees it set.
    closed: AtomicBool,
    token: CancellationToken,
}

impl CloseSignal {
    /// A signal not yet given.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives the signal: every check after it answers true, every wait ends.
    pub fn cancel(&self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.token.cancel();
    }

    /// Whether the signal was given.
    pub fn is_cancelled(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }

    /// Completes once the signal is given (at once if it was).
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.0.token.cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_clone_sees_the_signal_and_a_waiter_wakes() {
        let signal = CloseSignal::new();
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
    }
}
