//! `swell-simulate`: Swell's autoscaling policy against the baselines, in virtual time.
//!
//! ```text
//! swell-simulate --trace azure-conv --profile llama-3.1-8b-h100 --out sim-out
//! swell-simulate --trace servegen:m-mid/chunk-3 --duration 1d --profile llama-3.1-8b-h100
//! swell-simulate --trace synthetic:onoff --peak-rps 4 --duration 2h --policies swell,knative-kpa,oracle
//! swell-simulate --trace mooncake --profile llama-3.1-8b-h100 --routing any,cache-aware,session
//! ```
//!
//! Prints the markdown comparison table, writes `summary.json`, `timeline.{svg,png}` and
//! `cost_vs_slo.{svg,png}` into `--out`. With `--routing`, runs the scaling policies
//! (default: `swell` alone) once per routing policy and prints the routing table (cache
//! hit rate, prefill saved, TTFT, GPU-seconds, SLO attainment). See the
//! `swell_simulator` crate for the model and the baselines' defaults, docs/simulator.md
//! for results.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::Parser;
use swell_router::RoutingPolicy;
use swell_simulator::routing::DEFAULT_BLOCK_TOKENS;
use swell_simulator::{
    policies::Swell, summary, workload, Comparison, ComparisonResult, RoutingSettings, POLICY_NAMES,
};

#[derive(Debug, Parser)]
#[command(
    name = "swell-simulate",
    about = "Run Swell's autoscaler and baseline policies over a trace in virtual time"
)]
struct Args {
    /// azure-conv | azure-code | azure:<csv> | mooncake | mooncake:<jsonl> | servegen:<m-mid/chunk-N or csv> | synthetic:<steps|spike|diurnal|onoff>
    #[arg(long, default_value = "azure-conv")]
    trace: String,
    /// A built-in `sim` profile (smollm2-135m-cpu, llama-3.1-8b-h100, llama-3.1-70b-4xh100, qwen2.5-0.5b-l4).
    #[arg(long, default_value = "llama-3.1-8b-h100")]
    profile: String,
    /// `all` or a comma-separated list of: swell, static-peak, knative-kpa, ray-serve, k8s-hpa, fireworks, oracle.
    /// Default: `all`; `swell` with `--routing`.
    #[arg(long)]
    policies: Option<String>,
    /// Run once per routing policy and print the routing table: a comma-separated list of
    /// any, cache-aware, session. Without it every run routes `any` (one FIFO queue).
    #[arg(long)]
    routing: Option<String>,
    /// How long a routed job waits for its replica before any replica may take it.
    #[arg(long, default_value = "2s")]
    promise_bound: humantime::Duration,
    /// Tokens per KV block: the prefix cache's unit; Mooncake's 512-token ids are split
    /// into 512 / this blocks (it must divide 512).
    #[arg(long, default_value_t = DEFAULT_BLOCK_TOKENS)]
    block_tokens: u32,
    /// Only the first part of the trace (after time scaling), e.g. `10m`, `1d`; synthetic: its length (default 1h).
    #[arg(long)]
    duration: Option<humantime::Duration>,
    /// Skip the trace's first part (after time scaling), e.g. `12h`: the run starts there,
    /// at t = 0 (with `--duration`, a window of a long trace).
    #[arg(long)]
    start: Option<humantime::Duration>,
    /// Trace time is divided by this (2 = twice as fast, twice the rate).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Directory for summary.json and the plots.
    #[arg(long, default_value = "sim-out")]
    out: PathBuf,
    /// Time-to-first-token target, seconds.
    #[arg(long, default_value_t = 2.0)]
    ttft_target: f64,
    /// Mean inter-token latency target, seconds.
    #[arg(long, default_value_t = 0.1)]
    itl_target: f64,
    /// Swell's policy as JSON (same keys as `[autoscaling]`), e.g. '{"scale_down_window":"2m"}'.
    /// Default: the built-in default with max_replicas 1000.
    #[arg(long)]
    swell_policy: Option<String>,
    /// Where the traces are (default: `loadtests/traces`, the copies in the repository).
    #[arg(long)]
    traces_dir: Option<PathBuf>,
    /// Synthetic traces: the peak rate, requests/s.
    #[arg(long, default_value_t = 10.0)]
    peak_rps: f64,
    /// Synthetic traces: prompt tokens per request.
    #[arg(long, default_value_t = 1000)]
    prompt_tokens: u32,
    /// Synthetic traces: output tokens per request.
    #[arg(long, default_value_t = 200)]
    output_tokens: u32,
    /// Start every policy cold at t = 0 instead of warm with the replicas the first minute
    /// needs (the oracle always plans its own start).
    #[arg(long)]
    cold_start_at_zero: bool,
    /// Seed for synthetic and ServeGen arrivals.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn traces_dir(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &args.traces_dir {
        return Ok(dir.clone());
    }
    let dir = swell_simulator::trace::traces_dir();
    if dir.is_dir() {
        return Ok(dir);
    }
    bail!(
        "cannot find the traces directory {}; pass --traces-dir",
        dir.display()
    )
}

fn load(args: &Args) -> anyhow::Result<Vec<workload::SimRequest>> {
    let start = args.start.map_or(0.0, |d| d.as_secs_f64());
    let requests = load_from(args, start)?;
    Ok(workload::window(requests, start))
}

/// The trace up to `start` + `--duration` (the window is cut by [`workload::window`]).
fn load_from(args: &Args, start: f64) -> anyhow::Result<Vec<workload::SimRequest>> {
    let duration = args.duration.map(|d| d.as_secs_f64() + start);
    let (kind, arg) = args
        .trace
        .split_once(':')
        .unwrap_or((args.trace.as_str(), ""));
    match kind {
        "azure-conv" | "azure-code" => {
            let file = if kind == "azure-conv" {
                "AzureLLMInferenceTrace_conv.csv"
            } else {
                "AzureLLMInferenceTrace_code.csv"
            };
            workload::azure(
                &traces_dir(args)?.join("azure-2023").join(file),
                args.time_scale,
                duration,
            )
        }
        "azure" => workload::azure(Path::new(arg), args.time_scale, duration),
        "mooncake" => {
            let path = if arg.is_empty() {
                traces_dir(args)?.join("mooncake/synthetic_trace.jsonl")
            } else {
                PathBuf::from(arg)
            };
            workload::mooncake(&path, args.block_tokens, args.time_scale, duration)
        }
        "servegen" => {
            let path = if Path::new(arg).is_file() {
                PathBuf::from(arg)
            } else {
                let (model, chunk) = arg
                    .split_once('/')
                    .context("servegen:<m-mid|m-small>/chunk-N or a file")?;
                traces_dir(args)?
                    .join("servegen/language")
                    .join(model)
                    .join(format!("{chunk}-trace.csv"))
            };
            let lengths_path = traces_dir(args)?
                .join("sarathi-serve/sharegpt_8k_filtered_stats_llama2_tokenizer.csv");
            let lengths = swell_simulator::trace::load_sharegpt(&lengths_path)?;
            workload::servegen(&path, &lengths, args.time_scale, duration, args.seed)
        }
        "synthetic" => Ok(workload::synthetic(
            arg.parse()?,
            duration.unwrap_or(3600.0 + start),
            args.peak_rps,
            args.prompt_tokens,
            args.output_tokens,
            args.seed,
        )),
        _ => bail!("unknown trace {:?}", args.trace),
    }
}

fn main() -> ExitCode {
    swell_simulator::cli::exit_code(run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let profile = swell_simulator::cli::builtin_profile(&args.profile)?;
    let routings: Option<Vec<RoutingPolicy>> = args
        .routing
        .as_deref()
        .map(|list| list.split(',').map(|s| s.trim().parse()).collect())
        .transpose()
        .context("--routing")?;
    let default_policies = if routings.is_some() { "swell" } else { "all" };
    let policies_arg = args.policies.as_deref().unwrap_or(default_policies);
    let policies: Vec<String> = if policies_arg == "all" {
        POLICY_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        policies_arg
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    };
    if let Some(bad) = policies
        .iter()
        .find(|p| !POLICY_NAMES.contains(&p.as_str()))
    {
        bail!("unknown policy {bad:?}: expected {POLICY_NAMES:?}");
    }
    let swell_policy = match &args.swell_policy {
        Some(json) => {
            let mut value: serde_json::Value = serde_json::to_value(Swell::default_policy())?;
            let patch: serde_json::Value = serde_json::from_str(json).context("--swell-policy")?;
            if let (Some(base), Some(patch)) = (value.as_object_mut(), patch.as_object()) {
                for (k, v) in patch {
                    base.insert(k.clone(), v.clone());
                }
            }
            let policy: swell_autoscaler::AutoscalingPolicy =
                serde_json::from_value(value).context("--swell-policy")?;
            policy.validate().map_err(anyhow::Error::msg)?;
            policy
        }
        None => Swell::default_policy(),
    };
    let requests = load(&args)?;
    if requests.is_empty() {
        bail!("the trace holds no request");
    }
    let span = requests.last().map_or(0.0, |r| r.arrival);
    eprintln!(
        "{} requests over {:.0} s ({:.2} req/s), profile {}, cold start {:?}",
        requests.len(),
        span,
        requests.len() as f64 / span.max(1.0),
        profile.name,
        profile.cold_start
    );
    let mut comparison = Comparison {
        profile: profile.clone(),
        ttft_target: args.ttft_target,
        itl_target: args.itl_target,
        swell_policy,
        policies,
        horizon: args.duration.map(|d| d.as_secs_f64()),
        warm_start: !args.cold_start_at_zero,
        routing: RoutingSettings {
            policy: RoutingPolicy::AnyReplica,
            promise_bound: args.promise_bound.into(),
            block_tokens: args.block_tokens,
        },
    };
    let started = Instant::now();
    // One comparison per routing policy; their runs and rows side by side.
    let mut result: Option<ComparisonResult> = None;
    for &routing in routings.as_deref().unwrap_or(&[RoutingPolicy::AnyReplica]) {
        comparison.routing.policy = routing;
        let this = swell_simulator::compare(&requests, &comparison);
        match &mut result {
            Some(all) => all.runs.extend(this.runs),
            None => result = Some(this),
        }
    }
    let mut result = result.expect("at least one routing policy");
    let elapsed = started.elapsed();
    let rows = summary::summarize_all(
        &result,
        args.ttft_target,
        args.itl_target,
        profile.gpus_per_replica,
    );
    println!(
        "trace {}, profile {}, SLO: TTFT <= {} s and mean ITL <= {} ms; batch capacity {} (SLO batch {}) at mean context {}; oracle {:.0} replica-s; simulated in {:.2?}\n",
        args.trace,
        profile.name,
        args.ttft_target,
        args.itl_target * 1e3,
        result.capacity.batch_capacity,
        result.capacity.slo_batch,
        result.capacity.mean_context,
        result.oracle_replica_seconds,
        elapsed
    );
    if routings.is_some() {
        println!(
            "prefix cache: blocks of {} tokens, promise bound {}\n",
            args.block_tokens, args.promise_bound
        );
        print!("{}", summary::render_routing_markdown(&rows));
    } else {
        print!("{}", summary::render_markdown(&rows));
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let json = serde_json::json!({
        "trace": args.trace,
        "profile": profile.name,
        "requests": requests.len(),
        "ttft_target_s": args.ttft_target,
        "itl_target_s": args.itl_target,
        "batch_capacity": result.capacity.batch_capacity,
        "slo_batch": result.capacity.slo_batch,
        "oracle_replica_seconds": result.oracle_replica_seconds,
        "policies": rows,
        "timelines": result.runs.iter().map(|r| serde_json::json!({"policy": r.policy, "routing": r.routing, "points": r.timeline})).collect::<Vec<_>>(),
    });
    let json_path = args.out.join("summary.json");
    std::fs::write(&json_path, serde_json::to_string(&json)?)?;
    let mut written = vec![json_path];
    let mut plotted = rows.clone();
    if routings.is_some() {
        // The plots name each run by its scaling and routing policies.
        for (run, row) in result.runs.iter_mut().zip(&mut plotted) {
            run.policy = format!("{} ({})", run.policy, run.routing);
            row.policy.clone_from(&run.policy);
        }
    }
    written.extend(swell_simulator::plot::write_all(
        &args.out,
        &result.runs,
        &plotted,
    )?);
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
