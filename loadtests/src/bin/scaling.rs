//! `swell-scaling`: throughput with N replicas against N × one replica, in the simulator
//! or against a running server. See `swell_loadtest::scaling`.
//!
//! ```text
//! swell-scaling sim --profile llama-3.1-8b-h100 --replicas 1,2,4,8,16,32,64
//! swell-scaling live --url http://127.0.0.1:8080 --replicas 1,2,4,8,16,32,64 \
//!     --sim '{"profile": "zero", "decode_step_base": "50ms", "max_batch_size": 8}'
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use swell_loadtest::config::{parse_duration, DEFAULT_URL};
use swell_loadtest::scaling::{self, LiveScaling};

#[derive(Debug, Parser)]
#[command(
    name = "swell-scaling",
    about = "Throughput with N replicas against N x one replica (efficiency)"
)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
    /// Also write the points as JSON.
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// In the simulator (virtual time).
    Sim {
        /// A built-in sim profile.
        #[arg(long, default_value = "llama-3.1-8b-h100")]
        profile: String,
        /// Replica counts, starting at 1.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
        replicas: Vec<u32>,
        #[arg(long, default_value_t = 512)]
        prompt_tokens: u32,
        #[arg(long, default_value_t = 256)]
        output_tokens: u32,
        /// Virtual seconds of arrivals per N.
        #[arg(long, value_parser = parse_duration, default_value = "300s")]
        duration: Duration,
        /// Virtual seconds before tokens are counted.
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        warmup: Duration,
    },
    /// Against a running server: a `sim` deployment set to exactly N replicas, a closed
    /// loop of N × per-replica streams.
    Live {
        #[arg(long, default_value = DEFAULT_URL)]
        url: String,
        #[arg(long, env = "SWELL_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        #[arg(long, env = "SWELL_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// The deployment to create (or update) for the run.
        #[arg(long, default_value = "scaling")]
        deployment: String,
        /// Its `sim` block: a profile whose step time is a sleep (wall clock, not CPU).
        #[arg(long, default_value = r#"{"profile": "zero", "decode_step_base": "50ms", "max_batch_size": 8}"#)]
        sim: String,
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
        replicas: Vec<u32>,
        /// Streams per replica (the profile's batch size keeps every batch full).
        #[arg(long, default_value_t = 8)]
        per_replica: u32,
        #[arg(long, default_value_t = 16)]
        prompt_tokens: u32,
        #[arg(long, default_value_t = 64)]
        output_tokens: u32,
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        warmup: Duration,
        #[arg(long, value_parser = parse_duration, default_value = "15s")]
        window: Duration,
        /// The server's process id, when it runs on this machine: its CPU use per point.
        #[arg(long)]
        server_pid: Option<u32>,
    },
}

fn main() -> ExitCode {
    swell_simulator::cli::exit_code(run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let (points, live) = match args.mode {
        Mode::Sim { profile, replicas, prompt_tokens, output_tokens, duration, warmup } => {
            let profile = swell_simulator::cli::builtin_profile(&profile)?;
            let points = scaling::simulated(
                &profile,
                &replicas,
                prompt_tokens,
                output_tokens,
                duration.as_secs_f64(),
                warmup.as_secs_f64(),
            )?;
            println!(
                "simulator, profile {}, {prompt_tokens} prompt + {output_tokens} output tokens, {:?} per N (tokens counted after {:?})\n",
                profile.name, duration, warmup
            );
            (points, false)
        }
        Mode::Live {
            url,
            admin_token,
            api_key,
            deployment,
            sim,
            replicas,
            per_replica,
            prompt_tokens,
            output_tokens,
            warmup,
            window,
            server_pid,
        } => {
            let sim: serde_json::Value = serde_json::from_str(&sim).context("--sim is not JSON")?;
            let config = LiveScaling {
                url: url.trim_end_matches('/').to_string(),
                admin_token,
                api_key,
                deployment,
                sim,
                replicas,
                per_replica,
                prompt_tokens,
                output_tokens,
                warmup,
                window,
                server_pid,
            };
            scaling::check_replicas(&config.replicas)?;
            let points = actix_rt::System::new().block_on(scaling::live(&config))?;
            println!(
                "live, {} at {}, sim {}, {per_replica} streams per replica, {prompt_tokens} + {output_tokens} tokens, {:?} window after {:?}\n",
                config.deployment, config.url, config.sim, window, warmup
            );
            (points, true)
        }
    };
    print!("{}", scaling::render(&points, live));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&points)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
