//! The `Queue` trait: how gateways hand jobs to replicas and read their output back.
//!
//! The semantics are those of Redis Streams with a consumer group, plus fencing:
//! - `enqueue` appends a job to its deployment's queue, refusing it past the admission
//!   limits (`QueueError::Full`) instead of growing without bound.
//! - `lease` hands up to `max_jobs` waiting jobs to one consumer, each under a lease
//!   that expires after `ttl` unless `renew`ed. It waits up to `block` for work.
//!   Service order: handed-back and redelivered jobs first (the latest hand-back first),
//!   then new jobs by [`Priority`](crate::Priority) (`high`, `normal`, `low`), oldest
//!   first within a priority. `position` and `Enqueued::position` are positions in that
//!   order.
//! - `ack` ends a job; `release` hands an unfinished job back (a draining replica that
//!   must not start it) so another consumer takes it at once.
//! - `reclaim_expired` redelivers jobs whose lease expired (their consumer died) with a
//!   bumped epoch. Writes carry their [`LeaseRef`]; a write from an older epoch is
//!   `Fenced`, so a stalled consumer that wakes up cannot corrupt the stream. A job
//!   delivered `max_deliveries` times is failed (dead-lettered) instead.
//! - Each job has an output stream of [`SequencedEvent`]s; `read_output` returns what
//!   follows a sequence number, so a reader that reconnects neither misses nor repeats
//!   an event. A cancelled job's writer learns it from `append_output`'s answer.
//! - A client may resume a job's stream while its output is kept: `output_owner` says
//!   whose it is (the tenant, checked by the gateway), `attach_reader` counts the
//!   readers that took it over, so the reader a client left knows whether someone
//!   resumed it before it cancels the job.
//! - Replicas publish a [`ReplicaReport`] (cached prefix blocks, load) through the queue
//!   they lease from; gateways read them to route jobs ([`crate::routing`]).

use std::time::Duration;

use async_trait::async_trait;

use crate::job::{AdmissionLimits, Enqueued, Job, Lease, LeaseRef, OutputOwner, QueueDepth};
use crate::replica_report::{PrefixBlocks, ReplicaReport};
use swell_protocol::{OutputEvent, SequencedEvent};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the queue of deployment {deployment} is full ({depth} waiting)")]
    Full { deployment: String, depth: u64 },
    #[error("no such job: {0}")]
    UnknownJob(String),
    #[error("a job with id {0} already exists")]
    DuplicateJob(String),
    #[error("queue backend unavailable: {0}")]
    Unavailable(String),
}

impl QueueError {
    /// Stable code, used as the API error code and metric label.
    pub fn code(&self) -> &'static str {
        match self {
            QueueError::Full { .. } => "queue_full",
            QueueError::UnknownJob(_) => "unknown_job",
            QueueError::DuplicateJob(_) => "duplicate_job",
            QueueError::Unavailable(_) => "queue_unavailable",
        }
    }
}

/// What a write under a lease learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored; the value is the sequence number of the last stored event.
    Accepted(u64),
    /// The job was cancelled (its client went away), or ended by the queue (Redis lost
    /// output it had acknowledged, in a failover: the job ended with `output_lost`):
    /// stop working on it.
    Cancelled,
    /// The lease was superseded by a newer attempt: stop working on it, write nothing.
    Fenced,
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Append a job to its deployment's queue.
    async fn enqueue(&self, job: Job, limits: AdmissionLimits) -> Result<Enqueued, QueueError>;

    /// 1-based position of a waiting job in its deployment's service order (handed-back
    /// jobs, then the waiting jobs of higher priorities, then those ahead of it in its
    /// own); `None` once leased (or finished). `Err(UnknownJob)` when the deployment's
    /// queue holds no record of the job: never enqueued, finished and forgotten (its
    /// output says so), or lost (a Redis failover or restart without its data).
    async fn position(&self, deployment: &str, job_id: &str) -> Result<Option<u64>, QueueError>;

    async fn depth(&self, deployment: &str) -> Result<QueueDepth, QueueError>;

    /// Lease up to `max_jobs` waiting jobs in service order (handed-back jobs, then by
    /// priority, oldest first within one), waiting up to `block` for one.
    async fn lease(
        &self,
        deployment: &str,
        consumer: &str,
        max_jobs: usize,
        ttl: Duration,
        block: Duration,
    ) -> Result<Vec<Lease>, QueueError>;

    /// Extend leases by `ttl`. Answers, per lease, whether it is still held.
    async fn renew(&self, leases: &[LeaseRef], ttl: Duration) -> Result<Vec<bool>, QueueError>;

    /// Finish a job. Fenced (`Ok(false)`) if the lease was superseded.
    async fn ack(&self, lease: &LeaseRef) -> Result<bool, QueueError>;

    /// Hand a leased job back to the head of its queue, unstarted or partly done (its
    /// output so far is kept and the next attempt resumes after it).
    async fn release(&self, lease: &LeaseRef) -> Result<bool, QueueError>;

    /// Redeliver jobs of `deployment` whose lease expired. Answers how many were
    /// redelivered; jobs past `max_deliveries` are failed with `delivery_limit`.
    async fn reclaim_expired(&self, deployment: &str) -> Result<u64, QueueError>;

    /// Cancel a job wherever it is: a waiting job leaves the queue, a leased one is
    /// flagged so its writer stops at its next append. Idempotent.
    async fn cancel(&self, job_id: &str) -> Result<(), QueueError>;

    /// Append events to a job's output stream under a lease (fenced by epoch). `after` is
    /// the last sequence number the writer knows stored (its lease's `resume_after_seq`,
    /// then each accepted append's answer): when the output already ends `events` later
    /// under this lease, an earlier try of this same append was stored (its reply was
    /// lost, or it ran late) and it is not stored again (answer: `Accepted` of that
    /// end); output ending anywhere else answers `Fenced`.
    async fn append_output(
        &self,
        lease: &LeaseRef,
        after: u64,
        events: Vec<OutputEvent>,
    ) -> Result<AppendOutcome, QueueError>;

    /// Publish a replica's [`ReplicaReport`] (replacing its previous one), with its
    /// [`PrefixBlocks`] when they changed (`report.prefix_version` names them), for the
    /// gateways' cache-aware routing.
    async fn report_replica(
        &self,
        deployment: &str,
        report: &ReplicaReport,
        prefix: Option<&PrefixBlocks>,
    ) -> Result<(), QueueError>;

    /// Remove a replica's report and blocks (it retired).
    async fn forget_replica(&self, deployment: &str, replica: &str) -> Result<(), QueueError>;

    /// The fresh reports of a deployment's replicas ([`ReplicaReport::is_fresh`]).
    async fn replica_reports(&self, deployment: &str) -> Result<Vec<ReplicaReport>, QueueError>;

    /// The blocks a replica last published, if any.
    async fn replica_prefix(&self, deployment: &str, replica: &str) -> Result<Option<PrefixBlocks>, QueueError>;

    /// Events after sequence number `after_seq`, waiting up to `block` for one.
    /// An empty answer means nothing arrived in time.
    async fn read_output(
        &self,
        job_id: &str,
        after_seq: u64,
        block: Duration,
    ) -> Result<Vec<SequencedEvent>, QueueError>;

    /// Whose the job's output stream is, while it is kept (`None`: unknown job, or its
    /// output expired).
    async fn output_owner(&self, job_id: &str) -> Result<Option<OutputOwner>, QueueError>;

    /// A new reader takes the job's output stream over (a client resumed it). Answers
    /// the new [`OutputOwner::readers`] count (`None`: unknown job or expired output).
    async fn attach_reader(&self, job_id: &str) -> Result<Option<u64>, QueueError>;

    /// Whether each call is a network round trip (Redis), so that callers gather what
    /// they can into fewer calls even at the cost of a moment's wait. In memory: no.
    fn is_remote(&self) -> bool {
        false
    }
}
