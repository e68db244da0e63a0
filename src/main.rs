//! `swell`: the command line.
//!
//! - `swell serve [--config FILE] [--listen ADDR] [--admin-token TOKEN] [--insecure]
//!   [--redis URL] [--role gateway|worker|all] [--node-id ID]`
//! - `swell keygen`: a new API key and the hash to put in `api_key_hashes`
//! - `swell check-config FILE`: parse and validate a config file

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use swell::config::{Config, NodeRole};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "swell", version, about = "Swell: serverless LLM inference on your own machines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API, the admin API and the deployments.
    Serve {
        /// TOML config file (without one: defaults and the `default` deployment).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:8080, or `server.listen`).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Bearer token of the admin API (overrides `server.admin_token`).
        #[arg(long, env = "SWELL_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Allow a non-loopback address without API keys or an admin token.
        #[arg(long)]
        insecure: bool,
        /// Run as one node of a cluster sharing this Redis (queue and quotas), e.g.
        /// `redis://10.0.0.5:6379`, or a Redis Cluster's seed nodes
        /// `redis-cluster://10.0.0.5:7000,10.0.0.6:7000` (overrides `cluster.redis_url`).
        #[arg(long = "redis", env = "SWELL_REDIS_URL", hide_env_values = true)]
        redis_url: Option<String>,
        /// What this node does: `gateway` (API, no replicas), `worker` (replicas, no
        /// API) or `all` (overrides `cluster.role`; needs Redis unless `all`).
        #[arg(long)]
        role: Option<NodeRole>,
        /// This node's id in the cluster (default `<hostname>-<pid>`).
        #[arg(long)]
        node_id: Option<String>,
    },
    /// Print a new API key and the hash to put in `tenants.<id>.api_key_hashes`.
    Keygen,
    /// Parse and validate a config file, then exit.
    CheckConfig {
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    match Cli::parse().command {
        Command::Serve { config, listen, admin_token, insecure, redis_url, role, node_id } => {
            let mut config = match &config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read config file {}", path.display()))?;
                    Config::from_toml_str(&text)?
                }
                None => Config::default(),
            };
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            if let Some(token) = admin_token {
                config.server.admin_token = Some(token);
            }
            config.server.insecure |= insecure;
            if let Some(url) = redis_url.filter(|url| !url.trim().is_empty()) {
                config.cluster.redis_url = Some(url);
            }
            if let Some(role) = role {
                config.cluster.role = role;
            }
            if let Some(node_id) = node_id {
                config.cluster.node_id = Some(node_id);
            }
            // Everything is checked before any port is bound.
            config.validate()?;
            actix_rt::System::new().block_on(serve(config))
        }
        Command::Keygen => {
            let key = swell::tenants::generate_api_key();
            println!("api_key = \"{}\"", key.api_key);
            println!("api_key_hashes = [\"{}\"]", key.hash);
            Ok(())
        }
        Command::CheckConfig { config } => {
            Config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = swell::server::start(config).await?;
    println!("swell is serving on {}", server.url());
    wait_for_signal().await?;
    server.stop(true).await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot listen for SIGINT")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("cannot listen for ctrl-c")?;
    tracing::info!("signal received: finishing in-flight requests");
    Ok(())
}
