//! # swell-cluster: the queue between gateways and replicas
//!
//! Every request Swell accepts becomes a [`Job`] in a per-deployment queue; a replica
//! *leases* jobs from it, streams each job's output into a per-request *output stream*
//! and acknowledges the job when it is done. The gateway that accepted the request reads
//! that output stream (resuming from a sequence number) and relays it to the client.
//!
//! The [`Queue`] trait is shaped after Redis Streams so the distributed implementation
//! (consumer groups, leases with fencing epochs, `XREAD` from an id) drops in behind it;
//! [`InMemoryQueue`] is the embedded default, used when Swell runs on one machine;
//! [`RedisQueue`] is the distributed one, on Redis Streams.
//!
//! # Layout
//! - What travels (generation requests, sampling parameters, output events) is defined in
//!   `swell-protocol` and re-exported here.
//! - [`job`]: a queued job, a lease on it, enqueue receipts and queue depth.
//! - [`queue`]: the `Queue` trait, its semantics and its error type.
//! - [`memory`]: the in-process implementation.
//! - [`replica_report`]: what replicas report for routing (cached prefix blocks, load).
//! - [`routing`]: jobs promised to one replica for a bounded time, and which waiting job a
//!   consumer may take.
//! - [`redis_queue`]: the Redis Streams implementation (key layout, scripts, durability),
//!   and `redis_queue::testing`, a `redis-server` fixture for tests.
//! - [`redis_conn`]: how everything reaches Redis, one server or a Redis Cluster
//!   (`redis-cluster://` seed nodes), behind the same connection types.
//! - [`ingress_wire`]: the wire format of the Redis ingress stream (programs that are
//!   not Swell pushing requests into Redis) and a Rust producer for it.
//!
//! Distributed mode also needs the nodes to agree on who runs what:
//! - [`coordination`]: configuration, errors, connection and key layout of the cluster
//!   coordination on Redis (start here).
//! - [`membership`]: node records with capacity and load, heartbeats, live and dead nodes.
//! - [`leader`]: leader election with a lease and fencing tokens.
//! - [`placement`]: the pure placement function and the fenced placement store.
//! - [`coordinator`]: the loop a node runs: heartbeat, elect, place (if leader), and
//!   publish the node's assignment.

pub mod coordination;
pub mod coordinator;
pub mod ingress_wire;
pub mod job;
pub mod leader;
pub mod membership;
pub mod memory;
#[cfg(feature = "chaos-mutant")]
pub mod mutant;
pub mod placement;
pub mod queue;
pub mod redis_conn;
pub mod redis_queue;
pub mod replica_report;
pub mod routing;

pub use job::{AdmissionLimits, Enqueued, Job, JobId, Lease, LeaseRef, OutputOwner, Priority, QueueDepth};
pub use memory::{InMemoryQueue, InMemoryQueueConfig};
pub use swell_protocol::{
    Constraint, FinishReason, GenerationRequest, OutputEvent, SamplingParams, SequencedEvent, TokenLogprob,
    TopLogprob, Usage,
};
pub use queue::{AppendOutcome, Queue, QueueError};
pub use redis_queue::{RedisQueue, RedisQueueConfig};
pub use replica_report::{PrefixBlocks, ReplicaReport};
pub use routing::{JobRoute, Routing};

pub use coordination::{CoordinationClient, CoordinationConfig, CoordinationError};
pub use coordinator::{Coordinator, CoordinatorHandle, CoordinatorTick};
pub use leader::{LeaderElection, LeaderState, LeaderTick, LeadershipChange, LeaseHolder, LossReason};
pub use membership::{
    ClusterView, DeploymentLoad, GpuGroup, Heartbeat, LiveNode, Membership, NodeCapacity, NodeInfo, NodeRole,
};
pub use placement::{
    place, DeploymentTarget, GpuRequirement, NodeAssignment, Placement, PlacementNode, PlacementOutcome,
    PlacementStore, ReplicaRequirement, StoredPlacement, Unplaced, UnplacedReason, WriteOutcome,
};

/// Milliseconds since the Unix epoch: the one clock every node agrees on (roughly), used
/// for enqueue times and deadlines that cross process boundaries.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
