//! A short fault campaign (`swell-chaos`, `swell_loadtest::chaos`) on fixed seeds: a real
//! cluster of this build's `swell` binary (Redis with AOF, two gateways, two workers on
//! the `sim` engine) under `kill -9`s, pauses past the lease, Redis restarts and network
//! faults, while seeded clients stream and resume. Every check of the history checker
//! must hold: no accepted request ends in silence, no stream has a gap or a repeat, every
//! completed output equals the undisturbed run, and the cluster goes back to zero
//! replicas. A longer campaign is `swell-chaos --seed N --duration 30m` (docs/chaos.md).

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use swell_loadtest::chaos::{run, Campaign};

/// One campaign's cluster at a time (the planted-bug test runs its three together): on
/// 2 cores, more at once would starve them.
static CAMPAIGNS: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    CAMPAIGNS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// The guard is held across the campaign on purpose: each test runs on its own thread.
#[allow(clippy::await_holding_lock)]
async fn campaign(seed: u64) {
    let _alone = one_at_a_time();
    let dir = std::env::temp_dir().join(format!("swell-chaos-test-{seed}-{}", std::process::id()));
    let campaign = Campaign {
        seed,
        duration: Duration::from_secs(30),
        gateways: 2,
        workers: 2,
        clients: 8,
        swell: env!("CARGO_BIN_EXE_swell").into(),
        dir: dir.clone(),
        step_ms: 50,
        max_tokens: 48,
        kinds: swell_loadtest::chaos::schedule::KINDS.map(String::from).to_vec(),
        node_env: Vec::new(),
    };
    let report = run(&campaign).await.expect("the campaign runs");
    let summary = serde_json::to_string_pretty(&report).unwrap();
    println!("{summary}");
    assert!(report.requests >= 30, "too few requests to mean anything: {summary}");
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

/// The planted bugs of the `chaos-mutant` build (cluster/src/mutant.rs), each caught by a
/// short campaign: `swell-chaos` exits 1 and prints the seed to replay.
#[test]
fn each_planted_bug_fails_a_short_campaign_that_names_its_seed() {
    let _alone = one_at_a_time();
    let dir = std::env::var("SWELL_CHAOS_MUTANT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/chaos-mutant"));
    let chaos = dir.join("swell-chaos");
    assert!(
        chaos.exists() && dir.join("swell").exists(),
        "no mutant build in {}: run scripts/build-chaos-mutant (scripts/test does)",
        dir.display()
    );
    // (mutant, seed, faults): an early ack loses every stream's end; a stale writer
    // (a worker paused past its lease) is not fenced, so its tokens land in a stream
    // another worker continued; a quota twice too wide lets the capped tenant's four
    // clients run at once.
    let runs: Vec<_> = [
        ("early-ack", "1", "kill,pause,delay,black-hole,reset,redis"),
        ("skip-epoch-check", "2", "pause"),
        ("double-concurrency", "3", "reset"),
    ]
        .into_iter()
        .map(|(mutant, seed, faults)| {
            let chaos = chaos.clone();
            std::thread::spawn(move || {
                let output = std::process::Command::new(&chaos)
                    .args(["--seed", seed, "--duration", "30s", "--faults", faults])
                    .env("SWELL_CHAOS_MUTANT", mutant)
                    .output()
                    .expect("swell-chaos runs");
                (mutant, seed, output)
            })
        })
        .collect();
    for run in runs {
        let (mutant, seed, output) = run.join().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        println!("{mutant}:\n{stdout}");
        assert_eq!(output.status.code(), Some(1), "{mutant} was not caught:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains(&format!("seed {seed}: FAILED (replay: swell-chaos --seed {seed} ")), "{stdout}");
        if mutant == "double-concurrency" {
            assert!(stdout.contains("quota exceeded"), "caught by the quota check:\n{stdout}");
        }
    }
}
