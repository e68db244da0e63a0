//! [`WaitMeasurements`]: what a deployment's supervisor measures for wait estimates
//! ([`crate::wait_estimate`]): how long a job holds a batch slot (leased to finished),
//! the last [`SERVICE_WINDOW`] of them as a distribution ([`RenewalCurve`], rebuilt at
//! most once a second), and how long a replica takes to start (an exponentially
//! weighted moving average).
//!
//! Until a job finished, the service time is the engine's own performance profile
//! (`EngineDescription::performance`, as the autoscaler's capacity model uses it) for
//! the mean prompt and `max_tokens` of the requests that arrived, at a full batch: an
//! upper bound where requests stop before `max_tokens`. Engines without a profile have
//! no such prior.
//!
//! Cold starts are kept apart by kind: a start **from zero** (no other replica of the
//! deployment live: the weights are read or mapped) and a **warm** start beside live
//! replicas (the `llm` engine shares their weights, so it takes milliseconds). Before a
//! kind was measured the engine's own `expected_cold_start` stands in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use swell_workers::PerformanceProfile;

use crate::renewal::RenewalCurve;

/// Service times kept: the distribution of the last this many jobs.
pub const SERVICE_WINDOW: usize = 200;
/// The distribution is rebuilt at most this often (and after each of the first jobs).
const REBUILD_EVERY: Duration = Duration::from_secs(1);
/// Until this many jobs are measured, every one rebuilds the distribution.
const EARLY_JOBS: usize = 20;
/// Weight of a new arrival's lengths in their averages.
const ARRIVAL_WEIGHT: f64 = 0.1;
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
    /// Mean prompt tokens and `max_tokens` of arriving requests (for the prior).
    prompt_tokens: Option<f64>,
    max_tokens: Option<f64>,
}

impl WaitMeasurements {
    pub fn new(expected_cold_start: Duration) -> Self {
        Self { expected_cold_start, ..Self::default() }
    }

    /// A request arrived with this prompt and `max_tokens`.
    pub fn arrived(&mut self, prompt_tokens: u64, max_tokens: u64) {
        let average = |mean: &mut Option<f64>, sample: u64| {
            let sample = sample as f64;
            *mean = Some(mean.map_or(sample, |mean| mean + ARRIVAL_WEIGHT * (sample - mean)));
        };
        average(&mut self.prompt_tokens, prompt_tokens);
        average(&mut self.max_tokens, max_tokens);
    }

    /// The service time the engine's profile gives the mean arriving request in a full
    /// batch of `slots` (`None`: no profile, or no arrival yet): its prefill, then
    /// `max_tokens` decode steps of a batch of `slots` sequences holding the mean context.
    pub fn prior_service_time(&self, performance: Option<&PerformanceProfile>, slots: u32) -> Option<Duration> {
        let step = performance?.step;
        let (prompt, output) = (self.prompt_tokens?, self.max_tokens?);
        let prefill = if step.prefill_tokens_per_second > 0.0 { prompt / step.prefill_tokens_per_second } else { 0.0 };
        let sequences = f64::from(slots.max(1));
        let decode_step = step.decode_step_base.as_secs_f64()
            + (sequences - 1.0) * step.decode_step_per_sequence.as_secs_f64()
            + sequences * (prompt + output / 2.0) * step.decode_step_per_kv_token.as_secs_f64();
        Some(Duration::from_secs_f64(prefill + output * decode_step))
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
    fn the_prior_is_the_engine_profile_for_the_mean_request() {
        use swell_workers::StepTimes;
        let mut measured = WaitMeasurements::new(Duration::from_secs(30));
        let profile = PerformanceProfile {
            step: StepTimes {
                prefill_tokens_per_second: 1000.0,
                decode_step_base: Duration::from_millis(10),
                decode_step_per_sequence: Duration::from_millis(1),
                decode_step_per_kv_token: Duration::ZERO,
            },
            max_prefill_tokens_per_step: 512,
            model_params_billions: 1.0,
            gpu: "x".into(),
            source: "test".into(),
        };
        assert_eq!(measured.prior_service_time(Some(&profile), 4), None, "no arrival yet");
        measured.arrived(500, 100);
        // 0.5 s of prefill, then 100 steps of 10 + 3 ms.
        let prior = measured.prior_service_time(Some(&profile), 4).unwrap().as_secs_f64();
        assert!((prior - 1.8).abs() < 1e-9, "{prior}");
        assert_eq!(measured.prior_service_time(None, 4), None);
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
