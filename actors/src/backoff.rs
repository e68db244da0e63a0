//! Exponential back-off between retries, the one used everywhere in Swell: a replica
//! retrying an unreachable queue, a supervisor replacing failed replicas, the ingress
//! reader retrying Redis. The delays come from `backon`'s exponential builder (no
//! jitter: the waits are reported, e.g. `restart_backoff_seconds`, and tested); this
//! adds what the callers need around it: a count of consecutive failures and a reset.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays of `first`, doubling up to `cap`, for as many failures as come.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    delays: ExponentialBackoff,
    failures: u32,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self { first, cap, delays: Self::delays(first, cap), failures: 0 }
    }

    fn delays(first: Duration, cap: Duration) -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(cap)
            .with_factor(2.0)
            .without_max_times()
            .build()
    }

    /// A try failed: how long to wait before the next one.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delays.next().unwrap_or(self.cap)
    }

    /// A try succeeded: the next failure waits `first` again. Answers whether it had
    /// been failing.
    pub fn reset(&mut self) -> bool {
        let was_failing = self.failures > 0;
        *self = Self::new(self.first, self.cap);
        was_failing
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset_starts_over() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let waits: Vec<u128> = (0..8).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(waits, vec![50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff.failures(), 8);
        assert!(backoff.reset());
        assert!(!backoff.reset());
        assert_eq!(backoff.failures(), 0);
        assert_eq!(backoff.failed(), Duration::from_millis(50));
    }
}
