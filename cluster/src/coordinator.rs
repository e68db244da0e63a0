//! The loop every node of a distributed Swell runs: heartbeat, take part in the election,
//! place replicas when leading, and publish this node's assignment.
//!
//! [`Coordinator`] is a plain struct whose [`tick`](Coordinator::tick) does one round;
//! [`Coordinator::spawn`] wraps it in a task that ticks every
//! [`heartbeat_interval`](crate::coordination::CoordinationConfig::heartbeat_interval).
//!
//! One tick:
//! 1. heartbeat this node's [`NodeInfo`] (asked fresh from the caller, so it carries the
//!    current load);
//! 2. renew or try to acquire the leader lease;
//! 3. if leading: read the live nodes and the stored placement (or, if none, the replicas
//!    the nodes report running), ask the caller's *planner* for each deployment's target
//!    (desired replicas from cluster-wide metrics, e.g. an autoscaler per deployment),
//!    compute the placement with [`place`] and write it, fenced by the token. With no
//!    placement stored, a new leader first waits `node_ttl` after gaining the lease, so
//!    that every live node has heartbeated (after Redis lost its data, the nodes'
//!    records come back one heartbeat at a time, and a node not yet back would otherwise
//!    be taken for dead and its running replicas moved);
//! 4. read this node's assignment and publish it on a `watch` channel when it changed.
//!    While no placement is stored at all (a fresh cluster; Redis lost its data and no
//!    leader wrote since) the last assignment stays published: an empty store means
//!    "unknown", not "run nothing". After such a loss the version restarts from 1, so
//!    compare assignments, not only versions.
//!
//! ```no_run
//! # use swell_cluster::*;
//! # async fn run(client: CoordinationClient, info: NodeInfo) {
//! let coordinator = Coordinator::new(
//!     client,
//!     move || info.clone(), // the node's record, with its current load
//!     |view: &ClusterView, _current: &Placement| {
//!         vec![DeploymentTarget {
//!             deployment: "chat".into(),
//!             replicas: view.deployment_load("chat").replicas.max(1),
//!             requirement: ReplicaRequirement::cpu(1),
//!         }]
//!     },
//! );
//! let _ = coordinator.register().await; // optional: counted by a leader from now on
//! let handle = coordinator.spawn();
//! let mut assignment = handle.assignment();
//! while assignment.changed().await.is_ok() {
//!     let wanted = assignment.borrow().deployments.clone();
//!     // ... start or drain local replicas to match `wanted` ...
//! }
//! handle.shutdown().await; // releases the lease, deregisters
//! # }
//! ```
//!
//! When the leader dies, another node's tick acquires the lease within
//! `leader_lease_ttl` and places from then on; when a node dies, the leader re-places its
//! replicas at its first tick after the node is declared dead (within `node_ttl` of its
//! last heartbeat).

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::coordination::{CoordinationClient, CoordinationError};
use crate::leader::{LeaderElection, LeaderState, LeadershipChange};
use crate::membership::{ClusterView, Heartbeat, Membership, NodeInfo};
use crate::placement::{
    place, DeploymentTarget, NodeAssignment, Placement, PlacementNode, PlacementOutcome, PlacementStore, WriteOutcome,
};

type NodeInfoSource = Box<dyn Fn() -> NodeInfo + Send + Sync>;
type Planner = Box<dyn FnMut(&ClusterView, &Placement) -> Vec<DeploymentTarget> + Send>;

/// What one [`Coordinator::tick`] did.
#[derive(Debug, Default)]
pub struct CoordinatorTick {
    pub heartbeat: Option<Heartbeat>,
    pub leadership: Option<LeadershipChange>,
    /// Set when this node led and wrote a placement.
    pub placement: Option<(PlacementOutcome, WriteOutcome)>,
    /// What failed (the tick goes on with the next step where it can).
    pub errors: Vec<CoordinationError>,
}

/// One node's coordination state. See the module docs.
pub struct Coordinator {
    node_id: String,
    membership: Membership,
    election: LeaderElection,
    store: PlacementStore,
    node_info: NodeInfoSource,
    planner: Planner,
    interval: std::time::Duration,
    node_ttl: std::time::Duration,
    /// When this node last gained the lease.
    leading_since: Option<Instant>,
    assignment: watch::Sender<NodeAssignment>,
    leadership: watch::Sender<LeaderState>,
}

impl Coordinator {
    /// `node_info` is asked at every tick (its `node_id` must stay the same); `planner` is
    /// called at every tick this node leads.
    pub fn new(
        client: CoordinationClient,
        node_info: impl Fn() -> NodeInfo + Send + Sync + 'static,
        planner: impl FnMut(&ClusterView, &Placement) -> Vec<DeploymentTarget> + Send + 'static,
    ) -> Self {
        let node_id = node_info().node_id;
        let (assignment, _) =
            watch::channel(NodeAssignment { node_id: node_id.clone(), ..Default::default() });
        let (leadership, _) = watch::channel(LeaderState::Follower { leader: None });
        Self {
            membership: Membership::new(client.clone()),
            election: LeaderElection::new(client.clone(), node_id.clone()),
            store: PlacementStore::new(client.clone()),
            interval: client.config().heartbeat_interval,
            node_ttl: client.config().node_ttl,
            leading_since: None,
            node_id,
            node_info: Box::new(node_info),
            planner: Box::new(planner),
            assignment,
            leadership,
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's assignment; changes when the leader changes it.
    pub fn assignment(&self) -> watch::Receiver<NodeAssignment> {
        self.assignment.subscribe()
    }

    /// Whether this node leads (and with which token).
    pub fn leadership(&self) -> watch::Receiver<LeaderState> {
        self.leadership.subscribe()
    }

    /// Write this node's record now (before the first tick, so that a leader placing
    /// right away already counts this node). Optional: the first tick does it too.
    pub async fn register(&self) -> Result<Heartbeat, CoordinationError> {
        self.membership.register(&(self.node_info)()).await
    }

    /// One round: heartbeat, election, placement (if leading), read the assignment.
    pub async fn tick(&mut self) -> CoordinatorTick {
        let mut report = CoordinatorTick::default();
        let info = (self.node_info)();
        match self.membership.heartbeat(&info).await {
            Ok(heartbeat) => {
                if !heartbeat.record_existed {
                    tracing::info!(node_id = %self.node_id, "coordinator: node record (re)created");
                }
                report.heartbeat = Some(heartbeat);
            }
            Err(error) => report.errors.push(error),
        }

        let election = self.election.tick().await;
        report.errors.extend(election.error);
        report.leadership = election.change.clone();
        if let Some(change) = &election.change {
            tracing::info!(node_id = %self.node_id, ?change, "coordinator: leadership changed");
            self.leading_since = match change {
                LeadershipChange::Gained { .. } => Some(Instant::now()),
                LeadershipChange::Lost { .. } => None,
            };
        }
        self.leadership.send_if_modified(|state| replace_if_different(state, election.state));

        if let Some(token) = self.election.token() {
            match self.lead(token).await {
                Ok(written) => report.placement = written,
                Err(error) => {
                    if let CoordinationError::Fenced { .. } = error {
                        tracing::warn!(node_id = %self.node_id, token, %error, "coordinator: placement write fenced");
                    }
                    report.errors.push(error);
                }
            }
        }

        match self.store.read_node(&self.node_id).await {
            // No placement stored at all (a fresh cluster, or Redis lost its data and no
            // leader wrote again yet): "unknown", not "run nothing"; keep the last one.
            Ok(assignment) if assignment.version == 0 => {}
            Ok(assignment) => {
                self.assignment.send_if_modified(|current| replace_if_different(current, assignment));
            }
            Err(error) => report.errors.push(error),
        }
        report
    }

    /// The leader's step: plan, place, write (fenced).
    /// Answers `None` when it held off (see the module docs: no stored placement and
    /// leading for less than `node_ttl`).
    async fn lead(&mut self, token: u64) -> Result<Option<(PlacementOutcome, WriteOutcome)>, CoordinationError> {
        let view = self.membership.live_nodes().await?;
        if !view.dead.is_empty() {
            tracing::warn!(dead = ?view.dead, "coordinator: nodes declared dead; re-placing their replicas");
        }
        let current = match self.store.read().await? {
            Some(stored) => stored.placement,
            None if self.leading_since.is_some_and(|since| since.elapsed() < self.node_ttl) => {
                tracing::info!("coordinator: no placement stored; waiting for the nodes to register");
                return Ok(None);
            }
            None => Placement::from_running(&view),
        };
        let targets = (self.planner)(&view, &current);
        let outcome = place(&PlacementNode::workers(&view), &targets, &current);
        for unplaced in &outcome.unplaced {
            tracing::warn!(
                deployment = %unplaced.deployment,
                replicas = unplaced.replicas,
                reason = unplaced.reason.as_str(),
                "coordinator: replicas could not be placed"
            );
        }
        let written = self.store.write(token, &self.node_id, &outcome.placement).await?;
        Ok(Some((outcome, written)))
    }

    /// Clean shutdown: give up the lease (if held) and remove the node's record, so the
    /// next leader re-places this node's replicas at once.
    pub async fn shutdown(&mut self) -> Result<(), CoordinationError> {
        let released = self.election.release().await;
        if let Ok(Some(change)) = &released {
            tracing::info!(node_id = %self.node_id, ?change, "coordinator: leadership released");
        }
        self.leadership.send_if_modified(|state| replace_if_different(state, LeaderState::Follower { leader: None }));
        let deregistered = self.membership.deregister(&self.node_id).await;
        released?;
        deregistered.map(|_| ())
    }

    /// Run [`tick`](Self::tick) every heartbeat interval in a task until
    /// [`CoordinatorHandle::shutdown`].
    pub fn spawn(mut self) -> CoordinatorHandle {
        let assignment = self.assignment();
        let leadership = self.leadership();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(self.interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {
                        let report = self.tick().await;
                        for error in &report.errors {
                            tracing::debug!(node_id = %self.node_id, %error, code = error.code(), "coordinator: tick error");
                        }
                    }
                }
            }
            if let Err(error) = self.shutdown().await {
                tracing::warn!(node_id = %self.node_id, %error, "coordinator: shutdown incomplete (the record and lease expire)");
            }
        });
        CoordinatorHandle { assignment, leadership, stop: Some(stop), task }
    }
}

/// A running coordinator task.
pub struct CoordinatorHandle {
    assignment: watch::Receiver<NodeAssignment>,
    leadership: watch::Receiver<LeaderState>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl CoordinatorHandle {
    pub fn assignment(&self) -> watch::Receiver<NodeAssignment> {
        self.assignment.clone()
    }

    pub fn leadership(&self) -> watch::Receiver<LeaderState> {
        self.leadership.clone()
    }

    /// Stop ticking, release the lease, deregister; waits for the task to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for CoordinatorHandle {
    /// Dropped without `shutdown`: the task stops without cleaning up (the record and the
    /// lease expire after their TTLs).
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

fn replace_if_different<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        false
    } else {
        *slot = value;
        true
    }
}
