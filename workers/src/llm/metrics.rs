//! Metrics of the `llm` engine, declared once. The worker actor records the per-step
//! figures every engine shares (batch size, step time by phase, preemptions, KV tokens);
//! these are the ones only a paged-KV model engine has.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};

use crate::engine::StepReport;
use crate::llm::block_pool::BlockPool;

pub const KV_BLOCKS_USED: &str = "swell_engine_kv_blocks_used";
pub const KV_BLOCKS_TOTAL: &str = "swell_engine_kv_blocks_total";
pub const FORWARD_DURATION: &str = "swell_engine_forward_seconds";
pub const STEP_TOKENS: &str = "swell_engine_step_tokens";
pub const PREFIX_HIT_TOKENS: &str = "swell_engine_prefix_cache_hit_tokens_total";
pub const PREFIX_MISS_TOKENS: &str = "swell_engine_prefix_cache_miss_tokens_total";
pub const PREFIX_CACHED_BLOCKS: &str = "swell_engine_prefix_cache_blocks";
pub const PREFIX_EVICTIONS: &str = "swell_engine_prefix_cache_evictions_total";

pub fn describe() {
    describe_gauge!(KV_BLOCKS_USED, "KV cache blocks (16 tokens each) in use, per replica");
    describe_gauge!(KV_BLOCKS_TOTAL, "KV cache blocks (16 tokens each) of a replica");
    describe_histogram!(FORWARD_DURATION, Unit::Seconds, "Model forward pass time of one step, by phase (prefill, decode, mixed)");
    describe_histogram!(STEP_TOKENS, "Tokens run through the model in one step, by kind (prefill, decode)");
    describe_counter!(PREFIX_HIT_TOKENS, "Context tokens a sequence found computed in the prefix cache when admitted, per replica");
    describe_counter!(PREFIX_MISS_TOKENS, "Context tokens a sequence had to compute when admitted, per replica");
    describe_gauge!(PREFIX_CACHED_BLOCKS, "KV blocks whose contents are kept by prefix (in use or evictable), per replica");
    describe_counter!(PREFIX_EVICTIONS, "Cached KV blocks reused for new contents, per replica");
}

/// A sequence admitted: how much of its context the cache held.
pub fn prefix_lookup(replica: &str, hit_tokens: usize, miss_tokens: usize) {
    counter!(PREFIX_HIT_TOKENS, "replica" => replica.to_string()).increment(hit_tokens as u64);
    counter!(PREFIX_MISS_TOKENS, "replica" => replica.to_string()).increment(miss_tokens as u64);
}

/// The phase of a step: `prefill`, `decode` or `mixed`.
pub fn phase(report: &StepReport) -> &'static str {
    match (report.prefill_tokens > 0, report.decode_tokens > 0) {
        (true, true) => "mixed",
        (true, false) => "prefill",
        _ => "decode",
    }
}

pub fn step(replica: &str, report: &StepReport, forward: Duration, pool: &BlockPool) {
    histogram!(FORWARD_DURATION, "phase" => phase(report)).record(forward.as_secs_f64());
    if report.prefill_tokens > 0 {
        histogram!(STEP_TOKENS, "kind" => "prefill").record(report.prefill_tokens as f64);
    }
    if report.decode_tokens > 0 {
        histogram!(STEP_TOKENS, "kind" => "decode").record(report.decode_tokens as f64);
    }
    gauge!(KV_BLOCKS_USED, "replica" => replica.to_string()).set(pool.used() as f64);
    gauge!(KV_BLOCKS_TOTAL, "replica" => replica.to_string()).set(pool.total() as f64);
    gauge!(PREFIX_CACHED_BLOCKS, "replica" => replica.to_string()).set(pool.cached() as f64);
    counter!(PREFIX_EVICTIONS, "replica" => replica.to_string()).absolute(pool.stats().evictions);
}
