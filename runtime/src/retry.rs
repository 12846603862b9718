//! How many attempts a trigger makes and how long it waits between them.

use std::time::Duration;

/// The longest wait between two attempts; longer delays (from a backoff or a handler's
/// `retry_after`) are cut to it.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The wait before the next attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Backoff {
    /// The same delay after every failure.
    Fixed(Duration),
    /// `min(initial * factor^(n-1), max)` after the n-th failure.
    Exponential {
        /// The delay after the first failure.
        initial: Duration,
        /// The growth per failure (≥ 1).
        factor: f64,
        /// The ceiling.
        max: Duration,
    },
    /// The n-th delay after the n-th failure; the last one repeats.
    Custom(Vec<Duration>),
}

/// A trigger's attempt limit and backoff.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (≥ 1).
    pub max_attempts: u32,
    /// The wait between attempts.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    /// Four attempts, 1 s, 2 s, 4 s apart (exponential, at most 5 min).
    fn default() -> Self {
        Self {
            max_attempts: 4,
            backoff: Backoff::Exponential {
                initial: Duration::from_secs(1),
                factor: 2.0,
                max: Duration::from_secs(300),
            },
        }
    }
}

impl RetryPolicy {
    /// The wait after attempt `failed_attempt` (1-based) failed.
    pub fn delay_after(&self, failed_attempt: u32) -> Duration {
        let index = failed_attempt.max(1) - 1;
        match &self.backoff {
            Backoff::Fixed(delay) => *delay,
            Backoff::Exponential {
                initial,
                factor,
                max,
            } => {
                let scaled = initial.as_secs_f64() * factor.powi(index.min(1024) as i32);
                if !scaled.is_finite() || scaled >= max.as_secs_f64() {
                    *max
                } else {
                    Duration::from_secs_f64(scaled)
                }
            }
            Backoff::Custom(delays) => delays
                .get(index as usize)
                .or(delays.last())
                .copied()
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn exponential_grows_by_the_factor_up_to_the_max() {
        let policy = RetryPolicy {
            max_attempts: 10,
            backoff: Backoff::Exponential {
                initial: S,
                factor: 3.0,
                max: 20 * S,
            },
        };
        let delays: Vec<_> = (1..=5).map(|n| policy.delay_after(n)).collect();
        assert_eq!(delays, vec![S, 3 * S, 9 * S, 20 * S, 20 * S]);
        assert_eq!(policy.delay_after(u32::MAX), 20 * S);
    }

    #[test]
    fn custom_delays_repeat_the_last() {
        let policy = RetryPolicy {
            max_attempts: 5,
            backoff: Backoff::Custom(vec![S, 5 * S]),
        };
        let delays: Vec<_> = (1..=4).map(|n| policy.delay_after(n)).collect();
        assert_eq!(delays, vec![S, 5 * S, 5 * S, 5 * S]);
    }

    #[test]
    fn fixed_is_fixed() {
        let policy = RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Fixed(2 * S),
        };
        assert_eq!(policy.delay_after(1), 2 * S);
        assert_eq!(policy.delay_after(7), 2 * S);
    }
}
