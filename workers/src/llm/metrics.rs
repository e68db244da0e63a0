//! Metrics of the `llm` engine, declared once. The worker actor records the per-step
//! figures every engine shares (batch size, step time by phase, preemptions, KV tokens);
//! these are the ones only a paged-KV model engine has.

use std::time::Duration;

use metrics::{describe_gauge, describe_histogram, gauge, histogram, Unit};

use crate::engine::StepReport;

pub const KV_BLOCKS_USED: &str = "swell_engine_kv_blocks_used";
pub const KV_BLOCKS_TOTAL: &str = "swell_engine_kv_blocks_total";
pub const FORWARD_DURATION: &str = "swell_engine_forward_seconds";
pub const STEP_TOKENS: &str = "swell_engine_step_tokens";

pub fn describe() {
    describe_gauge!(KV_BLOCKS_USED, "KV cache blocks (16 tokens each) in use, per replica");
    describe_gauge!(KV_BLOCKS_TOTAL, "KV cache blocks (16 tokens each) of a replica");
    describe_histogram!(FORWARD_DURATION, Unit::Seconds, "Model forward pass time of one step, by phase (prefill, decode, mixed)");
    describe_histogram!(STEP_TOKENS, "Tokens run through the model in one step, by kind (prefill, decode)");
}

/// The phase of a step: `prefill`, `decode` or `mixed`.
pub fn phase(report: &StepReport) -> &'static str {
    match (report.prefill_tokens > 0, report.decode_tokens > 0) {
        (true, true) => "mixed",
        (true, false) => "prefill",
        _ => "decode",
    }
}

pub fn step(replica: &str, report: &StepReport, forward: Duration, blocks_used: usize, blocks_total: usize) {
    histogram!(FORWARD_DURATION, "phase" => phase(report)).record(forward.as_secs_f64());
    if report.prefill_tokens > 0 {
        histogram!(STEP_TOKENS, "kind" => "prefill").record(report.prefill_tokens as f64);
    }
    if report.decode_tokens > 0 {
        histogram!(STEP_TOKENS, "kind" => "decode").record(report.decode_tokens as f64);
    }
    gauge!(KV_BLOCKS_USED, "replica" => replica.to_string()).set(blocks_used as f64);
    gauge!(KV_BLOCKS_TOTAL, "replica" => replica.to_string()).set(blocks_total as f64);
}
