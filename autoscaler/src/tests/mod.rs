//! Tests of the policy in virtual time: a deployment's load as samples, decisions read
//! back, no clock, no threads.
//!
//! - [`config`]: the policy's configuration (defaults, keys, validation, labels).
//! - [`scaling`]: load averages, scaling from zero, up, down and to zero, robustness.
//! - [`extensions`] and [`extensions_more`]: the queue and KV signals, the tolerance band,
//!   burst mode, velocity selection, schedules, custom rules, the predictive floor and
//!   decision records.

mod config;
mod extensions;
mod extensions_more;
mod scaling;

use std::time::Duration;

use crate::numbers::*;
use crate::*;

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

/// Latest-sample metrics, no burst mode, no windows: each feature alone.
fn bare_policy() -> AutoscalingPolicy {
    AutoscalingPolicy {
        max_replicas: 50,
        metrics_window: seconds(1),
        scale_up_window: Duration::ZERO,
        scale_down_window: Duration::ZERO,
        panic_threshold: None,
        velocity: Velocity {
            scale_up: VelocityLimit::unlimited(),
            scale_down: VelocityLimit::unlimited(),
        },
        ..AutoscalingPolicy::default()
    }
}

fn running(at: u64, running: u64) -> LoadSample {
    LoadSample {
        at: seconds(at),
        running,
        arrivals: 1,
        ..LoadSample::default()
    }
}

/// Unix ms of a UTC civil time.
fn utc_ms(text: &str) -> u64 {
    let timestamp: jiff::Timestamp = format!("{text}Z").parse().unwrap();
    u64::try_from(timestamp.as_millisecond()).unwrap()
}

/// A supervisor in miniature with cold starts: each tick records the sample the
/// closure builds, decides, and applies the decision; new replicas are ready
/// `cold_start` seconds later.
struct Deployment {
    autoscaler: Autoscaler,
    ready: u32,
    /// When each starting replica becomes ready.
    starting: Vec<u64>,
    cold_start: u64,
    now: u64,
    changes: Vec<(u64, u32, u32)>,
    decisions: Vec<Decision>,
}

impl Deployment {
    fn new(policy: AutoscalingPolicy, ready: u32, cold_start: u64) -> Self {
        Self {
            autoscaler: Autoscaler::new(policy).with_expected_cold_start(seconds(cold_start)),
            ready,
            starting: Vec::new(),
            cold_start,
            now: 0,
            changes: Vec::new(),
            decisions: Vec::new(),
        }
    }

    fn counts(&self) -> ReplicaCounts {
        ReplicaCounts {
            ready: self.ready,
            starting: self.starting.len() as u32,
            draining: 0,
        }
    }

    fn tick(&mut self, sample: impl Fn(u64, ReplicaCounts) -> LoadSample) -> Decision {
        let now = self.now;
        let became_ready = self.starting.iter().filter(|at| **at <= now).count() as u32;
        self.starting.retain(|at| *at > now);
        self.ready += became_ready;
        let counts = self.counts();
        let mut recorded = sample(now, counts);
        recorded.at = seconds(now);
        recorded.ready_replicas = counts.ready;
        self.autoscaler.record(recorded);
        let decision = self.autoscaler.decide(seconds(now), counts);
        let current = counts.capacity();
        if decision.desired > current {
            for _ in current..decision.desired {
                self.starting.push(now + self.cold_start);
            }
        } else if decision.desired < current {
            let mut remove = current - decision.desired;
            while remove > 0 && self.starting.pop().is_some() {
                remove -= 1;
            }
            self.ready -= remove;
        }
        if decision.desired != current {
            self.autoscaler.scaled(seconds(now), current, decision.desired);
            self.changes.push((now, current, decision.desired));
        }
        self.decisions.push(decision.clone());
        self.now += 1;
        decision
    }

    fn run_until(&mut self, until: u64, sample: impl Fn(u64, ReplicaCounts) -> LoadSample) {
        while self.now < until {
            self.tick(&sample);
        }
    }

    fn capacity(&self) -> u32 {
        self.counts().capacity()
    }
}

fn business_hours() -> Schedule {
    Schedule {
        name: Some("business-hours".into()),
        time_zone: "Europe/Paris".into(),
        days: vec![Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri],
        start: TimeOfDay::hm(8, 0),
        end: TimeOfDay::hm(19, 0),
        min_replicas: Some(3),
        max_replicas: None,
    }
}

/// One decision at a wall-clock instant, with 1 replica and light load.
fn decide_at(policy: &AutoscalingPolicy, unix_ms: Option<u64>, replicas: u32) -> Decision {
    let mut autoscaler = Autoscaler::new(policy.clone());
    autoscaler.record(LoadSample {
        unix_ms,
        ..running(0, 1)
    });
    autoscaler.decide(Duration::ZERO, ready(replicas))
}
