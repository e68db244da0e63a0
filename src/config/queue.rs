//! `[queue]`: the per-deployment queue: its depth, leases, drain grace and how long
//! finished output is kept.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::*;

/// `[queue]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Requests waiting per deployment before new ones get 503 `queue_full` (a
    /// deployment's `max_queue_depth` overrides it).
    pub max_depth_per_deployment: u64,
    /// A replica's lease on a request lasts this long unless renewed; a replica that
    /// dies loses its requests to another after this.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long a retiring replica lets its in-flight requests finish; what is still
    /// running then goes back to the queue and resumes on another replica after the
    /// tokens already delivered (`tests/drain_migration.rs`).
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Embedded mode: how long a finished request's output stays in memory (readable
    /// by a client that reconnects to its stream) before it is dropped. With a shared
    /// Redis the same role is `cluster.output_ttl`.
    #[serde(with = "humantime_serde")]
    pub output_retention: Duration,
    /// How long a streamed request (SSE, WebSocket) runs on after its client went away,
    /// waiting for the client to resume the stream (`GET /v1/streams/{id}`); cancelled
    /// if nobody did by then. `"0s"`: cancelled at once.
    #[serde(with = "humantime_serde")]
    pub resume_grace: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_depth_per_deployment: DEFAULT_MAX_QUEUE_DEPTH,
            lease_ttl: Duration::from_secs(30),
            drain_grace: Duration::from_secs(5 * 60),
            output_retention: Duration::from_secs(60),
            resume_grace: Duration::from_secs(10),
        }
    }
}

impl QueueConfig {
    /// Checks the section; each error names its key.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.lease_ttl.is_zero() {
            errors.push("queue.lease_ttl must be longer than 0s".to_string());
        }
        for (key, value) in [
            ("queue.lease_ttl", self.lease_ttl),
            ("queue.drain_grace", self.drain_grace),
            ("queue.output_retention", self.output_retention),
            ("queue.resume_grace", self.resume_grace),
        ] {
            errors.extend(super::server::at_most(key, value, MAX_SERVER_DURATION));
        }
        if self.max_depth_per_deployment == 0 {
            errors.push("queue.max_depth_per_deployment must be at least 1".to_string());
        }
        errors
    }
}
