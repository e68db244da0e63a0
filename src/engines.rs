//! Which engine serves a deployment: building a deployment's `EngineFactory` from its
//! config. (The default deployment, served when no config names any, is
//! [`crate::config::default_deployment`].)
//!
//! Engines: `llm` (the real model engine: a Llama-architecture GGUF on CPU, or CUDA where
//! a GPU is present), `external` (an engine process per replica: llama-server, vLLM,
//! SGLang or TGI, see `swell_workers::external`) and `sim` (the calibrated performance
//! model in `swell-workers`).
//! The default deployment serves the reference model, SmolLM2-135M-Instruct (Q4_1), with
//! the `llm` engine, from `$SWELL_MODEL_PATH`, else
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf` (where `scripts/fetch-model` puts it). Without
//! the file there is no default deployment and the config is refused, saying how to get
//! the model: the `sim` engine never stands in for a model silently; it runs only where a
//! config asks for it.

use std::sync::Arc;

use swell_workers::external::ExternalEngineFactory;
use swell_workers::llm::LlmEngineFactory;
use swell_workers::sim::SimEngineFactory;
use swell_workers::EngineFactory;

use crate::deployments::DeploymentError;
use crate::config::{DeploymentConfig, KNOWN_ENGINES};

/// One line saying what a deployment runs (for logs).
pub fn describe_choice(config: &DeploymentConfig) -> String {
    match config.engine.as_str() {
        "sim" => format!("engine=sim profile={}", config.sim.clone().unwrap_or_default().profile),
        "llm" => format!(
            "engine=llm model={}",
            config.llm.as_ref().map(|l| l.model_path.display().to_string()).unwrap_or_default()
        ),
        "external" => match &config.external {
            Some(external) if !external.endpoints.is_empty() => {
                format!("engine=external preset={} endpoints={}", external.preset.name(), external.endpoints.join(","))
            }
            Some(external) => format!(
                "engine=external preset={} command={} model={}",
                external.preset.name(),
                external.program(),
                external.model.clone().unwrap_or_default()
            ),
            None => "engine=external".to_string(),
        },
        other => format!("engine={other}"),
    }
}

/// An engine's message as the API shows it: its first line only (never a backtrace).
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_string()
}

fn invalid_config(error: swell_workers::EngineError) -> DeploymentError {
    let message = first_line(&error.to_string());
    let message = message.strip_prefix("invalid engine config: ").unwrap_or(&message).to_string();
    let param = message.split(':').next().map(str::to_string);
    DeploymentError::InvalidConfig { message, param }
}

/// Builds the engine factory of a deployment (validated config assumed; errors are
/// still reported, never panics). For `llm` this opens the model file and builds its
/// tokenizer; the weights are read on the first replica's cold start.
pub fn build_factory(config: &DeploymentConfig) -> Result<Arc<dyn EngineFactory>, DeploymentError> {
    match config.engine.as_str() {
        "sim" => {
            let sim = config.sim.clone().unwrap_or_default();
            let factory = SimEngineFactory::from_config(&sim).map_err(invalid_config)?;
            Ok(Arc::new(factory))
        }
        "llm" => {
            let llm = config.llm.clone().ok_or_else(|| DeploymentError::InvalidConfig {
                message: "llm is required with engine `llm` (at least `model_path`)".to_string(),
                param: Some("llm".to_string()),
            })?;
            let factory = LlmEngineFactory::new(llm).map_err(|error| match error {
                swell_workers::EngineError::Load(message) => DeploymentError::InvalidConfig {
                    message: format!("llm.model_path: {}", first_line(&message)),
                    param: Some("llm.model_path".to_string()),
                },
                other => invalid_config(other),
            })?;
            Ok(Arc::new(factory))
        }
        "external" => {
            let external = config.external.clone().ok_or_else(|| DeploymentError::InvalidConfig {
                message: "external is required with engine `external` (at least `preset` and `model`)".to_string(),
                param: Some("external".to_string()),
            })?;
            let factory = ExternalEngineFactory::new(external).map_err(invalid_config)?;
            Ok(Arc::new(factory))
        }
        other => Err(DeploymentError::UnknownEngine {
            engine: other.to_string(),
            known: KNOWN_ENGINES.iter().map(|name| name.to_string()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{default_deployment, missing_default_model, DEFAULT_DEPLOYMENT};
    use swell_workers::llm::{find_default_model, LlmConfig};
    use swell_workers::sim::SimConfig;

    /// A `sim` deployment of the SmolLM2 profile.
    fn sim_deployment() -> (String, DeploymentConfig) {
        let sim = SimConfig { profile: "smollm2-135m-cpu".to_string(), ..SimConfig::default() };
        (DEFAULT_DEPLOYMENT.to_string(), DeploymentConfig::sim(sim))
    }

    #[test]
    fn the_default_deployment_is_the_real_model() {
        let path = find_default_model().expect("the test model is missing: run scripts/fetch-model");
        let (name, config) = default_deployment().expect("the model file is present");
        assert_eq!(name, "default");
        assert!(config.validate("deployments.default").is_empty());
        assert_eq!(config.engine, "llm");
        assert_eq!(config.llm.as_ref().unwrap().model_path, path);
        let description = build_factory(&config).unwrap().describe();
        assert_eq!(description.engine, "llm");
        assert_eq!(description.context_length, 8192);
        let why = missing_default_model();
        assert!(why.contains("scripts/fetch-model") && why.contains("SmolLM2-135M-Instruct.Q4_1.gguf"), "{why}");
    }

    #[test]
    fn a_sim_deployment_says_so() {
        let (_, config) = sim_deployment();
        assert!(config.validate("deployments.default").is_empty());
        let description = build_factory(&config).unwrap().describe();
        assert_eq!(description.engine, "sim");
        assert_eq!(describe_choice(&config), "engine=sim profile=smollm2-135m-cpu");
    }

    #[test]
    fn unknown_engines_list_the_known_ones() {
        let mut config = sim_deployment().1;
        config.engine = "vllm".into();
        config.sim = None;
        let error = build_factory(&config).err().unwrap();
        assert_eq!(error.code(), "unknown_engine");
        assert!(error.to_string().contains("known engines: llm, sim"), "{error}");
    }

    #[test]
    fn bad_sim_settings_name_the_key() {
        let mut config = sim_deployment().1;
        config.sim = Some(SimConfig { max_batch_size: Some(0), ..SimConfig::default() });
        let error = build_factory(&config).err().unwrap();
        assert_eq!(error.code(), "invalid_config");
        assert_eq!(error.param(), Some("sim.max_batch_size"));
    }

    #[test]
    fn a_missing_model_file_is_a_config_error_naming_the_path_key() {
        let config = DeploymentConfig::llm(LlmConfig::new("/nonexistent/model.gguf"));
        assert!(config.validate("deployments.x").is_empty(), "the file is checked when the deployment is built");
        let error = build_factory(&config).err().unwrap();
        assert_eq!(error.code(), "invalid_config");
        assert_eq!(error.param(), Some("llm.model_path"));
        assert!(error.to_string().contains("/nonexistent/model.gguf"), "{error}");
    }

    #[test]
    fn llm_settings_are_checked_with_their_keys() {
        let mut llm = LlmConfig::new("m.gguf");
        llm.max_batch_size = 0;
        let errors = DeploymentConfig::llm(llm).validate("deployments.x");
        assert_eq!(errors, vec!["deployments.x.llm.max_batch_size: must be at least 1".to_string()]);
        let mut missing = DeploymentConfig::llm(LlmConfig::new("m.gguf"));
        missing.llm = None;
        assert!(missing.validate("deployments.x")[0].contains("deployments.x.llm is required"));
    }
}
