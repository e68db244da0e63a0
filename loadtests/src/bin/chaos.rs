//! `swell-chaos`: a randomized fault campaign against a cluster started on this machine
//! (see `swell_loadtest::chaos`).
//!
//! ```text
//! swell-chaos --seed 7 --duration 60s
//! ```
//!
//! Exits 0 when every check holds; otherwise prints the seed, the anomalies with the
//! histories that show them, and exits 1. The nodes' logs stay in `--dir` when it fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use swell_loadtest::chaos::{self, Campaign};
use swell_loadtest::config::parse_duration;

#[derive(Debug, Parser)]
#[command(name = "swell-chaos", about = "A randomized fault campaign against a local Swell cluster, with a history checker")]
struct Args {
    /// The seed of the fault schedule and of the clients.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long faults are injected and clients send requests (`60s`, `5m`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 2)]
    gateways: usize,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// The `swell` binary (default: the one beside this binary).
    #[arg(long)]
    swell: Option<PathBuf>,
    /// Where the nodes' config and logs go (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The `sim` engine's decode step, in milliseconds.
    #[arg(long, default_value_t = 50)]
    step_ms: u64,
    /// Output tokens of each request (with the step: how long a stream lasts).
    #[arg(long, default_value_t = 48)]
    max_tokens: u32,
    /// The kinds of fault to inject, comma-separated (default: all of kill, pause, delay,
    /// black-hole, reset, redis).
    #[arg(long, value_delimiter = ',')]
    faults: Option<Vec<String>>,
    /// Also write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write every request's history, one JSON object a line.
    #[arg(long)]
    histories: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let swell = args.swell.clone().unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("the path of this binary");
        exe.with_file_name("swell")
    });
    if !swell.exists() {
        eprintln!("swell-chaos: no swell binary at {} (build it: cargo build -p swell, or pass --swell)", swell.display());
        return ExitCode::from(2);
    }
    let dir = args.dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("swell-chaos-{}-{}", args.seed, std::process::id())));
    let campaign = Campaign {
        seed: args.seed,
        duration: args.duration,
        gateways: args.gateways.max(1),
        workers: args.workers.max(1),
        clients: args.clients.max(1),
        swell,
        dir: dir.clone(),
        step_ms: args.step_ms,
        max_tokens: args.max_tokens,
        kinds: args.faults.clone().unwrap_or_else(|| chaos::schedule::KINDS.map(String::from).to_vec()),
        // The nodes inherit this process's environment (SWELL_CHAOS_MUTANT included).
        node_env: Vec::new(),
    };
    if let Some(unknown) = campaign.kinds.iter().find(|k| !chaos::schedule::KINDS.contains(&k.as_str())) {
        eprintln!("swell-chaos: unknown fault kind `{unknown}` (kinds: {})", chaos::schedule::KINDS.join(", "));
        return ExitCode::from(2);
    }
    // Interrupted (Ctrl-C, SIGTERM), the campaign is dropped: its cluster with it, every
    // process it started killed.
    let interruptible = async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            report = chaos::run(&campaign) => report,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = terminate.recv() => Err(anyhow::anyhow!("terminated")),
        }
    };
    let report = match actix_rt::System::new().block_on(interruptible) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("swell-chaos: seed {}: the campaign could not run: {error:#}\n(logs in {})", args.seed, dir.display());
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &args.json {
        if let Err(error) = std::fs::write(path, serde_json::to_string_pretty(&report).expect("the report serializes")) {
            eprintln!("swell-chaos: writing {}: {error}", path.display());
        }
    }
    if let Some(path) = &args.histories {
        let lines: String = report.histories.iter().map(|h| serde_json::to_string(h).expect("a history serializes") + "\n").collect();
        if let Err(error) = std::fs::write(path, lines) {
            eprintln!("swell-chaos: writing {}: {error}", path.display());
        }
    }
    let faults: Vec<String> = report.faults.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
    println!(
        "seed {}: {} requests ({} completed, {} resumed, errors {:?}, {} not accepted, {} lost); faults: {}",
        report.seed,
        report.requests,
        report.outcomes.completed,
        report.outcomes.resumed,
        report.outcomes.errors,
        report.outcomes.not_accepted,
        report.outcomes.lost,
        faults.join(", ")
    );
    println!(
        "seed {}: quota of `capped` (limit {}): {} slots proven, at most {} at once, {} refused for concurrency",
        report.seed,
        chaos::tenants::CAPPED_LIMIT,
        report.quota.proven,
        report.quota.max_overlap,
        report.quota.refused
    );
    let mut refusals: Vec<_> = report.outcomes.refusals.iter().collect();
    refusals.sort_by(|a, b| b.1.cmp(a.1));
    println!("seed {}: not accepted: {refusals:?}", report.seed);
    if report.passed() {
        println!("seed {}: every check holds", report.seed);
        let _ = std::fs::remove_dir_all(&dir);
        return ExitCode::SUCCESS;
    }
    let faults_arg = args.faults.as_ref().map(|k| format!(" --faults {}", k.join(","))).unwrap_or_default();
    println!(
        "seed {}: FAILED (replay: swell-chaos --seed {} --duration {}s{faults_arg}; logs in {})",
        report.seed,
        report.seed,
        args.duration.as_secs(),
        dir.display()
    );
    if let Some(why) = &report.undisturbed {
        println!("  a request failed before any fault (the undisturbed run): {why}");
    }
    if let Some(why) = &report.not_quiet {
        println!("  not quiet: {why}");
    }
    for anomaly in report.anomalies.iter().take(5) {
        println!("  {}: {}", anomaly.kind, anomaly.detail);
        println!("    history: {}", serde_json::to_string(&anomaly.history).expect("a history serializes"));
    }
    if report.anomalies.len() > 5 {
        println!("  ... {} anomalies in all", report.anomalies.len());
    }
    ExitCode::FAILURE
}
