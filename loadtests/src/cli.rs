//! Command-line arguments, mapped one to one onto [`LoadTestConfig`].

use std::{path::PathBuf, time::Duration};

use clap::{ArgGroup, CommandFactory as _, Parser};

use crate::{
    config::{parse_duration, Endpoint, LoadTestConfig, Protocol, DEFAULT_URL},
    lengths::LengthDist,
    monitor::MonitorConfig,
};

/// Load generator for Swell's OpenAI-compatible API (SSE) and WebSocket API.
#[derive(Debug, Clone, Parser)]
#[command(name = "swell-loadtest", version, about, long_about = None)]
#[command(group(ArgGroup::new("mode").required(true).args(["rate", "concurrency", "trace"])))]
pub struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = DEFAULT_URL)]
    pub url: String,
    /// API key, sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "SWELL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Deployment name, sent as `model`.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Which API to call.
    #[arg(long, value_enum, default_value_t = Endpoint::Chat)]
    pub endpoint: Endpoint,
    /// How to send requests: one HTTP request each with an SSE response, or multiplexed over WebSockets.
    #[arg(long, value_enum, default_value_t = Protocol::Sse)]
    pub protocol: Protocol,
    /// WebSocket connections in the pool (with --protocol ws).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_connections: u32,

    /// Open loop: Poisson arrivals at R requests per second.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Closed loop: C workers, each sending its next request when the last one ends.
    #[arg(long, value_name = "C", value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: Option<u32>,
    /// Replay an Azure LLM trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens): arrival times and lengths.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Trace replay speed-up: S=10 plays the trace 10x faster [default: 1].
    #[arg(long, value_name = "S")]
    pub time_scale: Option<f64>,
    /// Skip the first part of the trace (seconds, or e.g. 10m).
    #[arg(long, value_name = "SECONDS", value_parser = parse_duration)]
    pub trace_offset: Option<Duration>,
    /// Replay at most N trace rows.
    #[arg(long, value_name = "N")]
    pub trace_limit: Option<usize>,

    /// Stop issuing after N requests.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// Stop issuing after this long (e.g. 60s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Once issuing stops, how long to wait for in-flight requests before cancelling them.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub drain_timeout: Duration,

    /// Prompt length: N, uniform:A:B, normal:MEAN:SD or sharegpt:FILE (not with --trace).
    #[arg(
        long,
        value_name = "DIST",
        default_value = "128",
        conflicts_with = "trace"
    )]
    pub prompt_tokens: LengthDist,
    /// Output length (max_tokens): N, uniform:A:B, normal:MEAN:SD or sharegpt:FILE (not with --trace).
    #[arg(
        long,
        value_name = "DIST",
        default_value = "128",
        conflicts_with = "trace"
    )]
    pub output_tokens: LengthDist,
    /// Cap on prompt lengths (from the trace or the distribution).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_prompt_tokens: Option<u32>,
    /// Cap on output lengths (from the trace or the distribution).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_output_tokens: Option<u32>,
    /// Do not send "ignore_eos": true (generations may then stop before max_tokens).
    #[arg(long)]
    pub no_ignore_eos: bool,

    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    pub timeout: Duration,
    /// Seed for arrivals, lengths and prompt words.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write one CSV row per request to FILE.
    #[arg(long, value_name = "FILE")]
    pub per_request_csv: Option<PathBuf>,

    /// Poll the deployment's admin status and /metrics during the run (replicas, queue,
    /// scale events, token rates; `monitor` in the JSON report).
    #[arg(long)]
    pub monitor: bool,
    /// Admin token for the monitor (the server's `admin_token`).
    #[arg(long, env = "SWELL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Time between monitor polls.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub monitor_interval: Duration,
    /// Write live plots (load, replicas, queue depth, latency over time) as DIR/live.svg
    /// and DIR/live.png; turns the monitor on.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
}

impl Args {
    /// The run configuration these arguments describe. Fails when trace-only flags come
    /// without `--trace` (clap's `requires` cannot express this inside an exclusive group).
    pub fn into_config(self) -> Result<LoadTestConfig, clap::Error> {
        if self.trace.is_none() {
            let stray = [
                ("--time-scale", self.time_scale.is_some()),
                ("--trace-offset", self.trace_offset.is_some()),
                ("--trace-limit", self.trace_limit.is_some()),
            ];
            if let Some((flag, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(Args::command().error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    format!("{flag} needs --trace"),
                ));
            }
        }
        Ok(LoadTestConfig {
            url: self.url,
            api_key: self.api_key.filter(|k| !k.is_empty()),
            model: self.model,
            endpoint: self.endpoint,
            protocol: self.protocol,
            ws_connections: self.ws_connections as usize,
            rate: self.rate,
            concurrency: self.concurrency.map(|c| c as usize),
            trace: self.trace,
            time_scale: self.time_scale.unwrap_or(1.0),
            trace_offset: self.trace_offset.unwrap_or_default(),
            trace_limit: self.trace_limit,
            requests: self.requests,
            duration: self.duration,
            drain_timeout: self.drain_timeout,
            prompt_tokens: self.prompt_tokens,
            output_tokens: self.output_tokens,
            max_prompt_tokens: self.max_prompt_tokens,
            max_output_tokens: self.max_output_tokens,
            ignore_eos: !self.no_ignore_eos,
            timeout: self.timeout,
            seed: self.seed,
            quiet: self.quiet,
            json: self.json,
            per_request_csv: self.per_request_csv,
            monitor: (self.monitor || self.plots.is_some()).then(|| MonitorConfig {
                admin_token: self.admin_token.filter(|t| !t.is_empty()),
                interval: self.monitor_interval,
            }),
            plots: self.plots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<LoadTestConfig, clap::Error> {
        let argv = std::iter::once("swell-loadtest").chain(args.iter().copied());
        Args::try_parse_from(argv)?.into_config()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_library_defaults() {
        let config = parse(&["--concurrency", "3", "--requests", "10"]).unwrap();
        let expected = LoadTestConfig {
            concurrency: Some(3),
            requests: Some(10),
            api_key: config.api_key.clone(), // SWELL_API_KEY may be set in the environment
            ..LoadTestConfig::default()
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn maps_every_flag() {
        let config = parse(&[
            "--url",
            "http://10.0.0.1:9000",
            "--api-key",
            "sk-1",
            "--model",
            "tiny",
            "--endpoint",
            "completions",
            "--protocol",
            "ws",
            "--ws-connections",
            "2",
            "--rate",
            "2.5",
            "--requests",
            "100",
            "--duration",
            "1m",
            "--drain-timeout",
            "5",
            "--prompt-tokens",
            "uniform:10:20",
            "--output-tokens",
            "normal:50:5",
            "--max-prompt-tokens",
            "15",
            "--max-output-tokens",
            "40",
            "--no-ignore-eos",
            "--timeout",
            "30s",
            "--seed",
            "7",
            "--quiet",
            "--json",
            "r.json",
            "--per-request-csv",
            "r.csv",
        ])
        .unwrap();
        assert_eq!(
            config,
            LoadTestConfig {
                url: "http://10.0.0.1:9000".into(),
                api_key: Some("sk-1".into()),
                model: "tiny".into(),
                endpoint: Endpoint::Completions,
                protocol: Protocol::Ws,
                ws_connections: 2,
                rate: Some(2.5),
                requests: Some(100),
                duration: Some(Duration::from_secs(60)),
                drain_timeout: Duration::from_secs(5),
                prompt_tokens: LengthDist::Uniform { min: 10, max: 20 },
                output_tokens: LengthDist::Normal {
                    mean: 50.0,
                    sd: 5.0
                },
                max_prompt_tokens: Some(15),
                max_output_tokens: Some(40),
                ignore_eos: false,
                timeout: Duration::from_secs(30),
                seed: 7,
                quiet: true,
                json: Some("r.json".into()),
                per_request_csv: Some("r.csv".into()),
                ..LoadTestConfig::default()
            }
        );
    }

    #[test]
    fn trace_flags() {
        let config = parse(&[
            "--trace",
            "t.csv",
            "--time-scale",
            "10",
            "--trace-offset",
            "120",
            "--trace-limit",
            "50",
            "--max-prompt-tokens",
            "512",
        ])
        .unwrap();
        assert_eq!(config.trace, Some("t.csv".into()));
        assert_eq!(
            (config.time_scale, config.trace_offset, config.trace_limit),
            (10.0, Duration::from_secs(120), Some(50))
        );
        assert_eq!(config.max_prompt_tokens, Some(512));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn monitor_and_plot_flags() {
        let config = parse(&["--rate", "1", "--duration", "5s"]).unwrap();
        assert_eq!((config.monitor, config.plots), (None, None));
        let config = parse(&[
            "--rate",
            "1",
            "--duration",
            "5s",
            "--plots",
            "out",
            "--admin-token",
            "secret",
            "--monitor-interval",
            "250ms",
        ])
        .unwrap();
        assert_eq!(
            config.monitor,
            Some(MonitorConfig {
                admin_token: Some("secret".into()),
                interval: Duration::from_millis(250),
            })
        );
        assert_eq!(config.plots, Some("out".into()));
        assert!(config.validate().is_ok());
        let config = parse(&["--rate", "1", "--duration", "5s", "--monitor"]).unwrap();
        assert_eq!(
            config.monitor.map(|m| m.interval),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn rejects_bad_combinations() {
        for bad in [
            &[][..],
            &["--rate", "1", "--concurrency", "2"],
            &["--concurrency", "0"],
            &["--rate", "1", "--time-scale", "2"],
            &["--concurrency", "1", "--trace-offset", "2"],
            &["--concurrency", "1", "--trace-limit", "2"],
            &["--trace", "t.csv", "--prompt-tokens", "5"],
            &["--rate", "1", "--prompt-tokens", "uniform:9:1"],
            &["--rate", "1", "--duration", "soon"],
            &["--rate", "1", "--protocol", "grpc"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
