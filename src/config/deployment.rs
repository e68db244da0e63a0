//! `[deployments.<name>]`: a deployment (engine, limits, autoscaling, placement), and
//! the default deployment served when the config names none.


use serde::{Deserialize, Serialize};
use swell_autoscaler::AutoscalingPolicy;
use swell_workers::external::ExternalConfig;
use swell_workers::llm::{find_default_model, LlmConfig};
use swell_workers::sim::SimConfig;

use super::*;

/// Engine names a deployment may use.
pub const KNOWN_ENGINES: &[&str] = &["llm", "sim", "external"];

/// The name of the deployment served when the config names none.
pub const DEFAULT_DEPLOYMENT: &str = "default";

/// The deployment served when the config has no `[deployments]` table: the real model,
/// when its file is present.
pub fn default_deployment() -> Option<(String, DeploymentConfig)> {
    let path = find_default_model()?;
    Some((DEFAULT_DEPLOYMENT.to_string(), DeploymentConfig::llm(LlmConfig::new(path))))
}

/// Why there is no default deployment, and how to get one.
pub fn missing_default_model() -> String {
    let candidates: Vec<String> = swell_workers::llm::default_model_candidates()
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    format!(
        "deployments: none is configured and the default model file is missing (looked for {}); \
         run scripts/fetch-model (or scripts/serve, which fetches it), set SWELL_MODEL_PATH, \
         or configure [deployments] (engine = \"sim\" runs the performance model without one)",
        candidates.join(", ")
    )
}

/// A deployment: `[deployments.NAME]`, and the body of `PUT /admin/v1/deployments/NAME`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Which engine serves it: `llm`, `sim` or `external` (see [`KNOWN_ENGINES`]).
    pub engine: String,
    /// The `sim` engine's settings (a built-in profile and overrides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim: Option<SimConfig>,
    /// The `llm` engine's settings (a GGUF model file and scheduler limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmConfig>,
    /// The `external` engine's settings: an engine process per replica (llama-server,
    /// vLLM, SGLang, TGI) or engines at fixed endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalConfig>,
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
    /// How jobs are matched to replicas (`[deployments.NAME.routing]`).
    #[serde(default, skip_serializing_if = "RoutingSettings::is_default")]
    pub routing: RoutingSettings,
}

/// `[deployments.NAME.routing]`: which replica runs each job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSettings {
    /// `cache-aware` (default): the replica expected to give the first token soonest,
    /// counting the prompt prefix it holds against the prefill queued on it;
    /// `session`: the replica that served the request's `user` before; `any`: no
    /// preference.
    pub policy: swell_router::RoutingPolicy,
    /// How long a routed job waits for its replica before any replica may take it
    /// (default 2 s; 10 ms to 60 s).
    #[serde(with = "humantime_serde")]
    pub promise_bound: Duration,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self { policy: swell_router::RoutingPolicy::CacheAware, promise_bound: swell_router::DEFAULT_PROMISE_BOUND }
    }
}

impl RoutingSettings {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
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
    /// CPU replica of the `llm` or `external` engine; 0 for `sim` replicas, which only sleep, and for
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

/// An engine's config error (which names its key as `<engine>.<field>`) under `prefix`.
fn engine_config_error(prefix: &str, error: &swell_workers::EngineError) -> String {
    let message = error.to_string();
    let message = message.strip_prefix("invalid engine config: ").unwrap_or(&message);
    if prefix.is_empty() {
        message.to_string()
    } else {
        format!("{prefix}.{message}")
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

    /// An `external` deployment with default settings otherwise.
    pub fn external(external: ExternalConfig) -> Self {
        Self { engine: "external".into(), sim: None, external: Some(external), ..Self::sim(SimConfig::default()) }
    }

    /// A `sim` deployment with default settings.
    pub fn sim(sim: SimConfig) -> Self {
        Self {
            engine: "sim".into(),
            sim: Some(sim),
            llm: None,
            external: None,
            autoscaling: AutoscalingPolicy::default(),
            max_tokens_default: DEFAULT_MAX_TOKENS,
            max_tokens_limit: None,
            max_queue_depth: None,
            placement: PlacementConfig::default(),
            low_priority_queue_share: default_low_priority_queue_share(),
            routing: RoutingSettings::default(),
        }
    }

    /// Checks the deployment; each error names its key under `prefix` (e.g.
    /// `deployments.chat`; empty for an admin request body).
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let key = |name: &str| if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
        let mut errors = Vec::new();
        if !KNOWN_ENGINES.contains(&self.engine.as_str()) {
            errors.push(format!(
                "{}: unknown engine `{}`; known engines: {}",
                key("engine"),
                self.engine,
                KNOWN_ENGINES.join(", ")
            ));
        }
        if self.engine != "sim" && self.sim.is_some() {
            errors.push(format!("{} is set but engine is `{}`", key("sim"), self.engine));
        }
        if self.engine != "llm" && self.llm.is_some() {
            errors.push(format!("{} is set but engine is `{}`", key("llm"), self.engine));
        }
        if self.engine != "external" && self.external.is_some() {
            errors.push(format!("{} is set but engine is `{}`", key("external"), self.engine));
        }
        if self.engine == "external" {
            match &self.external {
                None => errors.push(format!("{} is required with engine `external` (at least `preset` and `model`)", key("external"))),
                Some(external) => {
                    if let Err(error) = external.validate() {
                        errors.push(engine_config_error(prefix, &error));
                    }
                    let fixed = external.endpoints.len() as u32;
                    let policy = &self.autoscaling;
                    if fixed > 0 && (policy.min_replicas != fixed || policy.max_replicas != fixed) {
                        errors.push(format!(
                            "{}: {fixed} endpoint(s) are a fixed capacity: set autoscaling.min_replicas and autoscaling.max_replicas to {fixed} (got {} and {})",
                            key("external.endpoints"),
                            policy.min_replicas,
                            policy.max_replicas
                        ));
                    }
                }
            }
        }
        if self.engine == "llm" {
            match &self.llm {
                None => errors.push(format!("{} is required with engine `llm` (at least `model_path`)", key("llm"))),
                Some(llm) => {
                    if let Err(error) = llm.validate() {
                        errors.push(engine_config_error(prefix, &error));
                    }
                }
            }
        }
        if self.engine == "sim" {
            if let Err(error) = self.sim.clone().unwrap_or_default().resolve() {
                errors.push(engine_config_error(prefix, &error));
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
        let bound = self.routing.promise_bound;
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&bound) {
            errors.push(format!(
                "{} must be between 10ms and 60s (got {})",
                key("routing.promise_bound"),
                humantime::format_duration(bound)
            ));
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
            || self.external != other.external
    }
}
