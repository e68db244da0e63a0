use std::time::Duration;

use super::*;
use crate::stats::percentile;

fn event(t: f64, from: u32, to: u32) -> ObservedScaleEvent {
    ObservedScaleEvent { t, from, to }
}

fn observation(events: &[(f64, u32, u32)], latency: f64) -> Observation {
    Observation {
        scale_events: events.iter().map(|&(t, f, to)| event(t, f, to)).collect(),
        requests: (0..100)
            .map(|i| ObservedRequest {
                arrival: f64::from(i) * 0.5,
                ttft: latency * (1.0 + f64::from(i % 10) / 10.0),
                e2e: 2.0 * latency * (1.0 + f64::from(i % 10) / 10.0),
            })
            .collect(),
    }
}

const EVENTS: &[(f64, u32, u32)] = &[(0.1, 0, 1), (12.0, 1, 3), (17.0, 3, 4), (40.0, 4, 2), (55.0, 2, 0)];

#[test]
fn identical_runs_pass_every_check() {
    let a = observation(EVENTS, 0.3);
    let report = compare(&a, &a.clone(), 60.0, &Tolerances::default());
    assert!(report.passed(), "{}", report.render());
    assert_eq!(report.checks.len(), 4 + 6);
}

#[test]
fn a_tick_of_phase_and_small_latency_noise_pass() {
    let live = observation(&[(0.6, 0, 1), (12.8, 1, 3), (17.9, 3, 4), (40.5, 4, 2), (55.7, 2, 0)], 0.33);
    let sim = observation(EVENTS, 0.3);
    let report = compare(&live, &sim, 60.0, &Tolerances::default());
    assert!(report.passed(), "{}", report.render());
}

#[test]
fn late_scale_up_fails_the_timeline_and_event_checks() {
    // Live reaches 3 five seconds after the simulator.
    let live = observation(&[(0.1, 0, 1), (17.0, 1, 3), (18.0, 3, 4), (40.0, 4, 2), (55.0, 2, 0)], 0.3);
    let sim = observation(EVENTS, 0.3);
    let report = compare(&live, &sim, 60.0, &Tolerances::default());
    let failed: Vec<&str> = report.checks.iter().filter(|c| !c.pass).map(|c| c.name.as_str()).collect();
    assert_eq!(
        failed,
        [
            "replicas at every second (largest gap; seconds over)",
            "scale events (count; unmatched)"
        ],
        "{}",
        report.render()
    );
    assert!(report.render().contains("FAIL"));
}

#[test]
fn a_run_one_replica_higher_with_one_more_step_passes() {
    // A live run of the step scenario against its simulation (rounded): the server
    // peaked one replica lower, so it took one step less on the way down.
    let live = observation(
        &[(0.0, 0, 1), (14.0, 1, 2), (16.0, 2, 3), (20.0, 3, 4), (22.0, 4, 5), (32.0, 5, 4), (37.0, 4, 3), (48.0, 3, 2), (55.0, 2, 1), (59.0, 1, 0)],
        0.3,
    );
    let sim = observation(
        &[(0.0, 0, 1), (15.0, 1, 2), (16.0, 2, 3), (20.0, 3, 4), (21.0, 4, 6), (32.0, 6, 5), (37.0, 5, 4), (42.0, 4, 3), (47.0, 3, 2), (52.0, 2, 1), (59.0, 1, 0)],
        0.3,
    );
    let report = compare(&live, &sim, 70.0, &Tolerances::default());
    assert!(report.passed(), "{}", report.render());
}

#[test]
fn a_missing_scale_to_zero_fails() {
    let live = observation(&EVENTS[..4], 0.3);
    let sim = observation(EVENTS, 0.3);
    let report = compare(&live, &sim, 60.0, &Tolerances::default());
    assert!(!report.passed());
    let events = report.checks.iter().find(|c| c.name.starts_with("scale events")).unwrap();
    assert!(!events.pass && events.simulated.contains("2→0 at 55.0 s"), "{}", report.render());
}

#[test]
fn latency_outside_the_tolerance_fails_and_names_the_percentile() {
    let live = observation(EVENTS, 0.6);
    let sim = observation(EVENTS, 0.3);
    let report = compare(&live, &sim, 60.0, &Tolerances::default());
    let failed: Vec<&str> = report.checks.iter().filter(|c| !c.pass).map(|c| c.name.as_str()).collect();
    assert!(failed.contains(&"TTFT p50") && failed.contains(&"end-to-end p99"), "{failed:?}");
    // A lost request fails the count.
    let mut fewer = observation(EVENTS, 0.3);
    fewer.requests.pop();
    let report = compare(&fewer, &sim, 60.0, &Tolerances::default());
    assert!(!report.checks[0].pass);
}

#[test]
fn a_run_the_machine_broke_is_invalid_and_says_why() {
    let ok = LiveConditions {
        requests: 10,
        send_lag_p50: 0.002,
        send_lag_p99: 0.05,
        send_lag_max: 0.06,
        steps: 100,
        step_wall_seconds: 2.4,
        step_modelled_seconds: 2.0,
        cold_start_mean: 2.0,
        client_ttft_overhead_mean: 0.01,
        decisions: 60,
    };
    let bounds = ValidityBounds::default();
    assert_eq!(ok.check(&bounds), Ok(()));
    let late = LiveConditions { send_lag_p99: 0.4, ..ok.clone() };
    assert!(late.check(&bounds).unwrap_err().contains("send lag p99 400 ms"));
    let slow = LiveConditions { step_wall_seconds: 3.2, ..ok.clone() };
    assert!(slow.check(&bounds).unwrap_err().contains("step stretch 1.600"));
    let starved = LiveConditions { client_ttft_overhead_mean: 0.2, step_wall_seconds: 3.2, ..ok.clone() };
    let why = starved.check(&bounds).unwrap_err();
    assert!(why.contains("step stretch") && why.contains("client TTFT overhead 200 ms"), "{why}");
    // No steps measured: nothing to stretch.
    let none = LiveConditions { step_wall_seconds: 0.0, step_modelled_seconds: 0.0, ..ok };
    assert_eq!(none.step_stretch(), 1.0);
}

#[test]
fn the_simulator_on_a_stretched_machine_is_slower_and_the_comparison_sees_it() {
    // What a 20 % slower machine does to the step scenario's latencies is far more
    // than the tolerance at the peak (queues amplify it): the correction matters, and
    // a simulator left on the idle profile fails against such a run.
    let scenario = Scenario::step();
    let profile = scenario.profile().unwrap();
    let requests = scenario.requests();
    let slow = LiveConditions {
        requests: requests.len(),
        send_lag_p50: 0.0,
        send_lag_p99: 0.0,
        send_lag_max: 0.0,
        steps: 1,
        step_wall_seconds: 1.2,
        step_modelled_seconds: 1.0,
        cold_start_mean: 2.0,
        client_ttft_overhead_mean: 0.0,
        decisions: 0,
    };
    let horizon = scenario.duration();
    let as_run = simulate(&requests, &slow.as_run(&profile), scenario.policy().unwrap(), horizon);
    let idle = simulate(&requests, &profile, scenario.policy().unwrap(), horizon);
    let e2e = |o: &Observation| percentile(&o.requests.iter().map(|r| r.e2e).collect::<Vec<_>>(), 50.0).unwrap();
    assert!(e2e(&as_run) > 1.15 * e2e(&idle), "{} vs {}", e2e(&as_run), e2e(&idle));
    assert!(compare(&as_run, &as_run.clone(), horizon, &Tolerances::default()).passed());
}

#[test]
fn capacity_follows_the_events() {
    let o = observation(EVENTS, 0.3);
    assert_eq!(o.capacity_at(0.0), 0);
    assert_eq!(o.capacity_at(0.1), 1);
    assert_eq!(o.capacity_at(16.9), 3);
    assert_eq!(o.capacity_at(100.0), 0);
    assert_eq!(o.counts_within(11.0, 17.5), vec![1, 3, 4]);
}

#[test]
fn the_step_scenario_is_valid_and_exercises_every_kind_of_decision_in_the_simulator() {
    let scenario = Scenario::step();
    let profile = scenario.profile().unwrap();
    assert_eq!(profile.max_batch_size, 8);
    assert_eq!(profile.cold_start, Duration::from_secs(2));
    let policy = scenario.policy().unwrap();
    let requests = scenario.requests();
    // Deterministic, and about the planned count.
    assert_eq!(requests, scenario.requests());
    let planned: f64 = scenario.phases.iter().map(|(s, rate)| s * rate).sum();
    let n = requests.len() as f64;
    assert!((n / planned - 1.0).abs() < 0.15, "{n} requests, {planned} planned");
    assert!(requests.iter().all(|r| r.arrival < 50.0));
    let sim = simulate(&requests, &profile, policy, scenario.duration());
    assert_eq!(sim.requests.len(), requests.len());
    let first = sim.scale_events.first().unwrap();
    assert_eq!((first.from, first.to), (0, 1), "{:?}", sim.scale_events);
    let peak = sim.scale_events.iter().map(|e| e.to).max().unwrap();
    // Above the steady need (about 2): the queue built during the cold starts.
    assert!((3..=5).contains(&peak), "{:?}", sim.scale_events);
    assert!(sim.scale_events.iter().any(|e| e.to < e.from && e.to > 0), "steps down: {:?}", sim.scale_events);
    let last = sim.scale_events.last().unwrap();
    assert_eq!(last.to, 0, "back to zero: {:?}", sim.scale_events);
    assert!(last.t < scenario.duration(), "within the run: {:?}", sim.scale_events);
    // The first request waited for a cold start.
    assert!(sim.requests[0].ttft >= 2.0, "{:?}", sim.requests[0]);
}

#[test]
fn the_trace_file_replays_the_planned_arrivals() {
    let scenario = Scenario::step();
    let path = std::env::temp_dir().join(format!("swell-fidelity-{}.csv", std::process::id()));
    scenario.write_trace(&path).unwrap();
    let rows = crate::trace::load_trace(&path).unwrap();
    std::fs::remove_file(&path).ok();
    let planned = scenario.requests();
    assert_eq!(rows.len(), planned.len());
    for (row, request) in rows.iter().zip(&planned) {
        let at = (row.timestamp_us - rows[0].timestamp_us) as f64 / 1e6;
        assert!((at - (request.arrival - planned[0].arrival)).abs() < 1e-5);
        assert_eq!((row.prompt_tokens, row.output_tokens), (48, 32));
    }
}
