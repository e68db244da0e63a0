//! What an engine says about itself: the deployment's model as the control plane sees
//! it ([`EngineDescription`]) and how fast one replica runs ([`PerformanceProfile`]), which
//! the autoscaler's capacity model turns into the load one replica sustains.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A deployment's model as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineDescription {
    /// `sim`, or the real engine's name.
    pub engine: String,
    /// The model (or sim profile) name shown in `/v1/models` details.
    pub model: String,
    /// Maximum prompt + output tokens of one sequence.
    pub context_length: u32,
    /// GPUs one replica occupies (0 on CPU).
    pub gpus_per_replica: u32,
    /// Maximum sequences in one running batch.
    pub max_batch_size: u32,
    /// KV cache capacity of one replica, in tokens.
    pub kv_capacity_tokens: u64,
    /// Expected cold start of one replica (for wait estimates).
    #[serde(with = "humantime_serde")]
    pub expected_cold_start: Duration,
    /// How fast one replica runs, when the engine knows: what the autoscaler's capacity
    /// model (`swell_autoscaler::capacity`) turns into the load one replica sustains within
    /// latency targets. `None`: only the batch and KV limits above are known.
    pub performance: Option<PerformanceProfile>,
    /// Request features this engine cannot honour (`prompt_logprobs`: logprobs of the
    /// prompt, asked for by `echo` with `logprobs`); the edge refuses a request that
    /// asks for one, naming it. Empty: everything is honoured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsupported_params: Vec<String>,
}

/// The step-time figures of one replica, the same model as the `sim` engine's
/// (`swell_workers::sim::PerformanceModel`):
///
/// ```text
/// step = prefill_tokens / prefill_tokens_per_second
///      + if decode_sequences > 0 {
///            decode_step_base
///          + (decode_sequences - 1) * decode_step_per_sequence
///          + kv_tokens_in_batch     * decode_step_per_kv_token
///        } else { 0 }
/// ```
///
/// The `sim` engine reports its profile's figures; the `llm` engine reports figures
/// calibrated on its hardware (see `LlmEngineFactory::describe`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerformanceProfile {
    /// The four step-time figures (serialized flat, beside the others).
    #[serde(flatten)]
    pub step: StepTimes,
    /// Prompt tokens prefilled in one step, over all sequences (chunked prefill).
    pub max_prefill_tokens_per_step: u64,
    /// Size of the model, billions of parameters (informational).
    pub model_params_billions: f64,
    /// The accelerator the figures hold for, e.g. `H100-80GB-SXM` or `cpu`.
    pub gpu: String,
    /// Where the figures come from, e.g. `sim profile llama-3.1-8b-h100`.
    pub source: String,
}

/// The four figures of the step model above: what a deployment can measure on its
/// hardware and write down (`llm.performance`), and what [`PerformanceProfile`] reports.
/// (`sim` profiles keep the same four keys at their top level, since a profile file
/// rejects unknown keys, which serde cannot do through a flattened struct.)
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepTimes {
    /// Prompt tokens prefilled per second (0: prefill costs nothing).
    pub prefill_tokens_per_second: f64,
    /// A decode step with one sequence (one read of all the weights).
    #[serde(with = "humantime_serde")]
    pub decode_step_base: Duration,
    /// Added to a decode step per sequence beyond the first.
    #[serde(with = "humantime_serde")]
    pub decode_step_per_sequence: Duration,
    /// Added to a decode step per token of context (KV cache) the batch reads.
    #[serde(with = "humantime_serde")]
    pub decode_step_per_kv_token: Duration,
}

