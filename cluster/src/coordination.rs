//! Cluster coordination on Redis: what [`membership`](crate::membership),
//! [`leader`](crate::leader) and [`placement`](crate::placement) share: the
//! configuration, the error type, the connection and the key layout.
//!
//! In distributed mode every Swell node (a gateway, a worker, or both) runs a
//! [`Coordinator`](crate::coordinator::Coordinator): it heartbeats its [`NodeInfo`](crate::membership::NodeInfo)
//! (capacity and load) into Redis, competes for a leader lease, and reads the replicas
//! the leader assigned to it. The leader (one node at a time) reads the live nodes,
//! decides how many replicas each deployment should have, computes a placement with the
//! pure [`place`](crate::placement::place) function and writes it, fenced by its token.
//!
//! # Key layout
//! `P` is [`CoordinationConfig::key_prefix`] (default `swell`). Every key carries the
//! hash tag `{cluster}`, so all of them live in one Redis Cluster slot and every script
//! (which may touch several of them) is atomic within one slot. Coordination traffic is
//! a few small commands per node per heartbeat interval, so one slot is plenty.
//! - `P:{cluster}:node:<id>`: the node's record, its `NodeInfo` as JSON, with a TTL of
//!   [`CoordinationConfig::node_ttl`], refreshed by every heartbeat.
//! - `P:{cluster}:nodes`: zset of node ids by the server time (ms) of their last
//!   heartbeat: the index `live_nodes` walks.
//! - `P:{cluster}:leader`: the leader lease, `"<token> <node id>"`, with a TTL of
//!   [`CoordinationConfig::leader_lease_ttl`] (set only if absent, renewed only by its
//!   holder).
//! - `P:{cluster}:leader_token`: the fencing token counter, `INCR`ed at each acquisition.
//! - `P:{cluster}:placement`: hash: `version`, `token` and `leader` of the last write,
//!   `all` (the whole [`Placement`](crate::placement::Placement) as JSON), and per node
//!   `node:<id>` (its assignment as JSON) and `nver:<id>` (the version at which that
//!   assignment last changed).
//!
//! The `live_nodes` script reads the node records it finds in the index from a prefix
//! passed in `ARGV` rather than declared in `KEYS` (it discovers them inside the
//! script); they carry the same hash tag, so they are in the declared keys' slot, which
//! Redis Cluster accepts (the same arrangement as [`redis_queue`](crate::redis_queue)).
//!
//! # Clocks
//! Every expiry and every "is this heartbeat too old" decision uses the Redis server's
//! clock (`PX` TTLs, `TIME` inside scripts), never the clocks of the nodes. A leader also
//! keeps a local, conservative estimate of its lease (from the moment it *sent* the last
//! successful renewal, minus a margin), so it stops acting as leader before Redis could
//! have handed the lease to someone else; the fenced writes make it safe even when that
//! estimate is wrong (a paused process, a skewed clock).
//!
//! # Failures
//! - A node that stops heartbeating (crash, partition) loses its record after
//!   `node_ttl`; the next `live_nodes` call declares it dead and drops it from the index,
//!   and the next leader tick re-places its replicas on live nodes.
//! - A leader that dies or stops renewing loses its lease after `leader_lease_ttl`;
//!   another node acquires it at its next tick, with a higher token, and from then on
//!   every placement write of the old leader is rejected (`Fenced`).
//! - Redis restarted (with its data lost): nodes find their record missing at the next
//!   heartbeat and re-create it; the leader's renewal fails, it steps down and a leader is
//!   elected again; the token counter restarts from the server time in ms so tokens stay
//!   above those issued before. With the placement lost, the new leader waits `node_ttl`
//!   (so every live node has heartbeated again), then starts from the replicas the nodes
//!   report running, so running replicas stay where they are. Meanwhile nodes keep their
//!   last assignment (an empty store means "unknown", not "run nothing").
//!
//! Calls are bounded by `connect_timeout + response_timeout`; while Redis is unreachable
//! they fail fast with [`CoordinationError::Unavailable`], and the
//! shared connection reconnects by itself (on a Redis Cluster, `redis-cluster://` seed
//! nodes, every coordination key is in the slot of `{cluster}`, so it is one shard's
//! work and follows that shard through a failover).

use std::time::Duration;

use crate::redis_conn::SharedConnection;
use redis::{FromRedisValue, RedisError, ScriptInvocation, Value};
use serde::Deserialize;

/// How to reach Redis and the timing of heartbeats and leases.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinationConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// First part of every key (`<prefix>:{cluster}:...`). Must not contain braces.
    pub key_prefix: String,
    /// How often a node heartbeats (and the coordinator ticks).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A node whose last heartbeat is older than this is dead (its record expires then).
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// How long a leader lease lasts without renewal: the longest the cluster is
    /// without a leader after the leader dies.
    #[serde(with = "humantime_serde")]
    pub leader_lease_ttl: Duration,
    /// How long opening a connection may take before a call fails `Unavailable`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a command may take before the call fails `Unavailable`.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "swell".into(),
            heartbeat_interval: Duration::from_secs(1),
            node_ttl: Duration::from_secs(5),
            leader_lease_ttl: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
        }
    }
}

impl CoordinationConfig {
    /// Errors name the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.key_prefix.contains(['{', '}']) {
            return Err(format!("key_prefix: must not contain braces, got {:?}", self.key_prefix));
        }
        for (key, value) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("node_ttl", self.node_ttl),
            ("leader_lease_ttl", self.leader_lease_ttl),
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
        ] {
            if value.as_millis() == 0 {
                return Err(format!("{key}: must be at least 1ms"));
            }
        }
        if self.node_ttl < self.heartbeat_interval * 2 {
            return Err(format!(
                "node_ttl: must be at least twice heartbeat_interval ({:?}), got {:?}",
                self.heartbeat_interval, self.node_ttl
            ));
        }
        if self.leader_lease_ttl < self.heartbeat_interval * 2 {
            return Err(format!(
                "leader_lease_ttl: must be at least twice heartbeat_interval ({:?}), got {:?}",
                self.heartbeat_interval, self.leader_lease_ttl
            ));
        }
        Ok(())
    }
}

/// What a coordination call can fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoordinationError {
    /// Redis is unreachable, timed out or answered something unreadable.
    #[error("coordination store unavailable: {0}")]
    Unavailable(String),
    /// A leader write was refused: the caller no longer holds the lease with this token.
    #[error("fenced: token {token} is not the current leader's ({reason})")]
    Fenced { token: u64, reason: String },
    /// The configuration is invalid (the message names the key).
    #[error("invalid coordination config: {0}")]
    Config(String),
}

impl CoordinationError {
    /// Stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            CoordinationError::Unavailable(_) => "coordination_unavailable",
            CoordinationError::Fenced { .. } => "coordination_fenced",
            CoordinationError::Config(_) => "coordination_config",
        }
    }
}

/// The key names, all under the `{cluster}` hash tag.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    base: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self { base: format!("{prefix}:{{cluster}}") }
    }
    pub fn node_prefix(&self) -> String {
        format!("{}:node:", self.base)
    }
    pub fn node(&self, node_id: &str) -> String {
        format!("{}:node:{node_id}", self.base)
    }
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.base)
    }
    pub fn leader(&self) -> String {
        format!("{}:leader", self.base)
    }
    pub fn leader_token(&self) -> String {
        format!("{}:leader_token", self.base)
    }
    pub fn placement(&self) -> String {
        format!("{}:placement", self.base)
    }
}

/// A connection to the coordination store: one multiplexed, self-reconnecting
/// connection shared by membership, election and placement. Cheap to clone.
#[derive(Clone)]
pub struct CoordinationClient {
    config: CoordinationConfig,
    connection: SharedConnection,
    keys: Keys,
}

impl CoordinationClient {
    /// Connect (failing `Unavailable` if Redis does not answer within the timeouts).
    pub async fn connect(config: CoordinationConfig) -> Result<Self, CoordinationError> {
        config.validate().map_err(CoordinationError::Config)?;
        let (_, connection) =
            crate::redis_conn::connect_shared(&config.url, config.connect_timeout, config.response_timeout)
                .await
                .map_err(CoordinationError::Unavailable)?;
        let keys = Keys::new(&config.key_prefix);
        Ok(Self { config, connection, keys })
    }

    pub fn config(&self) -> &CoordinationConfig {
        &self.config
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The longest a call may take, reconnection included.
    fn call_timeout(&self) -> Duration {
        self.config.connect_timeout + self.config.response_timeout
    }

    /// Run a script (sent by hash, loaded again after a Redis restart).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, CoordinationError> {
        let mut connection = self.connection.clone();
        bounded(self.call_timeout(), connection.invoke(invocation)).await
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, CoordinationError> {
        let mut connection = self.connection.clone();
        bounded(self.call_timeout(), command.query_async(&mut connection)).await
    }
}

/// Lua: the server's clock in ms (scripts use it for every expiry decision).
pub(crate) const NOW_MS_LUA: &str = include_str!("lua/now_ms.lua");

async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, CoordinationError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(unavailable),
        Err(_) => Err(CoordinationError::Unavailable("redis: no answer in time".into())),
    }
}

pub(crate) fn unavailable(error: RedisError) -> CoordinationError {
    CoordinationError::Unavailable(format!("redis: {error}"))
}

pub(crate) fn malformed(what: &str) -> CoordinationError {
    CoordinationError::Unavailable(format!("redis: malformed reply ({what})"))
}

pub(crate) fn array(value: Value) -> Result<Vec<Value>, CoordinationError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(malformed("expected an array")),
    }
}

pub(crate) fn string(value: &Value) -> Result<String, CoordinationError> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).map_err(|_| malformed("utf-8")),
        Value::SimpleString(text) => Ok(text.clone()),
        Value::Int(number) => Ok(number.to_string()),
        Value::Nil => Ok(String::new()),
        _ => Err(malformed("expected a string")),
    }
}

pub(crate) fn number(value: &Value) -> Result<u64, CoordinationError> {
    match value {
        Value::Int(number) => u64::try_from(*number).map_err(|_| malformed("negative number")),
        _ => string(value)?.parse().map_err(|_| malformed("expected a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_values_name_their_key() {
        assert_eq!(CoordinationConfig::default().validate(), Ok(()));
        let bad = CoordinationConfig { key_prefix: "a{b}".into(), ..Default::default() };
        assert!(bad.validate().unwrap_err().starts_with("key_prefix"));
        let bad = CoordinationConfig { node_ttl: Duration::from_millis(1500), ..Default::default() };
        assert!(bad.validate().unwrap_err().starts_with("node_ttl"));
        let config: CoordinationConfig =
            serde_json::from_str(r#"{"node_ttl": "10s", "heartbeat_interval": "500ms"}"#).unwrap();
        assert_eq!(config.node_ttl, Duration::from_secs(10));
        assert!(serde_json::from_str::<CoordinationConfig>(r#"{"nope": 1}"#).is_err());
    }

    #[test]
    fn every_key_carries_the_cluster_hash_tag() {
        let keys = Keys::new("swell");
        for key in [keys.node("n1"), keys.nodes(), keys.leader(), keys.leader_token(), keys.placement()] {
            assert!(key.starts_with("swell:{cluster}:"), "{key}");
        }
    }
}
