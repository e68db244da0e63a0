//! [`WaitMeasurements`]: what a deployment's supervisor measures for wait estimates
//! ([`crate::wait_estimate`]): how long a job holds a batch slot (leased to finished),
//! the last [`SERVICE_WINDOW`] of them as a distribution ([`RenewalCurve`], rebuilt at
//! most once a second), and how long a replica takes to start (an exponentially
//! weighted moving average).
//!
//! Cold starts are kept apart by kind: a start **from zero** (no other replica of the
//! deployment live: the weights are read or mapped) and a **warm** start beside live
//! replicas (the `llm` engine shares their weights, so it takes milliseconds). Before a
//! kind was measured the engine's own `expected_cold_start` stands in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::renewal::RenewalCurve;

/// Service times kept: the distribution of the last this many jobs.
pub const SERVICE_WINDOW: usize = 200;
/// The distribution is rebuilt at most this often (and after each of the first jobs).
const REBUILD_EVERY: Duration = Duration::from_secs(1);
/// Until this many jobs are measured, every one rebuilds the distribution.
const EARLY_JOBS: usize = 20;
/// Weight of a new cold start (starts are rare; the last few count).
const COLD_START_WEIGHT: f64 = 0.5;

/// An exponentially weighted moving average of durations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ewma {
    value: Option<f64>,
}

impl Ewma {
    pub fn record(&mut self, sample: Duration, weight: f64) {
        let sample = sample.as_secs_f64();
        self.value = Some(match self.value {
            None => sample,
            Some(value) => value + weight * (sample - value),
        });
    }

    pub fn get(&self) -> Option<Duration> {
        self.value.map(Duration::from_secs_f64)
    }
}

/// A deployment's measured service times and cold starts.
#[derive(Debug, Clone, Default)]
pub struct WaitMeasurements {
    service_times: VecDeque<f64>,
    service_curve: Option<Arc<RenewalCurve>>,
    curve_built_at: Option<Instant>,
    cold_start_from_zero: Ewma,
    cold_start_warm: Ewma,
    /// The engine's own figure, used until a start of the kind was measured.
    expected_cold_start: Duration,
}

impl WaitMeasurements {
    pub fn new(expected_cold_start: Duration) -> Self {
        Self { expected_cold_start, ..Self::default() }
    }

    /// A job held a slot for `held` (from the replica's `Started` to its end), measured
    /// at `now`.
    pub fn job_finished(&mut self, held: Duration, now: Instant) {
        if self.service_times.len() == SERVICE_WINDOW {
            self.service_times.pop_front();
        }
        self.service_times.push_back(held.as_secs_f64());
        let due = self.curve_built_at.is_none_or(|at| now.saturating_duration_since(at) >= REBUILD_EVERY);
        if due || self.service_times.len() <= EARLY_JOBS {
            let samples: Vec<f64> = self.service_times.iter().copied().collect();
            self.service_curve = RenewalCurve::from_samples(&samples).map(Arc::new);
            self.curve_built_at = Some(now);
        }
    }

    /// A replica became ready `took` after it was spawned; `from_zero`: no other replica
    /// was live when it was spawned.
    pub fn replica_ready(&mut self, took: Duration, from_zero: bool) {
        let kind = if from_zero { &mut self.cold_start_from_zero } else { &mut self.cold_start_warm };
        kind.record(took, COLD_START_WEIGHT);
    }

    /// The distribution of measured service times (`None` until a job finished).
    pub fn service_curve(&self) -> Option<Arc<RenewalCurve>> {
        self.service_curve.clone()
    }

    /// The expected cold start of a replica of this kind.
    pub fn cold_start(&self, from_zero: bool) -> Duration {
        let kind = if from_zero { &self.cold_start_from_zero } else { &self.cold_start_warm };
        kind.get().unwrap_or(self.expected_cold_start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_distribution_follows_a_window_of_jobs() {
        let t0 = Instant::now();
        let mut measured = WaitMeasurements::new(Duration::from_secs(30));
        assert_eq!(measured.service_curve(), None);
        measured.job_finished(Duration::from_secs(2), t0);
        assert_eq!(measured.service_curve().unwrap().mean(), 2.0);
        measured.job_finished(Duration::from_secs(4), t0);
        assert_eq!(measured.service_curve().unwrap().mean(), 3.0, "each early job counts at once");
        for _ in 0..SERVICE_WINDOW {
            measured.job_finished(Duration::from_secs(10), t0);
        }
        assert!(measured.service_curve().unwrap().mean() < 10.0, "rebuilt at most once a second");
        measured.job_finished(Duration::from_secs(10), t0 + REBUILD_EVERY);
        assert_eq!(measured.service_curve().unwrap().mean(), 10.0, "only the last {SERVICE_WINDOW} count");
    }

    #[test]
    fn cold_starts_are_kept_by_kind_with_the_engine_figure_until_measured() {
        let mut measured = WaitMeasurements::new(Duration::from_secs(30));
        assert_eq!(measured.cold_start(true), Duration::from_secs(30));
        measured.replica_ready(Duration::from_secs(10), true);
        assert_eq!(measured.cold_start(true), Duration::from_secs(10));
        assert_eq!(measured.cold_start(false), Duration::from_secs(30));
        measured.replica_ready(Duration::from_millis(20), false);
        assert_eq!(measured.cold_start(false), Duration::from_millis(20));
        measured.replica_ready(Duration::from_secs(20), true);
        assert_eq!(measured.cold_start(true), Duration::from_secs(15));
    }
}
