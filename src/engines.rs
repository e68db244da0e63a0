//! Which engine serves a deployment: building a deployment's `EngineFactory` from its
//! config, and the choice of the default deployment when no config names any.
//!
//! Engines known today: `sim` (the calibrated performance model in `swell-workers`).
//! The real model engine is the job of its own issue; when it lands it adds its name to
//! [`KNOWN_ENGINES`], its settings block to `DeploymentConfig`, a branch to
//! [`build_factory`], and makes [`default_deployment`] serve the real model when its
//! weights are present. Until then the default deployment is the `sim` engine with the
//! `smollm2-135m-cpu` profile.

use std::sync::Arc;

use swell_workers::sim::{SimConfig, SimEngineFactory};
use swell_workers::EngineFactory;

use crate::api::error::ApiError;
use crate::config::DeploymentConfig;

/// Engine names a deployment may use.
pub const KNOWN_ENGINES: &[&str] = &["sim"];

/// The name of the deployment served when the config names none.
pub const DEFAULT_DEPLOYMENT: &str = "default";

/// The profile of the default deployment's `sim` engine.
pub const DEFAULT_SIM_PROFILE: &str = "smollm2-135m-cpu";

/// The deployment served when the config has no `[deployments]` table.
pub fn default_deployment() -> (String, DeploymentConfig) {
    let sim = SimConfig { profile: DEFAULT_SIM_PROFILE.to_string(), ..SimConfig::default() };
    (DEFAULT_DEPLOYMENT.to_string(), DeploymentConfig::sim(sim))
}

/// One line saying what a deployment runs (for logs).
pub fn describe_choice(config: &DeploymentConfig) -> String {
    match config.engine.as_str() {
        "sim" => format!("engine=sim profile={}", config.sim.clone().unwrap_or_default().profile),
        other => format!("engine={other}"),
    }
}

/// Builds the engine factory of a deployment (validated config assumed; errors are
/// still reported, never panics).
pub fn build_factory(config: &DeploymentConfig) -> Result<Arc<dyn EngineFactory>, ApiError> {
    match config.engine.as_str() {
        "sim" => {
            let sim = config.sim.clone().unwrap_or_default();
            let factory = SimEngineFactory::from_config(&sim).map_err(|error| {
                let message = error.to_string();
                let message = message.strip_prefix("invalid engine config: ").unwrap_or(&message).to_string();
                let param = message.split(':').next().map(str::to_string);
                ApiError::InvalidConfig { message, param }
            })?;
            Ok(Arc::new(factory))
        }
        other => Err(ApiError::UnknownEngine {
            engine: other.to_string(),
            known: KNOWN_ENGINES.iter().map(|name| name.to_string()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_deployment_is_the_small_sim_profile() {
        let (name, config) = default_deployment();
        assert_eq!(name, "default");
        assert!(config.validate("deployments.default").is_empty());
        let factory = build_factory(&config).unwrap();
        let description = factory.describe();
        assert_eq!(description.engine, "sim");
        assert_eq!(description.model, DEFAULT_SIM_PROFILE);
        assert_eq!(describe_choice(&config), "engine=sim profile=smollm2-135m-cpu");
    }

    #[test]
    fn unknown_engines_list_the_known_ones() {
        let mut config = default_deployment().1;
        config.engine = "vllm".into();
        config.sim = None;
        let error = build_factory(&config).err().unwrap();
        assert_eq!(error.code(), "unknown_engine");
        assert!(error.to_string().contains("known engines: sim"), "{error}");
    }

    #[test]
    fn bad_sim_settings_name_the_key() {
        let mut config = default_deployment().1;
        config.sim = Some(SimConfig { max_batch_size: Some(0), ..SimConfig::default() });
        let error = build_factory(&config).err().unwrap();
        assert_eq!(error.code(), "invalid_config");
        assert_eq!(error.param(), Some("sim.max_batch_size"));
    }
}
