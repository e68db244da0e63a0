//! A deployment's autoscaling policy, as configured (TOML or the admin API's JSON):
//! [`AutoscalingPolicy`] with its load targets, windows, velocity limits, burst mode,
//! schedules, rules, predictive floor and SLO targets ([`slo`]); its defaults, its
//! (de)serialization (unknown keys are errors; `false`/`null` turns a target off) and
//! its validation, with an upper bound on every count, duration and factor.

mod number_or_off;
pub mod slo;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use number_or_off::*;
pub use slo::{SloMode, SloTargets};
use crate::numbers::*;
use crate::predictive::PredictivePolicy;
use crate::rules::CustomRule;
use crate::schedule::Schedule;
use crate::signals::Signal;

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
pub(crate) const MAX_TARGET: f64 = 1e12;
pub(crate) const MAX_FACTOR: f64 = 1000.0;

pub(crate) const MIN_RATE_SPAN: Duration = Duration::from_secs(1);

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
    pub(crate) fn allowance(&self, count_at_period_start: u64) -> Option<u64> {
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
