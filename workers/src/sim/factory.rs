//! [`SimConfig`] (a deployment's `"sim": {...}` block) and [`SimEngineFactory`].
//!
//! ```json
//! "sim": { "profile": "llama-3.1-8b-h100", "cold_start": "2s", "max_batch_size": 8 }
//! ```
//!
//! `profile` names a built-in profile (default `llama-3.1-8b-h100`); every other key
//! overrides the profile field of the same name (durations in humantime form: `"10ms"`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::{ColdStartReport, Engine, EngineDescription, EngineFactory, ReplicaContext};
use crate::error::EngineError;
use crate::sim::engine::SimEngine;
use crate::sim::profile::{builtin, builtin_names, SimProfile};
use crate::sim::tokenizer::SimTokenizer;
use crate::tokenizer::Tokenizer;

/// The profile used when a deployment's `sim` block names none.
pub const DEFAULT_PROFILE: &str = "llama-3.1-8b-h100";

fn default_profile() -> String {
    DEFAULT_PROFILE.to_string()
}

/// A deployment's `sim` settings: a built-in profile and overrides of its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    #[serde(default = "default_profile")]
    pub profile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_params_billions: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus_per_replica: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_tokens_per_second: Option<f64>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub decode_step_base: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub decode_step_per_sequence: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub decode_step_per_kv_token: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_capacity_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub cold_start: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefill_tokens_per_step: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            profile: default_profile(),
            name: None,
            model: None,
            model_params_billions: None,
            gpu: None,
            gpus_per_replica: None,
            prefill_tokens_per_second: None,
            decode_step_base: None,
            decode_step_per_sequence: None,
            decode_step_per_kv_token: None,
            max_batch_size: None,
            kv_capacity_tokens: None,
            context_length: None,
            cold_start: None,
            max_prefill_tokens_per_step: None,
        }
    }
}

impl SimConfig {
    /// Parse a `sim` block; unknown keys and bad values are `EngineError::Config` naming
    /// the key.
    pub fn from_json(value: serde_json::Value) -> Result<Self, EngineError> {
        serde_json::from_value(value).map_err(|e| EngineError::Config(format!("sim: {e}")))
    }

    /// The built-in profile with the overrides applied, validated.
    pub fn resolve(&self) -> Result<SimProfile, EngineError> {
        let mut p = builtin(&self.profile).ok_or_else(|| {
            EngineError::Config(format!(
                "sim.profile: unknown profile {:?}; built-in profiles: {}",
                self.profile,
                builtin_names().join(", ")
            ))
        })?;
        fn set<T: Clone>(field: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *field = v.clone();
            }
        }
        set(&mut p.name, &self.name);
        set(&mut p.model, &self.model);
        set(&mut p.model_params_billions, &self.model_params_billions);
        set(&mut p.gpu, &self.gpu);
        set(&mut p.gpus_per_replica, &self.gpus_per_replica);
        set(
            &mut p.prefill_tokens_per_second,
            &self.prefill_tokens_per_second,
        );
        set(&mut p.decode_step_base, &self.decode_step_base);
        set(
            &mut p.decode_step_per_sequence,
            &self.decode_step_per_sequence,
        );
        set(
            &mut p.decode_step_per_kv_token,
            &self.decode_step_per_kv_token,
        );
        set(&mut p.max_batch_size, &self.max_batch_size);
        set(&mut p.kv_capacity_tokens, &self.kv_capacity_tokens);
        set(&mut p.context_length, &self.context_length);
        set(&mut p.cold_start, &self.cold_start);
        set(
            &mut p.max_prefill_tokens_per_step,
            &self.max_prefill_tokens_per_step,
        );
        p.validate()?;
        Ok(p)
    }
}

/// Builds `sim` engines for a deployment's replicas.
pub struct SimEngineFactory {
    profile: SimProfile,
    tokenizer: Arc<SimTokenizer>,
}

impl SimEngineFactory {
    pub fn new(profile: SimProfile) -> Result<Self, EngineError> {
        profile.validate()?;
        Ok(Self {
            profile,
            tokenizer: Arc::new(SimTokenizer::new()),
        })
    }

    pub fn from_config(config: &SimConfig) -> Result<Self, EngineError> {
        Self::new(config.resolve()?)
    }

    pub fn profile(&self) -> &SimProfile {
        &self.profile
    }
}

impl EngineFactory for SimEngineFactory {
    fn describe(&self) -> EngineDescription {
        let p = &self.profile;
        EngineDescription {
            engine: "sim".into(),
            model: p.name.clone(),
            context_length: p.context_length,
            gpus_per_replica: p.gpus_per_replica,
            max_batch_size: p.max_batch_size,
            kv_capacity_tokens: p.kv_capacity_tokens,
            expected_cold_start: p.cold_start,
            performance: Some(p.performance()),
            // Simulated tokens follow no grammar.
            unsupported_params: vec!["response_format".to_string()],
        }
    }

    fn tokenizer(&self) -> Arc<dyn Tokenizer> {
        self.tokenizer.clone()
    }

    /// Sleeps the profile's cold start in its stages (`schedule`, `load_weights`,
    /// `warm_up`) and reports how long each actually took.
    fn create(
        &self,
        replica: &ReplicaContext,
    ) -> Result<(Box<dyn Engine>, ColdStartReport), EngineError> {
        let mut report = ColdStartReport::default();
        for (stage, modelled) in self.profile.cold_start_stages() {
            let started = Instant::now();
            std::thread::sleep(modelled);
            report.stages.push((stage.to_string(), started.elapsed()));
        }
        tracing::info!(
            replica = %replica.replica_id,
            profile = %self.profile.name,
            cold_start = ?report.total(),
            "sim replica ready"
        );
        Ok((Box::new(SimEngine::new(self.profile.clone())), report))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use swell_protocol::{OutputEvent, SamplingParams};

    use super::*;
    use crate::engine::Sequence;

    #[test]
    fn default_config_is_the_8b_profile() {
        let c = SimConfig::from_json(json!({})).unwrap();
        assert_eq!(c, SimConfig::default());
        assert_eq!(c.resolve().unwrap(), builtin("llama-3.1-8b-h100").unwrap());
    }

    #[test]
    fn overrides_replace_profile_fields() {
        let c = SimConfig::from_json(json!({
            "profile": "smollm2-135m-cpu",
            "cold_start": "2s 500ms",
            "max_batch_size": 8,
            "decode_step_base": "10ms",
            "decode_step_per_kv_token": "3ns",
            "prefill_tokens_per_second": 500.0,
            "context_length": 4096,
        }))
        .unwrap();
        let p = c.resolve().unwrap();
        assert_eq!(p.name, "smollm2-135m-cpu");
        assert_eq!(p.cold_start, Duration::from_millis(2_500));
        assert_eq!(p.max_batch_size, 8);
        assert_eq!(p.decode_step_base, Duration::from_millis(10));
        assert_eq!(p.decode_step_per_kv_token, Duration::from_nanos(3));
        assert_eq!(p.prefill_tokens_per_second, 500.0);
        assert_eq!(p.context_length, 4096);
        // Untouched fields keep the profile's values.
        let base = builtin("smollm2-135m-cpu").unwrap();
        assert_eq!(p.kv_capacity_tokens, base.kv_capacity_tokens);
        assert_eq!(p.decode_step_per_sequence, base.decode_step_per_sequence);
        // Overrides serialize back in the same form.
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["cold_start"], "2s 500ms");
        assert!(back.get("gpu").is_none());
    }

    #[test]
    fn unknown_profile_names_the_key_and_lists_the_builtins() {
        let c = SimConfig {
            profile: "llama-9000".into(),
            ..SimConfig::default()
        };
        let err = c.resolve().unwrap_err();
        assert_eq!(err.code(), "invalid_engine_config");
        let msg = err.to_string();
        assert!(msg.contains("sim.profile"), "{msg}");
        assert!(msg.contains("llama-9000"), "{msg}");
        for name in builtin_names() {
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_config_errors() {
        let err = SimConfig::from_json(json!({ "profile": "zero", "max_batch": 4 })).unwrap_err();
        assert_eq!(err.code(), "invalid_engine_config");
        assert!(err.to_string().contains("max_batch"), "{err}");
        let err = SimConfig::from_json(json!({ "cold_start": "soon" })).unwrap_err();
        assert_eq!(err.code(), "invalid_engine_config");
        // Overrides that make the profile unusable name their key.
        let c = SimConfig {
            profile: "qwen2.5-0.5b-l4".into(),
            kv_capacity_tokens: Some(1000),
            ..SimConfig::default()
        };
        assert!(c
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("sim.kv_capacity_tokens"));
        let c = SimConfig {
            max_batch_size: Some(0),
            ..SimConfig::default()
        };
        assert!(SimEngineFactory::from_config(&c).is_err());
    }

    #[test]
    fn factory_describes_the_profile() {
        let f = SimEngineFactory::from_config(&SimConfig {
            profile: "llama-3.1-70b-4xh100".into(),
            ..SimConfig::default()
        })
        .unwrap();
        assert_eq!(
            f.describe(),
            EngineDescription {
                engine: "sim".into(),
                model: "llama-3.1-70b-4xh100".into(),
                context_length: 131_072,
                gpus_per_replica: 4,
                max_batch_size: 1024,
                kv_capacity_tokens: 470_000,
                expected_cold_start: Duration::from_secs(85),
                performance: Some(crate::engine::PerformanceProfile {
                    step: crate::engine::StepTimes {
                        prefill_tokens_per_second: 12_000.0,
                        decode_step_base: Duration::from_millis(15),
                        decode_step_per_sequence: Duration::from_micros(50),
                        decode_step_per_kv_token: Duration::from_nanos(33),
                    },
                    max_prefill_tokens_per_step: 8192,
                    model_params_billions: 70.6,
                    gpu: "H100-80GB-SXM".into(),
                    source: "sim profile llama-3.1-70b-4xh100".into(),
                }),
                unsupported_params: vec!["response_format".to_string()],
            }
        );
        let description = serde_json::to_value(f.describe()).unwrap();
        assert_eq!(description["expected_cold_start"], "1m 25s");
        assert_eq!(description["performance"]["decode_step_base"], "15ms");
        let t = f.tokenizer();
        assert_eq!(t.vocab_size(), 32_000);
        assert_eq!(t.encode("the cat", false).unwrap().len(), 2);
    }

    #[test]
    fn create_sleeps_the_cold_start_in_stages_and_returns_a_working_engine() {
        let f = SimEngineFactory::from_config(&SimConfig {
            profile: "zero".into(),
            cold_start: Some(Duration::from_millis(100)),
            ..SimConfig::default()
        })
        .unwrap();
        let replica = ReplicaContext {
            replica_id: "r1".into(),
            devices: vec![],
        };
        let started = Instant::now();
        let (mut engine, report) = f.create(&replica).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(100));
        let names: Vec<&str> = report.stages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["schedule", "load_weights", "warm_up"]);
        assert!(report.stages[0].1 >= Duration::from_millis(10));
        assert!(report.stages[1].1 >= Duration::from_millis(80));
        assert!(report.stages[2].1 >= Duration::from_millis(10));
        assert!(report.total() >= Duration::from_millis(100));

        engine.add(Sequence {
            id: "j".into(),
            prompt_tokens: vec![1, 40, 41],
            resume_tokens: vec![],
            params: SamplingParams {
                max_tokens: 2,
                ..SamplingParams::default()
            },
        });
        let mut out = Vec::new();
        for _ in 0..3 {
            engine.step(&mut out).unwrap();
        }
        assert!(matches!(
            out.last().unwrap().event,
            OutputEvent::Finished { .. }
        ));
        assert_eq!(out.len(), 3);
    }
}
