//! Builders the queue tests share: a job of deployment `d`, and the output events a
//! replica writes.
#![allow(dead_code)]

pub mod backend;

use swell_cluster::{unix_millis, FinishReason, GenerationRequest, Job, OutputEvent, Priority, SamplingParams, Usage};

/// A normal-priority, unrouted job of deployment `d`, enqueued now.
pub fn job(id: &str) -> Job {
    Job {
        id: id.into(),
        deployment: "d".into(),
        tenant: "t".into(),
        request: GenerationRequest { prompt_tokens: vec![1, 2, 3], params: SamplingParams::default() },
        enqueued_at_ms: unix_millis(),
        deadline_ms: None,
        priority: Priority::Normal,
        route: None,
        stream_meta: None,
    }
}

pub fn tokens(ids: &[u32]) -> OutputEvent {
    OutputEvent::Tokens { text: format!("{ids:?}"), token_ids: ids.to_vec(), logprobs: None }
}

pub fn finished() -> OutputEvent {
    OutputEvent::Finished { reason: FinishReason::Length, usage: Usage { prompt_tokens: 3, completion_tokens: 2 } }
}
