//! Virtual-time tests of the policy's extensions: the queue and KV signals, the
//! tolerance band, burst mode, velocity selection, a scale in progress, schedules,
//! custom rules, the predictive floor, decision records and their configuration.

use super::*;

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
