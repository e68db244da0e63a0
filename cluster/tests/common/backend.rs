//! The queue under test: the embedded one or Redis (on a `redis-server` of its own), for
//! the suites that run every scenario against both.

use std::sync::Arc;
use std::time::Duration;

use swell_cluster::redis_queue::testing::{RedisCluster, RedisServer, RedisServerOptions};
use swell_cluster::{InMemoryQueue, InMemoryQueueConfig, Queue, RedisQueue, RedisQueueConfig};

/// A queue under test, and the server behind it (if any), kept alive with it.
pub struct Harness {
    pub queue: Arc<dyn Queue>,
    _server: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

#[derive(Clone, Copy)]
pub enum Backend {
    InMemory,
    Redis,
    /// A Redis Cluster of 3 masters: the deployment's keys and each job's keys hash to
    /// slots spread over the shards.
    RedisCluster,
}

pub struct Settings {
    pub max_deliveries: u32,
    /// How long a silent replica keeps the jobs routed to it.
    pub route_liveness: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self { max_deliveries: 3, route_liveness: Duration::from_secs(2) }
    }
}

impl Backend {
    pub async fn start(self, settings: Settings) -> Harness {
        match self {
            Backend::InMemory => Harness {
                queue: Arc::new(InMemoryQueue::new(InMemoryQueueConfig {
                    max_deliveries: settings.max_deliveries,
                    output_retention: Duration::from_secs(60),
                    route_liveness: settings.route_liveness,
                    ..InMemoryQueueConfig::default()
                })),
                _server: None,
                _cluster: None,
            },
            Backend::Redis => {
                let server = RedisServer::start(RedisServerOptions::default());
                let config = RedisQueueConfig { route_liveness: settings.route_liveness, ..redis_config(&server, settings.max_deliveries) };
                let queue = RedisQueue::connect(config)
                    .await
                    .expect("connect to the test redis-server");
                Harness { queue: Arc::new(queue), _server: Some(server), _cluster: None }
            }
            Backend::RedisCluster => {
                let cluster = RedisCluster::start(3, 0);
                let config = RedisQueueConfig {
                    url: cluster.url(),
                    route_liveness: settings.route_liveness,
                    ..redis_config_at(String::new(), settings.max_deliveries)
                };
                let queue = RedisQueue::connect(config).await.expect("connect to the test redis cluster");
                Harness { queue: Arc::new(queue), _server: None, _cluster: Some(cluster) }
            }
        }
    }
}

pub fn redis_config(server: &RedisServer, max_deliveries: u32) -> RedisQueueConfig {
    redis_config_at(server.url(), max_deliveries)
}

pub fn redis_config_at(url: String, max_deliveries: u32) -> RedisQueueConfig {
    RedisQueueConfig {
        url,
        key_prefix: "test".into(),
        max_deliveries,
        connect_timeout: Duration::from_millis(200),
        response_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}



/// `conformance!(a, b, ...)`: a test per scenario and backend, `in_memory::a`,
/// `redis::a` and `redis_cluster::a` calling `scenarios::a(Backend::…)` (the test file
/// has a `scenarios` module and `Backend` in scope).
#[macro_export]
macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod in_memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::scenarios::$scenario(super::Backend::InMemory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::scenarios::$scenario(super::Backend::Redis).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::scenarios::$scenario(super::Backend::RedisCluster).await;
                }
            )*
        }
    };
}
