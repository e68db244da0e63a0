//! Virtual-time tests of the policy's extensions: the queue and KV signals, the
//! tolerance band, burst mode, velocity selection, a scale in progress, schedules,
//! custom rules, the predictive floor, decision records and their configuration.

use std::time::Duration;

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

// ----- signals -----

#[test]
fn queue_depth_queue_delay_and_kv_targets_recommend_and_name_the_reason() {
    let mut policy = bare_policy();
    policy.load_targets = LoadTargets {
        queue_depth: Some(4.0),
        ..LoadTargets::none()
    };
    let mut autoscaler = Autoscaler::new(policy.clone());
    autoscaler.record(LoadSample {
        at: Duration::ZERO,
        queued: 12,
        running: 2,
        ..LoadSample::default()
    });
    let decision = autoscaler.decide(Duration::ZERO, ready(1));
    assert_eq!(decision.desired, 3);
    assert_eq!(decision.reason, ScaleReason::QueueDepth);
    assert!(
        decision
            .detail
            .starts_with("queue_depth 12 avg over 1s / target 4 per replica -> 3 (was 1)"),
        "{}",
        decision.detail
    );

    // Queue delay: 2 ready, 6 s delay against a 2 s target -> 2 x 3 = 6.
    policy.load_targets = LoadTargets {
        queue_delay_seconds: Some(2.0),
        ..LoadTargets::none()
    };
    let mut autoscaler = Autoscaler::new(policy.clone());
    autoscaler.record(LoadSample {
        at: Duration::ZERO,
        queued: 30,
        oldest_wait: seconds(6),
        started: 4,
        started_wait: seconds(8),
        ..LoadSample::default()
    });
    let decision = autoscaler.decide(Duration::ZERO, ready(2));
    assert_eq!(decision.signals.queue_delay_seconds, 6.0);
    assert_eq!(decision.desired, 6);
    assert_eq!(decision.reason, ScaleReason::QueueDelaySeconds);
    assert!(
        decision.detail.contains("queue_delay_seconds 6 avg over 1s / target 2 × 2 ready -> 6"),
        "{}",
        decision.detail
    );

    // KV: 3000 tokens in use of 2000 per replica (1.5 replicas' worth) / 0.5 -> 3.
    policy.load_targets = LoadTargets {
        kv_cache_utilization: Some(0.5),
        ..LoadTargets::none()
    };
    let mut autoscaler = Autoscaler::new(policy);
    autoscaler.record(LoadSample {
        at: Duration::ZERO,
        running: 6,
        kv_tokens_used: 3000,
        kv_capacity_tokens: 2000,
        ready_replicas: 2,
        ..LoadSample::default()
    });
    let decision = autoscaler.decide(Duration::ZERO, ready(2));
    assert_eq!(decision.signals.kv_cache_utilization, 0.75);
    assert_eq!(decision.signals.kv_cache_replicas_in_use, 1.5);
    assert_eq!(decision.desired, 3);
    assert_eq!(decision.reason, ScaleReason::KvCacheUtilization);
    assert_eq!(decision.recommendations.len(), 1);
    assert_eq!(decision.recommendations[0].need, 3.0);
}

#[test]
fn signals_average_over_the_window_and_warming_replicas_do_not_dilute_kv_use() {
    let mut autoscaler = Autoscaler::new(AutoscalingPolicy::default()); // 30 s window
    for at in 0..10 {
        autoscaler.record(LoadSample {
            at: seconds(at),
            queued: if at < 5 { 4 } else { 0 },
            oldest_wait: if at < 5 { seconds(2) } else { Duration::ZERO },
            kv_tokens_used: 500,
            kv_capacity_tokens: 1000,
            // Two replicas ready, whatever is starting beside them.
            ready_replicas: 2,
            ..LoadSample::default()
        });
    }
    let averages = autoscaler.load_averages(seconds(9));
    assert_eq!(averages.queue_depth, 2.0);
    assert_eq!(averages.queue_delay_seconds, 1.0);
    assert_eq!(averages.kv_cache_utilization, 0.25);
    // A sample without a ready replica does not count as 0% KV use.
    autoscaler.record(LoadSample {
        at: seconds(10),
        ready_replicas: 0,
        ..LoadSample::default()
    });
    assert_eq!(autoscaler.load_averages(seconds(10)).kv_cache_utilization, 0.25);
}

// ----- tolerance -----

#[test]
fn the_tolerance_band_keeps_small_changes_from_moving_anything() {
    let decide = |tolerance: f64, running: u64, capacity: u32| {
        let mut autoscaler = Autoscaler::new(AutoscalingPolicy {
            tolerance,
            ..bare_policy()
        });
        autoscaler.record(self::running(0, running));
        autoscaler.decide(Duration::ZERO, ready(capacity))
    };
    // Need 3.25 at 3 replicas: within 10% -> stays 3.
    let decision = decide(0.1, 26, 3);
    assert_eq!(decision.desired, 3);
    assert!(decision.recommendations[0].within_tolerance);
    assert!(
        decision.detail.contains("-> 3 (within tolerance 10% of 3)"),
        "{}",
        decision.detail
    );
    // Need 3.5: outside -> 4. Without tolerance 3.25 -> 4 too.
    assert_eq!(decide(0.1, 28, 3).desired, 4);
    assert_eq!(decide(0.0, 26, 3).desired, 4);
    // Down: need 9.2 at 10 stays, 8.8 -> 9.
    assert_eq!(decide(0.1, 74, 10).desired, 10);
    assert_eq!(decide(0.1, 70, 10).desired, 9);
    // From zero there is nothing to be near: 1 request queued starts a replica.
    assert_eq!(decide(0.1, 1, 0).desired, 1);
}

// ----- burst mode -----

#[test]
fn a_burst_past_the_threshold_scales_up_at_once_and_never_down_while_it_lasts() {
    let mut policy = AutoscalingPolicy {
        max_replicas: 20,
        scale_down_window: Duration::ZERO,
        panic_threshold: Some(2.0),
        ..AutoscalingPolicy::default()
    };
    policy.velocity.scale_down = VelocityLimit::unlimited();
    let mut deployment = Deployment::new(policy, 2, 0);
    deployment.run_until(60, |at, _| running(at, 16)); // 2 replicas' worth
    assert_eq!(deployment.changes, vec![]);
    // 48 in flight: the 6 s average crosses 2 x 2 at t = 61 ((5 x 16 + 2 x 48) / 6 = 29.3 -> 4).
    deployment.run_until(62, |at, _| running(at, 48));
    let decision = deployment.decisions.last().unwrap().clone();
    assert_eq!(decision.reason, ScaleReason::Panic, "{}", decision.detail);
    assert!(decision.panic.as_ref().unwrap().active);
    assert_eq!(decision.panic.as_ref().unwrap().threshold_replicas, 4.0);
    assert!(decision.detail.contains("burst mode"), "{}", decision.detail);
    assert_eq!(deployment.changes, vec![(61, 2, 4)]);
    // The short window reaches 6 within the panic, long before the 30 s up-window.
    deployment.run_until(70, |at, _| running(at, 48));
    assert_eq!(deployment.capacity(), 6);
    assert!(deployment.changes.iter().all(|(at, _, _)| *at < 70));
    // The load falls back: no scale-down while the panic lasts (the threshold was last
    // reached at t = 61 against 2 replicas; a metrics window (30 s) later it ends).
    let panic_started = deployment.decisions[61].panic.as_ref().unwrap().since_seconds;
    assert_eq!(panic_started, Some(61.0));
    deployment.run_until(200, |at, _| running(at, 8));
    let first_down = deployment
        .changes
        .iter()
        .find(|(_, from, to)| to < from)
        .copied()
        .unwrap();
    let last_panicking = deployment
        .decisions
        .iter()
        .rposition(|decision| decision.panic.as_ref().is_some_and(|panic| panic.active))
        .unwrap() as u64;
    assert_eq!(last_panicking, 90);
    assert!(first_down.0 > last_panicking, "{first_down:?} during the panic ({last_panicking})");
    assert!(!deployment.decisions.last().unwrap().panic.as_ref().unwrap().active);
    assert_eq!(deployment.capacity(), 1);
}

#[test]
fn a_rise_below_the_panic_threshold_waits_for_the_up_window() {
    let policy = AutoscalingPolicy {
        max_replicas: 20,
        panic_threshold: Some(2.0),
        ..super::tests::classic_policy()
    };
    let mut deployment = Deployment::new(policy.clone(), 2, 0);
    deployment.run_until(60, |at, _| running(at, 16));
    deployment.run_until(120, |at, _| running(at, 24)); // 3 replicas' worth: 1.5x
    assert!(deployment.decisions.iter().all(|d| !d.panic.as_ref().unwrap().active));
    let (at, from, to) = deployment.changes[0];
    assert_eq!((from, to), (2, 3));
    assert!(at >= 90, "scaled at {at}, before the 30 s up-window");

    // With burst mode off, the same burst as above waits for the up-window.
    let mut quiet = Deployment::new(AutoscalingPolicy { panic_threshold: None, ..policy }, 2, 0);
    quiet.run_until(60, |at, _| running(at, 16));
    quiet.run_until(80, |at, _| running(at, 48));
    assert_eq!(quiet.changes, vec![]);
    assert!(quiet.decisions.last().unwrap().panic.is_none());
}

// ----- velocity -----

#[test]
fn velocity_select_min_takes_the_smaller_limit() {
    let limit = VelocityLimit {
        replicas: Some(4),
        percent: Some(50.0),
        period: seconds(60),
        select: VelocitySelect::Min,
    };
    assert_eq!(limit.allowance(10), Some(4));
    assert_eq!(limit.allowance(4), Some(2));
    let max = VelocityLimit { select: VelocitySelect::Max, ..limit.clone() };
    assert_eq!(max.allowance(10), Some(5));
    assert_eq!(VelocityLimit { replicas: None, ..limit.clone() }.allowance(10), Some(5));

    let mut policy = bare_policy();
    policy.velocity.scale_up = limit;
    let mut deployment = Deployment::new(policy, 4, 0);
    deployment.run_until(121, |at, _| running(at, 400)); // 50 replicas' worth
    // min(4, 50% of 4) = 2, then min(4, 3) = 3, then min(4, 4.5 -> 5) = 4.
    assert_eq!(deployment.changes, vec![(0, 4, 6), (60, 6, 9), (120, 9, 13)]);

    let parsed: AutoscalingPolicy = toml::from_str("[velocity.scale_down]\nselect = \"min\"\npercent = 10").unwrap();
    assert_eq!(parsed.velocity.scale_down.select, VelocitySelect::Min);
    assert_eq!(parsed.velocity.scale_down.replicas, None);
    assert_eq!(parsed.velocity.scale_down.percent, Some(10.0));
    assert_eq!(parsed.velocity.scale_up.select, VelocitySelect::Max);
    let error = toml::from_str::<AutoscalingPolicy>("[velocity.scale_up]\nselect = \"fastest\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("fastest"), "{error}");
}

#[test]
fn each_window_and_each_direction_is_its_own_knob() {
    // Up at once, down after 20 s, to zero after 50 s idle; down 2 per 10 s.
    let mut policy = AutoscalingPolicy {
        max_replicas: 20,
        metrics_window: seconds(1),
        scale_up_window: Duration::ZERO,
        scale_down_window: seconds(20),
        scale_to_zero_window: seconds(50),
        panic_threshold: None,
        ..AutoscalingPolicy::default()
    };
    policy.velocity.scale_up = VelocityLimit::unlimited();
    policy.velocity.scale_down = VelocityLimit {
        replicas: Some(2),
        percent: None,
        period: seconds(10),
        select: VelocitySelect::Max,
    };
    let mut deployment = Deployment::new(policy, 0, 0);
    deployment.run_until(10, |at, _| running(at, 48));
    deployment.run_until(200, |at, _| LoadSample { at: seconds(at), ..LoadSample::default() });
    assert_eq!(
        deployment.changes,
        vec![
            (0, 0, 6),
            (30, 6, 4),  // the last 6 (t = 9) left the 20 s down-window at t = 30
            (40, 4, 2),
            (50, 2, 1),  // 1 kept until idle
            (59, 1, 0),  // idle since t = 9, for 50 s
        ]
    );
}

// ----- a scale in progress -----

#[test]
fn starting_replicas_count_as_coming_capacity_and_queue_signals_wait_for_them() {
    let mut policy = bare_policy();
    policy.load_targets.queue_delay_seconds = Some(2.0);
    let mut deployment = Deployment::new(policy, 1, 30);
    // t = 0: 32 in flight -> 4; three replicas start (ready at t = 30).
    deployment.tick(|at, _| running(at, 32));
    assert_eq!(deployment.changes, vec![(0, 1, 4)]);
    // While they start the queue grows and waits get long: the queue delay target
    // would ask for more, but the coming replicas will take that queue.
    deployment.run_until(29, |at, counts| LoadSample {
        at: seconds(at),
        queued: 24,
        running: 8,
        oldest_wait: seconds(at),
        ready_replicas: counts.ready,
        ..LoadSample::default()
    });
    assert_eq!(deployment.changes, vec![(0, 1, 4)]);
    let decision = deployment.decisions.last().unwrap();
    assert!(decision.scale_in_progress, "{}", decision.detail);
    let delay = decision
        .recommendations
        .iter()
        .find(|r| r.signal == Signal::QueueDelaySeconds)
        .unwrap();
    assert!(delay.held_by_scale_in_progress && delay.need > 4.0, "{delay:?}");
    assert_eq!(delay.replicas, 4);
    // Load beyond what they will bring still adds replicas: 48 in flight -> 6.
    let decision = deployment.tick(|at, _| running(at, 48));
    assert_eq!(decision.desired, 6, "{}", decision.detail);
    assert_eq!(decision.direction, ScaleDirection::Up);
}

#[test]
fn no_scale_down_while_replicas_are_starting_except_to_obey_max_replicas() {
    let mut deployment = Deployment::new(bare_policy(), 1, 20);
    deployment.tick(|at, _| running(at, 40)); // -> 5, four starting until t = 20
    deployment.run_until(20, |at, _| running(at, 2)); // the load is gone
    assert_eq!(deployment.changes, vec![(0, 1, 5)]);
    let held = deployment.decisions.last().unwrap();
    assert!(held.scale_in_progress);
    assert!(
        held.detail.contains("4 replicas starting: no scale-down to 1 until they are ready"),
        "{}",
        held.detail
    );
    // Ready at t = 20: down at once (no down-window here).
    deployment.tick(|at, _| running(at, 2));
    assert_eq!(deployment.changes, vec![(0, 1, 5), (20, 5, 1)]);

    // max_replicas still cuts a scale in progress.
    let mut deployment = Deployment::new(bare_policy(), 1, 20);
    deployment.tick(|at, _| running(at, 40));
    deployment.autoscaler.set_policy(AutoscalingPolicy {
        max_replicas: 2,
        ..bare_policy()
    });
    let decision = deployment.tick(|at, _| running(at, 40));
    assert_eq!(decision.desired, 2);
    assert_eq!(decision.reason, ScaleReason::MaxReplicas);
}

// ----- schedules -----

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

#[test]
fn a_schedule_raises_min_replicas_in_local_time_across_dst() {
    let policy = AutoscalingPolicy {
        schedules: vec![business_hours()],
        ..bare_policy()
    };
    assert_eq!(policy.validate(), Ok(()));
    // Friday 28 March 2025, Paris at UTC+1: 08:00 local is 07:00 UTC.
    let before = decide_at(&policy, Some(utc_ms("2025-03-28T06:59:00")), 1);
    assert_eq!(before.desired, 1);
    assert_eq!(before.schedule.as_ref().unwrap().active, Vec::<String>::new());
    let open = decide_at(&policy, Some(utc_ms("2025-03-28T07:00:00")), 1);
    assert_eq!(open.desired, 3);
    assert_eq!(open.reason, ScaleReason::MinReplicas);
    assert_eq!(open.min_replicas, 3);
    assert!(
        open.detail.ends_with("raised to min_replicas 3 (schedule business-hours)"),
        "{}",
        open.detail
    );
    assert_eq!(open.unix_ms, Some(utc_ms("2025-03-28T07:00:00")));
    // Monday 31 March, after the change to UTC+2: 08:00 local is 06:00 UTC.
    assert_eq!(decide_at(&policy, Some(utc_ms("2025-03-31T05:59:00")), 1).desired, 1);
    assert_eq!(decide_at(&policy, Some(utc_ms("2025-03-31T06:00:00")), 1).desired, 3);
    // The weekend is not in the schedule.
    assert_eq!(decide_at(&policy, Some(utc_ms("2025-03-29T10:00:00")), 1).desired, 1);
    // Without a wall clock, schedules are not applied (and the decision says so by
    // having no schedule effect).
    let unknown = decide_at(&policy, None, 1);
    assert_eq!(unknown.desired, 1);
    assert!(unknown.schedule.is_none());
}

#[test]
fn a_schedule_lowers_max_replicas_and_the_wall_clock_advances_with_now() {
    let night = Schedule {
        name: Some("night".into()),
        time_zone: "UTC".into(),
        days: Weekday::all(),
        start: TimeOfDay::hm(22, 0),
        end: TimeOfDay::hm(6, 0),
        min_replicas: None,
        max_replicas: Some(1),
    };
    let policy = AutoscalingPolicy {
        schedules: vec![night],
        metrics_window: seconds(120),
        ..bare_policy()
    };
    let mut autoscaler = Autoscaler::new(policy);
    // One sample at 21:59:00 UTC; decisions a minute later use the advanced clock.
    autoscaler.record(LoadSample {
        unix_ms: Some(utc_ms("2025-06-13T21:59:00")),
        ..running(0, 24)
    });
    assert_eq!(autoscaler.decide(Duration::ZERO, ready(3)).desired, 3);
    let decision = autoscaler.decide(seconds(60), ready(3));
    assert_eq!(decision.unix_ms, Some(utc_ms("2025-06-13T22:00:00")));
    assert_eq!(decision.desired, 1);
    assert_eq!(decision.reason, ScaleReason::MaxReplicas);
    assert!(decision.detail.ends_with("capped at max_replicas 1 (schedule night)"), "{}", decision.detail);
}

// ----- custom rules -----

fn slow_queue_rule() -> CustomRule {
    toml::from_str(
        r#"name = "slow-queue"
signal = "queue_delay_seconds"
above = 2.0
for = "30s"
add = 2"#,
    )
    .unwrap()
}

/// `bare_policy` with the default 10 m scale-down window, so the targets hold the count
/// while a rule adds to it.
fn rule_policy(rules: Vec<CustomRule>) -> AutoscalingPolicy {
    AutoscalingPolicy {
        rules,
        scale_down_window: seconds(600),
        ..bare_policy()
    }
}

fn waiting(at: u64, wait: u64) -> LoadSample {
    LoadSample {
        at: seconds(at),
        queued: 1,
        running: 2,
        oldest_wait: seconds(wait),
        ..LoadSample::default()
    }
}

#[test]
fn a_rule_fires_after_its_condition_held_for_its_duration_and_is_named() {
    let policy = rule_policy(vec![slow_queue_rule()]);
    assert_eq!(policy.validate(), Ok(()));
    let mut deployment = Deployment::new(policy, 2, 0);
    deployment.run_until(10, |at, _| waiting(at, 1));
    // Above 2 s from t = 10; the condition has held 30 s at t = 40.
    deployment.run_until(40, |at, _| waiting(at, 3));
    assert_eq!(deployment.changes, vec![]);
    assert!(deployment.decisions.iter().all(|d| d.rules_fired.is_empty()));
    let decision = deployment.tick(|at, _| waiting(at, 3));
    assert_eq!(decision.desired, 4);
    assert_eq!(decision.reason, ScaleReason::Rule);
    assert_eq!(decision.rules_fired.len(), 1);
    let fired = &decision.rules_fired[0];
    assert_eq!(fired.name, "slow-queue");
    assert_eq!(fired.signal, Signal::QueueDelaySeconds);
    assert_eq!(fired.value, 3.0);
    assert_eq!(fired.condition, "above 2");
    assert_eq!(fired.action, "add 2");
    assert_eq!(fired.held_seconds, 30.0);
    assert!(
        decision.detail.contains("rule slow-queue: queue_delay_seconds 3 above 2 -> 4"),
        "{}",
        decision.detail
    );
    // It acts once per `for`: the next add comes 30 s after the scale, not at once.
    deployment.run_until(70, |at, _| waiting(at, 3));
    assert_eq!(deployment.changes, vec![(40, 2, 4)]);
    deployment.tick(|at, _| waiting(at, 3));
    assert_eq!(deployment.changes, vec![(40, 2, 4), (70, 4, 6)]);
    // A sample that breaks the condition restarts the clock.
    deployment.tick(|at, _| waiting(at, 1));
    deployment.run_until(100, |at, _| waiting(at, 3));
    assert_eq!(deployment.changes.len(), 2);
}

#[test]
fn rules_compete_with_the_targets_and_the_highest_wins() {
    let rules: Vec<CustomRule> = serde_json::from_value(serde_json::json!([
        {"name": "busy", "signal": "concurrent_requests", "above": 10, "set": 3},
        {"name": "very-busy", "signal": "concurrent_requests", "above": 20, "multiply": 2},
        {"name": "quiet", "signal": "concurrent_requests", "below": 100, "remove": 1},
    ]))
    .unwrap();
    let policy = AutoscalingPolicy {
        rules,
        ..bare_policy()
    };
    let decide = |in_flight: u64, replicas: u32| {
        let mut autoscaler = Autoscaler::new(policy.clone());
        autoscaler.record(running(0, in_flight));
        autoscaler.decide(Duration::ZERO, ready(replicas))
    };
    // 16 in flight: target -> 2, busy -> 3, quiet -> 1: the rule wins.
    let decision = decide(16, 2);
    assert_eq!((decision.desired, decision.reason), (3, ScaleReason::Rule));
    let names: Vec<&str> = decision.rules_fired.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["busy", "quiet"]);
    // 24 in flight at 2 replicas: target -> 3, busy -> 3, very-busy -> 4.
    let decision = decide(24, 2);
    assert_eq!(decision.desired, 4);
    assert_eq!(decision.rules_fired.len(), 3);
    // 80 in flight: the target's 10 beats every rule; the rules are still named.
    let decision = decide(80, 2);
    assert_eq!((decision.desired, decision.reason), (10, ScaleReason::ConcurrentRequests));
    assert_eq!(decision.rules_fired.len(), 3);
    // `remove` cannot take the count below what the targets want.
    assert_eq!(decide(1, 1).desired, 1);
}

#[test]
fn a_set_min_rule_raises_the_floor_while_it_fires() {
    let rule: CustomRule = toml::from_str(
        "name = \"kv-pressure\"\nsignal = \"kv_cache_utilization\"\nabove = 0.9\nset_min = 4",
    )
    .unwrap();
    let policy = AutoscalingPolicy {
        rules: vec![rule],
        ..bare_policy()
    };
    let kv = |at: u64, used: u64, ready: u32| LoadSample {
        kv_tokens_used: used,
        kv_capacity_tokens: 1000,
        ready_replicas: ready,
        ..running(at, 4)
    };
    let mut autoscaler = Autoscaler::new(policy.clone());
    autoscaler.record(kv(0, 1900, 2));
    let decision = autoscaler.decide(Duration::ZERO, ready(2));
    assert_eq!(decision.desired, 4);
    assert_eq!(decision.reason, ScaleReason::MinReplicas);
    assert_eq!(decision.min_replicas, 4);
    assert!(decision.detail.ends_with("raised to min_replicas 4 (rule kv-pressure)"), "{}", decision.detail);
    // No ready replica: KV use is unknown and the rule does not hold.
    let mut autoscaler = Autoscaler::new(policy);
    autoscaler.record(kv(0, 1900, 0));
    let decision = autoscaler.decide(Duration::ZERO, ReplicaCounts { ready: 0, starting: 1, draining: 0 });
    assert!(decision.rules_fired.is_empty());
    assert_eq!(decision.min_replicas, 0);
}

#[test]
fn set_policy_keeps_rule_clocks_unless_the_rules_change() {
    let policy = rule_policy(vec![slow_queue_rule()]);
    let mut deployment = Deployment::new(policy.clone(), 2, 0);
    deployment.run_until(20, |at, _| waiting(at, 3));
    deployment.autoscaler.set_policy(AutoscalingPolicy {
        max_replicas: 40,
        ..policy.clone()
    });
    deployment.run_until(31, |at, _| waiting(at, 3));
    assert_eq!(deployment.changes, vec![(30, 2, 4)]);

    let mut changed = policy.clone();
    changed.rules[0].hold_for = seconds(10);
    let mut deployment = Deployment::new(policy, 2, 0);
    deployment.run_until(20, |at, _| waiting(at, 3));
    deployment.autoscaler.set_policy(changed);
    deployment.run_until(30, |at, _| waiting(at, 3));
    // The new rule's clock started at t = 20.
    assert_eq!(deployment.changes, vec![]);
    deployment.tick(|at, _| waiting(at, 3));
    assert_eq!(deployment.changes, vec![(30, 2, 4)]);
}

// ----- the predictive floor -----

/// Every 10 minutes, 4 replicas' worth of load from minute 5 to minute 7.
fn periodic(at: u64, _: ReplicaCounts) -> LoadSample {
    let phase = at % 600;
    if (300..420).contains(&phase) {
        running(at, 32)
    } else {
        LoadSample {
            at: seconds(at),
            ..LoadSample::default()
        }
    }
}

fn predictive_policy(mode: PredictiveMode) -> AutoscalingPolicy {
    let mut policy = AutoscalingPolicy {
        max_replicas: 20,
        scale_up_window: seconds(30),
        scale_down_window: seconds(30),
        scale_to_zero_window: seconds(60),
        panic_threshold: None,
        ..AutoscalingPolicy::default()
    };
    policy.velocity.scale_down = VelocityLimit::unlimited();
    policy.predictive = PredictivePolicy {
        mode,
        season: seconds(600),
        margin: seconds(30),
        ..PredictivePolicy::default()
    };
    policy
}

#[test]
fn the_predictive_floor_starts_replicas_before_the_load_returns() {
    // Cold start 60 s + margin 30 s: look 90 s ahead.
    let mut deployment = Deployment::new(predictive_policy(PredictiveMode::On), 0, 60);
    deployment.run_until(1200, periodic);
    // First period: nothing to predict from; the load at t = 300 waits for a cold start.
    let first_up = deployment.changes[0];
    assert_eq!((first_up.0, first_up.1), (300, 0));
    assert_eq!(deployment.decisions[300].reason, ScaleReason::QueuedAtZero);
    // Back to zero after the load (idle for 60 s).
    assert!(deployment.changes.iter().any(|(at, _, to)| *at < 810 && *at > 420 && *to == 0));
    // Second period: 4 replicas start at t = 810, 90 s before the load at t = 900, and
    // are ready (cold start 60 s) when it arrives.
    let predicted = deployment
        .changes
        .iter()
        .find(|(at, _, _)| *at > 600)
        .copied()
        .unwrap();
    assert_eq!(predicted, (810, 0, 4));
    let decision = &deployment.decisions[810];
    assert_eq!(decision.reason, ScaleReason::Predictive);
    let effect = decision.predictive.as_ref().unwrap();
    assert_eq!((effect.floor, effect.raised), (Some(4), true));
    assert_eq!(effect.look_ahead_seconds, 90.0);
    assert!(decision.detail.contains("predictive floor 4 (seasonal forecast over the next 1m 30s)"), "{}", decision.detail);
    assert_eq!(deployment.decisions[900].current.ready, 4, "warm when the load arrives");
}

#[test]
fn preview_mode_reports_the_floor_and_never_acts() {
    let mut preview = Deployment::new(predictive_policy(PredictiveMode::Preview), 0, 60);
    preview.run_until(1200, periodic);
    let effect = preview.decisions[810].predictive.as_ref().unwrap();
    assert_eq!(effect.mode, PredictiveMode::Preview);
    assert_eq!((effect.floor, effect.raised), (Some(4), false));
    // The same changes as with the floor off, period after period.
    let mut off = Deployment::new(predictive_policy(PredictiveMode::Off), 0, 60);
    off.run_until(1200, periodic);
    assert_eq!(preview.changes, off.changes);
    assert!(off.decisions.iter().all(|d| d.predictive.is_none()));
    assert_eq!(preview.changes.iter().find(|(at, _, _)| *at > 600).unwrap().0, 900);
}

#[test]
fn the_predictive_floor_never_lowers_the_count() {
    // Load that the history never saw: the forecast (0) must not pull it down.
    let mut policy = predictive_policy(PredictiveMode::On);
    policy.predictive.season = seconds(60);
    let mut deployment = Deployment::new(policy, 0, 0);
    deployment.run_until(120, |at, _| LoadSample { at: seconds(at), ..LoadSample::default() });
    deployment.run_until(300, |at, _| running(at, 40));
    let decision = deployment.decisions.last().unwrap();
    assert_eq!(decision.desired, 5, "{}", decision.detail);
    assert!(!decision.predictive.as_ref().unwrap().raised);
}

#[test]
fn the_trend_forecast_raises_the_floor_ahead_of_a_ramp() {
    let mut policy = predictive_policy(PredictiveMode::Preview);
    policy.predictive.method = ForecastMethod::Trend;
    policy.predictive.look_ahead = Some(seconds(300));
    let mut deployment = Deployment::new(policy, 1, 0);
    // Concurrency rises by 8 (one replica's worth) per minute.
    deployment.run_until(600, |at, _| running(at, 1 + at * 8 / 60));
    let decision = deployment.decisions.last().unwrap();
    let floor = decision.predictive.as_ref().unwrap().floor.unwrap();
    // ~10 replicas' worth now, ~15 five minutes ahead.
    assert!((14..=17).contains(&floor), "{floor}: {}", decision.detail);
    assert!(floor > decision.recommendations[0].replicas);
}

// ----- decision records -----

#[test]
fn decision_records_keep_inputs_and_fold_repeats() {
    let mut history = DecisionHistory::new(3);
    let mut deployment = Deployment::new(bare_policy(), 1, 0);
    for _ in 0..5 {
        history.push(deployment.tick(|at, _| running(at, 4)));
    }
    assert_eq!(history.len(), 1);
    let record = &history.records()[0];
    assert_eq!(record.decisions, 5);
    assert_eq!(record.first_at_seconds, 0.0);
    assert_eq!(record.decision.at_seconds, 4.0);
    // A change starts a new record; the oldest go once the capacity is reached.
    for in_flight in [16, 32, 48] {
        history.push(deployment.tick(|at, _| running(at, in_flight)));
    }
    assert_eq!(history.len(), 3);
    assert_eq!(history.latest().unwrap().desired, 6);
    let json = serde_json::to_value(history.records()).unwrap();
    let last = &json[2];
    assert_eq!(last["decisions"], 1);
    assert_eq!(last["desired"], 6);
    assert_eq!(last["direction"], "up");
    assert_eq!(last["reason"], "concurrent_requests");
    assert_eq!(last["signals"]["concurrent_requests"], 48.0);
    assert_eq!(last["recommendations"][0]["signal"], "concurrent_requests");
    assert_eq!(last["recommendations"][0]["replicas"], 6);
    assert_eq!(last["current"]["ready"], 4);
    assert!(last.get("panic").is_none(), "burst mode off: no panic effect");
    assert_eq!(last["rules_fired"], serde_json::json!([]));
}

#[test]
fn every_decision_says_what_each_stage_did() {
    let mut policy = AutoscalingPolicy {
        max_replicas: 10,
        schedules: vec![business_hours()],
        rules: vec![slow_queue_rule()],
        panic_threshold: Some(2.0),
        ..super::tests::classic_policy()
    };
    policy.predictive.mode = PredictiveMode::Preview;
    let mut autoscaler = Autoscaler::new(policy);
    autoscaler.record(LoadSample {
        unix_ms: Some(utc_ms("2025-03-28T10:00:00")),
        ..running(0, 20)
    });
    let decision = autoscaler.decide(Duration::ZERO, ready(2));
    let json = serde_json::to_value(&decision).unwrap();
    assert_eq!(json["schedule"]["active"][0], "business-hours");
    assert_eq!(json["schedule"]["min_replicas"], 3);
    assert_eq!(json["panic"]["active"], false);
    assert_eq!(json["predictive"]["mode"], "preview");
    assert_eq!(json["predictive"]["forecast"], serde_json::Value::Null);
    assert_eq!(json["min_replicas"], 3);
    assert_eq!(json["max_replicas"], 10);
    assert_eq!(json["stabilized"], 2);
    assert_eq!(json["desired"], 3);
    assert_eq!(json["reason"], "min_replicas");
    assert_eq!(json["scale_in_progress"], false);
    assert_eq!(json["velocity_limited"], false);
}

// ----- configuration -----

#[test]
fn the_new_keys_default_parse_and_round_trip() {
    let policy = AutoscalingPolicy::default();
    assert_eq!(policy.tolerance, 0.1);
    assert_eq!(policy.panic_window, seconds(6));
    assert_eq!(policy.panic_threshold, None, "burst mode is off by default");
    assert!(policy.schedules.is_empty() && policy.rules.is_empty());
    assert_eq!(policy.predictive.mode, PredictiveMode::Off);
    assert_eq!(policy.load_targets.queue_depth, None);
    assert_eq!(policy.load_targets.queue_delay_seconds, None);
    assert_eq!(policy.load_targets.kv_cache_utilization, None);

    let policy: AutoscalingPolicy = toml::from_str(
        r#"
        tolerance = 0.05
        panic_window = "10s"
        panic_threshold = 3
        [load_targets]
        queue_delay_seconds = 2
        kv_cache_utilization = 0.8
        queue_depth = 4
        [[schedules]]
        time_zone = "Europe/Paris"
        days = ["mon", "tue", "wed", "thu", "fri"]
        start = "08:00"
        end = "19:00"
        min_replicas = 2
        [[rules]]
        signal = "queue_delay_seconds"
        above = 2.0
        for = "30s"
        add = 2
        [predictive]
        mode = "preview"
        season = "7d"
        "#,
    )
    .unwrap();
    assert_eq!(policy.validate(), Ok(()));
    assert_eq!(policy.tolerance, 0.05);
    assert_eq!(policy.panic_window, seconds(10));
    assert_eq!(policy.panic_threshold, Some(3.0));
    assert_eq!(policy.load_targets.concurrent_requests, Some(8.0));
    assert_eq!(policy.load_targets.kv_cache_utilization, Some(0.8));
    assert_eq!(policy.schedules[0].min_replicas, Some(2));
    assert_eq!(policy.rules[0].display_name(0), "rule-1");
    assert_eq!(policy.predictive.season, seconds(7 * 86_400));
    let json = serde_json::to_value(&policy).unwrap();
    assert_eq!(json["panic_window"], "10s");
    assert_eq!(json["rules"][0]["for"], "30s");
    assert_eq!(json["schedules"][0]["start"], "08:00");
    let back: AutoscalingPolicy = serde_json::from_value(json).unwrap();
    assert_eq!(back, policy);

    let on: AutoscalingPolicy = toml::from_str("panic_threshold = 2").unwrap();
    assert!(on.panic_enabled());
    let off: AutoscalingPolicy = toml::from_str("panic_threshold = false").unwrap();
    assert!(!off.panic_enabled());
    let off: AutoscalingPolicy = serde_json::from_str(r#"{"panic_threshold": null}"#).unwrap();
    assert_eq!(off.panic_threshold, None);
    // Defaults serialize without empty schedule and rule lists.
    let json = serde_json::to_value(AutoscalingPolicy::default()).unwrap();
    assert!(json.get("rules").is_none() && json.get("schedules").is_none());
}

#[test]
fn the_new_keys_validate_with_errors_naming_the_key() {
    let check = |change: &dyn Fn(&mut AutoscalingPolicy)| {
        let mut policy = AutoscalingPolicy::default();
        change(&mut policy);
        policy.validate().unwrap_err()
    };
    assert_eq!(check(&|p| p.tolerance = 1.0), "autoscaling.tolerance (1) must be at least 0 and less than 1");
    assert_eq!(check(&|p| p.tolerance = -0.1), "autoscaling.tolerance (-0.1) must be at least 0 and less than 1");
    assert_eq!(
        check(&|p| p.panic_threshold = Some(1.0)),
        "autoscaling.panic_threshold (1) must be a finite number greater than 1, or false to turn burst mode off"
    );
    assert_eq!(
        check(&|p| {
            p.panic_threshold = Some(2.0);
            p.panic_window = Duration::ZERO;
        }),
        "autoscaling.panic_window (0s) must be at least 1s"
    );
    assert_eq!(
        check(&|p| p.load_targets.kv_cache_utilization = Some(1.5)),
        "autoscaling.load_targets.kv_cache_utilization (1.5) must be at most 1 (a fraction of the KV cache)"
    );
    assert_eq!(
        check(&|p| p.load_targets.queue_delay_seconds = Some(0.0)),
        "autoscaling.load_targets.queue_delay_seconds (0) must be a finite number greater than 0"
    );
    assert_eq!(
        check(&|p| p.load_targets = LoadTargets::none()),
        "autoscaling.load_targets must set at least one of concurrent_requests, requests_per_second, \
         tokens_generated_per_second, prompt_tokens_per_second, queue_depth, queue_delay_seconds, \
         kv_cache_utilization"
    );
    assert!(check(&|p| p.schedules = vec![Schedule { time_zone: "Nowhere/Town".into(), ..business_hours() }])
        .starts_with("autoscaling.schedules[0].time_zone (\"Nowhere/Town\")"));
    assert_eq!(
        check(&|p| p.rules = vec![slow_queue_rule(), slow_queue_rule()]),
        "autoscaling.rules[1].name (\"slow-queue\") is used twice"
    );
    assert_eq!(
        check(&|p| {
            let mut rule = slow_queue_rule();
            rule.add = None;
            p.rules = vec![slow_queue_rule(), rule];
        }),
        "autoscaling.rules[1] must set exactly one action: add, remove, multiply, set or set_min (0 set)"
    );
    assert_eq!(
        check(&|p| p.predictive.level_smoothing = 2.0),
        "autoscaling.predictive.level_smoothing (2) must be greater than 0 and at most 1"
    );
    // Burst mode off: its window is not checked.
    let mut policy = AutoscalingPolicy {
        panic_threshold: None,
        panic_window: Duration::ZERO,
        ..AutoscalingPolicy::default()
    };
    assert_eq!(policy.validate(), Ok(()));
    policy.tolerance = 0.0;
    assert_eq!(policy.validate(), Ok(()));
}

/// Counts, durations and factors have upper bounds, so a typing error cannot ask a node
/// for a million replicas or a window of centuries (issue: one admin call took the whole
/// process down).
#[test]
fn counts_durations_and_factors_have_upper_bounds() {
    let error = |change: &dyn Fn(&mut AutoscalingPolicy)| {
        let mut policy = AutoscalingPolicy::default();
        change(&mut policy);
        policy.validate().expect_err("out of bounds")
    };
    let ok = |change: &dyn Fn(&mut AutoscalingPolicy)| {
        let mut policy = AutoscalingPolicy::default();
        change(&mut policy);
        policy.validate()
    };
    assert_eq!(
        error(&|p| {
            p.min_replicas = 1_000_000;
            p.max_replicas = 1_000_000;
        }),
        "autoscaling.min_replicas (1000000) must be at most 1000"
    );
    assert_eq!(error(&|p| p.max_replicas = u32::MAX), "autoscaling.max_replicas (4294967295) must be at most 1000");
    assert_eq!(ok(&|p| p.max_replicas = MAX_REPLICAS), Ok(()));
    let centuries = Duration::from_secs(500_000_000 * 365 * 24 * 3600);
    assert!(error(&|p| p.scale_to_zero_window = centuries).starts_with("autoscaling.scale_to_zero_window"));
    assert!(error(&|p| p.scale_down_window = centuries).starts_with("autoscaling.scale_down_window"));
    assert!(error(&|p| p.panic_window = centuries).starts_with("autoscaling.panic_window"));
    let percent = error(&|p| p.velocity.scale_up.percent = Some(1e308));
    assert!(percent.starts_with("autoscaling.velocity.scale_up.percent ("), "{percent}");
    assert!(percent.ends_with(") must be at most 100000"), "{percent}");
    assert!(error(&|p| p.velocity.scale_down.period = centuries).starts_with("autoscaling.velocity.scale_down.period"));
    assert!(error(&|p| p.velocity.scale_up.replicas = Some(5000)).starts_with("autoscaling.velocity.scale_up.replicas"));
    assert!(error(&|p| p.load_targets.concurrent_requests = Some(1e300)).starts_with("autoscaling.load_targets.concurrent_requests"));
    assert!(error(&|p| p.panic_threshold = Some(1e9)).starts_with("autoscaling.panic_threshold"));
}
