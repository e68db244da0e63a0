use std::time::Duration;

use swell_workers::sim::{builtin, SimProfile};

use super::engine::Simulator;
use super::policies::{ScalingPolicy, Static, Swell};
use super::workload::{synthetic, Pattern, SimRequest};
use super::*;

fn profile() -> SimProfile {
    // Cold start raised to 5 s so its effects show at a 1 s tick.
    SimProfile {
        cold_start: Duration::from_secs(5),
        ..builtin("smollm2-135m-cpu").unwrap()
    }
}

fn comparison(policies: &[&str]) -> Comparison {
    Comparison {
        profile: profile(),
        ttft_target: 2.0,
        itl_target: 0.1,
        swell_policy: AutoscalingPolicy {
            scale_down_window: Duration::from_secs(60),
            scale_to_zero_window: Duration::from_secs(120),
            ..Swell::default_policy()
        },
        policies: policies.iter().map(|s| s.to_string()).collect(),
        horizon: Some(900.0),
        warm_start: false,
        routing: RoutingSettings::default(),
    }
}

/// 0 for 100 s, 4 req/s for 200 s, 0 for 600 s.
fn step_load() -> Vec<SimRequest> {
    (0..800)
        .map(|i| SimRequest {
            arrival: 100.0 + f64::from(i) * 0.25,
            prompt_tokens: 100,
            output_tokens: 50,
            ..SimRequest::default()
        })
        .collect()
}

fn run(requests: &[SimRequest], policy: &mut dyn ScalingPolicy, horizon: f64) -> engine::RunResult {
    Simulator::new(requests, &profile(), policy).run(Some(horizon))
}

#[test]
fn swell_follows_a_step_up_and_back_to_zero() {
    let requests = step_load();
    let mut swell = Swell::new("swell", comparison(&[]).swell_policy);
    let result = run(&requests, &mut swell, 900.0);
    let at = |t: f64| {
        let p = result.timeline.iter().find(|p| p.t >= t).unwrap();
        p.ready + p.starting
    };
    assert_eq!(at(50.0), 0, "nothing before the load");
    assert!(at(250.0) >= 1, "replicas during the load");
    assert_eq!(at(899.0), 0, "back to zero after the idle window");
    assert!(result.cold_starts >= 1);
    assert!(result.finished_count.iter().all(|&c| c == 1));
}

#[test]
fn static_never_scales_and_oracle_is_cheapest() {
    let requests = step_load();
    let result = compare(&requests, &comparison(POLICY_NAMES));
    let static_run = result
        .runs
        .iter()
        .find(|r| r.policy == "static-peak")
        .unwrap();
    assert_eq!(static_run.cold_starts, 0);
    let first = static_run.timeline[0].ready;
    assert!(
        first >= 1
            && static_run
                .timeline
                .iter()
                .all(|p| p.ready == first && p.starting == 0)
    );
    for run in &result.runs {
        assert!(
            run.finished_count.iter().all(|&c| c == 1),
            "{}: every request finishes once",
            run.policy
        );
        assert!(
            result.oracle_replica_seconds <= run.replica_seconds + 1e-6,
            "oracle {} > {} {}",
            result.oracle_replica_seconds,
            run.policy,
            run.replica_seconds
        );
    }
}

#[test]
fn a_request_at_zero_waits_for_the_cold_start() {
    let requests = [SimRequest {
        arrival: 10.0,
        prompt_tokens: 10,
        output_tokens: 5,
        ..SimRequest::default()
    }];
    let mut swell = Swell::new("swell", Swell::default_policy());
    let result = run(&requests, &mut swell, 20.0);
    let outcome = result.outcomes[0];
    assert!(outcome.ttft() >= 5.0, "ttft {}", outcome.ttft());
    assert!(outcome.ttft() < 5.5, "ttft {}", outcome.ttft());
    assert_eq!(result.cold_starts, 1);
    assert_eq!(result.finished_count, vec![1]);
    assert!(outcome.at_zero);
}

#[test]
fn throughput_scales_linearly_with_replicas() {
    // A saturating load: far more requests than one replica can serve in 60 s.
    let requests: Vec<SimRequest> = (0..20_000)
        .map(|i| SimRequest {
            arrival: f64::from(i) * 0.001,
            prompt_tokens: 50,
            output_tokens: 20,
            ..SimRequest::default()
        })
        .collect();
    let tokens_by = |n: u32| {
        let mut policy = Static { replicas: n };
        let result =
            Simulator::new(&requests[..(2_000 * n as usize)], &profile(), &mut policy).run(None);
        let finish = result.outcomes.iter().map(|o| o.finish).fold(0.0, f64::max);
        result.generated_tokens as f64 / finish
    };
    let one = tokens_by(1);
    for n in [2, 8] {
        let efficiency = tokens_by(n) / (f64::from(n) * one);
        assert!(
            (0.95..=1.05).contains(&efficiency),
            "{n} replicas: efficiency {efficiency}"
        );
    }
}

#[test]
fn oracle_plan_bridges_short_gaps_and_leads_by_the_cold_start() {
    // One replica needed in seconds 10..20 and 22..30, cold start 5 s: one stretch.
    let mut demand = vec![0.0; 40];
    for (t, d) in demand.iter_mut().enumerate() {
        if (10..20).contains(&t) || (22..30).contains(&t) {
            *d = 0.5;
        }
    }
    let plan = oracle::plan(&demand, 5.0, 1);
    assert_eq!(plan.schedule[4], 0);
    assert_eq!(plan.schedule[5], 1);
    assert_eq!(plan.schedule[21], 1);
    assert_eq!(plan.schedule[30], 0);
    assert!(
        (plan.replica_seconds - 25.0).abs() < 1e-9,
        "{}",
        plan.replica_seconds
    );
}

#[test]
fn synthetic_patterns_follow_their_rate() {
    let requests = synthetic(Pattern::OnOff, 2400.0, 5.0, 10, 10, 3);
    let on = requests.iter().filter(|r| r.arrival < 600.0).count() as f64 / 600.0;
    let off = requests
        .iter()
        .filter(|r| (600.0..1200.0).contains(&r.arrival))
        .count();
    assert!((on - 5.0).abs() < 0.5, "{on}");
    assert_eq!(off, 0);
}

#[test]
fn servegen_windows_keep_their_rate_and_their_fitted_burstiness() {
    // Two 600 s windows: Gamma with shape 0.25 (gaps with coefficient of variation 2),
    // then Weibull with shape 1 (exponential, CV 1). Scale parameters only set units.
    let path = std::env::temp_dir().join(format!("swell-servegen-{}.csv", std::process::id()));
    std::fs::write(&path, "0,20,2,Gamma,0.25,7\n600,5,1,Weibull,1,3\n").unwrap();
    let requests = super::workload::servegen(&path, &[(10, 20)], 1.0, None, 5).unwrap();
    std::fs::remove_file(&path).ok();
    let window = |from: f64, to: f64| -> Vec<f64> {
        requests.iter().map(|r| r.arrival).filter(|t| (from..to).contains(t)).collect()
    };
    for (from, rate, cv) in [(0.0, 20.0, 2.0), (600.0, 5.0, 1.0)] {
        let times = window(from, from + 600.0);
        let measured = times.len() as f64 / 600.0;
        assert!((measured / rate - 1.0).abs() < 0.1, "window at {from}: {measured} req/s");
        let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        assert!((sd / mean / cv - 1.0).abs() < 0.2, "window at {from}: cv {}", sd / mean);
    }
    assert!(requests.iter().all(|r| (r.prompt_tokens, r.output_tokens) == (10, 20)));
}

fn sample(at: f64, concurrency: u64) -> swell_autoscaler::LoadSample {
    swell_autoscaler::LoadSample {
        at: Duration::from_secs_f64(at),
        running: concurrency,
        arrivals: u64::from(concurrency > 0),
        ..Default::default()
    }
}

fn counts(ready: u32) -> swell_autoscaler::ReplicaCounts {
    swell_autoscaler::ReplicaCounts {
        ready,
        starting: 0,
        draining: 0,
    }
}

#[test]
fn ray_serve_waits_its_upscale_delay() {
    let mut ray = policies::RayServe::new();
    // 20 ongoing requests on 1 replica: 10 wanted (target 2), only after 30 s.
    let mut first_up = None;
    for t in 0..60 {
        let desired = ray.decide(Duration::from_secs(t), &sample(t as f64, 20), counts(1));
        if desired > 1 && first_up.is_none() {
            first_up = Some(t);
        }
    }
    assert_eq!(first_up, Some(30));
    assert_eq!(ray.per_replica_cap(), Some(5));
}

#[test]
fn hpa_never_goes_below_one_and_syncs_every_15s() {
    let mut hpa = policies::Hpa::new(100);
    let mut changes = 0;
    let mut last = 1;
    for t in 0..120 {
        let d = hpa.decide(
            Duration::from_secs(t),
            &sample(t as f64, 1000),
            counts(last),
        );
        if d != last {
            changes += 1;
            assert_eq!(t % 15, 0, "changes only at a sync");
            hpa.scaled(Duration::from_secs(t), last, d);
            last = d;
        }
    }
    assert!(changes >= 1 && last > 1);
    for t in 120..1200 {
        last = hpa.decide(Duration::from_secs(t), &sample(t as f64, 0), counts(last));
    }
    assert_eq!(last, 1);
}

#[test]
fn knative_scales_to_zero_after_stable_window_and_grace() {
    let mut kpa = policies::Kpa::new(100);
    let mut zero_at = None;
    for t in 0..200 {
        let load = if t < 10 { 50 } else { 0 };
        let d = kpa.decide(Duration::from_secs(t), &sample(t as f64, load), counts(1));
        if d == 0 && zero_at.is_none() {
            zero_at = Some(t);
        }
    }
    // The last load at t = 9 leaves the 60 s stable window at t = 69; then 30 s grace.
    let zero_at = zero_at.expect("reaches zero");
    assert!((98..=102).contains(&zero_at), "zero at {zero_at}");
}

/// Swell with a recorder: the samples the simulator hands the policy.
struct Recording {
    inner: Swell,
    samples: Vec<(swell_autoscaler::LoadSample, swell_autoscaler::ReplicaCounts)>,
}

impl ScalingPolicy for Recording {
    fn name(&self) -> String {
        "recording".into()
    }
    fn decide(
        &mut self,
        now: Duration,
        sample: &swell_autoscaler::LoadSample,
        counts: swell_autoscaler::ReplicaCounts,
    ) -> u32 {
        self.samples.push((*sample, counts));
        self.inner.decide(now, sample, counts)
    }
    fn scaled(&mut self, now: Duration, from: u32, to: u32) {
        self.inner.scaled(now, from, to);
    }
}

#[test]
fn samples_carry_queue_delay_and_kv_use_like_the_supervisor_builds_them() {
    let requests = step_load();
    let mut recording = Recording {
        inner: Swell::new("swell", comparison(&[]).swell_policy)
            .with_expected_cold_start(profile().cold_start),
        samples: Vec::new(),
    };
    let result = run(&requests, &mut recording, 400.0);
    assert!(result.finished_count.iter().all(|&c| c == 1));
    let samples = &recording.samples;
    // During the first cold start (t = 100..105) the queue waits and ages.
    let waiting = samples
        .iter()
        .find(|(s, _)| s.at == Duration::from_secs(104))
        .unwrap()
        .0;
    assert!(waiting.queued > 0);
    assert!(
        waiting.oldest_wait >= Duration::from_secs(3),
        "{:?}",
        waiting.oldest_wait
    );
    // The first admissions report their waits: they arrived 4 per second during the
    // 5 s cold start, so they waited 2.5 s on average.
    let admitted = samples.iter().map(|(s, _)| s).find(|s| s.started > 0).unwrap();
    assert_eq!(admitted.at, Duration::from_secs(105));
    let mean = admitted.queue_delay().as_secs_f64();
    assert!((2.0..3.0).contains(&mean), "{admitted:?}");
    // KV use: only with a ready replica, never above the ready replicas' capacity.
    assert!(samples.iter().any(|(s, _)| s.kv_tokens_used > 0));
    for (s, counts) in samples {
        assert_eq!(s.ready_replicas, counts.ready);
        assert_eq!(s.kv_capacity_tokens, profile().kv_capacity_tokens);
        assert!(s.kv_tokens_used <= s.kv_capacity_tokens * u64::from(counts.ready), "{s:?}");
        assert_eq!(s.unix_ms, None);
    }
    // Admissions add up to the requests.
    let started: u64 = samples.iter().map(|(s, _)| s.started).sum();
    assert_eq!(started, requests.len() as u64);
}

/// Kept true: on the Azure conversation trace (`loadtests/traces`) (one hour, as
/// recorded) with a small-GPU profile (`qwen2.5-0.5b-l4`, where the trace needs one to
/// three replicas), Swell's *default* policy reaches at least the SLO attainment of the
/// best baseline (the highest attainment; the cheapest of those on a tie) at lower cost,
/// and stays within 1.5x of the oracle's replica-seconds. docs/simulator.md ("Results") has
/// the tables this comes from; the run takes a few seconds.
#[test]
fn the_default_policy_beats_the_best_baseline_on_the_azure_conversation_trace() {
    let traces = super::trace::traces_dir();
    let requests = super::workload::azure(
        &traces.join("azure-2023/AzureLLMInferenceTrace_conv.csv"),
        1.0,
        None,
    )
    .expect("the Azure conversation trace (loadtests/traces) is readable");
    assert_eq!(requests.len(), 19_366);
    let comparison = Comparison {
        profile: builtin("qwen2.5-0.5b-l4").unwrap(),
        ttft_target: 2.0,
        itl_target: 0.1,
        swell_policy: Swell::default_policy(),
        policies: POLICY_NAMES.iter().map(|s| s.to_string()).collect(),
        horizon: None,
        warm_start: true,
        routing: RoutingSettings::default(),
    };
    let result = compare(&requests, &comparison);
    let rows = summary::summarize_all(&result, 2.0, 0.1, 1);
    let table = summary::render_markdown(&rows);
    let swell = rows.iter().find(|r| r.policy == "swell").unwrap();
    let best = rows
        .iter()
        .filter(|r| r.policy != "swell" && r.policy != "oracle")
        .max_by(|a, b| {
            a.slo_attainment
                .total_cmp(&b.slo_attainment)
                .then(b.replica_seconds.total_cmp(&a.replica_seconds))
        })
        .unwrap();
    assert!(
        swell.slo_attainment >= best.slo_attainment,
        "swell's SLO is below {}'s:\n{table}",
        best.policy
    );
    assert!(
        swell.replica_seconds < best.replica_seconds,
        "swell costs no less than {}:\n{table}",
        best.policy
    );
    let ratio = swell.replica_seconds / result.oracle_replica_seconds;
    assert!(ratio < 1.5, "swell costs {ratio:.2}x the oracle:\n{table}");
}

#[test]
fn the_sim_profiles_rank_as_their_hardware_does() {
    use swell_autoscaler::capacity::{ReplicaCapacity, Workload};
    use swell_autoscaler::SloTargets;
    use swell_workers::sim::builtin;
    let azure = Workload {
        prompt_tokens: 1155.0,
        output_tokens: 211.0,
    };
    let slo = SloTargets::default();
    let rate = |name: &str| {
        let profile = builtin(name).unwrap();
        ReplicaCapacity {
            max_batch_size: profile.max_batch_size,
            kv_capacity_tokens: profile.kv_capacity_tokens,
            cold_start: profile.cold_start,
            performance: Some(profile.performance()),
        }
        .limits(azure, &slo)
    };
    let h100 = rate("llama-3.1-8b-h100");
    let tp4 = rate("llama-3.1-70b-4xh100");
    let cpu = rate("smollm2-135m-cpu");
    // 8B on one H100 carries ~17 conversations/s (the KV cache, 440k tokens / 1366
    // per sequence = 322 sequences, binds just before the 100 ms inter-token target).
    assert!((15.0..19.0).contains(&h100.requests_per_second.unwrap()), "{h100:?}");
    assert!(h100.concurrent > 250.0 && h100.concurrent <= 322.0, "{h100:?}");
    // 70B on four: fewer, and per GPU far fewer.
    assert!(tp4.requests_per_second.unwrap() < h100.requests_per_second.unwrap());
    // The 2-core CPU: about one conversation every few seconds.
    assert!(cpu.requests_per_second.unwrap() < 1.0, "{cpu:?}");
    assert!(cpu.concurrent < 20.0, "{cpu:?}");
    // The free profile does not hang or divide by zero.
    let zero = rate("zero");
    assert!(zero.requests_per_second.unwrap() > 1e6, "{zero:?}");
}
