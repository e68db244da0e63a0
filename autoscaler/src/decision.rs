//! The policy's output: the replica counts it saw, the direction and reason of a change,
//! and the [`Decision`] with everything that went into it.

use std::fmt;

use serde::Serialize;

use crate::predictive::PredictiveEffect;
use crate::rules::RuleFired;
use crate::signals::Signal;
use crate::signals::LoadAverages;

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
