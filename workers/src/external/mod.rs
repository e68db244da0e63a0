//! Engines Swell does not implement but runs: an OpenAI-compatible server (llama.cpp's
//! `llama-server`, vLLM, SGLang, TGI) as a replica's engine.
//!
//! # Layout
//! - [`process`]: the engine process a replica owns: started in its own process group
//!   with a parent-death signal, its output logged with the replica's id, stopped with
//!   SIGTERM then SIGKILL, never outliving its replica; and a free port for it.

pub mod process;

pub use process::{free_port, EngineProcess, ProcessSpec};
