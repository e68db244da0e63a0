//! A queued job, a lease on it, and what enqueueing and inspecting a queue answer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use swell_protocol::GenerationRequest;

use crate::routing::JobRoute;

pub use swell_protocol::JobId;

/// One request waiting in (or leased from) a deployment's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub deployment: String,
    pub tenant: String,
    pub request: GenerationRequest,
    /// When the gateway enqueued it (Unix ms).
    pub enqueued_at_ms: u64,
    /// After this (Unix ms) a job still waiting is dropped with `deadline_exceeded`.
    pub deadline_ms: Option<u64>,
    /// Service class: waiting jobs of a higher priority are leased first (FIFO within
    /// a priority); handed-back and redelivered jobs still go before any new job.
    #[serde(default)]
    pub priority: Priority,
    /// The replica the gateway would like to run it, for a bounded time
    /// ([`crate::routing`]); `None`: any replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<JobRoute>,
    /// What the gateway needs to encode the job's output again for a client that
    /// resumes its stream (opaque to the queue; kept as long as the output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_meta: Option<String>,
}

/// Whose a job's output stream is, for a client that resumes it
/// ([`crate::Queue::output_owner`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputOwner {
    pub tenant: String,
    pub deployment: String,
    /// The job's [`Job::stream_meta`].
    pub stream_meta: Option<String>,
    /// How many readers attached after the first ([`crate::Queue::attach_reader`]).
    pub readers: u64,
}

/// A job's service class (its tenant's `priority` setting). Leasing serves every waiting
/// `High` job before any `Normal` one and every `Normal` before any `Low`; within a
/// priority, oldest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    /// Every priority in service order (highest first).
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The name used in config, the admin API and queue keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Index in service order (0 = served first).
    pub fn rank(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits checked atomically with the enqueue itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Maximum jobs waiting (not yet leased) in the deployment's queue.
    pub max_queue_depth: u64,
}

/// What a successful enqueue answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// 1-based position in the deployment's service order (see [`crate::Queue::position`]).
    pub position: u64,
}

/// How much is in a deployment's queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    /// Jobs waiting for a replica.
    pub waiting: u64,
    /// Jobs leased by a replica and not yet acknowledged.
    pub leased: u64,
    /// Enqueued time (Unix ms) of the oldest waiting job.
    pub oldest_waiting_enqueued_at_ms: Option<u64>,
}

/// Names one lease: the job, the consumer holding it and the epoch it was granted in.
/// Every write made under a lease carries it, so a write from a superseded attempt
/// (an older epoch) is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseRef {
    pub job_id: JobId,
    pub deployment: String,
    pub consumer: String,
    pub epoch: u32,
}

/// A job together with the lease a consumer holds on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub job: Job,
    pub lease: LeaseRef,
    /// How many times the job has been delivered, this delivery included.
    pub deliveries: u32,
    /// How long the lease lasts unless renewed.
    pub ttl: Duration,
    /// Tokens an earlier attempt already delivered to the client (a redelivered job).
    /// The replica continues after them (prompt + these, re-prefilled) so the client's
    /// stream neither repeats nor misses a token; `max_tokens` counts them.
    pub resume_tokens: Vec<u32>,
    /// The last sequence number already in the job's output stream.
    pub resume_after_seq: u64,
}
