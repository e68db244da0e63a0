//! Every metric the actors record, declared once with its description and unit.
//! `describe()` is called once at start-up; the recording helpers keep names and label
//! sets in one place.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};

use swell_autoscaler::{Decision, Signal};

pub const REQUESTS_TOTAL: &str = "swell_requests_total";
pub const TIME_TO_FIRST_TOKEN: &str = "swell_time_to_first_token_seconds";
pub const INTER_TOKEN_LATENCY: &str = "swell_inter_token_latency_seconds";
pub const REQUEST_DURATION: &str = "swell_request_duration_seconds";
pub const QUEUE_WAIT: &str = "swell_queue_wait_seconds";
pub const QUEUE_DEPTH: &str = "swell_queue_depth";
pub const REPLICAS: &str = "swell_replicas";
pub const DESIRED_REPLICAS: &str = "swell_desired_replicas";
pub const SCALE_EVENTS_TOTAL: &str = "swell_scale_events_total";
pub const AUTOSCALER_DECISIONS_TOTAL: &str = "swell_autoscaler_decisions_total";
pub const AUTOSCALER_RECOMMENDED_REPLICAS: &str = "swell_autoscaler_recommended_replicas";
pub const AUTOSCALER_SIGNAL: &str = "swell_autoscaler_signal";
pub const AUTOSCALER_PANIC: &str = "swell_autoscaler_panic";
pub const AUTOSCALER_RULE_FIRINGS_TOTAL: &str = "swell_autoscaler_rule_firings_total";
pub const AUTOSCALER_PREDICTED_REPLICAS: &str = "swell_autoscaler_predicted_replicas";
pub const COLD_START: &str = "swell_replica_cold_start_seconds";
pub const REPLICA_RESTARTS_TOTAL: &str = "swell_replica_restarts_total";
pub const QUOTA_REJECTIONS_TOTAL: &str = "swell_quota_rejections_total";
pub const QUOTA_REDIS_ERRORS_TOTAL: &str = "swell_quota_redis_errors_total";
pub const QUOTA_LOCAL_DECISIONS_TOTAL: &str = "swell_quota_local_decisions_total";
pub const QUOTA_LEASES_LOST_TOTAL: &str = "swell_quota_leases_lost_total";
pub const PROMPT_TOKENS_TOTAL: &str = "swell_prompt_tokens_total";
pub const GENERATED_TOKENS_TOTAL: &str = "swell_generated_tokens_total";
pub const ENGINE_BATCH_SIZE: &str = "swell_engine_batch_size";
pub const ENGINE_STEP_DURATION: &str = "swell_engine_step_duration_seconds";
pub const ENGINE_PREEMPTIONS_TOTAL: &str = "swell_engine_preemptions_total";
pub const ENGINE_KV_TOKENS_USED: &str = "swell_engine_kv_tokens_used";
pub const ROUTING_DECISIONS_TOTAL: &str = "swell_routing_decisions_total";
pub const ROUTED_STARTS_TOTAL: &str = "swell_routing_routed_starts_total";

/// Histogram buckets for latencies, in seconds (1 ms .. 10 min).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Buckets for batch sizes.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

pub fn describe() {
    describe_counter!(REQUESTS_TOTAL, "Requests by deployment, tenant and final status");
    describe_histogram!(TIME_TO_FIRST_TOKEN, Unit::Seconds, "Time from arrival to the first generated token");
    describe_histogram!(INTER_TOKEN_LATENCY, Unit::Seconds, "Time between consecutive streamed tokens");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "End-to-end request latency");
    describe_histogram!(QUEUE_WAIT, Unit::Seconds, "Time a request waited in the queue before a replica took it");
    describe_gauge!(QUEUE_DEPTH, "Requests waiting in the deployment's queue");
    describe_counter!(ROUTING_DECISIONS_TOTAL, "Jobs the gateway routed to a replica (outcome=routed) or left to any replica (outcome=unrouted)");
    describe_counter!(ROUTED_STARTS_TOTAL, "Routed jobs that started on the replica they were promised to (outcome=kept) or on another (outcome=moved)");
    describe_gauge!(REPLICAS, "Replicas by state (starting, ready, draining)");
    describe_gauge!(DESIRED_REPLICAS, "Replicas the autoscaler wants");
    describe_counter!(SCALE_EVENTS_TOTAL, "Scale events by direction and reason");
    describe_counter!(AUTOSCALER_DECISIONS_TOTAL, "Autoscaler decisions by direction and reason (stable ones included)");
    describe_gauge!(AUTOSCALER_RECOMMENDED_REPLICAS, "Replicas each configured load target recommends, by target");
    describe_gauge!(AUTOSCALER_SIGNAL, "Load signals over the metrics window, by signal (queue_delay_seconds in seconds, kv_cache_utilization as a fraction)");
    describe_gauge!(AUTOSCALER_PANIC, "1 while the deployment is in burst (panic) mode, else 0");
    describe_counter!(AUTOSCALER_RULE_FIRINGS_TOTAL, "Decisions in which a custom rule fired, by rule");
    describe_gauge!(AUTOSCALER_PREDICTED_REPLICAS, "The predictive floor (also in preview mode)");
    describe_histogram!(COLD_START, Unit::Seconds, "Time from a replica's creation to ready");
    describe_counter!(REPLICA_RESTARTS_TOTAL, "Replicas that failed and were replaced, by cause");
    describe_counter!(QUOTA_REJECTIONS_TOTAL, "Requests refused by a tenant quota, by limit");
    describe_counter!(QUOTA_REDIS_ERRORS_TOTAL, "Quota store calls that failed, by reason (timeout, redis_error, circuit_open, bad_reply)");
    describe_counter!(QUOTA_LOCAL_DECISIONS_TOTAL, "Admissions of a Redis-backed quota decided on the node, by reason (reserve: from the node's reserve of the quota, fast_path, redis_unavailable)");
    describe_counter!(QUOTA_LEASES_LOST_TOTAL, "In-flight grants whose Redis lease expired before it was renewed");
    describe_counter!(PROMPT_TOKENS_TOTAL, "Prompt tokens of admitted requests");
    describe_counter!(GENERATED_TOKENS_TOTAL, "Tokens generated");
    describe_histogram!(ENGINE_BATCH_SIZE, "Sequences in one engine step");
    describe_histogram!(ENGINE_STEP_DURATION, Unit::Seconds, "Wall time of one engine step, by phase (prefill, decode, mixed)");
    describe_counter!(ENGINE_PREEMPTIONS_TOTAL, "Sequences preempted to free KV cache space");
    describe_gauge!(ENGINE_KV_TOKENS_USED, "KV cache tokens in use, per replica");
}

pub fn request_finished(deployment: &str, tenant: &str, status: &str) {
    counter!(REQUESTS_TOTAL, "deployment" => deployment.to_string(), "tenant" => tenant.to_string(), "status" => status.to_string()).increment(1);
}

pub fn time_to_first_token(deployment: &str, elapsed: Duration) {
    histogram!(TIME_TO_FIRST_TOKEN, "deployment" => deployment.to_string()).record(elapsed.as_secs_f64());
}

pub fn inter_token_latency(deployment: &str, elapsed: Duration) {
    histogram!(INTER_TOKEN_LATENCY, "deployment" => deployment.to_string()).record(elapsed.as_secs_f64());
}

pub fn request_duration(deployment: &str, elapsed: Duration) {
    histogram!(REQUEST_DURATION, "deployment" => deployment.to_string()).record(elapsed.as_secs_f64());
}

pub fn queue_wait(deployment: &str, elapsed: Duration) {
    histogram!(QUEUE_WAIT, "deployment" => deployment.to_string()).record(elapsed.as_secs_f64());
}

pub fn job_routed(deployment: &str, routed: bool) {
    let outcome = if routed { "routed" } else { "unrouted" };
    counter!(ROUTING_DECISIONS_TOTAL, "deployment" => deployment.to_string(), "outcome" => outcome).increment(1);
}

pub fn routed_job_started(deployment: &str, kept: bool) {
    let outcome = if kept { "kept" } else { "moved" };
    counter!(ROUTED_STARTS_TOTAL, "deployment" => deployment.to_string(), "outcome" => outcome).increment(1);
}

pub fn queue_depth(deployment: &str, depth: u64) {
    gauge!(QUEUE_DEPTH, "deployment" => deployment.to_string()).set(depth as f64);
}

pub fn replicas(deployment: &str, state: &'static str, count: u32) {
    gauge!(REPLICAS, "deployment" => deployment.to_string(), "state" => state).set(count as f64);
}

pub fn desired_replicas(deployment: &str, count: u32) {
    gauge!(DESIRED_REPLICAS, "deployment" => deployment.to_string()).set(count as f64);
}

pub fn scale_event(deployment: &str, direction: &'static str, reason: &'static str) {
    counter!(SCALE_EVENTS_TOTAL, "deployment" => deployment.to_string(), "direction" => direction, "reason" => reason).increment(1);
}

/// One autoscaler decision: its counter, each target's recommendation, the signals,
/// burst mode, the rules that fired and the predictive floor.
pub fn autoscaler_decision(deployment: &str, decision: &Decision) {
    counter!(AUTOSCALER_DECISIONS_TOTAL, "deployment" => deployment.to_string(), "direction" => decision.direction.as_str(), "reason" => decision.reason.as_str()).increment(1);
    for recommendation in &decision.recommendations {
        gauge!(AUTOSCALER_RECOMMENDED_REPLICAS, "deployment" => deployment.to_string(), "target" => recommendation.signal.key())
            .set(f64::from(recommendation.replicas));
    }
    for signal in Signal::ALL {
        gauge!(AUTOSCALER_SIGNAL, "deployment" => deployment.to_string(), "signal" => signal.key()).set(decision.signals.get(signal));
    }
    if let Some(panic) = &decision.panic {
        gauge!(AUTOSCALER_PANIC, "deployment" => deployment.to_string()).set(if panic.active { 1.0 } else { 0.0 });
    }
    for rule in &decision.rules_fired {
        counter!(AUTOSCALER_RULE_FIRINGS_TOTAL, "deployment" => deployment.to_string(), "rule" => rule.name.clone()).increment(1);
    }
    if let Some(floor) = decision.predictive.as_ref().and_then(|predictive| predictive.floor) {
        gauge!(AUTOSCALER_PREDICTED_REPLICAS, "deployment" => deployment.to_string()).set(f64::from(floor));
    }
}

pub fn cold_start(deployment: &str, elapsed: Duration) {
    histogram!(COLD_START, "deployment" => deployment.to_string()).record(elapsed.as_secs_f64());
}

pub fn replica_restart(deployment: &str, cause: &'static str) {
    counter!(REPLICA_RESTARTS_TOTAL, "deployment" => deployment.to_string(), "cause" => cause).increment(1);
}

pub fn quota_rejected(tenant: &str, limit: &'static str) {
    counter!(QUOTA_REJECTIONS_TOTAL, "tenant" => tenant.to_string(), "limit" => limit).increment(1);
}

pub fn quota_redis_error(reason: &'static str) {
    counter!(QUOTA_REDIS_ERRORS_TOTAL, "reason" => reason).increment(1);
}

pub fn quota_local_decision(tenant: &str, reason: &'static str) {
    counter!(QUOTA_LOCAL_DECISIONS_TOTAL, "tenant" => tenant.to_string(), "reason" => reason).increment(1);
}

pub fn quota_leases_lost(tenant: &str, count: u64) {
    counter!(QUOTA_LEASES_LOST_TOTAL, "tenant" => tenant.to_string()).increment(count);
}

pub fn tokens(deployment: &str, tenant: &str, prompt: u64, generated: u64) {
    counter!(PROMPT_TOKENS_TOTAL, "deployment" => deployment.to_string(), "tenant" => tenant.to_string()).increment(prompt);
    counter!(GENERATED_TOKENS_TOTAL, "deployment" => deployment.to_string(), "tenant" => tenant.to_string()).increment(generated);
}

/// One engine step; its duration is labelled by phase: `prefill` (prompt tokens only),
/// `decode` (generated tokens only) or `mixed`.
pub fn engine_step(deployment: &str, report: &swell_workers::StepReport) {
    let (batch_size, elapsed, preempted) = (report.batch_size, report.elapsed, report.preempted);
    let phase = match (report.prefill_tokens > 0, report.decode_tokens > 0) {
        (true, true) => "mixed",
        (true, false) => "prefill",
        _ => "decode",
    };
    histogram!(ENGINE_BATCH_SIZE, "deployment" => deployment.to_string()).record(batch_size as f64);
    histogram!(ENGINE_STEP_DURATION, "deployment" => deployment.to_string(), "phase" => phase).record(elapsed.as_secs_f64());
    if preempted > 0 {
        counter!(ENGINE_PREEMPTIONS_TOTAL, "deployment" => deployment.to_string()).increment(preempted as u64);
    }
}

pub fn engine_kv_tokens(deployment: &str, replica: &str, used: u64) {
    gauge!(ENGINE_KV_TOKENS_USED, "deployment" => deployment.to_string(), "replica" => replica.to_string()).set(used as f64);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;
    use swell_autoscaler::{Autoscaler, AutoscalingPolicy, CustomRule, LoadSample, PredictiveMode, ReplicaCounts};

    /// (name, labels, value) of everything recorded.
    type Recorded = Vec<(String, Vec<(String, String)>, DebugValue)>;

    fn recorded(f: impl FnOnce()) -> Recorded {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, f);
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let labels = key.labels().map(|l| (l.key().to_string(), l.value().to_string())).collect();
                (key.name().to_string(), labels, value)
            })
            .collect()
    }

    fn find<'a>(
        metrics: &'a Recorded,
        name: &str,
        label: (&str, &str),
    ) -> Option<&'a DebugValue> {
        metrics
            .iter()
            .find(|(n, labels, _)| n == name && labels.iter().any(|(k, v)| k == label.0 && v == label.1))
            .map(|(_, _, value)| value)
    }

    #[test]
    fn a_decision_is_exported_with_its_reason_recommendations_signals_and_effects() {
        let mut policy = AutoscalingPolicy {
            metrics_window: Duration::from_secs(1),
            scale_up_window: Duration::ZERO,
            max_replicas: 10,
            panic_threshold: Some(2.0),
            ..AutoscalingPolicy::default()
        };
        policy.load_targets.requests_per_second = Some(2.0);
        policy.rules = vec![toml::from_str::<CustomRule>("name = \"deep\"\nsignal = \"queue_depth\"\nabove = 5\nset = 2").unwrap()];
        policy.predictive.mode = PredictiveMode::Preview;
        let mut autoscaler = Autoscaler::new(policy);
        autoscaler.record(LoadSample { queued: 10, running: 14, arrivals: 6, ..LoadSample::default() });
        let decision = autoscaler.decide(Duration::ZERO, ReplicaCounts { ready: 1, starting: 0, draining: 0 });
        assert_eq!(decision.desired, 3);

        let metrics = recorded(|| autoscaler_decision("chat", &decision));
        assert!(matches!(
            find(&metrics, AUTOSCALER_DECISIONS_TOTAL, ("reason", "concurrent_requests")),
            Some(DebugValue::Counter(1))
        ));
        assert!(matches!(
            find(&metrics, AUTOSCALER_DECISIONS_TOTAL, ("direction", "up")),
            Some(DebugValue::Counter(1))
        ));
        let gauge = |name: &str, label: (&str, &str)| match find(&metrics, name, label) {
            Some(DebugValue::Gauge(value)) => value.into_inner(),
            other => panic!("{name} {label:?}: {other:?}"),
        };
        assert_eq!(gauge(AUTOSCALER_RECOMMENDED_REPLICAS, ("target", "concurrent_requests")), 3.0);
        assert_eq!(gauge(AUTOSCALER_RECOMMENDED_REPLICAS, ("target", "requests_per_second")), 3.0);
        assert_eq!(gauge(AUTOSCALER_SIGNAL, ("signal", "queue_depth")), 10.0);
        assert_eq!(gauge(AUTOSCALER_SIGNAL, ("signal", "requests_per_second")), 6.0);
        assert_eq!(gauge(AUTOSCALER_PANIC, ("deployment", "chat")), 1.0);
        assert!(matches!(
            find(&metrics, AUTOSCALER_RULE_FIRINGS_TOTAL, ("rule", "deep")),
            Some(DebugValue::Counter(1))
        ));
        // Preview without history yet: no forecast, no floor gauge.
        assert!(find(&metrics, AUTOSCALER_PREDICTED_REPLICAS, ("deployment", "chat")).is_none());
    }
}
