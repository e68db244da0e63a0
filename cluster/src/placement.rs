//! Replica placement: which node runs how many replicas of which deployment.
//!
//! [`place`] is a pure function (no I/O, no clock, deterministic): given the live nodes
//! and their capacity, each deployment's desired replica count and what one replica needs,
//! and the current placement, it answers the new placement and what could not be placed.
//! The leader runs it every tick and writes the result with [`PlacementStore::write`],
//! fenced by its token; each node reads its own part with [`PlacementStore::read_node`].
//!
//! # The rules, in order
//! 1. **Keep what runs.** A replica already placed on a live node stays there (no
//!    rebalancing moves), as long as the node still has room for it. Existing replicas of
//!    every deployment are kept before any new replica is placed, so a scale-up of one
//!    deployment never evicts another's replicas.
//! 2. **Scale down where it is most concentrated.** When fewer replicas are wanted than
//!    are placed, they are removed one at a time from the node holding the most replicas
//!    of that deployment (which restores spread).
//! 3. **Place the rest** (new replicas, and those of dead nodes or nodes that shrank) one
//!    replica at a time, deployments taking turns (so scarce capacity is shared, not taken
//!    by the first deployment), the harder-to-fit deployments (more GPUs, then more CPU
//!    slots) first in each turn. Each replica goes to the node, among those with room,
//!    with the fewest replicas of its deployment (anti-affinity), then the lowest
//!    utilisation (balance), then the smallest node id.
//! 4. **Never over-commit.** CPU slots and GPUs are counted per node; a replica that
//!    needs GPUs takes them all from one group (one kind, one memory size) on one node.
//!    What fits nowhere is reported in [`PlacementOutcome::unplaced`] with the reason.
//!
//! Replicas of deployments absent from the targets are removed.
//!
//! # Store
//! `P:{cluster}:placement` (a hash; see [`coordination`](crate::coordination)) holds the
//! whole placement, the token and node id of the leader that wrote it, a version bumped by
//! every write that changed something, and each node's assignment with the version at
//! which it last changed. The write script checks, atomically with the write, that the
//! leader lease holds exactly the writer's `"<token> <node id>"` and that no higher token
//! wrote before; otherwise it refuses ([`CoordinationError::Fenced`]).

use std::collections::BTreeMap;

use redis::{Script, Value};
use serde::{Deserialize, Serialize};

use crate::coordination::{array, malformed, number, string, CoordinationClient, CoordinationError};
use crate::leader::lease_value;
use crate::membership::{ClusterView, GpuGroup, LiveNode, NodeCapacity};

/// GPUs one replica needs, all of one kind, on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuRequirement {
    /// Matches a GPU kind containing this text, case-insensitively (`"H100"` matches
    /// `"NVIDIA H100 80GB HBM3"`); `None`: any kind.
    pub kind: Option<String>,
    pub count: u32,
    /// Memory each of those GPUs must have at least, in bytes.
    #[serde(default)]
    pub min_memory_bytes: u64,
}

/// What one replica of a deployment needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRequirement {
    pub cpu_slots: u32,
    #[serde(default)]
    pub gpus: Option<GpuRequirement>,
}

impl ReplicaRequirement {
    pub fn cpu(slots: u32) -> Self {
        Self { cpu_slots: slots, gpus: None }
    }

    pub fn gpus(kind: Option<&str>, count: u32) -> Self {
        Self {
            cpu_slots: 0,
            gpus: Some(GpuRequirement { kind: kind.map(str::to_string), count, min_memory_bytes: 0 }),
        }
    }

    fn gpu_count(&self) -> u32 {
        self.gpus.as_ref().map_or(0, |gpus| gpus.count)
    }
}

/// What the cluster should run of one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentTarget {
    pub deployment: String,
    pub replicas: u32,
    pub requirement: ReplicaRequirement,
}

/// A node replicas can be placed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementNode {
    pub node_id: String,
    pub capacity: NodeCapacity,
}

impl From<&LiveNode> for PlacementNode {
    fn from(node: &LiveNode) -> Self {
        Self { node_id: node.info.node_id.clone(), capacity: node.info.capacity.clone() }
    }
}

impl PlacementNode {
    /// The live worker nodes of a view.
    pub fn workers(view: &ClusterView) -> Vec<PlacementNode> {
        view.live.iter().filter(|node| node.info.is_worker()).map(PlacementNode::from).collect()
    }
}

/// Node → deployment → replicas. Nodes and deployments with no replica are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub nodes: BTreeMap<String, BTreeMap<String, u32>>,
}

impl Placement {
    /// The replicas the live nodes report running (the starting point when no placement
    /// was stored, e.g. after Redis lost its data).
    pub fn from_running(view: &ClusterView) -> Self {
        let mut placement = Placement::default();
        for node in &view.live {
            for (deployment, load) in &node.info.running {
                placement.add(&node.info.node_id, deployment, load.replicas);
            }
        }
        placement
    }

    /// What one node should run (empty if nothing).
    pub fn node(&self, node_id: &str) -> BTreeMap<String, u32> {
        self.nodes.get(node_id).cloned().unwrap_or_default()
    }

    /// Replicas of a deployment on all nodes.
    pub fn replicas(&self, deployment: &str) -> u32 {
        self.nodes.values().filter_map(|deployments| deployments.get(deployment)).sum()
    }

    pub fn replicas_on(&self, node_id: &str, deployment: &str) -> u32 {
        self.nodes.get(node_id).and_then(|deployments| deployments.get(deployment)).copied().unwrap_or(0)
    }

    pub fn add(&mut self, node_id: &str, deployment: &str, replicas: u32) {
        if replicas > 0 {
            *self.nodes.entry(node_id.to_string()).or_default().entry(deployment.to_string()).or_default() +=
                replicas;
        }
    }
}

/// Why replicas could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnplacedReason {
    /// There is no live worker node.
    NoLiveNodes,
    /// No live node could hold even one replica if it were empty (no GPUs of the kind or
    /// memory asked for, too few of them, too few CPU slots).
    NoMatchingNode,
    /// Nodes that match exist but have no room left.
    InsufficientCapacity,
}

impl UnplacedReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            UnplacedReason::NoLiveNodes => "no_live_nodes",
            UnplacedReason::NoMatchingNode => "no_matching_node",
            UnplacedReason::InsufficientCapacity => "insufficient_capacity",
        }
    }
}

/// Replicas of a deployment that could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unplaced {
    pub deployment: String,
    pub replicas: u32,
    pub reason: UnplacedReason,
}

/// What [`place`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlacementOutcome {
    pub placement: Placement,
    pub unplaced: Vec<Unplaced>,
    /// Replicas left where they were.
    pub kept: u32,
    /// Replicas placed anew (scale-up, or re-placed from dead or shrunk nodes).
    pub added: u32,
    /// Replicas of the current placement not kept (scale-down, dead nodes, shrunk nodes,
    /// deployments no longer targeted).
    pub removed: u32,
}

/// One node's remaining room while placing.
struct NodeRoom<'a> {
    node_id: &'a str,
    cpu_total: u32,
    cpu_free: u32,
    groups: &'a [GpuGroup],
    gpu_free: Vec<u32>,
    gpu_total: u32,
}

impl<'a> NodeRoom<'a> {
    fn new(node: &'a PlacementNode) -> Self {
        Self {
            node_id: &node.node_id,
            cpu_total: node.capacity.cpu_slots,
            cpu_free: node.capacity.cpu_slots,
            groups: &node.capacity.gpus,
            gpu_free: node.capacity.gpus.iter().map(|group| group.count).collect(),
            gpu_total: node.capacity.gpu_count(),
        }
    }

    /// Where a replica would go on this node given `free` GPUs per group: `Some(None)`
    /// for a CPU-only replica, `Some(Some(group))` for a GPU one, `None` if it does not fit.
    fn slot(&self, requirement: &ReplicaRequirement, free: &[u32], cpu_free: u32) -> Option<Option<usize>> {
        if cpu_free < requirement.cpu_slots {
            return None;
        }
        let Some(gpus) = requirement.gpus.as_ref().filter(|gpus| gpus.count > 0) else { return Some(None) };
        let wanted_kind = gpus.kind.as_ref().map(|kind| kind.to_lowercase());
        self.groups
            .iter()
            .enumerate()
            .filter(|(index, group)| {
                free[*index] >= gpus.count
                    && group.memory_bytes >= gpus.min_memory_bytes
                    && wanted_kind.as_ref().is_none_or(|kind| group.kind.to_lowercase().contains(kind.as_str()))
            })
            // The smallest GPUs that do, then the fullest group (keep big and whole
            // groups free for replicas that need them).
            .min_by_key(|(index, group)| (group.memory_bytes, free[*index], *index))
            .map(|(index, _)| Some(Some(index)))
            .unwrap_or(None)
    }

    fn fits_now(&self, requirement: &ReplicaRequirement) -> Option<Option<usize>> {
        self.slot(requirement, &self.gpu_free, self.cpu_free)
    }

    fn fits_when_empty(&self, requirement: &ReplicaRequirement) -> bool {
        let all: Vec<u32> = self.groups.iter().map(|group| group.count).collect();
        self.slot(requirement, &all, self.cpu_total).is_some()
    }

    fn take(&mut self, requirement: &ReplicaRequirement, group: Option<usize>) {
        self.cpu_free -= requirement.cpu_slots;
        if let Some(group) = group {
            self.gpu_free[group] -= requirement.gpu_count();
        }
    }

    /// The larger of the used fractions of CPU slots and GPUs.
    fn utilisation(&self) -> f64 {
        let fraction = |free: u32, total: u32| if total == 0 { 0.0 } else { 1.0 - free as f64 / total as f64 };
        let gpu_free: u32 = self.gpu_free.iter().sum();
        fraction(self.cpu_free, self.cpu_total).max(fraction(gpu_free, self.gpu_total))
    }
}

/// Compute the new placement. Pure and deterministic; see the module docs for the rules.
pub fn place(nodes: &[PlacementNode], targets: &[DeploymentTarget], current: &Placement) -> PlacementOutcome {
    let mut rooms: Vec<NodeRoom> = nodes.iter().map(NodeRoom::new).collect();
    rooms.sort_by(|a, b| a.node_id.cmp(b.node_id));
    rooms.dedup_by(|a, b| a.node_id == b.node_id);

    // One target per deployment (the first), harder to fit first: more GPUs, then more
    // CPU slots, then by name.
    let mut seen = std::collections::BTreeSet::new();
    let mut targets: Vec<&DeploymentTarget> =
        targets.iter().filter(|target| seen.insert(target.deployment.as_str())).collect();
    targets.sort_by(|a, b| {
        (b.requirement.gpu_count(), b.requirement.cpu_slots, &a.deployment).cmp(&(
            a.requirement.gpu_count(),
            a.requirement.cpu_slots,
            &b.deployment,
        ))
    });

    let mut outcome = PlacementOutcome::default();
    let mut placed = Placement::default();
    let targeted_replicas: u32 = targets
        .iter()
        .map(|target| current.replicas(&target.deployment))
        .sum();
    outcome.removed = current.nodes.values().flat_map(|deployments| deployments.values()).sum::<u32>()
        - targeted_replicas;

    // 1 + 2: keep the replicas on live nodes, scaled down where most concentrated.
    for target in &targets {
        let mut kept: BTreeMap<&str, u32> = rooms
            .iter()
            .map(|room| (room.node_id, current.replicas_on(room.node_id, &target.deployment)))
            .filter(|(_, replicas)| *replicas > 0)
            .collect();
        let mut total: u32 = kept.values().sum();
        outcome.removed += current.replicas(&target.deployment) - total; // on nodes not live
        while total > target.replicas {
            // The most replicas; among equals, the largest node id (deterministic).
            let (&node_id, _) = kept.iter().max_by_key(|(node_id, replicas)| (**replicas, **node_id)).expect("total > 0");
            *kept.get_mut(node_id).expect("present") -= 1;
            total -= 1;
            outcome.removed += 1;
        }
        for (node_id, replicas) in kept {
            let room = rooms.iter_mut().find(|room| room.node_id == node_id).expect("a live node");
            for _ in 0..replicas {
                match room.fits_now(&target.requirement) {
                    Some(group) => {
                        room.take(&target.requirement, group);
                        placed.add(node_id, &target.deployment, 1);
                        outcome.kept += 1;
                    }
                    None => outcome.removed += 1, // the node shrank: re-placed below
                }
            }
        }
    }

    // 3 + 4: place the missing replicas, one per deployment per turn.
    let mut missing: Vec<u32> =
        targets.iter().map(|target| target.replicas.saturating_sub(placed.replicas(&target.deployment))).collect();
    let mut stuck: Vec<Option<UnplacedReason>> = vec![None; targets.len()];
    loop {
        let mut progressed = false;
        for (index, target) in targets.iter().enumerate() {
            if missing[index] == 0 || stuck[index].is_some() {
                continue;
            }
            let best = rooms
                .iter()
                .enumerate()
                .filter_map(|(room_index, room)| room.fits_now(&target.requirement).map(|group| (room_index, group)))
                .min_by(|(a, _), (b, _)| {
                    let (a, b) = (&rooms[*a], &rooms[*b]);
                    placed
                        .replicas_on(a.node_id, &target.deployment)
                        .cmp(&placed.replicas_on(b.node_id, &target.deployment))
                        .then(a.utilisation().total_cmp(&b.utilisation()))
                        .then(a.node_id.cmp(b.node_id))
                });
            match best {
                Some((room_index, group)) => {
                    let room = &mut rooms[room_index];
                    room.take(&target.requirement, group);
                    placed.add(room.node_id, &target.deployment, 1);
                    missing[index] -= 1;
                    outcome.added += 1;
                    progressed = true;
                }
                None => {
                    stuck[index] = Some(if rooms.is_empty() {
                        UnplacedReason::NoLiveNodes
                    } else if rooms.iter().any(|room| room.fits_when_empty(&target.requirement)) {
                        UnplacedReason::InsufficientCapacity
                    } else {
                        UnplacedReason::NoMatchingNode
                    });
                }
            }
        }
        if !progressed {
            break;
        }
    }
    for (index, target) in targets.iter().enumerate() {
        if let Some(reason) = stuck[index].take() {
            outcome.unplaced.push(Unplaced { deployment: target.deployment.clone(), replicas: missing[index], reason });
        }
    }
    outcome.unplaced.sort_by(|a, b| a.deployment.cmp(&b.deployment));
    outcome.placement = placed;
    outcome
}

// ---------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------

/// One node's assignment as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAssignment {
    pub node_id: String,
    /// Changes whenever this node's assignment changes (and never goes down while Redis
    /// keeps its data); 0 when no placement was ever written.
    pub version: u64,
    /// Deployment → replicas this node should run.
    pub deployments: BTreeMap<String, u32>,
    /// The token of the leader that wrote the placement (0 when none).
    pub leader_token: u64,
}

/// The whole stored placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPlacement {
    pub version: u64,
    pub token: u64,
    pub leader: String,
    pub placement: Placement,
}

/// The answer to a placement write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The placement's version after the write.
    pub version: u64,
    /// Whether the placement differed from the stored one (the version moved).
    pub changed: bool,
}

const WRITE: &str = include_str!("lua/placement_write.lua");

/// The placement in Redis: written by the leader (fenced), read by every node. Cheap to
/// clone.
#[derive(Clone)]
pub struct PlacementStore {
    client: CoordinationClient,
    write: Script,
}

impl PlacementStore {
    pub fn new(client: CoordinationClient) -> Self {
        Self { client, write: Script::new(WRITE) }
    }

    /// Store a placement, if `leader_node_id` still holds the lease with `token`;
    /// otherwise `Fenced` and nothing is written.
    pub async fn write(
        &self,
        token: u64,
        leader_node_id: &str,
        placement: &Placement,
    ) -> Result<WriteOutcome, CoordinationError> {
        let keys = self.client.keys();
        let mut call = self.write.prepare_invoke();
        call.key(keys.leader()).key(keys.placement());
        call.arg(lease_value(token, leader_node_id)).arg(token).arg(leader_node_id);
        call.arg(serde_json::to_string(placement).expect("a placement serializes"));
        for (node_id, deployments) in &placement.nodes {
            call.arg(node_id).arg(serde_json::to_string(deployments).expect("an assignment serializes"));
        }
        let reply = array(self.client.invoke::<Value>(&call).await?)?;
        let ok = number(reply.first().ok_or_else(|| malformed("placement write"))?)?;
        let second = reply.get(1).ok_or_else(|| malformed("placement write"))?;
        if ok == 0 {
            return Err(CoordinationError::Fenced { token, reason: string(second)? });
        }
        Ok(WriteOutcome {
            version: number(second)?,
            changed: number(reply.get(2).unwrap_or(&Value::Int(0)))? == 1,
        })
    }

    /// The whole placement, if one was written.
    pub async fn read(&self) -> Result<Option<StoredPlacement>, CoordinationError> {
        let mut command = redis::cmd("HMGET");
        command.arg(self.client.keys().placement()).arg("version").arg("token").arg("leader").arg("all");
        let [version, token, leader, all]: [Option<String>; 4] = self.client.query(&command).await?;
        let Some(all) = all else { return Ok(None) };
        Ok(Some(StoredPlacement {
            version: parse_or_zero(version)?,
            token: parse_or_zero(token)?,
            leader: leader.unwrap_or_default(),
            placement: serde_json::from_str(&all).map_err(|_| malformed("placement"))?,
        }))
    }

    /// One node's assignment (empty, with the placement's version, if it has none).
    pub async fn read_node(&self, node_id: &str) -> Result<NodeAssignment, CoordinationError> {
        let mut command = redis::cmd("HMGET");
        command
            .arg(self.client.keys().placement())
            .arg(format!("node:{node_id}"))
            .arg(format!("nver:{node_id}"))
            .arg("version")
            .arg("token");
        let [assignment, node_version, version, token]: [Option<String>; 4] = self.client.query(&command).await?;
        let deployments = match assignment {
            Some(json) => serde_json::from_str(&json).map_err(|_| malformed("node assignment"))?,
            None => BTreeMap::new(),
        };
        Ok(NodeAssignment {
            node_id: node_id.to_string(),
            version: parse_or_zero(node_version.or(version))?,
            deployments,
            leader_token: parse_or_zero(token)?,
        })
    }
}

fn parse_or_zero(value: Option<String>) -> Result<u64, CoordinationError> {
    value.map_or(Ok(0), |value| value.parse().map_err(|_| malformed("a number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1 << 30;

    fn cpu_node(id: &str, slots: u32) -> PlacementNode {
        PlacementNode { node_id: id.into(), capacity: NodeCapacity { cpu_slots: slots, gpus: vec![] } }
    }

    fn gpu_node(id: &str, cpu_slots: u32, gpus: &[(&str, u64, u32)]) -> PlacementNode {
        PlacementNode {
            node_id: id.into(),
            capacity: NodeCapacity {
                cpu_slots,
                gpus: gpus
                    .iter()
                    .map(|(kind, memory, count)| GpuGroup { kind: kind.to_string(), memory_bytes: *memory, count: *count })
                    .collect(),
            },
        }
    }

    fn cpu_target(name: &str, replicas: u32) -> DeploymentTarget {
        DeploymentTarget { deployment: name.into(), replicas, requirement: ReplicaRequirement::cpu(1) }
    }

    fn gpu_target(name: &str, replicas: u32, kind: Option<&str>, count: u32) -> DeploymentTarget {
        DeploymentTarget { deployment: name.into(), replicas, requirement: ReplicaRequirement::gpus(kind, count) }
    }

    fn placement(entries: &[(&str, &str, u32)]) -> Placement {
        let mut placement = Placement::default();
        for (node, deployment, replicas) in entries {
            placement.add(node, deployment, *replicas);
        }
        placement
    }

    /// No node holds more than it can: CPU slots, and GPUs per group (greedy over the
    /// replicas, largest GPU needs first, which is exact for these small cases).
    fn assert_within_capacity(nodes: &[PlacementNode], targets: &[DeploymentTarget], placed: &Placement) {
        for node in nodes {
            let mut room = NodeRoom::new(node);
            let mut replicas: Vec<&DeploymentTarget> = Vec::new();
            for (deployment, count) in placed.node(&node.node_id) {
                let target = targets.iter().find(|t| t.deployment == deployment).expect("targeted");
                replicas.extend(std::iter::repeat_n(target, count as usize));
            }
            replicas.sort_by_key(|t| std::cmp::Reverse(t.requirement.gpu_count()));
            for target in replicas {
                let group = room
                    .fits_now(&target.requirement)
                    .unwrap_or_else(|| panic!("{} over-committed by {}", node.node_id, target.deployment));
                room.take(&target.requirement, group);
            }
        }
        for node_id in placed.nodes.keys() {
            assert!(nodes.iter().any(|n| &n.node_id == node_id), "placed on unknown node {node_id}");
        }
    }

    #[test]
    fn a_deployment_spreads_over_nodes() {
        let nodes = [cpu_node("a", 4), cpu_node("b", 4), cpu_node("c", 4)];
        let targets = [cpu_target("chat", 3)];
        let outcome = place(&nodes, &targets, &Placement::default());
        assert_eq!(outcome.placement, placement(&[("a", "chat", 1), ("b", "chat", 1), ("c", "chat", 1)]));
        assert_eq!((outcome.kept, outcome.added, outcome.removed), (0, 3, 0));
        assert!(outcome.unplaced.is_empty());
    }

    #[test]
    fn more_replicas_than_nodes_are_balanced() {
        let nodes = [cpu_node("a", 4), cpu_node("b", 4)];
        let targets = [cpu_target("chat", 5)];
        let outcome = place(&nodes, &targets, &Placement::default());
        assert_eq!(outcome.placement, placement(&[("a", "chat", 3), ("b", "chat", 2)]));
    }

    #[test]
    fn existing_replicas_stay_where_they_are() {
        let nodes = [cpu_node("a", 4), cpu_node("b", 4)];
        let current = placement(&[("a", "chat", 3)]);
        let outcome = place(&nodes, &[cpu_target("chat", 3)], &current);
        assert_eq!(outcome.placement, current, "no rebalancing moves");
        assert_eq!((outcome.kept, outcome.added, outcome.removed), (3, 0, 0));
    }

    #[test]
    fn a_scale_up_goes_to_the_emptier_nodes() {
        let nodes = [cpu_node("a", 4), cpu_node("b", 4)];
        let current = placement(&[("a", "chat", 2)]);
        let outcome = place(&nodes, &[cpu_target("chat", 4)], &current);
        assert_eq!(outcome.placement, placement(&[("a", "chat", 2), ("b", "chat", 2)]));
        assert_eq!((outcome.kept, outcome.added), (2, 2));
    }

    #[test]
    fn a_scale_down_removes_where_most_concentrated() {
        let nodes = [cpu_node("a", 4), cpu_node("b", 4)];
        let current = placement(&[("a", "chat", 3), ("b", "chat", 1)]);
        let outcome = place(&nodes, &[cpu_target("chat", 2)], &current);
        assert_eq!(outcome.placement, placement(&[("a", "chat", 1), ("b", "chat", 1)]));
        assert_eq!((outcome.kept, outcome.added, outcome.removed), (2, 0, 2));
    }

    #[test]
    fn scale_to_zero_and_untargeted_deployments_are_removed() {
        let nodes = [cpu_node("a", 4)];
        let current = placement(&[("a", "chat", 2), ("a", "old", 1)]);
        let outcome = place(&nodes, &[cpu_target("chat", 0)], &current);
        assert_eq!(outcome.placement, Placement::default());
        assert_eq!(outcome.removed, 3);
    }

    #[test]
    fn replicas_of_a_dead_node_are_replaced_on_live_ones() {
        // "b" died: its 2 replicas go to "c" (fewest replicas of chat), "a" keeps its own.
        let nodes = [cpu_node("a", 4), cpu_node("c", 4)];
        let current = placement(&[("a", "chat", 2), ("b", "chat", 2)]);
        let outcome = place(&nodes, &[cpu_target("chat", 4)], &current);
        assert_eq!(outcome.placement, placement(&[("a", "chat", 2), ("c", "chat", 2)]));
        assert_eq!((outcome.kept, outcome.added, outcome.removed), (2, 2, 2));
    }

    #[test]
    fn replicas_of_a_dead_node_fill_the_survivor_up_to_its_capacity() {
        let nodes = [cpu_node("a", 3)];
        let current = placement(&[("a", "chat", 2), ("b", "chat", 2)]);
        let outcome = place(&nodes, &[cpu_target("chat", 4)], &current);
        assert_eq!(outcome.placement, placement(&[("a", "chat", 3)]));
        assert_eq!(
            outcome.unplaced,
            vec![Unplaced { deployment: "chat".into(), replicas: 1, reason: UnplacedReason::InsufficientCapacity }]
        );
    }

    #[test]
    fn no_nodes_means_nothing_is_placed() {
        let outcome = place(&[], &[cpu_target("chat", 2)], &placement(&[("gone", "chat", 2)]));
        assert_eq!(outcome.placement, Placement::default());
        assert_eq!(
            outcome.unplaced,
            vec![Unplaced { deployment: "chat".into(), replicas: 2, reason: UnplacedReason::NoLiveNodes }]
        );
        assert_eq!(outcome.removed, 2);
    }

    #[test]
    fn gpu_replicas_go_only_where_their_kind_is() {
        let nodes = [
            gpu_node("h", 8, &[("NVIDIA H100 80GB HBM3", 80 * GB, 2)]),
            gpu_node("l", 8, &[("NVIDIA L4", 24 * GB, 4)]),
        ];
        let targets = [
            gpu_target("big", 2, Some("h100"), 1),
            gpu_target("small", 3, Some("L4"), 2),
            gpu_target("exotic", 1, Some("A100"), 1),
        ];
        let outcome = place(&nodes, &targets, &Placement::default());
        assert_eq!(outcome.placement, placement(&[("h", "big", 2), ("l", "small", 2)]));
        assert_eq!(
            outcome.unplaced,
            vec![
                Unplaced { deployment: "exotic".into(), replicas: 1, reason: UnplacedReason::NoMatchingNode },
                Unplaced { deployment: "small".into(), replicas: 1, reason: UnplacedReason::InsufficientCapacity },
            ]
        );
        assert_within_capacity(&nodes, &targets, &outcome.placement);
    }

    #[test]
    fn gpu_replicas_of_a_dead_node_move_to_a_node_with_the_same_kind() {
        // "h1" died; its H100 replicas go to "h2", not to the L4 node (emptier though).
        let nodes = [
            gpu_node("h2", 8, &[("H100", 80 * GB, 4)]),
            gpu_node("l", 8, &[("L4", 24 * GB, 8)]),
        ];
        let current = placement(&[("h1", "big", 2), ("h2", "big", 1), ("l", "small", 1)]);
        let targets = [gpu_target("big", 3, Some("H100"), 1), gpu_target("small", 1, Some("L4"), 1)];
        let outcome = place(&nodes, &targets, &current);
        assert_eq!(outcome.placement, placement(&[("h2", "big", 3), ("l", "small", 1)]));
        assert_eq!((outcome.kept, outcome.added, outcome.removed), (2, 2, 2));
        assert_within_capacity(&nodes, &targets, &outcome.placement);
    }

    #[test]
    fn gateway_only_nodes_are_not_placement_targets() {
        use crate::membership::{NodeInfo, NodeRole};
        let live = |id: &str, role: NodeRole| LiveNode {
            info: NodeInfo {
                node_id: id.into(),
                role,
                capacity: NodeCapacity { cpu_slots: 4, gpus: vec![] },
                running: BTreeMap::new(),
                started_at_ms: 0,
                version: "test".into(),
                address: None,
            },
            last_heartbeat_ms: 0,
        };
        let view = ClusterView {
            server_time_ms: 0,
            live: vec![live("edge", NodeRole::Gateway), live("w", NodeRole::Worker)],
            dead: vec![],
        };
        let nodes = PlacementNode::workers(&view);
        assert_eq!(nodes.iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>(), vec!["w"]);
    }

    #[test]
    fn a_replica_never_mixes_gpu_kinds_and_respects_memory() {
        let nodes = [gpu_node("mixed", 8, &[("H100", 80 * GB, 1), ("L4", 24 * GB, 1)])];
        let two_any = gpu_target("two", 1, None, 2);
        let mut roomy = gpu_target("roomy", 1, None, 1);
        roomy.requirement.gpus.as_mut().unwrap().min_memory_bytes = 40 * GB;
        let outcome = place(&nodes, &[two_any, roomy], &Placement::default());
        assert_eq!(outcome.placement, placement(&[("mixed", "roomy", 1)]));
        assert_eq!(
            outcome.unplaced,
            vec![Unplaced { deployment: "two".into(), replicas: 1, reason: UnplacedReason::NoMatchingNode }]
        );
    }

    #[test]
    fn any_kind_prefers_the_smallest_gpus_that_fit() {
        let nodes = [gpu_node("mixed", 8, &[("H100", 80 * GB, 1), ("L4", 24 * GB, 1)])];
        let targets = [gpu_target("small", 1, None, 1), gpu_target("big", 1, Some("H100"), 1)];
        let outcome = place(&nodes, &targets, &Placement::default());
        assert_eq!(outcome.placement, placement(&[("mixed", "big", 1), ("mixed", "small", 1)]));
        assert!(outcome.unplaced.is_empty());
    }

    #[test]
    fn gpu_replicas_also_take_their_cpu_slots() {
        let nodes = [gpu_node("g", 1, &[("H100", 80 * GB, 4)])];
        let mut target = gpu_target("chat", 3, Some("H100"), 1);
        target.requirement.cpu_slots = 1;
        let outcome = place(&nodes, &[target.clone()], &Placement::default());
        assert_eq!(outcome.placement, placement(&[("g", "chat", 1)]));
        assert_eq!(outcome.unplaced[0].reason, UnplacedReason::InsufficientCapacity);
        assert_within_capacity(&nodes, &[target], &outcome.placement);
    }

    #[test]
    fn a_scale_up_never_evicts_another_deployments_replicas() {
        let nodes = [cpu_node("a", 2)];
        let current = placement(&[("a", "zeta", 2)]);
        // "alpha" sorts first, but "zeta"'s running replicas are kept first.
        let outcome = place(&nodes, &[cpu_target("alpha", 2), cpu_target("zeta", 2)], &current);
        assert_eq!(outcome.placement, current);
        assert_eq!(outcome.unplaced[0].deployment, "alpha");
    }

    #[test]
    fn scarce_capacity_is_shared_between_deployments() {
        let nodes = [cpu_node("a", 2)];
        let outcome = place(&nodes, &[cpu_target("one", 3), cpu_target("two", 3)], &Placement::default());
        assert_eq!(outcome.placement, placement(&[("a", "one", 1), ("a", "two", 1)]));
        assert_eq!(outcome.unplaced.iter().map(|u| u.replicas).sum::<u32>(), 4);
    }

    #[test]
    fn a_shrunk_node_sheds_what_no_longer_fits() {
        // "a" now reports 1 slot (a GPU went away, an operator lowered it): one of its
        // two replicas moves to "b".
        let nodes = [cpu_node("a", 1), cpu_node("b", 4)];
        let current = placement(&[("a", "chat", 2)]);
        let outcome = place(&nodes, &[cpu_target("chat", 2)], &current);
        assert_eq!(outcome.placement, placement(&[("a", "chat", 1), ("b", "chat", 1)]));
        assert_eq!((outcome.kept, outcome.added, outcome.removed), (1, 1, 1));
    }

    #[test]
    fn gpu_deployments_are_placed_before_cpu_ones_compete_for_slots() {
        let nodes = [gpu_node("g", 1, &[("H100", 80 * GB, 1)])];
        let mut gpu = gpu_target("zz-gpu", 1, Some("H100"), 1);
        gpu.requirement.cpu_slots = 1;
        let outcome = place(&nodes, &[cpu_target("aa-cpu", 1), gpu], &Placement::default());
        assert_eq!(outcome.placement, placement(&[("g", "zz-gpu", 1)]));
    }

    #[test]
    fn many_mixed_cases_never_over_commit_and_are_deterministic() {
        let mut seed: u64 = 0x5eed;
        let mut next = |bound: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % bound
        };
        for _ in 0..300 {
            let nodes: Vec<PlacementNode> = (0..next(5))
                .map(|i| {
                    gpu_node(
                        &format!("n{i}"),
                        next(6) as u32,
                        &[("H100", 80 * GB, next(3) as u32), ("L4", 24 * GB, next(5) as u32)],
                    )
                })
                .collect();
            let targets: Vec<DeploymentTarget> = (0..1 + next(4))
                .map(|i| {
                    let mut target = match next(3) {
                        0 => cpu_target(&format!("d{i}"), next(6) as u32),
                        1 => gpu_target(&format!("d{i}"), next(6) as u32, Some("H100"), 1 + next(2) as u32),
                        _ => gpu_target(&format!("d{i}"), next(6) as u32, None, 1 + next(3) as u32),
                    };
                    target.requirement.cpu_slots = next(2) as u32;
                    target
                })
                .collect();
            let mut current = Placement::default();
            for _ in 0..next(6) {
                current.add(&format!("n{}", next(6)), &format!("d{}", next(4)), 1 + next(2) as u32);
            }
            let outcome = place(&nodes, &targets, &current);
            assert_within_capacity(&nodes, &targets, &outcome.placement);
            for target in &targets {
                let placed = outcome.placement.replicas(&target.deployment);
                let unplaced: u32 =
                    outcome.unplaced.iter().filter(|u| u.deployment == target.deployment).map(|u| u.replicas).sum();
                assert_eq!(placed + unplaced, target.replicas, "{target:?}");
            }
            assert_eq!(outcome.placement.nodes.values().flat_map(|d| d.values()).sum::<u32>(), outcome.kept + outcome.added);
            let total_current: u32 = current.nodes.values().flat_map(|d| d.values()).sum();
            assert_eq!(outcome.kept + outcome.removed, total_current);
            // Placing again from the result changes nothing.
            let again = place(&nodes, &targets, &outcome.placement);
            assert_eq!(again.placement, outcome.placement);
            assert_eq!(again.added, 0);
            assert_eq!(place(&nodes, &targets, &current), outcome);
        }
    }
}
