//! `swell-simulator`: Swell's autoscaling in virtual time. Swell's real policy code
//! ([`swell_autoscaler`]) drives replicas that follow the `sim` engine's performance model
//! ([`swell_workers::sim::PerformanceModel`]), over real traces or synthetic patterns,
//! beside baseline policies and an offline oracle. A day of trace runs in seconds. The
//! binary `swell-simulate` prints the comparison table and writes `summary.json` and plots
//! (usage and results: docs/simulator.md).
//!
//! No HTTP, no actors, no Redis: it depends on the autoscaler, the `sim` engine's model
//! (`swell-workers`) and file and plot crates. The load generator (`swell-loadtest`)
//! depends on it for the trace readers, percentiles and plot helpers, never the other way.
//!
//! # Layout
//!
//! - [`workload`]: requests from the Azure 2023 CSV, the Mooncake trace (with prompt
//!   block hashes), ServeGen per-tenant windows (with ShareGPT lengths) or synthetic
//!   patterns.
//! - [`trace`]: the trace files (Azure trace, ShareGPT lengths) and where the
//!   repository keeps them (`loadtests/traces/`).
//! - [`mooncake`]: the Mooncake trace and the mapping of its 512-token block ids onto
//!   the simulator's KV blocks.
//! - [`routing`]: [`RoutingSettings`], the routing policy (from `swell-router`), the
//!   promise bound and the block size of a run.
//! - [`block_cache`]: a replica's prefix cache of KV blocks, LRU with pinning.
//! - [`waiting`]: the waiting jobs: a shared queue and the jobs promised to each
//!   replica.
//! - [`engine`]: the discrete-event simulator (queue, routing, replicas, continuous
//!   batching, prefix caching, cold starts, the policy's ticks).
//! - [`policies`]: the [`ScalingPolicy`] trait, Swell and the
//!   baselines, each with the defaults it uses and where they come from.
//! - [`oracle`]: the perfect-foresight lower bound on cost.
//! - [`summary`]: SLO attainment, cost, percentiles, cache hits, the markdown tables.
//! - [`stats`]: the nearest-rank percentile.
//! - [`plot`]: SVG and PNG plots.
//! - [`fidelity`]: the same scenario live and simulated, compared within stated
//!   tolerances (the simulator's side; `tests/fidelity.rs` runs it).
//! - [`cli`]: what the command-line tools share.
//! - here: [`compare`], every policy of a [`Comparison`] over one workload.
//!
//! SLO defaults: TTFT <= 2 s and mean inter-token latency <= 100 ms per request; both
//! configurable. Cost is replica-seconds (GPU-seconds = replica-seconds ×
//! `gpus_per_replica`; CPU profiles have no GPU-seconds).

pub mod block_cache;
pub mod cli;
pub mod engine;
pub mod fidelity;
pub mod mooncake;
pub mod oracle;
pub mod plot;
pub mod policies;
pub mod routing;
pub mod stats;
pub mod summary;
pub mod trace;
pub mod waiting;
pub mod workload;

use swell_autoscaler::AutoscalingPolicy;
use swell_workers::sim::SimProfile;

use engine::{RunResult, Simulator};
use oracle::Capacity;
use policies::{Hpa, Kpa, RayServe, ScalingPolicy, Scheduled, Static, Swell};
pub use routing::RoutingSettings;
use workload::SimRequest;

/// The policies a run can compare, by name.
pub const POLICY_NAMES: &[&str] = &[
    "swell",
    "static-peak",
    "knative-kpa",
    "ray-serve",
    "k8s-hpa",
    "fireworks",
    "oracle",
];

/// What one comparison needs.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub profile: SimProfile,
    pub ttft_target: f64,
    pub itl_target: f64,
    /// Swell's policy (default: [`Swell::default_policy`]).
    pub swell_policy: AutoscalingPolicy,
    /// Policy names from [`POLICY_NAMES`].
    pub policies: Vec<String>,
    /// Replicas are paid until this time (seconds; at least the last arrival and the end
    /// of the oracle's plan, and every run lasts until its last request finished).
    pub horizon: Option<f64>,
    /// Start every policy (but the oracle, which plans its own) with the replicas the
    /// trace's first minute needs, warm, as if the trace continued a steady state; off:
    /// every autoscaler starts from its own initial count (mostly 0) at t = 0.
    pub warm_start: bool,
    /// How jobs are routed to replicas and prompt prefixes cached (default: `any`).
    pub routing: RoutingSettings,
}

/// The outcome of a comparison: one run per policy.
#[derive(Debug)]
pub struct ComparisonResult {
    pub capacity: Capacity,
    pub oracle_replica_seconds: f64,
    pub runs: Vec<RunResult>,
}

/// Runs every policy of `comparison` over `requests`.
pub fn compare(requests: &[SimRequest], comparison: &Comparison) -> ComparisonResult {
    let profile = &comparison.profile;
    let capacity = Capacity::new(requests, profile, comparison.itl_target);
    let demand = oracle::demand(requests, profile, &capacity);
    let bucket = comparison.ttft_target.ceil().max(1.0) as usize;
    let plan = oracle::plan(&demand, profile.cold_start.as_secs_f64(), bucket);
    let horizon = requests
        .iter()
        .map(|r| r.arrival)
        .fold(plan.schedule.len() as f64, f64::max)
        .max(comparison.horizon.unwrap_or(0.0));
    // One thread per policy: the runs are independent and deterministic.
    let runs = std::thread::scope(|scope| {
        let handles: Vec<_> = comparison
            .policies
            .iter()
            .map(|name| {
                let (capacity, plan) = (&capacity, &plan);
                scope.spawn(move || {
                    let mut policy = build_policy(name, comparison, capacity, plan);
                    let warm = if comparison.warm_start && name != "oracle" {
                        plan.first_minute
                    } else {
                        0
                    };
                    Simulator::new(requests, profile, policy.as_mut())
                        .warm_start(warm)
                        .routing(comparison.routing)
                        .run(Some(horizon))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    ComparisonResult {
        capacity,
        oracle_replica_seconds: plan.replica_seconds,
        runs,
    }
}

fn build_policy(
    name: &str,
    comparison: &Comparison,
    capacity: &Capacity,
    plan: &oracle::OraclePlan,
) -> Box<dyn ScalingPolicy> {
    match name {
        "swell" => Box::new(
            Swell::with_capacity(
                "swell",
                comparison.swell_policy.clone(),
                &comparison.profile,
            )
            .with_expected_cold_start(comparison.profile.cold_start),
        ),
        "static-peak" => Box::new(Static {
            replicas: plan.peak_minute,
        }),
        "knative-kpa" => Box::new(Kpa::new(capacity.batch_capacity)),
        "ray-serve" => Box::new(RayServe::new()),
        "k8s-hpa" => Box::new(Hpa::new(capacity.batch_capacity)),
        "fireworks" => Box::new(Swell::fireworks(f64::from(capacity.batch_capacity))),
        "oracle" => Box::new(Scheduled {
            name: "oracle".into(),
            schedule: plan.schedule.clone(),
        }),
        other => panic!("unknown policy {other:?}"),
    }
}

#[cfg(test)]
mod routing_tests;
#[cfg(test)]
mod tests;
