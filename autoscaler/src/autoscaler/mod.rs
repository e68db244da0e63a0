//! [`Autoscaler`]: the policy's state (samples, recent recommendations, scale events,
//! rule clocks, demand history) and [`Autoscaler::decide`]. Its steps are in [`steps`].
//!
//! # How the desired replica count is found
//!
//! Capacity means `ready + starting`: replicas still starting are coming capacity, not
//! ignored; draining replicas are leaving and are not counted.
//!
//! 1. **Signals, averaged.** Every tick (e.g. once a second) the supervisor records a
//!    [`LoadSample`](crate::LoadSample). Signals are averaged over `metrics_window` (the samples with
//!    `at > now - metrics_window`; see [`signals`](crate::signals) for each signal):
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


mod steps;

use std::collections::VecDeque;
use std::time::Duration;

use crate::capacity::{CapacityPlanner, ReplicaCapacity};
use crate::decision::*;
use crate::numbers::*;
use crate::signals::{LoadAverages, LoadSample};
use crate::policy::*;
use crate::predictive::{DemandHistory, PredictiveEffect, PredictiveMode};
use crate::rules::{RuleAction, RuleFired, RuleState};
use crate::schedule::ResolvedSchedules;
use crate::signals::Signal;

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
pub(crate) struct RecommendationRun {
    last_at: Duration,
    replicas: u32,
}

/// A change of the replica count reported through `scaled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScaleEvent {
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
    pub(crate) samples: VecDeque<LoadSample>,
    latest_sample: Option<LoadSample>,
    first_sample_at: Option<Duration>,
    last_activity_at: Option<Duration>,
    /// The earliest time anything was observed (first sample or first decision): the
    /// idle clock starts here when there was never any activity.
    observed_since: Option<Duration>,
    first_decision_at: Option<Duration>,
    pub(crate) recommendations: VecDeque<RecommendationRun>,
    pub(crate) scale_events: VecDeque<ScaleEvent>,
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

}
