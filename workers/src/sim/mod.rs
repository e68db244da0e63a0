//! # The `sim` engine: a calibrated performance model of one replica
//!
//! `sim` stands in for a GPU replica so that Swell's queueing, batching and scaling can be
//! exercised at any size without a GPU. It behaves like a real continuous-batching engine
//! (vLLM-style): sequences wait for KV-cache space, join the running batch between steps,
//! long prompts are prefilled in chunks, every running sequence decodes one token per step,
//! and the batch is preempted when the KV cache runs out. It emits *real* tokens
//! (deterministic text drawn from a small English vocabulary, seeded per request) with
//! *real* timing: each step sleeps for as long as the modelled GPU step would take.
//!
//! The figures come from named [`SimProfile`]s (`llama-3.1-8b-h100`, `llama-3.1-70b-4xh100`,
//! `qwen2.5-0.5b-l4`, `smollm2-135m-cpu`, `zero`), each figure noted with the published
//! benchmark or the arithmetic it comes from (see `profile.rs`).
//!
//! ## Timing model
//!
//! One step of the engine costs
//!
//! ```text
//! step = prefill_tokens / prefill_tokens_per_second
//!      + if decode_sequences > 0 {
//!            decode_step_base
//!          + (decode_sequences - 1) * decode_step_per_sequence
//!          + kv_tokens_in_batch     * decode_step_per_kv_token
//!        } else { 0 }
//! ```
//!
//! - `prefill_tokens`: prompt tokens (and recomputed tokens of a resumed or preempted
//!   sequence) processed this step, at most `max_prefill_tokens_per_step` (chunked prefill).
//! - `decode_sequences`: sequences that produce a token this step: every decoding sequence
//!   plus every sequence whose prefill completes this step (its first token comes out of
//!   the same forward pass, which has to read all the weights once: that is why TTFT is at
//!   least `decode_step_base`).
//! - `kv_tokens_in_batch`: the context (prompt + generated) of the decoding sequences, whose
//!   KV cache the attention reads; the memory-bandwidth term of long contexts.
//!
//! The model is pure ([`PerformanceModel`]): [`SimEngine::advance`] runs a step and reports
//! the modelled duration without sleeping (for a virtual-time simulator); only the
//! `Engine::step` implementation sleeps.
//!
//! # Layout
//! - `profile`: [`SimProfile`], the figures of a replica, and the built-in profiles.
//! - `model`: [`PerformanceModel`], the pure step-time arithmetic and derived figures
//!   (TTFT, steady decode rate, maximum throughput).
//! - `tokenizer`: [`SimTokenizer`], a word-level tokenizer with ChatML specials.
//! - `sampler`: the deterministic token stream (splitmix64 of seed and position) and
//!   plausible logprobs.
//! - `stop`: stop-string detection with hold-back of text that may start a stop string.
//! - `engine`: [`SimEngine`], continuous batching, chunked prefill, KV accounting,
//!   preemption, outputs.
//! - `factory`: [`SimConfig`] (a deployment's `"sim": {...}` block) and
//!   [`SimEngineFactory`] (describe, tokenizer, cold start).

mod engine;
mod factory;
mod model;
mod profile;
mod sampler;
mod tokenizer;

pub use engine::SimEngine;
pub use factory::{SimConfig, SimEngineFactory};
pub use model::PerformanceModel;
pub use profile::{builtin, builtin_names, SimProfile};
pub use tokenizer::{SimTokenizer, EOS_ID, IM_END_ID, IM_START_ID, SIM_VOCAB_SIZE, UNK_ID};
