//! Tests of prefix caching and routing in the simulator: prefill of cached prefixes, the
//! promise bound, and every routing policy on a slice of the Mooncake trace.

use std::time::Duration;

use swell_router::RoutingPolicy;
use swell_workers::sim::builtin;

use super::engine::{RunResult, Simulator};
use super::policies::Static;
use super::routing::{RoutingSettings, DEFAULT_BLOCK_TOKENS};
use super::workload::SimRequest;

fn routed(policy: RoutingPolicy) -> RoutingSettings {
    RoutingSettings {
        policy,
        ..RoutingSettings::default()
    }
}

fn run_static(requests: &[SimRequest], replicas: u32, routing: RoutingSettings) -> RunResult {
    let profile = builtin("llama-3.1-8b-h100").unwrap();
    let mut policy = Static { replicas };
    Simulator::new(requests, &profile, &mut policy)
        .routing(routing)
        .run(None)
}

#[test]
fn a_cached_prefix_is_not_prefilled_again() {
    // 8,192 tokens = 512 blocks; the second request shares the first 256 blocks, the
    // third all 512, long after the first finished (its blocks stay cached).
    let hashes: Vec<u64> = (0..512).collect();
    let mut half: Vec<u64> = (0..256).collect();
    half.extend(1_000..1_256);
    let request = |arrival: f64, block_hashes: Vec<u64>| SimRequest {
        arrival,
        prompt_tokens: 8_192,
        output_tokens: 2,
        block_hashes,
        session: None,
    };
    let requests = [
        request(0.0, hashes.clone()),
        request(10.0, half),
        request(20.0, hashes),
    ];
    let result = run_static(&requests, 1, RoutingSettings::default());
    let cached: Vec<u32> = result.outcomes.iter().map(|o| o.cached_tokens).collect();
    assert_eq!(
        cached,
        vec![0, 256 * 16, 8_191],
        "at least one token is prefilled"
    );
    let ttft: Vec<f64> = result.outcomes.iter().map(|o| o.ttft()).collect();
    // 8,192 tokens at 30k tokens/s take about 0.27 s; half of them about 0.14 s.
    assert!(ttft[0] > 0.27, "{ttft:?}");
    assert!((0.13..0.16).contains(&ttft[1]), "{ttft:?}");
    assert!(ttft[2] < 0.02, "{ttft:?}");
    assert!(result.finished_count.iter().all(|&c| c == 1));
}

#[test]
fn a_promised_job_goes_to_another_replica_once_its_bound_runs_out() {
    // One session, 60 prompts of 30,000 tokens at once: session-affine routing promises
    // them all to one replica. With the default 2 s bound the other replica takes the
    // ones still waiting after 2 s; with a bound longer than the run, none.
    let requests: Vec<SimRequest> = (0..60)
        .map(|i| SimRequest {
            arrival: 0.0,
            prompt_tokens: 30_000,
            output_tokens: 2,
            block_hashes: (i * 10_000..i * 10_000 + 1_875).collect(),
            session: Some(7),
        })
        .collect();
    let last_first_token = |bound: Duration| {
        let routing = RoutingSettings {
            promise_bound: bound,
            ..routed(RoutingPolicy::SessionAffine)
        };
        let result = run_static(&requests, 2, routing);
        assert!(result.finished_count.iter().all(|&c| c == 1));
        result
            .outcomes
            .iter()
            .map(|o| o.first_token)
            .fold(0.0, f64::max)
    };
    let bounded = last_first_token(Duration::from_secs(2));
    let unbounded = last_first_token(Duration::from_secs(3_600));
    // 1.8M prompt tokens at 30k tokens/s: 60 s on one replica, about half on two.
    assert!(unbounded > 59.0, "{unbounded}");
    assert!(bounded < 0.6 * unbounded, "{bounded} against {unbounded}");
}

/// The first `seconds` of the Mooncake trace, blocks of 16 tokens.
fn mooncake_slice(seconds: f64) -> Vec<SimRequest> {
    let path = super::trace::traces_dir().join("mooncake/synthetic_trace.jsonl");
    super::workload::mooncake(&path, DEFAULT_BLOCK_TOKENS, 1.0, Some(seconds))
        .expect("the Mooncake trace is in loadtests/traces")
}

#[test]
fn cache_aware_routing_hits_more_than_any_replica_and_every_request_finishes_once() {
    let requests = mooncake_slice(200.0);
    assert!(requests.len() > 700, "{}", requests.len());
    let hit_rate = |result: &RunResult| {
        let cached: u64 = result
            .outcomes
            .iter()
            .map(|o| u64::from(o.cached_tokens))
            .sum();
        let prompt: u64 = result
            .outcomes
            .iter()
            .map(|o| u64::from(o.prompt_tokens))
            .sum();
        cached as f64 / prompt as f64
    };
    let mut rates = Vec::new();
    for policy in RoutingPolicy::ALL {
        let result = run_static(&requests, 4, routed(policy));
        assert_eq!(result.routing, policy);
        assert!(
            result.finished_count.iter().all(|&c| c == 1),
            "{policy}: every request finishes exactly once"
        );
        for outcome in &result.outcomes {
            assert!(outcome.cached_tokens < outcome.prompt_tokens, "{policy}");
            assert!(outcome.first_token >= outcome.start && outcome.finish >= outcome.first_token);
        }
        rates.push((policy, hit_rate(&result)));
    }
    let rate = |policy| rates.iter().find(|(p, _)| *p == policy).unwrap().1;
    assert!(
        rate(RoutingPolicy::CacheAware) > 2.0 * rate(RoutingPolicy::AnyReplica),
        "{rates:?}"
    );
    assert!(
        rate(RoutingPolicy::SessionAffine) > rate(RoutingPolicy::AnyReplica),
        "{rates:?}"
    );
}
