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
//! Without a performance profile it recommends nothing. The terms were tuned against the
//! baselines in the simulator over the Azure and ServeGen traces (`docs/simulator.md`).
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

//!
//! # Layout
//! - [`replica`]: the step model and [`ReplicaCapacity`]: limits and SLO sizing of one replica.
//! - [`planner`]: [`WorkloadEstimate`] (observed mean lengths) and [`CapacityPlanner`],
//!   which turns them into SLO-mode and `auto` targets. SLO targets themselves are
//!   configuration, in [`crate::policy::slo`].

pub mod planner;
pub mod replica;

#[cfg(test)]
mod tests;

pub use planner::{CapacityAdvice, CapacityPlanner, WorkloadEstimate};
pub use replica::{Limit, ReplicaCapacity, ReplicaLimits, SloLoad, SloSizing, Workload};

/// The share of the SLO-meeting concurrency the `auto` concurrent-requests target aims
/// at. Below 1 because load is bursty within the metrics window (the SLO-meeting
/// concurrency is a limit, not an operating point) and new replicas take a cold start to
/// arrive; tuned in the simulator (docs/simulator.md).
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
