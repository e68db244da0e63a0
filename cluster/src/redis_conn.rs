//! How this crate (and the quota store and the ingress) reaches Redis: one server, or a
//! Redis Cluster of several masters, behind the same connection types.
//!
//! - [`RedisEndpoint`]: the address, parsed from one string. `redis://[user:pw@]host:port[/db]`
//!   is one server (or a managed endpoint that fails over behind one address, such as
//!   Sentinel behind a proxy); `redis-cluster://[user:pw@]host:port,host:port,...` is a
//!   Redis Cluster given by seed nodes (any few of its nodes: the client learns the rest
//!   and follows the slot map through failovers and resharding).
//! - [`SharedConnection`]: the one multiplexed connection every non-blocking call shares.
//!   On one server, a [`ConnectionManager`] that reconnects by itself; on a cluster, a
//!   [`ClusterConnection`] that routes each command (or script) to the master of its
//!   key's slot and refreshes the slot map on `MOVED`. Both have explicit connect and
//!   response timeouts (redis-rs's default would cut blocking commands at 500 ms).
//! - [`BlockingConnection`]: a dedicated connection for a blocking read (`XREAD BLOCK`),
//!   never the shared one: a blocked command holds up everything behind it on its
//!   connection. On a cluster it reaches every shard, so a pooled one serves a blocking
//!   read of any key.
//!
//! Callers keep every command and script within one hash slot; on one server nothing
//! here changes what a command does.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// The scheme of a Redis Cluster address: seed nodes separated by commas.
pub const CLUSTER_SCHEME: &str = "redis-cluster://";

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisEndpoint {
    /// One server: a `redis://` URL.
    Standalone(String),
    /// A Redis Cluster: one `redis://` URL per seed node.
    Cluster(Vec<String>),
}

impl RedisEndpoint {
    /// Parse `redis://…` (one server) or `redis-cluster://[user:pw@]h:p,h:p,…` (a
    /// cluster). The error says what is wrong, for a config message.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
            redis::Client::open(url).map_err(|e| format!("{url:?}: {e}"))?;
            return Ok(Self::Standalone(url.to_string()));
        };
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        if hosts.contains('/') {
            return Err(format!("{CLUSTER_SCHEME}: a cluster has only database 0; drop the /db from {url:?}"));
        }
        let seeds: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|host| !host.is_empty())
            .map(|host| format!("redis://{auth}{host}"))
            .collect();
        if seeds.is_empty() {
            return Err(format!("{CLUSTER_SCHEME}: name at least one seed node (host:port), got {url:?}"));
        }
        for seed in &seeds {
            redis::Client::open(seed.as_str()).map_err(|e| format!("seed node {seed:?}: {e}"))?;
        }
        Ok(Self::Cluster(seeds))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// What opens connections to the endpoint.
#[derive(Clone)]
pub enum RedisClient {
    Standalone(Client),
    /// The shared connection's client (bounded responses) and the blocking reads'
    /// client (no response timeout: the caller bounds each read by its block).
    Cluster { shared: ClusterClient, blocking: ClusterClient },
}

impl RedisClient {
    /// A client for `endpoint`; `response_timeout` bounds each non-blocking command.
    pub fn new(endpoint: &RedisEndpoint, connect_timeout: Duration, response_timeout: Duration) -> RedisResult<Self> {
        match endpoint {
            RedisEndpoint::Standalone(url) => Ok(Self::Standalone(Client::open(url.as_str())?)),
            RedisEndpoint::Cluster(seeds) => {
                let builder = |response: Duration| {
                    ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                        .connection_timeout(connect_timeout)
                        .response_timeout(response)
                        // Each call is bounded by its caller; a node that is failing
                        // over is retried a few times inside that bound.
                        .retries(4)
                        .min_retry_wait(20)
                        .max_retry_wait(500)
                };
                Ok(Self::Cluster {
                    shared: builder(response_timeout).build()?,
                    blocking: builder(Duration::from_secs(24 * 3600)).overall_response_timeout(None).build()?,
                })
            }
        }
    }

    /// The shared connection, connected now.
    pub async fn shared(&self, connect_timeout: Duration, response_timeout: Duration) -> RedisResult<SharedConnection> {
        match self {
            Self::Standalone(client) => {
                let config = manager_config(connect_timeout, response_timeout);
                Ok(SharedConnection::Standalone(ConnectionManager::new_with_config(client.clone(), config).await?))
            }
            Self::Cluster { .. } => {
                let connection = self.shared_lazy(connect_timeout, response_timeout)?;
                if let SharedConnection::Cluster(lazy) = &connection {
                    lazy.get().await?;
                }
                Ok(connection)
            }
        }
    }

    /// The shared connection, connecting at its first command (and, while Redis is not
    /// there, again at each later one), so a node starts while Redis is down.
    pub fn shared_lazy(&self, connect_timeout: Duration, response_timeout: Duration) -> RedisResult<SharedConnection> {
        match self {
            Self::Standalone(client) => {
                let config = manager_config(connect_timeout, response_timeout);
                Ok(SharedConnection::Standalone(ConnectionManager::new_lazy_with_config(client.clone(), config)?))
            }
            Self::Cluster { shared, .. } => {
                Ok(SharedConnection::Cluster(LazyCluster { client: shared.clone(), connection: Arc::new(OnceCell::new()) }))
            }
        }
    }

    /// A new dedicated connection for blocking reads.
    pub async fn blocking(&self, connect_timeout: Duration) -> RedisResult<BlockingConnection> {
        match self {
            Self::Standalone(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(None);
                Ok(BlockingConnection::Standalone(client.get_multiplexed_async_connection_with_config(&config).await?))
            }
            Self::Cluster { blocking, .. } => Ok(BlockingConnection::Cluster(blocking.get_async_connection().await?)),
        }
    }
}

/// The reconnecting connection's settings: bounded connects and responses, one retry,
/// reconnects backing off from 10 ms to 500 ms.
fn manager_config(connect_timeout: Duration, response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(500))
}

/// Open `url` and connect the shared connection, within twice `connect_timeout`. The
/// error is a message for the caller's `Unavailable` variant.
pub async fn connect_shared(
    url: &str,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<(RedisClient, SharedConnection), String> {
    let endpoint = RedisEndpoint::parse(url).map_err(|e| format!("redis: {e}"))?;
    let client = RedisClient::new(&endpoint, connect_timeout, response_timeout).map_err(|e| format!("redis: {e}"))?;
    // A cluster connects to each master in turn, after reading the slot map.
    let limit = connect_timeout * if endpoint.is_cluster() { 4 } else { 2 };
    let shared = tokio::time::timeout(limit, client.shared(connect_timeout, response_timeout))
        .await
        .map_err(|_| "redis: connect timed out".to_string())?
        .map_err(|e| format!("redis: {e}"))?;
    Ok((client, shared))
}

/// The connection every non-blocking call shares. Cheap to clone.
#[derive(Clone)]
pub enum SharedConnection {
    Standalone(ConnectionManager),
    Cluster(LazyCluster),
}

/// A cluster connection opened at first use (its clones share it). Once open, it
/// reconnects to each node by itself and follows the slot map.
#[derive(Clone)]
pub struct LazyCluster {
    client: ClusterClient,
    connection: Arc<OnceCell<ClusterConnection>>,
}

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        self.connection.get_or_try_init(|| self.client.get_async_connection()).await.cloned()
    }
}

impl SharedConnection {
    /// Run `command` on the master that serves `key`'s slot (on one server: the server).
    /// For commands that carry no key but must reach a given shard, such as `WAIT`
    /// after a write to `key`.
    pub async fn query_at<T: redis::FromRedisValue>(&mut self, key: &str, command: &Cmd) -> RedisResult<T> {
        match self {
            Self::Standalone(connection) => command.query_async(connection).await,
            Self::Cluster(lazy) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = lazy.get().await?.route_command(command.clone(), routing).await?;
                T::from_redis_value(value).map_err(Into::into)
            }
        }
    }
}

impl SharedConnection {
    /// Run a script (`EVALSHA`, loading it where it is missing). On a cluster, a node
    /// can answer `NOSCRIPT` again right after the load (seen on a freshly formed
    /// cluster): a script that answered `NOSCRIPT` did not run, so it is tried again, up
    /// to three times.
    pub async fn invoke<T: redis::FromRedisValue>(&mut self, invocation: &redis::ScriptInvocation<'_>) -> RedisResult<T> {
        let mut tries = 0;
        loop {
            match invocation.invoke_async(self).await {
                Err(error) if tries < 2 && error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10 * tries)).await;
                }
                other => return other,
            }
        }
    }
}

impl ConnectionLike for SharedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(connection) => connection.req_packed_command(cmd),
            Self::Cluster(lazy) => Box::pin(async move { lazy.get().await?.req_packed_command(cmd).await }),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(lazy) => {
                Box::pin(async move { lazy.get().await?.req_packed_commands(pipeline, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(connection) => connection.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

/// A dedicated connection for blocking reads.
#[derive(Clone)]
pub enum BlockingConnection {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for BlockingConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_and_cluster_addresses_parse_and_bad_ones_are_refused() {
        assert_eq!(
            RedisEndpoint::parse("redis://10.0.0.5:6379/2"),
            Ok(RedisEndpoint::Standalone("redis://10.0.0.5:6379/2".into()))
        );
        assert_eq!(
            RedisEndpoint::parse("redis-cluster://a:7000, b:7001,"),
            Ok(RedisEndpoint::Cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()]))
        );
        assert_eq!(
            RedisEndpoint::parse("redis-cluster://u:p@w@a:7000,b:7001"),
            Ok(RedisEndpoint::Cluster(vec!["redis://u:p@w@a:7000".into(), "redis://u:p@w@b:7001".into()]))
        );
        assert!(RedisEndpoint::parse("redis-cluster://").unwrap_err().contains("at least one seed"));
        assert!(RedisEndpoint::parse("redis-cluster://a:1/3").unwrap_err().contains("database 0"));
        assert!(RedisEndpoint::parse("http://a:1").is_err());
        assert!(RedisEndpoint::parse("redis-cluster://a:notaport").is_err());
    }
}
