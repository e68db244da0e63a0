//! The run configuration ([`LoadTestConfig`]) shared by the CLI and the library API.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::lengths::LengthDist;
use crate::monitor::MonitorConfig;

/// Default base URL of the server under test.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// How requests travel to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// One HTTP request per generation, response streamed as server-sent events.
    #[default]
    Sse,
    /// Requests multiplexed by id over a small pool of WebSocket connections (`/v1/ws`).
    Ws,
}

/// Which OpenAI API the requests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `POST /v1/chat/completions` (WebSocket type `chat.completion`).
    #[default]
    Chat,
    /// `POST /v1/completions` (WebSocket type `completion`).
    Completions,
}

impl Endpoint {
    /// The HTTP path of the endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }

    /// The `type` of a WebSocket request message for this endpoint.
    pub fn ws_type(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completions => "completion",
        }
    }
}

/// The arrival process, derived from [`LoadTestConfig`] by [`LoadTestConfig::validate`].
#[derive(Debug, Clone, PartialEq)]
pub enum ArrivalMode {
    /// Open loop: Poisson arrivals at this many requests per second.
    Poisson { rate: f64 },
    /// Closed loop: this many workers, each sending its next request when the previous ends.
    ClosedLoop { concurrency: usize },
    /// Open loop: arrivals and lengths replayed from an Azure-format trace.
    Trace { path: PathBuf },
}

impl ArrivalMode {
    /// Short name used in reports: `poisson`, `closed`, or `trace`.
    pub fn name(&self) -> &'static str {
        match self {
            ArrivalMode::Poisson { .. } => "poisson",
            ArrivalMode::ClosedLoop { .. } => "closed",
            ArrivalMode::Trace { .. } => "trace",
        }
    }
}

/// A configuration that cannot run.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("exactly one arrival mode is needed: rate, concurrency or trace (got {0})")]
    ArrivalMode(usize),
    #[error("rate must be a positive number of requests per second, got {0}")]
    Rate(f64),
    #[error("concurrency must be at least 1")]
    Concurrency,
    #[error("time scale must be positive, got {0}")]
    TimeScale(f64),
    #[error("ws connections must be at least 1")]
    WsConnections,
    #[error("requests must be at least 1")]
    Requests,
    #[error("the run needs a bound: set requests and/or duration")]
    Unbounded,
    #[error("duration must be positive")]
    Duration,
    #[error("timeout must be positive")]
    Timeout,
    #[error("{0} must be at least 1")]
    Cap(&'static str),
    #[error("url must start with http:// (https is not supported), got {0:?}")]
    Url(String),
    #[error("plots need the monitor (the replica and queue panels come from it)")]
    PlotsNeedMonitor,
    #[error("the monitor interval must be positive")]
    MonitorInterval,
}

/// Everything one load test run needs. Mirrors the CLI flags one to one
/// (`--rate` is `rate`, `--per-request-csv` is `per_request_csv`, ...).
///
/// Exactly one of `rate`, `concurrency` and `trace` must be set; `rate` and `concurrency` runs
/// also need `requests` and/or `duration` (a trace run is bounded by the trace itself).
///
/// ```
/// use std::time::Duration;
/// use swell_loadtest::LoadTestConfig;
///
/// let config = LoadTestConfig {
///     concurrency: Some(4),
///     requests: Some(100),
///     ..LoadTestConfig::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LoadTestConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:8080` (no trailing `/v1`).
    pub url: String,
    /// Bearer token sent in `Authorization` (CLI: `--api-key` or env `SWELL_API_KEY`).
    pub api_key: Option<String>,
    /// Deployment name sent as `model`.
    pub model: String,
    pub endpoint: Endpoint,
    pub protocol: Protocol,
    /// Size of the WebSocket connection pool (protocol `ws` only).
    pub ws_connections: usize,
    /// Open-loop Poisson arrival rate, requests per second.
    pub rate: Option<f64>,
    /// Closed-loop worker count.
    pub concurrency: Option<usize>,
    /// Azure-format trace (`TIMESTAMP,ContextTokens,GeneratedTokens`) to replay.
    pub trace: Option<PathBuf>,
    /// Trace replay speed-up: inter-arrival gaps are divided by this.
    pub time_scale: f64,
    /// Skip the trace rows in the first `trace_offset` of trace time.
    pub trace_offset: Duration,
    /// Replay at most this many trace rows (after the offset).
    pub trace_limit: Option<usize>,
    /// Stop issuing after this many requests.
    pub requests: Option<u64>,
    /// Stop issuing after this much time.
    pub duration: Option<Duration>,
    /// After issuing stops, wait this long for in-flight requests, then cancel them
    /// (they are recorded as `drain_timeout`).
    pub drain_timeout: Duration,
    /// Prompt length distribution (ignored in trace mode).
    pub prompt_tokens: LengthDist,
    /// Output length (`max_tokens`) distribution (ignored in trace mode).
    pub output_tokens: LengthDist,
    /// Cap on prompt lengths from any source (trace, distribution).
    pub max_prompt_tokens: Option<u32>,
    /// Cap on output lengths from any source (trace, distribution).
    pub max_output_tokens: Option<u32>,
    /// Send `"ignore_eos": true` so the server generates exactly `max_tokens` tokens.
    pub ignore_eos: bool,
    /// Per-request timeout (from send to the end of the stream).
    pub timeout: Duration,
    /// Seed of every random choice (arrivals, lengths, prompt words).
    pub seed: u64,
    /// Hide the progress bar.
    pub quiet: bool,
    /// Write the report as JSON here.
    pub json: Option<PathBuf>,
    /// Write one CSV row per request here.
    pub per_request_csv: Option<PathBuf>,
    /// Poll the deployment's admin status and `/metrics` during the run (the report's
    /// `monitor`; see [`crate::monitor`]).
    pub monitor: Option<MonitorConfig>,
    /// Write the live plots (`live.svg`, `live.png`) into this directory; needs `monitor`.
    pub plots: Option<PathBuf>,
}

impl Default for LoadTestConfig {
    fn default() -> Self {
        LoadTestConfig {
            url: DEFAULT_URL.to_string(),
            api_key: None,
            model: "default".to_string(),
            endpoint: Endpoint::Chat,
            protocol: Protocol::Sse,
            ws_connections: 4,
            rate: None,
            concurrency: None,
            trace: None,
            time_scale: 1.0,
            trace_offset: Duration::ZERO,
            trace_limit: None,
            requests: None,
            duration: None,
            drain_timeout: Duration::from_secs(60),
            prompt_tokens: LengthDist::Fixed(128),
            output_tokens: LengthDist::Fixed(128),
            max_prompt_tokens: None,
            max_output_tokens: None,
            ignore_eos: true,
            timeout: Duration::from_secs(300),
            seed: 42,
            quiet: false,
            json: None,
            per_request_csv: None,
            monitor: None,
            plots: None,
        }
    }
}

impl LoadTestConfig {
    /// Checks the configuration and returns its arrival mode.
    pub fn validate(&self) -> Result<ArrivalMode, ConfigError> {
        let modes = [
            self.rate.is_some(),
            self.concurrency.is_some(),
            self.trace.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if modes != 1 {
            return Err(ConfigError::ArrivalMode(modes));
        }
        if !self.url.starts_with("http://") {
            return Err(ConfigError::Url(self.url.clone()));
        }
        if self.ws_connections == 0 {
            return Err(ConfigError::WsConnections);
        }
        if self.requests == Some(0) {
            return Err(ConfigError::Requests);
        }
        if self.duration == Some(Duration::ZERO) {
            return Err(ConfigError::Duration);
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::Timeout);
        }
        if self.max_prompt_tokens == Some(0) {
            return Err(ConfigError::Cap("max prompt tokens"));
        }
        if self.max_output_tokens == Some(0) {
            return Err(ConfigError::Cap("max output tokens"));
        }
        let bounded = self.requests.is_some() || self.duration.is_some();
        let mode = if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::Rate(rate));
            }
            ArrivalMode::Poisson { rate }
        } else if let Some(concurrency) = self.concurrency {
            if concurrency == 0 {
                return Err(ConfigError::Concurrency);
            }
            ArrivalMode::ClosedLoop { concurrency }
        } else {
            let path = self.trace.clone().expect("one mode is set");
            ArrivalMode::Trace { path }
        };
        if !bounded && !matches!(mode, ArrivalMode::Trace { .. }) {
            return Err(ConfigError::Unbounded);
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(ConfigError::TimeScale(self.time_scale));
        }
        if self.plots.is_some() && self.monitor.is_none() {
            return Err(ConfigError::PlotsNeedMonitor);
        }
        if self.monitor.as_ref().is_some_and(|m| m.interval.is_zero()) {
            return Err(ConfigError::MonitorInterval);
        }
        Ok(mode)
    }

    /// The base URL without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.url.trim_end_matches('/')
    }
}

/// Parses a duration given as plain seconds (`90`, `0.5`) or in humantime form (`60s`, `1m30s`,
/// `250ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| {
            format!("invalid duration {s:?}: must be a non-negative number of seconds")
        });
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(n: usize) -> LoadTestConfig {
        LoadTestConfig {
            concurrency: Some(n),
            requests: Some(10),
            ..LoadTestConfig::default()
        }
    }

    #[test]
    fn durations_parse_as_seconds_or_humantime() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn exactly_one_mode_is_required() {
        let none = LoadTestConfig {
            requests: Some(1),
            ..LoadTestConfig::default()
        };
        assert_eq!(none.validate(), Err(ConfigError::ArrivalMode(0)));
        let two = LoadTestConfig {
            rate: Some(1.0),
            ..closed(2)
        };
        assert_eq!(two.validate(), Err(ConfigError::ArrivalMode(2)));
        assert_eq!(
            closed(2).validate(),
            Ok(ArrivalMode::ClosedLoop { concurrency: 2 })
        );
    }

    #[test]
    fn open_and_closed_loops_need_a_bound_but_traces_do_not() {
        let rate = LoadTestConfig {
            rate: Some(2.0),
            ..LoadTestConfig::default()
        };
        assert_eq!(rate.validate(), Err(ConfigError::Unbounded));
        let rate = LoadTestConfig {
            duration: Some(Duration::from_secs(5)),
            ..rate
        };
        assert_eq!(rate.validate(), Ok(ArrivalMode::Poisson { rate: 2.0 }));
        let trace = LoadTestConfig {
            trace: Some("t.csv".into()),
            ..LoadTestConfig::default()
        };
        assert!(matches!(trace.validate(), Ok(ArrivalMode::Trace { .. })));
    }

    #[test]
    fn bad_values_are_rejected() {
        assert_eq!(closed(0).validate(), Err(ConfigError::Concurrency));
        let c = LoadTestConfig {
            concurrency: None,
            rate: Some(0.0),
            ..closed(1)
        };
        assert_eq!(c.validate(), Err(ConfigError::Rate(0.0)));
        let c = LoadTestConfig {
            url: "https://x".into(),
            ..closed(1)
        };
        assert!(matches!(c.validate(), Err(ConfigError::Url(_))));
        let c = LoadTestConfig {
            time_scale: 0.0,
            ..closed(1)
        };
        assert_eq!(c.validate(), Err(ConfigError::TimeScale(0.0)));
        let c = LoadTestConfig {
            max_output_tokens: Some(0),
            ..closed(1)
        };
        assert_eq!(c.validate(), Err(ConfigError::Cap("max output tokens")));
        let c = LoadTestConfig {
            plots: Some("plots".into()),
            ..closed(1)
        };
        assert_eq!(c.validate(), Err(ConfigError::PlotsNeedMonitor));
        let c = LoadTestConfig {
            monitor: Some(MonitorConfig {
                interval: Duration::ZERO,
                ..MonitorConfig::default()
            }),
            ..closed(1)
        };
        assert_eq!(c.validate(), Err(ConfigError::MonitorInterval));
    }

    #[test]
    fn base_url_drops_trailing_slashes() {
        let c = LoadTestConfig {
            url: "http://127.0.0.1:9000/".into(),
            ..LoadTestConfig::default()
        };
        assert_eq!(c.base_url(), "http://127.0.0.1:9000");
    }
}
