//! A scripted engine and its factory, for the actors' tests (fakes, for tests only): each
//! step, after sleeping `step`, every sequence emits its next token `i` as the text
//! `t{i} `, starting after its resume tokens, and finishes at `max_tokens`. So the only
//! right output of a request, however often it moved, is `t0 t1 t2 ...`.

use std::sync::Arc;
use std::time::Duration;

use swell_actors::request::RequestSpec;
use swell_cluster::{FinishReason, GenerationRequest, OutputEvent, SamplingParams, Usage};
use swell_workers::{
    ChatMessage, ColdStartReport, Engine, EngineDescription, EngineError, EngineFactory, EngineLoad, ReplicaContext,
    Sequence, SequenceOutput, StepReport, Tokenizer,
};

/// Sequences held at once.
const SLOTS: usize = 8;

pub struct ScriptedEngine {
    running: Vec<(Sequence, u32)>,
    step: Duration,
}

impl Engine for ScriptedEngine {
    fn add(&mut self, seq: Sequence) {
        self.running.retain(|(s, _)| s.id != seq.id);
        let at = seq.resume_tokens.len() as u32;
        self.running.push((seq, at));
    }
    fn cancel(&mut self, id: &str) {
        self.running.retain(|(s, _)| s.id != id);
    }
    fn step(&mut self, out: &mut Vec<SequenceOutput>) -> Result<StepReport, EngineError> {
        if self.running.is_empty() {
            return Ok(StepReport::default());
        }
        std::thread::sleep(self.step);
        let batch_size = self.running.len();
        for (seq, at) in &mut self.running {
            if *at < seq.params.max_tokens {
                let event = OutputEvent::Tokens { text: format!("t{at} "), token_ids: vec![*at], logprobs: None };
                out.push(SequenceOutput { id: seq.id.clone(), event });
                *at += 1;
            }
            if *at >= seq.params.max_tokens {
                let usage = Usage { prompt_tokens: seq.prompt_tokens.len() as u32, completion_tokens: *at };
                out.push(SequenceOutput { id: seq.id.clone(), event: OutputEvent::Finished { reason: FinishReason::Length, usage } });
            }
        }
        self.running.retain(|(s, at)| *at < s.params.max_tokens);
        Ok(StepReport { batch_size, decode_tokens: batch_size, ..Default::default() })
    }
    fn load(&self) -> EngineLoad {
        EngineLoad { running: self.running.len(), free_slots: SLOTS.saturating_sub(self.running.len()), ..Default::default() }
    }
}

pub struct ScriptedFactory {
    pub cold_start: Duration,
    pub step: Duration,
}

impl EngineFactory for ScriptedFactory {
    fn describe(&self) -> EngineDescription {
        EngineDescription {
            engine: "scripted".into(),
            model: "scripted".into(),
            context_length: 1024,
            gpus_per_replica: 0,
            max_batch_size: SLOTS as u32,
            kv_capacity_tokens: 8192,
            expected_cold_start: self.cold_start,
            performance: None,
            unsupported_params: Vec::new(),
        }
    }
    fn tokenizer(&self) -> Arc<dyn Tokenizer> {
        Arc::new(WordTokenizer)
    }
    fn create(&self, _: &ReplicaContext) -> Result<(Box<dyn Engine>, ColdStartReport), EngineError> {
        std::thread::sleep(self.cold_start);
        let engine = ScriptedEngine { running: Vec::new(), step: self.step };
        Ok((Box::new(engine), ColdStartReport { stages: vec![("load".into(), self.cold_start)] }))
    }
}

/// A word's token is its length; a chat is its messages' texts joined by new lines.
pub struct WordTokenizer;

impl Tokenizer for WordTokenizer {
    fn encode(&self, text: &str, _: bool) -> Result<Vec<u32>, EngineError> {
        Ok(text.split_whitespace().map(|w| w.len() as u32).collect())
    }
    fn decode(&self, ids: &[u32]) -> String {
        format!("{ids:?}")
    }
    fn token_text(&self, id: u32) -> String {
        id.to_string()
    }
    fn apply_chat_template(&self, messages: &[ChatMessage], _: bool) -> Result<String, EngineError> {
        Ok(messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"))
    }
    fn vocab_size(&self) -> u32 {
        100
    }
}

/// A request `id` of deployment `d` for `max_tokens` tokens.
pub fn spec(id: &str, max_tokens: u32) -> RequestSpec {
    RequestSpec {
        job_id: id.into(),
        deployment: "d".into(),
        tenant: "t".into(),
        request: GenerationRequest { prompt_tokens: vec![1, 2, 3], params: SamplingParams { max_tokens, ..Default::default() } },
        deadline: None,
        max_queue_depth: 100,
        priority: swell_cluster::Priority::Normal,
        received_at: tokio::time::Instant::now(),
        route: Default::default(),
        stream_meta: None,
        resume_grace: None,
    }
}
