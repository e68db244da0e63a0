//! Virtual-time tests of the policy's extensions, continued: custom rules, the
//! predictive floor, decision records and the extensions' configuration.

use super::*;

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
/// for a million replicas or a window of centuries (one admin call must never take the
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
