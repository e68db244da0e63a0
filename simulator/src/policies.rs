//! Scaling policies behind one trait: Swell's own [`Autoscaler`] and the baselines.
//!
//! Every policy is asked once per simulator tick (1 s) with the same [`LoadSample`] the
//! live supervisor records; a policy with a slower control loop (HPA's 15 s sync,
//! Knative's 2 s tick) keeps its count between its own evaluations. "Batch capacity"
//! below is the replica's largest decode batch for the workload's mean context
//! (`PerformanceModel::max_batch_for_context`): the closest thing an LLM replica has to
//! the "100% CPU" or "container concurrency" the baselines were designed around.
//!
//! Defaults and where they come from:
//!
//! - **swell**: `AutoscalingPolicy::default()` (target 8 concurrent requests per replica,
//!   tolerance 10 %, metrics window 30 s, scale-up window 30 s, scale-down window 10 m,
//!   scale to zero after 1 h idle, up by max(4, 100%) per 15 s, down by 1 per 60 s;
//!   burst mode and predictive floor off), except
//!   `max_replicas`, raised from 4 to 1000 (a deployment cap, not a scaling rule).
//!   Configurable with `--swell-policy '<json>'`.
//! - **static-peak**: the replicas the trace's busiest minute needs (the oracle's
//!   per-second demand averaged over 60 s, its maximum, rounded up), warm from t = 0,
//!   never changed.
//! - **knative-kpa**: Knative Serving `config-autoscaler` defaults
//!   (knative.dev/docs/serving/autoscaling): `container-concurrency-target-default` 100
//!   replaced by containerConcurrency = the batch capacity (also enforced as a
//!   per-replica cap, like queue-proxy), `container-concurrency-target-percentage` 70 %,
//!   `stable-window` 60 s, `panic-window-percentage` 10 % (6 s),
//!   `panic-threshold-percentage` 200 %, `max-scale-up-rate` 1000, `max-scale-down-rate`
//!   2, `scale-to-zero-grace-period` 30 s, autoscaler tick 2 s, min-scale 0; the
//!   activator brings a revision up from zero at once. Algorithm after
//!   `pkg/autoscaler/scaling/autoscaler.go` (stable/panic averages, panic mode never
//!   scales down and lasts until a stable window passes without crossing the threshold).
//! - **ray-serve**: Ray Serve `AutoscalingConfig` defaults (docs.ray.io, Ray >= 2.32):
//!   `target_ongoing_requests` 2, `max_ongoing_requests` 5 (enforced as a per-replica
//!   cap), `min_replicas` 1, `upscale_delay_s` 30, `downscale_delay_s` 600,
//!   `look_back_period_s` 30, smoothing factors 1; `max_replicas` (default 1) raised
//!   to 1000. Desired = ceil(ongoing requests averaged over 30 s / 2); a change is
//!   applied once every decision for the delay wanted the same direction.
//! - **k8s-hpa**: Kubernetes HPA v2 defaults: sync period 15 s, tolerance 10 %,
//!   scale-up stabilization 0 s with policies max(4 pods, 100 %) per 15 s, scale-down
//!   stabilization 300 s with 100 % per 15 s, `minReplicas` 1 (no scale to zero). The
//!   metric is utilization = concurrent requests / batch capacity per replica (averaged
//!   over the last 15 s), target 80 %.
//! - **fireworks**: Fireworks on-demand deployment defaults (docs.fireworks.ai
//!   /deployments/autoscaling): min replicas 0, scale-up window 30 s, scale-down window
//!   10 m, scale-to-zero window 1 h, load target `default=0.8`; max replicas (default 1)
//!   raised to 1000. Assumption: Fireworks' "load" (0..1 per replica, undocumented) is
//!   the batch occupancy, concurrent requests / batch capacity, so the target is
//!   0.8 × batch capacity concurrent requests; velocity is not documented and is taken
//!   as unlimited, and so are a tolerance band and a burst mode (none: off). The windows are run by Swell's `Autoscaler` code with those settings.
//! - **oracle**: see [`super::oracle`]: perfect foresight, the cheapest replica schedule
//!   that has the trace's work done at a batch meeting the inter-token target.

use std::collections::VecDeque;
use std::time::Duration;

use swell_autoscaler::{
    Autoscaler, AutoscalingPolicy, LoadSample, LoadTargets, ReplicaCounts, Velocity, VelocityLimit,
};
use swell_autoscaler::ReplicaCapacity;
use swell_workers::sim::{SimEngineFactory, SimProfile};
use swell_workers::EngineFactory;

/// A replica-count policy driven in virtual time.
pub trait ScalingPolicy {
    fn name(&self) -> String;
    /// How often the simulator asks (default 1 s, the supervisor's tick).
    fn tick(&self) -> Duration {
        Duration::from_secs(1)
    }
    /// Replicas warm at t = 0.
    fn initial_replicas(&self) -> u32 {
        0
    }
    /// A cap on sequences per replica below the engine's batch size.
    fn per_replica_cap(&self) -> Option<u32> {
        None
    }
    /// Records the sample and returns the desired capacity (ready + starting).
    fn decide(&mut self, now: Duration, sample: &LoadSample, counts: ReplicaCounts) -> u32;
    /// The simulator changed the count.
    fn scaled(&mut self, _now: Duration, _from: u32, _to: u32) {}
}

/// Swell's policy, the real code.
pub struct Swell {
    name: String,
    autoscaler: Autoscaler,
}

impl Swell {
    /// The policy without a capacity model (`auto` targets fall back to their fixed
    /// values, SLO mode recommends nothing).
    pub fn new(name: &str, policy: AutoscalingPolicy) -> Self {
        Self {
            name: name.into(),
            autoscaler: Autoscaler::new(policy),
        }
    }

    /// The replica's expected cold start (the predictive floor's look-ahead), as the
    /// supervisor gives it from the engine's description.
    pub fn with_expected_cold_start(mut self, cold_start: Duration) -> Self {
        self.autoscaler = self.autoscaler.with_expected_cold_start(cold_start);
        self
    }

    /// The policy with the capacity model the live supervisor builds for a `sim`
    /// deployment of `profile` (from the engine's description).
    pub fn with_capacity(name: &str, policy: AutoscalingPolicy, profile: &SimProfile) -> Self {
        let description = SimEngineFactory::new(profile.clone())
            .expect("a built-in profile validates")
            .describe();
        Self {
            name: name.into(),
            autoscaler: Autoscaler::new(policy)
                .with_capacity(ReplicaCapacity::from_description(&description)),
        }
    }

    pub fn autoscaler(&self) -> &Autoscaler {
        &self.autoscaler
    }

    /// `AutoscalingPolicy::default()` with `max_replicas` 1000.
    pub fn default_policy() -> AutoscalingPolicy {
        AutoscalingPolicy {
            max_replicas: 1000,
            ..AutoscalingPolicy::default()
        }
    }

    /// Fireworks' documented defaults, run by Swell's code (see the module docs).
    pub fn fireworks(batch_capacity: f64) -> Self {
        let policy = AutoscalingPolicy {
            min_replicas: 0,
            max_replicas: 1000,
            scale_up_window: Duration::from_secs(30),
            scale_down_window: Duration::from_secs(600),
            scale_to_zero_window: Duration::from_secs(3600),
            metrics_window: Duration::from_secs(30),
            load_targets: LoadTargets {
                concurrent_requests: Some((0.8 * batch_capacity).max(1.0)),
                ..LoadTargets::none()
            },
            velocity: Velocity {
                scale_up: VelocityLimit::unlimited(),
                scale_down: VelocityLimit::unlimited(),
            },
            // Fireworks documents neither a tolerance band nor a burst mode.
            tolerance: 0.0,
            panic_threshold: None,
            slo: swell_autoscaler::SloMode::Off,
            ..AutoscalingPolicy::default()
        };
        Self::new("fireworks", policy)
    }
}

impl ScalingPolicy for Swell {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn decide(&mut self, now: Duration, sample: &LoadSample, counts: ReplicaCounts) -> u32 {
        self.autoscaler.record(*sample);
        self.autoscaler.decide(now, counts).desired
    }
    fn scaled(&mut self, now: Duration, from: u32, to: u32) {
        self.autoscaler.scaled(now, from, to);
    }
}

/// Always `replicas`, warm from the start.
pub struct Static {
    pub replicas: u32,
}

impl ScalingPolicy for Static {
    fn name(&self) -> String {
        "static-peak".into()
    }
    fn initial_replicas(&self) -> u32 {
        self.replicas
    }
    fn decide(&mut self, _: Duration, _: &LoadSample, _: ReplicaCounts) -> u32 {
        self.replicas
    }
}

/// A precomputed count per tick second (the oracle's schedule).
pub struct Scheduled {
    pub name: String,
    pub schedule: Vec<u32>,
}

impl ScalingPolicy for Scheduled {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn initial_replicas(&self) -> u32 {
        self.schedule.first().copied().unwrap_or(0)
    }
    fn decide(&mut self, now: Duration, sample: &LoadSample, counts: ReplicaCounts) -> u32 {
        let t = now.as_secs() as usize;
        let planned = self.schedule.get(t).copied().unwrap_or(0);
        // Past the plan (a late tail), keep one replica while work remains.
        if planned == 0 && sample.has_work() && counts.capacity() == 0 {
            return 1;
        }
        planned
    }
}

/// Mean of `(time, value)` points within `window` seconds of `now`.
fn window_mean(points: &VecDeque<(f64, f64)>, now: f64, window: f64) -> f64 {
    let (sum, n) = points
        .iter()
        .filter(|(t, _)| now - t < window)
        .fold((0.0, 0usize), |(s, n), (_, v)| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

fn push_point(points: &mut VecDeque<(f64, f64)>, now: f64, value: f64, keep: f64) {
    points.push_back((now, value));
    while points.front().is_some_and(|(t, _)| now - t >= keep) {
        points.pop_front();
    }
}

/// Knative's KPA with its defaults (see the module docs).
pub struct Kpa {
    container_concurrency: u32,
    target: f64,
    points: VecDeque<(f64, f64)>,
    panic_since: Option<f64>,
    max_panic_pods: u32,
    zero_since: Option<f64>,
    desired: u32,
    last_eval: Option<f64>,
}

impl Kpa {
    pub const STABLE: f64 = 60.0;
    pub const PANIC: f64 = 6.0;
    pub const GRACE: f64 = 30.0;

    pub fn new(batch_capacity: u32) -> Self {
        let cc = batch_capacity.max(1);
        Self {
            container_concurrency: cc,
            target: (f64::from(cc) * 0.7).max(1.0),
            points: VecDeque::new(),
            panic_since: None,
            max_panic_pods: 0,
            zero_since: None,
            desired: 0,
            last_eval: None,
        }
    }
}

impl ScalingPolicy for Kpa {
    fn name(&self) -> String {
        "knative-kpa".into()
    }
    fn per_replica_cap(&self) -> Option<u32> {
        Some(self.container_concurrency)
    }
    fn decide(&mut self, now: Duration, sample: &LoadSample, counts: ReplicaCounts) -> u32 {
        let now = now.as_secs_f64();
        let concurrency = (sample.queued + sample.running) as f64;
        push_point(&mut self.points, now, concurrency, Self::STABLE);
        if counts.capacity() == 0 && sample.has_work() {
            // The activator: from zero at once.
            self.desired = 1;
            self.zero_since = None;
            return 1;
        }
        if self.last_eval.is_some_and(|t| now - t < 2.0) {
            return self.desired;
        }
        self.last_eval = Some(now);
        let stable = window_mean(&self.points, now, Self::STABLE);
        let panic = window_mean(&self.points, now, Self::PANIC);
        let ready = f64::from(counts.ready.max(1));
        let max_up = (1000.0 * ready).ceil() as u32;
        let max_down = (ready / 2.0).floor() as u32;
        let dsp = ((stable / self.target).ceil() as u32).clamp(max_down, max_up);
        let dpp = ((panic / self.target).ceil() as u32).clamp(max_down, max_up);
        let over = (panic / self.target).ceil() / ready >= 2.0;
        if over {
            self.panic_since = Some(now);
        } else if self.panic_since.is_some_and(|t| now - t >= Self::STABLE) {
            self.panic_since = None;
        }
        let mut desired = if self.panic_since.is_some() {
            let d = dpp.max(self.max_panic_pods);
            self.max_panic_pods = d;
            d
        } else {
            self.max_panic_pods = 0;
            dsp
        };
        if stable > 0.0 {
            desired = desired.max(1);
            self.zero_since = None;
        } else if desired == 0 {
            // No traffic for the whole stable window; then the grace period.
            let since = *self.zero_since.get_or_insert(now);
            if now - since < Self::GRACE {
                desired = counts.capacity().min(1);
            }
        }
        self.desired = desired;
        desired
    }
}

/// Ray Serve's autoscaler with its defaults (see the module docs).
pub struct RayServe {
    points: VecDeque<(f64, f64)>,
    up_since: Option<f64>,
    down_since: Option<f64>,
}

impl RayServe {
    pub const TARGET: f64 = 2.0;
    pub const MAX_ONGOING: u32 = 5;
    pub const UP_DELAY: f64 = 30.0;
    pub const DOWN_DELAY: f64 = 600.0;
    pub const LOOK_BACK: f64 = 30.0;

    pub fn new() -> Self {
        Self {
            points: VecDeque::new(),
            up_since: None,
            down_since: None,
        }
    }
}

impl Default for RayServe {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalingPolicy for RayServe {
    fn name(&self) -> String {
        "ray-serve".into()
    }
    fn initial_replicas(&self) -> u32 {
        1
    }
    fn per_replica_cap(&self) -> Option<u32> {
        Some(Self::MAX_ONGOING)
    }
    fn decide(&mut self, now: Duration, sample: &LoadSample, counts: ReplicaCounts) -> u32 {
        let now = now.as_secs_f64();
        push_point(
            &mut self.points,
            now,
            (sample.queued + sample.running) as f64,
            Self::LOOK_BACK,
        );
        let current = counts.capacity();
        let wanted = ((window_mean(&self.points, now, Self::LOOK_BACK) / Self::TARGET).ceil()
            as u32)
            .clamp(1, 1000);
        if wanted > current {
            self.down_since = None;
            let since = *self.up_since.get_or_insert(now);
            if now - since >= Self::UP_DELAY {
                self.up_since = None;
                return wanted;
            }
        } else if wanted < current {
            self.up_since = None;
            let since = *self.down_since.get_or_insert(now);
            if now - since >= Self::DOWN_DELAY {
                self.down_since = None;
                return wanted;
            }
        } else {
            self.up_since = None;
            self.down_since = None;
        }
        current.max(1)
    }
}

/// The Kubernetes HPA with its defaults (see the module docs).
pub struct Hpa {
    batch_capacity: f64,
    points: VecDeque<(f64, f64)>,
    recommendations: VecDeque<(f64, u32)>,
    scale_events: VecDeque<(f64, i64)>,
    last_sync: Option<f64>,
    desired: u32,
}

impl Hpa {
    pub const SYNC: f64 = 15.0;
    pub const DOWN_STABILIZATION: f64 = 300.0;
    pub const TARGET: f64 = 0.8;

    pub fn new(batch_capacity: u32) -> Self {
        Self {
            batch_capacity: f64::from(batch_capacity.max(1)),
            points: VecDeque::new(),
            recommendations: VecDeque::new(),
            scale_events: VecDeque::new(),
            last_sync: None,
            desired: 1,
        }
    }
}

impl ScalingPolicy for Hpa {
    fn name(&self) -> String {
        "k8s-hpa".into()
    }
    fn initial_replicas(&self) -> u32 {
        1
    }
    fn decide(&mut self, now: Duration, sample: &LoadSample, counts: ReplicaCounts) -> u32 {
        let now = now.as_secs_f64();
        push_point(
            &mut self.points,
            now,
            (sample.queued + sample.running) as f64,
            Self::SYNC,
        );
        let current = counts.capacity().max(1);
        if self.last_sync.is_some_and(|t| now - t < Self::SYNC) {
            return self.desired;
        }
        self.last_sync = Some(now);
        let utilization =
            window_mean(&self.points, now, Self::SYNC) / self.batch_capacity / f64::from(current);
        let ratio = utilization / Self::TARGET;
        let recommendation = if (ratio - 1.0).abs() <= 0.1 {
            current
        } else {
            ((f64::from(current) * ratio).ceil() as u32).clamp(1, 1000)
        };
        self.recommendations.push_back((now, recommendation));
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| now - t > Self::DOWN_STABILIZATION)
        {
            self.recommendations.pop_front();
        }
        while self
            .scale_events
            .front()
            .is_some_and(|(t, _)| now - t >= Self::SYNC)
        {
            self.scale_events.pop_front();
        }
        let mut desired = if recommendation < current {
            // Scale-down stabilization: the highest recommendation of the last 300 s.
            self.recommendations
                .iter()
                .map(|r| r.1)
                .max()
                .unwrap_or(current)
                .min(current)
        } else {
            recommendation
        };
        if desired > current {
            // max(4 pods, 100 %) per 15 s.
            let added: i64 = self.scale_events.iter().map(|e| e.1.max(0)).sum();
            let start = (i64::from(current) - added).max(1) as u32;
            let limit = start + start.max(4);
            desired = desired.min(limit.max(current));
        }
        self.desired = desired.max(1);
        self.desired
    }
    fn scaled(&mut self, now: Duration, from: u32, to: u32) {
        self.scale_events
            .push_back((now.as_secs_f64(), i64::from(to) - i64::from(from)));
    }
}
