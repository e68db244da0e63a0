//! The `Engine` trait (one replica's model, stepped on the replica's engine thread) and the
//! `EngineFactory` trait (one per deployment, builds engines for new replicas).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
pub use swell_protocol::{EngineDescription, PerformanceProfile, StepTimes};
use swell_protocol::{JobId, OutputEvent, SamplingParams};

use crate::error::EngineError;
use crate::tokenizer::Tokenizer;

/// A sequence handed to an engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub id: JobId,
    pub prompt_tokens: Vec<u32>,
    /// Tokens an earlier attempt already delivered (a redelivered job): the engine
    /// prefills prompt + these and continues after them, counting them in `max_tokens`
    /// and in usage, and emits only what follows.
    pub resume_tokens: Vec<u32>,
    pub params: SamplingParams,
}

/// An event for one sequence, produced by a step. Every sequence added to an engine and
/// not cancelled gets exactly one terminal event (`Finished` or `Failed`).
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceOutput {
    pub id: JobId,
    pub event: OutputEvent,
}

/// What one step did, for metrics and for the worker actor's progress counter.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepReport {
    /// Sequences that took part in the step (prefilling or decoding).
    pub batch_size: usize,
    pub prefill_tokens: usize,
    pub decode_tokens: usize,
    /// Sequences moved out of the running batch to free KV space.
    pub preempted: usize,
    /// Wall time of the step.
    pub elapsed: Duration,
}

/// An engine's occupancy, read between steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EngineLoad {
    /// Sequences in the running batch.
    pub running: usize,
    /// Sequences added but waiting inside the engine for KV space.
    pub waiting: usize,
    pub kv_tokens_used: u64,
    pub kv_tokens_capacity: u64,
    /// How many more sequences are worth adding now (0 when batch or KV cache is full).
    pub free_slots: usize,
    /// Prompt tokens its sequences have yet to prefill: the work a new sequence would
    /// queue behind (cache-aware routing weighs it against a cached prefix).
    pub pending_prefill_tokens: u64,
}

/// The prompt-prefix KV blocks an engine holds, for cache-aware routing
/// (see [`Engine::cached_prefix`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPrefix {
    /// Changes whenever the set of held blocks changes.
    pub version: u64,
    /// Tokens per block.
    pub block_tokens: u32,
    /// The held blocks' routing names (`llm::block_pool::routing_name`), at most the
    /// number asked for, the most likely to stay first.
    pub blocks: Vec<u64>,
}

/// One replica's model. Not `Sync`: it lives on its replica's engine thread, and every
/// call may block for as long as the model math takes.
pub trait Engine: Send + 'static {
    /// Add a sequence. It joins the running batch at a later step when KV capacity
    /// allows; until then it waits inside the engine (never an out-of-memory failure).
    fn add(&mut self, seq: Sequence);

    /// Remove a sequence (its client went away or its lease was lost). It emits nothing
    /// more, and its KV space is freed before the next step.
    fn cancel(&mut self, id: &str);

    /// Run one continuous-batching step and append its outputs to `out`. Returns at once
    /// with an empty report when there is nothing to do.
    fn step(&mut self, out: &mut Vec<SequenceOutput>) -> Result<StepReport, EngineError>;

    fn load(&self) -> EngineLoad;

    /// For an engine whose `step` blocks waiting for events from elsewhere (an engine in
    /// another process): a function the worker calls, from any thread, after it queued a
    /// command for this engine, so that a blocked `step` returns and the command is
    /// applied at once. `None` (the default): `step` never blocks waiting.
    fn waker(&self) -> Option<EngineWaker> {
        None
    }

    /// The version of the engine's prefix cache (changes whenever the set of held
    /// blocks changes); `None` (the default) for an engine that keeps no prefix cache or
    /// cannot tell what it holds. Cheap: called after every step.
    fn prefix_cache_version(&self) -> Option<u64> {
        None
    }

    /// What the prefix cache holds, at most `max_blocks` of its blocks; `None` as for
    /// [`Engine::prefix_cache_version`].
    fn cached_prefix(&self, _max_blocks: usize) -> Option<CachedPrefix> {
        None
    }
}

/// Wakes an engine blocked in `step` (see [`Engine::waker`]).
pub type EngineWaker = Arc<dyn Fn() + Send + Sync>;

/// What a replica needs to know about where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaContext {
    pub replica_id: String,
    /// GPU ordinals placed for this replica (empty on CPU).
    pub devices: Vec<u32>,
}

/// How long each stage of a cold start took (read weights, prepare, warm up, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ColdStartReport {
    pub stages: Vec<(String, Duration)>,
}

impl ColdStartReport {
    pub fn total(&self) -> Duration {
        self.stages.iter().map(|(_, d)| *d).sum()
    }
}

/// Builds engines for a deployment's replicas; shared by all of them.
pub trait EngineFactory: Send + Sync + 'static {
    fn describe(&self) -> EngineDescription;

    fn tokenizer(&self) -> Arc<dyn Tokenizer>;

    /// Build one replica's engine: the cold start. Blocking; called on the replica's own
    /// thread, never on an async executor.
    fn create(&self, replica: &ReplicaContext)
        -> Result<(Box<dyn Engine>, ColdStartReport), EngineError>;
}
