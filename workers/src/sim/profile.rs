//! [`SimProfile`]: the figures of one simulated replica, and the built-in profiles.
//!
//! Every figure of a built-in profile carries its source: a published benchmark (URL and
//! what was read off it) or the arithmetic it was derived from. Where a benchmark used a
//! different precision or setup than the profile, the comment says how it was adapted.
//!
//! Units: `decode_step_per_kv_token` is time per token of context whose KV cache a decode
//! step reads (summed over the decoding sequences of the batch); it is the
//! memory-bandwidth term: bytes of KV per token / achieved memory bandwidth.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{PerformanceProfile, StepTimes};
use crate::error::EngineError;

/// The figures of one replica (one engine instance, possibly spanning several GPUs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimProfile {
    /// Profile name, shown as the model in `/v1/models` details.
    pub name: String,
    /// The model the profile imitates, e.g. `llama-3.1-8b-instruct`.
    pub model: String,
    pub model_params_billions: f64,
    /// The accelerator, e.g. `H100-80GB-SXM` (`cpu` for CPU profiles).
    pub gpu: String,
    /// GPUs one replica occupies (0 on CPU).
    pub gpus_per_replica: u32,
    /// Prefill throughput of one replica, tokens per second. `0` means prefill is free
    /// (the `zero` profile).
    pub prefill_tokens_per_second: f64,
    /// Decode step time with one sequence in the batch (one read of all the weights).
    #[serde(with = "humantime_serde")]
    pub decode_step_base: Duration,
    /// Added to a decode step for each sequence beyond the first.
    #[serde(with = "humantime_serde")]
    pub decode_step_per_sequence: Duration,
    /// Added to a decode step per token of context (KV cache) read by the batch.
    #[serde(with = "humantime_serde")]
    pub decode_step_per_kv_token: Duration,
    /// Maximum sequences in the running batch.
    pub max_batch_size: u32,
    /// KV cache capacity of the replica, in tokens.
    pub kv_capacity_tokens: u64,
    /// Maximum prompt + output tokens of one sequence.
    pub context_length: u32,
    /// Container start + weight load + warm-up until the replica is ready.
    #[serde(with = "humantime_serde")]
    pub cold_start: Duration,
    /// Chunked-prefill budget: prompt tokens processed per step, over all sequences.
    pub max_prefill_tokens_per_step: u64,
}

/// Names of the built-in profiles.
pub fn builtin_names() -> &'static [&'static str] {
    &[
        "llama-3.1-8b-h100",
        "llama-3.1-70b-4xh100",
        "qwen2.5-0.5b-l4",
        "smollm2-135m-cpu",
        "zero",
    ]
}

/// A built-in profile by name.
pub fn builtin(name: &str) -> Option<SimProfile> {
    match name {
        "llama-3.1-8b-h100" => Some(llama_3_1_8b_h100()),
        "llama-3.1-70b-4xh100" => Some(llama_3_1_70b_4xh100()),
        "qwen2.5-0.5b-l4" => Some(qwen2_5_0_5b_l4()),
        "smollm2-135m-cpu" => Some(smollm2_135m_cpu()),
        "zero" => Some(zero()),
        _ => None,
    }
}

// Sources used by several profiles:
//
// [NIM] NVIDIA NIM LLM benchmarking, "Performance":
//       https://docs.nvidia.com/nim/benchmarking/llm/1.0.0/performance
//       Llama-3.1-8b-instruct (NIM 1.8.0): concurrency 1: TTFT 10.26 ms, ITL 4.63 ms,
//       214.56 tok/s; concurrency 100: ITL 7.57 ms, 12214.97 tok/s; concurrency 200:
//       ITL 12.65 ms, 13348.4 tok/s.
//       Llama-3.1-70b-instruct (NIM 1.3.0): concurrency 1: TTFT 25.05 ms, ITL 13.21 ms;
//       concurrency 100: ITL 23.28 ms, 4092.34 tok/s.
//       (TensorRT-LLM profiles; the precision/GPU headings of these two tables were not in
//       the excerpt read. 4.63 ms is below the 4.79 ms BF16 bandwidth floor of 8B on one
//       H100 computed below, so that table is FP8.)
// [H100] H100 SXM datasheet figures: 80 GB HBM3 at 3.35 TB/s, 989 TFLOPS dense BF16.
// [VLLM-DEFAULTS] vLLM `EngineArgs.get_batch_defaults` (vllm/engine/arg_utils.py): on GPUs
//       with >= 70 GiB that are not A100 (H100), the OpenAI server defaults to
//       max_num_batched_tokens 8192 and max_num_seqs 1024; on other GPUs 2048 and 256.
//       (vLLM's token budget also counts decode tokens; ours is prefill only.)
//       Default gpu_memory_utilization 0.9.
// [SPHERON] "GPU Cold Start on Serverless LLM Inference" (2026),
//       https://www.spheron.network/blog/gpu-cold-start-llm-inference-2026/ , table
//       "Anatomy of a GPU cold start": 8B: weight load ~8 s, CUDA context + graph capture
//       ~12 s, KV cache warm-up ~5 s; 70B: ~40-45 s, ~30 s, ~10 s (image already cached).
// [BENTO] BentoML, "Cold-Starting LLMs on Kubernetes in Under 30 Seconds" (2025),
//       https://bentoml.com/blog/cold-starting-llms-on-kubernetes-in-under-30-seconds :
//       Llama 3.1 8B container = 15 GB weights + 5.2 GB CUDA/torch/libs; cold start
//       brought under 30 s.

/// Llama 3.1 8B Instruct, BF16, one H100 SXM, vLLM-like scheduler.
fn llama_3_1_8b_h100() -> SimProfile {
    SimProfile {
        name: "llama-3.1-8b-h100".into(),
        model: "llama-3.1-8b-instruct".into(),
        // 8.03 B parameters (Llama 3.1 8B model card).
        model_params_billions: 8.03,
        gpu: "H100-80GB-SXM".into(),
        gpus_per_replica: 1,
        // Compute-bound: 2 FLOP/param/token = 2 * 8.03e9 = 16.06 GFLOP per token;
        // 989e12 FLOP/s [H100] * 50% MFU / 16.06e9 = 30.8k tok/s -> 30k.
        // (TTFT at concurrency 1 is 10.26 ms in [NIM], FP8, short prompts.)
        prefill_tokens_per_second: 30_000.0,
        // Memory-bound: BF16 weights 8.03e9 * 2 B = 16.06 GB; 16.06 GB / 3.35 TB/s [H100]
        // = 4.79 ms at 100% of bandwidth, ~6.4 ms at the ~75% vLLM achieves -> 6.5 ms.
        // [NIM] reads 4.63 ms at concurrency 1 with FP8 weights (half the bytes).
        decode_step_base: Duration::from_micros(6_500),
        // [NIM]: ITL grows 4.63 -> 7.57 ms from concurrency 1 to 100: 2.94 ms / 99 =
        // 30 us per sequence, roughly half of it KV reads (modelled below) -> 15 us.
        decode_step_per_sequence: Duration::from_micros(15),
        // KV per token: 32 layers * 8 KV heads * 128 dim * 2 (K,V) * 2 B (BF16)
        // = 131072 B = 128 KiB; 131072 B / (3.35 TB/s * 75%) = 52 ns -> 50 ns.
        decode_step_per_kv_token: Duration::from_nanos(50),
        // [VLLM-DEFAULTS] max_num_seqs on H100.
        max_batch_size: 1024,
        // (80 GiB * 0.9 [VLLM-DEFAULTS] = 72 GiB) - 14.96 GiB weights (16.06 GB)
        // - ~3 GiB activations / CUDA graphs = 54.04 GiB; 54.04 GiB / 128 KiB
        // = 54.04 * 8192 = 442.7k tokens -> 440k.
        kv_capacity_tokens: 440_000,
        // Llama 3.1: 128k context.
        context_length: 131_072,
        // [SPHERON] 8 s weights + 12 s CUDA context/graphs + 5 s warm-up = 25 s;
        // consistent with [BENTO] "under 30 seconds" for Llama 3.1 8B.
        cold_start: Duration::from_secs(25),
        // [VLLM-DEFAULTS] max_num_batched_tokens on H100.
        max_prefill_tokens_per_step: 8192,
    }
}

/// Llama 3.1 70B Instruct, BF16, four H100 SXM with tensor parallelism 4.
fn llama_3_1_70b_4xh100() -> SimProfile {
    SimProfile {
        name: "llama-3.1-70b-4xh100".into(),
        model: "llama-3.1-70b-instruct".into(),
        // 70.6 B parameters (Llama 3.1 70B model card).
        model_params_billions: 70.6,
        gpu: "H100-80GB-SXM".into(),
        gpus_per_replica: 4,
        // 2 * 70.6e9 = 141.2 GFLOP per token; 4 * 989e12 [H100] * 45% MFU (TP all-reduce
        // overhead) = 1780 TFLOP/s; / 141.2e9 = 12.6k tok/s -> 12k.
        prefill_tokens_per_second: 12_000.0,
        // BF16 weights 141.2 GB / 4 GPUs = 35.3 GB each; 35.3 GB / 3.35 TB/s = 10.5 ms at
        // 100% bandwidth, ~14 ms at 75%, + ~1 ms of TP all-reduces (2 per layer, 80
        // layers) -> 15 ms. [NIM] reads ITL 13.21 ms at concurrency 1.
        decode_step_base: Duration::from_millis(15),
        // [NIM]: ITL 13.21 -> 23.28 ms from concurrency 1 to 100: 10.07 ms / 99 = 102 us
        // per sequence, about half of it KV reads (modelled below) -> 50 us.
        decode_step_per_sequence: Duration::from_micros(50),
        // KV per token: 80 layers * 8 KV heads * 128 dim * 2 (K,V) * 2 B = 327680 B
        // = 320 KiB, split over 4 GPUs = 80 KiB each, read in parallel:
        // 81920 B / (3.35 TB/s * 75%) = 33 ns.
        decode_step_per_kv_token: Duration::from_nanos(33),
        // [VLLM-DEFAULTS] max_num_seqs on H100.
        max_batch_size: 1024,
        // Per GPU: 72 GiB (0.9 * 80 GiB) - 32.87 GiB weights (35.3 GB) - ~3 GiB
        // activations = 36.13 GiB; / 80 KiB per token per GPU = 36.13 * 13107.2
        // = 473.6k tokens -> 470k.
        kv_capacity_tokens: 470_000,
        context_length: 131_072,
        // [SPHERON] 70B: 40-45 s weights + ~30 s CUDA context/graphs + ~10 s warm-up
        // = ~85 s.
        cold_start: Duration::from_secs(85),
        // [VLLM-DEFAULTS] max_num_batched_tokens on H100.
        max_prefill_tokens_per_step: 8192,
    }
}

/// Qwen2.5 0.5B Instruct, BF16, one NVIDIA L4 (24 GB), vLLM.
///
/// [L4] "Baseline serving benchmark for serving/raw-vllm", https://ai.wmx.dev/benchmarks :
/// Qwen/Qwen2.5-0.5B-Instruct BF16 on 1x L4, vLLM v0.23.0 (V1), 256 input / 128 output
/// tokens, --gpu-memory-utilization 0.6. Concurrency 1: TTFT p50 27.0 ms, ITL p50 5.1 ms,
/// 168 out tok/s. Concurrency 32: TTFT p50 135.3 ms, ITL p50 7.1 ms, 3773 out tok/s;
/// KV-cache usage peaked at 1.1% with 31 requests running.
fn qwen2_5_0_5b_l4() -> SimProfile {
    SimProfile {
        name: "qwen2.5-0.5b-l4".into(),
        model: "qwen2.5-0.5b-instruct".into(),
        // 0.49 B parameters (Qwen2.5-0.5B model card: 0.49B).
        model_params_billions: 0.49,
        gpu: "L4-24GB".into(),
        gpus_per_replica: 1,
        // [L4] TTFT 27.0 ms for 256 tokens, minus the 5.1 ms step that yields the first
        // token: 256 / 21.9 ms = 11.7k tok/s -> 12k. (The FLOP bound would be ~4x higher:
        // a 0.5B model's prefill is dominated by per-step overheads on this setup.)
        prefill_tokens_per_second: 12_000.0,
        // [L4] ITL p50 at concurrency 1. (Weights 0.99 GB / 300 GB/s = 3.3 ms: the rest is
        // launch overhead.)
        decode_step_base: Duration::from_micros(5_100),
        // [L4] ITL 5.1 -> 7.1 ms from concurrency 1 to 32; minus the KV share (32 * ~320
        // tokens * 55 ns = 0.56 ms): 1.44 ms / 31 = 46 us -> 45 us.
        decode_step_per_sequence: Duration::from_micros(45),
        // KV per token: 24 layers * 2 KV heads * 64 dim * 2 (K,V) * 2 B = 12288 B = 12 KiB;
        // / (300 GB/s L4 bandwidth * 75%) = 55 ns.
        decode_step_per_kv_token: Duration::from_nanos(55),
        // [VLLM-DEFAULTS] max_num_seqs on GPUs under 70 GiB.
        max_batch_size: 256,
        // L4 reports 22.5 GiB; * 0.9 = 20.25 GiB - 0.92 GiB weights - ~1 GiB activations
        // = 18.33 GiB; / 12 KiB = 18.33 * 87381 = 1.60M tokens. Cross-check with [L4]
        // at 0.6 utilization: 1.1% used by 31 * ~384 tokens = 11.9k -> ~1.08M capacity,
        // the same arithmetic at 0.6 gives (13.5 - 0.92 - 1) GiB / 12 KiB = 1.01M.
        kv_capacity_tokens: 1_600_000,
        // Qwen2.5-0.5B: 32k context.
        context_length: 32_768,
        // Weights are only ~1 GB (~1 s); CUDA context + graph capture ~12 s as for 8B in
        // [SPHERON] (mostly independent of model size) + ~2 s warm-up -> 15 s. Estimate.
        cold_start: Duration::from_secs(15),
        // [VLLM-DEFAULTS] max_num_batched_tokens on GPUs under 70 GiB.
        max_prefill_tokens_per_step: 2048,
    }
}

/// SmolLM2 135M Instruct (Q4_1) on a 2-core CPU with Swell's `llm` engine.
///
/// MEASURED with the real engine on a 2-core AMD EPYC (Zen 5) VM, 2 threads, the
/// AVX-512 VNNI kernels (`cargo bench -p swell-workers --bench llm -- --engine-only`,
/// docs/llm-engine.md, "Speed"): 226.7 tok/s for one sequence (4.41 ms per step), 557.3 at 4
/// (7.18 ms), 802.8 at 16 (19.9 ms) and 901.5 at 64 (71.0 ms), 100-token prompts and
/// 128 generated tokens (mean context ~164); prefill 1208 tok/s for a 1000-token
/// prompt; cold start 0.12 s (weights read and repacked 105 ms, warm-up 12 ms).
/// Step time is linear in sequences: 3.4 ms + 1.05 ms each (1 -> 16 and 16 -> 64 give
/// 1.03 and 1.06). A profile at 16 sequences puts attention at 17% of the step
/// (3.4 ms for 16 x 164 cached tokens = 1.3 us per cached token), which is split out
/// of the per-sequence figure below.
fn smollm2_135m_cpu() -> SimProfile {
    SimProfile {
        name: "smollm2-135m-cpu".into(),
        model: "smollm2-135m-instruct".into(),
        model_params_billions: 0.135,
        gpu: "cpu".into(),
        gpus_per_replica: 0,
        // Measured: 1000 tokens in 0.83 s.
        prefill_tokens_per_second: 1_200.0,
        // Measured: 3.4 ms intercept, less one sequence's attention (~0.2 ms).
        decode_step_base: Duration::from_micros(3_200),
        // Measured: 1.05 ms per extra sequence, less its attention (164 x 1.3 us).
        decode_step_per_sequence: Duration::from_micros(850),
        // Measured (profile share, above): 1.3 us per cached token in the batch.
        decode_step_per_kv_token: Duration::from_nanos(1_300),
        // The llm engine's default.
        max_batch_size: 64,
        // The llm engine's default KV cache (32768 tokens * 46 KB = 1.4 GiB).
        kv_capacity_tokens: 32_768,
        // SmolLM2: 8k context.
        context_length: 8_192,
        // Measured: 0.12 s (first replica; a second shares the weights).
        cold_start: Duration::from_millis(120),
        // The llm engine's default max_batched_tokens.
        max_prefill_tokens_per_step: 512,
    }
}

/// Everything free and enormous: for measuring the gateway itself.
fn zero() -> SimProfile {
    SimProfile {
        name: "zero".into(),
        model: "sim-zero".into(),
        model_params_billions: 0.0,
        gpu: "none".into(),
        gpus_per_replica: 0,
        prefill_tokens_per_second: 0.0,
        decode_step_base: Duration::ZERO,
        decode_step_per_sequence: Duration::ZERO,
        decode_step_per_kv_token: Duration::ZERO,
        max_batch_size: 65_536,
        kv_capacity_tokens: 1 << 40,
        context_length: 1 << 20,
        cold_start: Duration::ZERO,
        max_prefill_tokens_per_step: 1 << 40,
    }
}

/// The longest cold start a profile may model.
pub const MAX_COLD_START: Duration = Duration::from_secs(60 * 60);
/// The longest step-time figure a profile may give.
pub const MAX_STEP_TIME: Duration = Duration::from_secs(60);
pub const MAX_GPUS_PER_REPLICA: u32 = 64;

impl SimProfile {
    /// Checks that the figures can drive an engine; errors name the `sim.` key.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |key: &str, why: String| Err(EngineError::Config(format!("sim.{key}: {why}")));
        if self.name.trim().is_empty() {
            return bad("name", "must not be empty".into());
        }
        // Upper bounds: far beyond any real accelerator, low enough that no figure makes
        // a replica sleep for years or overflow the arithmetic of time.
        for (key, value, max) in [
            ("cold_start", self.cold_start, MAX_COLD_START),
            ("decode_step_base", self.decode_step_base, MAX_STEP_TIME),
            ("decode_step_per_sequence", self.decode_step_per_sequence, MAX_STEP_TIME),
            ("decode_step_per_kv_token", self.decode_step_per_kv_token, MAX_STEP_TIME),
        ] {
            if value > max {
                return bad(key, format!("must be at most {} (got {})", humantime::format_duration(max), humantime::format_duration(value)));
            }
        }
        if self.gpus_per_replica > MAX_GPUS_PER_REPLICA {
            return bad("gpus_per_replica", format!("must be at most {MAX_GPUS_PER_REPLICA} (got {})", self.gpus_per_replica));
        }
        if self.prefill_tokens_per_second > 1e12 {
            return bad("prefill_tokens_per_second", format!("must be at most 1e12 (got {})", self.prefill_tokens_per_second));
        }
        if self.model_params_billions > 1e6 {
            return bad("model_params_billions", format!("must be at most 1e6 (got {})", self.model_params_billions));
        }
        if !self.prefill_tokens_per_second.is_finite() || self.prefill_tokens_per_second < 0.0 {
            return bad(
                "prefill_tokens_per_second",
                format!(
                    "must be a finite number >= 0 (0 means free prefill), got {}",
                    self.prefill_tokens_per_second
                ),
            );
        }
        if !self.model_params_billions.is_finite() || self.model_params_billions < 0.0 {
            return bad(
                "model_params_billions",
                format!(
                    "must be a finite number >= 0, got {}",
                    self.model_params_billions
                ),
            );
        }
        if self.max_batch_size == 0 {
            return bad("max_batch_size", "must be at least 1".into());
        }
        if self.max_prefill_tokens_per_step == 0 {
            return bad("max_prefill_tokens_per_step", "must be at least 1".into());
        }
        if self.context_length == 0 {
            return bad("context_length", "must be at least 1".into());
        }
        if self.kv_capacity_tokens < u64::from(self.context_length) {
            return bad(
                "kv_capacity_tokens",
                format!(
                    "{} is less than context_length {}: one full-length sequence must fit \
                     (lower sim.context_length or raise sim.kv_capacity_tokens)",
                    self.kv_capacity_tokens, self.context_length
                ),
            );
        }
        Ok(())
    }

    /// The step-time figures, as engines describe them to the control plane.
    pub fn performance(&self) -> PerformanceProfile {
        PerformanceProfile {
            step: StepTimes {
                prefill_tokens_per_second: self.prefill_tokens_per_second,
                decode_step_base: self.decode_step_base,
                decode_step_per_sequence: self.decode_step_per_sequence,
                decode_step_per_kv_token: self.decode_step_per_kv_token,
            },
            max_prefill_tokens_per_step: self.max_prefill_tokens_per_step,
            model_params_billions: self.model_params_billions,
            gpu: self.gpu.clone(),
            source: format!("sim profile {}", self.name),
        }
    }

    /// The cold start split into its stages: `schedule` (10%), `load_weights` (80%) and
    /// `warm_up` (10%); the stages add up to `cold_start` exactly.
    pub fn cold_start_stages(&self) -> Vec<(&'static str, Duration)> {
        let schedule = self.cold_start / 10;
        let warm_up = self.cold_start / 10;
        let load_weights = self.cold_start.saturating_sub(schedule + warm_up);
        vec![
            ("schedule", schedule),
            ("load_weights", load_weights),
            ("warm_up", warm_up),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_name_resolves_and_validates() {
        assert_eq!(builtin_names().len(), 5);
        for name in builtin_names() {
            let p = builtin(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(p.name, *name);
            p.validate().unwrap();
        }
        assert!(builtin("gpt-5-on-a-toaster").is_none());
    }

    #[test]
    fn key_figures_of_the_8b_profile() {
        let p = builtin("llama-3.1-8b-h100").unwrap();
        assert_eq!(p.model, "llama-3.1-8b-instruct");
        assert_eq!(p.gpus_per_replica, 1);
        assert_eq!(p.decode_step_base, Duration::from_micros(6_500));
        assert_eq!(p.decode_step_per_kv_token, Duration::from_nanos(50));
        assert_eq!(p.kv_capacity_tokens, 440_000);
        assert_eq!(p.context_length, 131_072);
        assert_eq!(p.cold_start, Duration::from_secs(25));
        let p70 = builtin("llama-3.1-70b-4xh100").unwrap();
        assert_eq!(p70.gpus_per_replica, 4);
        assert_eq!(p70.decode_step_base, Duration::from_millis(15));
    }

    #[test]
    fn zero_profile_is_free() {
        let z = builtin("zero").unwrap();
        assert_eq!(z.prefill_tokens_per_second, 0.0);
        assert_eq!(z.decode_step_base, Duration::ZERO);
        assert_eq!(z.cold_start, Duration::ZERO);
        assert!(z.kv_capacity_tokens >= 1 << 40);
    }

    #[test]
    fn profile_round_trips_through_json_with_humantime_durations() {
        let p = builtin("llama-3.1-8b-h100").unwrap();
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["decode_step_base"], "6ms 500us");
        assert_eq!(json["decode_step_per_kv_token"], "50ns");
        assert_eq!(json["cold_start"], "25s");
        let back: SimProfile = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn profile_rejects_unknown_fields() {
        let mut json = serde_json::to_value(builtin("zero").unwrap()).unwrap();
        json["warp_drive"] = serde_json::json!(true);
        let err = serde_json::from_value::<SimProfile>(json).unwrap_err();
        assert!(err.to_string().contains("warp_drive"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let mut p = builtin("smollm2-135m-cpu").unwrap();
        p.kv_capacity_tokens = 100;
        let err = p.validate().unwrap_err();
        assert_eq!(err.code(), "invalid_engine_config");
        assert!(err.to_string().contains("sim.kv_capacity_tokens"), "{err}");

        let mut p = builtin("zero").unwrap();
        p.prefill_tokens_per_second = f64::NAN;
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("sim.prefill_tokens_per_second"));
        let mut p = builtin("zero").unwrap();
        p.max_batch_size = 0;
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("sim.max_batch_size"));
        let mut p = builtin("zero").unwrap();
        p.max_prefill_tokens_per_step = 0;
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("sim.max_prefill_tokens_per_step"));
    }

    #[test]
    fn cold_start_stages_add_up() {
        let p = builtin("llama-3.1-8b-h100").unwrap();
        let stages = p.cold_start_stages();
        assert_eq!(
            stages,
            vec![
                ("schedule", Duration::from_millis(2_500)),
                ("load_weights", Duration::from_secs(20)),
                ("warm_up", Duration::from_millis(2_500)),
            ]
        );
        let total: Duration = stages.iter().map(|(_, d)| *d).sum();
        assert_eq!(total, p.cold_start);
        let odd = SimProfile {
            cold_start: Duration::from_nanos(7),
            ..p
        };
        let total: Duration = odd.cold_start_stages().iter().map(|(_, d)| *d).sum();
        assert_eq!(total, Duration::from_nanos(7));
    }
}
