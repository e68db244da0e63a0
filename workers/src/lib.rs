//! # swell-workers: what runs inside a replica
//!
//! A replica is one running copy of a deployment: a worker actor (in `swell-actors`,
//! which leases jobs and publishes output) driving one engine. The [`Engine`] trait is
//! the contract between the two: the worker actor `add`s sequences and calls `step` in a
//! loop on the replica's engine thread; each step runs one continuous-batching iteration (prefill of newly admitted
//! sequences mixed with one decode token for every running one) and emits outputs.
//!
//! An [`EngineFactory`] belongs to a deployment: it builds engines for new replicas
//! (the cold start), shares what can be shared between them (weights), and gives the
//! gateway the deployment's [`Tokenizer`] so prompts are tokenized and checked at the edge.
//!
//! # Layout
//! - [`engine`]: the `Engine` and `EngineFactory` traits and their report types.
//! - [`tokenizer`]: the `Tokenizer` trait and chat messages.
//! - [`chat_encoding`]: a conversation's token ids, with message text always plain text.
//! - [`error`]: `EngineError`, what every engine call can fail with.
//! - [`external`]: engines Swell runs as processes (OpenAI-compatible servers): the
//!   engine process a replica owns.
//! - [`gpu_pool`]: the GPUs a deployment places replicas on, and which are held.
//! - [`hf_tokenizer`]: a model's tokenizer from its Hugging Face files, for the edge.
//! - [`llm`]: the real engine: a Llama-architecture GGUF model on CPU (quantized SIMD
//!   kernels) or CUDA (cuBLAS + NVRTC), with a paged KV cache and a continuous-batching
//!   scheduler.
//! - [`sim`]: the `sim` engine, a calibrated performance model of a GPU replica that
//!   emits real tokens with real timing, with named profiles from published benchmarks.

pub mod chat_encoding;
pub mod engine;
pub mod error;
pub mod external;
pub mod gpu_pool;
pub mod hf_tokenizer;
pub mod llm;
pub mod sim;
pub(crate) mod stop;
pub mod tokenizer;

pub use engine::{
    CachedPrefix, ColdStartReport, Engine, EngineDescription, EngineFactory, EngineLoad, EngineWaker, PerformanceProfile,
    ReplicaContext, Sequence, SequenceOutput, StepReport, StepTimes,
};
pub use error::EngineError;
pub use tokenizer::{ChatMessage, ChatTools, TextPiece, Tokenizer};
