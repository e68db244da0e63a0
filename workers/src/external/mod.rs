//! Engines Swell does not implement but runs: an OpenAI-compatible server (llama.cpp's
//! `llama-server`, vLLM, SGLang, TGI) as a replica's engine, started, scaled to zero,
//! drained and migrated by Swell like its own engine.
//!
//! A replica of an `external` deployment is an engine process Swell starts and owns (or,
//! with `endpoints`, an engine at a fixed URL). The worker actor drives it through the
//! [`Engine`](crate::Engine) trait like any engine: it leases at most `slots` jobs, and
//! each job is streamed from the engine as token ids, which Swell turns into text, stop
//! strings and usage itself, so a job handed back resumes on another replica from
//! exactly the tokens already delivered.
//!
//! # Layout
//! - [`config`]: `ExternalConfig`, the `[deployments.NAME.external]` block.
//! - [`presets`]: the engines Swell knows how to start (program, arguments, API, metrics).
//! - [`template`]: placeholders in an engine's command line.
//! - [`process`]: the engine process a replica owns: its own process group, a
//!   parent-death signal, output logged with the replica's id, SIGTERM then SIGKILL.
//! - [`client`]: HTTP to an engine, and how a call fails.
//! - [`api`]: each engine API's request and streamed events (pure).
//! - [`relay`]: one sequence's stream, read on its own thread.
//! - [`detok`]: incremental detokenization through any tokenizer.
//! - [`scrape`]: the engine's own load, from its `/metrics`.
//! - [`engine`]: `ExternalEngine`, the `Engine` of one replica.
//! - [`factory`]: `ExternalEngineFactory`: the cold start (spawn, ready, first token).

pub mod api;
pub mod client;
pub mod config;
pub mod detok;
pub mod engine;
pub mod factory;
pub mod presets;
pub mod process;
pub mod relay;
pub mod scrape;
pub mod template;

pub use config::ExternalConfig;
pub use factory::ExternalEngineFactory;
pub use presets::{Api, Preset};
pub use process::{free_port, EngineProcess, ProcessSpec};
