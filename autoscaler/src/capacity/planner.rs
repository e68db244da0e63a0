//! The observed workload ([`WorkloadEstimate`]: decaying mean prompt and output lengths)
//! and the [`CapacityPlanner`], which sizes a deployment from it: SLO mode's replica
//! count and the `auto` load targets.

use std::collections::VecDeque;
use std::time::Duration;


use super::*;
use crate::signals::{LoadAverages, LoadSample};
use crate::numbers::*;
use crate::policy::*;

/// Exponentially decaying sums of arrivals and tokens (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadEstimate {
    arrivals: f64,
    prompt_tokens: f64,
    /// Requests that finished.
    finished: f64,
    generated_tokens: f64,
    last_in_system: Option<u64>,
}

impl Default for WorkloadEstimate {
    fn default() -> Self {
        Self {
            arrivals: PRIOR_REQUESTS,
            prompt_tokens: PRIOR_REQUESTS * PRIOR_PROMPT_TOKENS,
            finished: PRIOR_REQUESTS,
            generated_tokens: PRIOR_REQUESTS * PRIOR_OUTPUT_TOKENS,
            last_in_system: None,
        }
    }
}

impl WorkloadEstimate {
    pub fn record(&mut self, sample: &LoadSample) {
        let in_system = sample.queued.saturating_add(sample.running);
        // What arrived, less what the queue and the replicas still hold, left.
        let finished = match self.last_in_system {
            Some(before) => sample.arrivals.saturating_add(before).saturating_sub(in_system),
            None => 0,
        };
        self.last_in_system = Some(in_system);
        // Each request counted pushes the older ones out: the memory is in requests, so
        // an idle spell forgets nothing and a burst after it starts from what was known.
        let memory = LENGTH_MEMORY_REQUESTS;
        let keep = |count: u64| (-(count as f64) / memory).exp();
        let decay = |sum: f64, prior: f64, keep: f64| prior + (sum - prior) * keep;
        let keep_arrivals = keep(sample.arrivals);
        self.arrivals = decay(self.arrivals, PRIOR_REQUESTS, keep_arrivals) + sample.arrivals as f64;
        self.prompt_tokens = decay(self.prompt_tokens, PRIOR_REQUESTS * PRIOR_PROMPT_TOKENS, keep_arrivals)
            + sample.prompt_tokens as f64;
        let keep_finished = keep(finished);
        self.finished = decay(self.finished, PRIOR_REQUESTS, keep_finished) + finished as f64;
        self.generated_tokens = decay(
            self.generated_tokens,
            PRIOR_REQUESTS * PRIOR_OUTPUT_TOKENS,
            keep_finished,
        ) + sample.generated_tokens as f64;
    }

    pub fn workload(&self) -> Workload {
        Workload {
            prompt_tokens: self.prompt_tokens / self.arrivals,
            output_tokens: self.generated_tokens / self.finished,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The capacity-aware part of an autoscaler
// ---------------------------------------------------------------------------------------

/// A replica's capacity and the workload's lengths, held by an
/// [`Autoscaler`](crate::autoscaler::Autoscaler) given an engine description.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityPlanner {
    capacity: ReplicaCapacity,
    workload: WorkloadEstimate,
    /// Recent samples' (time, arrivals), oldest first, for the busiest span and the
    /// surge rate.
    recent: VecDeque<(Duration, u64)>,
}

/// What the capacity model says for one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityAdvice {
    /// The `auto` concurrent-requests target per replica.
    pub concurrent_requests_target: f64,
    /// Words for the decision detail: how the target was found.
    pub concurrent_requests_detail: String,
    /// SLO mode's replicas and how they were found (`None` when SLO mode is off or
    /// there is no performance profile).
    pub slo: Option<(u32, String)>,
}

impl CapacityPlanner {
    pub fn new(capacity: ReplicaCapacity) -> Self {
        Self {
            capacity,
            workload: WorkloadEstimate::default(),
            recent: VecDeque::new(),
        }
    }

    /// The most requests that arrived within any `span` (samples whose times lie less
    /// than `span` apart) among the samples of the `window` before `now`, less Poisson
    /// noise: `n - SURGE_SIGMAS * sqrt(n)`.
    pub fn busiest_span(&self, now: Duration, window: Duration, span: Duration) -> f64 {
        let samples: Vec<(Duration, u64)> = self
            .recent
            .iter()
            .filter(|(at, _)| *at <= now && now - *at < window)
            .copied()
            .collect();
        let (mut best, mut sum, mut first) = (0u64, 0u64, 0usize);
        for last in 0..samples.len() {
            sum += samples[last].1;
            while samples[last].0 - samples[first].0 >= span && first < last {
                sum -= samples[first].1;
                first += 1;
            }
            best = best.max(sum);
        }
        above_noise(best)
    }

    /// The surge rate: the highest arrival rate of any sample of the `window` before
    /// `now`, less Poisson noise: `(n - SURGE_SIGMAS * sqrt(n)) / interval` for its `n`
    /// arrivals over the time since the sample before it.
    pub fn surge_rate(&self, now: Duration, window: Duration) -> f64 {
        let mut best = 0.0f64;
        let mut previous: Option<Duration> = None;
        for &(at, arrivals) in &self.recent {
            if let Some(before) = previous {
                if at <= now && now - at < window && at > before {
                    let interval = (at - before).as_secs_f64();
                    best = best.max(above_noise(arrivals) / interval);
                }
            }
            previous = Some(at);
        }
        best
    }

    /// The largest rise of the arrival rate over one cold start among the samples of the
    /// `window` before `now`, less Poisson noise: for consecutive spans of one cold start,
    /// `(n2 - n1 - SURGE_SIGMAS * sqrt(n1 + n2)) / cold_start` requests per second (0
    /// when the cold start is shorter than the samples' spacing: a replica then arrives
    /// before the load can be seen to move).
    pub fn rise_over_cold_start(&self, now: Duration, window: Duration) -> f64 {
        let cold_start = self.capacity.cold_start;
        let samples: Vec<(Duration, u64)> = self
            .recent
            .iter()
            .filter(|(at, _)| *at <= now && now - *at < window.saturating_add(cold_start * 2))
            .copied()
            .collect();
        let spacing = match samples.as_slice() {
            [.., before, last] => last.0.saturating_sub(before.0),
            _ => return 0.0,
        };
        if cold_start <= spacing || cold_start.is_zero() {
            return 0.0;
        }
        // Two sliding spans ending at each sample: (t - 2C, t - C] and (t - C, t].
        let (mut recent_sum, mut earlier_sum) = (0u64, 0u64);
        let (mut recent_first, mut earlier_first) = (0usize, 0usize);
        let mut best = 0.0f64;
        for last in 0..samples.len() {
            let at = samples[last].0;
            recent_sum += samples[last].1;
            while at - samples[recent_first].0 >= cold_start {
                recent_sum -= samples[recent_first].1;
                earlier_sum += samples[recent_first].1;
                recent_first += 1;
            }
            while at - samples[earlier_first].0 >= cold_start * 2 {
                earlier_sum -= samples[earlier_first].1;
                earlier_first += 1;
            }
            let spans_complete = samples[0].0 + cold_start * 2 <= at + spacing;
            if spans_complete && now - at < window {
                let (n1, n2) = (earlier_sum as f64, recent_sum as f64);
                let rise = (n2 - n1 - SURGE_SIGMAS * (n1 + n2).sqrt()).max(0.0);
                best = best.max(rise / cold_start.as_secs_f64());
            }
        }
        best
    }

    pub fn capacity(&self) -> &ReplicaCapacity {
        &self.capacity
    }

    pub fn workload(&self) -> Workload {
        self.workload.workload()
    }

    pub fn record(&mut self, sample: &LoadSample) {
        self.workload.record(sample);
        self.recent.push_back((sample.at, sample.arrivals));
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| sample.at.saturating_sub(*at) >= MAX_METRICS_WINDOW)
        {
            self.recent.pop_front();
        }
    }

    /// The `auto` concurrency target and SLO mode's recommendation for `policy` at the
    /// load `averages`.
    pub fn advise(&self, policy: &AutoscalingPolicy, averages: &LoadAverages) -> CapacityAdvice {
        let workload = self.workload();
        let slo_targets = policy.slo.targets(policy.load_targets.auto);
        let slo = slo_targets.unwrap_or_default();
        let limits = self.capacity.limits(workload, &slo);
        let lengths = format!(
            "prompt {}, output {}",
            workload.prompt_tokens.round(),
            workload.output_tokens.round()
        );
        let target = (AUTO_CONCURRENCY_SHARE * limits.concurrent).max(1.0);
        let concurrent_requests_detail = match limits.requests_per_second {
            Some(_) => format!(
                "auto: {}% of {} concurrent within inter-token {}ms at {lengths}, limited by {}",
                format_number(AUTO_CONCURRENCY_SHARE * 100.0),
                format_number(limits.concurrent),
                format_number(slo.inter_token_seconds * 1e3),
                limits.limited_by
            ),
            None => format!(
                "auto: {}% of {} sequences per replica at {lengths}, limited by {}",
                format_number(AUTO_CONCURRENCY_SHARE * 100.0),
                format_number(limits.concurrent),
                limits.limited_by
            ),
        };
        let now = self.recent.back().map_or(Duration::ZERO, |(at, _)| *at);
        let rise = self.rise_over_cold_start(now, policy.scale_down_window);
        let arrivals = averages
            .requests_per_second
            .max(self.surge_rate(now, policy.metrics_window))
            + rise;
        let slo_recommendation = slo_targets.and_then(|slo| {
            let burst = self.busiest_span(
                now,
                policy.metrics_window,
                Duration::from_secs_f64(slo.ttft_seconds),
            );
            let load = SloLoad {
                requests_per_second: arrivals,
                burst_prompt_tokens: burst * workload.prompt_tokens,
            };
            let sizing = self.capacity.replicas_for(load, workload, &slo)?;
            let ttft = if sizing.ttft_attainable {
                format!(
                    "TTFT p{} {}s modelled {}s",
                    format_number(slo.percentile),
                    format_number(slo.ttft_seconds),
                    format_number(sizing.ttft_seconds)
                )
            } else {
                format!(
                    "TTFT {}s out of reach of a lone prompt (left out)",
                    format_number(slo.ttft_seconds)
                )
            };
            let replicas = sizing.replicas;
            Some((
                replicas,
                format!(
                    "slo {} requests per second over {}s ({} above noise in the busiest {}s) at {lengths}: {} per replica within inter-token {}ms, {ttft}, limited by {} -> {replicas}",
                    format_number(arrivals),
                    format_number(policy.metrics_window.as_secs_f64()),
                    format_number(burst),
                    format_number(slo.ttft_seconds),
                    format_number(sizing.per_replica.requests_per_second.unwrap_or(0.0)),
                    format_number(slo.inter_token_seconds * 1e3),
                    sizing.limited_by
                ),
            ))
        });
        CapacityAdvice {
            concurrent_requests_target: target,
            concurrent_requests_detail,
            slo: slo_recommendation,
        }
    }
}


/// `n - SURGE_SIGMAS * sqrt(n)`, at least 0: a count of Poisson arrivals less its noise.
fn above_noise(count: u64) -> f64 {
    let n = count as f64;
    (n - SURGE_SIGMAS * n.sqrt()).max(0.0)
}

