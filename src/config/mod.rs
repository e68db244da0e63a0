//! Swell's configuration: a TOML file, strict and typed, checked before any port is
//! bound. Unknown keys are errors naming the key; durations are strings (`"30s"`, `"10m"`).
//! `${NAME}` in a string value is the environment variable `NAME` ([`env_vars`]).
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
//! reserve_max_requests = 32      # a busy node's admissions per call (1: one each)
//! reserve_ttl = "1s"
//! [quota.failure_policy]         # fail_open, fail_closed or local_share
//! default = "local_share"
//! concurrent_requests = "fail_closed"
//! ```
//!
//! Without a `[deployments]` table, Swell serves one deployment named `default` (see
//! [`default_deployment`]); an empty `[deployments]` table starts with
//! none (create them with the admin API).

//!
//! # Layout
//! One file per section: [`server`], [`queue`], [`deployment`] (with the default
//! deployment), [`tenant`], [`cluster`]; `[quota]` is `swell_actors::redis_quota::RedisQuotaConfig`
//! and `[ingress]` is `crate::ingress::IngressConfig`. This file holds the whole
//! [`Config`], loading, and the checks that span sections.

mod cluster;
mod deployment;
pub mod env_vars;
mod queue;
mod server;
mod tenant;
#[cfg(test)]
mod tests;

pub use cluster::{ClusterConfig, NodeRole};
pub use deployment::{default_deployment, missing_default_model, DeploymentConfig, PlacementConfig, DEFAULT_DEPLOYMENT, KNOWN_ENGINES};
pub use queue::QueueConfig;
pub use server::*;
pub use tenant::TenantConfig;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use swell_actors::redis_quota::RedisQuotaConfig;

use crate::tenants::{is_valid_key_hash, is_valid_name, ANONYMOUS_TENANT};

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

    /// Parses TOML text (not yet validated), with `${NAME}` in string values replaced
    /// by environment variables (see [`env_vars`]).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let parse_error = |error: toml::de::Error| ConfigError::Parse(error.to_string().trim_end().to_string());
        // Parsed as written first, for errors that point at the line.
        let config: Config = toml::from_str(text).map_err(parse_error)?;
        if !text.contains('$') {
            return Ok(config);
        }
        let mut document: toml::Value = toml::from_str(text).map_err(parse_error)?;
        env_vars::expand_all(&mut document, "", &|name| std::env::var(name).ok()).map_err(ConfigError::Parse)?;
        serde::Deserialize::deserialize(document).map_err(parse_error)
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
            None => default_deployment().into_iter().collect(),
        }
    }

    /// The ingress reply namespace of this server (`cluster.key_prefix`,
    /// `quota.key_prefix`).
    pub fn reply_namespace(&self) -> crate::ingress::ReplyNamespace {
        crate::ingress::ReplyNamespace::new(&self.cluster.key_prefix, &self.quota.key_prefix)
    }

    /// Whether any tenant has an API key.
    pub fn has_api_keys(&self) -> bool {
        self.tenants.values().any(|tenant| !tenant.api_key_hashes.is_empty())
    }

    /// Checks everything a parse cannot; each error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.deployments.is_none() && default_deployment().is_none() {
            errors.push(missing_default_model());
        }
        errors.extend(self.server.validate());
        errors.extend(self.queue.validate());
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
        let namespace = self.reply_namespace();
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
