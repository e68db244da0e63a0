//! [`ExternalConfig`]: a deployment's `[deployments.NAME.external]` block.
//!
//! ```toml
//! [deployments.default]
//! engine = "external"
//!
//! [deployments.default.external]
//! preset = "llama-server"              # llama-server | vllm | sglang | tgi
//! command = "/opt/llama.cpp/llama-server"   # default: the preset's program on the PATH
//! model = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
//! slots = 8                            # sequences one replica runs at once
//! context_length = 4096                # prompt + output of one sequence
//! threads = 4                          # {threads}; default: every core
//! gpus_per_replica = 0                 # > 0: that many free GPUs as CUDA_VISIBLE_DEVICES
//! extra_args = ["--no-repack"]         # appended to the preset's arguments
//! env = { LLAMA_LOG_COLORS = "off" }
//! start_timeout = "10m"                # spawn to first token
//!
//! # Or, for engines Swell does not start: one replica per URL, fixed capacity.
//! # endpoints = ["http://10.0.0.5:8000", "http://10.0.0.6:8000"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::presets::Preset;
use super::template::Values;
use crate::error::EngineError;

fn default_slots() -> u32 {
    4
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_stop_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_stream_idle_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_host() -> String {
    "127.0.0.1".to_string()
}

/// Upper bounds of the settings: far above any real use.
const MAX_SLOTS: u32 = 4096;
const MAX_GPUS: u32 = 64;

/// A deployment whose replicas are engine processes Swell starts (or engines it only
/// connects to, with `endpoints`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalConfig {
    pub preset: Preset,
    /// The engine's program (default: the preset's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The whole argument list, replacing the preset's (placeholders allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Arguments appended to the preset's (or to `args`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
    /// Environment of the engine process, on top of Swell's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
    /// What the engine loads (`{model}`): a file, a folder, or a name the engine knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The model's name in `/v1/models` and `{model_name}` (default: the model's file
    /// name without its extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// The tokenizer Swell counts and encodes prompts with at the edge: a GGUF file, or
    /// a Hugging Face model folder (its `tokenizer.json` and `tokenizer_config.json`).
    /// Default: `model`, when it is either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Sequences one replica runs at once (`{slots}`); Swell leases no more.
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// Prompt + output tokens of one sequence (`{context}`; default: the tokenizer
    /// GGUF's context length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    /// `{threads}` (default: every core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// GPUs one replica takes (`{gpus}`, `{gpu_count}`, and `CUDA_VISIBLE_DEVICES`).
    #[serde(default)]
    pub gpus_per_replica: u32,
    /// The address the engine listens on (`{host}`); loopback unless told otherwise.
    #[serde(default = "default_host")]
    pub host: String,
    /// From spawn to the first token of the readiness probe.
    #[serde(default = "default_start_timeout", with = "humantime_serde")]
    pub start_timeout: Duration,
    /// After SIGTERM, how long the engine has before SIGKILL.
    #[serde(default = "default_stop_grace", with = "humantime_serde")]
    pub stop_grace: Duration,
    /// A stream on which the engine sends nothing for this long fails the replica.
    #[serde(default = "default_stream_idle_timeout", with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// Engines Swell does not start: one replica per base URL, fixed capacity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
}

impl ExternalConfig {
    pub fn new(preset: Preset, model: impl Into<String>) -> Self {
        Self {
            preset,
            command: None,
            args: None,
            extra_args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            model: Some(model.into()),
            model_name: None,
            tokenizer: None,
            slots: default_slots(),
            context_length: None,
            threads: None,
            gpus_per_replica: 0,
            host: default_host(),
            start_timeout: default_start_timeout(),
            stop_grace: default_stop_grace(),
            stream_idle_timeout: default_stream_idle_timeout(),
            endpoints: Vec::new(),
        }
    }

    /// The program started for each replica.
    pub fn program(&self) -> String {
        self.command.clone().unwrap_or_else(|| self.preset.spec().program.to_string())
    }

    /// The argument templates, before placeholders are filled.
    pub fn arg_templates(&self) -> Vec<String> {
        let base: Vec<String> = match &self.args {
            Some(args) => args.clone(),
            None => self.preset.spec().args.iter().map(|a| a.to_string()).collect(),
        };
        base.into_iter().chain(self.extra_args.iter().cloned()).collect()
    }

    /// The tokenizer: `tokenizer`, else `model` when it is a GGUF file or a folder with
    /// a `tokenizer.json`.
    pub fn tokenizer_path(&self) -> Option<PathBuf> {
        self.tokenizer.clone().or_else(|| {
            let model = PathBuf::from(self.model.as_ref()?);
            let usable = model.extension().is_some_and(|e| e == "gguf") || crate::hf_tokenizer::HfTokenizer::is_hf(&model);
            usable.then_some(model)
        })
    }

    /// The model's name: `model_name`, else the model's file name without `.gguf`.
    pub fn display_name(&self) -> String {
        if let Some(name) = &self.model_name {
            return name.clone();
        }
        let model = self.model.clone().unwrap_or_else(|| self.endpoints.first().cloned().unwrap_or_default());
        let file = Path::new(model.trim_end_matches('/')).file_name().map(|f| f.to_string_lossy().to_string());
        let file = file.unwrap_or(model);
        file.strip_suffix(".gguf").map(str::to_string).unwrap_or(file)
    }

    /// Key-naming errors for settings no engine could use.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |key: &str, why: String| Err(EngineError::Config(format!("external.{key}: {why}")));
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return bad("slots", format!("must be 1 to {MAX_SLOTS} (got {})", self.slots));
        }
        if self.gpus_per_replica > MAX_GPUS {
            return bad("gpus_per_replica", format!("must be at most {MAX_GPUS} (got {})", self.gpus_per_replica));
        }
        if self.context_length == Some(0) {
            return bad("context_length", "must be at least 1".to_string());
        }
        if self.threads == Some(0) {
            return bad("threads", "must be at least 1".to_string());
        }
        if self.start_timeout.is_zero() {
            return bad("start_timeout", "must be above zero".to_string());
        }
        if self.stream_idle_timeout.is_zero() {
            return bad("stream_idle_timeout", "must be above zero".to_string());
        }
        if self.endpoints.is_empty() {
            if self.model.as_deref().is_none_or(str::is_empty) {
                return bad("model", "is required (the path or name the engine loads), unless `endpoints` is set".to_string());
            }
            if self.program().is_empty() {
                return bad("command", "is empty".to_string());
            }
            let values = Values::sample();
            for arg in self.arg_templates() {
                if let Err(why) = values.render(&arg) {
                    return bad(if self.args.is_some() { "args" } else { "extra_args" }, why);
                }
            }
            if self.preset.spec().needs_gpu && self.gpus_per_replica == 0 && self.args.is_none() {
                return bad(
                    "gpus_per_replica",
                    format!("the `{}` preset runs on GPUs: set gpus_per_replica to 1 or more", self.preset.name()),
                );
            }
        } else {
            for url in &self.endpoints {
                let rest = url.strip_prefix("http://").unwrap_or("");
                if rest.is_empty() || rest.contains('?') {
                    return bad("endpoints", format!("`{url}`: a base URL like `http://10.0.0.5:8000` is expected (https is not supported)"));
                }
            }
            if self.command.is_some() || self.args.is_some() || !self.extra_args.is_empty() || self.gpus_per_replica > 0 {
                return bad("endpoints", "engines at fixed endpoints are not started by Swell: remove command, args, extra_args and gpus_per_replica".to_string());
            }
        }
        match self.tokenizer_path() {
            None => bad(
                "tokenizer",
                "is required: a GGUF file or a Hugging Face model folder (with tokenizer.json) whose tokenizer and chat \
                 template Swell uses at the edge (defaults to `model` when it is either)"
                    .to_string(),
            ),
            Some(path) if !path.exists() => bad("tokenizer", format!("`{}` does not exist", path.display())),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(preset: Preset) -> ExternalConfig {
        // Any existing file stands in for the tokenizer in these checks.
        let mut c = ExternalConfig::new(preset, "/models/tiny.gguf");
        c.tokenizer = Some(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")));
        c
    }

    fn error(c: &ExternalConfig) -> String {
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_name_the_model_and_take_the_presets_program() {
        let c = config(Preset::LlamaServer);
        c.validate().unwrap();
        assert_eq!(c.program(), "llama-server");
        assert_eq!(c.display_name(), "tiny");
        assert!(c.arg_templates().contains(&"{context_total}".to_string()));
        let no_tok = ExternalConfig::new(Preset::LlamaServer, "/models/tiny.gguf");
        assert_eq!(no_tok.tokenizer_path(), Some(PathBuf::from("/models/tiny.gguf")));
    }

    #[test]
    fn bad_settings_are_refused_by_key() {
        let mut c = config(Preset::LlamaServer);
        c.slots = 0;
        assert!(error(&c).starts_with("invalid engine config: external.slots"), "{}", error(&c));
        let mut c = config(Preset::LlamaServer);
        c.extra_args = vec!["--x={nope}".into()];
        assert!(error(&c).contains("external.extra_args") && error(&c).contains("{nope}"));
        let c = config(Preset::Vllm);
        assert!(error(&c).contains("external.gpus_per_replica"), "{}", error(&c));
        let mut c = config(Preset::LlamaServer);
        c.model = None;
        assert!(error(&c).contains("external.model"));
        let mut c = config(Preset::LlamaServer);
        c.tokenizer = Some(PathBuf::from("/no/such/file.gguf"));
        assert!(error(&c).contains("external.tokenizer"));
        let mut c = ExternalConfig::new(Preset::Vllm, "Qwen/Qwen2.5-7B-Instruct");
        c.gpus_per_replica = 1;
        assert!(error(&c).contains("external.tokenizer: is required"), "{}", error(&c));
    }

    #[test]
    fn endpoints_take_base_urls_and_nothing_to_start() {
        let mut c = config(Preset::Vllm);
        c.model = None;
        c.endpoints = vec!["http://10.0.0.5:8000".into()];
        c.validate().unwrap();
        c.endpoints = vec!["https://x".into()];
        assert!(error(&c).contains("external.endpoints"));
        c.endpoints = vec!["http://10.0.0.5:8000".into()];
        c.command = Some("vllm".into());
        assert!(error(&c).contains("not started by Swell"));
    }

    #[test]
    fn the_toml_form_parses_with_durations() {
        let c: ExternalConfig = toml_like(
            r#"{"preset":"llama-server","model":"/m.gguf","slots":8,"start_timeout":"2m","env":{"A":"1"}}"#,
        );
        assert_eq!(c.slots, 8);
        assert_eq!(c.start_timeout, Duration::from_secs(120));
        assert_eq!(c.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(c.host, "127.0.0.1");
        let unknown = serde_json::from_str::<ExternalConfig>(r#"{"preset":"llama-server","modle":"x"}"#);
        assert!(unknown.unwrap_err().to_string().contains("modle"));
    }

    fn toml_like(json: &str) -> ExternalConfig {
        serde_json::from_str(json).unwrap()
    }
}
