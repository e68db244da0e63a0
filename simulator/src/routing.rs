//! [`RoutingSettings`]: how a run routes jobs to replicas and caches prompt prefixes.
//!
//! The policy comes from `swell-router` (the code the live system will run): `any`
//! (today's queue: any replica with room takes the oldest job), `cache-aware` or
//! `session`. A routed job is promised to its replica for `promise_bound`; then any
//! replica may take it. Every replica caches the blocks of the prompts it prefilled
//! ([`crate::block_cache`]) whatever the policy: `any` gets the hits chance gives it.

use std::time::Duration;

use swell_router::{RoutingPolicy, DEFAULT_PROMISE_BOUND};

/// Tokens per KV block unless told otherwise: vLLM's default block size and the `llm`
/// engine's (`swell_workers::llm::kv_cache::BLOCK_TOKENS`).
pub const DEFAULT_BLOCK_TOKENS: u32 = 16;

/// How a run routes and caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingSettings {
    pub policy: RoutingPolicy,
    /// How long a routed job waits for its replica before any replica may take it.
    pub promise_bound: Duration,
    /// Tokens per KV block: the unit of the prefix cache and of the requests' block
    /// hashes (a workload's hashes must be built with the same size).
    pub block_tokens: u32,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self {
            policy: RoutingPolicy::AnyReplica,
            promise_bound: DEFAULT_PROMISE_BOUND,
            block_tokens: DEFAULT_BLOCK_TOKENS,
        }
    }
}
