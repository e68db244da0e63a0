//! A replica's capacity: how much load one replica carries while requests still meet
//! their latency targets, and the two capacity-aware parts of the autoscaling policy
//! built on it (SLO mode and the `auto` load targets).
//!
//! Swell's other targets count load per replica ("8 concurrent requests per replica"),
//! which means nothing without knowing the replica: an H100 running an 8B model carries
//! hundreds of sequences within a 100 ms inter-token target, a 2-core CPU a handful. This
//! module turns what an engine says about itself ([`EngineDescription`]: batch size, KV
//! cache, and when known its [`PerformanceProfile`]) and the observed request lengths
//! into what one replica sustains.
//!
//! # The model
//!
//! A replica runs the continuous-batching step of the `sim` engine (the `llm` engine
//! works the same way):
//!
//! ```text
//! step = prefill_tokens / R + a + (B - 1) * b + B * C * c      (B sequences decoding)
//! ```
//!
//! with `R` prefill tokens/s, `a` the decode step base, `b` the cost per extra sequence,
//! `c` per token of context read, and `C = P + O / 2` the mean context of a decoding
//! sequence (mean prompt `P`, mean output `O` tokens). At `u` requests/s per replica:
//!
//! - **Inter-token latency.** Steps run back to back while any sequence is running and
//!   every running sequence gets one token per step, so the inter-token latency is the
//!   step time. A share `u * P / R` of every second goes to prefill, and by Little's
//!   law `B = u * O * ITL` sequences decode, so
//!   `ITL = (a - b + k * B) / (1 - u * P / R)` with `k = b + c * C`, which solves to
//!   `ITL(u) = (a - b) / (1 - u * (P / R + k * O))` (at least one sequence's step,
//!   `a / (1 - u * P / R)`). It grows without bound as `u` nears
//!   `1 / (P / R + k * O)`, where the replica is saturated.
//! - **Time to first token.** A prompt alone needs `S = P / R + ceil(P / M) * (a + ...)`:
//!   its chunks of at most `M` tokens (`max_prefill_tokens_per_step`), each in a step
//!   that also decodes the batch. Prefills queue for the chunk budget: the prefill
//!   "server" moves `M` tokens per step, `R_eff = M / (M / R + decode step)` tokens/s,
//!   serving `mu = R_eff / P` prompts per second. Waiting is taken from the M/M/1 queue,
//!   whose waiting time `W` has `P(W > t) = rho * exp(-(mu - u) * t)` with
//!   `rho = u / mu`: its `percentile` is `ln(rho / (1 - q)) / (mu - u)` (0 when
//!   `rho <= 1 - q`). `TTFT_q(u) = S + W_q`.
//! - **Batch and KV cache.** The replica holds `L = u * (W + S + (O - 1) * ITL)`
//!   sequences (Little's law again); `L` may not exceed `max_batch_size`, nor
//!   `kv_capacity_tokens / (P + O)` (each sequence's whole context must fit, so none is
//!   preempted).
//!
//! All three grow with `u`, so the largest `u` meeting every limit is found by
//! bisection: [`ReplicaLimits::requests_per_second`], with [`ReplicaLimits::concurrent`]
//! = `L` there, the SLO-meeting concurrency. When the TTFT target is below `S` even
//! for a lone request (a long prompt on a slow replica), no replica count can meet it:
//! the TTFT limit is then left out and [`ReplicaLimits::ttft_attainable`] is false. An
//! engine without a [`PerformanceProfile`] gives only the batch and KV limits.
//!
//! # SLO mode
//!
//! `slo = { ttft_seconds = 2, inter_token_seconds = 0.1, percentile = 99 }` in the
//! autoscaling policy ([`SloMode`]; left out or `slo = "auto"`, these default targets
//! apply when the load targets are `auto` too, and SLO mode is off when the policy
//! writes its own load targets; `slo = false` turns it off) recommends replicas for
//! the workload's current mean lengths ([`CapacityPlanner::advise`],
//! [`ReplicaCapacity::replicas_for`]):
//!
//! 1. **The rate to plan for**, `λ = max(mean arrival rate over the metrics window,
//!    surge) + rise`. The *surge* is the busiest single load sample of the metrics
//!    window, `(n - 3 * sqrt(n)) / interval` for its `n` arrivals (so Poisson noise
//!    alone is not a surge, [`SURGE_SIGMAS`]). The *rise* is the largest growth of the
//!    arrival rate over one cold start seen within the scale-down window, also less
//!    noise: load that grew that fast once may grow as fast again while a new replica
//!    starts, so that much is kept in hand (0 when a cold start is shorter than the
//!    sample spacing).
//! 2. **By rate:** `ceil(λ / (requests_per_second * utilization))`, with the planned
//!    utilization of [`SloTargets::utilization_for`] (headroom grows with the cold
//!    start).
//! 3. **By TTFT:** if the `percentile` TTFT at that count, modelled as each prompt's
//!    own prefill plus the M/M/c wait for the replicas' prefill capacity (Erlang C),
//!    is above the target, the count grows until it is not.
//! 4. **By burst:** the prompt tokens of the busiest TTFT-long span of the metrics
//!    window must be prefilled within the TTFT target by the replicas already there
//!    (a burst shorter than a cold start meets no other).
//!
//! It is one more recommendation beside the load targets: the highest wins
//! ([`ScaleReason::Slo`] when it does), and the decision's detail shows each term.
//! Without a performance profile it recommends nothing. The terms and their weights were
//! measured against the baselines in the simulator over the Azure and ServeGen traces
//! (README "Simulator"). For instance, sizing the surge over a request's stay in a
//! replica instead of over one sample cost 19% fewer replica-seconds over the 116
//! tenants of the ServeGen sweep, but served 99.68% of their requests within the SLO
//! instead of 99.80%, and reached the best baseline's attainment at lower cost on 26
//! tenants instead of 33, so the default keeps the sample.
//!
//! # `auto` load targets (the default)
//!
//! When the policy leaves `load_targets` out (or writes `load_targets = "auto"`), the
//! concurrent-requests target is [`AUTO_CONCURRENCY_SHARE`] of the SLO-meeting
//! concurrency [`ReplicaLimits::concurrent`] (computed for the policy's `slo`, or the
//! default SLO when SLO mode is off), recomputed at every decision for the current
//! lengths; without a performance profile, the same share of the batch and KV limit.
//! An autoscaler that has no capacity model (no engine description, as in unit tests)
//! uses the fixed [`LoadTargets::default`] values instead.
//!
//! # Mean lengths
//!
//! [`WorkloadEstimate`] keeps decaying sums of arrivals and their prompt tokens, and of
//! finished requests and the tokens generated: `P = prompt tokens / arrivals`,
//! `O = generated tokens / finished`, where a sample's finished requests are its
//! arrivals less the growth of queued + running. The memory is counted in requests
//! ([`LENGTH_MEMORY_REQUESTS`]), not in time, so an idle spell forgets nothing. Tokens
//! are counted as they are generated and requests when they end, so while load ramps
//! up `O` reads a little high (tokens of requests still running), which errs towards
//! more replicas; counting per arrival instead would read it low by the whole backlog.
//! [`PRIOR_REQUESTS`] pseudo-requests of [`PRIOR_PROMPT_TOKENS`] /
//! [`PRIOR_OUTPUT_TOKENS`] start the sums so the first decisions are not made on a
//! handful of requests.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use swell_workers::{EngineDescription, PerformanceProfile};

use crate::autoscaler::{format_number, AutoscalingPolicy, LoadAverages, LoadSample, MAX_METRICS_WINDOW};

/// The share of the SLO-meeting concurrency the `auto` concurrent-requests target aims
/// at. Below 1 because load is bursty within the metrics window (the SLO-meeting
/// concurrency is a limit, not an operating point) and new replicas take a cold start to
/// arrive; tuned in the simulator (README "Simulator").
pub const AUTO_CONCURRENCY_SHARE: f64 = 0.5;

/// The mean-length estimate's memory, in requests: each request counted weighs the
/// earlier ones down by `exp(-1 / memory)`.
pub const LENGTH_MEMORY_REQUESTS: f64 = 1000.0;
/// How far above Poisson noise a sample's arrivals must be to count as a surge.
pub const SURGE_SIGMAS: f64 = 3.0;
/// Pseudo-requests the mean-length estimate starts from.
pub const PRIOR_REQUESTS: f64 = 4.0;
/// Their prompt length (about the Azure 2023 conversation trace's median).
pub const PRIOR_PROMPT_TOKENS: f64 = 1024.0;
/// Their output length (about the ShareGPT median).
pub const PRIOR_OUTPUT_TOKENS: f64 = 256.0;

// ---------------------------------------------------------------------------------------
// SLO targets (configuration)
// ---------------------------------------------------------------------------------------

/// SLO mode's latency targets: `slo = { ttft_seconds = 2, inter_token_seconds = 0.1 }`.
/// Keys left out take their defaults; unknown keys are errors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloTargets {
    /// Time to first token, seconds, default 2.
    pub ttft_seconds: f64,
    /// Mean time between tokens of a request, seconds, default 0.1.
    pub inter_token_seconds: f64,
    /// The share of requests (percent) that should meet the targets, default 99.
    pub percentile: f64,
    /// The share of a replica's SLO-meeting throughput SLO mode plans to use; the rest
    /// absorbs load that grows while new replicas start. Default (left out):
    /// `1 - min(cold start / 100 s, 0.15)`, see [`SloTargets::utilization_for`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
}

impl Default for SloTargets {
    fn default() -> Self {
        Self {
            ttft_seconds: 2.0,
            inter_token_seconds: 0.1,
            percentile: 99.0,
            utilization: None,
        }
    }
}

impl SloTargets {
    /// Checks the targets; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("ttft_seconds", self.ttft_seconds),
            ("inter_token_seconds", self.inter_token_seconds),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!(
                    "autoscaling.slo.{key} ({value}) must be a finite number greater than 0"
                ));
            }
        }
        if !(self.percentile > 0.0 && self.percentile < 100.0) {
            return Err(format!(
                "autoscaling.slo.percentile ({}) must be greater than 0 and less than 100",
                self.percentile
            ));
        }
        if let Some(utilization) = self.utilization {
            if !(utilization > 0.0 && utilization <= 1.0) {
                return Err(format!(
                    "autoscaling.slo.utilization ({utilization}) must be greater than 0 and at most 1"
                ));
            }
        }
        Ok(())
    }

    /// The utilization SLO mode plans for a replica that takes `cold_start` to start: the
    /// configured one, else `1 - min(cold_start / 100 s, 0.15)`. Capacity asked for now
    /// arrives a cold start later, so the longer the start, the more of the load's
    /// growth the replicas already running must absorb: 1% of headroom per second of
    /// cold start, at most 15% (a 0.12 s CPU start plans 99.9%, every GPU start of 15 s
    /// or more 85%; tuned in the simulator, README "Simulator").
    pub fn utilization_for(&self, cold_start: Duration) -> f64 {
        match self.utilization {
            Some(utilization) if utilization > 0.0 && utilization <= 1.0 => utilization,
            _ => 1.0 - (cold_start.as_secs_f64() / 100.0).min(0.15),
        }
    }
}

/// SLO mode's setting: `slo = "auto"` (the default, also when left out), `false`
/// (TOML) / `null` (JSON) for off, or a table of targets.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SloMode {
    /// On with the default targets when the load targets are `auto` (the default
    /// policy); off when the policy writes its own load targets, so a written table is
    /// used as written.
    #[default]
    Auto,
    /// Off.
    Off,
    /// On, with these targets, beside any load targets.
    On(SloTargets),
}

impl SloMode {
    /// The targets SLO mode works to, if it is on; `auto_load_targets` says whether the
    /// policy's load targets are `auto`.
    pub fn targets(&self, auto_load_targets: bool) -> Option<SloTargets> {
        match self {
            SloMode::Auto if auto_load_targets => Some(SloTargets::default()),
            SloMode::Auto | SloMode::Off => None,
            SloMode::On(targets) => Some(*targets),
        }
    }
}

impl Serialize for SloMode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SloMode::Auto => serializer.serialize_str("auto"),
            SloMode::Off => serializer.serialize_bool(false),
            SloMode::On(targets) => targets.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for SloMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Visitor};

        struct SloOrOff;

        impl<'de> Visitor<'de> for SloOrOff {
            type Value = SloMode;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(
                    "\"auto\", a table like { ttft_seconds = 2, inter_token_seconds = 0.1 }, or false for off",
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                if value == "auto" {
                    Ok(SloMode::Auto)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(value), &self))
                }
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
                if value {
                    Err(E::invalid_value(de::Unexpected::Bool(true), &self))
                } else {
                    Ok(SloMode::Off)
                }
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(SloMode::Off)
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(SloMode::Off)
            }

            fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
                deserializer.deserialize_any(SloOrOff)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                SloTargets::deserialize(de::value::MapAccessDeserializer::new(map)).map(SloMode::On)
            }
        }

        deserializer.deserialize_any(SloOrOff)
    }
}

// ---------------------------------------------------------------------------------------
// The capacity model
// ---------------------------------------------------------------------------------------

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
struct StepModel {
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
    fn new(performance: &PerformanceProfile, workload: Workload) -> Self {
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
    fn ttft_quantile(&self, arrival_rate: f64, replicas: u32, quantile: f64) -> f64 {
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
fn erlang_c(servers: u32, offered: f64) -> f64 {
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

/// The standard normal quantile (Acklam's rational approximation, relative error below
/// 1.2e-9), for `p` in (0, 1).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383577518672690e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let low = 0.02425;
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -normal_quantile(1.0 - p)
    }
}

/// `n - SURGE_SIGMAS * sqrt(n)`, at least 0: a count of Poisson arrivals less its noise.
fn above_noise(count: u64) -> f64 {
    let n = count as f64;
    (n - SURGE_SIGMAS * n.sqrt()).max(0.0)
}

/// `ceil(value)` as a replica count, saturating; 0 for nonsense.
fn ceil_replicas(value: f64) -> u32 {
    let rounded = ((value * 1e6).round() / 1e6).ceil();
    if rounded.is_nan() || rounded <= 0.0 {
        0
    } else if rounded >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        rounded as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::{Autoscaler, LoadTargets, ReplicaCounts, ScaleReason};

    fn performance() -> PerformanceProfile {
        PerformanceProfile {
            step: swell_workers::StepTimes {
                prefill_tokens_per_second: 10_000.0,
                decode_step_base: Duration::from_millis(10),
                decode_step_per_sequence: Duration::from_millis(1),
                decode_step_per_kv_token: Duration::from_micros(1),
            },
            max_prefill_tokens_per_step: 512,
            model_params_billions: 1.0,
            gpu: "test".into(),
            source: "test".into(),
        }
    }

    fn capacity(max_batch_size: u32, kv_capacity_tokens: u64) -> ReplicaCapacity {
        ReplicaCapacity {
            max_batch_size,
            kv_capacity_tokens,
            cold_start: Duration::from_secs(10),
            performance: Some(performance()),
        }
    }

    const SHORT: Workload = Workload {
        prompt_tokens: 100.0,
        output_tokens: 50.0,
    };

    fn close(actual: f64, expected: f64, tolerance: f64) -> bool {
        (actual - expected).abs() <= tolerance * expected.abs().max(1e-12)
    }

    #[test]
    fn the_inter_token_limit_matches_the_closed_form() {
        // C = 100 + 25 = 125; k = 1 ms + 125 * 1 us = 1.125 ms; P / R = 0.01 s;
        // ITL(u) = (a - b) / (1 - u * (P / R + k * O)) = 9 ms / (1 - u * 0.06625) <= 0.1 s
        // -> u <= 0.91 / 0.06625 = 13.7358 requests per second.
        // At the median (no allowance for the batch's fluctuation):
        let median = SloTargets {
            percentile: 50.0,
            ..SloTargets::default()
        };
        let limits = capacity(256, 1_000_000).limits(SHORT, &median);
        assert_eq!(limits.limited_by, Limit::InterToken);
        let rate = limits.requests_per_second.unwrap();
        assert!(close(rate, 0.91 / 0.06625, 1e-6), "{rate}");
        assert!(close(limits.inter_token_seconds.unwrap(), 0.1, 1e-6));
        assert!(close(limits.output_tokens_per_second.unwrap(), rate * 50.0, 1e-9));
        // B = u * O * ITL = 68.68 decoding; the step then is 10 + 67.68 * 1.125 + 0.125
        // = 86.26 ms, a prompt's own prefill 10 + 86.26 ms:
        // L = u * (0.0963 + 49 * 0.1) = 68.63 requests in the replica.
        assert!(close(limits.concurrent, 68.63, 1e-3), "{}", limits.concurrent);

        // At p99 the step must stay within 100 ms with B + 2.33 sqrt(B) sequences
        // decoding (the batch of a steady load varies like a Poisson count).
        let p99 = capacity(256, 1_000_000).limits(SHORT, &SloTargets::default());
        let rate_p99 = p99.requests_per_second.unwrap();
        assert!(close(rate_p99, 13.357, 1e-3), "{rate_p99}");
        let decoding = rate_p99 * 50.0 * p99.inter_token_seconds.unwrap();
        let step = 0.010 + (decoding + 2.3263 * decoding.sqrt() - 1.0) * 0.001125 + 0.000125;
        assert!(close(step / (1.0 - rate_p99 * 0.01), 0.1, 1e-3), "{step}");
    }

    fn rate(requests_per_second: f64) -> SloLoad {
        SloLoad {
            requests_per_second,
            burst_prompt_tokens: 0.0,
        }
    }

    /// The default SLO at full utilization, so counts follow the arithmetic alone.
    fn full() -> SloTargets {
        SloTargets {
            utilization: Some(1.0),
            ..SloTargets::default()
        }
    }

    #[test]
    fn slo_mode_counts_replicas_for_the_rate_then_for_the_ttft_quantile() {
        let c = capacity(256, 1_000_000);
        let slo = full();
        // 13.36 requests/s per replica within 100 ms at p99 (above).
        let per_replica = c.limits(SHORT, &slo).requests_per_second.unwrap();
        assert!(close(per_replica, 13.357, 1e-3), "{per_replica}");
        // 100 / 13.36 -> 8; the prefill queue is no concern at 2 s.
        let sizing = c.replicas_for(rate(100.0), SHORT, &slo).unwrap();
        assert_eq!(sizing.replicas, 8);
        assert_eq!(sizing.limited_by, Limit::InterToken);
        assert!(sizing.ttft_attainable);
        assert!(sizing.ttft_seconds < 2.0, "{sizing:?}");
        assert_eq!(c.replicas_for(rate(0.0), SHORT, &slo).unwrap().replicas, 0);
        assert_eq!(c.replicas_for(rate(f64::NAN), SHORT, &slo).unwrap().replicas, 0);
        // The default utilization for a 10 s cold start is 90%: 100 / (0.9 * 13.36) -> 9.
        let planned = SloTargets::default();
        assert_eq!(planned.utilization_for(c.cold_start), 0.9);
        assert_eq!(c.replicas_for(rate(100.0), SHORT, &planned).unwrap().replicas, 9);

        // With 8 replicas a prompt's own prefill takes 10 ms + one 46 ms step. A 40 ms
        // target (a lone prompt on an idle replica needs 21 ms) takes more replicas, for
        // shorter steps and less waiting; fewer for a looser percentile.
        let tight = SloTargets {
            ttft_seconds: 0.04,
            ..slo
        };
        let sizing = c.replicas_for(rate(100.0), SHORT, &tight).unwrap();
        assert_eq!(sizing.limited_by, Limit::TimeToFirstToken);
        assert!(sizing.replicas > 8, "{sizing:?}");
        assert!(sizing.ttft_seconds <= 0.04, "{sizing:?}");
        let fewer = sizing.replicas - 1;
        let model = StepModel::new(c.performance.as_ref().unwrap(), SHORT);
        assert!(model.ttft_quantile(100.0, fewer, 0.99) > 0.04, "the fewest that meet it");

        // Where waiting dominates (slow prefill: 0.2 s per prompt, 4.5 prompts/s per
        // replica), the percentile decides: p99 needs more replicas than p50.
        let mut slow = c.clone();
        slow.performance.as_mut().unwrap().step.prefill_tokens_per_second = 500.0;
        let loose = SloTargets {
            ttft_seconds: 0.5,
            inter_token_seconds: 1.0,
            ..slo
        };
        let p99 = slow.replicas_for(rate(10.0), SHORT, &loose).unwrap();
        let p50 = slow
            .replicas_for(rate(10.0), SHORT, &SloTargets { percentile: 50.0, ..loose })
            .unwrap();
        assert_eq!(p99.limited_by, Limit::TimeToFirstToken);
        assert!(p50.replicas < p99.replicas, "{p50:?} {p99:?}");

        // A lone 100-token prompt at 500 tokens/s takes 0.2 s: a 0.1 s TTFT is out of reach
        // of any replica count, and only the inter-token target is left.
        let mut slow = c.clone();
        slow.performance.as_mut().unwrap().step.prefill_tokens_per_second = 500.0;
        let out_of_reach = SloTargets {
            ttft_seconds: 0.1,
            ..slo
        };
        let sizing = slow
            .replicas_for(
                SloLoad {
                    requests_per_second: 10.0,
                    burst_prompt_tokens: 1e6,
                },
                SHORT,
                &out_of_reach,
            )
            .unwrap();
        assert!(!sizing.ttft_attainable);
        assert_eq!(sizing.limited_by, Limit::InterToken);

        // A burst: 400 prompts of 100 tokens within one TTFT (2 s) need 40,000 tokens of
        // prefill in 2 s; a replica at 5 requests/s prefills 512 tokens per (51.2 ms + a
        // ~15 ms decode step), about 7,700 tokens/s, so 3 replicas where the rate needs 1.
        let sizing = c
            .replicas_for(
                SloLoad {
                    requests_per_second: 5.0,
                    burst_prompt_tokens: 40_000.0,
                },
                SHORT,
                &slo,
            )
            .unwrap();
        assert_eq!(sizing.limited_by, Limit::PrefillBurst);
        assert_eq!(sizing.replicas, 3, "{sizing:?}");
        // Without a performance profile there is nothing to size with.
        let bare = ReplicaCapacity {
            performance: None,
            ..c
        };
        assert_eq!(bare.replicas_for(rate(10.0), SHORT, &slo), None);
    }

    #[test]
    fn erlang_c_matches_known_values() {
        // One server: the probability of waiting is the utilisation.
        assert!(close(erlang_c(1, 0.3), 0.3, 1e-12));
        // Two servers, offered load 1: C = 1/3.
        assert!(close(erlang_c(2, 1.0), 1.0 / 3.0, 1e-12));
        // Ten servers at offered load 8: C = 0.4092 (standard tables).
        assert!((erlang_c(10, 8.0) - 0.4092).abs() < 1e-3, "{}", erlang_c(10, 8.0));
        // Many servers, light load: almost never waits.
        assert!(erlang_c(1000, 100.0) < 1e-12);
    }

    #[test]
    fn batch_and_kv_cache_cap_the_concurrency() {
        let slo = SloTargets::default();
        // The p99 of the requests in a replica, L + 2.33 sqrt(L), must fit.
        let p99 = |l: f64| l + 2.326348 * l.sqrt();
        let by_batch = capacity(32, 1_000_000).limits(SHORT, &slo);
        assert_eq!(by_batch.limited_by, Limit::BatchSize);
        assert!(close(p99(by_batch.concurrent), 32.0, 1e-5), "{by_batch:?}");
        // 6000 tokens / (100 + 50) per sequence = 40 sequences.
        let by_kv = capacity(256, 6_000).limits(SHORT, &slo);
        assert_eq!(by_kv.limited_by, Limit::KvCache);
        assert!(close(p99(by_kv.concurrent), 40.0, 1e-5), "{by_kv:?}");
        assert!(by_kv.requests_per_second.unwrap() < by_batch.requests_per_second.unwrap() * 1.5);
        assert!(by_kv.requests_per_second.unwrap() < 13.7);
    }

    #[test]
    fn without_a_performance_profile_only_batch_and_kv_are_known() {
        let bare = ReplicaCapacity {
            performance: None,
            ..capacity(64, 3_000)
        };
        let limits = bare.limits(SHORT, &SloTargets::default());
        assert_eq!(limits.concurrent, 20.0); // 3000 / 150
        assert_eq!(limits.limited_by, Limit::KvCache);
        assert_eq!(limits.requests_per_second, None);
        let limits = bare.limits(
            Workload {
                prompt_tokens: 10.0,
                output_tokens: 10.0,
            },
            &SloTargets::default(),
        );
        assert_eq!((limits.concurrent, limits.limited_by), (64.0, Limit::BatchSize));
    }

    #[test]
    fn the_sim_profiles_rank_as_their_hardware_does() {
        use swell_workers::sim::builtin;
        let azure = Workload {
            prompt_tokens: 1155.0,
            output_tokens: 211.0,
        };
        let slo = SloTargets::default();
        let rate = |name: &str| {
            let profile = builtin(name).unwrap();
            ReplicaCapacity {
                max_batch_size: profile.max_batch_size,
                kv_capacity_tokens: profile.kv_capacity_tokens,
                cold_start: profile.cold_start,
                performance: Some(profile.performance()),
            }
            .limits(azure, &slo)
        };
        let h100 = rate("llama-3.1-8b-h100");
        let tp4 = rate("llama-3.1-70b-4xh100");
        let cpu = rate("smollm2-135m-cpu");
        // 8B on one H100 carries ~17 conversations/s (the KV cache, 440k tokens / 1366
        // per sequence = 322 sequences, binds just before the 100 ms inter-token target).
        assert!((15.0..19.0).contains(&h100.requests_per_second.unwrap()), "{h100:?}");
        assert!(h100.concurrent > 250.0 && h100.concurrent <= 322.0, "{h100:?}");
        // 70B on four: fewer, and per GPU far fewer.
        assert!(tp4.requests_per_second.unwrap() < h100.requests_per_second.unwrap());
        // The 2-core CPU: about one conversation every few seconds.
        assert!(cpu.requests_per_second.unwrap() < 1.0, "{cpu:?}");
        assert!(cpu.concurrent < 20.0, "{cpu:?}");
        // The free profile does not hang or divide by zero.
        let zero = rate("zero");
        assert!(zero.requests_per_second.unwrap() > 1e6, "{zero:?}");
    }

    #[test]
    fn nonsense_lengths_do_not_panic() {
        let c = capacity(8, 1_000);
        for workload in [
            Workload { prompt_tokens: 0.0, output_tokens: 0.0 },
            Workload { prompt_tokens: f64::NAN, output_tokens: f64::INFINITY },
            Workload { prompt_tokens: 1e12, output_tokens: 1e12 },
        ] {
            let limits = c.limits(workload, &SloTargets::default());
            assert!(limits.concurrent >= 1.0, "{limits:?}");
            assert!(limits.requests_per_second.unwrap() >= 0.0, "{limits:?}");
        }
    }

    #[test]
    fn the_workload_estimate_starts_from_the_prior_and_follows_the_traffic() {
        let mut estimate = WorkloadEstimate::default();
        assert_eq!(
            estimate.workload(),
            Workload {
                prompt_tokens: PRIOR_PROMPT_TOKENS,
                output_tokens: PRIOR_OUTPUT_TOKENS
            }
        );
        // 10 requests/s of 100 prompt tokens, 20 output tokens each, for 10 minutes.
        for t in 0..600 {
            estimate.record(&LoadSample {
                at: Duration::from_secs(t),
                arrivals: 10,
                prompt_tokens: 1_000,
                generated_tokens: 200,
                ..LoadSample::default()
            });
        }
        let workload = estimate.workload();
        // The 4 prior requests still weigh against a memory of 1000.
        assert!(close(workload.prompt_tokens, 100.0, 0.05), "{workload:?}");
        assert!(close(workload.output_tokens, 20.0, 0.05), "{workload:?}");
        // An idle hour forgets nothing (the memory counts requests, not time).
        for t in 600..4200 {
            estimate.record(&LoadSample {
                at: Duration::from_secs(t),
                ..LoadSample::default()
            });
        }
        assert_eq!(estimate.workload(), workload);
        // Then 6,000 longer requests (six memories): the mean has moved.
        for t in 4200..4800 {
            estimate.record(&LoadSample {
                at: Duration::from_secs(t),
                arrivals: 10,
                prompt_tokens: 5_000,
                generated_tokens: 1_000,
                ..LoadSample::default()
            });
        }
        let workload = estimate.workload();
        assert!(close(workload.prompt_tokens, 500.0, 0.01), "{workload:?}");
        assert!(close(workload.output_tokens, 100.0, 0.01), "{workload:?}");
        // A backlog: 100 arrive, 90 wait in the queue. Counting per arrival would read the
        // output low; only the 10 that finished count.
        let mut backlog = WorkloadEstimate::default();
        for t in 0..100 {
            backlog.record(&LoadSample {
                at: Duration::from_secs(t),
                arrivals: 100,
                queued: 90 * (t + 1),
                prompt_tokens: 10_000,
                generated_tokens: 1_000,
                ..LoadSample::default()
            });
        }
        assert!(close(backlog.workload().output_tokens, 100.0, 0.05), "{:?}", backlog.workload());
    }

    #[test]
    fn slo_parses_from_toml_and_json_and_validates() {
        use crate::autoscaler::AutoscalingPolicy;
        let policy: AutoscalingPolicy =
            toml::from_str("slo = { ttft_seconds = 0.5, inter_token_seconds = 0.05 }").unwrap();
        assert_eq!(
            policy.slo,
            SloMode::On(SloTargets {
                ttft_seconds: 0.5,
                inter_token_seconds: 0.05,
                percentile: 99.0,
                utilization: None,
            })
        );
        let policy: AutoscalingPolicy = toml::from_str("slo = false").unwrap();
        assert_eq!(policy.slo, SloMode::Off);
        assert_eq!(policy.slo.targets(true), None);
        // Left out: on with the default targets for `auto` load targets, off for written ones.
        let policy: AutoscalingPolicy = toml::from_str("").unwrap();
        assert_eq!(policy.slo, SloMode::Auto);
        assert_eq!(policy.slo.targets(policy.load_targets.auto), Some(SloTargets::default()));
        let policy: AutoscalingPolicy =
            toml::from_str("[load_targets]\nconcurrent_requests = 4").unwrap();
        assert_eq!(policy.slo.targets(policy.load_targets.auto), None);
        let policy: AutoscalingPolicy = serde_json::from_str(r#"{"slo": null}"#).unwrap();
        assert_eq!(policy.slo, SloMode::Off);
        let policy: AutoscalingPolicy = serde_json::from_str(r#"{"slo": "auto"}"#).unwrap();
        assert_eq!(policy.slo, SloMode::Auto);
        let policy: AutoscalingPolicy =
            serde_json::from_str(r#"{"slo": {"percentile": 90}}"#).unwrap();
        assert_eq!(policy.slo.targets(false).unwrap().percentile, 90.0);

        let error = toml::from_str::<AutoscalingPolicy>("slo = true").unwrap_err().to_string();
        assert!(error.contains("or false for off"), "{error}");
        let error = toml::from_str::<AutoscalingPolicy>("slo = { ttft = 2 }")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `ttft`"), "{error}");

        let mut policy = AutoscalingPolicy::default();
        policy.slo = SloMode::On(SloTargets {
            ttft_seconds: 0.0,
            ..SloTargets::default()
        });
        assert_eq!(
            policy.validate().unwrap_err(),
            "autoscaling.slo.ttft_seconds (0) must be a finite number greater than 0"
        );
        policy.slo = SloMode::On(SloTargets {
            percentile: 100.0,
            ..SloTargets::default()
        });
        assert!(policy.validate().unwrap_err().starts_with("autoscaling.slo.percentile (100)"));
        // Round trip.
        let policy = AutoscalingPolicy::default();
        let json = serde_json::to_value(&policy).unwrap();
        assert_eq!(json["slo"], "auto");
        let back: AutoscalingPolicy = serde_json::from_value(json).unwrap();
        assert_eq!(back, policy);
    }

    #[test]
    fn load_targets_are_auto_unless_a_table_is_written() {
        use crate::autoscaler::AutoscalingPolicy;
        let policy: AutoscalingPolicy = toml::from_str("").unwrap();
        assert!(policy.load_targets.auto);
        let policy: AutoscalingPolicy = toml::from_str("load_targets = \"auto\"").unwrap();
        assert_eq!(policy.load_targets, LoadTargets::auto());
        let policy: AutoscalingPolicy =
            toml::from_str("[load_targets]\nrequests_per_second = 5").unwrap();
        assert!(!policy.load_targets.auto);
        assert_eq!(policy.load_targets.concurrent_requests, Some(8.0));
        assert_eq!(policy.load_targets.requests_per_second, Some(5.0));
        let error = toml::from_str::<AutoscalingPolicy>("load_targets = \"automatic\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"auto\" or a table"), "{error}");
        let error = toml::from_str::<AutoscalingPolicy>("[load_targets]\nconcurrent = 3")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `concurrent`"), "{error}");
        // Serialized as "auto", and back.
        let json = serde_json::to_value(AutoscalingPolicy::default()).unwrap();
        assert_eq!(json["load_targets"], "auto");
        let back: AutoscalingPolicy = serde_json::from_value(json).unwrap();
        assert!(back.load_targets.auto);
        let explicit = AutoscalingPolicy {
            load_targets: LoadTargets::default(),
            ..AutoscalingPolicy::default()
        };
        let json = serde_json::to_value(&explicit).unwrap();
        assert_eq!(json["load_targets"]["concurrent_requests"], 8.0);
        assert_eq!(serde_json::from_value::<AutoscalingPolicy>(json).unwrap(), explicit);
    }

    fn sample(at: u64, running: u64, arrivals: u64) -> LoadSample {
        LoadSample {
            at: Duration::from_secs(at),
            running,
            arrivals,
            prompt_tokens: arrivals * 100,
            generated_tokens: arrivals * 50,
            ..LoadSample::default()
        }
    }

    fn instant_policy() -> AutoscalingPolicy {
        AutoscalingPolicy {
            max_replicas: 100,
            metrics_window: Duration::from_secs(10),
            slo: SloMode::On(full()),
            ..AutoscalingPolicy::default()
        }
    }

    fn ready(replicas: u32) -> ReplicaCounts {
        ReplicaCounts {
            ready: replicas,
            starting: 0,
            draining: 0,
        }
    }

    /// An autoscaler that has seen 10 minutes of 100-token prompts, 50-token outputs.
    fn warmed(policy: AutoscalingPolicy, capacity: Option<ReplicaCapacity>) -> Autoscaler {
        let mut autoscaler = Autoscaler::new(policy);
        if let Some(capacity) = capacity {
            autoscaler = autoscaler.with_capacity(capacity);
        }
        for t in 0..600 {
            autoscaler.record(sample(t, 0, 100));
        }
        autoscaler
    }

    #[test]
    fn the_auto_concurrency_target_follows_the_capacity() {
        // 51.9 requests in a replica meet the inter-token target at p99 (above, for the
        // lengths seen: 104 and 51 with the prior's 4 requests); auto targets half of
        // that. 1 request/s arrives (SLO mode: 1 replica), 100 are in flight.
        let mut autoscaler = warmed(instant_policy(), Some(capacity(256, 1_000_000)));
        for t in 600..=620 {
            autoscaler.record(sample(t, 100, 1));
        }
        let decision = autoscaler.decide(Duration::from_secs(620), ready(1));
        // 100 / 25.94 -> 4.
        assert_eq!(decision.desired, 4, "{}", decision.detail);
        assert_eq!(decision.reason, ScaleReason::ConcurrentRequests);
        assert!(
            decision.detail.contains("target 25.94 per replica (auto: 50% of 51.87 concurrent"),
            "{}",
            decision.detail
        );
        assert!(decision.detail.contains("limited by inter_token"), "{}", decision.detail);

        // Without a capacity model the fixed default of 8 applies: 100 / 8 -> 13.
        let mut bare = warmed(instant_policy(), None);
        for t in 600..=620 {
            bare.record(sample(t, 100, 1));
        }
        let decision = bare.decide(Duration::from_secs(620), ready(1));
        assert!(
            decision.detail.starts_with("concurrent_requests 100 avg over 10s / target 8 per replica -> 13"),
            "{}",
            decision.detail
        );
        assert!(!decision.detail.contains("auto"), "{}", decision.detail);

        // A written table is used as written, capacity or not: 100 / 20 -> 5.
        let policy = AutoscalingPolicy {
            load_targets: LoadTargets {
                concurrent_requests: Some(20.0),
                ..LoadTargets::default()
            },
            slo: SloMode::Off,
            ..instant_policy()
        };
        let mut explicit = warmed(policy, Some(capacity(256, 1_000_000)));
        for t in 600..=620 {
            explicit.record(sample(t, 100, 1));
        }
        assert_eq!(explicit.decide(Duration::from_secs(620), ready(1)).desired, 5);
    }

    #[test]
    fn slo_mode_sizes_for_the_arrival_rate_and_wins_when_higher() {
        let mut autoscaler = warmed(instant_policy(), Some(capacity(256, 1_000_000)));
        // 50 requests/s arrive; few are in flight yet (the concurrency target says 1).
        for t in 600..611 {
            autoscaler.record(sample(t, 10, 50));
        }
        let decision = autoscaler.decide(Duration::from_secs(610), ready(1));
        // 50 / 13.01 per replica -> 4.
        assert_eq!(decision.desired, 4, "{}", decision.detail);
        assert_eq!(decision.reason, ScaleReason::Slo);
        assert!(
            decision.detail.starts_with("slo 50 requests per second over 10s (70 above noise in the busiest 2s) at prompt 104, output 51: 13.01 per replica within inter-token 100ms, TTFT p99 2s modelled 0.07s, limited by inter_token -> 4"),
            "{}",
            decision.detail
        );
        // A tighter inter-token target needs more replicas (about 11.2 per replica at p99).
        let policy = AutoscalingPolicy {
            slo: SloMode::On(SloTargets {
                inter_token_seconds: 0.05,
                ..full()
            }),
            ..instant_policy()
        };
        let mut tight = warmed(policy, Some(capacity(256, 1_000_000)));
        for t in 600..611 {
            tight.record(sample(t, 10, 50));
        }
        let decision = tight.decide(Duration::from_secs(610), ready(1));
        assert_eq!(decision.desired, 5, "{}", decision.detail);
        // The default utilization plans 90% of each replica (10 s cold start): 50 / 11.7.
        let policy = AutoscalingPolicy {
            slo: SloMode::On(SloTargets::default()),
            ..instant_policy()
        };
        let mut planned = warmed(policy, Some(capacity(256, 1_000_000)));
        for t in 600..611 {
            planned.record(sample(t, 10, 50));
        }
        assert_eq!(planned.decide(Duration::from_secs(610), ready(1)).desired, 5);
        // SLO mode off: only the concurrency target (10 / 26 -> 1).
        let off = AutoscalingPolicy {
            slo: SloMode::Off,
            ..instant_policy()
        };
        let mut off = warmed(off, Some(capacity(256, 1_000_000)));
        for t in 600..611 {
            off.record(sample(t, 10, 50));
        }
        let decision = off.decide(Duration::from_secs(610), ready(1));
        assert_eq!(decision.desired, 1, "{}", decision.detail);
        // Without a performance profile SLO mode has nothing to say.
        let bare = ReplicaCapacity {
            performance: None,
            ..capacity(256, 1_000_000)
        };
        let mut bare = warmed(instant_policy(), Some(bare));
        for t in 600..611 {
            bare.record(sample(t, 10, 50));
        }
        let decision = bare.decide(Duration::from_secs(610), ready(1));
        assert_eq!(decision.reason, ScaleReason::Stable, "{}", decision.detail);
        assert!(decision.detail.contains("auto: 50% of 256 sequences"), "{}", decision.detail);
    }
}
