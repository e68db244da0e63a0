//! This node's part in a cluster's coordination (only with `--redis`).
//!
//! Every node runs a [`Coordinator`] (heartbeat with this node's capacity and load, the
//! leader election, and, while leading, placement):
//!
//! - **Every node follows its assignment.** The placement stored in Redis says how many
//!   replicas of each deployment this node runs; [`ClusterNode`] passes each count to the
//!   deployment's supervisor ([`SetAssignment`]), which starts or drains replicas to
//!   match. A node reports each deployment's load (queue depth, requests in flight,
//!   replicas ready and starting, counters of arrivals and tokens) in its heartbeat.
//! - **The leader decides and places.** While this node leads, the coordinator calls
//!   [`ClusterPlanner::plan`] every tick: one [`Autoscaler`] per deployment (the same
//!   policy code as a single node's, with the deployment's own policy) is fed one sample
//!   built from the live nodes' heartbeats (the queue depth as the nodes see it, requests
//!   in flight summed, arrivals and tokens differenced per node between heartbeats) and
//!   decides the cluster's replica count; [`place`](swell_cluster::place) spreads the
//!   replicas over the worker nodes with room for them (see `cluster/src/placement.rs`).
//!   Replicas placed but not yet reported ready count as starting (coming capacity).
//! - **Failures.** A node whose heartbeat stops is declared dead after `cluster.node_ttl`
//!   and its replicas are placed on the others at the leader's next tick; its jobs come
//!   back to the queue when their leases expire. A dead leader is replaced within
//!   `cluster.leader_lease_ttl`; the new leader's autoscalers start without history, so
//!   they keep the placed count until their windows fill (they never jump on a
//!   failover). While Redis is unreachable every node keeps its last assignment.
//!
//! `GET /admin/v1/cluster` shows this node's view ([`ClusterNode::status`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use swell_autoscaler::{Autoscaler, Decision, LoadSample, ReplicaCounts};
use swell_actors::supervisor::{with_reserved_floor, SetAssignment};
use swell_autoscaler::ReplicaCapacity;
use swell_cluster::{
    ClusterView, CoordinationClient, Coordinator, CoordinatorHandle, DeploymentTarget, LeaderState, NodeCapacity,
    NodeInfo, Placement, PlacementStore, ReplicaRequirement,
};
use tokio::time::Instant;

use swell_cluster::NodeRole;
use crate::deployments::DeploymentHandle;
use crate::state::AppState;

/// What the leader decided for one deployment at its last tick.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterDecision {
    /// Unix ms.
    pub at_ms: u64,
    /// Replicas placed before the decision.
    pub placed: u32,
    /// Of those, reported ready by their nodes.
    pub ready: u32,
    /// The cluster-wide sample the decision was made on.
    pub queued: u64,
    pub in_flight: u64,
    pub decision: Decision,
}

type Decisions = Arc<Mutex<BTreeMap<String, ClusterDecision>>>;

/// The running coordination of this node. Dropped without [`shutdown`](Self::shutdown),
/// its tasks stop and its record and lease expire.
pub struct ClusterNode {
    node_id: String,
    role: NodeRole,
    handle: Mutex<Option<CoordinatorHandle>>,
    follower: tokio::task::JoinHandle<()>,
    store: PlacementStore,
    decisions: Decisions,
}

/// `GET /admin/v1/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub node_id: String,
    pub role: &'static str,
    /// Whether this node leads, and the leader it knows of otherwise.
    pub leader: Option<String>,
    pub is_leader: bool,
    /// Deployment → replicas placed on this node.
    pub assignment: BTreeMap<String, u32>,
    /// The whole stored placement: node → deployment → replicas (`null` when none is
    /// stored or Redis does not answer).
    pub placement: Option<BTreeMap<String, BTreeMap<String, u32>>>,
    pub placement_version: Option<u64>,
    /// The leader's last decision per deployment (only on the leader).
    pub decisions: BTreeMap<String, ClusterDecision>,
}

impl ClusterNode {
    /// Registers this node and starts its coordinator and the task that passes its
    /// assignment on to the deployments' supervisors.
    pub async fn start(
        state: &Arc<AppState>,
        address: Option<String>,
    ) -> Result<ClusterNode, swell_cluster::CoordinationError> {
        let config = state.config.cluster.coordination_config().expect("a cluster node has a redis url");
        let interval = config.heartbeat_interval;
        let client = CoordinationClient::connect(config).await?;
        let node_id = state.node.node_id.clone();
        let role = state.node.role;
        let capacity = node_capacity(state);
        tracing::info!(node = %node_id, cpu_slots = capacity.cpu_slots, gpus = capacity.gpu_count(), "joining the cluster");
        let started_at_ms = swell_cluster::unix_millis();
        let weak = Arc::downgrade(state);
        let info_state = weak.clone();
        let info_id = node_id.clone();
        let node_info = move || NodeInfo {
            node_id: info_id.clone(),
            role,
            capacity: capacity.clone(),
            running: info_state.upgrade().map(|state| running(&state)).unwrap_or_default(),
            started_at_ms,
            version: env!("CARGO_PKG_VERSION").to_string(),
            address: address.clone(),
        };
        let decisions = Decisions::default();
        let mut planner = ClusterPlanner::new(weak.clone(), interval, decisions.clone());
        let coordinator = Coordinator::new(client.clone(), node_info, move |view: &ClusterView, current: &Placement| {
            planner.plan(view, current)
        });
        if let Err(error) = coordinator.register().await {
            tracing::warn!(%error, "could not register with the cluster yet; the heartbeat will retry");
        }
        let handle = coordinator.spawn();
        let follower = tokio::spawn(follow_assignment(handle.assignment(), weak, interval));
        Ok(ClusterNode {
            node_id,
            role,
            handle: Mutex::new(Some(handle)),
            follower,
            store: PlacementStore::new(client),
            decisions,
        })
    }

    /// This node's view of the cluster.
    pub async fn status(&self) -> ClusterStatus {
        let watched = self.handle.lock().as_ref().map(|handle| (handle.leadership(), handle.assignment()));
        let (leader, is_leader, assignment) = match watched {
            Some((leadership, assignment)) => {
                let leadership = leadership.borrow().clone();
                let (leader, is_leader) = match leadership {
                    LeaderState::Leader { .. } => (Some(self.node_id.clone()), true),
                    LeaderState::Follower { leader } => (leader.map(|holder| holder.node_id), false),
                };
                let deployments = assignment.borrow().deployments.clone();
                (leader, is_leader, deployments)
            }
            None => (None, false, BTreeMap::new()),
        };
        let stored = self.store.read().await.ok().flatten();
        ClusterStatus {
            node_id: self.node_id.clone(),
            role: self.role.as_str(),
            leader,
            is_leader,
            assignment,
            placement_version: stored.as_ref().map(|stored| stored.version),
            placement: stored.map(|stored| stored.placement.nodes),
            decisions: if is_leader { self.decisions.lock().clone() } else { BTreeMap::new() },
        }
    }

    /// Leaves the cluster: gives up the leader lease (if held) and removes this node's
    /// record, so the leader re-places its replicas at once.
    pub async fn shutdown(&self) {
        self.follower.abort();
        let handle = self.handle.lock().take();
        if let Some(handle) = handle {
            handle.shutdown().await;
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// CPU slots from the config; GPUs as the CUDA driver reports them (none without one).
/// A gateway offers nothing.
fn node_capacity(state: &AppState) -> NodeCapacity {
    if !state.node.role.runs_replicas() {
        return NodeCapacity::default();
    }
    let gpus = match swell_workers::llm::cuda::discover() {
        Ok(gpus) => gpus,
        Err(error) => {
            tracing::warn!(%error, "GPU discovery failed; offering CPU slots only");
            Vec::new()
        }
    };
    NodeCapacity::with_gpus(
        state.config.cluster.effective_cpu_slots(),
        gpus.into_iter().map(|gpu| (gpu.name, gpu.total_memory)),
    )
}

/// Each deployment's load on this node, as its supervisor last wrote it.
fn running(state: &AppState) -> BTreeMap<String, swell_cluster::DeploymentLoad> {
    state
        .deployments
        .list()
        .into_iter()
        .filter_map(|deployment| {
            let report = deployment.load_report.as_ref()?;
            Some((deployment.name.clone(), report.lock().clone()))
        })
        .collect()
}

/// What one replica of a deployment needs of a node.
pub fn requirement(deployment: &DeploymentHandle) -> ReplicaRequirement {
    let gpus = deployment.description.gpus_per_replica;
    let placement = &deployment.config.placement;
    let default_cpu = if gpus == 0 && matches!(deployment.config.engine.as_str(), "llm" | "external") { 1 } else { 0 };
    let mut requirement = if gpus > 0 {
        ReplicaRequirement::gpus(placement.gpu_kind.as_deref(), gpus)
    } else {
        ReplicaRequirement::cpu(0)
    };
    requirement.cpu_slots = placement.cpu_slots.unwrap_or(default_cpu);
    requirement
}

/// Passes this node's assignment to the supervisors: at every change, and again every
/// interval (for deployments created since, and supervisors restarted).
async fn follow_assignment(
    mut assignment: tokio::sync::watch::Receiver<swell_cluster::NodeAssignment>,
    state: Weak<AppState>,
    interval: Duration,
) {
    loop {
        let wanted = assignment.borrow_and_update().clone();
        let Some(state) = state.upgrade() else { return };
        // Nothing was ever placed: keep what runs (nothing, on a fresh node).
        if wanted.version > 0 {
            for deployment in state.deployments.list() {
                let replicas = wanted.deployments.get(&deployment.name).copied().unwrap_or(0);
                deployment.supervisor.do_send(SetAssignment { replicas });
            }
        }
        drop(state);
        tokio::select! {
            changed = assignment.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Counters of one node's last heartbeat for one deployment.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    arrivals: u64,
    prompt_tokens: u64,
    generated_tokens: u64,
    started: u64,
    started_wait_ms: u64,
}

impl Counters {
    fn of(load: &swell_cluster::DeploymentLoad) -> Self {
        Self {
            arrivals: load.arrivals_total,
            prompt_tokens: load.prompt_tokens_total,
            generated_tokens: load.generated_tokens_total,
            started: load.started_total,
            started_wait_ms: load.started_wait_ms_total,
        }
    }

    /// `self - before`, counter by counter; a counter that went down was reset (a
    /// re-created deployment) and counts from 0.
    fn since(self, before: Counters) -> Counters {
        let delta = |now: u64, before: u64| if now >= before { now - before } else { now };
        Counters {
            arrivals: delta(self.arrivals, before.arrivals),
            prompt_tokens: delta(self.prompt_tokens, before.prompt_tokens),
            generated_tokens: delta(self.generated_tokens, before.generated_tokens),
            started: delta(self.started, before.started),
            started_wait_ms: delta(self.started_wait_ms, before.started_wait_ms),
        }
    }

    fn add(&mut self, other: Counters) {
        self.arrivals += other.arrivals;
        self.prompt_tokens += other.prompt_tokens;
        self.generated_tokens += other.generated_tokens;
        self.started += other.started;
        self.started_wait_ms += other.started_wait_ms;
    }
}

/// The leader's autoscalers: one per deployment, over the cluster-wide load.
pub struct ClusterPlanner {
    state: Weak<AppState>,
    origin: Instant,
    interval: Duration,
    last_plan: Option<Instant>,
    autoscalers: BTreeMap<String, Autoscaler>,
    /// (node, deployment) → counters of its last heartbeat.
    seen: BTreeMap<(String, String), Counters>,
    decisions: Decisions,
}

impl ClusterPlanner {
    fn new(state: Weak<AppState>, interval: Duration, decisions: Decisions) -> Self {
        Self {
            state,
            origin: Instant::now(),
            interval,
            last_plan: None,
            autoscalers: BTreeMap::new(),
            seen: BTreeMap::new(),
            decisions,
        }
    }

    /// One leader tick: every deployment's cluster-wide sample, decision and target.
    pub fn plan(&mut self, view: &ClusterView, current: &Placement) -> Vec<DeploymentTarget> {
        let Some(state) = self.state.upgrade() else {
            // Shutting down: keep what is placed.
            return Vec::new();
        };
        // Leadership regained after a gap: the history is stale (the counters would
        // count everything since as one sample); start over.
        if self.last_plan.is_some_and(|at| at.elapsed() > self.interval * 3) {
            self.autoscalers.clear();
            self.seen.clear();
            self.decisions.lock().clear();
        }
        self.last_plan = Some(Instant::now());
        let now = self.origin.elapsed();
        let deployments = state.deployments.list();
        self.autoscalers.retain(|name, _| deployments.iter().any(|deployment| &deployment.name == name));
        self.decisions.lock().retain(|name, _| deployments.iter().any(|deployment| &deployment.name == name));
        self.seen.retain(|(node, _), _| view.node(node).is_some());

        let mut targets = Vec::with_capacity(deployments.len());
        for deployment in deployments {
            let name = deployment.name.clone();
            let load = view.deployment_load(&name);
            let counters = self.deltas(view, &name);
            let policy = &with_reserved_floor(&deployment.config.autoscaling, state.tenants.reserved_replicas(&name, None));
            let cold_start = deployment.description.expected_cold_start;
            let autoscaler = self
                .autoscalers
                .entry(name.clone())
                .or_insert_with(|| {
                    Autoscaler::new(policy.clone())
                        .with_expected_cold_start(cold_start)
                        .with_capacity(ReplicaCapacity::from_description(&deployment.description))
                });
            if autoscaler.policy() != policy {
                autoscaler.set_policy(policy.clone());
            }
            autoscaler.record(LoadSample {
                at: now,
                queued: load.queued,
                running: load.in_flight,
                arrivals: counters.arrivals,
                prompt_tokens: counters.prompt_tokens,
                generated_tokens: counters.generated_tokens,
                oldest_wait: Duration::from_millis(load.oldest_wait_ms.unwrap_or(0)),
                started: counters.started,
                started_wait: Duration::from_millis(counters.started_wait_ms),
                kv_tokens_used: load.kv_tokens_used,
                kv_capacity_tokens: load.kv_capacity_tokens,
                ready_replicas: load.ready,
                unix_ms: Some(swell_cluster::unix_millis()),
            });
            let placed = current.replicas(&name);
            let ready = load.ready.min(placed);
            let counts = ReplicaCounts { ready, starting: placed - ready, draining: load.draining };
            let decision = autoscaler.decide(now, counts);
            // The cluster's decision (this node leads): the autoscaler metrics, labelled
            // by deployment like a single node's.
            swell_actors::metrics::autoscaler_decision(&name, &decision);
            if decision.desired != placed {
                autoscaler.scaled(now, placed, decision.desired);
                tracing::info!(
                    deployment = %name,
                    from = placed,
                    to = decision.desired,
                    reason = decision.reason.as_str(),
                    detail = %decision.detail,
                    "cluster scale"
                );
            }
            targets.push(DeploymentTarget {
                deployment: name.clone(),
                replicas: decision.desired,
                requirement: requirement(&deployment),
            });
            self.decisions.lock().insert(
                name,
                ClusterDecision {
                    at_ms: swell_cluster::unix_millis(),
                    placed,
                    ready,
                    queued: load.queued,
                    in_flight: load.in_flight,
                    decision,
                },
            );
        }
        targets
    }

    /// The counters' growth since the previous heartbeat of each node (nothing for a
    /// node seen for the first time: its counters are the baseline).
    fn deltas(&mut self, view: &ClusterView, deployment: &str) -> Counters {
        let mut total = Counters::default();
        for node in &view.live {
            let Some(load) = node.info.running.get(deployment) else { continue };
            let now = Counters::of(load);
            let key = (node.info.node_id.clone(), deployment.to_string());
            if let Some(before) = self.seen.insert(key, now) {
                total.add(now.since(before));
            }
        }
        total
    }
}
