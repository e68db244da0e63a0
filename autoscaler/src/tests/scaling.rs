use super::*;

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
