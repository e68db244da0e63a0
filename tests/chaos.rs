//! A short fault campaign (`swell-chaos`, `swell_loadtest::chaos`) on fixed seeds: a real
//! cluster of this build's `swell` binary (Redis with AOF, two gateways, two workers on
//! the `sim` engine) under `kill -9`s, pauses past the lease, Redis restarts and network
//! faults, while seeded clients stream and resume. Every check of the history checker
//! must hold: no accepted request ends in silence, no stream has a gap or a repeat, every
//! completed output equals the undisturbed run, and the cluster goes back to zero
//! replicas. A longer campaign is `swell-chaos --seed N --duration 30m` (docs/chaos.md).

use std::time::Duration;

use swell_loadtest::chaos::{run, Campaign};

async fn campaign(seed: u64) {
    let dir = std::env::temp_dir().join(format!("swell-chaos-test-{seed}-{}", std::process::id()));
    let campaign = Campaign {
        seed,
        duration: Duration::from_secs(30),
        gateways: 2,
        workers: 2,
        clients: 6,
        swell: env!("CARGO_BIN_EXE_swell").into(),
        dir: dir.clone(),
        step_ms: 25,
    };
    let report = run(&campaign).await.expect("the campaign runs");
    let summary = serde_json::to_string_pretty(&report).unwrap();
    println!("{summary}");
    assert!(report.requests > 50, "too few requests to mean anything: {summary}");
    assert!(report.faults.values().sum::<u64>() >= 10, "too few faults: {summary}");
    assert!(report.passed(), "seed {seed} failed (logs in {}):\n{summary}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_rt::test]
async fn a_short_campaign_on_seed_1_finds_nothing() {
    campaign(1).await;
}

#[actix_rt::test]
async fn a_short_campaign_on_seed_2_finds_nothing() {
    campaign(2).await;
}
