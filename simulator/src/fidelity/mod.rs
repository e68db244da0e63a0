//! Fidelity: does the simulator predict what the live server does?
//!
//! A short [`Scenario`] (phases of Poisson arrivals, a `sim` profile, an autoscaling
//! policy) is run twice: on a live server (the `sim` engine sleeping its modelled step
//! times, real HTTP/SSE, the real supervisor and autoscaler, in real time; see
//! `tests/fidelity.rs`) and in the simulator ([`simulate`]: the same `Autoscaler` code
//! through [`Swell`](crate::policies::Swell), the same performance model, virtual time). The simulator replays the
//! requests *as the live run sent them*: each request's send time and its token counts
//! as the server reported them (`usage`), so the workloads are identical.
//!
//! [`compare`] then checks, with [`Tolerances`]:
//!
//! - **replica timeline**: at every whole second of the run, the replica count (ready +
//!   starting, as the autoscaler counts it, from each run's scale events) of one run is
//!   within `replicas` of the other's somewhere within `replica_time_slack` seconds (the
//!   live supervisor ticks on its own 1 s phase, which the simulator cannot know);
//! - **scale events**: every scale event of either run is matched by the other run
//!   within `scale_event_seconds`: a change in the same direction to a count within
//!   `replicas` of the event's new count, or a count that stays within `replicas` of it
//!   all that time (the other run was there already);
//! - **latency**: TTFT and end-to-end p50 / p90 / p99 within
//!   `latency_absolute + latency_relative × simulated`.
//!
//! A live run on a shared machine is not a run on an idle one: [`LiveConditions`] holds
//! what the machine did to it (send lag against the plan, the engine steps' wall time
//! against the profile's model, the cold starts, the client's TTFT overhead),
//! [`LiveConditions::as_run`] gives the simulator the profile as the machine ran it, and
//! [`LiveConditions::check`] refuses a run beyond [`ValidityBounds`] (the test re-runs it).
//!
//! This module is the simulator's side and reads no live data. The live side (an
//! [`Observation`] from a load-test report and the deployment's status, the workload as
//! sent, [`LiveConditions`] from `/metrics`) is `swell_loadtest::fidelity`, which
//! depends on this crate.
//!
//! The defaults and why they are what they are: docs/simulator.md, "Fidelity".

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};
use serde::Serialize;
use serde_json::{json, Value};
use swell_autoscaler::{AutoscalingPolicy, LoadSample, ReplicaCounts};
use swell_workers::sim::{SimConfig, SimProfile};

use crate::engine::Simulator;
use crate::policies::{ScalingPolicy, Swell};
use crate::stats::percentile;
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

/// A change of the replica count, seconds since the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ObservedScaleEvent {
    pub t: f64,
    pub from: u32,
    pub to: u32,
}

/// One request's latencies, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ObservedRequest {
    pub arrival: f64,
    pub ttft: f64,
    pub e2e: f64,
}

/// What one run (live or simulated) did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    /// Oldest first; the count starts at 0.
    pub scale_events: Vec<ObservedScaleEvent>,
    pub requests: Vec<ObservedRequest>,
}

impl Observation {
    /// The replica count (ready + starting) at `t`: the `to` of the last event at or
    /// before `t`.
    pub fn capacity_at(&self, t: f64) -> u32 {
        self.scale_events
            .iter()
            .take_while(|e| e.t <= t)
            .last()
            .map_or(0, |e| e.to)
    }

    /// Every count the run held at some time within `[from, to]`.
    fn counts_within(&self, from: f64, to: f64) -> Vec<u32> {
        let mut counts = vec![self.capacity_at(from)];
        counts.extend(
            self.scale_events
                .iter()
                .filter(|e| e.t > from && e.t <= to)
                .map(|e| e.to),
        );
        counts
    }
}

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

/// Wraps a policy and records every change the simulator made.
struct Recording<'a> {
    inner: &'a mut dyn ScalingPolicy,
    events: Vec<ObservedScaleEvent>,
}

impl ScalingPolicy for Recording<'_> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn tick(&self) -> Duration {
        self.inner.tick()
    }
    fn initial_replicas(&self) -> u32 {
        self.inner.initial_replicas()
    }
    fn per_replica_cap(&self) -> Option<u32> {
        self.inner.per_replica_cap()
    }
    fn decide(&mut self, now: Duration, sample: &LoadSample, counts: ReplicaCounts) -> u32 {
        self.inner.decide(now, sample, counts)
    }
    fn scaled(&mut self, now: Duration, from: u32, to: u32) {
        self.events.push(ObservedScaleEvent {
            t: now.as_secs_f64(),
            from,
            to,
        });
        self.inner.scaled(now, from, to);
    }
}

/// Runs `requests` through the simulator with Swell's policy, from zero replicas.
///
/// The policy keeps ticking until `horizon` seconds (and every request finished), so a
/// scale-down after the last request is seen.
pub fn simulate(
    requests: &[SimRequest],
    profile: &SimProfile,
    policy: AutoscalingPolicy,
    horizon: f64,
) -> Observation {
    // As the live supervisor builds it: the capacity model from the engine's description
    // (SLO mode and `auto` targets follow it) and the expected cold start.
    let mut swell =
        Swell::with_capacity("swell", policy, profile).with_expected_cold_start(profile.cold_start);
    let mut recording = Recording {
        inner: &mut swell,
        events: Vec::new(),
    };
    let result = Simulator::new(requests, profile, &mut recording).run(Some(horizon));
    let requests = result
        .outcomes
        .iter()
        .map(|o| ObservedRequest {
            arrival: o.arrival,
            ttft: o.ttft(),
            e2e: o.finish - o.arrival,
        })
        .collect();
    Observation {
        scale_events: recording.events,
        requests,
    }
}

/// How close the two runs must be.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerances {
    /// Replica count difference allowed at every whole second.
    pub replicas: u32,
    /// The other run's count is looked at within this many seconds of each second.
    pub replica_time_slack: f64,
    /// A scale event must be matched by the other run within this many seconds (see
    /// the module docs).
    pub scale_event_seconds: f64,
    /// Latency percentiles: `|live - simulated| <= absolute + relative * simulated`.
    pub latency_absolute: f64,
    pub latency_relative: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Self {
            replicas: 1,
            replica_time_slack: 1.0,
            scale_event_seconds: 3.0,
            latency_absolute: 0.25,
            latency_relative: 0.25,
        }
    }
}

/// One comparison and its verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub live: String,
    pub simulated: String,
    pub allowed: String,
    pub pass: bool,
}

/// Every check of one comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FidelityReport {
    pub tolerances: Tolerances,
    pub checks: Vec<Check>,
}

impl FidelityReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }

    /// A markdown table of the checks.
    pub fn render(&self) -> String {
        let mut s = String::from("| check | live | simulated | allowed | |\n|---|---:|---:|---|---|\n");
        for c in &self.checks {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                c.name,
                c.live,
                c.simulated,
                c.allowed,
                if c.pass { "ok" } else { "FAIL" }
            ));
        }
        s
    }
}

/// The largest difference, over the whole seconds of `[0, horizon]`, between `a`'s count
/// and the closest count `b` held within the slack; and the seconds over `allowed`.
fn replica_gap(a: &Observation, b: &Observation, horizon: f64, slack: f64, allowed: u32) -> (u32, Vec<u32>) {
    let mut worst = 0;
    let mut over = Vec::new();
    for second in 0..=horizon.floor() as u32 {
        let t = f64::from(second);
        let count = a.capacity_at(t);
        let gap = b
            .counts_within(t - slack, t + slack)
            .into_iter()
            .map(|c| c.abs_diff(count))
            .min()
            .unwrap_or(count);
        worst = worst.max(gap);
        if gap > allowed {
            over.push(second);
        }
    }
    (worst, over)
}

/// Events of `a` that `b` does not match. An event is matched when `b`, within `window`
/// seconds of it, changes in the same direction to a count within `replicas` of the
/// event's new count (one run may take in two steps what the other takes in one: 1→3
/// is matched by 1→2, 2→3), or when `b`'s count stays within `replicas` of the new count
/// for that whole time (it was there already: a run one replica higher takes one more
/// step down).
fn unmatched(a: &Observation, b: &Observation, window: f64, replicas: u32) -> Vec<ObservedScaleEvent> {
    let up = |e: &ObservedScaleEvent| e.to > e.from;
    a.scale_events
        .iter()
        .filter(|e| {
            let same_way = b.scale_events.iter().any(|other| {
                (other.t - e.t).abs() <= window && up(other) == up(e) && other.to.abs_diff(e.to) <= replicas
            });
            let already_there = b
                .counts_within(e.t - window, e.t + window)
                .iter()
                .all(|c| c.abs_diff(e.to) <= replicas);
            !(same_way || already_there)
        })
        .copied()
        .collect()
}

fn events_text(events: &[ObservedScaleEvent]) -> String {
    events
        .iter()
        .map(|e| format!("{}→{} at {:.1} s", e.from, e.to, e.t))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compares a live run with the simulated one over `[0, horizon]` seconds.
pub fn compare(live: &Observation, sim: &Observation, horizon: f64, tol: &Tolerances) -> FidelityReport {
    let mut checks = Vec::new();
    checks.push(Check {
        name: "requests served".into(),
        live: live.requests.len().to_string(),
        simulated: sim.requests.len().to_string(),
        allowed: "equal".into(),
        pass: live.requests.len() == sim.requests.len(),
    });
    let peak = |o: &Observation| o.scale_events.iter().map(|e| e.to).max().unwrap_or(0);
    checks.push(Check {
        name: "peak replicas".into(),
        live: peak(live).to_string(),
        simulated: peak(sim).to_string(),
        allowed: format!("± {}", tol.replicas),
        pass: peak(live).abs_diff(peak(sim)) <= tol.replicas,
    });
    let (gap_ls, over_ls) = replica_gap(live, sim, horizon, tol.replica_time_slack, tol.replicas);
    let (gap_sl, over_sl) = replica_gap(sim, live, horizon, tol.replica_time_slack, tol.replicas);
    let mut over: Vec<u32> = over_ls.into_iter().chain(over_sl).collect();
    over.sort_unstable();
    over.dedup();
    checks.push(Check {
        name: "replicas at every second (largest gap; seconds over)".into(),
        live: format!("{} replica(s)", gap_ls.max(gap_sl)),
        simulated: if over.is_empty() {
            "none over".into()
        } else {
            format!("over at {over:?} s")
        },
        allowed: format!("± {} within ± {} s", tol.replicas, tol.replica_time_slack),
        pass: over.is_empty(),
    });
    let live_unmatched = unmatched(live, sim, tol.scale_event_seconds, tol.replicas);
    let sim_unmatched = unmatched(sim, live, tol.scale_event_seconds, tol.replicas);
    checks.push(Check {
        name: "scale events (count; unmatched)".into(),
        live: format!(
            "{}; {}",
            live.scale_events.len(),
            if live_unmatched.is_empty() { "all matched".into() } else { events_text(&live_unmatched) }
        ),
        simulated: format!(
            "{}; {}",
            sim.scale_events.len(),
            if sim_unmatched.is_empty() { "all matched".into() } else { events_text(&sim_unmatched) }
        ),
        allowed: format!(
            "the other run moves the same way to ± {0} of the new count, or stays within ± {0} of it, within ± {1} s",
            tol.replicas, tol.scale_event_seconds
        ),
        pass: live_unmatched.is_empty() && sim_unmatched.is_empty(),
    });
    for (name, pick) in [
        ("TTFT", (|r: &ObservedRequest| r.ttft) as fn(&ObservedRequest) -> f64),
        ("end-to-end", |r: &ObservedRequest| r.e2e),
    ] {
        let live_values: Vec<f64> = live.requests.iter().map(pick).collect();
        let sim_values: Vec<f64> = sim.requests.iter().map(pick).collect();
        for p in [50.0, 90.0, 99.0] {
            let (l, s) = (
                percentile(&live_values, p).unwrap_or(0.0),
                percentile(&sim_values, p).unwrap_or(0.0),
            );
            let allowed = tol.latency_absolute + tol.latency_relative * s;
            checks.push(Check {
                name: format!("{name} p{p:.0}"),
                live: format!("{l:.3} s"),
                simulated: format!("{s:.3} s"),
                allowed: format!("± {allowed:.3} s"),
                pass: (l - s).abs() <= allowed,
            });
        }
    }
    FidelityReport {
        tolerances: *tol,
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t: f64, from: u32, to: u32) -> ObservedScaleEvent {
        ObservedScaleEvent { t, from, to }
    }

    fn observation(events: &[(f64, u32, u32)], latency: f64) -> Observation {
        Observation {
            scale_events: events.iter().map(|&(t, f, to)| event(t, f, to)).collect(),
            requests: (0..100)
                .map(|i| ObservedRequest {
                    arrival: f64::from(i) * 0.5,
                    ttft: latency * (1.0 + f64::from(i % 10) / 10.0),
                    e2e: 2.0 * latency * (1.0 + f64::from(i % 10) / 10.0),
                })
                .collect(),
        }
    }

    const EVENTS: &[(f64, u32, u32)] = &[(0.1, 0, 1), (12.0, 1, 3), (17.0, 3, 4), (40.0, 4, 2), (55.0, 2, 0)];

    #[test]
    fn identical_runs_pass_every_check() {
        let a = observation(EVENTS, 0.3);
        let report = compare(&a, &a.clone(), 60.0, &Tolerances::default());
        assert!(report.passed(), "{}", report.render());
        assert_eq!(report.checks.len(), 4 + 6);
    }

    #[test]
    fn a_tick_of_phase_and_small_latency_noise_pass() {
        let live = observation(&[(0.6, 0, 1), (12.8, 1, 3), (17.9, 3, 4), (40.5, 4, 2), (55.7, 2, 0)], 0.33);
        let sim = observation(EVENTS, 0.3);
        let report = compare(&live, &sim, 60.0, &Tolerances::default());
        assert!(report.passed(), "{}", report.render());
    }

    #[test]
    fn late_scale_up_fails_the_timeline_and_event_checks() {
        // Live reaches 3 five seconds after the simulator.
        let live = observation(&[(0.1, 0, 1), (17.0, 1, 3), (18.0, 3, 4), (40.0, 4, 2), (55.0, 2, 0)], 0.3);
        let sim = observation(EVENTS, 0.3);
        let report = compare(&live, &sim, 60.0, &Tolerances::default());
        let failed: Vec<&str> = report.checks.iter().filter(|c| !c.pass).map(|c| c.name.as_str()).collect();
        assert_eq!(
            failed,
            [
                "replicas at every second (largest gap; seconds over)",
                "scale events (count; unmatched)"
            ],
            "{}",
            report.render()
        );
        assert!(report.render().contains("FAIL"));
    }

    #[test]
    fn a_run_one_replica_higher_with_one_more_step_passes() {
        // A live run of the step scenario against its simulation (rounded): the server
        // peaked one replica lower, so it took one step less on the way down.
        let live = observation(
            &[(0.0, 0, 1), (14.0, 1, 2), (16.0, 2, 3), (20.0, 3, 4), (22.0, 4, 5), (32.0, 5, 4), (37.0, 4, 3), (48.0, 3, 2), (55.0, 2, 1), (59.0, 1, 0)],
            0.3,
        );
        let sim = observation(
            &[(0.0, 0, 1), (15.0, 1, 2), (16.0, 2, 3), (20.0, 3, 4), (21.0, 4, 6), (32.0, 6, 5), (37.0, 5, 4), (42.0, 4, 3), (47.0, 3, 2), (52.0, 2, 1), (59.0, 1, 0)],
            0.3,
        );
        let report = compare(&live, &sim, 70.0, &Tolerances::default());
        assert!(report.passed(), "{}", report.render());
    }

    #[test]
    fn a_missing_scale_to_zero_fails() {
        let live = observation(&EVENTS[..4], 0.3);
        let sim = observation(EVENTS, 0.3);
        let report = compare(&live, &sim, 60.0, &Tolerances::default());
        assert!(!report.passed());
        let events = report.checks.iter().find(|c| c.name.starts_with("scale events")).unwrap();
        assert!(!events.pass && events.simulated.contains("2→0 at 55.0 s"), "{}", report.render());
    }

    #[test]
    fn latency_outside_the_tolerance_fails_and_names_the_percentile() {
        let live = observation(EVENTS, 0.6);
        let sim = observation(EVENTS, 0.3);
        let report = compare(&live, &sim, 60.0, &Tolerances::default());
        let failed: Vec<&str> = report.checks.iter().filter(|c| !c.pass).map(|c| c.name.as_str()).collect();
        assert!(failed.contains(&"TTFT p50") && failed.contains(&"end-to-end p99"), "{failed:?}");
        // A lost request fails the count.
        let mut fewer = observation(EVENTS, 0.3);
        fewer.requests.pop();
        let report = compare(&fewer, &sim, 60.0, &Tolerances::default());
        assert!(!report.checks[0].pass);
    }

    #[test]
    fn a_run_the_machine_broke_is_invalid_and_says_why() {
        let ok = LiveConditions {
            requests: 10,
            send_lag_p50: 0.002,
            send_lag_p99: 0.05,
            send_lag_max: 0.06,
            steps: 100,
            step_wall_seconds: 2.4,
            step_modelled_seconds: 2.0,
            cold_start_mean: 2.0,
            client_ttft_overhead_mean: 0.01,
            decisions: 60,
        };
        let bounds = ValidityBounds::default();
        assert_eq!(ok.check(&bounds), Ok(()));
        let late = LiveConditions { send_lag_p99: 0.4, ..ok.clone() };
        assert!(late.check(&bounds).unwrap_err().contains("send lag p99 400 ms"));
        let slow = LiveConditions { step_wall_seconds: 3.2, ..ok.clone() };
        assert!(slow.check(&bounds).unwrap_err().contains("step stretch 1.600"));
        let starved = LiveConditions { client_ttft_overhead_mean: 0.2, step_wall_seconds: 3.2, ..ok.clone() };
        let why = starved.check(&bounds).unwrap_err();
        assert!(why.contains("step stretch") && why.contains("client TTFT overhead 200 ms"), "{why}");
        // No steps measured: nothing to stretch.
        let none = LiveConditions { step_wall_seconds: 0.0, step_modelled_seconds: 0.0, ..ok };
        assert_eq!(none.step_stretch(), 1.0);
    }

    #[test]
    fn the_simulator_on_a_stretched_machine_is_slower_and_the_comparison_sees_it() {
        // What a 20 % slower machine does to the step scenario's latencies is far more
        // than the tolerance at the peak (queues amplify it): the correction matters, and
        // a simulator left on the idle profile fails against such a run.
        let scenario = Scenario::step();
        let profile = scenario.profile().unwrap();
        let requests = scenario.requests();
        let slow = LiveConditions {
            requests: requests.len(),
            send_lag_p50: 0.0,
            send_lag_p99: 0.0,
            send_lag_max: 0.0,
            steps: 1,
            step_wall_seconds: 1.2,
            step_modelled_seconds: 1.0,
            cold_start_mean: 2.0,
            client_ttft_overhead_mean: 0.0,
            decisions: 0,
        };
        let horizon = scenario.duration();
        let as_run = simulate(&requests, &slow.as_run(&profile), scenario.policy().unwrap(), horizon);
        let idle = simulate(&requests, &profile, scenario.policy().unwrap(), horizon);
        let e2e = |o: &Observation| percentile(&o.requests.iter().map(|r| r.e2e).collect::<Vec<_>>(), 50.0).unwrap();
        assert!(e2e(&as_run) > 1.15 * e2e(&idle), "{} vs {}", e2e(&as_run), e2e(&idle));
        assert!(compare(&as_run, &as_run.clone(), horizon, &Tolerances::default()).passed());
    }

    #[test]
    fn capacity_follows_the_events() {
        let o = observation(EVENTS, 0.3);
        assert_eq!(o.capacity_at(0.0), 0);
        assert_eq!(o.capacity_at(0.1), 1);
        assert_eq!(o.capacity_at(16.9), 3);
        assert_eq!(o.capacity_at(100.0), 0);
        assert_eq!(o.counts_within(11.0, 17.5), vec![1, 3, 4]);
    }

    #[test]
    fn the_step_scenario_is_valid_and_exercises_every_kind_of_decision_in_the_simulator() {
        let scenario = Scenario::step();
        let profile = scenario.profile().unwrap();
        assert_eq!(profile.max_batch_size, 8);
        assert_eq!(profile.cold_start, Duration::from_secs(2));
        let policy = scenario.policy().unwrap();
        let requests = scenario.requests();
        // Deterministic, and about the planned count.
        assert_eq!(requests, scenario.requests());
        let planned: f64 = scenario.phases.iter().map(|(s, rate)| s * rate).sum();
        let n = requests.len() as f64;
        assert!((n / planned - 1.0).abs() < 0.15, "{n} requests, {planned} planned");
        assert!(requests.iter().all(|r| r.arrival < 50.0));
        let sim = simulate(&requests, &profile, policy, scenario.duration());
        assert_eq!(sim.requests.len(), requests.len());
        let first = sim.scale_events.first().unwrap();
        assert_eq!((first.from, first.to), (0, 1), "{:?}", sim.scale_events);
        let peak = sim.scale_events.iter().map(|e| e.to).max().unwrap();
        // Above the steady need (about 2): the queue built during the cold starts.
        assert!((3..=5).contains(&peak), "{:?}", sim.scale_events);
        assert!(sim.scale_events.iter().any(|e| e.to < e.from && e.to > 0), "steps down: {:?}", sim.scale_events);
        let last = sim.scale_events.last().unwrap();
        assert_eq!(last.to, 0, "back to zero: {:?}", sim.scale_events);
        assert!(last.t < scenario.duration(), "within the run: {:?}", sim.scale_events);
        // The first request waited for a cold start.
        assert!(sim.requests[0].ttft >= 2.0, "{:?}", sim.requests[0]);
    }

    #[test]
    fn the_trace_file_replays_the_planned_arrivals() {
        let scenario = Scenario::step();
        let path = std::env::temp_dir().join(format!("swell-fidelity-{}.csv", std::process::id()));
        scenario.write_trace(&path).unwrap();
        let rows = crate::trace::load_trace(&path).unwrap();
        std::fs::remove_file(&path).ok();
        let planned = scenario.requests();
        assert_eq!(rows.len(), planned.len());
        for (row, request) in rows.iter().zip(&planned) {
            let at = (row.timestamp_us - rows[0].timestamp_us) as f64 / 1e6;
            assert!((at - (request.arrival - planned[0].arrival)).abs() < 1e-5);
            assert_eq!((row.prompt_tokens, row.output_tokens), (48, 32));
        }
    }
}
