//! The engines Swell knows how to start: for each, the program and arguments (with
//! placeholders, see [`super::template`]), the HTTP API Swell relays through, and the
//! metrics it reads.
//!
//! | preset | program | API Swell streams from | token ids in | token ids out | metrics read |
//! |---|---|---|---|---|---|
//! | `llama-server` | `llama-server` | `POST /completion` (native) | `prompt: [ids]` | `return_tokens` | `llamacpp:requests_deferred` (`--metrics`) |
//! | `vllm` | `vllm serve` | `POST /v1/completions` | `prompt: [ids]` | `return_tokens_as_token_ids` | `vllm:kv_cache_usage_perc`, `vllm:num_requests_waiting` |
//! | `sglang` | `python3 -m sglang.launch_server` | `POST /generate` (native) | `input_ids` | `output_ids` | `sglang:token_usage`, `sglang:num_queue_reqs` (`--enable-metrics`) |
//! | `tgi` | `text-generation-launcher` | `POST /generate_stream` | text only | `token.id` | `tgi_queue_size` |
//!
//! The flags that matter, set by each preset: the context length of one sequence
//! (llama-server's `--ctx-size` is shared by its `--parallel` slots, so it gets
//! `{context_total}` = context × slots), the parallel sequences (`--parallel`,
//! `--max-num-seqs`, `--max-running-requests`, `--max-concurrent-requests`: Swell leases
//! no more than `slots` jobs, so the engine never queues behind Swell's back), the
//! tensor-parallel size (`{gpu_count}`), and metrics where they are off by default.

use serde::{Deserialize, Serialize};

/// Which engine a deployment's replicas run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// llama.cpp's `llama-server` (GGUF models, CPU or GPU).
    LlamaServer,
    /// `vllm serve` (GPU).
    Vllm,
    /// `python3 -m sglang.launch_server` (GPU).
    Sglang,
    /// Hugging Face TGI's `text-generation-launcher` (GPU).
    Tgi,
}

/// The HTTP API Swell streams a sequence through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// llama.cpp's native `POST /completion`.
    LlamaCpp,
    /// OpenAI `POST /v1/completions` as vLLM serves it (token-id prompts, token ids back
    /// through `return_tokens_as_token_ids`).
    VllmCompletions,
    /// SGLang's native `POST /generate`.
    SglangGenerate,
    /// TGI's `POST /generate_stream` (text prompts).
    TgiGenerateStream,
}

impl Api {
    /// Whether the engine takes token ids as the prompt. TGI does not: its prompt is the
    /// text of the ids, tokenized again by TGI (see `docs/external-engines.md`).
    pub fn takes_token_ids(self) -> bool {
        !matches!(self, Api::TgiGenerateStream)
    }
}

/// Metric names whose values feed the autoscaler's signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricNames {
    /// The share of the KV cache in use (0..1); the first name found is used.
    pub kv_usage: &'static [&'static str],
    /// Requests waiting inside the engine.
    pub waiting: &'static [&'static str],
}

/// What Swell needs to know about a preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresetSpec {
    pub program: &'static str,
    pub args: &'static [&'static str],
    pub api: Api,
    pub metrics: MetricNames,
    /// Whether the engine needs a GPU (vLLM, SGLang and TGI here; llama-server runs on
    /// either).
    pub needs_gpu: bool,
}

impl Preset {
    pub const ALL: [Preset; 4] = [Preset::LlamaServer, Preset::Vllm, Preset::Sglang, Preset::Tgi];

    pub fn name(self) -> &'static str {
        match self {
            Preset::LlamaServer => "llama-server",
            Preset::Vllm => "vllm",
            Preset::Sglang => "sglang",
            Preset::Tgi => "tgi",
        }
    }

    pub fn spec(self) -> PresetSpec {
        match self {
            Preset::LlamaServer => PresetSpec {
                program: "llama-server",
                args: &[
                    "--model", "{model}", "--alias", "{model_name}",
                    "--host", "{host}", "--port", "{port}",
                    "--ctx-size", "{context_total}", "--parallel", "{slots}",
                    "--threads", "{threads}", "--threads-batch", "{threads}",
                    "--metrics",
                ],
                api: Api::LlamaCpp,
                metrics: MetricNames { kv_usage: &[], waiting: &["llamacpp:requests_deferred"] },
                needs_gpu: false,
            },
            Preset::Vllm => PresetSpec {
                program: "vllm",
                args: &[
                    "serve", "{model}", "--served-model-name", "{model_name}",
                    "--host", "{host}", "--port", "{port}",
                    "--max-model-len", "{context}", "--max-num-seqs", "{slots}",
                    "--tensor-parallel-size", "{gpu_count}",
                ],
                api: Api::VllmCompletions,
                metrics: MetricNames {
                    kv_usage: &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
                    waiting: &["vllm:num_requests_waiting"],
                },
                needs_gpu: true,
            },
            Preset::Sglang => PresetSpec {
                program: "python3",
                args: &[
                    "-m", "sglang.launch_server", "--model-path", "{model}",
                    "--served-model-name", "{model_name}",
                    "--host", "{host}", "--port", "{port}",
                    "--context-length", "{context}", "--max-running-requests", "{slots}",
                    "--tp-size", "{gpu_count}", "--enable-metrics",
                ],
                api: Api::SglangGenerate,
                metrics: MetricNames { kv_usage: &["sglang:token_usage"], waiting: &["sglang:num_queue_reqs"] },
                needs_gpu: true,
            },
            Preset::Tgi => PresetSpec {
                program: "text-generation-launcher",
                args: &[
                    "--model-id", "{model}", "--hostname", "{host}", "--port", "{port}",
                    "--max-total-tokens", "{context}", "--max-concurrent-requests", "{slots}",
                    "--num-shard", "{gpu_count}",
                ],
                api: Api::TgiGenerateStream,
                metrics: MetricNames { kv_usage: &[], waiting: &["tgi_queue_size"] },
                needs_gpu: true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::external::template::PLACEHOLDERS;

    #[test]
    fn every_preset_uses_known_placeholders_and_takes_the_port_and_the_model() {
        for preset in Preset::ALL {
            let spec = preset.spec();
            for arg in spec.args {
                if let Some(name) = arg.strip_prefix('{').and_then(|a| a.strip_suffix('}')) {
                    assert!(PLACEHOLDERS.contains(&name), "{}: unknown placeholder {arg}", preset.name());
                }
            }
            assert!(spec.args.contains(&"{port}"), "{}: no port", preset.name());
            assert!(spec.args.contains(&"{model}"), "{}: no model", preset.name());
            assert!(spec.args.contains(&"{host}"), "{}: no host", preset.name());
            let name: Preset = serde_json::from_value(serde_json::json!(preset.name())).unwrap();
            assert_eq!(name, preset);
        }
    }
}
