//! The fidelity scenario: phases of Poisson arrivals, fixed lengths, the deployment's
//! `sim` block and autoscaling policy; what the live test deploys and replays.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};
use serde_json::{json, Value};
use swell_autoscaler::AutoscalingPolicy;
use swell_workers::sim::{SimConfig, SimProfile};

use crate::workload::SimRequest;

/// A fidelity scenario: arrivals, lengths, the deployment's `sim` block and policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Phases of Poisson arrivals, in order: (seconds, requests per second).
    pub phases: Vec<(f64, f64)>,
    /// Prompt length asked for (words; the server reports the token count).
    pub prompt_words: u32,
    /// Output tokens per request (`max_tokens` with `ignore_eos`).
    pub output_tokens: u32,
    pub seed: u64,
    /// The deployment's `sim` block (a built-in profile and overrides).
    pub sim: Value,
    /// The deployment's `autoscaling` block.
    pub autoscaling: Value,
}

impl Scenario {
    /// The step scenario of the fidelity test (70 s): light load (1 replica), a step up
    /// (to 4 while the queue built during the cold starts drains, then back towards 2),
    /// a step down, then silence (back to 0 at about 60 s). The step is sized so that
    /// no decision sits on a knife edge: at 10 requests/s the backlog of the first
    /// seconds made the peak 4 or 6 from one live run to the next (and in the simulator). The profile
    /// is slow on purpose (20 ms decode steps, batches of 8, a 2 s cold start), so the
    /// live server's own overheads stay small against the modelled times and the run
    /// stays light for a 2-core machine; the policy's windows are seconds, not minutes,
    /// so every kind of decision happens within the run.
    pub fn step() -> Self {
        Self {
            phases: vec![(10.0, 2.0), (25.0, 8.0), (15.0, 4.0), (20.0, 0.0)],
            prompt_words: 48,
            output_tokens: 32,
            // Its arrivals peak at 4 replicas in the simulator, and still do with steps
            // 20 % slower or cold starts 20 % longer.
            seed: 27,
            sim: json!({
                "profile": "smollm2-135m-cpu",
                "prefill_tokens_per_second": 20000.0,
                "decode_step_base": "20ms",
                "decode_step_per_sequence": "2ms",
                "decode_step_per_kv_token": "0ns",
                "max_batch_size": 8,
                "cold_start": "2s",
            }),
            autoscaling: json!({
                "min_replicas": 0,
                "max_replicas": 6,
                "metrics_window": "5s",
                "scale_up_window": "3s",
                "scale_down_window": "10s",
                "scale_to_zero_window": "8s",
                "load_targets": {"concurrent_requests": 4},
                "velocity": {
                    "scale_up": {"replicas": 2, "period": "5s"},
                    "scale_down": {"replicas": 1, "period": "5s"}
                }
            }),
        }
    }

    /// Seconds from the first phase's start to the last phase's end.
    pub fn duration(&self) -> f64 {
        self.phases.iter().map(|p| p.0).sum()
    }

    /// The planned arrivals: seeded Poisson arrivals in each phase, fixed lengths.
    pub fn requests(&self) -> Vec<SimRequest> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut out = Vec::new();
        let mut start = 0.0;
        for &(length, rate) in &self.phases {
            let end = start + length;
            if let (true, Ok(gaps)) = (rate > 0.0, Exp::new(rate)) {
                let mut t = start;
                loop {
                    t += gaps.sample(&mut rng);
                    if t >= end {
                        break;
                    }
                    out.push(SimRequest {
                        arrival: t,
                        prompt_tokens: self.prompt_words,
                        output_tokens: self.output_tokens,
                        ..SimRequest::default()
                    });
                }
            }
            start = end;
        }
        out
    }

    /// The profile the `sim` block resolves to (what the live deployment runs).
    pub fn profile(&self) -> anyhow::Result<SimProfile> {
        let config = SimConfig::from_json(self.sim.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.resolve().map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The policy the `autoscaling` block deserializes to, validated.
    pub fn policy(&self) -> anyhow::Result<AutoscalingPolicy> {
        let policy: AutoscalingPolicy =
            serde_json::from_value(self.autoscaling.clone()).context("scenario autoscaling")?;
        policy.validate().map_err(anyhow::Error::msg)?;
        Ok(policy)
    }

    /// The admin API body that creates the scenario's deployment.
    pub fn deployment_body(&self) -> Value {
        json!({
            "engine": "sim",
            "sim": self.sim,
            "autoscaling": self.autoscaling,
            "max_tokens_default": self.output_tokens,
        })
    }

    /// Writes the planned arrivals as an Azure-format trace (`TIMESTAMP` in seconds,
    /// `ContextTokens`, `GeneratedTokens`) for `swell-loadtest --trace`.
    pub fn write_trace(&self, path: &Path) -> anyhow::Result<()> {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        );
        writeln!(file, "TIMESTAMP,ContextTokens,GeneratedTokens")?;
        for r in self.requests() {
            writeln!(file, "{:.6},{},{}", r.arrival, r.prompt_tokens, r.output_tokens)?;
        }
        file.flush()?;
        Ok(())
    }
}
