use super::*;

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
