//! The deployment registry: deployment name (the OpenAI `model`) → a handle on its
//! running `DeploymentSupervisor`, its tokenizer and its request limits.
//!
//! Supervisors run on the control-plane arbiter (one thread for the control plane;
//! model math runs on each replica's own thread), never on an HTTP worker, so a
//! deployment outlives the HTTP worker that created it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_rt::ArbiterHandle;
use parking_lot::RwLock;
use swell_actors::routing::{DeploymentRouter, RoutingConfig};
use swell_actors::supervisor::{DeploymentSpec, DeploymentSupervisor, LoadReport};
use swell_actors::worker::WorkerConfig;
use swell_cluster::Queue;
use crate::generation::structured::ConstraintSupport;
use swell_workers::{EngineDescription, Tokenizer};

use crate::config::{DeploymentConfig, QueueConfig};
use crate::engines;

/// Every way creating, changing or reaching a deployment can fail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeploymentError {
    #[error("unknown engine `{engine}`; known engines: {}", .known.join(", "))]
    UnknownEngine { engine: String, known: Vec<String> },
    /// A deployment definition failed validation; `param` names the key.
    #[error("{message}")]
    InvalidConfig { message: String, param: Option<String> },
    #[error("deployment `{0}` already exists with another engine configuration; delete it and create it again")]
    EngineChangeRequiresRecreate(String),
    #[error("deployment `{0}` does not exist")]
    NotFound(String),
    /// Its supervisor does not answer.
    #[error("model `{deployment}` is unavailable: {reason}")]
    Unavailable { deployment: String, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl DeploymentError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            DeploymentError::UnknownEngine { .. } => "unknown_engine",
            DeploymentError::InvalidConfig { .. } => "invalid_config",
            DeploymentError::EngineChangeRequiresRecreate(_) => "engine_change_requires_recreate",
            DeploymentError::NotFound(_) => "deployment_not_found",
            DeploymentError::Unavailable { .. } => "deployment_unavailable",
            DeploymentError::Internal(_) => "internal_error",
        }
    }

    /// The config key the error is about, when there is one.
    pub fn param(&self) -> Option<&str> {
        match self {
            DeploymentError::InvalidConfig { param, .. } => param.as_deref(),
            _ => None,
        }
    }
}

/// What a deployment allows one request: checked at the edge before anything is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// Prompt plus output tokens of one sequence.
    pub context_length: u32,
    /// `max_tokens` when the request does not say (capped by what the context leaves).
    pub max_tokens_default: u32,
    /// The largest `max_tokens` a request may ask for.
    pub max_tokens_limit: u32,
    /// Whether the engine gives logprobs of the prompt (`echo` with `logprobs`).
    pub prompt_logprobs: bool,
    /// The output constraints (structured outputs) the engine enforces.
    pub constraints: ConstraintSupport,
}

/// A running deployment as the API sees it. Immutable: an update of its settings
/// replaces the handle (the supervisor stays).
pub struct DeploymentHandle {
    pub name: String,
    pub config: DeploymentConfig,
    pub supervisor: Addr<DeploymentSupervisor>,
    pub tokenizer: Arc<dyn Tokenizer>,
    pub description: EngineDescription,
    pub limits: ModelLimits,
    pub max_queue_depth: u64,
    /// Unix seconds of its creation (`created` in `/v1/models`).
    pub created: u64,
    /// In a cluster: this node's load of the deployment, written by its supervisor every
    /// tick, read by the node's heartbeat.
    pub load_report: Option<LoadReport>,
    /// Picks the replica for each job (`[deployments.NAME.routing]`).
    pub router: Arc<DeploymentRouter>,
}

/// The deployment's router for `config`'s routing settings.
fn router_for(name: &str, config: &DeploymentConfig, queue: Arc<dyn Queue>) -> Arc<DeploymentRouter> {
    let routing = RoutingConfig {
        policy: config.routing.policy,
        promise_bound: config.routing.promise_bound,
        ..RoutingConfig::default()
    };
    Arc::new(DeploymentRouter::new(name, queue, routing))
}

impl DeploymentHandle {
    /// The same running deployment with new settings (the engine is unchanged).
    pub fn with_config(&self, config: DeploymentConfig, queue: &QueueConfig) -> DeploymentHandle {
        let router = if config.routing == self.config.routing {
            self.router.clone()
        } else {
            router_for(&self.name, &config, self.router.queue())
        };
        DeploymentHandle {
            router,
            name: self.name.clone(),
            limits: model_limits(&config, &self.description),
            max_queue_depth: config.max_queue_depth.unwrap_or(queue.max_depth_per_deployment),
            config,
            supervisor: self.supervisor.clone(),
            tokenizer: self.tokenizer.clone(),
            description: self.description.clone(),
            created: self.created,
            load_report: self.load_report.clone(),
        }
    }
}

fn model_limits(config: &DeploymentConfig, description: &EngineDescription) -> ModelLimits {
    let context_length = description.context_length;
    ModelLimits {
        context_length,
        max_tokens_default: config.max_tokens_default,
        max_tokens_limit: config.max_tokens_limit.unwrap_or(context_length).min(context_length),
        prompt_logprobs: !description.unsupported_params.iter().any(|p| p == "prompt_logprobs"),
        constraints: ConstraintSupport::from_unsupported(&description.unsupported_params),
    }
}

/// What every deployment's supervisor and worker actors share.
#[derive(Debug, Clone)]
pub struct DeploymentSettings {
    pub queue: QueueConfig,
    pub tick: Duration,
    /// `false` on a gateway node: the supervisor starts no replicas.
    pub runs_replicas: bool,
    /// The queue is shared with other nodes (Redis).
    pub shared_queue: bool,
    /// This node's id in a cluster (part of every replica id).
    pub node_id: Option<String>,
}

/// Builds a deployment's engine factory and starts its supervisor on `arbiter`.
pub fn start_deployment(
    name: &str,
    config: DeploymentConfig,
    queue: Arc<dyn Queue>,
    settings: &DeploymentSettings,
    arbiter: &ArbiterHandle,
) -> Result<DeploymentHandle, DeploymentError> {
    let factory = engines::build_factory(&config)?;
    let description = factory.describe();
    let tokenizer = factory.tokenizer();
    let mut spec = DeploymentSpec::new(name, factory, config.autoscaling.clone());
    spec.worker = WorkerConfig {
        lease_ttl: settings.queue.lease_ttl,
        drain_grace: settings.queue.drain_grace,
        node_id: settings.node_id.clone(),
        ..WorkerConfig::default()
    };
    spec.tick = settings.tick;
    spec.runs_replicas = settings.runs_replicas;
    spec.shared_queue = settings.shared_queue;
    // In a cluster the leader decides how many replicas run where.
    spec.placement_driven = settings.shared_queue;
    let load_report = settings.shared_queue.then(LoadReport::default);
    spec.load_report = load_report.clone();
    let router = router_for(name, &config, queue.clone());
    let supervisor =
        DeploymentSupervisor::start_in_arbiter(arbiter, move |_| DeploymentSupervisor::new(spec, queue));
    Ok(DeploymentHandle {
        router,
        name: name.to_string(),
        limits: model_limits(&config, &description),
        max_queue_depth: config.max_queue_depth.unwrap_or(settings.queue.max_depth_per_deployment),
        config,
        supervisor,
        tokenizer,
        description,
        created: unix_seconds(),
        load_report,
    })
}

pub fn unix_seconds() -> u64 {
    swell_cluster::unix_millis() / 1000
}

/// Name → running deployment.
#[derive(Default)]
pub struct Deployments {
    map: RwLock<BTreeMap<String, Arc<DeploymentHandle>>>,
}

impl Deployments {
    pub fn get(&self, name: &str) -> Option<Arc<DeploymentHandle>> {
        self.map.read().get(name).cloned()
    }

    /// Adds or replaces a deployment's handle.
    pub fn insert(&self, handle: DeploymentHandle) -> Arc<DeploymentHandle> {
        let handle = Arc::new(handle);
        self.map.write().insert(handle.name.clone(), handle.clone());
        handle
    }

    /// Removes a deployment from routing (new requests get 404 at once).
    pub fn remove(&self, name: &str) -> Option<Arc<DeploymentHandle>> {
        self.map.write().remove(name)
    }

    /// Every deployment, by name.
    pub fn list(&self) -> Vec<Arc<DeploymentHandle>> {
        self.map.read().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.read().is_empty()
    }
}
