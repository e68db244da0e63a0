//! The offline oracle: with the whole trace known, the cheapest replica schedule.
//!
//! 1. **Work.** Each request needs `prompt / prefill_tokens_per_second` seconds of a
//!    replica for its prefill, then `output` decode steps at the SLO batch (the largest
//!    batch, at the workload's mean context, whose step meets the inter-token target, at
//!    most the batch capacity), of which it owns `1 / batch`. The work is spread over the
//!    time the request would take at that pace, into 1 s buckets.
//! 2. **Replicas per bucket** = ceil(mean work per second over the bucket). The bucket is
//!    the TTFT target rounded up to whole seconds: work may wait that long, so a burst
//!    shorter than the bucket is queued rather than given a replica of its own.
//! 3. **Cheapest schedule.** Replica level k is needed in the seconds where the
//!    requirement is >= k; a gap between two such stretches is bridged when it is at
//!    most `cold_start` (keeping the replica is cheaper than restarting it); each
//!    stretch starts `cold_start` early, so the replica is warm when needed, and that
//!    warm-up is paid.
//!
//! The schedule's replica-seconds are a lower bound on the cost of serving the trace at
//! the inter-token target with this performance model (a policy can be cheaper only by
//! running bigger, slower batches). The simulator also runs the schedule, so the table
//! shows what its SLO attainment is with real queueing.

use swell_workers::sim::{PerformanceModel, SimProfile};

use super::workload::SimRequest;

/// The workload's capacity figures for one profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    /// Mean context (prompt + half the output) of the workload.
    pub mean_context: u64,
    /// The largest decode batch at that context (max batch and KV cache).
    pub batch_capacity: u32,
    /// The largest batch whose step meets the inter-token target (at least 1).
    pub slo_batch: u32,
    /// Step time at the SLO batch, seconds.
    pub slo_step: f64,
}

impl Capacity {
    pub fn new(requests: &[SimRequest], profile: &SimProfile, itl_target: f64) -> Self {
        let model = PerformanceModel::new(profile);
        let n = requests.len().max(1) as f64;
        let mean_context = (requests
            .iter()
            .map(|r| f64::from(r.prompt_tokens) + f64::from(r.output_tokens) / 2.0)
            .sum::<f64>()
            / n)
            .round()
            .max(1.0) as u64;
        let batch_capacity = model.max_batch_for_context(mean_context).max(1);
        let step = |b: u64| model.step_duration(0, b, b * mean_context).as_secs_f64();
        let mut slo_batch = 1;
        while slo_batch < batch_capacity && step(slo_batch + 1) <= itl_target {
            slo_batch += 1;
        }
        Self {
            mean_context,
            batch_capacity: batch_capacity.min(u64::from(u32::MAX)) as u32,
            slo_batch: slo_batch as u32,
            slo_step: step(slo_batch),
        }
    }
}

/// Replica-seconds of work per 1 s bucket.
pub fn demand(requests: &[SimRequest], profile: &SimProfile, capacity: &Capacity) -> Vec<f64> {
    let rate = profile.prefill_tokens_per_second;
    let mut buckets: Vec<f64> = Vec::new();
    let mut add = |from: f64, to: f64, total: f64| {
        if total <= 0.0 || to <= from {
            return;
        }
        let density = total / (to - from);
        let mut t = from;
        while t < to {
            let b = t.floor() as usize;
            let end = ((b + 1) as f64).min(to);
            if buckets.len() <= b {
                buckets.resize(b + 1, 0.0);
            }
            buckets[b] += density * (end - t);
            t = end;
        }
    };
    for r in requests {
        let prefill = if rate > 0.0 {
            f64::from(r.prompt_tokens) / rate
        } else {
            0.0
        };
        let decode_time = f64::from(r.output_tokens.saturating_sub(1)) * capacity.slo_step;
        let decode_work = decode_time / f64::from(capacity.slo_batch);
        add(r.arrival, r.arrival + prefill.max(1e-6), prefill.max(1e-6));
        add(
            r.arrival + prefill,
            r.arrival + prefill + decode_time,
            decode_work,
        );
    }
    buckets
}

/// The oracle's plan: desired replicas per tick second, and its replica-seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct OraclePlan {
    pub schedule: Vec<u32>,
    pub replica_seconds: f64,
    /// Replicas the busiest minute needs (for static provisioning).
    pub peak_minute: u32,
    /// Replicas the first minute needs (for a warm start).
    pub first_minute: u32,
}

pub fn plan(demand: &[f64], cold_start: f64, bucket: usize) -> OraclePlan {
    let bucket = bucket.max(1);
    let mut required: Vec<u32> = Vec::with_capacity(demand.len());
    for chunk in demand.chunks(bucket) {
        let need = (chunk.iter().sum::<f64>() / chunk.len() as f64 - 1e-9)
            .ceil()
            .max(0.0) as u32;
        required.extend(std::iter::repeat_n(need, chunk.len()));
    }
    let levels = required.iter().copied().max().unwrap_or(0);
    let mut schedule = vec![0u32; required.len() + 1];
    let mut replica_seconds = 0.0;
    let lead = cold_start.ceil() as usize;
    for k in 1..=levels {
        // Stretches [s, e) of seconds needing >= k replicas, bridged over short gaps.
        let mut stretches: Vec<(usize, usize)> = Vec::new();
        let mut t = 0;
        while t < required.len() {
            if required[t] >= k {
                let s = t;
                while t < required.len() && required[t] >= k {
                    t += 1;
                }
                match stretches.last_mut() {
                    Some(last) if (s - last.1) as f64 <= cold_start => last.1 = t,
                    _ => stretches.push((s, t)),
                }
            } else {
                t += 1;
            }
        }
        for (s, e) in stretches {
            let start = s.saturating_sub(lead);
            replica_seconds += (e - s) as f64 + cold_start.min(s as f64);
            for slot in &mut schedule[start..e] {
                *slot += 1;
            }
        }
    }
    let mut peak_minute = 0;
    for w in demand.windows(60.min(demand.len()).max(1)) {
        let mean = w.iter().sum::<f64>() / w.len() as f64;
        peak_minute = peak_minute.max((mean - 1e-9).ceil() as u32);
    }
    let first = &demand[..demand.len().min(60)];
    let first_minute = (first.iter().sum::<f64>() / first.len().max(1) as f64 - 1e-9)
        .ceil()
        .max(0.0) as u32;
    OraclePlan {
        schedule,
        replica_seconds,
        peak_minute: peak_minute.max(1),
        first_minute,
    }
}
