//! [`WaitMeasurements`]: what a deployment's supervisor measures for wait estimates
//! ([`crate::wait_estimate`]): how long a job holds a batch slot (leased to finished) and
//! how long a replica takes to start, each an exponentially weighted moving average.
//!
//! Cold starts are kept apart by kind: a start **from zero** (no other replica of the
//! deployment live: the weights are read or mapped) and a **warm** start beside live
//! replicas (the `llm` engine shares their weights, so it takes milliseconds). Before a
//! kind was measured the engine's own `expected_cold_start` stands in.

use std::time::Duration;

/// Weight of a new service time (about the last 20 jobs count).
const SERVICE_WEIGHT: f64 = 0.1;
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

/// A deployment's measured service time and cold starts.
#[derive(Debug, Clone, Default)]
pub struct WaitMeasurements {
    service_time: Ewma,
    cold_start_from_zero: Ewma,
    cold_start_warm: Ewma,
    /// The engine's own figure, used until a start of the kind was measured.
    expected_cold_start: Duration,
}

impl WaitMeasurements {
    pub fn new(expected_cold_start: Duration) -> Self {
        Self { expected_cold_start, ..Self::default() }
    }

    /// A job held a slot for `held` (from the replica's `Started` to its end).
    pub fn job_finished(&mut self, held: Duration) {
        self.service_time.record(held, SERVICE_WEIGHT);
    }

    /// A replica became ready `took` after it was spawned; `from_zero`: no other replica
    /// was live when it was spawned.
    pub fn replica_ready(&mut self, took: Duration, from_zero: bool) {
        let kind = if from_zero { &mut self.cold_start_from_zero } else { &mut self.cold_start_warm };
        kind.record(took, COLD_START_WEIGHT);
    }

    /// The measured service time (`None` until a job finished).
    pub fn service_time(&self) -> Option<Duration> {
        self.service_time.get()
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
    fn the_average_follows_the_samples() {
        let mut measured = WaitMeasurements::new(Duration::from_secs(30));
        assert_eq!(measured.service_time(), None);
        measured.job_finished(Duration::from_secs(2));
        assert_eq!(measured.service_time(), Some(Duration::from_secs(2)));
        measured.job_finished(Duration::from_secs(12));
        assert_eq!(measured.service_time(), Some(Duration::from_secs(3)));
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
