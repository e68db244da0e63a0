//! One replica's capacity: the step model of a continuous-batching replica and
//! [`ReplicaCapacity`], its batch and KV limits and the load it sustains within SLO
//! targets (an M/M/c queue over the step model).

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use swell_protocol::{EngineDescription, PerformanceProfile};

use crate::numbers::*;
use crate::policy::*;

/// The mean lengths of the requests a replica serves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Workload {
    pub prompt_tokens: f64,
    pub output_tokens: f64,
}

/// What limits a deployment first as its load grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    InterToken,
    TimeToFirstToken,
    /// The busiest TTFT-long span's prompts must be prefilled within the TTFT target.
    PrefillBurst,
    BatchSize,
    KvCache,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::InterToken => "inter_token",
            Limit::TimeToFirstToken => "ttft",
            Limit::PrefillBurst => "prefill_burst",
            Limit::BatchSize => "max_batch_size",
            Limit::KvCache => "kv_cache",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// What one replica sustains for a workload within the inter-token target, its batch
/// and its KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReplicaLimits {
    /// Requests in the replica (prefilling or decoding) at the largest load that meets
    /// every limit: the SLO-meeting concurrency.
    pub concurrent: f64,
    /// The largest arrival rate that meets every limit; `None` without a performance
    /// profile.
    pub requests_per_second: Option<f64>,
    /// Generated tokens per second at that rate.
    pub output_tokens_per_second: Option<f64>,
    /// The modelled inter-token latency at that rate, seconds.
    pub inter_token_seconds: Option<f64>,
    pub limited_by: Limit,
}

/// The load SLO mode sizes for.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct SloLoad {
    /// Arrivals per second, averaged over the metrics window.
    pub requests_per_second: f64,
    /// The most prompt tokens that arrived within any span as long as the TTFT target,
    /// within the metrics window.
    pub burst_prompt_tokens: f64,
}

/// SLO mode's answer for one load: how many replicas, and why.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SloSizing {
    pub replicas: u32,
    /// The per-replica limits the count starts from.
    pub per_replica: ReplicaLimits,
    /// The modelled TTFT at the SLO percentile with `replicas`, seconds.
    pub ttft_seconds: f64,
    /// Whether the TTFT target can be met at all (false: a lone prompt of the mean
    /// length takes longer than the target, whatever the replica count).
    pub ttft_attainable: bool,
    pub limited_by: Limit,
}

/// One replica as the capacity model sees it, from its engine's description.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaCapacity {
    pub max_batch_size: u32,
    pub kv_capacity_tokens: u64,
    /// How long a new replica takes to be ready.
    pub cold_start: Duration,
    pub performance: Option<PerformanceProfile>,
}

/// The model's figures for one replica at one arrival rate.
#[derive(Debug, Clone, Copy)]
struct OperatingPoint {
    inter_token: f64,
    /// A prompt's own prefill steps, without waiting for others.
    lone_ttft: f64,
    /// Prompts per second one replica prefills while it keeps decoding its batch.
    prefill_service_rate: f64,
    concurrent: f64,
}

/// The largest replica count SLO mode searches (a deployment cap, not a model limit).
const MAX_SEARCH_REPLICAS: u32 = 100_000;

impl ReplicaCapacity {
    pub fn from_description(description: &EngineDescription) -> Self {
        Self {
            max_batch_size: description.max_batch_size,
            kv_capacity_tokens: description.kv_capacity_tokens,
            cold_start: description.expected_cold_start,
            performance: description.performance.clone(),
        }
    }

    /// Sequences that fit the batch and the KV cache at once, and which of the two binds.
    fn sequence_limit(&self, workload: Workload) -> (f64, Limit) {
        let batch = f64::from(self.max_batch_size.max(1));
        let per_sequence = (workload.prompt_tokens + workload.output_tokens).max(1.0);
        let kv = (self.kv_capacity_tokens as f64 / per_sequence).floor().max(1.0);
        if kv < batch {
            (kv, Limit::KvCache)
        } else {
            (batch, Limit::BatchSize)
        }
    }

    /// What one replica sustains for `workload` within `slo`'s inter-token target, its
    /// batch and its KV cache (see the module docs).
    pub fn limits(&self, workload: Workload, slo: &SloTargets) -> ReplicaLimits {
        let workload = sane(workload);
        let (sequences, sequence_limit) = self.sequence_limit(workload);
        let Some(performance) = &self.performance else {
            return ReplicaLimits {
                concurrent: sequences,
                requests_per_second: None,
                output_tokens_per_second: None,
                inter_token_seconds: None,
                limited_by: sequence_limit,
            };
        };
        let model = StepModel::new(performance, workload);
        let z = normal_quantile(slo.percentile / 100.0).max(0.0);
        // Which limit a rate breaks first, if any, at the SLO percentile of the batch.
        let broken = |u: f64| -> Option<Limit> {
            let point = model.at(u);
            let decoding = u * model.output * point.inter_token;
            let inter_token = model.inter_token_with(u, decoding + z * decoding.sqrt());
            let concurrent = point.concurrent + z * point.concurrent.sqrt();
            if !(inter_token <= slo.inter_token_seconds) {
                Some(Limit::InterToken)
            } else if !(concurrent <= sequences) {
                Some(sequence_limit)
            } else {
                None
            }
        };
        let ceiling = model.saturation();
        let (mut low, mut high) = (0.0, ceiling);
        let mut limited_by = broken(ceiling).unwrap_or(Limit::InterToken);
        for _ in 0..200 {
            let middle = (low + high) / 2.0;
            match broken(middle) {
                Some(limit) => {
                    high = middle;
                    limited_by = limit;
                }
                None => low = middle,
            }
            if high - low <= high * 1e-9 {
                break;
            }
        }
        let point = model.at(low);
        ReplicaLimits {
            concurrent: point.concurrent.clamp(1.0, sequences),
            requests_per_second: Some(low),
            output_tokens_per_second: Some(low * workload.output_tokens),
            inter_token_seconds: Some(point.inter_token),
            limited_by,
        }
    }

    /// SLO mode: the fewest replicas that carry `arrival_rate` requests per second of
    /// `workload` within `slo`, `None` without a performance profile (see the module
    /// docs). Zero arrivals need zero replicas.
    pub fn replicas_for(
        &self,
        load: SloLoad,
        workload: Workload,
        slo: &SloTargets,
    ) -> Option<SloSizing> {
        let arrival_rate = load.requests_per_second;
        let performance = self.performance.as_ref()?;
        let workload = sane(workload);
        let per_replica = self.limits(workload, slo);
        let rate = per_replica.requests_per_second?;
        let arrival_rate = if arrival_rate.is_finite() { arrival_rate.max(0.0) } else { 0.0 };
        let model = StepModel::new(performance, workload);
        let ttft_attainable = model.at(0.0).lone_ttft <= slo.ttft_seconds;
        let quantile = (slo.percentile / 100.0).clamp(0.0, 1.0 - 1e-12);
        let ttft = |replicas: u32| model.ttft_quantile(arrival_rate, replicas, quantile);
        let utilization = slo.utilization_for(self.cold_start);
        let by_rate = if rate > 0.0 {
            ceil_replicas(arrival_rate / (rate * utilization))
        } else if arrival_rate > 0.0 {
            MAX_SEARCH_REPLICAS
        } else {
            0
        };
        let mut replicas = by_rate.min(MAX_SEARCH_REPLICAS);
        let mut limited_by = per_replica.limited_by;
        if arrival_rate > 0.0 && ttft_attainable && !(ttft(replicas) <= slo.ttft_seconds) {
            // TTFT falls as replicas are added: gallop up, then bisect.
            limited_by = Limit::TimeToFirstToken;
            let mut low = replicas;
            let mut step = 1;
            let mut high = loop {
                let candidate = low.saturating_add(step).min(MAX_SEARCH_REPLICAS);
                if ttft(candidate) <= slo.ttft_seconds || candidate == MAX_SEARCH_REPLICAS {
                    break candidate;
                }
                low = candidate;
                step = step.saturating_mul(2);
            };
            while high - low > 1 {
                let middle = low + (high - low) / 2;
                if ttft(middle) <= slo.ttft_seconds {
                    high = middle;
                } else {
                    low = middle;
                }
            }
            replicas = high;
        }
        if ttft_attainable && load.burst_prompt_tokens > 0.0 {
            // The busiest TTFT-long span must be prefilled within the TTFT target by
            // replicas already warm (a burst shorter than a cold start meets no other).
            let point = model.at(arrival_rate / f64::from(replicas.max(1)));
            let tokens_per_second = point.prefill_service_rate * model.prompt;
            let by_burst =
                ceil_replicas(load.burst_prompt_tokens / (tokens_per_second * slo.ttft_seconds))
                    .min(MAX_SEARCH_REPLICAS);
            if by_burst > replicas {
                replicas = by_burst;
                limited_by = Limit::PrefillBurst;
            }
        }
        Some(SloSizing {
            replicas,
            per_replica,
            ttft_seconds: if replicas == 0 { 0.0 } else { ttft(replicas) },
            ttft_attainable,
            limited_by,
        })
    }
}

fn sane(workload: Workload) -> Workload {
    let at_least_one = |value: f64| if value.is_finite() { value.max(1.0) } else { 1.0 };
    Workload {
        prompt_tokens: at_least_one(workload.prompt_tokens),
        output_tokens: at_least_one(workload.output_tokens),
    }
}

/// The formulas of the module docs for one performance profile and workload.
pub(super) struct StepModel {
    prompt: f64,
    output: f64,
    /// Seconds of prefill per prompt token (0 when prefill is free).
    prefill_per_token: f64,
    base: f64,
    per_sequence: f64,
    /// `k = b + c * C`: the decode cost each extra sequence adds.
    per_decoding_sequence: f64,
    chunk: f64,
}

impl StepModel {
    pub(super) fn new(performance: &PerformanceProfile, workload: Workload) -> Self {
        let rate = performance.step.prefill_tokens_per_second;
        let context = workload.prompt_tokens + workload.output_tokens / 2.0;
        let per_sequence = performance.step.decode_step_per_sequence.as_secs_f64();
        Self {
            prompt: workload.prompt_tokens,
            output: workload.output_tokens,
            prefill_per_token: if rate.is_finite() && rate > 0.0 {
                1.0 / rate
            } else {
                0.0
            },
            base: performance.step.decode_step_base.as_secs_f64(),
            per_sequence,
            per_decoding_sequence: per_sequence
                + performance.step.decode_step_per_kv_token.as_secs_f64() * context,
            chunk: (performance.max_prefill_tokens_per_step.max(1)) as f64,
        }
    }

    /// The rate at which one replica saturates, capped so a free profile still has a
    /// finite search range.
    fn saturation(&self) -> f64 {
        let work = self.prompt * self.prefill_per_token + self.per_decoding_sequence * self.output;
        let by_work = if work > 0.0 { 1.0 / work } else { f64::INFINITY };
        by_work.min(1e12)
    }

    /// `a + (B - 1) * b + B * C * c` for `B >= 1` decoding sequences.
    fn decode_step(&self, sequences: f64) -> f64 {
        let per_kv = self.per_decoding_sequence - self.per_sequence;
        self.base + (sequences.max(1.0) - 1.0) * self.per_decoding_sequence + per_kv
    }

    /// The inter-token latency of one replica at `u` requests per second when
    /// `decoding` sequences share its steps.
    fn inter_token_with(&self, u: f64, decoding: f64) -> f64 {
        let prefill_share = u * self.prompt * self.prefill_per_token;
        if !decoding.is_finite() || prefill_share >= 1.0 {
            return f64::INFINITY;
        }
        self.decode_step(decoding) / (1.0 - prefill_share)
    }

    /// One replica at `u` requests per second.
    fn at(&self, u: f64) -> OperatingPoint {
        let prefill_share = u * self.prompt * self.prefill_per_token;
        let decode_share = u * self.per_decoding_sequence * self.output;
        let free = 1.0 - prefill_share - decode_share;
        let inter_token = if free <= 0.0 || prefill_share >= 1.0 {
            f64::INFINITY
        } else {
            let by_batch = (self.base - self.per_sequence) / free;
            let one_sequence = self.decode_step(1.0) / (1.0 - prefill_share);
            by_batch.max(one_sequence)
        };
        let step = if inter_token.is_finite() {
            self.decode_step(u * self.output * inter_token)
        } else {
            f64::INFINITY
        };
        let chunks = (self.prompt / self.chunk).ceil().max(1.0);
        let lone_ttft = self.prompt * self.prefill_per_token + chunks * step;
        // M tokens of prefill per step of (M / R + decode step).
        let chunk_step = self.chunk * self.prefill_per_token + step;
        let prefill_service_rate = if chunk_step > 0.0 {
            self.chunk / chunk_step / self.prompt
        } else {
            f64::INFINITY
        };
        let in_replica = lone_ttft + (self.output - 1.0).max(0.0) * inter_token;
        OperatingPoint {
            inter_token,
            lone_ttft,
            prefill_service_rate,
            concurrent: if u > 0.0 { u * in_replica } else { 0.0 },
        }
    }

    /// The `quantile` of TTFT when `replicas` share `arrival_rate`: a prompt's own
    /// prefill plus the M/M/c wait for a replica's prefill (Erlang C).
    pub(super) fn ttft_quantile(&self, arrival_rate: f64, replicas: u32, quantile: f64) -> f64 {
        if replicas == 0 {
            return f64::INFINITY;
        }
        let servers = f64::from(replicas);
        let point = self.at(arrival_rate / servers);
        let mu = point.prefill_service_rate;
        if !point.lone_ttft.is_finite() {
            return f64::INFINITY;
        }
        if mu.is_infinite() || arrival_rate <= 0.0 {
            return point.lone_ttft;
        }
        let offered = arrival_rate / mu;
        if offered >= servers {
            return f64::INFINITY;
        }
        let waiting = erlang_c(replicas, offered);
        let wait = if waiting <= 1.0 - quantile {
            0.0
        } else {
            (waiting / (1.0 - quantile)).ln() / (servers * mu - arrival_rate)
        };
        point.lone_ttft + wait
    }
}

/// The probability that an arrival waits in an M/M/c queue with `servers` servers and
/// `offered` = arrival rate / service rate (< servers), through Erlang B's recurrence.
pub(super) fn erlang_c(servers: u32, offered: f64) -> f64 {
    let mut blocking = 1.0;
    for k in 1..=servers {
        blocking = offered * blocking / (f64::from(k) + offered * blocking);
    }
    let c = f64::from(servers);
    let waiting = c * blocking / (c - offered * (1.0 - blocking));
    waiting.clamp(0.0, 1.0)
}

// ---------------------------------------------------------------------------------------
// Mean lengths
// ---------------------------------------------------------------------------------------
