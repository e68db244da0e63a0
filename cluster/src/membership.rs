//! Node membership: which Swell nodes are alive, what they can run and how loaded they are.
//!
//! Each node writes a record (its [`NodeInfo`] as JSON) with a TTL of
//! [`node_ttl`](crate::coordination::CoordinationConfig::node_ttl) and refreshes it with a
//! [`Membership::heartbeat`] every
//! [`heartbeat_interval`](crate::coordination::CoordinationConfig::heartbeat_interval). A
//! heartbeat carries the node's current load (replicas per deployment, in-flight
//! requests, tokens per second), so whoever reads [`Membership::live_nodes`] (the leader)
//! sees cluster-wide figures without asking each node.
//!
//! # Liveness
//! A node is live while its record exists *and* its last heartbeat (the Redis server's
//! clock, stored as the score in the `nodes` index) is at most `node_ttl` old. A node
//! that stops heartbeating is therefore declared dead within `node_ttl` of its last
//! heartbeat, by the next `live_nodes` call, which also drops it from the index (and
//! reports it once in [`ClusterView::dead`]). A node that comes back simply heartbeats
//! again: the heartbeat re-creates its record and says so
//! ([`Heartbeat::record_existed`] is `false`), which is how a node notices that it was declared
//! dead or that Redis lost its data.
//!
//! Keys (see [`coordination`](crate::coordination)): `P:{cluster}:node:<id>` and
//! `P:{cluster}:nodes`.

use std::collections::BTreeMap;

use redis::{Script, Value};
use serde::{Deserialize, Serialize};

use crate::coordination::{array, malformed, number, string, CoordinationClient, CoordinationError, NOW_MS_LUA};

/// What a node does in a cluster (`[cluster] role`, `--role`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// Serves the inference API and enqueues; runs no replicas.
    Gateway,
    /// Runs replicas (leases from the shared queue); serves health, metrics and status
    /// only: inference requests are refused with 421 `not_a_gateway`.
    Worker,
    /// Both (the only role without Redis).
    #[default]
    All,
}

impl NodeRole {
    pub const ALL: [NodeRole; 3] = [NodeRole::Gateway, NodeRole::Worker, NodeRole::All];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Gateway => "gateway",
            NodeRole::Worker => "worker",
            NodeRole::All => "all",
        }
    }

    /// Whether this node serves `/v1` inference requests.
    pub fn serves_api(self) -> bool {
        self != NodeRole::Worker
    }

    /// Whether this node runs replicas (and so is a placement target).
    pub fn runs_replicas(self) -> bool {
        self != NodeRole::Gateway
    }
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NodeRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        NodeRole::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("unknown role `{text}`; known roles: gateway, worker, all"))
    }
}

/// GPUs of one kind on a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GpuGroup {
    /// The device name as the driver reports it (`NVIDIA H100 80GB HBM3`).
    pub kind: String,
    /// Memory of one GPU, in bytes.
    pub memory_bytes: u64,
    pub count: u32,
}

/// What a node can run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCapacity {
    /// CPU replica slots (a CPU replica, or the host side of a GPU replica, takes some).
    pub cpu_slots: u32,
    /// GPUs grouped by kind and memory.
    pub gpus: Vec<GpuGroup>,
}

impl NodeCapacity {
    /// Group a list of GPUs (`(name, memory_bytes)`, one per device, e.g. from CUDA
    /// discovery) by kind and memory.
    pub fn with_gpus(cpu_slots: u32, gpus: impl IntoIterator<Item = (String, u64)>) -> Self {
        let mut groups: Vec<GpuGroup> = Vec::new();
        for (kind, memory_bytes) in gpus {
            match groups.iter_mut().find(|group| group.kind == kind && group.memory_bytes == memory_bytes) {
                Some(group) => group.count += 1,
                None => groups.push(GpuGroup { kind, memory_bytes, count: 1 }),
            }
        }
        Self { cpu_slots, gpus: groups }
    }

    pub fn gpu_count(&self) -> u32 {
        self.gpus.iter().map(|group| group.count).sum()
    }
}

/// A deployment's load on one node, as of the node's last heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeploymentLoad {
    /// Replicas running (or starting) on this node.
    pub replicas: u32,
    /// Requests being generated on this node's replicas.
    pub in_flight: u64,
    /// Jobs waiting in the deployment's queue, as this node sees it (a gateway's view;
    /// the queue is shared, so take the maximum across nodes, not the sum).
    pub queued: u64,
    pub requests_per_second: f64,
    pub tokens_generated_per_second: f64,
    pub prompt_tokens_per_second: f64,
    /// Of `replicas`, those ready to serve (the rest are starting).
    #[serde(default)]
    pub ready: u32,
    /// Replicas retiring on this node (not counted in `replicas`).
    #[serde(default)]
    pub draining: u32,
    /// Counters since the node started, for a leader to difference between heartbeats
    /// (a rate averaged on each node and summed would smooth twice): requests this node
    /// admitted, their prompt tokens, and tokens its replicas generated.
    #[serde(default)]
    pub arrivals_total: u64,
    #[serde(default)]
    pub prompt_tokens_total: u64,
    #[serde(default)]
    pub generated_tokens_total: u64,
    /// How long the oldest waiting job has waited, as this node last saw the queue (ms).
    #[serde(default)]
    pub oldest_wait_ms: Option<u64>,
    /// Requests of this node that left the queue for a replica, and the sum of their
    /// waits (ms), since the node started (the queue-delay signal).
    #[serde(default)]
    pub started_total: u64,
    #[serde(default)]
    pub started_wait_ms_total: u64,
    /// KV-cache tokens in use on this node's ready replicas, and one replica's capacity.
    #[serde(default)]
    pub kv_tokens_used: u64,
    #[serde(default)]
    pub kv_capacity_tokens: u64,
}

/// A node's record: identity, capacity and current load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique and stable for the life of the process (host name + pid, or a UUID). Must
    /// not contain spaces.
    pub node_id: String,
    pub role: NodeRole,
    pub capacity: NodeCapacity,
    /// Per deployment: replicas and load on this node.
    #[serde(default)]
    pub running: BTreeMap<String, DeploymentLoad>,
    /// When the process started, ms since the Unix epoch (the node's clock: informative).
    pub started_at_ms: u64,
    /// The Swell version the node runs.
    pub version: String,
    /// Where other nodes reach it (`host:port`), if anywhere.
    #[serde(default)]
    pub address: Option<String>,
}

impl NodeInfo {
    pub fn is_worker(&self) -> bool {
        self.role.runs_replicas()
    }
}

/// A live node as `live_nodes` found it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveNode {
    pub info: NodeInfo,
    /// The server time (ms) of its last heartbeat.
    pub last_heartbeat_ms: u64,
}

/// The membership as of one moment of the server's clock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// The Redis server time (ms) the view was taken at.
    pub server_time_ms: u64,
    /// Live nodes, by node id.
    pub live: Vec<LiveNode>,
    /// Nodes declared dead by this call (and dropped from the index): each is reported
    /// once, by the call that found it dead.
    pub dead: Vec<String>,
}

impl ClusterView {
    pub fn node(&self, node_id: &str) -> Option<&LiveNode> {
        self.live.iter().find(|node| node.info.node_id == node_id)
    }

    /// A deployment's load over all live nodes: replicas, in-flight, rates and counters
    /// summed, `queued` and `oldest_wait_ms` the maximum (every node sees the same shared
    /// queue).
    pub fn deployment_load(&self, deployment: &str) -> DeploymentLoad {
        let mut total = DeploymentLoad::default();
        for load in self.live.iter().filter_map(|node| node.info.running.get(deployment)) {
            total.replicas += load.replicas;
            total.in_flight += load.in_flight;
            total.queued = total.queued.max(load.queued);
            total.requests_per_second += load.requests_per_second;
            total.tokens_generated_per_second += load.tokens_generated_per_second;
            total.prompt_tokens_per_second += load.prompt_tokens_per_second;
            total.ready += load.ready;
            total.draining += load.draining;
            total.arrivals_total += load.arrivals_total;
            total.prompt_tokens_total += load.prompt_tokens_total;
            total.generated_tokens_total += load.generated_tokens_total;
            total.oldest_wait_ms = total.oldest_wait_ms.max(load.oldest_wait_ms);
            total.started_total += load.started_total;
            total.started_wait_ms_total += load.started_wait_ms_total;
            total.kv_tokens_used += load.kv_tokens_used;
            total.kv_capacity_tokens = total.kv_capacity_tokens.max(load.kv_capacity_tokens);
        }
        total
    }

    /// Every deployment some live node reports load for.
    pub fn deployments(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.live.iter().flat_map(|node| node.info.running.keys().cloned()).collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The answer to a heartbeat (or a registration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The Redis server time (ms) of the heartbeat.
    pub server_time_ms: u64,
    /// Whether the node's record was there before this call. On a heartbeat, `false`
    /// means it was gone (expired: the node was or will be declared dead; or Redis lost
    /// its data) and has been written again. On `register`, `true` means a record with
    /// this id was still there (a restart faster than the TTL, or two processes with one
    /// id).
    pub record_existed: bool,
}

const BEAT: &str = include_str!("lua/membership_beat.lua");

const DEREGISTER: &str = include_str!("lua/membership_deregister.lua");

const LIVE: &str = include_str!("lua/membership_live.lua");

/// Registration, heartbeats and the live node list. Cheap to clone.
#[derive(Clone)]
pub struct Membership {
    client: CoordinationClient,
    beat: Script,
    deregister: Script,
    live: Script,
}

impl Membership {
    pub fn new(client: CoordinationClient) -> Self {
        Self {
            client,
            beat: Script::new(&format!("{NOW_MS_LUA}{BEAT}")),
            deregister: Script::new(DEREGISTER),
            live: Script::new(&format!("{NOW_MS_LUA}{LIVE}")),
        }
    }

    fn ttl_ms(&self) -> u64 {
        self.client.config().node_ttl.as_millis().max(1) as u64
    }

    /// Write the node's record (at start). Same as a heartbeat; see
    /// [`Heartbeat::record_existed`] for what its answer means here.
    pub async fn register(&self, node: &NodeInfo) -> Result<Heartbeat, CoordinationError> {
        self.heartbeat(node).await
    }

    /// Refresh the node's record (and its load figures) and its TTL.
    pub async fn heartbeat(&self, node: &NodeInfo) -> Result<Heartbeat, CoordinationError> {
        if node.node_id.is_empty() || node.node_id.contains(char::is_whitespace) {
            return Err(CoordinationError::Config(format!("node_id: must be non-empty without spaces, got {:?}", node.node_id)));
        }
        let record = serde_json::to_string(node).expect("a node record serializes");
        let keys = self.client.keys();
        let mut call = self.beat.prepare_invoke();
        call.key(keys.node(&node.node_id)).key(keys.nodes());
        call.arg(&node.node_id).arg(record).arg(self.ttl_ms());
        let (existed, now): (u64, u64) = self.client.invoke(&call).await?;
        Ok(Heartbeat { server_time_ms: now, record_existed: existed == 1 })
    }

    /// Remove the node's record at once (clean shutdown), so the leader re-places its
    /// replicas without waiting for the TTL. Answers whether it was registered.
    pub async fn deregister(&self, node_id: &str) -> Result<bool, CoordinationError> {
        let keys = self.client.keys();
        let mut call = self.deregister.prepare_invoke();
        call.key(keys.node(node_id)).key(keys.nodes()).arg(node_id);
        let removed: u64 = self.client.invoke(&call).await?;
        Ok(removed > 0)
    }

    /// The live nodes (by node id); nodes found dead are dropped from the index.
    pub async fn live_nodes(&self) -> Result<ClusterView, CoordinationError> {
        let keys = self.client.keys();
        let mut call = self.live.prepare_invoke();
        call.key(keys.nodes()).arg(keys.node_prefix()).arg(self.ttl_ms());
        let reply: Value = self.client.invoke(&call).await?;
        let [now, live, dead]: [Value; 3] =
            array(reply)?.try_into().map_err(|_| malformed("live nodes"))?;
        let mut view = ClusterView { server_time_ms: number(&now)?, ..Default::default() };
        for item in array(live)? {
            let [_, beat, record]: [Value; 3] =
                array(item)?.try_into().map_err(|_| malformed("live node"))?;
            match serde_json::from_str::<NodeInfo>(&string(&record)?) {
                Ok(info) => view.live.push(LiveNode { info, last_heartbeat_ms: number(&beat)? }),
                // A record of a newer (or older) Swell that this one cannot read: leave
                // it out rather than failing the whole view.
                Err(error) => tracing::warn!(%error, "membership: unreadable node record skipped"),
            }
        }
        for item in array(dead)? {
            view.dead.push(string(&item)?);
        }
        view.live.sort_by(|a, b| a.info.node_id.cmp(&b.info.node_id));
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_grouped_by_kind_and_memory() {
        let capacity = NodeCapacity::with_gpus(
            8,
            [("H100".to_string(), 80), ("H100".to_string(), 80), ("L4".to_string(), 24)],
        );
        assert_eq!(capacity.gpu_count(), 3);
        assert_eq!(capacity.gpus[0], GpuGroup { kind: "H100".into(), memory_bytes: 80, count: 2 });
        assert_eq!(capacity.gpus[1], GpuGroup { kind: "L4".into(), memory_bytes: 24, count: 1 });
    }

    #[test]
    fn deployment_load_sums_rates_and_takes_the_largest_queue() {
        let node = |id: &str, replicas, queued| LiveNode {
            info: NodeInfo {
                node_id: id.into(),
                role: NodeRole::Worker,
                capacity: NodeCapacity::default(),
                running: BTreeMap::from([(
                    "chat".to_string(),
                    DeploymentLoad { replicas, in_flight: 2, queued, tokens_generated_per_second: 10.0, ..Default::default() },
                )]),
                started_at_ms: 0,
                version: "test".into(),
                address: None,
            },
            last_heartbeat_ms: 0,
        };
        let view = ClusterView { server_time_ms: 0, live: vec![node("a", 1, 5), node("b", 2, 7)], dead: vec![] };
        let load = view.deployment_load("chat");
        assert_eq!((load.replicas, load.in_flight, load.queued), (3, 4, 7));
        assert_eq!(load.tokens_generated_per_second, 20.0);
        assert_eq!(view.deployments(), vec!["chat".to_string()]);
    }
}
