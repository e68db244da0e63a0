//! The autoscaling policy: how many replicas a deployment should have right now.
//!
//! This module is pure policy. It never reads the clock, sleeps, spawns or talks to
//! replicas: the deployment supervisor feeds it load samples and the replica counts it
//! sees, asks for a [`Decision`], carries the decision out, and reports back what it
//! actually changed. Every function takes `now: Duration`, a monotonic time since an
//! arbitrary origin, so the whole policy runs in virtual time in the tests below. The
//! wall clock, which only schedules need, is an input too ([`LoadSample::unix_ms`]).
//!
//! # Layout
//! - this file: the policy's configuration ([`AutoscalingPolicy`]), its inputs
//!   ([`LoadSample`], [`ReplicaCounts`]), its output ([`Decision`]) and [`Autoscaler`];
//! - [`signals`]: the load signals by name, per sample and over a window;
//! - [`schedules`](schedule): time-of-day / day-of-week windows that change min/max;
//! - [`rules`]: custom threshold rules;
//! - [`predictive`]: the predictive floor (seasonal or trend forecast);
//! - [`record`]: decision records and the history the supervisor keeps.
//!
//! # How the desired replica count is found
//!
//! Capacity means `ready + starting`: replicas still starting are coming capacity, not
//! ignored; draining replicas are leaving and are not counted.
//!
//! 1. **Signals, averaged.** Every tick (e.g. once a second) the supervisor records a
//!    [`LoadSample`]. Signals are averaged over `metrics_window` (the samples with
//!    `at > now - metrics_window`; see [`signals`] for each signal):
//!    - level signals (concurrent requests = `queued + running`, queue depth, queue
//!      delay, KV-cache utilisation) = the mean over those samples;
//!    - rates (requests, generated tokens and prompt tokens per second) = the sum of
//!      those counts over the samples, divided by the span the samples actually cover:
//!      `min(metrics_window, now - first sample ever recorded)`, at least 1 s.
//! 2. **One recommendation per target.** Each configured target in [`LoadTargets`]
//!    recommends `ceil(need)` replicas, where the *need* is
//!    - `signal / target` for the per-replica targets (concurrent requests, requests/s,
//!      generated and prompt tokens/s, queue depth);
//!    - `(KV tokens in use / one replica's KV capacity) / target` for
//!      `kv_cache_utilization` (a fraction of capacity, like a CPU-utilisation target);
//!    - `ready × queue delay / target` for `queue_delay_seconds` (the Kubernetes HPA's
//!      rule for a metric that is not per replica).
//!
//!    These are totals over the deployment, so replicas still warming up neither add
//!    load nor dilute it: KV utilisation divides by *ready* replicas only, and a
//!    warming replica serves nothing, so it adds no tokens or requests.
//!    **Tolerance:** when the capacity is not 0 and `|need / capacity − 1| ≤
//!    tolerance` (default 10%), the target recommends the current capacity, so small
//!    changes move nothing. The highest recommendation wins and names the reason
//!    ([`ScaleReason::ConcurrentRequests`], ...); ties go to the first in
//!    [`Signal::ALL`]. A target of `None` (`false` in TOML, `null` in JSON) is not used.
//!    With a capacity model (the engine's description, [`crate::capacity`]), `auto`
//!    load targets (the default) take the concurrent-requests target from it, and SLO
//!    mode adds one more recommendation, the replicas that meet the latency targets
//!    for the current load, which wins only when higher ([`ScaleReason::Slo`]).
//! 3. **Stabilisation, like the Kubernetes HPA.** Each `decide` call remembers the
//!    winning recommendation with its time. To scale *up*, the lowest recommendation of
//!    the last `scale_up_window` is used, so load must be sustained for the whole window
//!    (a recommendation exactly one window old still counts; a window of 0 means at
//!    once). To scale *down*, the highest recommendation of the last
//!    `scale_down_window` is used. While the autoscaler has not yet been deciding for a
//!    whole window (just created), the part of the window it has not seen counts as
//!    "keep the current count", so a fresh autoscaler never jumps. History is kept only
//!    as long as the largest window.
//! 4. **At least one replica while not idle.** A load recommendation of 0 still keeps 1
//!    replica; only the idle rule goes to 0.
//! 5. **Burst ("panic") mode**, after Knative's KPA. The same targets are also
//!    evaluated over the short `panic_window` (default 6 s, without tolerance). When
//!    that recommendation reaches `panic_threshold` × capacity (off by default; 2.0 is
//!    Knative's default), the deployment panics: the count goes to the panic
//!    recommendation at once, without the scale-up window, and never goes down while
//!    the panic lasts (the count is the highest of the stabilised count, the panic
//!    recommendation, the current capacity and the highest count of this panic).
//!    The panic ends once a whole `metrics_window` (the stable window, as in Knative)
//!    passed without the threshold being reached, so the stable average has caught up
//!    with the burst when the windows of step 3 apply again. (Ending it after only a
//!    `panic_window` would let a short scale-down window drop the count while the
//!    stable average still lags the burst.) It is off by default: in the simulator
//!    (`llama-3.1-8b-h100`, target 280 concurrent requests, 300 req/s peaks) it raised
//!    SLO attainment on a synthetic spike (80.4% -> 84.1%, 18% more replica-seconds)
//!    but lowered it on synthetic steps (97.5% -> 94.4%, 39% more replica-seconds),
//!    so it is a per-deployment choice.
//! 6. **Custom rules** ([`rules`]): a rule that fired recommends its count beside the
//!    targets (its `for` is its own window, so the stabilisation windows do not delay
//!    it); the highest count wins, and each rule that fired is named in the decision.
//!    `set_min` rules raise the effective `min_replicas` while they fire.
//! 7. **Predictive floor** ([`predictive`], off by default): with `mode = "on"` the
//!    count is at least the forecast need over the look-ahead (cold start + margin),
//!    applied at once; it only raises. `preview` computes and reports it, never acts.
//! 8. **Clamp** to the effective `[min_replicas, max_replicas]`: the policy's values,
//!    replaced by the active [`schedules`](schedule) where they set them, with `min`
//!    raised by firing `set_min` rules (max wins when they cross). The reason becomes
//!    [`ScaleReason::MinReplicas`] or [`ScaleReason::MaxReplicas`] when the clamp
//!    changed the count.
//! 9. **A scale in progress.** While replicas are starting (a scale-up in progress):
//!    - the count does not go down (it would retire replicas just started), except to
//!      obey `max_replicas`; the decision says `scale_in_progress`;
//!    - queue signals (queue depth and queue delay targets, and rules on them), which
//!      cannot fall until the starting replicas serve, recommend at most the current
//!      capacity, so they do not add more for a queue the coming replicas will take;
//!    - the other targets still add replicas, but only for load beyond what the
//!      starting replicas will bring, since those count as capacity.
//! 10. **Velocity**, like HPA behavior policies. Over any `period`, the replicas added
//!     (removed) as reported through [`Autoscaler::scaled`] may not exceed
//!     `max(replicas, ceil(percent / 100 × count at the start of the period))` (or the
//!     `min` of the two with `select = "min"`), where the count at the start of the
//!     period is the current count minus what was added (plus what was removed) within
//!     the period, so percent limits do not compound inside one period. With both
//!     `replicas` and `percent` unset the direction is unlimited. Going from 0 to 1
//!     and from 1 to 0 is always allowed. When the limit cut the change,
//!     [`Decision::velocity_limited`] is true and the detail says so.
//!
//! Two rules bypass the windows:
//!
//! - **Queued at zero.** With no capacity (`ready + starting == 0`) and the latest
//!   sample showing work (`queued > 0` or `running > 0`), the desired count is
//!   `max(1, recommendation)` at once, without the up-window, reason
//!   [`ScaleReason::QueuedAtZero`]. It is still capped by `max_replicas` and velocity.
//!   Without work, a deployment at 0 replicas stays at 0 (unless `min_replicas`, a rule
//!   or the predictive floor says otherwise).
//! - **Scale to zero.** Only with an effective `min_replicas` of 0: when no sample
//!   showed activity (anything queued, running, arrived or generated) for
//!   `scale_to_zero_window`, the desired count is 0, reason [`ScaleReason::Idle`]. Any
//!   activity restarts that clock. The scale-down window does not apply (the idle
//!   window is its own), the velocity limit does, except for the last step from 1 to 0.
//!
//! So there are three windows, each its own knob: `scale_up_window` (sustained load
//! before adding), `scale_down_window` (sustained low load before removing) and
//! `scale_to_zero_window` (no activity at all before the last replica goes), and two
//! velocity limits, `velocity.scale_up` and `velocity.scale_down`.
//!
//! The direction is `Up` when desired > current, `Down` when desired < current, and
//! `None` otherwise, in which case the reason is [`ScaleReason::Stable`] (the detail
//! still names the target that set the count). Every [`Decision`] carries its inputs:
//! the signals, each target's recommendation, the stabilised count, and what burst
//! mode, rules, schedules, the predictive floor, a scale in progress and velocity did.
//!
//! # Example
//!
//! The defaults: `auto` load targets and SLO mode (from the replica's capacity model;
//! without one, 8 concurrent requests per replica), tolerance 10%, `metrics_window` 30s,
//! `scale_up_window` 0s, `scale_down_window` 10m, `scale_to_zero_window` 1h, burst mode
//! off, scale-up unlimited, scale-down by up to 100% per 15s. The example uses a written
//! target of 8 concurrent requests per replica, a `scale_up_window` of 30s, scale-up by
//! at most 4 replicas (or 100%) per 15s and scale-down by at most 1 per 60s (the
//! `classic_policy` of the tests).
//!
//! ```text
//! t=0       0 replicas, 1 request queued                -> 1 at once (queued_at_zero)
//! t=1..99   24 requests in flight                       -> the 30s average recommends 2 at t=1
//!                                                          and 3 (24 / 8) from t=2, but the 30s
//!                                                          up-window holds them back
//! t=31      the 2 of t=1 has held for 30s               -> 2 (concurrent_requests)
//! t=32      the 3 of t=2 has held for 30s               -> 3
//! t=100     traffic stops; the 30s average is 16 at t=109 (recommendation 2), 8 at t=119 (1)
//! t=709     the last 3 (t=108) is more than 10m old     -> 2
//! t=769     the last 2 (t=118) is gone, and 60s passed since the last step -> 1
//! t=3699    no activity since t=99 for 1h               -> 0 (idle)
//! ```
//!
//! In code, the supervisor's tick looks like this:
//!
//! ```rust,ignore
//! autoscaler.record(LoadSample { at: now, queued, running, arrivals, ..LoadSample::default() });
//! let decision = autoscaler.decide(now, ReplicaCounts { ready, starting, draining });
//! if decision.direction != ScaleDirection::None {
//!     let from = ready + starting;
//!     // ... start or drain replicas to reach decision.desired ...
//!     autoscaler.scaled(now, from, decision.desired);
//! }
//! ```

pub mod predictive;
pub mod record;
pub mod rules;
pub mod schedule;
pub mod signals;

#[cfg(test)]
mod policy_tests;

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

pub use predictive::{ForecastMethod, PredictiveEffect, PredictiveMode, PredictivePolicy};
pub use record::{DecisionHistory, DecisionRecord};
pub use rules::{CustomRule, RuleFired};
pub use schedule::{Schedule, TimeOfDay, Weekday};
pub use signals::Signal;

use predictive::DemandHistory;
use rules::{RuleAction, RuleState};
use schedule::ResolvedSchedules;

use crate::capacity::{CapacityPlanner, ReplicaCapacity, SloMode};

/// The shortest `metrics_window` (and `panic_window`) that validates.
pub const MIN_METRICS_WINDOW: Duration = Duration::from_secs(1);
/// The longest `metrics_window` that validates (samples are kept that long).
pub const MAX_METRICS_WINDOW: Duration = Duration::from_secs(60 * 60);
/// The longest `scale_up_window` / `scale_down_window` that validates (recommendations
/// are kept that long).
pub const MAX_STABILIZATION_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// The shortest span rates are divided by, so a single early sample does not explode.
/// The most replicas a deployment may have, and so any replica count of a policy
/// (`min_replicas`, `max_replicas`, schedules, rules, velocity). Far above any single
/// deployment seen in practice; a limit so that a typing error cannot ask a node for a
/// million replicas.
pub const MAX_REPLICAS: u32 = 1000;
/// The longest `scale_to_zero_window`.
pub const MAX_SCALE_TO_ZERO_WINDOW: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// The longest velocity period.
pub const MAX_VELOCITY_PERIOD: Duration = Duration::from_secs(24 * 60 * 60);
/// The largest velocity `percent` (a thousandfold step).
pub const MAX_VELOCITY_PERCENT: f64 = 100_000.0;
/// The largest load target, panic threshold or rule factor.
const MAX_TARGET: f64 = 1e12;
const MAX_FACTOR: f64 = 1000.0;

const MIN_RATE_SPAN: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Policy (configuration)
// ---------------------------------------------------------------------------------------

/// How a deployment scales. Deserializes from an empty table to the defaults; unknown
/// keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscalingPolicy {
    /// The fewest replicas, default 0 (scale to zero allowed).
    pub min_replicas: u32,
    /// The most replicas, default 4.
    pub max_replicas: u32,
    /// Load must be sustained this long before scaling up, default 30s.
    #[serde(with = "humantime_serde")]
    pub scale_up_window: Duration,
    /// Load must have been low this long before scaling down, default 10m.
    #[serde(with = "humantime_serde")]
    pub scale_down_window: Duration,
    /// No activity this long scales to 0 when `min_replicas` is 0, default 1h.
    #[serde(with = "humantime_serde")]
    pub scale_to_zero_window: Duration,
    /// Load is averaged over this, default 30s.
    #[serde(with = "humantime_serde")]
    pub metrics_window: Duration,
    /// Per-replica load targets; `"auto"` (the default, also when left out) derives
    /// them from the replica's capacity ([`crate::capacity`]).
    #[serde(with = "load_targets_or_auto")]
    pub load_targets: LoadTargets,
    /// A target whose need is within this fraction of the current capacity recommends
    /// the current capacity (0 <= tolerance < 1), default 0.1.
    pub tolerance: f64,
    /// Burst mode's short averaging window, default 6s (one longer than
    /// `metrics_window` acts as `metrics_window`).
    #[serde(with = "humantime_serde")]
    pub panic_window: Duration,
    /// Burst mode starts when the panic window's recommendation reaches this many
    /// times the capacity (Knative's default is 2.0); default off (`false` in TOML,
    /// `null` in JSON).
    #[serde(deserialize_with = "deserialize_optional_target")]
    pub panic_threshold: Option<f64>,
    /// How fast the replica count may change.
    pub velocity: Velocity,
    /// Time windows that change min/max replicas.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<Schedule>,
    /// Threshold rules on any signal.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<CustomRule>,
    /// The predictive floor (off by default).
    pub predictive: PredictivePolicy,
    /// SLO mode ([`crate::capacity`]): the replicas that meet these latency targets for
    /// the current load; one more recommendation beside the load targets. `"auto"` (the
    /// default): on with TTFT 2 s (p99) and inter-token 100 ms when the load targets are
    /// `auto`, off when the policy writes its own; a table turns it on with those
    /// targets; `false` turns it off.
    pub slo: SloMode,
}

impl Default for AutoscalingPolicy {
    fn default() -> Self {
        Self {
            min_replicas: 0,
            max_replicas: 4,
            scale_up_window: Duration::ZERO,
            scale_down_window: Duration::from_secs(10 * 60),
            scale_to_zero_window: Duration::from_secs(60 * 60),
            metrics_window: Duration::from_secs(30),
            load_targets: LoadTargets::auto(),
            tolerance: 0.1,
            panic_window: Duration::from_secs(6),
            panic_threshold: None,
            velocity: Velocity::default(),
            schedules: Vec::new(),
            rules: Vec::new(),
            predictive: PredictivePolicy::default(),
            slo: SloMode::Auto,
        }
    }
}

/// Per-replica load targets; `None` means the target is not used. In TOML, which has no
/// null, write `false` to turn a target off (e.g. `concurrent_requests = false`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadTargets {
    /// Queued + running requests per replica, default 8.
    #[serde(deserialize_with = "deserialize_optional_target")]
    pub concurrent_requests: Option<f64>,
    /// Arriving requests per second per replica, default off.
    #[serde(deserialize_with = "deserialize_optional_target")]
    pub requests_per_second: Option<f64>,
    /// Generated tokens per second per replica, default off.
    #[serde(deserialize_with = "deserialize_optional_target")]
    pub tokens_generated_per_second: Option<f64>,
    /// Prompt tokens of arriving requests per second per replica, default off.
    #[serde(deserialize_with = "deserialize_optional_target")]
    pub prompt_tokens_per_second: Option<f64>,
    /// Waiting requests per replica, default off.
    #[serde(deserialize_with = "deserialize_optional_target")]
    pub queue_depth: Option<f64>,
    /// Queue delay in seconds (not per replica: the count scales by delay / target),
    /// default off.
    #[serde(deserialize_with = "deserialize_optional_target")]
    pub queue_delay_seconds: Option<f64>,
    /// Fraction of the ready replicas' KV cache in use (0 < target <= 1), default off.
    #[serde(deserialize_with = "deserialize_optional_target")]
    pub kv_cache_utilization: Option<f64>,
    /// `load_targets = "auto"`: with a capacity model, the concurrent-requests target is
    /// derived from the replica's capacity ([`crate::capacity`]); without one, the
    /// values above apply. A written table is used as written (`auto` false).
    #[serde(skip)]
    pub auto: bool,
}

/// `load_targets`: the string `"auto"` or a table.
mod load_targets_or_auto {
    use std::fmt;

    use serde::de::{self, MapAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::LoadTargets;

    pub fn serialize<S: Serializer>(targets: &LoadTargets, serializer: S) -> Result<S::Ok, S::Error> {
        if targets.auto {
            serializer.serialize_str("auto")
        } else {
            targets.serialize(serializer)
        }
    }

    struct AutoOrTable;

    impl<'de> Visitor<'de> for AutoOrTable {
        type Value = LoadTargets;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("\"auto\" or a table of per-replica targets")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<LoadTargets, E> {
            if value == "auto" {
                Ok(LoadTargets::auto())
            } else {
                Err(E::invalid_value(de::Unexpected::Str(value), &self))
            }
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LoadTargets, A::Error> {
            LoadTargets::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<LoadTargets, D::Error> {
        deserializer.deserialize_any(AutoOrTable)
    }
}

impl Default for LoadTargets {
    fn default() -> Self {
        Self {
            concurrent_requests: Some(8.0),
            requests_per_second: None,
            tokens_generated_per_second: None,
            prompt_tokens_per_second: None,
            queue_depth: None,
            queue_delay_seconds: None,
            kv_cache_utilization: None,
            auto: false,
        }
    }
}

impl LoadTargets {
    /// The policy's default: `"auto"`, falling back to [`LoadTargets::default`]'s values.
    pub fn auto() -> Self {
        Self {
            auto: true,
            ..Self::default()
        }
    }

    /// No target at all (build one with struct update syntax).
    pub fn none() -> Self {
        Self {
            concurrent_requests: None,
            ..Self::default()
        }
    }

    /// The target for `signal`.
    pub fn get(&self, signal: Signal) -> Option<f64> {
        match signal {
            Signal::ConcurrentRequests => self.concurrent_requests,
            Signal::RequestsPerSecond => self.requests_per_second,
            Signal::TokensGeneratedPerSecond => self.tokens_generated_per_second,
            Signal::PromptTokensPerSecond => self.prompt_tokens_per_second,
            Signal::QueueDepth => self.queue_depth,
            Signal::QueueDelaySeconds => self.queue_delay_seconds,
            Signal::KvCacheUtilization => self.kv_cache_utilization,
        }
    }
}

/// How fast the replica count may change, per direction.
///
/// A partial table keeps the defaults of its own direction for the keys it leaves out:
/// `[velocity.scale_down] percent = 50` keeps the default `period = "15s"` (and no `replicas`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "VelocityInput")]
pub struct Velocity {
    /// Default: unlimited (period 15s).
    pub scale_up: VelocityLimit,
    /// Default: at most 100% per 15s.
    pub scale_down: VelocityLimit,
}

impl Default for Velocity {
    fn default() -> Self {
        Self {
            scale_up: VelocityLimit::scale_up_default(),
            scale_down: VelocityLimit::scale_down_default(),
        }
    }
}

/// Which of a direction's two limits applies when both are set (HPA `selectPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VelocitySelect {
    /// The larger allowance (the faster change), the default.
    #[default]
    Max,
    /// The smaller allowance (the slower change).
    Min,
}

/// A limit on replicas added (or removed) per period, like a Kubernetes HPA behavior
/// policy. With both `replicas` and `percent` set, `select` says which applies (the
/// larger by default); with both `None` the direction is unlimited. `false` turns a
/// key off in TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VelocityLimit {
    /// At most this many replicas per period.
    #[serde(deserialize_with = "deserialize_optional_replicas")]
    pub replicas: Option<u32>,
    /// Or this percent of the count at the start of the period (rounded up).
    #[serde(deserialize_with = "deserialize_optional_target")]
    pub percent: Option<f64>,
    /// The period the limit applies to.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// `max` (default) or `min` of the two limits.
    pub select: VelocitySelect,
}

impl VelocityLimit {
    /// The scale-up default: unlimited (period 15s). A staged ramp pays a cold start
    /// per stage; the recommendation already says how many replicas the load needs.
    pub fn scale_up_default() -> Self {
        Self {
            replicas: None,
            percent: None,
            period: Duration::from_secs(15),
            select: VelocitySelect::Max,
        }
    }

    /// The scale-down default: 100% per 15s (the Kubernetes HPA's): the scale-down window
    /// has already shown the load stayed low, so the surplus goes at once.
    pub fn scale_down_default() -> Self {
        Self {
            replicas: None,
            percent: Some(100.0),
            period: Duration::from_secs(15),
            select: VelocitySelect::Max,
        }
    }

    /// No limit at all (both `replicas` and `percent` unset).
    pub fn unlimited() -> Self {
        Self {
            replicas: None,
            percent: None,
            period: Duration::from_secs(60),
            select: VelocitySelect::Max,
        }
    }

    /// How many replicas may change within one period, starting from
    /// `count_at_period_start`; `None` means unlimited.
    fn allowance(&self, count_at_period_start: u64) -> Option<u64> {
        let by_percent = self.percent.map(|percent| {
            // An infinite percent is no limit; NaN and non-positive percents add nothing.
            if percent > 0.0 {
                ceil_to_u64(percent * count_at_period_start as f64 / 100.0)
            } else {
                0
            }
        });
        let by_replicas = self.replicas.map(u64::from);
        match (by_replicas, by_percent) {
            (None, None) => None,
            (Some(one), None) | (None, Some(one)) => Some(one),
            (Some(replicas), Some(percent)) => Some(match self.select {
                VelocitySelect::Max => replicas.max(percent),
                VelocitySelect::Min => replicas.min(percent),
            }),
        }
    }
}

/// `VelocityLimit::default()` is the scale-up default. Inside [`Velocity`], a partial
/// `scale_down` table falls back to [`VelocityLimit::scale_down_default`] instead.
impl Default for VelocityLimit {
    fn default() -> Self {
        Self::scale_up_default()
    }
}

/// What `Velocity` deserializes through, so each direction gets its own defaults for
/// the keys a table leaves out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VelocityInput {
    #[serde(default)]
    scale_up: VelocityLimitInput,
    #[serde(default)]
    scale_down: VelocityLimitInput,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct VelocityLimitInput {
    /// `None`: key absent; `Some(None)`: turned off.
    #[serde(deserialize_with = "deserialize_present_replicas")]
    replicas: Option<Option<u32>>,
    #[serde(deserialize_with = "deserialize_present_target")]
    percent: Option<Option<f64>>,
    #[serde(with = "humantime_serde")]
    period: Option<Duration>,
    select: Option<VelocitySelect>,
}

impl VelocityLimitInput {
    fn over(self, defaults: VelocityLimit) -> VelocityLimit {
        VelocityLimit {
            replicas: self.replicas.unwrap_or(defaults.replicas),
            percent: self.percent.unwrap_or(defaults.percent),
            period: self.period.unwrap_or(defaults.period),
            select: self.select.unwrap_or(defaults.select),
        }
    }
}

impl From<VelocityInput> for Velocity {
    fn from(input: VelocityInput) -> Self {
        Self {
            scale_up: input.scale_up.over(VelocityLimit::scale_up_default()),
            scale_down: input.scale_down.over(VelocityLimit::scale_down_default()),
        }
    }
}

impl AutoscalingPolicy {
    /// Checks the policy; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_bounds()?;
        if self.max_replicas < self.min_replicas {
            return Err(format!(
                "autoscaling.max_replicas ({}) must be at least autoscaling.min_replicas ({})",
                self.max_replicas, self.min_replicas
            ));
        }
        if self.max_replicas == 0 {
            return Err("autoscaling.max_replicas (0) must be at least 1".to_string());
        }
        if self.metrics_window < MIN_METRICS_WINDOW || self.metrics_window > MAX_METRICS_WINDOW {
            return Err(format!(
                "autoscaling.metrics_window ({}) must be between {} and {}",
                format_duration(self.metrics_window),
                format_duration(MIN_METRICS_WINDOW),
                format_duration(MAX_METRICS_WINDOW)
            ));
        }
        for (key, window) in [
            ("scale_up_window", self.scale_up_window),
            ("scale_down_window", self.scale_down_window),
        ] {
            if window > MAX_STABILIZATION_WINDOW {
                return Err(format!(
                    "autoscaling.{key} ({}) must be at most {}",
                    format_duration(window),
                    format_duration(MAX_STABILIZATION_WINDOW)
                ));
            }
        }
        let mut any_target = false;
        for signal in Signal::ALL {
            if let Some(target) = self.load_targets.get(signal) {
                any_target = true;
                if !(target.is_finite() && target > 0.0) {
                    return Err(format!(
                        "autoscaling.load_targets.{} ({target}) must be a finite number greater than 0",
                        signal.key()
                    ));
                }
                if signal == Signal::KvCacheUtilization && target > 1.0 {
                    return Err(format!(
                        "autoscaling.load_targets.kv_cache_utilization ({target}) must be at most 1 (a fraction of the KV cache)"
                    ));
                }
            }
        }
        if let SloMode::On(slo) = &self.slo {
            slo.validate()?;
        }
        if !any_target {
            return Err(format!(
                "autoscaling.load_targets must set at least one of {}",
                Signal::names()
            ));
        }
        if !(self.tolerance.is_finite() && (0.0..1.0).contains(&self.tolerance)) {
            return Err(format!(
                "autoscaling.tolerance ({}) must be at least 0 and less than 1",
                self.tolerance
            ));
        }
        if let Some(threshold) = self.panic_threshold {
            if !(threshold.is_finite() && threshold > 1.0) {
                return Err(format!(
                    "autoscaling.panic_threshold ({threshold}) must be a finite number greater than 1, or false to turn burst mode off"
                ));
            }
            if self.panic_window < MIN_METRICS_WINDOW {
                return Err(format!(
                    "autoscaling.panic_window ({}) must be at least {}",
                    format_duration(self.panic_window),
                    format_duration(MIN_METRICS_WINDOW)
                ));
            }
        }
        for (direction, limit) in [
            ("scale_up", &self.velocity.scale_up),
            ("scale_down", &self.velocity.scale_down),
        ] {
            if limit.replicas == Some(0) {
                return Err(format!(
                    "autoscaling.velocity.{direction}.replicas (0) must be at least 1, or false for no replica limit"
                ));
            }
            if let Some(percent) = limit.percent {
                if !(percent.is_finite() && percent > 0.0) {
                    return Err(format!(
                        "autoscaling.velocity.{direction}.percent ({percent}) must be a finite number greater than 0"
                    ));
                }
            }
            if limit.period.is_zero() {
                return Err(format!(
                    "autoscaling.velocity.{direction}.period (0s) must be greater than 0"
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (index, schedule) in self.schedules.iter().enumerate() {
            schedule.validate(&format!("autoscaling.schedules[{index}]"))?;
            if !names.insert(schedule.display_name(index)) {
                return Err(format!(
                    "autoscaling.schedules[{index}].name ({:?}) is used twice",
                    schedule.display_name(index)
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (index, rule) in self.rules.iter().enumerate() {
            rule.validate(&format!("autoscaling.rules[{index}]"))?;
            if !names.insert(rule.display_name(index)) {
                return Err(format!(
                    "autoscaling.rules[{index}].name ({:?}) is used twice",
                    rule.display_name(index)
                ));
            }
        }
        self.predictive.validate()
    }

    /// Upper bounds on counts, durations, factors and targets (lower bounds and
    /// consistency are checked in [`AutoscalingPolicy::validate`] proper).
    fn validate_bounds(&self) -> Result<(), String> {
        let replicas = |key: String, value: Option<u32>| match value {
            Some(value) if value > MAX_REPLICAS => {
                Err(format!("autoscaling.{key} ({value}) must be at most {MAX_REPLICAS}"))
            }
            _ => Ok(()),
        };
        let at_most = |key: &str, value: Duration, max: Duration| {
            if value > max {
                Err(format!(
                    "autoscaling.{key} ({}) must be at most {}",
                    format_duration(value),
                    format_duration(max)
                ))
            } else {
                Ok(())
            }
        };
        replicas("min_replicas".into(), Some(self.min_replicas))?;
        replicas("max_replicas".into(), Some(self.max_replicas))?;
        at_most("scale_to_zero_window", self.scale_to_zero_window, MAX_SCALE_TO_ZERO_WINDOW)?;
        at_most("panic_window", self.panic_window, MAX_METRICS_WINDOW)?;
        if let Some(threshold) = self.panic_threshold {
            if threshold.is_finite() && threshold > MAX_FACTOR {
                return Err(format!("autoscaling.panic_threshold ({threshold}) must be at most {MAX_FACTOR}"));
            }
        }
        for signal in Signal::ALL {
            if let Some(target) = self.load_targets.get(signal) {
                if target.is_finite() && target > MAX_TARGET {
                    return Err(format!(
                        "autoscaling.load_targets.{} ({target}) must be at most {MAX_TARGET:e}",
                        signal.key()
                    ));
                }
            }
        }
        for (direction, limit) in [("scale_up", &self.velocity.scale_up), ("scale_down", &self.velocity.scale_down)] {
            replicas(format!("velocity.{direction}.replicas"), limit.replicas)?;
            if let Some(percent) = limit.percent {
                if percent.is_finite() && percent > MAX_VELOCITY_PERCENT {
                    return Err(format!(
                        "autoscaling.velocity.{direction}.percent ({percent}) must be at most {MAX_VELOCITY_PERCENT}"
                    ));
                }
            }
            at_most(&format!("velocity.{direction}.period"), limit.period, MAX_VELOCITY_PERIOD)?;
        }
        for (index, schedule) in self.schedules.iter().enumerate() {
            replicas(format!("schedules[{index}].min_replicas"), schedule.min_replicas)?;
            replicas(format!("schedules[{index}].max_replicas"), schedule.max_replicas)?;
        }
        for (index, rule) in self.rules.iter().enumerate() {
            for (action, value) in
                [("add", rule.add), ("remove", rule.remove), ("set", rule.set), ("set_min", rule.set_min)]
            {
                replicas(format!("rules[{index}].{action}"), value)?;
            }
            if let Some(factor) = rule.multiply {
                if factor.is_finite() && factor > MAX_FACTOR {
                    return Err(format!("autoscaling.rules[{index}].multiply ({factor}) must be at most {MAX_FACTOR}"));
                }
            }
        }
        if let SloMode::On(slo) = &self.slo {
            for (key, value) in [("ttft_seconds", slo.ttft_seconds), ("inter_token_seconds", slo.inter_token_seconds)] {
                if value.is_finite() && value > 3600.0 {
                    return Err(format!("autoscaling.slo.{key} ({value}) must be at most 3600"));
                }
            }
        }
        Ok(())
    }

    /// Whether burst mode is on.
    pub fn panic_enabled(&self) -> bool {
        self.panic_threshold.is_some()
    }
}

// ---------------------------------------------------------------------------------------
// Inputs and outputs
// ---------------------------------------------------------------------------------------

/// One observation of a deployment's load, taken every tick (e.g. once a second).
/// Build it with `..LoadSample::default()` for the fields a caller does not know.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadSample {
    pub at: Duration,
    /// Jobs waiting in the queue.
    pub queued: u64,
    /// Sequences running on replicas.
    pub running: u64,
    /// Requests that arrived since the previous sample.
    pub arrivals: u64,
    /// Prompt tokens of those arrivals.
    pub prompt_tokens: u64,
    /// Tokens generated since the previous sample.
    pub generated_tokens: u64,
    /// How long the oldest waiting request has waited (zero when none waits).
    pub oldest_wait: Duration,
    /// Requests that left the queue for a replica since the previous sample.
    pub started: u64,
    /// The sum of those requests' waits in the queue.
    pub started_wait: Duration,
    /// KV-cache tokens in use on the ready replicas.
    pub kv_tokens_used: u64,
    /// One replica's KV-cache capacity, in tokens (0: unknown, no KV signal).
    pub kv_capacity_tokens: u64,
    /// Ready replicas when the sample was taken (KV utilisation divides by them).
    pub ready_replicas: u32,
    /// The wall clock when the sample was taken, Unix milliseconds (schedules need it;
    /// `None`: unknown, schedules are not applied).
    pub unix_ms: Option<u64>,
}

impl LoadSample {
    /// Whether this sample shows any activity (which keeps the deployment from idling).
    pub fn is_active(&self) -> bool {
        self.queued > 0
            || self.running > 0
            || self.arrivals > 0
            || self.prompt_tokens > 0
            || self.generated_tokens > 0
    }

    /// Whether work is waiting or running (what brings a deployment up from zero).
    pub fn has_work(&self) -> bool {
        self.queued > 0 || self.running > 0
    }

    /// The queue delay: the larger of the oldest wait and the mean wait of the requests
    /// that started since the previous sample.
    pub fn queue_delay(&self) -> Duration {
        let mean_started = if self.started == 0 {
            Duration::ZERO
        } else {
            self.started_wait / u32::try_from(self.started).unwrap_or(u32::MAX)
        };
        self.oldest_wait.max(mean_started)
    }

    /// KV tokens in use over the ready replicas' capacity; `None` without a ready
    /// replica or a known capacity.
    pub fn kv_cache_utilization(&self) -> Option<f64> {
        if self.ready_replicas == 0 || self.kv_capacity_tokens == 0 {
            return None;
        }
        Some(self.kv_tokens_used as f64 / (self.kv_capacity_tokens as f64 * f64::from(self.ready_replicas)))
    }

    /// KV tokens in use, in replicas' worth of KV capacity; `None` when unknown.
    fn kv_replicas_in_use(&self) -> Option<f64> {
        (self.kv_capacity_tokens > 0).then(|| self.kv_tokens_used as f64 / self.kv_capacity_tokens as f64)
    }
}

/// Replicas of a deployment by state. Capacity for decisions is `ready + starting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ReplicaCounts {
    pub ready: u32,
    pub starting: u32,
    /// Leaving replicas; not counted as capacity.
    pub draining: u32,
}

impl ReplicaCounts {
    /// `ready + starting`: what decisions count as the current replica count.
    pub fn capacity(&self) -> u32 {
        self.ready.saturating_add(self.starting)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleDirection {
    Up,
    Down,
    None,
}

impl ScaleDirection {
    /// Snake-case label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            ScaleDirection::Up => "up",
            ScaleDirection::Down => "down",
            ScaleDirection::None => "none",
        }
    }
}

impl fmt::Display for ScaleDirection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleReason {
    /// Work waiting at 0 replicas: the first replicas at once, no window.
    QueuedAtZero,
    /// The concurrent requests target set the count.
    ConcurrentRequests,
    /// The requests per second target set the count.
    RequestsPerSecond,
    /// The generated tokens per second target set the count.
    TokensGeneratedPerSecond,
    /// The prompt tokens per second target set the count.
    PromptTokensPerSecond,
    /// The queue depth target set the count.
    QueueDepth,
    /// The queue delay target set the count.
    QueueDelaySeconds,
    /// The KV-cache utilisation target set the count.
    KvCacheUtilization,
    /// Burst mode set the count.
    Panic,
    /// A custom rule set the count (the decision names the rules that fired).
    Rule,
    /// The predictive floor set the count.
    Predictive,
    /// Raised to `min_replicas` (the policy's, a schedule's or a `set_min` rule's).
    MinReplicas,
    /// Capped at `max_replicas` (the policy's or a schedule's).
    MaxReplicas,
    /// SLO mode's recommendation set the count.
    Slo,
    /// No activity for `scale_to_zero_window`: to 0.
    Idle,
    /// Nothing to do.
    Stable,
}

impl ScaleReason {
    /// Every reason (for metrics).
    pub const ALL: [ScaleReason; 16] = [
        ScaleReason::QueuedAtZero,
        ScaleReason::ConcurrentRequests,
        ScaleReason::RequestsPerSecond,
        ScaleReason::TokensGeneratedPerSecond,
        ScaleReason::PromptTokensPerSecond,
        ScaleReason::QueueDepth,
        ScaleReason::QueueDelaySeconds,
        ScaleReason::KvCacheUtilization,
        ScaleReason::Panic,
        ScaleReason::Rule,
        ScaleReason::Predictive,
        ScaleReason::MinReplicas,
        ScaleReason::MaxReplicas,
        ScaleReason::Slo,
        ScaleReason::Idle,
        ScaleReason::Stable,
    ];

    /// Snake-case label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            ScaleReason::QueuedAtZero => "queued_at_zero",
            ScaleReason::ConcurrentRequests => "concurrent_requests",
            ScaleReason::RequestsPerSecond => "requests_per_second",
            ScaleReason::TokensGeneratedPerSecond => "tokens_generated_per_second",
            ScaleReason::PromptTokensPerSecond => "prompt_tokens_per_second",
            ScaleReason::QueueDepth => "queue_depth",
            ScaleReason::QueueDelaySeconds => "queue_delay_seconds",
            ScaleReason::KvCacheUtilization => "kv_cache_utilization",
            ScaleReason::Panic => "panic",
            ScaleReason::Rule => "rule",
            ScaleReason::Predictive => "predictive",
            ScaleReason::MinReplicas => "min_replicas",
            ScaleReason::MaxReplicas => "max_replicas",
            ScaleReason::Slo => "slo",
            ScaleReason::Idle => "idle",
            ScaleReason::Stable => "stable",
        }
    }

    /// The reason a target's signal gives.
    pub fn of_signal(signal: Signal) -> Self {
        match signal {
            Signal::ConcurrentRequests => ScaleReason::ConcurrentRequests,
            Signal::RequestsPerSecond => ScaleReason::RequestsPerSecond,
            Signal::TokensGeneratedPerSecond => ScaleReason::TokensGeneratedPerSecond,
            Signal::PromptTokensPerSecond => ScaleReason::PromptTokensPerSecond,
            Signal::QueueDepth => ScaleReason::QueueDepth,
            Signal::QueueDelaySeconds => ScaleReason::QueueDelaySeconds,
            Signal::KvCacheUtilization => ScaleReason::KvCacheUtilization,
        }
    }
}

impl fmt::Display for ScaleReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One target's recommendation, in a decision record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetRecommendation {
    pub signal: Signal,
    /// The signal over the window.
    pub value: f64,
    pub target: f64,
    /// The need in replicas, before rounding and tolerance.
    pub need: f64,
    /// What the target recommends.
    pub replicas: u32,
    /// The need was within the tolerance of the capacity: it recommends the capacity.
    pub within_tolerance: bool,
    /// A queue signal capped at the capacity while replicas are starting.
    pub held_by_scale_in_progress: bool,
}

/// What burst mode saw in one decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PanicEffect {
    /// Whether the deployment is in burst mode.
    pub active: bool,
    /// The panic window's recommendation.
    pub recommendation: u32,
    /// `panic_threshold` × capacity: the recommendation that starts (or extends) a panic.
    pub threshold_replicas: f64,
    /// When this panic started (seconds on the decision clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_seconds: Option<f64>,
}

/// The schedules active in one decision and what they set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleEffect {
    pub active: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
}

/// What the autoscaler wants now, with everything it decided from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// When, in seconds on the autoscaler's clock (the `now` it was given).
    pub at_seconds: f64,
    /// When, on the wall clock (Unix ms), if the samples carry it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_ms: Option<u64>,
    /// The desired replica count (ready + starting).
    pub desired: u32,
    pub direction: ScaleDirection,
    pub reason: ScaleReason,
    /// Human readable, with the inputs, e.g. "concurrent_requests 23.5 avg over 30s /
    /// target 8 per replica -> 3 (was 1); limited by velocity to 2 (...)".
    pub detail: String,
    /// Whether the velocity limit cut the change.
    pub velocity_limited: bool,
    /// The replica counts it decided from.
    pub current: ReplicaCounts,
    /// The signals over the metrics window.
    pub signals: LoadAverages,
    /// Each configured target's recommendation.
    pub recommendations: Vec<TargetRecommendation>,
    /// The targets' count after the stabilisation windows (before burst mode, rules,
    /// the predictive floor and the clamp); the current count where the windows do not
    /// apply (at zero replicas, idle).
    pub stabilized: u32,
    /// Burst mode (absent when it is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub panic: Option<PanicEffect>,
    /// The custom rules that fired.
    pub rules_fired: Vec<RuleFired>,
    /// The schedules (absent when the policy has none or the wall clock is unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleEffect>,
    /// The predictive floor (absent when off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictive: Option<PredictiveEffect>,
    /// The effective bounds (after schedules and `set_min` rules).
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Replicas were starting and the decision held a scale-down (or queue signals).
    pub scale_in_progress: bool,
}

/// Load averaged over a window, for decisions and the status API.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LoadAverages {
    /// Mean of queued + running requests over the samples in the window.
    pub concurrent_requests: f64,
    pub requests_per_second: f64,
    pub tokens_generated_per_second: f64,
    pub prompt_tokens_per_second: f64,
    /// Mean of waiting requests.
    pub queue_depth: f64,
    /// Mean queue delay, seconds.
    pub queue_delay_seconds: f64,
    /// Mean fraction of the ready replicas' KV cache in use (samples with a ready
    /// replica and a known capacity).
    pub kv_cache_utilization: f64,
    /// Mean KV tokens in use, in replicas' worth of KV capacity.
    pub kv_cache_replicas_in_use: f64,
    /// The window, in seconds.
    pub window_seconds: f64,
}

impl LoadAverages {
    /// The value of `signal`.
    pub fn get(&self, signal: Signal) -> f64 {
        match signal {
            Signal::ConcurrentRequests => self.concurrent_requests,
            Signal::RequestsPerSecond => self.requests_per_second,
            Signal::TokensGeneratedPerSecond => self.tokens_generated_per_second,
            Signal::PromptTokensPerSecond => self.prompt_tokens_per_second,
            Signal::QueueDepth => self.queue_depth,
            Signal::QueueDelaySeconds => self.queue_delay_seconds,
            Signal::KvCacheUtilization => self.kv_cache_utilization,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The autoscaler
// ---------------------------------------------------------------------------------------

/// The load-based recommendation of one `decide` call.
struct LoadRecommendation {
    replicas: u32,
    /// The target that set it; `None` when no usable target is configured or SLO mode
    /// set it.
    winner: Option<Signal>,
    /// SLO mode set it.
    slo: bool,
    detail: String,
    /// The highest need (replicas, unrounded) of the usable targets.
    need: f64,
    targets: Vec<TargetRecommendation>,
}

/// A run of equal consecutive recommendations (history is stored compressed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecommendationRun {
    last_at: Duration,
    replicas: u32,
}

/// A change of the replica count reported through `scaled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScaleEvent {
    at: Duration,
    from: u32,
    to: u32,
}

/// Burst mode's memory.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct PanicState {
    since: Option<Duration>,
    last_exceeded: Option<Duration>,
    /// The highest count of this panic.
    highest: u32,
}

/// The autoscaling policy with its memory: recent load samples, recent
/// recommendations, recent scale events, the idle clock, burst mode, the rules' clocks
/// and the per-minute demand history. Deterministic; never reads the clock.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    policy: AutoscalingPolicy,
    /// Samples within the metrics window of the latest sample, oldest first.
    samples: VecDeque<LoadSample>,
    latest_sample: Option<LoadSample>,
    first_sample_at: Option<Duration>,
    last_activity_at: Option<Duration>,
    /// The earliest time anything was observed (first sample or first decision): the
    /// idle clock starts here when there was never any activity.
    observed_since: Option<Duration>,
    first_decision_at: Option<Duration>,
    recommendations: VecDeque<RecommendationRun>,
    scale_events: VecDeque<ScaleEvent>,
    /// When the replica count last changed (relative rules restart their clock).
    last_scale_at: Option<Duration>,
    panic: PanicState,
    rule_states: Vec<RuleState>,
    schedules: ResolvedSchedules,
    demand: DemandHistory,
    expected_cold_start: Duration,
    /// The replica's capacity model, when the engine described itself.
    capacity: Option<CapacityPlanner>,
}

impl Autoscaler {
    pub fn new(policy: AutoscalingPolicy) -> Self {
        Self {
            rule_states: vec![RuleState::default(); policy.rules.len()],
            schedules: ResolvedSchedules::new(&policy.schedules),
            policy,
            samples: VecDeque::new(),
            latest_sample: None,
            first_sample_at: None,
            last_activity_at: None,
            observed_since: None,
            first_decision_at: None,
            recommendations: VecDeque::new(),
            scale_events: VecDeque::new(),
            last_scale_at: None,
            panic: PanicState::default(),
            demand: DemandHistory::default(),
            expected_cold_start: Duration::ZERO,
            capacity: None,
        }
    }

    /// Gives the autoscaler the replica's capacity model: the `auto` load targets and SLO
    /// mode then follow it ([`crate::capacity`]). The supervisor builds it from its
    /// engine's description when the deployment is created.
    pub fn with_capacity(mut self, capacity: ReplicaCapacity) -> Self {
        self.capacity = Some(CapacityPlanner::new(capacity));
        self
    }

    /// The capacity model and the workload's mean lengths, when known.
    pub fn capacity(&self) -> Option<&CapacityPlanner> {
        self.capacity.as_ref()
    }

    /// The replica's expected cold start (the predictive floor looks this far ahead,
    /// plus its margin).
    pub fn with_expected_cold_start(mut self, cold_start: Duration) -> Self {
        self.expected_cold_start = cold_start;
        self
    }

    pub fn policy(&self) -> &AutoscalingPolicy {
        &self.policy
    }

    /// Replaces the policy and keeps all history (samples, recommendations, scale
    /// events, the idle clock, burst mode, the demand history), so a policy change
    /// does not restart the windows. Rule clocks are kept when the rules are unchanged.
    pub fn set_policy(&mut self, policy: AutoscalingPolicy) {
        if policy.rules != self.policy.rules {
            self.rule_states = vec![RuleState::default(); policy.rules.len()];
        }
        if policy.schedules != self.policy.schedules {
            self.schedules = ResolvedSchedules::new(&policy.schedules);
        }
        self.policy = policy;
    }

    /// Records one load sample. Samples arrive in time order.
    pub fn record(&mut self, sample: LoadSample) {
        if self.first_sample_at.is_none() {
            self.first_sample_at = Some(sample.at);
        }
        self.observed_since = Some(
            self.observed_since
                .map_or(sample.at, |since| since.min(sample.at)),
        );
        if sample.is_active() {
            self.last_activity_at = Some(
                self.last_activity_at
                    .map_or(sample.at, |last| last.max(sample.at)),
            );
        }
        if let Some(capacity) = &mut self.capacity {
            capacity.record(&sample);
        }
        let interval = self
            .latest_sample
            .map_or(MIN_RATE_SPAN, |latest| sample.at.saturating_sub(latest.at));
        for (rule, state) in self.policy.rules.iter().zip(&mut self.rule_states) {
            let value = rule.signal.sample_value(&sample, interval);
            state.latest_value = value;
            if value.is_some_and(|value| rule.holds(value)) {
                state.holding_since.get_or_insert(sample.at);
            } else {
                state.holding_since = None;
            }
        }
        if self
            .latest_sample
            .is_none_or(|latest| sample.at >= latest.at)
        {
            self.latest_sample = Some(sample);
        }
        self.samples.push_back(sample);
        let window = self.policy.metrics_window;
        while let Some(oldest) = self.samples.front() {
            if oldest.at <= sample.at && sample.at - oldest.at >= window {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Loads averaged over the metrics window ending at `now`.
    pub fn load_averages(&self, now: Duration) -> LoadAverages {
        self.averages_over(now, self.policy.metrics_window)
    }

    /// Loads averaged over `window` ending at `now` (at most the metrics window's
    /// samples are kept).
    fn averages_over(&self, now: Duration, window: Duration) -> LoadAverages {
        #[derive(Default)]
        struct Sums {
            samples: u64,
            concurrency: f64,
            queued: f64,
            delay: f64,
            arrivals: f64,
            generated: f64,
            prompt: f64,
            kv_samples: u64,
            kv_utilization: f64,
            kv_known: u64,
            kv_replicas: f64,
        }
        let mut sums = Sums::default();
        let mut add = |sample: &LoadSample| {
            sums.samples += 1;
            sums.concurrency += sample.queued as f64 + sample.running as f64;
            sums.queued += sample.queued as f64;
            sums.delay += sample.queue_delay().as_secs_f64();
            sums.arrivals += sample.arrivals as f64;
            sums.generated += sample.generated_tokens as f64;
            sums.prompt += sample.prompt_tokens as f64;
            if let Some(utilization) = sample.kv_cache_utilization() {
                sums.kv_samples += 1;
                sums.kv_utilization += utilization;
            }
            if let Some(replicas) = sample.kv_replicas_in_use() {
                sums.kv_known += 1;
                sums.kv_replicas += replicas;
            }
        };
        if window.is_zero() {
            // No window to average over: the latest sample alone.
            if let Some(latest) = self.latest_sample.filter(|sample| sample.at <= now) {
                add(&latest);
            }
        } else {
            for sample in &self.samples {
                if sample.at <= now && now - sample.at < window {
                    add(sample);
                }
            }
        }
        let covered = self
            .first_sample_at
            .map_or(Duration::ZERO, |first| now.saturating_sub(first));
        let rate_span = window.min(covered).max(MIN_RATE_SPAN).as_secs_f64();
        let mean = |sum: f64, count: u64| if count == 0 { 0.0 } else { sum / count as f64 };
        LoadAverages {
            concurrent_requests: mean(sums.concurrency, sums.samples),
            requests_per_second: sums.arrivals / rate_span,
            tokens_generated_per_second: sums.generated / rate_span,
            prompt_tokens_per_second: sums.prompt / rate_span,
            queue_depth: mean(sums.queued, sums.samples),
            queue_delay_seconds: mean(sums.delay, sums.samples),
            kv_cache_utilization: mean(sums.kv_utilization, sums.kv_samples),
            kv_cache_replicas_in_use: mean(sums.kv_replicas, sums.kv_known),
            window_seconds: window.as_secs_f64(),
        }
    }

    /// Records the supervisor actually changing the replica count, for velocity
    /// accounting (and the clocks of relative rules).
    pub fn scaled(&mut self, now: Duration, from: u32, to: u32) {
        if from != to {
            self.scale_events
                .push_back(ScaleEvent { at: now, from, to });
            self.last_scale_at = Some(self.last_scale_at.map_or(now, |last| last.max(now)));
        }
        self.forget_old_scale_events(now);
    }

    /// The wall clock at `now`, from the latest sample that carries it.
    fn wall_clock(&self, now: Duration) -> Option<u64> {
        let latest = self.latest_sample?;
        let unix_ms = latest.unix_ms?;
        Some(if now >= latest.at {
            unix_ms.saturating_add(u64::try_from((now - latest.at).as_millis()).unwrap_or(u64::MAX))
        } else {
            unix_ms.saturating_sub(u64::try_from((latest.at - now).as_millis()).unwrap_or(u64::MAX))
        })
    }

    /// The desired replica count now. Pure with respect to the inputs already recorded
    /// (it remembers this call's recommendation for the stabilisation windows, and
    /// updates burst mode and the demand history).
    pub fn decide(&mut self, now: Duration, current: ReplicaCounts) -> Decision {
        let current_replicas = current.capacity();
        let in_progress = current.starting > 0;
        if self.first_decision_at.is_none() {
            self.first_decision_at = Some(now);
        }
        self.observed_since = Some(self.observed_since.map_or(now, |since| since.min(now)));
        self.forget_old_recommendations(now);
        self.forget_old_scale_events(now);

        let averages = self.load_averages(now);
        let load = self.recommend_from_load(
            &averages,
            current,
            self.policy.tolerance,
            self.policy.metrics_window,
        );
        self.remember_recommendation(now, load.replicas);
        let unix_ms = self.wall_clock(now);

        // Schedules and set_min rules move the bounds.
        let schedule_bounds = if self.schedules.is_empty() {
            None
        } else {
            unix_ms.map(|unix_ms| self.schedules.bounds_at(unix_ms))
        };
        let mut min_replicas = self.policy.min_replicas;
        let mut max_replicas = self.policy.max_replicas;
        let mut min_source = String::new();
        let mut max_source = String::new();
        if let Some(bounds) = &schedule_bounds {
            if let Some(min) = bounds.min_replicas {
                min_replicas = min;
                min_source = format!(" (schedule {})", bounds.active.join(", "));
            }
            if let Some(max) = bounds.max_replicas {
                max_replicas = max;
                max_source = format!(" (schedule {})", bounds.active.join(", "));
            }
        }
        let (rules_fired, rule_actions): (Vec<RuleFired>, Vec<RuleAction>) =
            self.fired_rules(now, current_replicas, in_progress).into_iter().unzip();
        for (fired, action) in rules_fired.iter().zip(&rule_actions) {
            if let RuleAction::SetMin(floor) = *action {
                if floor > min_replicas {
                    min_replicas = floor;
                    min_source = format!(" (rule {})", fired.name);
                }
            }
        }

        let predictive = self.evaluate_predictive(now, load.need);
        let panic = self.evaluate_panic(now, current, &load);

        let policy = &self.policy;
        let load_reason = match load.winner {
            _ if load.slo => ScaleReason::Slo,
            Some(signal) => ScaleReason::of_signal(signal),
            None => ScaleReason::Stable,
        };
        let latest_work = self.latest_sample.filter(LoadSample::has_work);
        let mut stabilized = current_replicas;

        let (mut unclamped, mut reason, mut detail) = if let (0, Some(latest)) =
            (current_replicas, latest_work)
        {
            let replicas = load.replicas.max(1);
            (
                replicas,
                ScaleReason::QueuedAtZero,
                format!(
                    "{} queued and {} running at 0 replicas -> {replicas} at once, without scale_up_window ({})",
                    latest.queued, latest.running, load.detail
                ),
            )
        } else if let Some(idle_for) = self.idle_for(now, min_replicas) {
            (
                0,
                ScaleReason::Idle,
                format!(
                    "no activity for {} (scale_to_zero_window {}) -> 0 (was {current_replicas})",
                    format_duration(idle_for),
                    format_duration(policy.scale_to_zero_window)
                ),
            )
        } else if current_replicas == 0 {
            (
                0,
                load_reason,
                format!("nothing queued or running at 0 replicas ({})", load.detail),
            )
        } else {
            stabilized = self.stabilize(now, current_replicas, load.replicas);
            let mut detail = format!("{} (was {current_replicas})", load.detail);
            if stabilized < load.replicas {
                detail.push_str(&format!(
                    "; held at {stabilized} until the load holds for scale_up_window {}",
                    format_duration(policy.scale_up_window)
                ));
            } else if stabilized > load.replicas {
                detail.push_str(&format!(
                    "; held at {stabilized} by the highest recommendation in scale_down_window {}",
                    format_duration(policy.scale_down_window)
                ));
            }
            let mut kept = if stabilized == 0 {
                if min_replicas == 0 {
                    detail.push_str(&format!(
                        "; keeping 1 replica until idle for scale_to_zero_window {}",
                        format_duration(policy.scale_to_zero_window)
                    ));
                }
                1
            } else {
                stabilized
            };
            let mut reason = load_reason;
            if let Some(panic) = panic.as_ref().filter(|panic| panic.active) {
                let panicked = kept
                    .max(panic.recommendation)
                    .max(current_replicas)
                    .max(self.panic.highest);
                if panicked > kept {
                    reason = ScaleReason::Panic;
                    kept = panicked;
                }
                self.panic.highest = self.panic.highest.max(kept);
                detail.push_str(&format!(
                    "; burst mode: {} over panic_window {} -> {kept}, no scale-down while it lasts",
                    panic.recommendation,
                    format_duration(policy.panic_window)
                ));
            }
            (kept, reason, detail)
        };

        // Rules and the predictive floor only raise.
        for (fired, action) in rules_fired.iter().zip(&rule_actions) {
            if matches!(action, RuleAction::SetMin(_)) {
                continue;
            }
            detail.push_str(&format!(
                "; rule {}: {} {} {} -> {}",
                fired.name,
                fired.signal,
                format_number(fired.value),
                fired.condition,
                fired.replicas
            ));
            if fired.replicas > unclamped {
                unclamped = fired.replicas;
                reason = ScaleReason::Rule;
            }
        }
        let mut predictive = predictive;
        if let Some(effect) = predictive.as_mut() {
            if let (PredictiveMode::On, Some(floor)) = (effect.mode, effect.floor) {
                if floor > unclamped {
                    unclamped = floor;
                    reason = ScaleReason::Predictive;
                    effect.raised = true;
                    detail.push_str(&format!(
                        "; predictive floor {floor} ({} forecast over the next {})",
                        effect.method,
                        format_duration(Duration::from_secs_f64(effect.look_ahead_seconds))
                    ));
                }
            }
        }

        // Clamp to [min_replicas, max_replicas] (max wins if they cross).
        let clamped = unclamped.max(min_replicas).min(max_replicas);
        if clamped > unclamped {
            reason = ScaleReason::MinReplicas;
            detail.push_str(&format!("; raised to min_replicas {min_replicas}{min_source}"));
        } else if clamped < unclamped {
            // From zero the reason stays `queued_at_zero` (what started the replicas);
            // the detail says the cap applied.
            if !(reason == ScaleReason::QueuedAtZero && clamped > 0) {
                reason = ScaleReason::MaxReplicas;
            }
            detail.push_str(&format!("; capped at max_replicas {max_replicas}{max_source}"));
        }

        // A scale-up in progress: no scale-down until the starting replicas are ready.
        // (Only max_replicas may still lower it.)
        let mut held = clamped;
        let mut scale_in_progress = load.targets.iter().any(|t| t.held_by_scale_in_progress)
            || rules_fired.iter().any(|r| r.held_by_scale_in_progress);
        if in_progress && clamped < current_replicas {
            let floor = current_replicas.min(max_replicas);
            if floor > clamped {
                held = floor;
                scale_in_progress = true;
                detail.push_str(&format!(
                    "; {} replicas starting: no scale-down to {clamped} until they are ready",
                    current.starting
                ));
            }
        }

        let (desired, velocity_note) = self.limit_velocity(now, current_replicas, held);
        let velocity_limited = velocity_note.is_some();
        if let Some(note) = velocity_note {
            detail.push_str(&note);
        }

        let direction = if desired > current_replicas {
            ScaleDirection::Up
        } else if desired < current_replicas {
            ScaleDirection::Down
        } else {
            ScaleDirection::None
        };
        if direction == ScaleDirection::None {
            reason = ScaleReason::Stable;
        }
        Decision {
            at_seconds: now.as_secs_f64(),
            unix_ms,
            desired,
            direction,
            reason,
            detail,
            velocity_limited,
            current,
            signals: averages,
            recommendations: load.targets,
            stabilized,
            panic,
            rules_fired,
            schedule: schedule_bounds.map(|bounds| ScheduleEffect {
                active: bounds.active,
                min_replicas: bounds.min_replicas,
                max_replicas: bounds.max_replicas,
            }),
            predictive,
            min_replicas,
            max_replicas,
            scale_in_progress,
        }
    }

    /// Each usable target's recommendation (with the tolerance band, and queue signals
    /// capped at the capacity while replicas start); the highest wins (the first in
    /// `Signal::ALL` on ties); SLO mode's recommendation wins only when higher. With a
    /// capacity model and `auto` load targets, the concurrent-requests target is the
    /// capacity model's.
    fn recommend_from_load(
        &self,
        averages: &LoadAverages,
        current: ReplicaCounts,
        tolerance: f64,
        window: Duration,
    ) -> LoadRecommendation {
        let capacity = current.capacity();
        let advice = self
            .capacity
            .as_ref()
            .map(|planner| planner.advise(&self.policy, averages));
        let auto_target = advice
            .as_ref()
            .filter(|_| self.policy.load_targets.auto)
            .map(|advice| advice.concurrent_requests_target);
        let mut targets = Vec::new();
        let mut best: Option<(usize, String)> = None;
        let mut highest_need = 0f64;
        for signal in Signal::ALL {
            let target = match (signal, auto_target) {
                (Signal::ConcurrentRequests, Some(auto)) => Some(auto),
                _ => self.policy.load_targets.get(signal),
            };
            let Some(target) = target else {
                continue;
            };
            if !(target.is_finite() && target > 0.0) {
                continue;
            }
            let value = averages.get(signal);
            let (need, how) = match signal {
                Signal::QueueDelaySeconds => (
                    f64::from(current.ready) * value / target,
                    format!("/ target {} × {} ready", format_number(target), current.ready),
                ),
                Signal::KvCacheUtilization => (
                    averages.kv_cache_replicas_in_use / target,
                    format!(
                        "({} replicas' worth) / target {}",
                        format_number(averages.kv_cache_replicas_in_use),
                        format_number(target)
                    ),
                ),
                _ => (value / target, format!("/ target {} per replica", format_number(target))),
            };
            let how = match (&advice, auto_target, signal) {
                (Some(advice), Some(_), Signal::ConcurrentRequests) => {
                    format!("{how} ({})", advice.concurrent_requests_detail)
                }
                _ => how,
            };
            let need = if need.is_nan() { 0.0 } else { need };
            highest_need = highest_need.max(need);
            let within_tolerance = capacity > 0
                && need > 0.0
                && (need / f64::from(capacity) - 1.0).abs() <= tolerance;
            let mut replicas = if within_tolerance {
                capacity
            } else {
                replicas_for(need, 1.0)
            };
            let held = current.starting > 0 && signal.is_queue_signal() && replicas > capacity;
            if held {
                replicas = capacity;
            }
            let mut detail = format!(
                "{} {} {} over {} {how} -> {replicas}",
                signal.key(),
                format_number(value),
                if signal.is_rate() { "per second" } else { "avg" },
                format_duration(window),
            );
            if within_tolerance {
                detail.push_str(&format!(
                    " (within tolerance {}% of {capacity})",
                    format_number(tolerance * 100.0)
                ));
            }
            if held {
                detail.push_str(&format!(
                    " (held at {capacity} while {} replicas start)",
                    current.starting
                ));
            }

            if best
                .as_ref()
                .is_none_or(|(index, _)| replicas > targets_replicas(&targets, *index))
            {
                best = Some((targets.len(), detail));
            }
            targets.push(TargetRecommendation {
                signal,
                value,
                target,
                need,
                replicas,
                within_tolerance,
                held_by_scale_in_progress: held,
            });
        }
        let configured = best.is_some();
        let load = match best {
            Some((index, detail)) => LoadRecommendation {
                replicas: targets[index].replicas,
                winner: Some(targets[index].signal),
                slo: false,
                detail,
                need: highest_need,
                targets,
            },
            None => LoadRecommendation {
                replicas: capacity,
                winner: None,
                slo: false,
                detail: format!("no load targets configured -> keeping {capacity}"),
                need: f64::from(capacity),
                targets,
            },
        };
        match advice.and_then(|advice| advice.slo) {
            Some((replicas, detail)) if !configured || replicas > load.replicas => {
                LoadRecommendation {
                    replicas,
                    winner: None,
                    slo: true,
                    detail,
                    need: if configured {
                        load.need.max(f64::from(replicas))
                    } else {
                        f64::from(replicas)
                    },
                    targets: load.targets,
                }
            }
            _ => load,
        }
    }

    /// Burst mode: the panic window's recommendation against the capacity.
    fn evaluate_panic(
        &mut self,
        now: Duration,
        current: ReplicaCounts,
        stable: &LoadRecommendation,
    ) -> Option<PanicEffect> {
        let threshold = self.policy.panic_threshold?;
        let window = self.policy.panic_window.min(self.policy.metrics_window);
        let averages = self.averages_over(now, window);
        let short = self.recommend_from_load(&averages, current, 0.0, window);
        let recommendation = if stable.winner.is_some() || stable.slo {
            short.replicas
        } else {
            0
        };
        let capacity = current.capacity();
        let threshold_replicas = threshold * f64::from(capacity);
        if capacity > 0 && f64::from(recommendation) >= threshold_replicas {
            self.panic.last_exceeded = Some(now);
            self.panic.since.get_or_insert(now);
        }
        // Like Knative: the panic lasts until a whole stable window passed without the
        // threshold, so the stable average no longer lags the burst when it ends.
        let stable_window = self.policy.metrics_window.max(window);
        let active = self
            .panic
            .last_exceeded
            .is_some_and(|last| now >= last && now - last < stable_window);
        if !active {
            self.panic = PanicState::default();
        }
        Some(PanicEffect {
            active,
            recommendation,
            threshold_replicas,
            since_seconds: self.panic.since.map(|since| since.as_secs_f64()),
        })
    }

    /// The rules that fire now, with their recommendations.
    fn fired_rules(&self, now: Duration, capacity: u32, in_progress: bool) -> Vec<(RuleFired, RuleAction)> {
        let mut fired = Vec::new();
        for (index, (rule, state)) in self.policy.rules.iter().zip(&self.rule_states).enumerate() {
            let (Some(action), Some(since), Some(value)) =
                (rule.action(), state.holding_since, state.latest_value)
            else {
                continue;
            };
            let start = if action.is_relative() {
                since.max(self.last_scale_at.unwrap_or(Duration::ZERO))
            } else {
                since
            };
            if now < start || now - start < rule.hold_for {
                continue;
            }
            let mut replicas = action.replicas(capacity);
            let held = in_progress
                && rule.signal.is_queue_signal()
                && !matches!(action, RuleAction::SetMin(_))
                && replicas > capacity;
            if held {
                replicas = capacity;
            }
            fired.push((RuleFired {
                name: rule.display_name(index),
                signal: rule.signal,
                value,
                condition: rule.condition(),
                held_seconds: (now - start).as_secs_f64(),
                action: action.to_string(),
                replicas,
                held_by_scale_in_progress: held,
            }, action));
        }
        fired
    }

    /// The predictive floor: feeds the demand history, then forecasts.
    fn evaluate_predictive(&mut self, now: Duration, need: f64) -> Option<PredictiveEffect> {
        let policy = &self.policy.predictive;
        if policy.mode == PredictiveMode::Off {
            return None;
        }
        let look_ahead = policy.look_ahead(self.expected_cold_start);
        let keep = match policy.method {
            ForecastMethod::Seasonal => policy.season.saturating_add(look_ahead),
            ForecastMethod::Trend => Duration::from_secs(60),
        };
        self.demand.observe(now, need, policy, keep);
        let forecast = self.demand.forecast(now, look_ahead, policy);
        Some(PredictiveEffect {
            mode: policy.mode,
            method: policy.method,
            look_ahead_seconds: look_ahead.as_secs_f64(),
            forecast,
            floor: forecast.map(predictive::floor_of),
            raised: false,
        })
    }

    fn remember_recommendation(&mut self, now: Duration, replicas: u32) {
        if let Some(last) = self.recommendations.back_mut() {
            if last.replicas == replicas && now >= last.last_at {
                last.last_at = now;
                return;
            }
        }
        self.recommendations.push_back(RecommendationRun {
            last_at: now,
            replicas,
        });
    }

    fn forget_old_recommendations(&mut self, now: Duration) {
        let keep = self
            .policy
            .scale_up_window
            .max(self.policy.scale_down_window);
        while let Some(oldest) = self.recommendations.front() {
            if oldest.last_at <= now && now - oldest.last_at > keep {
                self.recommendations.pop_front();
            } else {
                break;
            }
        }
    }

    fn forget_old_scale_events(&mut self, now: Duration) {
        let keep = self
            .policy
            .velocity
            .scale_up
            .period
            .max(self.policy.velocity.scale_down.period);
        while let Some(oldest) = self.scale_events.front() {
            if oldest.at <= now && now - oldest.at >= keep {
                self.scale_events.pop_front();
            } else {
                break;
            }
        }
    }

    /// HPA-style stabilisation: the lowest recommendation of the up-window bounds a
    /// scale-up, the highest of the down-window bounds a scale-down.
    fn stabilize(&self, now: Duration, current_replicas: u32, latest: u32) -> u32 {
        let up_window = self.policy.scale_up_window;
        let down_window = self.policy.scale_down_window;
        let mut lowest_in_up_window = latest;
        let mut highest_in_down_window = latest;
        for run in &self.recommendations {
            let age = now.saturating_sub(run.last_at);
            if age <= up_window {
                lowest_in_up_window = lowest_in_up_window.min(run.replicas);
            }
            if age <= down_window {
                highest_in_down_window = highest_in_down_window.max(run.replicas);
            }
        }
        // The part of a window before the first decision counts as "keep the current count".
        let deciding_for = self
            .first_decision_at
            .map_or(Duration::ZERO, |first| now.saturating_sub(first));
        if deciding_for < up_window {
            lowest_in_up_window = lowest_in_up_window.min(current_replicas);
        }
        if deciding_for < down_window {
            highest_in_down_window = highest_in_down_window.max(current_replicas);
        }
        current_replicas
            .max(lowest_in_up_window)
            .min(highest_in_down_window)
    }

    /// How long there has been no activity, when that is long enough to scale to zero
    /// (only with an effective `min_replicas` of 0).
    fn idle_for(&self, now: Duration, min_replicas: u32) -> Option<Duration> {
        if min_replicas != 0 {
            return None;
        }
        if self.latest_sample.is_some_and(|latest| latest.is_active()) {
            return None;
        }
        let since = self.last_activity_at.or(self.observed_since)?;
        let idle_for = now.saturating_sub(since);
        (idle_for >= self.policy.scale_to_zero_window).then_some(idle_for)
    }

    /// Replicas added (`up`) or removed within the last `period`.
    fn changed_within(&self, now: Duration, period: Duration, up: bool) -> u64 {
        self.scale_events
            .iter()
            .filter(|event| event.at > now || now - event.at < period)
            .map(|event| {
                if up {
                    u64::from(event.to.saturating_sub(event.from))
                } else {
                    u64::from(event.from.saturating_sub(event.to))
                }
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Cuts the change from `current` to `wanted` to what the velocity limits allow;
    /// returns the count and, when cut, a note for the detail.
    fn limit_velocity(&self, now: Duration, current: u32, wanted: u32) -> (u32, Option<String>) {
        let current_wide = u64::from(current);
        if wanted > current {
            let limit = &self.policy.velocity.scale_up;
            let added = self.changed_within(now, limit.period, true);
            let Some(allowance) = limit.allowance(current_wide.saturating_sub(added)) else {
                return (wanted, None);
            };
            let mut remaining = allowance.saturating_sub(added);
            if current == 0 {
                remaining = remaining.max(1);
            }
            let ceiling = u32::try_from(current_wide.saturating_add(remaining)).unwrap_or(u32::MAX);
            if wanted > ceiling {
                return (
                    ceiling,
                    Some(format!(
                        "; limited by velocity to {ceiling} (scale_up allows {allowance} per {}, {added} added in it)",
                        format_duration(limit.period)
                    )),
                );
            }
            (wanted, None)
        } else if wanted < current {
            if wanted == 0 && current == 1 {
                return (0, None);
            }
            let limit = &self.policy.velocity.scale_down;
            let removed = self.changed_within(now, limit.period, false);
            let Some(allowance) = limit.allowance(current_wide.saturating_add(removed)) else {
                return (wanted, None);
            };
            let remaining = allowance.saturating_sub(removed);
            let floor = u32::try_from(current_wide.saturating_sub(remaining)).unwrap_or(0);
            if wanted < floor {
                return (
                    floor,
                    Some(format!(
                        "; limited by velocity to {floor} (scale_down allows {allowance} per {}, {removed} removed in it)",
                        format_duration(limit.period)
                    )),
                );
            }
            (wanted, None)
        } else {
            (wanted, None)
        }
    }
}

fn targets_replicas(targets: &[TargetRecommendation], index: usize) -> u32 {
    targets.get(index).map_or(0, |target| target.replicas)
}

// ---------------------------------------------------------------------------------------
// Arithmetic and formatting helpers
// ---------------------------------------------------------------------------------------

/// Rounds away floating-point noise (e.g. 16.000000000000004) before rounding up.
fn ceil_tolerant(value: f64) -> f64 {
    ((value * 1e6).round() / 1e6).ceil()
}

fn ceil_to_u64(value: f64) -> u64 {
    let rounded = ceil_tolerant(value);
    if rounded.is_nan() || rounded <= 0.0 {
        0
    } else if rounded >= u64::MAX as f64 {
        u64::MAX
    } else {
        rounded as u64
    }
}

fn ceil_to_u32(value: f64) -> u32 {
    u32::try_from(ceil_to_u64(value)).unwrap_or(u32::MAX)
}

/// `ceil(signal / target)`, saturating, 0 for nonsense.
fn replicas_for(signal: f64, target: f64) -> u32 {
    let ratio = signal / target;
    if ratio.is_nan() || ratio <= 0.0 {
        return 0;
    }
    let rounded = ceil_tolerant(ratio);
    if rounded.is_nan() || rounded >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        rounded as u32
    }
}

/// At most two decimals, without trailing zeros: 23.5, 8, 0.33.
pub(crate) fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// Like humantime: "30s", "10m", "1h 30m", "1.5s".
fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_string();
    }
    if duration.subsec_nanos() != 0 {
        return format!("{}s", duration.as_secs_f64());
    }
    let seconds = duration.as_secs();
    let parts = [
        (seconds / 3600, "h"),
        (seconds % 3600 / 60, "m"),
        (seconds % 60, "s"),
    ];
    parts
        .iter()
        .filter(|(amount, _)| *amount > 0)
        .map(|(amount, unit)| format!("{amount}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// Deserializing "a number, or false for off"
// ---------------------------------------------------------------------------------------

enum NumberOrOff {
    Integer(i128),
    Float(f64),
    Off,
}

struct NumberOrOffVisitor<'a> {
    expecting: &'a str,
}

impl<'de> Visitor<'de> for NumberOrOffVisitor<'_> {
    type Value = NumberOrOff;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.expecting)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<NumberOrOff, E> {
        if value {
            Err(E::invalid_value(Unexpected::Bool(true), &self))
        } else {
            Ok(NumberOrOff::Off)
        }
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<NumberOrOff, E> {
        Ok(NumberOrOff::Integer(i128::from(value)))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<NumberOrOff, E> {
        Ok(NumberOrOff::Integer(i128::from(value)))
    }

    fn visit_i128<E: de::Error>(self, value: i128) -> Result<NumberOrOff, E> {
        Ok(NumberOrOff::Integer(value))
    }

    fn visit_u128<E: de::Error>(self, value: u128) -> Result<NumberOrOff, E> {
        Ok(NumberOrOff::Integer(
            i128::try_from(value).unwrap_or(i128::MAX),
        ))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<NumberOrOff, E> {
        Ok(NumberOrOff::Float(value))
    }

    fn visit_none<E: de::Error>(self) -> Result<NumberOrOff, E> {
        Ok(NumberOrOff::Off)
    }

    fn visit_unit<E: de::Error>(self) -> Result<NumberOrOff, E> {
        Ok(NumberOrOff::Off)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<NumberOrOff, D::Error> {
        deserializer.deserialize_any(self)
    }
}

const EXPECTING_NUMBER: &str = "a number, or false to turn it off";
const EXPECTING_REPLICAS: &str = "a whole number of replicas, or false to turn it off";

fn deserialize_optional_target<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<f64>, D::Error> {
    let visitor = NumberOrOffVisitor {
        expecting: EXPECTING_NUMBER,
    };
    Ok(match deserializer.deserialize_any(visitor)? {
        NumberOrOff::Integer(value) => Some(value as f64),
        NumberOrOff::Float(value) => Some(value),
        NumberOrOff::Off => None,
    })
}

fn deserialize_optional_replicas<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    let visitor = NumberOrOffVisitor {
        expecting: EXPECTING_REPLICAS,
    };
    let expected = &EXPECTING_REPLICAS;
    match deserializer.deserialize_any(visitor)? {
        NumberOrOff::Integer(value) => u32::try_from(value).map(Some).map_err(|_| {
            de::Error::custom(format!(
                "invalid value: {value}, expected {EXPECTING_REPLICAS}"
            ))
        }),
        NumberOrOff::Float(value) => {
            if value.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&value) {
                Ok(Some(value as u32))
            } else {
                Err(de::Error::invalid_value(Unexpected::Float(value), expected))
            }
        }
        NumberOrOff::Off => Ok(None),
    }
}

fn deserialize_present_target<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<f64>>, D::Error> {
    deserialize_optional_target(deserializer).map(Some)
}

fn deserialize_present_replicas<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<u32>>, D::Error> {
    deserialize_optional_replicas(deserializer).map(Some)
}

// ---------------------------------------------------------------------------------------
// Tests, in virtual time
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(value: u64) -> Duration {
        Duration::from_secs(value)
    }

    fn ready(count: u32) -> ReplicaCounts {
        ReplicaCounts {
            ready: count,
            starting: 0,
            draining: 0,
        }
    }

    fn sample(at: u64, queued: u64, running: u64, arrivals: u64) -> LoadSample {
        LoadSample {
            at: seconds(at),
            queued,
            running,
            arrivals,
            ..LoadSample::default()
        }
    }

    /// The windows and velocities these tests exercise (the defaults before the
    /// capacity-aware ones): a 30s up-window, up by max(4, 100%) per 15s, down by 1 per
    /// 60s. Without a capacity model the `auto` targets are 8 concurrent requests.
    pub(super) fn classic_policy() -> AutoscalingPolicy {
        AutoscalingPolicy {
            scale_up_window: seconds(30),
            velocity: Velocity {
                scale_up: VelocityLimit {
                    replicas: Some(4),
                    percent: Some(100.0),
                    period: seconds(15),
                    select: VelocitySelect::Max,
                },
                scale_down: VelocityLimit {
                    replicas: Some(1),
                    percent: None,
                    period: seconds(60),
                    select: VelocitySelect::Max,
                },
            },
            ..AutoscalingPolicy::default()
        }
    }

    /// A policy whose load is the latest sample alone (metrics window 1s), so
    /// recommendations are easy to compute by hand.
    /// Burst mode is off so the stabilisation windows are tested alone (the policy
    /// tests in `policy_tests.rs` cover burst mode).
    fn instant_metrics_policy() -> AutoscalingPolicy {
        AutoscalingPolicy {
            metrics_window: seconds(1),
            panic_threshold: None,
            ..classic_policy()
        }
    }

    /// A supervisor in miniature: each tick records a sample, decides, and applies the
    /// decision at once (new replicas are ready immediately).
    struct Simulation {
        autoscaler: Autoscaler,
        replicas: u32,
        now: u64,
        changes: Vec<(u64, u32, u32)>,
        last_decision: Option<Decision>,
    }

    impl Simulation {
        fn new(policy: AutoscalingPolicy, replicas: u32) -> Self {
            Self {
                autoscaler: Autoscaler::new(policy),
                replicas,
                now: 0,
                changes: Vec::new(),
                last_decision: None,
            }
        }

        fn tick(&mut self, queued: u64, running: u64, arrivals: u64) -> Decision {
            self.autoscaler
                .record(sample(self.now, queued, running, arrivals));
            let decision = self
                .autoscaler
                .decide(seconds(self.now), ready(self.replicas));
            if decision.desired != self.replicas {
                self.autoscaler
                    .scaled(seconds(self.now), self.replicas, decision.desired);
                self.changes
                    .push((self.now, self.replicas, decision.desired));
                self.replicas = decision.desired;
            }
            self.now += 1;
            self.last_decision = Some(decision.clone());
            decision
        }

        /// Ticks until (and excluding) second `until` with the same load.
        fn run_until(&mut self, until: u64, queued: u64, running: u64, arrivals: u64) {
            while self.now < until {
                self.tick(queued, running, arrivals);
            }
        }
    }

    // ----- configuration -----

    #[test]
    fn defaults_deserialize_from_an_empty_toml_table() {
        let policy: AutoscalingPolicy = toml::from_str("").unwrap();
        assert_eq!(policy, AutoscalingPolicy::default());
        assert_eq!(policy.min_replicas, 0);
        assert_eq!(policy.max_replicas, 4);
        assert_eq!(policy.scale_up_window, Duration::ZERO);
        assert_eq!(policy.scale_down_window, seconds(600));
        assert_eq!(policy.scale_to_zero_window, seconds(3600));
        assert_eq!(policy.metrics_window, seconds(30));
        assert!(policy.load_targets.auto);
        assert_eq!(policy.load_targets.concurrent_requests, Some(8.0));
        assert_eq!(policy.load_targets.requests_per_second, None);
        assert_eq!(policy.load_targets.tokens_generated_per_second, None);
        assert_eq!(policy.load_targets.prompt_tokens_per_second, None);
        assert_eq!(
            policy.velocity.scale_up,
            VelocityLimit {
                replicas: None,
                percent: None,
                period: seconds(15),
                select: VelocitySelect::Max,
            }
        );
        assert_eq!(
            policy.velocity.scale_down,
            VelocityLimit {
                replicas: None,
                percent: Some(100.0),
                period: seconds(15),
                select: VelocitySelect::Max,
            }
        );
        assert_eq!(policy.slo, SloMode::Auto);
        assert_eq!(policy.validate(), Ok(()));
    }

    #[test]
    fn defaults_deserialize_from_json_and_partial_json_keeps_the_rest() {
        let policy: AutoscalingPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(policy, AutoscalingPolicy::default());

        let policy: AutoscalingPolicy = serde_json::from_str(
            r#"{"max_replicas": 10, "load_targets": {"requests_per_second": 2.5}, "velocity": {"scale_up": {"replicas": 2}}}"#,
        )
        .unwrap();
        assert_eq!(policy.max_replicas, 10);
        assert_eq!(policy.min_replicas, 0);
        assert_eq!(policy.load_targets.concurrent_requests, Some(8.0));
        assert_eq!(policy.load_targets.requests_per_second, Some(2.5));
        assert_eq!(policy.velocity.scale_up.replicas, Some(2));
        assert_eq!(policy.velocity.scale_up.percent, None);
        assert_eq!(policy.velocity.scale_up.period, seconds(15));
        assert_eq!(
            policy.velocity.scale_down,
            VelocityLimit::scale_down_default()
        );
    }

    #[test]
    fn serializes_durations_in_humantime_and_round_trips_through_json() {
        let policy = AutoscalingPolicy::default();
        let json = serde_json::to_value(&policy).unwrap();
        assert_eq!(json["scale_up_window"], "0s");
        assert_eq!(json["scale_down_window"], "10m");
        assert_eq!(json["scale_to_zero_window"], "1h");
        assert_eq!(json["velocity"]["scale_down"]["period"], "15s");
        assert_eq!(json["load_targets"], "auto");
        let explicit = serde_json::to_value(classic_policy()).unwrap();
        assert_eq!(explicit["velocity"]["scale_down"]["period"], "1m");
        assert_eq!(
            explicit["load_targets"]["requests_per_second"],
            serde_json::Value::Null
        );
        let back: AutoscalingPolicy = serde_json::from_value(json).unwrap();
        assert_eq!(back, policy);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let error = toml::from_str::<AutoscalingPolicy>("max_replica = 3")
            .unwrap_err()
            .to_string();
        assert!(error.contains("max_replica"), "{error}");

        let error = toml::from_str::<AutoscalingPolicy>("[load_targets]\nrps = 3")
            .unwrap_err()
            .to_string();
        assert!(error.contains("rps"), "{error}");

        let error = toml::from_str::<AutoscalingPolicy>("[velocity.scale_down]\nrate = 2")
            .unwrap_err()
            .to_string();
        assert!(error.contains("rate"), "{error}");

        let error = toml::from_str::<AutoscalingPolicy>("[velocity.sideways]\nreplicas = 2")
            .unwrap_err()
            .to_string();
        assert!(error.contains("sideways"), "{error}");

        let error = serde_json::from_str::<AutoscalingPolicy>(r#"{"scale_up_windw": "1m"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("scale_up_windw"), "{error}");
    }

    #[test]
    fn durations_parse_from_humantime_strings() {
        let policy: AutoscalingPolicy = toml::from_str(
            r#"
            scale_up_window = "30s"
            scale_down_window = "10m"
            scale_to_zero_window = "2h"
            metrics_window = "45s"
            [velocity.scale_up]
            period = "1m 30s"
            "#,
        )
        .unwrap();
        assert_eq!(policy.scale_up_window, seconds(30));
        assert_eq!(policy.scale_down_window, seconds(600));
        assert_eq!(policy.scale_to_zero_window, seconds(7200));
        assert_eq!(policy.metrics_window, seconds(45));
        assert_eq!(policy.velocity.scale_up.period, seconds(90));
        assert_eq!(policy.velocity.scale_up.replicas, None);

        let error = toml::from_str::<AutoscalingPolicy>("scale_up_window = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("scale_up_window"), "{error}");
    }

    #[test]
    fn targets_and_velocity_keys_turn_off_with_false_in_toml_and_null_in_json() {
        let policy: AutoscalingPolicy = toml::from_str(
            r#"
            [load_targets]
            concurrent_requests = false
            requests_per_second = 4
            tokens_generated_per_second = 250.5
            [velocity.scale_up]
            percent = false
            "#,
        )
        .unwrap();
        assert_eq!(policy.load_targets.concurrent_requests, None);
        assert_eq!(policy.load_targets.requests_per_second, Some(4.0));
        assert_eq!(policy.load_targets.tokens_generated_per_second, Some(250.5));
        assert_eq!(policy.velocity.scale_up.percent, None);
        assert_eq!(policy.velocity.scale_up.replicas, None);
        assert_eq!(policy.validate(), Ok(()));

        let policy: AutoscalingPolicy = serde_json::from_str(
            r#"{"load_targets": {"concurrent_requests": null, "prompt_tokens_per_second": 1000}}"#,
        )
        .unwrap();
        assert_eq!(policy.load_targets.concurrent_requests, None);
        assert_eq!(policy.load_targets.prompt_tokens_per_second, Some(1000.0));

        let error =
            toml::from_str::<AutoscalingPolicy>("[load_targets]\nconcurrent_requests = true")
                .unwrap_err()
                .to_string();
        assert!(error.contains("false to turn it off"), "{error}");

        let error = toml::from_str::<AutoscalingPolicy>("[velocity.scale_down]\nreplicas = 1.5")
            .unwrap_err()
            .to_string();
        assert!(error.contains("whole number of replicas"), "{error}");
    }

    #[test]
    fn a_partial_scale_down_table_keeps_the_scale_down_defaults() {
        let policy: AutoscalingPolicy =
            toml::from_str("[velocity.scale_down]\npercent = 50").unwrap();
        assert_eq!(
            policy.velocity.scale_down,
            VelocityLimit {
                replicas: None,
                percent: Some(50.0),
                period: seconds(15),
                select: VelocitySelect::Max,
            }
        );
        assert_eq!(policy.velocity.scale_up, VelocityLimit::scale_up_default());
    }

    #[test]
    fn validate_errors_name_the_key() {
        let check = |change: &dyn Fn(&mut AutoscalingPolicy)| {
            let mut policy = AutoscalingPolicy::default();
            change(&mut policy);
            policy.validate().unwrap_err()
        };
        assert_eq!(
            check(&|policy| {
                policy.min_replicas = 1;
                policy.max_replicas = 0;
            }),
            "autoscaling.max_replicas (0) must be at least autoscaling.min_replicas (1)"
        );
        assert_eq!(
            check(&|policy| policy.max_replicas = 0),
            "autoscaling.max_replicas (0) must be at least 1"
        );
        assert_eq!(
            check(&|policy| policy.metrics_window = Duration::ZERO),
            "autoscaling.metrics_window (0s) must be between 1s and 1h"
        );
        assert_eq!(
            check(&|policy| policy.scale_down_window = seconds(2 * 24 * 3600)),
            "autoscaling.scale_down_window (48h) must be at most 24h"
        );
        assert_eq!(
            check(&|policy| policy.load_targets.requests_per_second = Some(0.0)),
            "autoscaling.load_targets.requests_per_second (0) must be a finite number greater than 0"
        );
        assert_eq!(
            check(&|policy| policy.load_targets.concurrent_requests = Some(f64::NAN)),
            "autoscaling.load_targets.concurrent_requests (NaN) must be a finite number greater than 0"
        );
        assert_eq!(
            check(&|policy| policy.load_targets.prompt_tokens_per_second = Some(f64::INFINITY)),
            "autoscaling.load_targets.prompt_tokens_per_second (inf) must be a finite number greater than 0"
        );
        assert!(
            check(&|policy| policy.load_targets.concurrent_requests = None)
                .starts_with("autoscaling.load_targets must set at least one of")
        );
        assert_eq!(
            check(&|policy| policy.velocity.scale_up.period = Duration::ZERO),
            "autoscaling.velocity.scale_up.period (0s) must be greater than 0"
        );
        assert_eq!(
            check(&|policy| policy.velocity.scale_down.percent = Some(-5.0)),
            "autoscaling.velocity.scale_down.percent (-5) must be a finite number greater than 0"
        );
        assert_eq!(
            check(&|policy| policy.velocity.scale_down.replicas = Some(0)),
            "autoscaling.velocity.scale_down.replicas (0) must be at least 1, or false for no replica limit"
        );
        // Zero stabilisation windows are fine: they mean "at once".
        let policy = AutoscalingPolicy {
            scale_up_window: Duration::ZERO,
            scale_down_window: Duration::ZERO,
            scale_to_zero_window: Duration::ZERO,
            ..AutoscalingPolicy::default()
        };
        assert_eq!(policy.validate(), Ok(()));
    }

    #[test]
    fn reasons_and_directions_have_snake_case_labels() {
        assert_eq!(ScaleReason::QueuedAtZero.as_str(), "queued_at_zero");
        assert_eq!(
            ScaleReason::TokensGeneratedPerSecond.as_str(),
            "tokens_generated_per_second"
        );
        assert_eq!(ScaleReason::MaxReplicas.to_string(), "max_replicas");
        assert_eq!(
            serde_json::to_value(ScaleReason::PromptTokensPerSecond).unwrap(),
            "prompt_tokens_per_second"
        );
        assert_eq!(
            serde_json::to_value(ScaleReason::Idle).unwrap(),
            ScaleReason::Idle.as_str()
        );
        assert_eq!(serde_json::to_value(ScaleDirection::Down).unwrap(), "down");
        assert_eq!(ScaleDirection::None.as_str(), "none");
    }

    // ----- load averages -----

    #[test]
    fn load_averages_use_the_metrics_window_and_the_span_actually_covered() {
        let mut autoscaler = Autoscaler::new(classic_policy()); // 30s window
        for at in 0..=10 {
            autoscaler.record(LoadSample {
                at: seconds(at),
                queued: 2,
                running: 4,
                arrivals: 3,
                prompt_tokens: 300,
                generated_tokens: 50,
                ..LoadSample::default()
            });
        }
        let averages = autoscaler.load_averages(seconds(10));
        assert_eq!(averages.concurrent_requests, 6.0);
        // 11 samples of 3 arrivals over the 10 s covered so far.
        assert!(
            (averages.requests_per_second - 3.3).abs() < 1e-9,
            "{averages:?}"
        );
        assert!(
            (averages.prompt_tokens_per_second - 330.0).abs() < 1e-9,
            "{averages:?}"
        );
        assert!(
            (averages.tokens_generated_per_second - 55.0).abs() < 1e-9,
            "{averages:?}"
        );
        assert_eq!(averages.window_seconds, 30.0);

        // Once the window is full: 30 samples (t = 31..=60) over 30 s, exact rates.
        for at in 11..=60 {
            autoscaler.record(LoadSample {
                at: seconds(at),
                queued: 0,
                running: 10,
                arrivals: 2,
                prompt_tokens: 100,
                generated_tokens: 40,
                ..LoadSample::default()
            });
        }
        let averages = autoscaler.load_averages(seconds(60));
        assert_eq!(averages.concurrent_requests, 10.0);
        assert_eq!(averages.requests_per_second, 2.0);
        assert_eq!(averages.prompt_tokens_per_second, 100.0);
        assert_eq!(averages.tokens_generated_per_second, 40.0);

        // Long after the last sample the window is empty.
        let averages = autoscaler.load_averages(seconds(500));
        assert_eq!(averages.concurrent_requests, 0.0);
        assert_eq!(averages.requests_per_second, 0.0);
    }

    #[test]
    fn a_single_sample_is_divided_by_at_least_one_second() {
        let mut autoscaler = Autoscaler::new(classic_policy());
        autoscaler.record(LoadSample {
            at: seconds(100),
            arrivals: 5,
            ..LoadSample::default()
        });
        let averages = autoscaler.load_averages(seconds(100));
        assert_eq!(averages.requests_per_second, 5.0);
        let averages = Autoscaler::new(classic_policy()).load_averages(Duration::ZERO);
        assert_eq!(
            averages,
            LoadAverages {
                window_seconds: 30.0,
                ..LoadAverages::default()
            }
        );
    }

    #[test]
    fn the_module_doc_example_holds() {
        let mut simulation = Simulation::new(classic_policy(), 0);
        simulation.tick(1, 0, 1); // t = 0
        simulation.run_until(100, 0, 24, 1);
        simulation.run_until(4000, 0, 0, 0);
        assert_eq!(
            simulation.changes,
            vec![
                (0, 0, 1),
                (31, 1, 2),
                (32, 2, 3),
                (709, 3, 2),
                (769, 2, 1),
                (3699, 1, 0)
            ]
        );
    }

    // ----- scaling from zero -----

    #[test]
    fn queued_work_at_zero_starts_one_replica_at_once_despite_the_30s_up_window() {
        let mut simulation = Simulation::new(classic_policy(), 0);
        simulation.run_until(10, 0, 0, 0);
        assert_eq!(simulation.changes, vec![]);
        assert_eq!(
            simulation.last_decision.as_ref().unwrap().reason,
            ScaleReason::Stable
        );

        let decision = simulation.tick(1, 0, 1);
        assert_eq!(decision.desired, 1);
        assert_eq!(decision.direction, ScaleDirection::Up);
        assert_eq!(decision.reason, ScaleReason::QueuedAtZero);
        assert!(!decision.velocity_limited);
        assert!(
            decision
                .detail
                .contains("1 queued and 0 running at 0 replicas -> 1 at once"),
            "{}",
            decision.detail
        );
        assert_eq!(simulation.changes, vec![(10, 0, 1)]);
    }

    #[test]
    fn a_deep_queue_at_zero_starts_the_recommendation_at_once_within_velocity() {
        let policy = AutoscalingPolicy {
            max_replicas: 10,
            ..instant_metrics_policy()
        };
        let mut autoscaler = Autoscaler::new(policy);
        autoscaler.record(sample(5, 40, 0, 40));
        // 40 queued / 8 per replica -> 5, but scale_up allows 4 per 15s.
        let decision = autoscaler.decide(seconds(5), ready(0));
        assert_eq!(decision.desired, 4);
        assert_eq!(decision.reason, ScaleReason::QueuedAtZero);
        assert!(decision.velocity_limited);
        assert!(
            decision.detail.contains("-> 5 at once"),
            "{}",
            decision.detail
        );
        assert!(
            decision.detail.contains("limited by velocity to 4"),
            "{}",
            decision.detail
        );

        // Without velocity limits it is capped by max_replicas instead.
        let mut policy = AutoscalingPolicy {
            max_replicas: 3,
            ..instant_metrics_policy()
        };
        policy.velocity.scale_up = VelocityLimit::unlimited();
        let mut autoscaler = Autoscaler::new(policy);
        autoscaler.record(sample(5, 40, 0, 40));
        let decision = autoscaler.decide(seconds(5), ready(0));
        assert_eq!(decision.desired, 3);
        // The reason stays what started replicas from zero; the detail names the cap.
        assert_eq!(decision.reason, ScaleReason::QueuedAtZero);
        assert!(decision.detail.contains("capped at max_replicas 3"), "{}", decision.detail);
        assert!(!decision.velocity_limited);
    }

    #[test]
    fn zero_to_one_is_allowed_even_when_a_percent_limit_gives_nothing() {
        let mut policy = instant_metrics_policy();
        policy.velocity.scale_up = VelocityLimit {
            replicas: None,
            percent: Some(50.0),
            period: seconds(60),
            select: VelocitySelect::Max,
        };
        let mut autoscaler = Autoscaler::new(policy);
        autoscaler.record(sample(0, 30, 0, 30));
        let decision = autoscaler.decide(Duration::ZERO, ready(0));
        assert_eq!(decision.desired, 1);
        assert!(decision.velocity_limited);
        assert_eq!(decision.reason, ScaleReason::QueuedAtZero);
    }

    #[test]
    fn without_work_a_deployment_at_zero_stays_at_zero() {
        let mut autoscaler = Autoscaler::new(classic_policy());
        let decision = autoscaler.decide(seconds(3), ReplicaCounts::default());
        assert_eq!(decision.desired, 0);
        assert_eq!(decision.direction, ScaleDirection::None);
        assert_eq!(decision.reason, ScaleReason::Stable);
        assert!(!decision.velocity_limited);
    }

    // ----- scaling up -----

    #[test]
    fn sustained_load_scales_up_only_after_the_up_window() {
        let mut simulation = Simulation::new(instant_metrics_policy(), 1);
        simulation.run_until(10, 0, 4, 1); // 4 / 8 -> 1
        simulation.run_until(40, 0, 20, 1); // 20 / 8 -> 3, from t = 10
        assert_eq!(simulation.changes, vec![]);
        let held = simulation.last_decision.clone().unwrap();
        assert_eq!(held.desired, 1);
        assert_eq!(held.reason, ScaleReason::Stable);
        assert!(
            held.detail
                .contains("concurrent_requests 20 avg over 1s / target 8 per replica -> 3 (was 1)"),
            "{}",
            held.detail
        );
        assert!(
            held.detail
                .contains("held at 1 until the load holds for scale_up_window 30s"),
            "{}",
            held.detail
        );

        let decision = simulation.tick(0, 20, 1); // t = 40: 30 s of recommendation 3
        assert_eq!(decision.desired, 3);
        assert_eq!(decision.direction, ScaleDirection::Up);
        assert_eq!(decision.reason, ScaleReason::ConcurrentRequests);
        assert!(!decision.velocity_limited);
        assert_eq!(simulation.changes, vec![(40, 1, 3)]);
    }

    #[test]
    fn a_spike_shorter_than_the_up_window_does_not_scale() {
        let mut simulation = Simulation::new(instant_metrics_policy(), 1);
        simulation.run_until(10, 0, 4, 1);
        simulation.run_until(39, 0, 30, 1); // 29 s of recommendation 4
        simulation.run_until(200, 0, 4, 1);
        assert_eq!(simulation.changes, vec![]);
        assert_eq!(simulation.replicas, 1);
    }

    #[test]
    fn the_up_window_waits_for_the_lowest_recommendation_in_it() {
        // Load ramps 3 -> 4 replicas worth; after the window the lowest (3) is used first.
        let policy = AutoscalingPolicy {
            max_replicas: 10,
            ..instant_metrics_policy()
        };
        let mut simulation = Simulation::new(policy, 1);
        simulation.run_until(10, 0, 4, 1); // -> 1
        simulation.run_until(20, 0, 24, 1); // -> 3 from t = 10
        simulation.run_until(41, 0, 32, 1); // -> 4 from t = 20
        assert_eq!(simulation.changes, vec![(40, 1, 3)]);
        simulation.run_until(51, 0, 32, 1);
        assert_eq!(simulation.changes, vec![(40, 1, 3), (50, 3, 4)]);
    }

    #[test]
    fn a_zero_up_window_scales_up_at_once() {
        let policy = AutoscalingPolicy {
            scale_up_window: Duration::ZERO,
            ..instant_metrics_policy()
        };
        let mut simulation = Simulation::new(policy, 1);
        simulation.run_until(5, 0, 4, 1);
        let decision = simulation.tick(0, 17, 1); // 17 / 8 -> 3
        assert_eq!(decision.desired, 3);
        assert_eq!(simulation.changes, vec![(5, 1, 3)]);
    }

    #[test]
    fn the_highest_target_wins_and_names_the_reason() {
        let mut policy = AutoscalingPolicy {
            scale_up_window: Duration::ZERO,
            max_replicas: 10,
            ..instant_metrics_policy()
        };
        policy.load_targets.requests_per_second = Some(2.0);
        let mut autoscaler = Autoscaler::new(policy.clone());
        // concurrency 8 / 8 -> 1; 10 rps / 2 -> 5.
        autoscaler.record(sample(0, 0, 8, 10));
        let decision = autoscaler.decide(Duration::ZERO, ready(1));
        assert_eq!(decision.desired, 5);
        assert_eq!(decision.reason, ScaleReason::RequestsPerSecond);
        assert!(
            decision.detail.starts_with(
                "requests_per_second 10 per second over 1s / target 2 per replica -> 5 (was 1)"
            ),
            "{}",
            decision.detail
        );

        // Tokens: 900 generated tok/s / 300 -> 3 beats concurrency 16 / 8 -> 2 and rps 2 / 2 -> 1.
        policy.load_targets.tokens_generated_per_second = Some(300.0);
        policy.load_targets.prompt_tokens_per_second = Some(1000.0);
        let mut autoscaler = Autoscaler::new(policy.clone());
        autoscaler.record(LoadSample {
            at: Duration::ZERO,
            running: 16,
            arrivals: 2,
            generated_tokens: 900,
            prompt_tokens: 1500,
            ..LoadSample::default()
        });
        let decision = autoscaler.decide(Duration::ZERO, ready(1));
        assert_eq!(decision.desired, 3);
        assert_eq!(decision.reason, ScaleReason::TokensGeneratedPerSecond);

        // Prompt tokens: 4500 / 1000 -> 5.
        let mut autoscaler = Autoscaler::new(policy);
        autoscaler.record(LoadSample {
            at: Duration::ZERO,
            running: 16,
            prompt_tokens: 4500,
            ..LoadSample::default()
        });
        let decision = autoscaler.decide(Duration::ZERO, ready(1));
        assert_eq!(decision.desired, 5);
        assert_eq!(decision.reason, ScaleReason::PromptTokensPerSecond);
    }

    #[test]
    fn averaged_concurrency_over_the_default_window_sets_the_count() {
        // 30 s window, up-window 0: the average rises as high samples fill the window.
        // No tolerance and no burst mode, so the average alone moves the count.
        let policy = AutoscalingPolicy {
            scale_up_window: Duration::ZERO,
            max_replicas: 10,
            tolerance: 0.0,
            panic_threshold: None,
            ..AutoscalingPolicy::default()
        };
        let mut simulation = Simulation::new(policy, 1);
        simulation.run_until(30, 0, 8, 1); // avg 8 -> 1
        assert_eq!(simulation.changes, vec![]);
        // From t = 30, 24 in flight. At t = 30 the window (t = 1..=30) averages
        // (29 * 8 + 24) / 30 = 8.53 -> 2.
        let decision = simulation.tick(0, 24, 1);
        assert_eq!(decision.desired, 2);
        assert!(
            decision.detail.starts_with(
                "concurrent_requests 8.53 avg over 30s / target 8 per replica -> 2 (was 1)"
            ),
            "{}",
            decision.detail
        );
        // At t = 44 the window (t = 15..=44) is 15 * 8 + 15 * 24 = 480 / 30 = 16 exactly -> 2.
        simulation.run_until(45, 0, 24, 1);
        assert_eq!(simulation.changes, vec![(30, 1, 2)]);
        // At t = 45: (14 * 8 + 16 * 24) / 30 = 16.53 -> 3.
        simulation.tick(0, 24, 1);
        assert_eq!(simulation.changes, vec![(30, 1, 2), (45, 2, 3)]);
    }

    #[test]
    fn scaling_up_is_clamped_to_max_replicas() {
        let policy = AutoscalingPolicy {
            scale_up_window: Duration::ZERO,
            ..instant_metrics_policy()
        };
        let mut autoscaler = Autoscaler::new(policy);
        autoscaler.record(sample(0, 50, 30, 5)); // 80 / 8 -> 10
        let decision = autoscaler.decide(Duration::ZERO, ready(1));
        assert_eq!(decision.desired, 4);
        assert_eq!(decision.direction, ScaleDirection::Up);
        assert_eq!(decision.reason, ScaleReason::MaxReplicas);
        assert!(!decision.velocity_limited);
        assert!(
            decision
                .detail
                .contains("-> 10 (was 1); capped at max_replicas 4"),
            "{}",
            decision.detail
        );

        // Already at max: nothing moves.
        autoscaler.record(sample(1, 50, 30, 5));
        let decision = autoscaler.decide(seconds(1), ready(4));
        assert_eq!(decision.desired, 4);
        assert_eq!(decision.reason, ScaleReason::Stable);
        assert!(
            decision.detail.contains("capped at max_replicas 4"),
            "{}",
            decision.detail
        );
    }

    #[test]
    fn min_replicas_raises_the_count_with_reason_min_replicas() {
        let policy = AutoscalingPolicy {
            min_replicas: 2,
            scale_up_window: Duration::ZERO,
            scale_down_window: Duration::ZERO,
            ..instant_metrics_policy()
        };
        let mut autoscaler = Autoscaler::new(policy);
        let decision = autoscaler.decide(Duration::ZERO, ready(0));
        assert_eq!(decision.desired, 2);
        assert_eq!(decision.reason, ScaleReason::MinReplicas);
        assert_eq!(decision.direction, ScaleDirection::Up);
        assert!(
            decision.detail.ends_with("; raised to min_replicas 2"),
            "{}",
            decision.detail
        );
    }

    #[test]
    fn min_replicas_is_enforced_from_the_first_decision_with_default_windows() {
        let policy = AutoscalingPolicy { min_replicas: 2, ..classic_policy() };
        let mut autoscaler = Autoscaler::new(policy);
        let decision = autoscaler.decide(Duration::ZERO, ready(0));
        assert_eq!(decision.desired, 2, "{}", decision.detail);
        assert_eq!(decision.reason, ScaleReason::MinReplicas);
        autoscaler.scaled(Duration::ZERO, 0, 2);
        // One replica died: the floor brings it back at once, not after scale_up_window.
        let decision = autoscaler.decide(Duration::from_secs(1), ready(1));
        assert_eq!(decision.desired, 2, "{}", decision.detail);
        assert_eq!(decision.direction, ScaleDirection::Up);
    }

    #[test]
    fn percent_velocity_limits_each_period_from_its_start() {
        let mut policy = AutoscalingPolicy {
            scale_up_window: Duration::ZERO,
            max_replicas: 20,
            ..instant_metrics_policy()
        };
        policy.velocity.scale_up = VelocityLimit {
            replicas: None,
            percent: Some(50.0),
            period: seconds(60),
            select: VelocitySelect::Max,
        };
        let mut simulation = Simulation::new(policy, 4);
        let decision = simulation.tick(0, 160, 1); // 160 / 8 -> 20; 50% of 4 = 2
        assert_eq!(decision.desired, 6);
        assert!(decision.velocity_limited);
        assert_eq!(decision.reason, ScaleReason::ConcurrentRequests);
        assert!(
            decision
                .detail
                .contains("limited by velocity to 6 (scale_up allows 2 per 1m, 0 added in it)"),
            "{}",
            decision.detail
        );

        let decision = simulation.tick(0, 160, 1); // t = 1: the period's 2 are spent
        assert_eq!(decision.desired, 6);
        assert_eq!(decision.direction, ScaleDirection::None);
        assert_eq!(decision.reason, ScaleReason::Stable);
        assert!(decision.velocity_limited);

        simulation.run_until(200, 0, 160, 1);
        // 6 + ceil(3) = 9, 9 + ceil(4.5) = 14, 14 + 7 = 21 -> capped by the load at 20.
        assert_eq!(
            simulation.changes,
            vec![(0, 4, 6), (60, 6, 9), (120, 9, 14), (180, 14, 20)]
        );
        assert!(!simulation.last_decision.unwrap().velocity_limited);
    }

    #[test]
    fn replica_velocity_applies_when_larger_than_percent() {
        // Default scale-up: max(4 replicas, 100%) per 15s. From 2: +4 (4 > 2).
        let policy = AutoscalingPolicy {
            scale_up_window: Duration::ZERO,
            max_replicas: 50,
            ..instant_metrics_policy()
        };
        let mut simulation = Simulation::new(policy, 2);
        simulation.run_until(31, 0, 400, 1); // 400 / 8 -> 50
                                             // 2 -> 6 (4 > 2); at 15: 6 -> 12 (100% of 6); at 30: 12 -> 24.
        assert_eq!(
            simulation.changes,
            vec![(0, 2, 6), (15, 6, 12), (30, 12, 24)]
        );
    }

    // ----- scaling down -----

    #[test]
    fn scale_down_waits_for_the_down_window_then_steps_by_velocity() {
        let mut simulation = Simulation::new(instant_metrics_policy(), 4);
        simulation.run_until(100, 0, 32, 2); // 32 / 8 -> 4, until t = 99
        simulation.run_until(700, 0, 0, 0); // no load from t = 100: recommendation 0
        assert_eq!(simulation.changes, vec![]);
        let held = simulation.last_decision.clone().unwrap();
        assert_eq!(held.reason, ScaleReason::Stable);
        assert!(
            held.detail.contains(
                "-> 0 (was 4); held at 4 by the highest recommendation in scale_down_window 10m"
            ),
            "{}",
            held.detail
        );

        // t = 700: the last 4 (t = 99) is more than 10m old.
        let decision = simulation.tick(0, 0, 0);
        assert_eq!(decision.desired, 3);
        assert_eq!(decision.direction, ScaleDirection::Down);
        assert_eq!(decision.reason, ScaleReason::ConcurrentRequests);
        assert!(decision.velocity_limited);
        assert!(
            decision
                .detail
                .contains("limited by velocity to 3 (scale_down allows 1 per 1m, 0 removed in it)"),
            "{}",
            decision.detail
        );

        simulation.run_until(1000, 0, 0, 0);
        assert_eq!(
            simulation.changes,
            vec![(700, 4, 3), (760, 3, 2), (820, 2, 1)]
        );
        let last = simulation.last_decision.unwrap();
        assert_eq!(last.desired, 1);
        assert_eq!(last.reason, ScaleReason::Stable);
        assert!(
            last.detail
                .contains("keeping 1 replica until idle for scale_to_zero_window 1h"),
            "{}",
            last.detail
        );
    }

    #[test]
    fn a_fresh_autoscaler_does_not_scale_down_before_a_full_down_window() {
        let mut simulation = Simulation::new(instant_metrics_policy(), 3);
        simulation.run_until(600, 0, 1, 1); // 1 / 8 -> 1 from the very first decision
        assert_eq!(simulation.changes, vec![]);
        simulation.run_until(700, 0, 1, 1);
        assert_eq!(simulation.changes, vec![(600, 3, 2), (660, 2, 1)]);
    }

    #[test]
    fn lowering_max_replicas_scales_down_with_reason_max_replicas() {
        let mut policy = instant_metrics_policy();
        let mut autoscaler = Autoscaler::new(policy.clone());
        policy.max_replicas = 2;
        autoscaler.set_policy(policy);
        autoscaler.record(sample(0, 0, 32, 1));
        let decision = autoscaler.decide(Duration::ZERO, ready(4));
        assert_eq!(decision.desired, 3);
        assert_eq!(decision.direction, ScaleDirection::Down);
        assert_eq!(decision.reason, ScaleReason::MaxReplicas);
        assert!(decision.velocity_limited);
    }

    // ----- scale to zero -----

    #[test]
    fn scales_to_zero_after_the_zero_window_of_idleness_and_not_before() {
        let mut simulation = Simulation::new(instant_metrics_policy(), 1);
        simulation.tick(0, 1, 1); // t = 0: activity
        simulation.run_until(3600, 0, 0, 0);
        assert_eq!(simulation.changes, vec![]);
        let decision = simulation.tick(0, 0, 0); // t = 3600: idle for 1h
        assert_eq!(decision.desired, 0);
        assert_eq!(decision.direction, ScaleDirection::Down);
        assert_eq!(decision.reason, ScaleReason::Idle);
        assert!(!decision.velocity_limited);
        assert_eq!(
            decision.detail,
            "no activity for 1h (scale_to_zero_window 1h) -> 0 (was 1)"
        );
        simulation.run_until(4000, 0, 0, 0);
        assert_eq!(simulation.changes, vec![(3600, 1, 0)]);
        assert_eq!(
            simulation.last_decision.unwrap().reason,
            ScaleReason::Stable
        );
    }

    #[test]
    fn never_scales_to_zero_with_min_replicas_one() {
        let policy = AutoscalingPolicy {
            min_replicas: 1,
            ..instant_metrics_policy()
        };
        let mut simulation = Simulation::new(policy, 1);
        simulation.tick(0, 1, 1);
        simulation.run_until(8000, 0, 0, 0);
        assert_eq!(simulation.changes, vec![]);
        assert_eq!(simulation.replicas, 1);
    }

    #[test]
    fn activity_resets_the_idle_clock() {
        let mut simulation = Simulation::new(instant_metrics_policy(), 1);
        simulation.tick(0, 1, 1); // t = 0
        simulation.run_until(1000, 0, 0, 0);
        simulation.tick(0, 0, 1); // t = 1000: one request arrives (and finishes quickly)
        simulation.run_until(4599, 0, 0, 0);
        assert_eq!(simulation.changes, vec![]);
        simulation.run_until(4700, 0, 0, 0);
        assert_eq!(simulation.changes, vec![(4600, 1, 0)]);
    }

    #[test]
    fn scale_to_zero_ignores_the_down_window_but_steps_by_velocity_until_the_last_replica() {
        let policy = AutoscalingPolicy {
            scale_to_zero_window: seconds(300),
            ..instant_metrics_policy()
        };
        let mut simulation = Simulation::new(policy, 3);
        simulation.tick(0, 24, 3); // t = 0: 24 / 8 -> 3
        simulation.run_until(400, 0, 0, 0);
        // Idle from t = 300 (the 10m down-window would hold 3 until t = 600); 1 per 60s,
        // and the last step from 1 to 0 is always allowed.
        assert_eq!(
            simulation.changes,
            vec![(300, 3, 2), (360, 2, 1), (361, 1, 0)]
        );
    }

    #[test]
    fn queued_work_after_scaling_to_zero_brings_a_replica_back_at_once() {
        let policy = AutoscalingPolicy {
            scale_to_zero_window: seconds(60),
            ..instant_metrics_policy()
        };
        let mut simulation = Simulation::new(policy, 1);
        simulation.run_until(100, 0, 0, 0);
        assert_eq!(simulation.changes, vec![(60, 1, 0)]);
        let decision = simulation.tick(3, 0, 3); // t = 100
        assert_eq!(decision.reason, ScaleReason::QueuedAtZero);
        assert_eq!(decision.desired, 1);
        // The work keeps the new replica from idling away.
        simulation.run_until(150, 0, 2, 0);
        assert_eq!(simulation.changes, vec![(60, 1, 0), (100, 0, 1)]);
    }

    // ----- capacity, policy changes, robustness -----

    #[test]
    fn draining_replicas_are_not_counted_as_capacity() {
        let policy = AutoscalingPolicy {
            scale_up_window: Duration::ZERO,
            ..instant_metrics_policy()
        };
        let mut autoscaler = Autoscaler::new(policy);
        autoscaler.record(sample(0, 0, 24, 1)); // -> 3
        let decision = autoscaler.decide(
            Duration::ZERO,
            ReplicaCounts {
                ready: 1,
                starting: 1,
                draining: 5,
            },
        );
        assert_eq!(decision.desired, 3);
        assert_eq!(decision.direction, ScaleDirection::Up);
        assert!(decision.detail.contains("(was 2)"), "{}", decision.detail);

        // Only draining replicas left and work queued: that is zero capacity.
        let mut autoscaler = Autoscaler::new(instant_metrics_policy());
        autoscaler.record(sample(0, 2, 0, 2));
        let decision = autoscaler.decide(
            Duration::ZERO,
            ReplicaCounts {
                ready: 0,
                starting: 0,
                draining: 2,
            },
        );
        assert_eq!(decision.desired, 1);
        assert_eq!(decision.reason, ScaleReason::QueuedAtZero);
    }

    #[test]
    fn set_policy_keeps_history() {
        let mut simulation = Simulation::new(instant_metrics_policy(), 1);
        simulation.run_until(20, 0, 24, 1); // -> 3 from t = 0, held by the 30s up-window
        assert_eq!(simulation.changes, vec![]);
        let averages_before = simulation.autoscaler.load_averages(seconds(19));

        let policy = AutoscalingPolicy {
            scale_up_window: seconds(20),
            ..instant_metrics_policy()
        };
        simulation.autoscaler.set_policy(policy.clone());
        assert_eq!(simulation.autoscaler.policy(), &policy);
        assert_eq!(
            simulation.autoscaler.load_averages(seconds(19)),
            averages_before
        );
        // The 20 s of recommendations already seen count: up at t = 20, not t = 40.
        simulation.tick(0, 24, 1);
        assert_eq!(simulation.changes, vec![(20, 1, 3)]);

        // A fresh autoscaler with the same policy would still be waiting.
        let mut fresh = Autoscaler::new(policy);
        fresh.record(sample(20, 0, 24, 1));
        assert_eq!(fresh.decide(seconds(20), ready(1)).desired, 1);
    }

    #[test]
    fn set_policy_keeps_the_idle_clock() {
        let mut simulation = Simulation::new(instant_metrics_policy(), 1);
        simulation.tick(0, 1, 1);
        simulation.run_until(100, 0, 0, 0);
        simulation.autoscaler.set_policy(AutoscalingPolicy {
            scale_to_zero_window: seconds(100),
            ..instant_metrics_policy()
        });
        simulation.tick(0, 0, 0); // t = 100: idle for 100 s
        assert_eq!(simulation.changes, vec![(100, 1, 0)]);
    }

    #[test]
    fn no_panics_on_empty_history_huge_values_or_zero_windows() {
        // Empty history, every entry point.
        let mut autoscaler = Autoscaler::new(classic_policy());
        autoscaler.scaled(Duration::ZERO, 0, 0);
        let decision = autoscaler.decide(Duration::ZERO, ReplicaCounts::default());
        assert_eq!(
            (decision.desired, decision.direction),
            (0, ScaleDirection::None)
        );
        // Idle forever at u32::MAX replicas: one step down, as velocity allows.
        let decision = autoscaler.decide(Duration::MAX, ready(u32::MAX));
        assert_eq!(decision.desired, u32::MAX - 1);
        assert_eq!(decision.reason, ScaleReason::Idle);
        assert!(decision.velocity_limited);

        // Huge values, a tiny target and an unvalidated policy with zero everything.
        let mut policy = AutoscalingPolicy {
            min_replicas: 0,
            max_replicas: u32::MAX,
            scale_up_window: Duration::ZERO,
            scale_down_window: Duration::ZERO,
            scale_to_zero_window: Duration::ZERO,
            metrics_window: Duration::ZERO,
            ..AutoscalingPolicy::default()
        };
        policy.load_targets.concurrent_requests = Some(1e-300);
        policy.load_targets.requests_per_second = Some(0.0);
        policy.load_targets.tokens_generated_per_second = Some(f64::NAN);
        policy.load_targets.prompt_tokens_per_second = Some(-1.0);
        policy.velocity.scale_up = VelocityLimit {
            replicas: None,
            percent: Some(f64::INFINITY),
            period: Duration::ZERO,
            select: VelocitySelect::Max,
        };
        policy.velocity.scale_down.period = Duration::ZERO;
        let mut autoscaler = Autoscaler::new(policy.clone());
        autoscaler.record(LoadSample {
            at: Duration::MAX,
            queued: u64::MAX,
            running: u64::MAX,
            arrivals: u64::MAX,
            prompt_tokens: u64::MAX,
            generated_tokens: u64::MAX,
            ..LoadSample::default()
        });
        let decision = autoscaler.decide(Duration::MAX, ready(1));
        assert_eq!(decision.desired, u32::MAX);
        assert_eq!(decision.direction, ScaleDirection::Up);
        autoscaler.scaled(Duration::MAX, 1, u32::MAX);
        let averages = autoscaler.load_averages(Duration::MAX);
        assert!(averages.concurrent_requests.is_finite());
        // A sample later than `now` and a `now` before every sample.
        let averages = autoscaler.load_averages(Duration::ZERO);
        assert_eq!(averages.concurrent_requests, 0.0);

        // No targets at all: hold the current count.
        policy.load_targets = LoadTargets {
            concurrent_requests: None,
            ..LoadTargets::default()
        };
        let mut autoscaler = Autoscaler::new(policy);
        autoscaler.record(sample(0, 0, 5, 5));
        let decision = autoscaler.decide(Duration::ZERO, ready(3));
        assert_eq!(decision.desired, 3);
        assert_eq!(decision.reason, ScaleReason::Stable);
        assert!(
            decision.detail.contains("no load targets configured"),
            "{}",
            decision.detail
        );

        // min above max (unvalidated): max wins, nothing panics.
        let mut autoscaler = Autoscaler::new(AutoscalingPolicy {
            min_replicas: 9,
            max_replicas: 2,
            ..AutoscalingPolicy::default()
        });
        assert_eq!(autoscaler.decide(Duration::ZERO, ready(2)).desired, 2);
    }

    #[test]
    fn history_is_kept_only_as_long_as_the_largest_window() {
        let mut autoscaler = Autoscaler::new(instant_metrics_policy());
        for at in 0..5000u64 {
            // Alternate recommendations so runs do not merge: 1, 2, 1, 2, ...
            autoscaler.record(sample(at, 0, 8 + (at % 2) * 8, 1));
            autoscaler.decide(seconds(at), ready(2));
            autoscaler.scaled(seconds(at), 2, 2);
        }
        // 10m down-window: at most ~601 runs; 1s metrics window: at most 1 sample.
        assert!(
            autoscaler.recommendations.len() <= 602,
            "{}",
            autoscaler.recommendations.len()
        );
        assert!(
            autoscaler.samples.len() <= 1,
            "{}",
            autoscaler.samples.len()
        );
        assert!(autoscaler.scale_events.is_empty());
    }

    #[test]
    fn numbers_and_durations_format_for_people() {
        assert_eq!(format_number(23.5), "23.5");
        assert_eq!(format_number(8.0), "8");
        assert_eq!(format_number(1.0 / 3.0), "0.33");
        assert_eq!(format_number(-0.001), "0");
        assert_eq!(format_duration(seconds(30)), "30s");
        assert_eq!(format_duration(seconds(600)), "10m");
        assert_eq!(format_duration(seconds(5400)), "1h 30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(replicas_for(16.000000000000004, 8.0), 2);
        assert_eq!(replicas_for(16.01, 8.0), 3);
        assert_eq!(replicas_for(0.0, 8.0), 0);
        assert_eq!(replicas_for(1.0, 0.0), u32::MAX);
    }
}
