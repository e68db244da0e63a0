//! `swell-scale-from-zero`: the first request to a deployment at zero replicas, by stage
//! (decision, replica start, model load, first token). See
//! `swell_loadtest::scale_from_zero` for what each stage covers and where it is read.
//!
//! ```text
//! # Against a running server (the deployment needs min_replicas 0 and a short
//! # scale_to_zero_window, so it is back at zero between runs):
//! swell-scale-from-zero --url http://127.0.0.1:8080 --model default --runs 5
//!
//! # What the simulator charges for a built-in sim profile (no server):
//! swell-scale-from-zero --profile llama-3.1-8b-h100 --prompt-tokens 1000
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use swell_loadtest::config::{parse_duration, Endpoint, DEFAULT_URL};
use swell_loadtest::scale_from_zero::{self, ScaleFromZeroConfig};

#[derive(Debug, Parser)]
#[command(
    name = "swell-scale-from-zero",
    about = "Time from the first request at zero replicas to its first token, by stage"
)]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    /// The deployment (min_replicas 0, a short scale_to_zero_window).
    #[arg(long, default_value = "default")]
    model: String,
    /// Admin token (the status API).
    #[arg(long, env = "SWELL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// API key for the request.
    #[arg(long, env = "SWELL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Which API the request uses.
    #[arg(long, value_enum, default_value_t = Endpoint::Completions)]
    endpoint: Endpoint,
    /// Requests from zero (the deployment goes back to zero between them).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Prompt length (words).
    #[arg(long, default_value_t = 32)]
    prompt_tokens: u32,
    /// Output tokens (max_tokens).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    output_tokens: u32,
    /// How long to wait for the deployment to reach zero before each run.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    wait_for_zero: Duration,
    /// Print the modelled breakdown of a built-in `sim` profile instead (no server).
    #[arg(long)]
    profile: Option<String>,
    /// Also write the breakdowns as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    swell_simulator::cli::exit_code(run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let rows = match &args.profile {
        Some(name) => {
            let profile = swell_simulator::cli::builtin_profile(name)?;
            vec![scale_from_zero::modelled(&profile, args.prompt_tokens)]
        }
        None => {
            let config = ScaleFromZeroConfig {
                url: args.url.trim_end_matches('/').to_string(),
                model: args.model.clone(),
                admin_token: args.admin_token.clone(),
                api_key: args.api_key.clone(),
                endpoint: args.endpoint,
                runs: args.runs,
                prompt_tokens: args.prompt_tokens,
                output_tokens: args.output_tokens,
                wait_for_zero: args.wait_for_zero,
            };
            actix_rt::System::new().block_on(scale_from_zero::measure(&config))?
        }
    };
    print!("{}", scale_from_zero::render(&rows));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
