//! `[server]`: the HTTP listener, its limits and timings, and who may use the admin
//! API and `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::*;

/// The longest server-wide duration (`request_timeout`, `shutdown_timeout`, ...).
pub const MAX_SERVER_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// The most HTTP worker threads.
pub const MAX_HTTP_WORKERS: usize = 1024;
/// The largest `max_body_bytes`.
pub const MAX_BODY_BYTES: usize = 1 << 30;

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Bearer token of the admin API. Without one, the admin API is open when the server
    /// listens on loopback only, and disabled otherwise.
    pub admin_token: Option<String>,
    /// Allow a non-loopback listen address without API keys or an admin token.
    pub insecure: bool,
    /// The largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// How long a request may wait for a replica before it fails with
    /// `deadline_exceeded`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// On shutdown, how long in-flight requests get to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// A `: keep-alive` SSE comment is sent when nothing was sent for this long.
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    /// How often each deployment's autoscaler samples load and decides.
    #[serde(with = "humantime_serde")]
    pub autoscaler_tick: Duration,
    /// HTTP worker threads (default: one per CPU core).
    pub workers: Option<usize>,
    /// Bearer token that `/metrics` accepts (beside the admin token), for a scraper
    /// that should not hold the admin token.
    pub metrics_token: Option<String>,
    /// Serve `/metrics` to anyone who can reach the server, without a token (for a
    /// scraper on a private network). The metrics name tenants and deployments and show
    /// their traffic, so this is off by default: `/metrics` then asks for the metrics or
    /// the admin token, and is open without one only where the admin API is (no admin
    /// token, loopback only).
    pub metrics_public: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("the default listen address parses"),
            admin_token: None,
            insecure: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: Duration::from_secs(10 * 60),
            shutdown_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(10),
            autoscaler_tick: Duration::from_secs(1),
            workers: None,
            metrics_token: None,
            metrics_public: false,
        }
    }
}

impl ServerConfig {
    /// Checks the section; each error names its key.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.max_body_bytes == 0 {
            errors.push("server.max_body_bytes must be at least 1".to_string());
        }
        for (key, value) in [
            ("server.request_timeout", self.request_timeout),
            ("server.keep_alive_interval", self.keep_alive_interval),
            ("server.autoscaler_tick", self.autoscaler_tick),
        ] {
            if value.is_zero() {
                errors.push(format!("{key} must be longer than 0s"));
            }
        }
        for (key, value, max) in [
            ("server.request_timeout", self.request_timeout, MAX_SERVER_DURATION),
            ("server.shutdown_timeout", self.shutdown_timeout, MAX_SERVER_DURATION),
            ("server.keep_alive_interval", self.keep_alive_interval, MAX_SERVER_DURATION),
            ("server.autoscaler_tick", self.autoscaler_tick, Duration::from_secs(60)),
        ] {
            errors.extend(at_most(key, value, max));
        }
        if self.workers == Some(0) || self.workers.is_some_and(|workers| workers > MAX_HTTP_WORKERS) {
            errors.push(format!("server.workers must be between 1 and {MAX_HTTP_WORKERS}"));
        }
        if self.max_body_bytes > MAX_BODY_BYTES {
            errors.push(format!("server.max_body_bytes must be at most {MAX_BODY_BYTES} (1 GiB)"));
        }
        if self.admin_token.as_deref().is_some_and(|token| token.trim().is_empty()) {
            errors.push("server.admin_token must not be empty".to_string());
        }
        if self.metrics_token.as_deref().is_some_and(|token| token.trim().is_empty()) {
            errors.push("server.metrics_token must not be empty".to_string());
        }
        errors
    }
}

/// `key (value) must be at most max`, when it is not.
pub(super) fn at_most(key: &str, value: Duration, max: Duration) -> Option<String> {
    (value > max).then(|| {
        format!(
            "{key} ({}) must be at most {}",
            humantime::format_duration(value),
            humantime::format_duration(max)
        )
    })
}
