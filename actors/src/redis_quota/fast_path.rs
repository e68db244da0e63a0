//! The node's projection of each rate bucket from the last state Redis reported: what
//! cannot fit yet is rejected on the node, with the `retry_after` Redis would give.

use std::time::Duration;

use tokio::time::Instant;

use super::RATE_WINDOW;
use crate::quota::{LimitState, RateLimitSnapshot};

/// Each rate bucket's last reported state, projected forward to reject locally what
/// cannot fit yet.
#[derive(Debug, Clone, Default)]
pub(super) struct FastPath {
    /// Requests, prompt tokens, output tokens.
    seen: [Option<SeenBucket>; 3],
    /// This node's refunds, and its settles Redis has not answered yet: an answer to an
    /// acquire sent while a settle was on its way may not include the refund (a settle
    /// can reach Redis after a later acquire, e.g. when its script must be loaded first),
    /// so such an answer is not remembered.
    pub(super) refunds: u64,
    pub(super) settles_in_flight: u64,
}

#[derive(Debug, Clone, Copy)]
struct SeenBucket {
    limit: u64,
    /// Time until full, as reported.
    owed: Duration,
    /// When the call that reported it was sent (so the projection errs toward asking).
    at: Instant,
}

impl FastPath {
    pub(super) fn observe(&mut self, snapshot: &RateLimitSnapshot, sent_at: Instant) {
        let states = [snapshot.requests, snapshot.prompt_tokens, snapshot.output_tokens];
        for (seen, state) in self.seen.iter_mut().zip(states) {
            *seen = state.map(|state| SeenBucket { limit: state.limit, owed: state.reset, at: sent_at });
        }
    }

    pub(super) fn clear(&mut self) {
        self.seen = Default::default();
    }

    /// This node refunded `amount` to bucket `index` (so it need not wait for it).
    pub(super) fn refund(&mut self, index: usize, amount: u64) {
        self.refunds += 1;
        self.settles_in_flight += 1;
        if let Some(seen) = &mut self.seen[index] {
            let back = RATE_WINDOW.mul_f64(amount as f64 / seen.limit as f64);
            seen.owed = seen.owed.saturating_sub(back);
        }
    }

    /// Whether an answer to a call sent with `refunds_before` (or `None` when a settle
    /// was in flight then) can be remembered.
    pub(super) fn can_remember(&self, refunds_before: Option<u64>) -> bool {
        refunds_before == Some(self.refunds)
    }

    /// The projected time until full of bucket `index`, if its limit is still `limit`.
    fn owed(&self, index: usize, limit: u64, now: Instant) -> Option<Duration> {
        let seen = self.seen[index].filter(|seen| seen.limit == limit)?;
        Some(seen.owed.saturating_sub(now.saturating_duration_since(seen.at)))
    }

    /// How long `amount` must wait in bucket `index` (zero: ask Redis).
    pub(super) fn wait(&self, index: usize, limit: u64, amount: u64, now: Instant) -> Duration {
        let Some(owed) = self.owed(index, limit, now) else { return Duration::ZERO };
        let needed = owed + RATE_WINDOW.mul_f64(amount as f64 / limit as f64);
        needed.saturating_sub(RATE_WINDOW)
    }

    /// `last` with the rate buckets projected to `now`.
    pub(super) fn project(&self, last: &RateLimitSnapshot, now: Instant) -> RateLimitSnapshot {
        let project = |index: usize, state: Option<LimitState>| {
            let state = state?;
            let Some(owed) = self.owed(index, state.limit, now) else { return Some(state) };
            let level = state.limit as f64 * (1.0 - owed.as_secs_f64() / RATE_WINDOW.as_secs_f64());
            Some(LimitState { limit: state.limit, remaining: (level + 1e-6).floor().max(0.0) as u64, reset: owed })
        };
        RateLimitSnapshot {
            requests: project(0, last.requests),
            prompt_tokens: project(1, last.prompt_tokens),
            output_tokens: project(2, last.output_tokens),
            concurrent_requests: last.concurrent_requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_path_projects_the_last_state() {
        let t0 = Instant::now();
        let mut fast_path = FastPath::default();
        // 2 per minute, empty: full again in 60 s, one more in 30 s.
        let snapshot = RateLimitSnapshot {
            requests: Some(LimitState { limit: 2, remaining: 0, reset: Duration::from_secs(60) }),
            ..Default::default()
        };
        fast_path.observe(&snapshot, t0);
        assert_eq!(fast_path.wait(0, 2, 1, t0), Duration::from_secs(30));
        assert_eq!(fast_path.wait(0, 2, 1, t0 + Duration::from_secs(10)), Duration::from_secs(20));
        assert_eq!(fast_path.wait(0, 2, 1, t0 + Duration::from_secs(30)), Duration::ZERO);
        assert_eq!(fast_path.wait(0, 3, 1, t0), Duration::ZERO, "another limit: ask Redis");
        let projected = fast_path.project(&snapshot, t0 + Duration::from_secs(45));
        assert_eq!(projected.requests.unwrap().remaining, 1);
        assert_eq!(projected.requests.unwrap().reset, Duration::from_secs(15));
    }
}
