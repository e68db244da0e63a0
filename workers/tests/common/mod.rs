//! Helpers shared by the engine tests on the real model: one factory per configuration
//! (weights load once per test binary), chat prompts, and a loop that steps an engine
//! until every sequence ended and checks that every KV block came back.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use swell_protocol::{FinishReason, OutputEvent, SamplingParams, TokenLogprob, Usage};
use swell_workers::llm::{find_default_model, LlmConfig, LlmEngine, LlmEngineFactory};
use swell_workers::{ChatMessage, Engine, EngineFactory, ReplicaContext, Sequence};

pub fn model_path() -> std::path::PathBuf {
    find_default_model().unwrap_or_else(|| {
        panic!("the model is missing: run scripts/fetch-model (or set SWELL_MODEL_PATH)")
    })
}

pub fn config() -> LlmConfig {
    let mut c = LlmConfig::new(model_path());
    c.threads = Some(2);
    c.kv_cache_tokens = 8192;
    c
}

/// One factory per configuration, shared by the tests (weights load once).
pub fn factory(c: LlmConfig) -> Arc<LlmEngineFactory> {
    static CACHE: OnceLock<parking_lot::Mutex<HashMap<String, Arc<LlmEngineFactory>>>> = OnceLock::new();
    let key = format!("{c:?}");
    let mut cache = CACHE.get_or_init(Default::default).lock();
    cache.entry(key).or_insert_with(|| Arc::new(LlmEngineFactory::new(c).expect("load the model"))).clone()
}

pub fn engine(c: LlmConfig) -> (Arc<LlmEngineFactory>, LlmEngine) {
    let f = factory(c);
    let (e, _) = f.create_cpu(&ReplicaContext { replica_id: "test".into(), devices: vec![] }).expect("create");
    (f, e)
}

pub fn chat_ids(f: &LlmEngineFactory, user: &str) -> Vec<u32> {
    let t = f.tokenizer();
    let text = t
        .apply_chat_template(&[ChatMessage { role: "user".into(), content: user.into() }], true)
        .unwrap();
    t.encode(&text, true).unwrap()
}

pub fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams { max_tokens, temperature: 0.0, ..SamplingParams::default() }
}

#[derive(Debug, Default, Clone)]
pub struct Collected {
    pub text: String,
    pub ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    pub finish: Option<(FinishReason, Usage)>,
    pub failed: Option<String>,
}

pub fn run(e: &mut LlmEngine, seqs: Vec<Sequence>) -> HashMap<String, Collected> {
    let mut got: HashMap<String, Collected> = HashMap::new();
    let n = seqs.len();
    for s in seqs {
        e.add(s);
    }
    let mut out = Vec::new();
    for _ in 0..100_000 {
        out.clear();
        e.step(&mut out).expect("step");
        for o in out.drain(..) {
            let c = got.entry(o.id.to_string()).or_default();
            match o.event {
                OutputEvent::Tokens { text, token_ids, logprobs } => {
                    c.text.push_str(&text);
                    c.ids.extend(token_ids);
                    c.logprobs.extend(logprobs.unwrap_or_default());
                }
                OutputEvent::PromptLogprobs { logprobs } => c.prompt_logprobs = Some(logprobs),
                OutputEvent::Finished { reason, usage } => c.finish = Some((reason, usage)),
                OutputEvent::Failed { code, message } => c.failed = Some(format!("{code}: {message}")),
                OutputEvent::Started { .. } => {}
            }
        }
        if got.values().filter(|c| c.finish.is_some() || c.failed.is_some()).count() == n {
            break;
        }
    }
    assert_eq!(e.load().running + e.load().waiting, 0, "everything finished");
    assert_eq!(e.load().kv_tokens_used, 0, "every block was given back");
    got
}

pub fn seq(id: &str, prompt: Vec<u32>, params: SamplingParams) -> Sequence {
    Sequence { id: id.into(), prompt_tokens: prompt, resume_tokens: vec![], params }
}

