//! Per-policy figures (SLO attainment, nearest-rank percentiles from [`crate::stats`],
//! cost, prefix-cache hits) and the markdown tables: the policy comparison and the
//! routing comparison.

use serde::Serialize;

use super::engine::RunResult;
use super::stats::Sorted;
use super::ComparisonResult;

/// The figures of one policy's run.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    pub policy: String,
    /// The routing policy: `any`, `cache-aware` or `session`.
    pub routing: String,
    pub requests: usize,
    /// Share of requests with TTFT <= target and mean ITL <= target.
    pub slo_attainment: f64,
    pub ttft_p50: f64,
    pub ttft_p90: f64,
    pub ttft_p99: f64,
    pub itl_p50: f64,
    pub itl_p99: f64,
    pub queue_p50: f64,
    pub queue_p90: f64,
    pub queue_p99: f64,
    pub replica_seconds: f64,
    /// `None` for CPU profiles.
    pub gpu_seconds: Option<f64>,
    pub cold_starts: u32,
    /// Requests that arrived at zero replicas, and their median TTFT (scale from zero).
    pub at_zero_requests: usize,
    pub at_zero_ttft_p50: f64,
    pub mean_replicas: f64,
    pub peak_replicas: u32,
    /// Replica-seconds over the oracle's plan.
    pub cost_vs_oracle: f64,
    pub prompt_tokens: u64,
    /// Prompt tokens found in the prefix cache: prefill saved.
    pub cached_tokens: u64,
    /// `cached_tokens / prompt_tokens`.
    pub cache_hit_rate: f64,
}

/// The nearest-rank percentile, 0 without values (the JSON holds numbers).
fn percentile(sorted: &Sorted, p: f64) -> f64 {
    sorted.percentile(p).unwrap_or(0.0)
}

pub fn summarize(
    run: &RunResult,
    ttft_target: f64,
    itl_target: f64,
    gpus_per_replica: u32,
    oracle_replica_seconds: f64,
) -> PolicySummary {
    let o = &run.outcomes;
    let met = o
        .iter()
        .filter(|r| r.ttft() <= ttft_target && r.mean_itl() <= itl_target)
        .count();
    let ttft = Sorted::new(o.iter().map(|r| r.ttft()));
    let itl = Sorted::new(o.iter().map(|r| r.mean_itl()));
    let queue = Sorted::new(o.iter().map(|r| r.queue_delay()));
    let at_zero = Sorted::new(o.iter().filter(|r| r.at_zero).map(|r| r.ttft()));
    let capacity = |p: &super::engine::TimelinePoint| p.ready + p.starting;
    let n = run.timeline.len().max(1) as f64;
    let prompt_tokens: u64 = o.iter().map(|r| u64::from(r.prompt_tokens)).sum();
    let cached_tokens: u64 = o.iter().map(|r| u64::from(r.cached_tokens)).sum();
    PolicySummary {
        policy: run.policy.clone(),
        routing: run.routing.to_string(),
        requests: o.len(),
        slo_attainment: if o.is_empty() {
            1.0
        } else {
            met as f64 / o.len() as f64
        },
        ttft_p50: percentile(&ttft, 50.0),
        ttft_p90: percentile(&ttft, 90.0),
        ttft_p99: percentile(&ttft, 99.0),
        itl_p50: percentile(&itl, 50.0),
        itl_p99: percentile(&itl, 99.0),
        queue_p50: percentile(&queue, 50.0),
        queue_p90: percentile(&queue, 90.0),
        queue_p99: percentile(&queue, 99.0),
        replica_seconds: run.replica_seconds,
        gpu_seconds: (gpus_per_replica > 0)
            .then(|| run.replica_seconds * f64::from(gpus_per_replica)),
        cold_starts: run.cold_starts,
        at_zero_requests: at_zero.len(),
        at_zero_ttft_p50: percentile(&at_zero, 50.0),
        mean_replicas: run
            .timeline
            .iter()
            .map(|p| f64::from(capacity(p)))
            .sum::<f64>()
            / n,
        peak_replicas: run.timeline.iter().map(capacity).max().unwrap_or(0),
        cost_vs_oracle: if oracle_replica_seconds > 0.0 {
            run.replica_seconds / oracle_replica_seconds
        } else {
            f64::NAN
        },
        prompt_tokens,
        cached_tokens,
        cache_hit_rate: if prompt_tokens > 0 {
            cached_tokens as f64 / prompt_tokens as f64
        } else {
            0.0
        },
    }
}

pub fn summarize_all(
    result: &ComparisonResult,
    ttft_target: f64,
    itl_target: f64,
    gpus: u32,
) -> Vec<PolicySummary> {
    result
        .runs
        .iter()
        .map(|r| {
            summarize(
                r,
                ttft_target,
                itl_target,
                gpus,
                result.oracle_replica_seconds,
            )
        })
        .collect()
}

/// The markdown comparison table.
pub fn render_markdown(rows: &[PolicySummary]) -> String {
    let mut s = String::from(
        "| policy | SLO attained | TTFT p50 / p99 (s) | ITL p50 / p99 (ms) | queue p50 / p90 / p99 (s) | replica-s | GPU-s | cold starts | at zero: requests, TTFT p50 (s) | mean / peak replicas | cost / oracle |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.1}% | {:.2} / {:.2} | {:.0} / {:.0} | {:.2} / {:.2} / {:.2} | {:.0} | {} | {} | {}, {:.2} | {:.2} / {} | {:.2} |\n",
            r.policy,
            r.slo_attainment * 100.0,
            r.ttft_p50,
            r.ttft_p99,
            r.itl_p50 * 1e3,
            r.itl_p99 * 1e3,
            r.queue_p50,
            r.queue_p90,
            r.queue_p99,
            r.replica_seconds,
            r.gpu_seconds.map_or_else(|| "-".into(), |g| format!("{g:.0}")),
            r.cold_starts,
            r.at_zero_requests,
            r.at_zero_ttft_p50,
            r.mean_replicas,
            r.peak_replicas,
            r.cost_vs_oracle,
        ));
    }
    s
}

/// The markdown routing table: one row per (routing policy, scaling policy) run, with
/// the prefix cache's effect (hit rate: cached prompt tokens / prompt tokens; prefill
/// saved: cached prompt tokens), latency and cost.
pub fn render_routing_markdown(rows: &[PolicySummary]) -> String {
    let mut s = String::from(
        "| routing | scaling policy | cache hit rate | prefill tokens saved | TTFT p50 / p90 / p99 (s) | SLO attained | GPU-s | replica-s | mean / peak replicas | cold starts |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.1}% | {} | {:.2} / {:.2} / {:.2} | {:.1}% | {} | {:.0} | {:.2} / {} | {} |\n",
            r.routing,
            r.policy,
            r.cache_hit_rate * 100.0,
            r.cached_tokens,
            r.ttft_p50,
            r.ttft_p90,
            r.ttft_p99,
            r.slo_attainment * 100.0,
            r.gpu_seconds.map_or_else(|| "-".into(), |g| format!("{g:.0}")),
            r.replica_seconds,
            r.mean_replicas,
            r.peak_replicas,
            r.cold_starts,
        ));
    }
    s
}
