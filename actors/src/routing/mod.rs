//! Cache-aware routing at the gateway: [`DeploymentRouter`] picks, for each job as it is
//! enqueued, the replica expected to give its first token soonest (the prompt prefix it
//! holds against the prefill queued on it, `swell_router`'s choice), and promises the
//! job to it for a bounded time (`Job::route`); the queue lets only that replica take
//! it until the promise lapses or the replica stops taking work
//! (`swell_cluster::routing`), so no job waits past the bound.
//!
//! The replicas' state comes from their reports (`swell_cluster::ReplicaReport`), read
//! through the queue at most every [`RoutingConfig::refresh_every`], on the request path
//! of the request that finds the view old (one `HGETALL` on Redis, and one `HGET` per
//! replica whose blocks changed; others use the view as it is meanwhile). Routing never fails a request: with no view, or the reports
//! unreadable, a job goes unrouted (any replica).
//!
//! # Layout
//! - [`book`]: [`RouteBook`], the pure view of replicas and promises.
//! - this file: [`DeploymentRouter`], the book behind a lock, refreshed from the queue.

pub mod book;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use std::collections::HashMap;

use swell_cluster::{JobRoute, PrefixBlocks, Queue, QueueError, ReplicaReport};
use swell_router::{RoutingPolicy, DEFAULT_PROMISE_BOUND};
use tokio::time::Instant;

pub use book::{RouteBook, RouteRequest, StartOutcome};

use crate::metrics as m;

/// How a deployment routes its jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    pub policy: RoutingPolicy,
    /// How long a routed job waits for its replica before any replica may take it.
    pub promise_bound: Duration,
    /// How old the replica view may grow before a request refreshes it.
    pub refresh_every: Duration,
    /// Tokens per block of the prompt's block names.
    pub block_tokens: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            policy: RoutingPolicy::CacheAware,
            promise_bound: DEFAULT_PROMISE_BOUND,
            refresh_every: Duration::from_millis(200),
            block_tokens: 16,
        }
    }
}

/// One deployment's router at one gateway.
pub struct DeploymentRouter {
    deployment: String,
    queue: Arc<dyn Queue>,
    config: RoutingConfig,
    book: Mutex<RouteBook>,
    /// When the view was last refreshed (`None`: never).
    refreshed_at: Mutex<Option<Instant>>,
    /// Held while a refresh is in flight, so requests do not all refresh at once.
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for DeploymentRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentRouter").field("deployment", &self.deployment).field("config", &self.config).finish()
    }
}

impl DeploymentRouter {
    pub fn new(deployment: &str, queue: Arc<dyn Queue>, config: RoutingConfig) -> Self {
        let book = RouteBook::new(config.policy, config.block_tokens, config.promise_bound);
        Self {
            deployment: deployment.to_string(),
            queue,
            config,
            book: Mutex::new(book),
            refreshed_at: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// The queue it reads the replica reports from.
    pub fn queue(&self) -> Arc<dyn Queue> {
        self.queue.clone()
    }

    /// Refresh the replica view if it is older than `refresh_every` and no other request
    /// is refreshing it.
    async fn refresh_if_old(&self) {
        let fresh = |at: Option<Instant>| at.is_some_and(|at| at.elapsed() < self.config.refresh_every);
        if fresh(*self.refreshed_at.lock()) {
            return;
        }
        let Ok(_guard) = self.refreshing.try_lock() else { return };
        if fresh(*self.refreshed_at.lock()) {
            return;
        }
        match tokio::time::timeout(Duration::from_millis(500), self.read_view()).await {
            Ok(Ok((reports, prefixes))) => self.book.lock().apply_reports(reports, prefixes),
            Ok(Err(error)) => tracing::debug!(%error, deployment = %self.deployment, "replica reports unreadable; routing on the last view"),
            Err(_) => tracing::debug!(deployment = %self.deployment, "replica reports took too long; routing on the last view"),
        }
        *self.refreshed_at.lock() = Some(Instant::now());
    }

    /// The replicas' reports, and the blocks of those whose version the view lacks.
    async fn read_view(&self) -> Result<(Vec<ReplicaReport>, HashMap<String, PrefixBlocks>), QueueError> {
        let reports = self.queue.replica_reports(&self.deployment).await?;
        let wanted: Vec<String> = self.book.lock().wanted_prefixes(&reports).into_iter().map(String::from).collect();
        let mut prefixes = HashMap::with_capacity(wanted.len());
        for replica in wanted {
            if let Some(prefix) = self.queue.replica_prefix(&self.deployment, &replica).await? {
                prefixes.insert(replica, prefix);
            }
        }
        Ok((reports, prefixes))
    }

    /// The route for a new job (`None`: any replica).
    pub async fn route(&self, job_id: &str, request: &RouteRequest) -> Option<JobRoute> {
        if self.config.policy == RoutingPolicy::AnyReplica {
            return None;
        }
        self.refresh_if_old().await;
        let route = self.book.lock().route(job_id, request, swell_cluster::unix_millis());
        m::job_routed(&self.deployment, route.is_some());
        route
    }

    /// Slots free and busy on the replicas that take work, from their reports (read
    /// now if the view is old): what a gateway's wait estimates count.
    pub async fn reported_slots(&self) -> (u64, u64) {
        self.refresh_if_old().await;
        self.book.lock().reported_slots()
    }

    /// The job started on `replica`.
    pub fn started(&self, job_id: &str, replica: &str, request: &RouteRequest) {
        let outcome = self.book.lock().started(job_id, replica, request, swell_cluster::unix_millis());
        if outcome != StartOutcome::Unrouted {
            m::routed_job_started(&self.deployment, outcome == StartOutcome::Kept);
        }
    }

    /// The job ended before it started.
    pub fn ended(&self, job_id: &str) {
        self.book.lock().ended(job_id);
    }
}
