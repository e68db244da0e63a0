//! [`HoldTimes`]: when a tenant's next concurrency slot is expected to free, for the
//! `retry-after` of a `concurrency_limit_exceeded` 429. It remembers when each grant the
//! node holds was taken and measures how long grants are held (taken to settled, an
//! exponentially weighted moving average); the next slot frees at the soonest expected
//! end of a held grant. Plain arithmetic; time is passed in.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::wait_measurements::Ewma;

/// Weight of a new hold time in its average (about the last 20 requests count).
const HOLD_TIME_WEIGHT: f64 = 0.1;

/// The `retry-after` of a concurrency rejection is at least this, and this until a hold
/// time was measured.
pub const CONCURRENCY_RETRY_FLOOR: Duration = Duration::from_secs(1);

/// Held grants' start times and the measured hold time.
#[derive(Debug, Clone, Default)]
pub struct HoldTimes {
    taken: HashMap<u64, Instant>,
    hold_time: Ewma,
}

impl HoldTimes {
    pub fn taken(&mut self, grant_id: u64, now: Instant) {
        self.taken.insert(grant_id, now);
    }

    /// The grant ended (settled): its hold time is measured.
    pub fn ended(&mut self, grant_id: u64, now: Instant) {
        if let Some(taken) = self.taken.remove(&grant_id) {
            self.hold_time.record(now.saturating_duration_since(taken), HOLD_TIME_WEIGHT);
        }
    }

    /// The measured hold time (`None` until a grant ended).
    pub fn hold_time(&self) -> Option<Duration> {
        self.hold_time.get()
    }

    /// When a slot is expected to free: the soonest expected end (taken + the measured
    /// hold time) of a grant held here; one hold time when none is held here (other
    /// nodes hold the slots); at least [`CONCURRENCY_RETRY_FLOOR`], and that before
    /// anything was measured.
    pub fn next_slot_frees_in(&self, now: Instant) -> Duration {
        let Some(hold) = self.hold_time.get() else { return CONCURRENCY_RETRY_FLOOR };
        self.taken
            .values()
            .map(|taken| hold.saturating_sub(now.saturating_duration_since(*taken)))
            .min()
            .unwrap_or(hold)
            .max(CONCURRENCY_RETRY_FLOOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_slot_frees_when_the_oldest_grant_is_expected_to_end() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut holds = HoldTimes::default();
        holds.taken(1, t0);
        assert_eq!(holds.next_slot_frees_in(t0), CONCURRENCY_RETRY_FLOOR, "nothing measured yet");
        holds.ended(1, t0 + secs(20));
        assert_eq!(holds.hold_time(), Some(secs(20)));
        assert_eq!(holds.next_slot_frees_in(t0 + secs(20)), secs(20), "none held here: one hold time");
        holds.taken(2, t0 + secs(30));
        holds.taken(3, t0 + secs(34));
        assert_eq!(holds.next_slot_frees_in(t0 + secs(35)), secs(15), "taken 5 s ago, held 20 s");
        assert_eq!(holds.next_slot_frees_in(t0 + secs(60)), CONCURRENCY_RETRY_FLOOR, "overdue: the floor");
        holds.ended(9, t0 + secs(60));
        assert_eq!(holds.hold_time(), Some(secs(20)), "an unknown grant measures nothing");
    }
}
