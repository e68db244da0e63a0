//! `AppState`: what every handler shares — the deployments, the tenants, the queue, the
//! effective config and the server's lifecycle flags.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_rt::ArbiterHandle;
use swell_actors::quota::{QuotaBackend, TenantLimits};
use swell_actors::supervisor::SetReservedFloor;
use swell_cluster::{Queue, RedisQueue};

use crate::config::{Config, DeploymentConfig, NodeRole};
use crate::deployments::{start_deployment, DeploymentError, DeploymentHandle, DeploymentSettings, Deployments};
use crate::engines;
use crate::tenants::{TenantCapacity, TenantError, Tenants};

pub struct AppState {
    /// The effective configuration (CLI overrides applied).
    pub config: Config,
    pub deployments: Deployments,
    pub tenants: Tenants,
    pub queue: Arc<dyn Queue>,
    /// Where supervisors and quota actors run.
    pub control: ArbiterHandle,
    /// All configured deployments were created.
    ready: AtomicBool,
    /// Shutdown has begun (`/readyz` answers 503, WebSockets close when idle).
    shutting_down: tokio::sync::watch::Sender<bool>,
    /// Serializes admin changes (create/update/delete of deployments and tenants).
    pub admin_writes: tokio::sync::Mutex<()>,
    /// This node's place in a cluster (embedded: role `all`, no Redis).
    pub node: NodeState,
    /// This node's coordination (membership, leader, placement), once started.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster_node::ClusterNode>>,
}

/// What this node is in a cluster sharing one Redis.
pub struct NodeState {
    pub role: NodeRole,
    pub node_id: String,
    /// The shared queue, when distributed (for health checks).
    pub redis: Option<Arc<RedisQueue>>,
    /// Whether Redis answered the last health check (always `true` when embedded).
    redis_up: AtomicBool,
}

impl NodeState {
    pub fn is_distributed(&self) -> bool {
        self.redis.is_some()
    }

    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Ordering::SeqCst)
    }

    /// Records a health check's result; logs changes.
    pub fn set_redis_up(&self, up: bool) {
        let was = self.redis_up.swap(up, Ordering::SeqCst);
        if was != up {
            if up {
                tracing::info!(node = %self.node_id, "redis answers again");
            } else {
                tracing::warn!(node = %self.node_id, "redis is unreachable: new requests get 503 until it is back");
            }
        }
    }
}

impl AppState {
    /// Builds the state and its tenants (from the config); deployments are started by
    /// [`AppState::start_configured_deployments`].
    pub fn new(config: Config, queue: Arc<dyn Queue>, control: ArbiterHandle) -> Result<Self, TenantError> {
        Self::for_node(config, queue, None, control)
    }

    /// Builds the state of a node; with `redis` (the shared queue), quotas are shared
    /// through the same Redis (`[quota]`). Call inside an actix system.
    pub fn for_node(
        config: Config,
        queue: Arc<dyn Queue>,
        redis: Option<Arc<RedisQueue>>,
        control: ArbiterHandle,
    ) -> Result<Self, TenantError> {
        let quota_backend = match (&redis, &config.cluster.redis_url) {
            (Some(_), Some(url)) => QuotaBackend::redis(url, config.quota.clone())
                .map_err(|error| TenantError::Internal(format!("cannot set up shared quotas: {error}")))?,
            _ => QuotaBackend::Local,
        };
        let tenants = Tenants::with_quota_backend(control.clone(), quota_backend);
        for (id, tenant) in config.initial_tenants() {
            // Reservations were checked against the configured deployments by
            // `Config::validate`; the floors are applied as the deployments start.
            tenants.upsert(&id, tenant.limits.clone(), tenant.capacity());
            // Checked against the others and swell's keys by `Config::validate`.
            tenants.set_reply_prefix(&id, tenant.reply_prefix.clone())?;
            for hash in &tenant.api_key_hashes {
                tenants.add_key_hash(&id, hash)?;
            }
        }
        let node = NodeState {
            role: config.cluster.role,
            node_id: config.cluster.effective_node_id(),
            redis,
            redis_up: AtomicBool::new(true),
        };
        Ok(Self {
            node,
            config,
            deployments: Deployments::default(),
            tenants,
            queue,
            control,
            ready: AtomicBool::new(false),
            shutting_down: tokio::sync::watch::Sender::new(false),
            admin_writes: tokio::sync::Mutex::new(()),
            cluster: std::sync::OnceLock::new(),
        })
    }

    pub fn deployment_settings(&self) -> DeploymentSettings {
        DeploymentSettings {
            queue: self.config.queue.clone(),
            tick: self.config.server.autoscaler_tick,
            runs_replicas: self.node.role.runs_replicas(),
            shared_queue: self.node.is_distributed(),
            node_id: self.node.is_distributed().then(|| self.node.node_id.clone()),
        }
    }

    /// Starts every deployment of the config (or the default one), then marks the server
    /// ready.
    pub fn start_configured_deployments(&self) -> Result<(), DeploymentError> {
        for (name, deployment) in self.config.initial_deployments() {
            tracing::info!("deployment `{name}`: {}", engines::describe_choice(&deployment));
            self.create_deployment(&name, deployment)?;
        }
        self.ready.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Starts a deployment and adds it to routing.
    pub fn create_deployment(
        &self,
        name: &str,
        config: DeploymentConfig,
    ) -> Result<Arc<DeploymentHandle>, DeploymentError> {
        let reserved = self.tenants.reserved_replicas(name, None);
        check_reserved_within_max(name, reserved, &config).map_err(invalid_reservation)?;
        let handle =
            start_deployment(name, config, self.queue.clone(), &self.deployment_settings(), &self.control)?;
        if reserved > 0 {
            handle.supervisor.do_send(SetReservedFloor(reserved));
        }
        Ok(self.deployments.insert(handle))
    }

    /// Creates a tenant or changes its limits, priority and reservations. Refuses a
    /// reservation on a deployment that does not exist, or one that would reserve more
    /// replicas of a deployment (all tenants together) than its `max_replicas`; then
    /// moves the floor of every deployment whose reservations changed.
    pub fn upsert_tenant(
        &self,
        id: &str,
        limits: TenantLimits,
        capacity: TenantCapacity,
    ) -> Result<crate::tenants::Upsert, TenantError> {
        let invalid = |message: String| TenantError::InvalidConfig { message, param: Some("reserved_replicas".into()) };
        capacity.validate("").map_err(|error| invalid(error.trim_start_matches('.').to_string()))?;
        for (name, replicas) in &capacity.reserved_replicas {
            let deployment =
                self.deployments.get(name).ok_or_else(|| invalid(format!("reserved_replicas.{name}: no deployment `{name}` exists")))?;
            let others = self.tenants.reserved_replicas(name, Some(id));
            check_reserved_within_max(name, others + replicas, &deployment.config).map_err(invalid)?;
        }
        let before = self.tenants.handle(id).map(|tenant| tenant.capacity.reserved_replicas).unwrap_or_default();
        let changed: Vec<String> = before
            .keys()
            .chain(capacity.reserved_replicas.keys())
            .filter(|name| before.get(*name) != capacity.reserved_replicas.get(*name))
            .cloned()
            .collect();
        let upsert = self.tenants.upsert(id, limits, capacity);
        for name in changed {
            if let Some(deployment) = self.deployments.get(&name) {
                deployment.supervisor.do_send(SetReservedFloor(self.tenants.reserved_replicas(&name, None)));
            }
        }
        Ok(upsert)
    }

    /// The replicas tenants reserve on `deployment` fit a (new) config of it.
    pub fn check_reservations_fit(&self, deployment: &str, config: &DeploymentConfig) -> Result<(), DeploymentError> {
        check_reserved_within_max(deployment, self.tenants.reserved_replicas(deployment, None), config)
            .map_err(invalid_reservation)
    }

    /// Whether the admin API may be used without a token: no token is configured and
    /// the server listens on loopback only.
    pub fn admin_open_without_token(&self) -> bool {
        self.config.server.admin_token.is_none() && self.config.server.listen.ip().is_loopback()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_shutting_down()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutting_down.borrow()
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub async fn shutdown_started(&self) {
        let mut receiver = self.shutting_down.subscribe();
        let _ = receiver.wait_for(|shutting_down| *shutting_down).await;
    }
}

/// Reserved replicas of `deployment` (all tenants together) fit its `max_replicas`;
/// the error is the message.
fn check_reserved_within_max(deployment: &str, reserved: u32, config: &DeploymentConfig) -> Result<(), String> {
    let max = config.autoscaling.max_replicas;
    if reserved > max {
        return Err(format!(
            "tenants reserve {reserved} replica(s) of deployment `{deployment}`, more than its autoscaling.max_replicas ({max})"
        ));
    }
    Ok(())
}

fn invalid_reservation(message: String) -> DeploymentError {
    DeploymentError::InvalidConfig { message, param: Some("reserved_replicas".into()) }
}
