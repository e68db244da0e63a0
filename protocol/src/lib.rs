//! # swell-protocol: the types every layer agrees on
//!
//! The gateway, the queue (`swell-cluster`), the engines (`swell-workers`) and the
//! autoscaler (`swell-autoscaler`) all speak in these types, and this crate depends on
//! nothing but serde, so none of those layers has to depend on another to share them:
//! the engines do not pull in Redis, and the autoscaler does not pull in the engines.
//!
//! # Layout
//! - [`generation`]: what travels between a gateway and a replica: the job id, the
//!   generation request with its sampling parameters, and the output events a replica
//!   emits (tokens, logprobs, finish reason, usage).
//! - [`engine`]: what an engine says about itself: [`EngineDescription`] (context length,
//!   batch and KV limits, expected cold start) and [`PerformanceProfile`] (step times).

pub mod engine;
pub mod generation;

pub use engine::{EngineDescription, PerformanceProfile, StepTimes};
pub use generation::{
    Constraint, FinishReason, GenerationRequest, JobId, OutputEvent, SamplingParams, SequencedEvent, TokenLogprob,
    TopLogprob, Usage,
};
