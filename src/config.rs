//! Swell's configuration: a TOML file, strict and typed, checked before any port is
//! bound. Unknown keys are errors naming the key; durations are strings (`"30s"`, `"10m"`).
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"
//! admin_token = "..."            # or SWELL_ADMIN_TOKEN / --admin-token
//! max_body_bytes = 4194304
//! request_timeout = "10m"
//!
//! [queue]
//! max_depth_per_deployment = 1000
//! lease_ttl = "30s"
//! drain_grace = "5m"
//!
//! [deployments.smollm]           # the real model (a local GGUF file)
//! engine = "llm"
//! [deployments.smollm.llm]
//! model_path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
//! threads = 2
//!
//! [deployments.chat]             # the same body as `PUT /admin/v1/deployments/chat`
//! engine = "sim"
//! max_tokens_default = 256
//! [deployments.chat.sim]
//! profile = "llama-3.1-8b-h100"
//! [deployments.chat.autoscaling]
//! min_replicas = 0
//! max_replicas = 4
//!
//! [tenants.acme]
//! limits = { requests_per_minute = 60 }
//! api_key_hashes = ["sha256:..."]  # `swell keygen` prints a key and its hash
//! priority = "high"              # high | normal (default) | low: queue service order
//! reserved_replicas = { chat = 1 }  # keep 1 replica of `chat` warm; served at `high`
//!                                # up to 1 × load_targets.concurrent_requests in flight
//!
//! [cluster]                      # only for several nodes sharing one Redis
//! redis_url = "redis://10.0.0.5:6379"  # or SWELL_REDIS_URL / --redis; unset: embedded
//! role = "all"                   # gateway | worker | all (or --role)
//! node_id = "gw-1"               # default: <hostname>-<pid> (or --node-id)
//! key_prefix = "swell"
//! max_deliveries = 3
//! output_ttl = "60s"
//! connect_timeout = "1s"
//! response_timeout = "2s"
//!
//! [quota]                        # only with quotas shared in Redis (many nodes)
//! node_count = 3                 # `local_share` enforces limit / node_count
//! redis_timeout = "75ms"
//! lease_ttl = "30s"
//! lease_renew_interval = "10s"
//! breaker_failures = 3
//! breaker_cooldown = "5s"
//! [quota.failure_policy]         # fail_open, fail_closed or local_share
//! default = "local_share"
//! concurrent_requests = "fail_closed"
//! ```
//!
//! Without a `[deployments]` table, Swell serves one deployment named `default` (see
//! [`crate::engines::default_deployment`]); an empty `[deployments]` table starts with
//! none (create them with the admin API).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use swell_autoscaler::AutoscalingPolicy;
use swell_actors::quota::TenantLimits;
use swell_actors::redis_quota::RedisQuotaConfig;
use swell_cluster::{Priority, RedisQueueConfig};
use swell_workers::llm::LlmConfig;
use swell_workers::sim::SimConfig;

use crate::engines;
use crate::tenants::{is_valid_key_hash, is_valid_name, TenantCapacity, ANONYMOUS_TENANT};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
pub const DEFAULT_MAX_QUEUE_DEPTH: u64 = 1000;
pub const DEFAULT_MAX_TOKENS: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// The TOML parser's message, as is: it names the key and shows the line.
    #[error("invalid config: {0}")]
    Parse(String),
    /// One line per problem, each naming its key.
    #[error("invalid config:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    /// `None` (no `[deployments]` table): the default deployment.
    #[serde(default)]
    pub deployments: Option<BTreeMap<String, DeploymentConfig>>,
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// How tenant quotas are shared by many nodes through Redis: the failure policy per
    /// limit kind, the node count of `local_share`, timeouts and leases. Unused while
    /// quotas are local.
    #[serde(default)]
    pub quota: RedisQuotaConfig,
    /// Distributed mode: one Redis shared by every node (queue and quotas), and what
    /// this node does. Without `redis_url`, everything is embedded in this process.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// The Redis ingress stream (programs pushing requests into Redis; docs/ingress.md),
    /// read by gateway nodes of a cluster.
    #[serde(default)]
    pub ingress: crate::ingress::IngressConfig,
}

/// What a node does in a cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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

    /// Whether this node's supervisors start replicas.
    pub fn runs_replicas(self) -> bool {
        self != NodeRole::Gateway
    }
}

/// `[cluster]`: several nodes on one Redis. The queue settings map onto
/// [`RedisQueueConfig`]; `[queue] lease_ttl` stays the lease of a replica on a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`. Unset: embedded queue and quotas.
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
            ..RedisQueueConfig::default()
        }
    }

    /// Checks the section; each error names its key.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let known_scheme = |url: &str| ["redis://", "rediss://", "redis+unix://"].iter().any(|s| url.starts_with(s));
        match &self.redis_url {
            None if self.role != NodeRole::All => errors.push(format!(
                "cluster.role: `{}` needs a shared redis (cluster.redis_url, SWELL_REDIS_URL or --redis); without one the only role is `all`",
                self.role.as_str()
            )),
            Some(url) if !known_scheme(url) => errors.push(format!(
                "cluster.redis_url: expected `redis://host:port[/db]` (or rediss://), got {url:?}"
            )),
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

/// The longest server-wide duration (`request_timeout`, `shutdown_timeout`, ...).
pub const MAX_SERVER_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// The most HTTP worker threads.
pub const MAX_HTTP_WORKERS: usize = 1024;
/// The largest `max_body_bytes`.
pub const MAX_BODY_BYTES: usize = 1 << 30;

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Bearer token of the admin API. Without one, the admin API is open when the server
    /// listens on loopback only, and disabled otherwise.
    pub admin_token: Option<String>,
    /// Allow a non-loopback listen address without API keys or an admin token.
    pub insecure: bool,
    /// The largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// How long a request may wait for a replica before it fails with
    /// `deadline_exceeded`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// On shutdown, how long in-flight requests get to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// A `: keep-alive` SSE comment is sent when nothing was sent for this long.
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    /// How often each deployment's autoscaler samples load and decides.
    #[serde(with = "humantime_serde")]
    pub autoscaler_tick: Duration,
    /// HTTP worker threads (default: one per CPU core).
    pub workers: Option<usize>,
    /// Bearer token that `/metrics` accepts (beside the admin token), for a scraper
    /// that should not hold the admin token.
    pub metrics_token: Option<String>,
    /// Serve `/metrics` to anyone who can reach the server, without a token (for a
    /// scraper on a private network). The metrics name tenants and deployments and show
    /// their traffic, so this is off by default: `/metrics` then asks for the metrics or
    /// the admin token, and is open without one only where the admin API is (no admin
    /// token, loopback only).
    pub metrics_public: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("the default listen address parses"),
            admin_token: None,
            insecure: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: Duration::from_secs(10 * 60),
            shutdown_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(10),
            autoscaler_tick: Duration::from_secs(1),
            workers: None,
            metrics_token: None,
            metrics_public: false,
        }
    }
}

/// `[queue]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Requests waiting per deployment before new ones get 503 `queue_full` (a
    /// deployment's `max_queue_depth` overrides it).
    pub max_depth_per_deployment: u64,
    /// A replica's lease on a request lasts this long unless renewed; a replica that
    /// dies loses its requests to another after this.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long a retiring replica lets its in-flight requests finish; what is still
    /// running then goes back to the queue and resumes on another replica after the
    /// tokens already delivered (`tests/drain_migration.rs`).
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Embedded mode: how long a finished request's output stays in memory (readable
    /// by a client that reconnects to its stream) before it is dropped. With a shared
    /// Redis the same role is `cluster.output_ttl`.
    #[serde(with = "humantime_serde")]
    pub output_retention: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_depth_per_deployment: DEFAULT_MAX_QUEUE_DEPTH,
            lease_ttl: Duration::from_secs(30),
            drain_grace: Duration::from_secs(5 * 60),
            output_retention: Duration::from_secs(60),
        }
    }
}

/// A deployment: `[deployments.NAME]`, and the body of `PUT /admin/v1/deployments/NAME`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Which engine serves it: `llm` or `sim` (see [`crate::engines::KNOWN_ENGINES`]).
    pub engine: String,
    /// The `sim` engine's settings (a built-in profile and overrides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim: Option<SimConfig>,
    /// The `llm` engine's settings (a GGUF model file and scheduler limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmConfig>,
    #[serde(default)]
    pub autoscaling: AutoscalingPolicy,
    /// `max_tokens` of a request that does not say (capped by what the context leaves).
    #[serde(default = "default_max_tokens")]
    pub max_tokens_default: u32,
    /// The largest `max_tokens` a request may ask for (default: the context length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_limit: Option<u32>,
    /// Requests waiting before new ones get 503 (default: `[queue]
    /// max_depth_per_deployment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_depth: Option<u64>,
    /// What one replica needs of a node, for the cluster's placement (ignored when
    /// embedded).
    #[serde(default, skip_serializing_if = "PlacementConfig::is_default")]
    pub placement: PlacementConfig,
    /// A `low` priority request is refused (503 `queue_full`, with `retry-after`) once
    /// this share of `max_queue_depth` is waiting, so that a backlog at `max_replicas`
    /// keeps room for `normal` and `high` requests (default 0.5; 1 admits `low` like the
    /// others).
    #[serde(default = "default_low_priority_queue_share")]
    pub low_priority_queue_share: f64,
}

fn default_low_priority_queue_share() -> f64 {
    0.5
}

/// `[deployments.NAME.placement]`: what one replica takes of a node in a cluster. GPUs
/// per replica come from the engine (`gpus_per_replica`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    /// CPU slots one replica takes of a node's `cluster.cpu_slots` (default: 1 for a
    /// CPU replica of the `llm` engine; 0 for `sim` replicas, which only sleep, and for
    /// GPU replicas).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_slots: Option<u32>,
    /// Only GPUs whose name contains this text (case-insensitive, e.g. `"H100"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_kind: Option<String>,
}

impl PlacementConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_max_tokens() -> u32 {
    DEFAULT_MAX_TOKENS
}

impl DeploymentConfig {
    /// A `sim` deployment of a built-in profile, default settings otherwise.
    pub fn sim_profile(profile: &str) -> Self {
        Self::sim(SimConfig { profile: profile.to_string(), ..SimConfig::default() })
    }

    /// An `llm` deployment with default settings otherwise.
    pub fn llm(llm: LlmConfig) -> Self {
        Self { engine: "llm".into(), sim: None, llm: Some(llm), ..Self::sim(SimConfig::default()) }
    }

    /// A `sim` deployment with default settings.
    pub fn sim(sim: SimConfig) -> Self {
        Self {
            engine: "sim".into(),
            sim: Some(sim),
            llm: None,
            autoscaling: AutoscalingPolicy::default(),
            max_tokens_default: DEFAULT_MAX_TOKENS,
            max_tokens_limit: None,
            max_queue_depth: None,
            placement: PlacementConfig::default(),
            low_priority_queue_share: default_low_priority_queue_share(),
        }
    }

    /// Checks the deployment; each error names its key under `prefix` (e.g.
    /// `deployments.chat`; empty for an admin request body).
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let key = |name: &str| if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
        let mut errors = Vec::new();
        if !engines::KNOWN_ENGINES.contains(&self.engine.as_str()) {
            errors.push(format!(
                "{}: unknown engine `{}`; known engines: {}",
                key("engine"),
                self.engine,
                engines::KNOWN_ENGINES.join(", ")
            ));
        }
        if self.engine != "sim" && self.sim.is_some() {
            errors.push(format!("{} is set but engine is `{}`", key("sim"), self.engine));
        }
        if self.engine != "llm" && self.llm.is_some() {
            errors.push(format!("{} is set but engine is `{}`", key("llm"), self.engine));
        }
        if self.engine == "llm" {
            match &self.llm {
                None => errors.push(format!("{} is required with engine `llm` (at least `model_path`)", key("llm"))),
                Some(llm) => {
                    if let Err(error) = llm.validate() {
                        let message = error.to_string();
                        let message = message.strip_prefix("invalid engine config: ").unwrap_or(&message);
                        errors.push(if prefix.is_empty() { message.to_string() } else { format!("{prefix}.{message}") });
                    }
                }
            }
        }
        if self.engine == "sim" {
            if let Err(error) = self.sim.clone().unwrap_or_default().resolve() {
                // The sim crate names keys as `sim.<field>`.
                let message = error.to_string();
                let message = message.strip_prefix("invalid engine config: ").unwrap_or(&message);
                if prefix.is_empty() {
                    errors.push(message.to_string());
                } else {
                    errors.push(format!("{prefix}.{message}"));
                }
            }
        }
        if let Err(error) = self.autoscaling.validate() {
            if prefix.is_empty() {
                errors.push(error);
            } else {
                errors.push(format!("{prefix}.{error}"));
            }
        }
        if self.max_tokens_default == 0 {
            errors.push(format!("{} must be at least 1", key("max_tokens_default")));
        }
        if !(self.low_priority_queue_share > 0.0 && self.low_priority_queue_share <= 1.0) {
            errors.push(format!(
                "{} must be above 0 and at most 1 (got {})",
                key("low_priority_queue_share"),
                self.low_priority_queue_share
            ));
        }
        if self.max_tokens_limit == Some(0) {
            errors.push(format!("{} must be at least 1", key("max_tokens_limit")));
        }
        if self.max_queue_depth == Some(0) {
            errors.push(format!("{} must be at least 1", key("max_queue_depth")));
        }
        errors
    }

    /// Whether `other` differs in what a running deployment cannot change in place (its
    /// engine and the engine's settings).
    pub fn engine_differs(&self, other: &DeploymentConfig) -> bool {
        self.engine != other.engine
            || self.sim.clone().unwrap_or_default() != other.sim.clone().unwrap_or_default()
            || self.llm != other.llm
    }
}

/// `[tenants.ID]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    #[serde(default)]
    pub limits: TenantLimits,
    /// Queue service order of its requests: `high`, `normal` (default) or `low`.
    #[serde(default)]
    pub priority: Priority,
    /// Replicas kept warm for it, per deployment (see [`crate::tenants`]).
    #[serde(default)]
    pub reserved_replicas: BTreeMap<String, u32>,
    /// Stored keys, `sha256:<hex of SHA-256 of the key>` (`swell keygen` prints both).
    #[serde(default)]
    pub api_key_hashes: Vec<String>,
    /// The Redis ingress answers its entries only at a `reply_to` starting with this
    /// (default: `<cluster.key_prefix>-replies:<n>:<id>:`, `<n>` the id's length; see
    /// docs/ingress.md). Must not overlap another tenant's, the default prefixes or
    /// Swell's own keys.
    #[serde(default)]
    pub reply_prefix: Option<String>,
}

impl TenantConfig {
    /// Its priority and reservations, as the tenant registry keeps them.
    pub fn capacity(&self) -> TenantCapacity {
        TenantCapacity { priority: self.priority, reserved_replicas: self.reserved_replicas.clone() }
    }
}

impl Config {
    /// A config for tests: loopback on port 0 (the OS picks the port), no deployments,
    /// short shutdown and keep-alive timings. Add deployments and tenants to taste.
    pub fn ephemeral() -> Config {
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().expect("a loopback address parses");
        config.server.shutdown_timeout = Duration::from_secs(5);
        config.server.workers = Some(2);
        config.deployments = Some(BTreeMap::new());
        config
    }

    /// Adds (or replaces) a deployment.
    pub fn with_deployment(mut self, name: &str, deployment: DeploymentConfig) -> Config {
        self.deployments.get_or_insert_with(BTreeMap::new).insert(name.to_string(), deployment);
        self
    }

    /// Adds (or replaces) a tenant.
    pub fn with_tenant(mut self, id: &str, tenant: TenantConfig) -> Config {
        self.tenants.insert(id.to_string(), tenant);
        self
    }

    /// Parses TOML text (not yet validated).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse(error.to_string().trim_end().to_string()))
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let config = Self::from_toml_str(&text)?;
        config.validate()?;
        Ok(config)
    }

    /// The deployments to create at start: the configured ones, or the default one (none
    /// when its model file is missing: `validate` refuses that config).
    pub fn initial_deployments(&self) -> Vec<(String, DeploymentConfig)> {
        match &self.deployments {
            Some(deployments) => deployments.iter().map(|(n, d)| (n.clone(), d.clone())).collect(),
            None => engines::default_deployment().into_iter().collect(),
        }
    }

    /// Whether any tenant has an API key.
    pub fn has_api_keys(&self) -> bool {
        self.tenants.values().any(|tenant| !tenant.api_key_hashes.is_empty())
    }

    /// Checks everything a parse cannot; each error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let server = &self.server;
        if self.deployments.is_none() && engines::default_deployment().is_none() {
            errors.push(engines::missing_default_model());
        }
        if server.max_body_bytes == 0 {
            errors.push("server.max_body_bytes must be at least 1".to_string());
        }
        for (key, value) in [
            ("server.request_timeout", server.request_timeout),
            ("server.keep_alive_interval", server.keep_alive_interval),
            ("server.autoscaler_tick", server.autoscaler_tick),
            ("queue.lease_ttl", self.queue.lease_ttl),
        ] {
            if value.is_zero() {
                errors.push(format!("{key} must be longer than 0s"));
            }
        }
        for (key, value, max) in [
            ("server.request_timeout", server.request_timeout, MAX_SERVER_DURATION),
            ("server.shutdown_timeout", server.shutdown_timeout, MAX_SERVER_DURATION),
            ("server.keep_alive_interval", server.keep_alive_interval, MAX_SERVER_DURATION),
            ("server.autoscaler_tick", server.autoscaler_tick, Duration::from_secs(60)),
            ("queue.lease_ttl", self.queue.lease_ttl, MAX_SERVER_DURATION),
            ("queue.drain_grace", self.queue.drain_grace, MAX_SERVER_DURATION),
            ("queue.output_retention", self.queue.output_retention, MAX_SERVER_DURATION),
        ] {
            if value > max {
                errors.push(format!(
                    "{key} ({}) must be at most {}",
                    humantime::format_duration(value),
                    humantime::format_duration(max)
                ));
            }
        }
        if server.workers == Some(0) || server.workers.is_some_and(|workers| workers > MAX_HTTP_WORKERS) {
            errors.push(format!("server.workers must be between 1 and {MAX_HTTP_WORKERS}"));
        }
        if server.max_body_bytes > MAX_BODY_BYTES {
            errors.push(format!("server.max_body_bytes must be at most {MAX_BODY_BYTES} (1 GiB)"));
        }
        if server.admin_token.as_deref().is_some_and(|token| token.trim().is_empty()) {
            errors.push("server.admin_token must not be empty".to_string());
        }
        if server.metrics_token.as_deref().is_some_and(|token| token.trim().is_empty()) {
            errors.push("server.metrics_token must not be empty".to_string());
        }
        if self.queue.max_depth_per_deployment == 0 {
            errors.push("queue.max_depth_per_deployment must be at least 1".to_string());
        }
        errors.extend(self.quota.validate("quota"));
        errors.extend(self.cluster.validate());
        if let Err(ingress) = self.ingress.validate() {
            errors.extend(ingress);
        }
        if self.cluster.is_distributed() && self.queue.lease_ttl < Duration::from_millis(300) {
            errors.push("queue.lease_ttl must be at least 300ms with a shared redis (leases are renewed every third of it)".to_string());
        }
        for (name, deployment) in self.deployments.iter().flatten() {
            if !is_valid_name(name) {
                errors.push(format!(
                    "deployments.{name}: invalid name; use 1 to 64 of a-z, A-Z, 0-9, `.`, `_`, `-`, `:` starting with a letter or digit"
                ));
            }
            errors.extend(deployment.validate(&format!("deployments.{name}")));
        }
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        for (id, tenant) in &self.tenants {
            if !is_valid_name(id) {
                errors.push(format!("tenants.{id}: invalid tenant id; use 1 to 64 of a-z, A-Z, 0-9, `.`, `_`, `-`, `:`"));
            }
            if let Err(error) = tenant.limits.validate(&format!("tenants.{id}.limits")) {
                errors.push(error);
            }
            for (index, hash) in tenant.api_key_hashes.iter().enumerate() {
                if !is_valid_key_hash(hash) {
                    errors.push(format!(
                        "tenants.{id}.api_key_hashes[{index}] must be `sha256:` followed by 64 lowercase hex digits"
                    ));
                } else if let Some(other) = owners.insert(hash, id) {
                    errors.push(format!(
                        "tenants.{id}.api_key_hashes[{index}] is also a key of tenant `{other}`"
                    ));
                }
            }
        }
        errors.extend(self.check_reservations());
        errors.extend(self.check_reply_prefixes());
        if let Err(error) = self.check_exposure() {
            errors.push(error);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Each configured reply prefix is well formed, clear of Swell's keys and the default
    /// prefixes, and overlaps no other tenant's.
    fn check_reply_prefixes(&self) -> Vec<String> {
        let namespace = crate::ingress::ReplyNamespace::of_config(self);
        let mut errors = Vec::new();
        let configured: Vec<(&str, &str)> = self
            .tenants
            .iter()
            .filter_map(|(id, tenant)| Some((id.as_str(), tenant.reply_prefix.as_deref()?)))
            .collect();
        for (id, prefix) in &configured {
            if let Err(error) = namespace.check_configured(prefix) {
                errors.push(format!("tenants.{id}.reply_prefix: {error}"));
            }
        }
        if let Some(((a, prefix_a), (b, prefix_b))) = crate::ingress::overlapping_prefixes(configured) {
            errors.push(format!("tenants.{b}.reply_prefix `{prefix_b}` overlaps tenants.{a}.reply_prefix `{prefix_a}`"));
        }
        errors
    }

    /// Each tenant's reservations name a configured deployment, and no deployment has more
    /// replicas reserved than its `autoscaling.max_replicas`.
    fn check_reservations(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let deployments: BTreeMap<String, DeploymentConfig> = self.initial_deployments().into_iter().collect();
        let mut reserved: BTreeMap<&str, u32> = BTreeMap::new();
        for (id, tenant) in &self.tenants {
            let prefix = format!("tenants.{id}");
            if let Err(error) = tenant.capacity().validate(&prefix) {
                errors.push(error);
                continue;
            }
            for (deployment, replicas) in &tenant.reserved_replicas {
                if !deployments.contains_key(deployment) {
                    errors.push(format!(
                        "{prefix}.reserved_replicas.{deployment}: no deployment `{deployment}` is configured"
                    ));
                    continue;
                }
                *reserved.entry(deployment).or_default() += replicas;
            }
        }
        for (deployment, replicas) in reserved {
            let max = deployments[deployment].autoscaling.max_replicas;
            if replicas > max {
                errors.push(format!(
                    "tenants.*.reserved_replicas.{deployment}: {replicas} replica(s) reserved in all, more than deployments.{deployment}.autoscaling.max_replicas ({max})"
                ));
            }
        }
        errors
    }

    /// Refuses a non-loopback listen address without API keys or an admin token, unless
    /// `insecure` is set.
    pub fn check_exposure(&self) -> Result<(), String> {
        let server = &self.server;
        if server.listen.ip().is_loopback() || server.insecure {
            return Ok(());
        }
        let mut missing = Vec::new();
        if !self.has_api_keys() {
            missing.push("no tenant has an api key (tenants.<id>.api_key_hashes)");
        }
        if server.admin_token.is_none() {
            missing.push("no admin token is set (server.admin_token, SWELL_ADMIN_TOKEN or --admin-token)");
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "server.listen: refusing to listen on non-loopback address {} because {}; set them, or pass --insecure (server.insecure = true) to serve anyway",
            server.listen,
            missing.join(" and ")
        ))
    }

    /// The tenants to create at start: the configured ones plus `anonymous`.
    pub fn initial_tenants(&self) -> Vec<(String, TenantConfig)> {
        let mut tenants: Vec<_> = self.tenants.iter().map(|(id, t)| (id.clone(), t.clone())).collect();
        if !self.tenants.contains_key(ANONYMOUS_TENANT) {
            tenants.push((ANONYMOUS_TENANT.to_string(), TenantConfig::default()));
        }
        tenants
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> String {
        let config = Config::from_toml_str(text).expect("parses");
        config.validate().expect_err("should be invalid").to_string()
    }

    #[test]
    fn an_empty_config_has_defaults_and_the_default_deployment() {
        let config = Config::from_toml_str("").unwrap();
        config.validate().unwrap();
        assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.server.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(config.server.keep_alive_interval, Duration::from_secs(10));
        assert_eq!(config.queue.max_depth_per_deployment, 1000);
        let deployments = config.initial_deployments();
        assert_eq!(deployments.len(), 1);
        assert_eq!(deployments[0].0, "default");
        assert_eq!(config.initial_tenants()[0].0, ANONYMOUS_TENANT);
    }

    #[test]
    fn an_empty_deployments_table_means_none() {
        let config = Config::from_toml_str("[deployments]\n").unwrap();
        assert!(config.initial_deployments().is_empty());
    }

    #[test]
    fn a_full_config_parses() {
        let config = Config::from_toml_str(
            r#"
            [server]
            listen = "127.0.0.1:0"
            admin_token = "secret"
            request_timeout = "2m"
            [queue]
            max_depth_per_deployment = 10
            lease_ttl = "10s"
            [deployments.chat]
            engine = "sim"
            max_tokens_default = 64
            max_queue_depth = 5
            [deployments.chat.sim]
            profile = "smollm2-135m-cpu"
            cold_start = "100ms"
            [deployments.chat.autoscaling]
            min_replicas = 0
            max_replicas = 2
            scale_to_zero_window = "5s"
            [tenants.acme]
            limits = { requests_per_minute = 2 }
            api_key_hashes = ["sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"]
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.server.request_timeout, Duration::from_secs(120));
        let chat = &config.deployments.as_ref().unwrap()["chat"];
        assert_eq!(chat.sim.as_ref().unwrap().cold_start, Some(Duration::from_millis(100)));
        assert_eq!(chat.autoscaling.scale_to_zero_window, Duration::from_secs(5));
        assert_eq!(config.tenants["acme"].limits.requests_per_minute, Some(2));
        assert!(config.has_api_keys());
    }

    #[test]
    fn autoscaling_rules_schedules_burst_and_predictive_parse_and_validate_with_the_key() {
        let config = Config::from_toml_str(
            r#"
            [deployments.chat]
            engine = "sim"
            [deployments.chat.autoscaling]
            max_replicas = 8
            tolerance = 0.05
            panic_threshold = 3
            [deployments.chat.autoscaling.load_targets]
            queue_delay_seconds = 2
            kv_cache_utilization = 0.8
            [[deployments.chat.autoscaling.schedules]]
            name = "business-hours"
            time_zone = "Europe/Paris"
            days = ["mon", "tue", "wed", "thu", "fri"]
            start = "08:00"
            end = "19:00"
            min_replicas = 2
            [[deployments.chat.autoscaling.rules]]
            signal = "queue_delay_seconds"
            above = 2.0
            for = "30s"
            add = 2
            [deployments.chat.autoscaling.predictive]
            mode = "preview"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let autoscaling = &config.deployments.as_ref().unwrap()["chat"].autoscaling;
        assert_eq!(autoscaling.schedules[0].min_replicas, Some(2));
        assert_eq!(autoscaling.rules[0].hold_for, Duration::from_secs(30));
        assert_eq!(autoscaling.panic_threshold, Some(3.0));

        let error = invalid(
            "[deployments.chat]\nengine = \"sim\"\n[[deployments.chat.autoscaling.rules]]\nsignal = \"queue_depth\"\nabove = 5\n",
        );
        assert!(error.contains("deployments.chat.autoscaling.rules[0] must set exactly one action"), "{error}");
        let error = invalid(
            "[deployments.chat]\nengine = \"sim\"\n[[deployments.chat.autoscaling.schedules]]\ntime_zone = \"Mars/Base\"\nstart = \"08:00\"\nend = \"09:00\"\nmin_replicas = 1\n",
        );
        assert!(error.contains("deployments.chat.autoscaling.schedules[0].time_zone (\"Mars/Base\")"), "{error}");
        let error = Config::from_toml_str(
            "[deployments.chat]\nengine = \"sim\"\n[[deployments.chat.autoscaling.rules]]\nsignal = \"gpu_temperature\"\nabove = 5\nadd = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("gpu_temperature"), "{error}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = Config::from_toml_str("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 1\n").unwrap_err().to_string();
        assert!(error.contains("listne"), "{error}");
        let error = Config::from_toml_str("[deployments.chat]\nengine = \"sim\"\nmax_replica = 3\n").unwrap_err().to_string();
        assert!(error.contains("max_replica"), "{error}");
        let error = Config::from_toml_str("[deployments.chat]\nengine = \"sim\"\n[deployments.chat.autoscaling]\nmax_replica = 3\n").unwrap_err().to_string();
        assert!(error.contains("max_replica"), "{error}");
        let error = Config::from_toml_str("[tenants.a]\nlimits = { rpm = 3 }\n").unwrap_err().to_string();
        assert!(error.contains("rpm"), "{error}");
        let error = Config::from_toml_str("[bogus]\n").unwrap_err().to_string();
        assert!(error.contains("bogus"), "{error}");
    }

    #[test]
    fn bad_durations_are_named() {
        let error = Config::from_toml_str("[server]\nrequest_timeout = \"ten minutes\"\n").unwrap_err().to_string();
        assert!(error.contains("request_timeout"), "{error}");
        let error = Config::from_toml_str("[queue]\nlease_ttl = 30\n").unwrap_err().to_string();
        assert!(error.contains("lease_ttl"), "{error}");
    }

    #[test]
    fn validation_errors_name_the_key() {
        let error = invalid("[deployments.chat]\nengine = \"sim\"\n[deployments.chat.autoscaling]\nmin_replicas = 3\nmax_replicas = 1\n");
        assert!(error.contains("deployments.chat.autoscaling.max_replicas"), "{error}");
        let error = invalid("[deployments.chat]\nengine = \"vllm\"\n");
        assert!(error.contains("deployments.chat.engine: unknown engine `vllm`; known engines: llm, sim"), "{error}");
        let error = invalid("[deployments.chat]\nengine = \"sim\"\n[deployments.chat.sim]\nprofile = \"nope\"\n");
        assert!(error.contains("deployments.chat.sim.profile"), "{error}");
        let error = invalid("[deployments.chat]\nengine = \"sim\"\nmax_tokens_default = 0\n");
        assert!(error.contains("deployments.chat.max_tokens_default"), "{error}");
        let error = invalid("[deployments.\"a/b\"]\nengine = \"sim\"\n");
        assert!(error.contains("deployments.a/b: invalid name"), "{error}");
        let error = invalid("[tenants.acme]\nlimits = { requests_per_minute = 0 }\n");
        assert!(error.contains("tenants.acme.limits.requests_per_minute"), "{error}");
        let error = invalid("[tenants.acme]\napi_key_hashes = [\"abc\"]\n");
        assert!(error.contains("tenants.acme.api_key_hashes[0]"), "{error}");
        let error = invalid("[queue]\nmax_depth_per_deployment = 0\n");
        assert!(error.contains("queue.max_depth_per_deployment"), "{error}");
        let error = invalid("[server]\nmax_body_bytes = 0\nkeep_alive_interval = \"0s\"\n");
        assert!(error.contains("server.max_body_bytes") && error.contains("server.keep_alive_interval"), "{error}");
    }

    #[test]
    fn the_quota_failure_policy_parses_and_is_validated() {
        use swell_actors::quota::LimitKind;
        use swell_actors::quota_failure::FailurePolicy;
        let config = Config::from_toml_str("").unwrap();
        assert_eq!(config.quota.failure_policy.default, FailurePolicy::LocalShare);
        assert_eq!(config.quota.node_count, 1);
        assert_eq!(config.quota.redis_timeout, Duration::from_millis(75));
        let config = Config::from_toml_str(
            r#"
            [quota]
            node_count = 4
            redis_timeout = "50ms"
            lease_ttl = "20s"
            lease_renew_interval = "5s"
            [quota.failure_policy]
            default = "fail_open"
            concurrent_requests = "fail_closed"
            output_tokens = "local_share"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let policy = &config.quota.failure_policy;
        assert_eq!(policy.for_kind(LimitKind::Requests), FailurePolicy::FailOpen);
        assert_eq!(policy.for_kind(LimitKind::ConcurrentRequests), FailurePolicy::FailClosed);
        assert_eq!(policy.for_kind(LimitKind::OutputTokens), FailurePolicy::LocalShare);
        assert_eq!(config.quota.node_count, 4);

        let error = Config::from_toml_str("[quota.failure_policy]\ndefault = \"fail_sometimes\"\n").unwrap_err().to_string();
        assert!(error.contains("fail_sometimes"), "{error}");
        let error = Config::from_toml_str("[quota]\nnode_cont = 3\n").unwrap_err().to_string();
        assert!(error.contains("node_cont"), "{error}");
        let error = invalid("[quota]\nnode_count = 0\nredis_timeout = \"0s\"\nlease_ttl = \"10s\"\nlease_renew_interval = \"8s\"\n");
        assert!(error.contains("quota.node_count"), "{error}");
        assert!(error.contains("quota.redis_timeout"), "{error}");
        assert!(error.contains("quota.lease_renew_interval"), "{error}");
    }

    #[test]
    fn the_cluster_section_parses_and_is_validated() {
        let config = Config::from_toml_str("").unwrap();
        assert!(!config.cluster.is_distributed());
        assert_eq!(config.cluster.role, NodeRole::All);
        assert!(config.cluster.redis_queue_config().is_none());
        let config = Config::from_toml_str(
            r#"
            [cluster]
            redis_url = "redis://10.0.0.5:6379/2"
            role = "gateway"
            node_id = "gw-1"
            key_prefix = "prod"
            max_deliveries = 5
            output_ttl = "2m"
            connect_timeout = "250ms"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.cluster.effective_node_id(), "gw-1");
        assert!(!config.cluster.role.runs_replicas() && config.cluster.role.serves_api());
        let queue = config.cluster.redis_queue_config().unwrap();
        assert_eq!(queue.url, "redis://10.0.0.5:6379/2");
        assert_eq!((queue.key_prefix.as_str(), queue.max_deliveries), ("prod", 5));
        assert_eq!(queue.output_ttl, Duration::from_secs(120));
        assert_eq!(queue.connect_timeout, Duration::from_millis(250));

        let error = Config::from_toml_str("[cluster]\nrole = \"boss\"\n").unwrap_err().to_string();
        assert!(error.contains("boss"), "{error}");
        let error = Config::from_toml_str("[cluster]\nredis = \"x\"\n").unwrap_err().to_string();
        assert!(error.contains("redis"), "{error}");
        let error = invalid("[cluster]\nrole = \"worker\"\n");
        assert!(error.contains("cluster.role: `worker` needs a shared redis"), "{error}");
        let error = invalid("[cluster]\nredis_url = \"localhost:6379\"\nkey_prefix = \"a{b}\"\nmax_deliveries = 0\nnode_id = \"a b\"\n");
        assert!(error.contains("cluster.redis_url: expected `redis://"), "{error}");
        assert!(error.contains("cluster.key_prefix"), "{error}");
        assert!(error.contains("cluster.node_id"), "{error}");
        let error = invalid("[cluster]\nredis_url = \"redis://h:1\"\nmax_deliveries = 0\n");
        assert!(error.contains("cluster.max_deliveries"), "{error}");
    }

    #[test]
    fn a_key_hash_belongs_to_one_tenant() {
        let hash = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let error = invalid(&format!("[tenants.a]\napi_key_hashes = [\"{hash}\"]\n[tenants.b]\napi_key_hashes = [\"{hash}\"]\n"));
        assert!(error.contains("tenants.b.api_key_hashes[0] is also a key of tenant `a`"), "{error}");
    }

    #[test]
    fn reply_prefixes_are_checked_and_never_overlap() {
        let config = Config::from_toml_str("[tenants.a]\nreply_prefix = \"acme:replies:\"\n[tenants.b]\n").unwrap();
        assert!(config.validate().is_ok());
        assert_eq!(config.tenants["a"].reply_prefix.as_deref(), Some("acme:replies:"));
        assert_eq!(config.tenants["b"].reply_prefix, None);
        let error = invalid("[tenants.a]\nreply_prefix = \"acme:\"\n[tenants.b]\nreply_prefix = \"acme:b:\"\n");
        assert!(error.contains("tenants.b.reply_prefix `acme:b:` overlaps tenants.a.reply_prefix `acme:`"), "{error}");
        let error = invalid("[tenants.a]\nreply_prefix = \"swell:x:\"\n");
        assert!(error.contains("tenants.a.reply_prefix: `swell:x:` overlaps swell's own keys"), "{error}");
        let error = invalid("[cluster]\nkey_prefix = \"prod\"\n[tenants.a]\nreply_prefix = \"prod-replies:9:\"\n");
        assert!(error.contains("tenants.a.reply_prefix: `prod-replies:9:` overlaps the default reply prefixes"), "{error}");
        let error = invalid("[tenants.a]\nreply_prefix = \"\"\n");
        assert!(error.contains("tenants.a.reply_prefix: must be 1 to 256 bytes"), "{error}");
    }

    #[test]
    fn non_loopback_listen_needs_keys_and_an_admin_token() {
        let error = invalid("[server]\nlisten = \"0.0.0.0:8080\"\n");
        assert!(error.contains("refusing to listen on non-loopback address 0.0.0.0:8080"), "{error}");
        assert!(error.contains("no tenant has an api key") && error.contains("no admin token"), "{error}");

        let hash = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let keys_only = format!("[server]\nlisten = \"0.0.0.0:8080\"\n[tenants.a]\napi_key_hashes = [\"{hash}\"]\n");
        let error = invalid(&keys_only);
        assert!(!error.contains("no tenant has an api key") && error.contains("no admin token"), "{error}");

        let secured = format!("[server]\nlisten = \"0.0.0.0:8080\"\nadmin_token = \"t\"\n[tenants.a]\napi_key_hashes = [\"{hash}\"]\n");
        Config::from_toml_str(&secured).unwrap().validate().unwrap();
        let insecure = "[server]\nlisten = \"0.0.0.0:8080\"\ninsecure = true\n";
        Config::from_toml_str(insecure).unwrap().validate().unwrap();
        Config::from_toml_str("[server]\nlisten = \"[::1]:8080\"\n").unwrap().validate().unwrap();
    }

    #[test]
    fn engine_changes_are_detected() {
        let a = DeploymentConfig::sim(SimConfig::default());
        let mut b = a.clone();
        b.autoscaling.max_replicas = 9;
        b.max_tokens_default = 5;
        assert!(!a.engine_differs(&b));
        b.sim = Some(SimConfig { profile: "smollm2-135m-cpu".into(), ..SimConfig::default() });
        assert!(a.engine_differs(&b));
        // No sim block is the default sim block.
        let c = DeploymentConfig { sim: None, ..a.clone() };
        assert!(!a.engine_differs(&c));
    }

    #[test]
    fn admin_bodies_validate_without_a_prefix() {
        let mut deployment = DeploymentConfig::sim(SimConfig::default());
        deployment.autoscaling.min_replicas = 5;
        deployment.autoscaling.max_replicas = 1;
        let errors = deployment.validate("");
        assert!(errors[0].starts_with("autoscaling.max_replicas"), "{errors:?}");
    }

    #[test]
    fn tenant_priorities_and_reservations_parse_and_are_checked() {
        let deployments = "[deployments.chat]\nengine = \"sim\"\n[deployments.chat.autoscaling]\nmax_replicas = 2\n";
        let config = Config::from_toml_str(&format!(
            "{deployments}[tenants.a]\npriority = \"high\"\nreserved_replicas = {{ chat = 1 }}\n[tenants.b]\npriority = \"low\"\n"
        ))
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.tenants["a"].capacity().priority, Priority::High);
        assert_eq!(config.tenants["a"].reserved_replicas["chat"], 1);
        assert_eq!(config.tenants["b"].priority, Priority::Low);
        assert_eq!(Config::from_toml_str("[tenants.c]\n").unwrap().tenants["c"].priority, Priority::Normal);

        let error = Config::from_toml_str("[tenants.a]\npriority = \"urgent\"\n").unwrap_err().to_string();
        assert!(error.contains("urgent") && error.contains("high"), "{error}");
        let too_many = format!(
            "{deployments}[tenants.a]\nreserved_replicas = {{ chat = 2 }}\n[tenants.b]\nreserved_replicas = {{ chat = 1 }}\n"
        );
        let error = invalid(&too_many);
        assert!(
            error.contains("tenants.*.reserved_replicas.chat: 3 replica(s) reserved in all, more than deployments.chat.autoscaling.max_replicas (2)"),
            "{error}"
        );
        let error = invalid(&format!("{deployments}[tenants.a]\nreserved_replicas = {{ nope = 1 }}\n"));
        assert!(error.contains("tenants.a.reserved_replicas.nope: no deployment `nope` is configured"), "{error}");
        let error = invalid(&format!("{deployments}[tenants.a]\nreserved_replicas = {{ chat = 0 }}\n"));
        assert!(error.contains("tenants.a.reserved_replicas.chat must be at least 1"), "{error}");
    }

    #[test]
    fn the_low_priority_queue_share_is_a_fraction() {
        let mut deployment = DeploymentConfig::sim(SimConfig::default());
        assert_eq!(deployment.low_priority_queue_share, 0.5);
        assert!(deployment.validate("").is_empty());
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            deployment.low_priority_queue_share = bad;
            let errors = deployment.validate("d");
            assert!(errors.iter().any(|e| e.starts_with("d.low_priority_queue_share must be above 0")), "{bad}: {errors:?}");
        }
    }
}
