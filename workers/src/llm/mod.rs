//! The `llm` engine: a real Llama-architecture model from a GGUF file.
//!
//! # Layout
//! - [`gguf`]: the memory-mapped file, hyper-parameters ([`gguf::LlamaConfig`]), tensors.
//! - [`tokenizer`], [`chat_template`]: ids equal to llama.cpp's; the GGUF's Jinja template.
//! - [`quant`]: 4/8-bit weight matrices and the int8 SIMD matrix kernels.
//! - [`ops`]: RMS norm, rotary embeddings, SwiGLU, softmax.
//! - [`simd`]: vector `exp`, softmax and SwiGLU of the AVX2 and AVX-512 classes.
//! - [`kv_cache`]: paged KV blocks and their allocator; [`kv_cache_q8`]: its 8-bit storage.
//! - [`block_pool`]: the blocks of a replica with prefix caching (chained block hashes,
//!   shared references, least-recently-released eviction).
//! - [`model`]: weights, the batch of a step, and the [`model::ModelRunner`] trait the
//!   scheduler drives.
//! - [`forward`]: the CPU forward pass over mixed prefill/decode batches, phase by phase
//!   on a [`team::Team`] of threads (one pool wake-up per step).
//! - [`attention`]: causal attention of a tile of tokens and one KV head over the paged
//!   cache; [`attention_q8`]: the same over the 8-bit cache, in integer dot products.
//! - [`cuda`]: GPU discovery and the CUDA runner.
//! - [`sampler`]: penalties, temperature, top-k/top-p, seeded draws, logprobs.
//! - [`engine`]: [`LlmEngine`], the continuous-batching scheduler (the `Engine` trait).
//! - [`weight_cache`]: the file of repacked weights a cold start maps instead of reading
//!   the GGUF.
//! - [`factory`]: [`LlmConfig`] and [`LlmEngineFactory`] (shared weights, placement).
//! - [`metrics`]: the engine's own metrics.

pub mod attention;
pub mod attention_q8;
pub mod block_pool;
pub mod chat_template;
pub mod constraint;
pub mod cuda;
pub mod engine;
pub mod factory;
pub mod forward;
pub mod gguf;
pub mod kv_cache;
pub mod kv_cache_q8;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod quant;
pub mod sampler;
pub mod simd;
pub mod team;
pub mod tokenizer;
pub mod weight_cache;

pub use engine::{LlmEngine, SchedulerLimits};
pub use factory::{DeviceChoice, LlmConfig, LlmEngineFactory, WeightsOrigin};
pub use tokenizer::{DecodeStream, GgufTokenizer};

use std::path::PathBuf;

/// The reference model's file name (SmolLM2-135M-Instruct, Q4_1).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where the default model is looked for, in order: `$SWELL_MODEL_PATH`, then
/// `models/SmolLM2-135M-Instruct.Q4_1.gguf` under the working directory (where
/// `scripts/fetch-model` puts it), then the same under this crate's workspace root.
pub fn default_model_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(path) = std::env::var("SWELL_MODEL_PATH") {
        candidates.push(PathBuf::from(path));
    }
    candidates.push(PathBuf::from("models").join(DEFAULT_MODEL_FILE));
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("models").join(DEFAULT_MODEL_FILE));
    candidates
}

/// The first default-model candidate that exists.
pub fn find_default_model() -> Option<PathBuf> {
    default_model_candidates().into_iter().find(|p| p.is_file())
}
