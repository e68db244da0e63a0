//! `[cluster]`: several nodes on one Redis, and what this node does there.

use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use swell_cluster::NodeRole;
use swell_cluster::RedisQueueConfig;

use crate::tenants::is_valid_name;

/// `[cluster]`: several nodes on one Redis. The queue settings map onto
/// [`RedisQueueConfig`]; `[queue] lease_ttl` stays the lease of a replica on a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`, or a Redis Cluster's seed nodes
    /// `redis-cluster://[user:password@]host:port,host:port,...`. Unset: embedded queue
    /// and quotas.
    pub redis_url: Option<String>,
    pub role: NodeRole,
    /// This node's name in the cluster (replica ids, logs). Default `<hostname>-<pid>`.
    pub node_id: Option<String>,
    /// First part of every queue key (no `{` or `}`).
    pub key_prefix: String,
    /// A job whose replicas kept dying is failed (`delivery_limit`) after this many
    /// deliveries.
    pub max_deliveries: u32,
    /// How long a finished job's output stays readable in Redis.
    #[serde(with = "humantime_serde")]
    pub output_ttl: Duration,
    /// Upper bound on the life of a job's keys (collects abandoned jobs).
    #[serde(with = "humantime_serde")]
    pub job_max_age: Duration,
    /// How long opening a Redis connection may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a Redis command may take.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// How often the node checks that Redis answers (`/readyz`, fast 503s).
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// How often the node heartbeats, takes part in the leader election and reads its
    /// assignment (and, when it leads, runs the autoscalers and places replicas).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A node whose heartbeat is older than this is dead: its replicas are placed
    /// elsewhere (its jobs come back when their leases expire).
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// How long a leader lease lasts unrenewed: the longest the cluster goes without a
    /// leader after the leader dies.
    #[serde(with = "humantime_serde")]
    pub leader_lease_ttl: Duration,
    /// Redis replicas that must have an admission and a job's terminal event before the
    /// call goes on (`WAIT`), so a failover of their master cannot lose them. 0: no wait
    /// (a Redis without replicas). docs/distributed.md says what a failover can lose.
    pub wait_replicas: u32,
    /// The longest such a wait lasts (then logged, and the call goes on).
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// Partitions (hash slots) of every deployment's queue, so one busy deployment
    /// spreads over a Redis Cluster's masters (1: one). Every node must use the same
    /// number; docs/distributed.md says what partitions change.
    pub queue_partitions: u32,
    /// CPU replica slots this node offers (default: its CPU cores). A replica takes its
    /// deployment's `placement.cpu_slots`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_slots: Option<u32>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let queue = RedisQueueConfig::default();
        Self {
            redis_url: None,
            role: NodeRole::All,
            node_id: None,
            key_prefix: queue.key_prefix,
            max_deliveries: queue.max_deliveries,
            output_ttl: queue.output_ttl,
            job_max_age: queue.job_max_age,
            connect_timeout: queue.connect_timeout,
            response_timeout: queue.response_timeout,
            health_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_millis(500),
            node_ttl: Duration::from_secs(5),
            leader_lease_ttl: Duration::from_secs(5),
            wait_replicas: queue.wait_replicas,
            wait_timeout: queue.wait_timeout,
            queue_partitions: queue.queue_partitions,
            cpu_slots: None,
        }
    }
}

impl ClusterConfig {
    /// Whether this node shares a Redis with others.
    pub fn is_distributed(&self) -> bool {
        self.redis_url.is_some()
    }

    /// The node id: configured, or `<hostname>-<pid>`.
    pub fn effective_node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "swell".to_string());
        format!("{host}-{}", std::process::id())
    }

    /// The Redis queue's config (`None` without `redis_url`).
    pub fn redis_queue_config(&self) -> Option<RedisQueueConfig> {
        let url = self.redis_url.clone()?;
        Some(RedisQueueConfig { url, ..self.queue_settings() })
    }

    /// The coordination settings (membership, leader, placement); `None` without
    /// `redis_url`.
    pub fn coordination_config(&self) -> Option<swell_cluster::CoordinationConfig> {
        let url = self.redis_url.clone()?;
        Some(swell_cluster::CoordinationConfig { url, ..self.coordination_settings() })
    }

    fn coordination_settings(&self) -> swell_cluster::CoordinationConfig {
        swell_cluster::CoordinationConfig {
            key_prefix: self.key_prefix.clone(),
            heartbeat_interval: self.heartbeat_interval,
            node_ttl: self.node_ttl,
            leader_lease_ttl: self.leader_lease_ttl,
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            ..swell_cluster::CoordinationConfig::default()
        }
    }

    /// The CPU slots this node offers.
    pub fn effective_cpu_slots(&self) -> u32 {
        self.cpu_slots
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
    }

    /// The queue settings of this section, on the default url.
    fn queue_settings(&self) -> RedisQueueConfig {
        RedisQueueConfig {
            key_prefix: self.key_prefix.clone(),
            max_deliveries: self.max_deliveries,
            output_ttl: self.output_ttl,
            job_max_age: self.job_max_age,
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            wait_replicas: self.wait_replicas,
            wait_timeout: self.wait_timeout,
            queue_partitions: self.queue_partitions,
            ..RedisQueueConfig::default()
        }
    }

    /// Checks the section; each error names its key.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let known_scheme = |url: &str| ["redis://", "rediss://", "redis+unix://", swell_cluster::redis_conn::CLUSTER_SCHEME].iter().any(|s| url.starts_with(s));
        match &self.redis_url {
            None if self.role != NodeRole::All => errors.push(format!(
                "cluster.role: `{}` needs a shared redis (cluster.redis_url, SWELL_REDIS_URL or --redis); without one the only role is `all`",
                self.role.as_str()
            )),
            Some(url) if !known_scheme(url) => errors.push(format!(
                "cluster.redis_url: expected `redis://host:port[/db]` (or rediss://), or `redis-cluster://host:port,host:port,...` for a Redis Cluster, got {url:?}"
            )),
            Some(url) => {
                if let Err(error) = swell_cluster::redis_conn::RedisEndpoint::parse(url) {
                    errors.push(format!("cluster.redis_url: {error}"));
                }
            }
            _ => {}
        }
        if let Some(id) = &self.node_id {
            if !is_valid_name(id) {
                errors.push(format!(
                    "cluster.node_id: invalid node id {id:?}; use 1 to 64 of a-z, A-Z, 0-9, `.`, `_`, `-`, `:` starting with a letter or digit"
                ));
            }
        }
        if let Err(error) = self.queue_settings().validate() {
            errors.push(format!("cluster.{error}"));
        }
        if self.health_interval.is_zero() {
            errors.push("cluster.health_interval must be longer than 0s".to_string());
        }
        if let Err(error) = self.coordination_settings().validate() {
            errors.push(format!("cluster.{error}"));
        }
        errors
    }
}
