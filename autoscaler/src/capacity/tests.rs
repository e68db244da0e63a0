use std::time::Duration;

use swell_protocol::PerformanceProfile;

use super::planner::*;
use super::replica::*;
use super::*;
use crate::policy::*;
use crate::signals::LoadSample;
use crate::{Autoscaler, LoadTargets, ReplicaCounts, ScaleReason};

fn performance() -> PerformanceProfile {
    PerformanceProfile {
        step: swell_protocol::StepTimes {
            prefill_tokens_per_second: 10_000.0,
            decode_step_base: Duration::from_millis(10),
            decode_step_per_sequence: Duration::from_millis(1),
            decode_step_per_kv_token: Duration::from_micros(1),
        },
        max_prefill_tokens_per_step: 512,
        model_params_billions: 1.0,
        gpu: "test".into(),
        source: "test".into(),
    }
}

fn capacity(max_batch_size: u32, kv_capacity_tokens: u64) -> ReplicaCapacity {
    ReplicaCapacity {
        max_batch_size,
        kv_capacity_tokens,
        cold_start: Duration::from_secs(10),
        performance: Some(performance()),
    }
}

const SHORT: Workload = Workload {
    prompt_tokens: 100.0,
    output_tokens: 50.0,
};

fn close(actual: f64, expected: f64, tolerance: f64) -> bool {
    (actual - expected).abs() <= tolerance * expected.abs().max(1e-12)
}

#[test]
fn the_inter_token_limit_matches_the_closed_form() {
    // C = 100 + 25 = 125; k = 1 ms + 125 * 1 us = 1.125 ms; P / R = 0.01 s;
    // ITL(u) = (a - b) / (1 - u * (P / R + k * O)) = 9 ms / (1 - u * 0.06625) <= 0.1 s
    // -> u <= 0.91 / 0.06625 = 13.7358 requests per second.
    // At the median (no allowance for the batch's fluctuation):
    let median = SloTargets {
        percentile: 50.0,
        ..SloTargets::default()
    };
    let limits = capacity(256, 1_000_000).limits(SHORT, &median);
    assert_eq!(limits.limited_by, Limit::InterToken);
    let rate = limits.requests_per_second.unwrap();
    assert!(close(rate, 0.91 / 0.06625, 1e-6), "{rate}");
    assert!(close(limits.inter_token_seconds.unwrap(), 0.1, 1e-6));
    assert!(close(limits.output_tokens_per_second.unwrap(), rate * 50.0, 1e-9));
    // B = u * O * ITL = 68.68 decoding; the step then is 10 + 67.68 * 1.125 + 0.125
    // = 86.26 ms, a prompt's own prefill 10 + 86.26 ms:
    // L = u * (0.0963 + 49 * 0.1) = 68.63 requests in the replica.
    assert!(close(limits.concurrent, 68.63, 1e-3), "{}", limits.concurrent);

    // At p99 the step must stay within 100 ms with B + 2.33 sqrt(B) sequences
    // decoding (the batch of a steady load varies like a Poisson count).
    let p99 = capacity(256, 1_000_000).limits(SHORT, &SloTargets::default());
    let rate_p99 = p99.requests_per_second.unwrap();
    assert!(close(rate_p99, 13.357, 1e-3), "{rate_p99}");
    let decoding = rate_p99 * 50.0 * p99.inter_token_seconds.unwrap();
    let step = 0.010 + (decoding + 2.3263 * decoding.sqrt() - 1.0) * 0.001125 + 0.000125;
    assert!(close(step / (1.0 - rate_p99 * 0.01), 0.1, 1e-3), "{step}");
}

fn rate(requests_per_second: f64) -> SloLoad {
    SloLoad {
        requests_per_second,
        burst_prompt_tokens: 0.0,
    }
}

/// The default SLO at full utilization, so counts follow the arithmetic alone.
fn full() -> SloTargets {
    SloTargets {
        utilization: Some(1.0),
        ..SloTargets::default()
    }
}

#[test]
fn slo_mode_counts_replicas_for_the_rate_then_for_the_ttft_quantile() {
    let c = capacity(256, 1_000_000);
    let slo = full();
    // 13.36 requests/s per replica within 100 ms at p99 (above).
    let per_replica = c.limits(SHORT, &slo).requests_per_second.unwrap();
    assert!(close(per_replica, 13.357, 1e-3), "{per_replica}");
    // 100 / 13.36 -> 8; the prefill queue is no concern at 2 s.
    let sizing = c.replicas_for(rate(100.0), SHORT, &slo).unwrap();
    assert_eq!(sizing.replicas, 8);
    assert_eq!(sizing.limited_by, Limit::InterToken);
    assert!(sizing.ttft_attainable);
    assert!(sizing.ttft_seconds < 2.0, "{sizing:?}");
    assert_eq!(c.replicas_for(rate(0.0), SHORT, &slo).unwrap().replicas, 0);
    assert_eq!(c.replicas_for(rate(f64::NAN), SHORT, &slo).unwrap().replicas, 0);
    // The default utilization for a 10 s cold start is 90%: 100 / (0.9 * 13.36) -> 9.
    let planned = SloTargets::default();
    assert_eq!(planned.utilization_for(c.cold_start), 0.9);
    assert_eq!(c.replicas_for(rate(100.0), SHORT, &planned).unwrap().replicas, 9);

    // With 8 replicas a prompt's own prefill takes 10 ms + one 46 ms step. A 40 ms
    // target (a lone prompt on an idle replica needs 21 ms) takes more replicas, for
    // shorter steps and less waiting; fewer for a looser percentile.
    let tight = SloTargets {
        ttft_seconds: 0.04,
        ..slo
    };
    let sizing = c.replicas_for(rate(100.0), SHORT, &tight).unwrap();
    assert_eq!(sizing.limited_by, Limit::TimeToFirstToken);
    assert!(sizing.replicas > 8, "{sizing:?}");
    assert!(sizing.ttft_seconds <= 0.04, "{sizing:?}");
    let fewer = sizing.replicas - 1;
    let model = StepModel::new(c.performance.as_ref().unwrap(), SHORT);
    assert!(model.ttft_quantile(100.0, fewer, 0.99) > 0.04, "the fewest that meet it");

    // Where waiting dominates (slow prefill: 0.2 s per prompt, 4.5 prompts/s per
    // replica), the percentile decides: p99 needs more replicas than p50.
    let mut slow = c.clone();
    slow.performance.as_mut().unwrap().step.prefill_tokens_per_second = 500.0;
    let loose = SloTargets {
        ttft_seconds: 0.5,
        inter_token_seconds: 1.0,
        ..slo
    };
    let p99 = slow.replicas_for(rate(10.0), SHORT, &loose).unwrap();
    let p50 = slow
        .replicas_for(rate(10.0), SHORT, &SloTargets { percentile: 50.0, ..loose })
        .unwrap();
    assert_eq!(p99.limited_by, Limit::TimeToFirstToken);
    assert!(p50.replicas < p99.replicas, "{p50:?} {p99:?}");

    // A lone 100-token prompt at 500 tokens/s takes 0.2 s: a 0.1 s TTFT is out of reach
    // of any replica count, and only the inter-token target is left.
    let mut slow = c.clone();
    slow.performance.as_mut().unwrap().step.prefill_tokens_per_second = 500.0;
    let out_of_reach = SloTargets {
        ttft_seconds: 0.1,
        ..slo
    };
    let sizing = slow
        .replicas_for(
            SloLoad {
                requests_per_second: 10.0,
                burst_prompt_tokens: 1e6,
            },
            SHORT,
            &out_of_reach,
        )
        .unwrap();
    assert!(!sizing.ttft_attainable);
    assert_eq!(sizing.limited_by, Limit::InterToken);

    // A burst: 400 prompts of 100 tokens within one TTFT (2 s) need 40,000 tokens of
    // prefill in 2 s; a replica at 5 requests/s prefills 512 tokens per (51.2 ms + a
    // ~15 ms decode step), about 7,700 tokens/s, so 3 replicas where the rate needs 1.
    let sizing = c
        .replicas_for(
            SloLoad {
                requests_per_second: 5.0,
                burst_prompt_tokens: 40_000.0,
            },
            SHORT,
            &slo,
        )
        .unwrap();
    assert_eq!(sizing.limited_by, Limit::PrefillBurst);
    assert_eq!(sizing.replicas, 3, "{sizing:?}");
    // Without a performance profile there is nothing to size with.
    let bare = ReplicaCapacity {
        performance: None,
        ..c
    };
    assert_eq!(bare.replicas_for(rate(10.0), SHORT, &slo), None);
}

#[test]
fn erlang_c_matches_known_values() {
    // One server: the probability of waiting is the utilisation.
    assert!(close(erlang_c(1, 0.3), 0.3, 1e-12));
    // Two servers, offered load 1: C = 1/3.
    assert!(close(erlang_c(2, 1.0), 1.0 / 3.0, 1e-12));
    // Ten servers at offered load 8: C = 0.4092 (standard tables).
    assert!((erlang_c(10, 8.0) - 0.4092).abs() < 1e-3, "{}", erlang_c(10, 8.0));
    // Many servers, light load: almost never waits.
    assert!(erlang_c(1000, 100.0) < 1e-12);
}

#[test]
fn batch_and_kv_cache_cap_the_concurrency() {
    let slo = SloTargets::default();
    // The p99 of the requests in a replica, L + 2.33 sqrt(L), must fit.
    let p99 = |l: f64| l + 2.326348 * l.sqrt();
    let by_batch = capacity(32, 1_000_000).limits(SHORT, &slo);
    assert_eq!(by_batch.limited_by, Limit::BatchSize);
    assert!(close(p99(by_batch.concurrent), 32.0, 1e-5), "{by_batch:?}");
    // 6000 tokens / (100 + 50) per sequence = 40 sequences.
    let by_kv = capacity(256, 6_000).limits(SHORT, &slo);
    assert_eq!(by_kv.limited_by, Limit::KvCache);
    assert!(close(p99(by_kv.concurrent), 40.0, 1e-5), "{by_kv:?}");
    assert!(by_kv.requests_per_second.unwrap() < by_batch.requests_per_second.unwrap() * 1.5);
    assert!(by_kv.requests_per_second.unwrap() < 13.7);
}

#[test]
fn without_a_performance_profile_only_batch_and_kv_are_known() {
    let bare = ReplicaCapacity {
        performance: None,
        ..capacity(64, 3_000)
    };
    let limits = bare.limits(SHORT, &SloTargets::default());
    assert_eq!(limits.concurrent, 20.0); // 3000 / 150
    assert_eq!(limits.limited_by, Limit::KvCache);
    assert_eq!(limits.requests_per_second, None);
    let limits = bare.limits(
        Workload {
            prompt_tokens: 10.0,
            output_tokens: 10.0,
        },
        &SloTargets::default(),
    );
    assert_eq!((limits.concurrent, limits.limited_by), (64.0, Limit::BatchSize));
}

#[test]
fn nonsense_lengths_do_not_panic() {
    let c = capacity(8, 1_000);
    for workload in [
        Workload { prompt_tokens: 0.0, output_tokens: 0.0 },
        Workload { prompt_tokens: f64::NAN, output_tokens: f64::INFINITY },
        Workload { prompt_tokens: 1e12, output_tokens: 1e12 },
    ] {
        let limits = c.limits(workload, &SloTargets::default());
        assert!(limits.concurrent >= 1.0, "{limits:?}");
        assert!(limits.requests_per_second.unwrap() >= 0.0, "{limits:?}");
    }
}

#[test]
fn the_workload_estimate_starts_from_the_prior_and_follows_the_traffic() {
    let mut estimate = WorkloadEstimate::default();
    assert_eq!(
        estimate.workload(),
        Workload {
            prompt_tokens: PRIOR_PROMPT_TOKENS,
            output_tokens: PRIOR_OUTPUT_TOKENS
        }
    );
    // 10 requests/s of 100 prompt tokens, 20 output tokens each, for 10 minutes.
    for t in 0..600 {
        estimate.record(&LoadSample {
            at: Duration::from_secs(t),
            arrivals: 10,
            prompt_tokens: 1_000,
            generated_tokens: 200,
            ..LoadSample::default()
        });
    }
    let workload = estimate.workload();
    // The 4 prior requests still weigh against a memory of 1000.
    assert!(close(workload.prompt_tokens, 100.0, 0.05), "{workload:?}");
    assert!(close(workload.output_tokens, 20.0, 0.05), "{workload:?}");
    // An idle hour forgets nothing (the memory counts requests, not time).
    for t in 600..4200 {
        estimate.record(&LoadSample {
            at: Duration::from_secs(t),
            ..LoadSample::default()
        });
    }
    assert_eq!(estimate.workload(), workload);
    // Then 6,000 longer requests (six memories): the mean has moved.
    for t in 4200..4800 {
        estimate.record(&LoadSample {
            at: Duration::from_secs(t),
            arrivals: 10,
            prompt_tokens: 5_000,
            generated_tokens: 1_000,
            ..LoadSample::default()
        });
    }
    let workload = estimate.workload();
    assert!(close(workload.prompt_tokens, 500.0, 0.01), "{workload:?}");
    assert!(close(workload.output_tokens, 100.0, 0.01), "{workload:?}");
    // A backlog: 100 arrive, 90 wait in the queue. Counting per arrival would read the
    // output low; only the 10 that finished count.
    let mut backlog = WorkloadEstimate::default();
    for t in 0..100 {
        backlog.record(&LoadSample {
            at: Duration::from_secs(t),
            arrivals: 100,
            queued: 90 * (t + 1),
            prompt_tokens: 10_000,
            generated_tokens: 1_000,
            ..LoadSample::default()
        });
    }
    assert!(close(backlog.workload().output_tokens, 100.0, 0.05), "{:?}", backlog.workload());
}

#[test]
fn slo_parses_from_toml_and_json_and_validates() {
    use crate::AutoscalingPolicy;
    let policy: AutoscalingPolicy =
        toml::from_str("slo = { ttft_seconds = 0.5, inter_token_seconds = 0.05 }").unwrap();
    assert_eq!(
        policy.slo,
        SloMode::On(SloTargets {
            ttft_seconds: 0.5,
            inter_token_seconds: 0.05,
            percentile: 99.0,
            utilization: None,
        })
    );
    let policy: AutoscalingPolicy = toml::from_str("slo = false").unwrap();
    assert_eq!(policy.slo, SloMode::Off);
    assert_eq!(policy.slo.targets(true), None);
    // Left out: on with the default targets for `auto` load targets, off for written ones.
    let policy: AutoscalingPolicy = toml::from_str("").unwrap();
    assert_eq!(policy.slo, SloMode::Auto);
    assert_eq!(policy.slo.targets(policy.load_targets.auto), Some(SloTargets::default()));
    let policy: AutoscalingPolicy =
        toml::from_str("[load_targets]\nconcurrent_requests = 4").unwrap();
    assert_eq!(policy.slo.targets(policy.load_targets.auto), None);
    let policy: AutoscalingPolicy = serde_json::from_str(r#"{"slo": null}"#).unwrap();
    assert_eq!(policy.slo, SloMode::Off);
    let policy: AutoscalingPolicy = serde_json::from_str(r#"{"slo": "auto"}"#).unwrap();
    assert_eq!(policy.slo, SloMode::Auto);
    let policy: AutoscalingPolicy =
        serde_json::from_str(r#"{"slo": {"percentile": 90}}"#).unwrap();
    assert_eq!(policy.slo.targets(false).unwrap().percentile, 90.0);

    let error = toml::from_str::<AutoscalingPolicy>("slo = true").unwrap_err().to_string();
    assert!(error.contains("or false for off"), "{error}");
    let error = toml::from_str::<AutoscalingPolicy>("slo = { ttft = 2 }")
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown field `ttft`"), "{error}");

    let mut policy = AutoscalingPolicy::default();
    policy.slo = SloMode::On(SloTargets {
        ttft_seconds: 0.0,
        ..SloTargets::default()
    });
    assert_eq!(
        policy.validate().unwrap_err(),
        "autoscaling.slo.ttft_seconds (0) must be a finite number greater than 0"
    );
    policy.slo = SloMode::On(SloTargets {
        percentile: 100.0,
        ..SloTargets::default()
    });
    assert!(policy.validate().unwrap_err().starts_with("autoscaling.slo.percentile (100)"));
    // Round trip.
    let policy = AutoscalingPolicy::default();
    let json = serde_json::to_value(&policy).unwrap();
    assert_eq!(json["slo"], "auto");
    let back: AutoscalingPolicy = serde_json::from_value(json).unwrap();
    assert_eq!(back, policy);
}

#[test]
fn load_targets_are_auto_unless_a_table_is_written() {
    use crate::AutoscalingPolicy;
    let policy: AutoscalingPolicy = toml::from_str("").unwrap();
    assert!(policy.load_targets.auto);
    let policy: AutoscalingPolicy = toml::from_str("load_targets = \"auto\"").unwrap();
    assert_eq!(policy.load_targets, LoadTargets::auto());
    let policy: AutoscalingPolicy =
        toml::from_str("[load_targets]\nrequests_per_second = 5").unwrap();
    assert!(!policy.load_targets.auto);
    assert_eq!(policy.load_targets.concurrent_requests, Some(8.0));
    assert_eq!(policy.load_targets.requests_per_second, Some(5.0));
    let error = toml::from_str::<AutoscalingPolicy>("load_targets = \"automatic\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("\"auto\" or a table"), "{error}");
    let error = toml::from_str::<AutoscalingPolicy>("[load_targets]\nconcurrent = 3")
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown field `concurrent`"), "{error}");
    // Serialized as "auto", and back.
    let json = serde_json::to_value(AutoscalingPolicy::default()).unwrap();
    assert_eq!(json["load_targets"], "auto");
    let back: AutoscalingPolicy = serde_json::from_value(json).unwrap();
    assert!(back.load_targets.auto);
    let explicit = AutoscalingPolicy {
        load_targets: LoadTargets::default(),
        ..AutoscalingPolicy::default()
    };
    let json = serde_json::to_value(&explicit).unwrap();
    assert_eq!(json["load_targets"]["concurrent_requests"], 8.0);
    assert_eq!(serde_json::from_value::<AutoscalingPolicy>(json).unwrap(), explicit);
}

fn sample(at: u64, running: u64, arrivals: u64) -> LoadSample {
    LoadSample {
        at: Duration::from_secs(at),
        running,
        arrivals,
        prompt_tokens: arrivals * 100,
        generated_tokens: arrivals * 50,
        ..LoadSample::default()
    }
}

fn instant_policy() -> AutoscalingPolicy {
    AutoscalingPolicy {
        max_replicas: 100,
        metrics_window: Duration::from_secs(10),
        slo: SloMode::On(full()),
        ..AutoscalingPolicy::default()
    }
}

fn ready(replicas: u32) -> ReplicaCounts {
    ReplicaCounts {
        ready: replicas,
        starting: 0,
        draining: 0,
    }
}

/// An autoscaler that has seen 10 minutes of 100-token prompts, 50-token outputs.
fn warmed(policy: AutoscalingPolicy, capacity: Option<ReplicaCapacity>) -> Autoscaler {
    let mut autoscaler = Autoscaler::new(policy);
    if let Some(capacity) = capacity {
        autoscaler = autoscaler.with_capacity(capacity);
    }
    for t in 0..600 {
        autoscaler.record(sample(t, 0, 100));
    }
    autoscaler
}

#[test]
fn the_auto_concurrency_target_follows_the_capacity() {
    // 51.9 requests in a replica meet the inter-token target at p99 (above, for the
    // lengths seen: 104 and 51 with the prior's 4 requests); auto targets half of
    // that. 1 request/s arrives (SLO mode: 1 replica), 100 are in flight.
    let mut autoscaler = warmed(instant_policy(), Some(capacity(256, 1_000_000)));
    for t in 600..=620 {
        autoscaler.record(sample(t, 100, 1));
    }
    let decision = autoscaler.decide(Duration::from_secs(620), ready(1));
    // 100 / 25.94 -> 4.
    assert_eq!(decision.desired, 4, "{}", decision.detail);
    assert_eq!(decision.reason, ScaleReason::ConcurrentRequests);
    assert!(
        decision.detail.contains("target 25.94 per replica (auto: 50% of 51.87 concurrent"),
        "{}",
        decision.detail
    );
    assert!(decision.detail.contains("limited by inter_token"), "{}", decision.detail);

    // Without a capacity model the fixed default of 8 applies: 100 / 8 -> 13.
    let mut bare = warmed(instant_policy(), None);
    for t in 600..=620 {
        bare.record(sample(t, 100, 1));
    }
    let decision = bare.decide(Duration::from_secs(620), ready(1));
    assert!(
        decision.detail.starts_with("concurrent_requests 100 avg over 10s / target 8 per replica -> 13"),
        "{}",
        decision.detail
    );
    assert!(!decision.detail.contains("auto"), "{}", decision.detail);

    // A written table is used as written, capacity or not: 100 / 20 -> 5.
    let policy = AutoscalingPolicy {
        load_targets: LoadTargets {
            concurrent_requests: Some(20.0),
            ..LoadTargets::default()
        },
        slo: SloMode::Off,
        ..instant_policy()
    };
    let mut explicit = warmed(policy, Some(capacity(256, 1_000_000)));
    for t in 600..=620 {
        explicit.record(sample(t, 100, 1));
    }
    assert_eq!(explicit.decide(Duration::from_secs(620), ready(1)).desired, 5);
}

#[test]
fn slo_mode_sizes_for_the_arrival_rate_and_wins_when_higher() {
    let mut autoscaler = warmed(instant_policy(), Some(capacity(256, 1_000_000)));
    // 50 requests/s arrive; few are in flight yet (the concurrency target says 1).
    for t in 600..611 {
        autoscaler.record(sample(t, 10, 50));
    }
    let decision = autoscaler.decide(Duration::from_secs(610), ready(1));
    // 50 / 13.01 per replica -> 4.
    assert_eq!(decision.desired, 4, "{}", decision.detail);
    assert_eq!(decision.reason, ScaleReason::Slo);
    assert!(
        decision.detail.starts_with("slo 50 requests per second over 10s (70 above noise in the busiest 2s) at prompt 104, output 51: 13.01 per replica within inter-token 100ms, TTFT p99 2s modelled 0.07s, limited by inter_token -> 4"),
        "{}",
        decision.detail
    );
    // A tighter inter-token target needs more replicas (about 11.2 per replica at p99).
    let policy = AutoscalingPolicy {
        slo: SloMode::On(SloTargets {
            inter_token_seconds: 0.05,
            ..full()
        }),
        ..instant_policy()
    };
    let mut tight = warmed(policy, Some(capacity(256, 1_000_000)));
    for t in 600..611 {
        tight.record(sample(t, 10, 50));
    }
    let decision = tight.decide(Duration::from_secs(610), ready(1));
    assert_eq!(decision.desired, 5, "{}", decision.detail);
    // The default utilization plans 90% of each replica (10 s cold start): 50 / 11.7.
    let policy = AutoscalingPolicy {
        slo: SloMode::On(SloTargets::default()),
        ..instant_policy()
    };
    let mut planned = warmed(policy, Some(capacity(256, 1_000_000)));
    for t in 600..611 {
        planned.record(sample(t, 10, 50));
    }
    assert_eq!(planned.decide(Duration::from_secs(610), ready(1)).desired, 5);
    // SLO mode off: only the concurrency target (10 / 26 -> 1).
    let off = AutoscalingPolicy {
        slo: SloMode::Off,
        ..instant_policy()
    };
    let mut off = warmed(off, Some(capacity(256, 1_000_000)));
    for t in 600..611 {
        off.record(sample(t, 10, 50));
    }
    let decision = off.decide(Duration::from_secs(610), ready(1));
    assert_eq!(decision.desired, 1, "{}", decision.detail);
    // Without a performance profile SLO mode has nothing to say.
    let bare = ReplicaCapacity {
        performance: None,
        ..capacity(256, 1_000_000)
    };
    let mut bare = warmed(instant_policy(), Some(bare));
    for t in 600..611 {
        bare.record(sample(t, 10, 50));
    }
    let decision = bare.decide(Duration::from_secs(610), ready(1));
    assert_eq!(decision.reason, ScaleReason::Stable, "{}", decision.detail);
    assert!(decision.detail.contains("auto: 50% of 256 sequences"), "{}", decision.detail);
}
