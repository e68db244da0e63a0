//! What the machine did to a live run ([`LiveConditions`], measured by the load
//! generator's `swell_loadtest::fidelity::measure_conditions`), the bounds beyond which a
//! run is not compared ([`ValidityBounds`]), and the profile as the machine ran it
//! ([`LiveConditions::as_run`]).

use std::time::Duration;

use serde::Serialize;
use swell_workers::sim::SimProfile;

/// What the machine did to a live run, measured: how late the load generator sent each
/// request against the scenario's plan, how much longer the live engine steps took than
/// the profile models, and how much the client's TTFT exceeds the server's (HTTP and
/// SSE on both sides of the connection).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveConditions {
    pub requests: usize,
    /// Send time minus planned time (seconds; the plan's first request at 0): median,
    /// 99th percentile and largest.
    pub send_lag_p50: f64,
    pub send_lag_p99: f64,
    pub send_lag_max: f64,
    /// Engine steps of the live replicas (with a batch), their total wall time and the
    /// total the profile models for the same steps.
    pub steps: u64,
    pub step_wall_seconds: f64,
    pub step_modelled_seconds: f64,
    /// Mean cold start of the live replicas (creation to ready), seconds.
    pub cold_start_mean: f64,
    /// Mean TTFT at the client minus mean TTFT at the server (edge to first token).
    pub client_ttft_overhead_mean: f64,
    /// Autoscaler decisions the live supervisor took over the run.
    pub decisions: u64,
}

impl LiveConditions {
    /// Wall time over modelled time of the live engine steps (1.0: as modelled).
    pub fn step_stretch(&self) -> f64 {
        if self.step_modelled_seconds > 0.0 {
            self.step_wall_seconds / self.step_modelled_seconds
        } else {
            1.0
        }
    }

    /// Whether the run is one the simulator can be compared with: `Err` says which
    /// bound the machine broke.
    pub fn check(&self, bounds: &ValidityBounds) -> Result<(), String> {
        let mut broken = Vec::new();
        if self.send_lag_p99 > bounds.send_lag_p99 {
            broken.push(format!(
                "send lag p99 {:.0} ms > {:.0} ms",
                self.send_lag_p99 * 1e3,
                bounds.send_lag_p99 * 1e3
            ));
        }
        if self.step_stretch() > bounds.step_stretch {
            broken.push(format!("step stretch {:.3} > {:.3}", self.step_stretch(), bounds.step_stretch));
        }
        if self.client_ttft_overhead_mean > bounds.client_ttft_overhead_mean {
            broken.push(format!(
                "client TTFT overhead {:.0} ms > {:.0} ms",
                self.client_ttft_overhead_mean * 1e3,
                bounds.client_ttft_overhead_mean * 1e3
            ));
        }
        if broken.is_empty() {
            Ok(())
        } else {
            Err(broken.join("; "))
        }
    }

    /// `profile` as this machine ran it: every modelled step time multiplied by the
    /// measured [`step_stretch`](Self::step_stretch) (prefill throughput divided by it),
    /// and the measured mean cold start. The simulator fed this replays the live run's
    /// machine, not an idle one.
    pub fn as_run(&self, profile: &SimProfile) -> SimProfile {
        let stretch = self.step_stretch();
        let mut p = profile.clone();
        p.decode_step_base = p.decode_step_base.mul_f64(stretch);
        p.decode_step_per_sequence = p.decode_step_per_sequence.mul_f64(stretch);
        p.decode_step_per_kv_token = p.decode_step_per_kv_token.mul_f64(stretch);
        p.prefill_tokens_per_second /= stretch;
        p.cold_start = Duration::from_secs_f64(self.cold_start_mean);
        p
    }

    /// One line for the test's output.
    pub fn render(&self) -> String {
        format!(
            "{} requests; send lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} steps: wall {:.2} s, modelled {:.2} s (stretch {:.3}); cold start {:.3} s (mean); client TTFT - server TTFT {:.1} ms (mean); {} decisions",
            self.requests,
            self.send_lag_p50 * 1e3,
            self.send_lag_p99 * 1e3,
            self.send_lag_max * 1e3,
            self.steps,
            self.step_wall_seconds,
            self.step_modelled_seconds,
            self.step_stretch(),
            self.cold_start_mean,
            self.client_ttft_overhead_mean * 1e3,
            self.decisions,
        )
    }
}

/// How far a live run may stray from an idle machine and still be compared (see
/// [`LiveConditions::check`]; docs/simulator.md, "Fidelity", says why these).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ValidityBounds {
    /// Seconds a request may be sent behind its planned time (99th percentile).
    pub send_lag_p99: f64,
    /// Live engine steps' wall time over their modelled time.
    pub step_stretch: f64,
    /// Mean client TTFT minus mean server TTFT, seconds.
    pub client_ttft_overhead_mean: f64,
}

impl Default for ValidityBounds {
    fn default() -> Self {
        Self {
            send_lag_p99: 0.25,
            step_stretch: 1.5,
            client_ttft_overhead_mean: 0.05,
        }
    }
}
