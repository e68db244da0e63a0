//! The `llm` engine on the real model (SmolLM2-135M-Instruct, Q4_1): greedy output,
//! batching that changes nothing, chunked prefill, preemption under a small KV cache,
//! seeds, stops, logprobs and cancellation.
//!
//! Needs the model: `scripts/fetch-model` (or `SWELL_MODEL_PATH`). Missing, every test
//! fails and says so.

mod common;

use std::collections::HashMap;

use common::*;
use swell_protocol::{FinishReason, OutputEvent, SamplingParams, Usage};
use swell_workers::llm::LlmEngineFactory;
use swell_workers::{Engine, EngineFactory, ReplicaContext};

const PROMPTS: &[&str] = &[
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain what a hash map is in one sentence.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
];

#[test]
fn france_greedy_matches_llama_cpp() {
    let (f, mut e) = engine(config());
    // The plain ChatML prompt (no system turn), as in the issue's example.
    let text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let ids = f.tokenizer().encode(text, true).unwrap();
    let got = run(&mut e, vec![seq("a", ids, greedy(32))]);
    let a = &got["a"];
    assert_eq!(a.ids, vec![504, 3575, 282, 4649, 314, 7042, 30, 2], "{a:?}");
    assert_eq!(a.text, "The capital of France is Paris.");
    let (reason, usage) = a.finish.unwrap();
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(usage.completion_tokens, 8);
}

#[test]
fn batched_and_chunked_runs_equal_single_runs() {
    let (f, mut e) = engine(config());
    let mut single = HashMap::new();
    for (i, p) in PROMPTS.iter().enumerate() {
        let got = run(&mut e, vec![seq(&format!("s{i}"), chat_ids(&f, p), greedy(24))]);
        single.insert(i, got[&format!("s{i}")].ids.clone());
    }
    // All at once, with a token budget small enough to chunk every prompt.
    let mut c = config();
    c.max_batched_tokens = 13;
    let (_, mut e) = engine(c);
    let seqs = PROMPTS.iter().enumerate().map(|(i, p)| seq(&format!("b{i}"), chat_ids(&f, p), greedy(24))).collect();
    let batched = run(&mut e, seqs);
    for i in 0..PROMPTS.len() {
        assert_eq!(batched[&format!("b{i}")].ids, single[&i], "prompt {i}: {}", PROMPTS[i]);
    }
}

#[test]
fn a_small_kv_cache_preempts_and_outputs_do_not_change() {
    let (f, mut e) = engine(config());
    let params = SamplingParams { max_tokens: 40, temperature: 0.8, seed: Some(7), ignore_eos: true, ..Default::default() };
    let seqs = |prefix: &str| {
        PROMPTS.iter().enumerate().map(|(i, p)| seq(&format!("{prefix}{i}"), chat_ids(&f, p), params.clone())).collect::<Vec<_>>()
    };
    let roomy = run(&mut e, seqs("r"));
    // 6 sequences of ~75 tokens need ~30 blocks at the end; 12 blocks force preemption.
    let mut c = config();
    c.kv_cache_tokens = 12 * 16;
    let (_, mut small) = engine(c);
    let tight = run(&mut small, seqs("t"));
    for i in 0..PROMPTS.len() {
        let (r, t) = (&roomy[&format!("r{i}")], &tight[&format!("t{i}")]);
        assert_eq!(t.ids, r.ids, "prompt {i}");
        assert_eq!(t.text, r.text);
        assert_eq!(t.finish.unwrap().0, FinishReason::Length);
        assert_eq!(t.ids.len(), 40);
    }
}

#[test]
fn seeds_are_reproducible_and_distinct() {
    let (f, mut e) = engine(config());
    let ids = chat_ids(&f, "Tell me a story about a robot.");
    let p = |seed| SamplingParams { max_tokens: 20, temperature: 1.0, top_p: 0.95, seed: Some(seed), ignore_eos: true, ..Default::default() };
    let got = run(&mut e, vec![seq("a", ids.clone(), p(1)), seq("b", ids.clone(), p(1)), seq("c", ids, p(2))]);
    assert_eq!(got["a"].ids, got["b"].ids);
    assert_ne!(got["a"].ids, got["c"].ids);
}

#[test]
fn stop_strings_max_tokens_and_logprobs() {
    let (f, mut e) = engine(config());
    let text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let ids = f.tokenizer().encode(text, true).unwrap();
    let mut stop = greedy(32);
    stop.stop = vec![" Paris".into()];
    let mut lp = greedy(3);
    lp.logprobs = Some(3);
    let got = run(&mut e, vec![seq("stop", ids.clone(), stop), seq("lp", ids, lp)]);
    assert_eq!(got["stop"].text, "The capital of France is");
    assert_eq!(got["stop"].finish.unwrap().0, FinishReason::Stop);
    let lp = &got["lp"];
    assert_eq!(lp.ids, vec![504, 3575, 282]);
    assert_eq!(lp.finish.unwrap().0, FinishReason::Length);
    assert_eq!(lp.logprobs.len(), 3);
    for (t, id) in lp.logprobs.iter().zip(&lp.ids) {
        assert_eq!(t.token_id, *id);
        assert_eq!(t.top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(t.top[0].logprob, t.logprob);
        assert!(t.logprob <= 0.0 && t.logprob > -5.0, "{t:?}");
    }
    assert_eq!(lp.logprobs[0].token, "The");
}

#[test]
fn prompt_logprobs_score_the_prompt_without_generating() {
    let (f, mut e) = engine(config());
    let t = f.tokenizer();
    let ids = t.encode("The capital of France is Paris.", false).unwrap();
    let mut p = greedy(0);
    p.prompt_logprobs = true;
    p.logprobs = Some(2);
    let got = run(&mut e, vec![seq("score", ids.clone(), p)]);
    let s = &got["score"];
    let pl = s.prompt_logprobs.as_ref().expect("prompt logprobs");
    assert_eq!(pl.len(), ids.len());
    assert!(pl[0].is_none());
    for (lp, id) in pl[1..].iter().zip(&ids[1..]) {
        let lp = lp.as_ref().unwrap();
        assert_eq!(lp.token_id, *id);
        assert!(lp.logprob <= 0.0);
        assert_eq!(lp.top.len(), 2);
    }
    // " Paris" after "The capital of France is" is the model's top choice.
    let paris = pl[ids.len() - 2].as_ref().unwrap();
    assert_eq!(paris.top[0].logprob, paris.logprob, "{paris:?}");
    assert_eq!(s.finish.unwrap(), (FinishReason::Length, Usage { prompt_tokens: ids.len() as u32, completion_tokens: 0 }));
    assert!(s.ids.is_empty());
}

#[test]
fn cancel_frees_the_sequence_at_the_next_step() {
    let (f, mut e) = engine(config());
    let ids = chat_ids(&f, "Count to one hundred.");
    let p = SamplingParams { max_tokens: 200, ignore_eos: true, temperature: 0.0, ..Default::default() };
    e.add(seq("x", ids.clone(), p.clone()));
    e.add(seq("y", ids, p));
    let mut out = Vec::new();
    for _ in 0..3 {
        e.step(&mut out).unwrap();
    }
    assert_eq!(e.load().running, 2);
    let used_before = e.load().kv_tokens_used;
    e.cancel("x");
    assert!(e.load().kv_tokens_used < used_before);
    out.clear();
    let report = e.step(&mut out).unwrap();
    assert_eq!(report.batch_size, 1);
    assert!(out.iter().all(|o| o.id == "y"), "{out:?}");
}

#[test]
fn bad_sequences_fail_cleanly() {
    let (_, mut e) = engine(config());
    let got = run(
        &mut e,
        vec![
            seq("oov", vec![1, 999_999], greedy(4)),
            seq("empty", vec![], greedy(4)),
            seq("long", vec![1; 9000], greedy(4)),
        ],
    );
    for id in ["oov", "empty", "long"] {
        assert!(got[id].failed.as_deref().unwrap().starts_with("invalid_prompt"), "{id}: {:?}", got[id]);
    }
}

#[test]
fn without_a_gpu_auto_runs_on_the_cpu_and_cuda_is_refused() {
    let gpus = swell_workers::llm::cuda::discover().expect("discovery never fails without a driver");
    if !gpus.is_empty() {
        // A GPU machine: placement is checked by tests/llm_cuda.rs.
        return;
    }
    let f = LlmEngineFactory::new(config()).unwrap();
    assert!(f.gpus().is_empty());
    assert_eq!(f.describe().gpus_per_replica, 0);
    let (mut engine, report) = f.create(&ReplicaContext { replica_id: "r".into(), devices: vec![] }).unwrap();
    assert!(report.stages.iter().any(|(stage, _)| stage == "warm_up"));
    let ids = chat_ids(&f, "Hi");
    engine.add(seq("a", ids, greedy(2)));
    let mut out = Vec::new();
    while engine.load().running + engine.load().waiting > 0 {
        engine.step(&mut out).unwrap();
    }
    assert!(out.iter().any(|o| matches!(o.event, OutputEvent::Finished { .. })));
    let mut c = config();
    c.device = swell_workers::llm::DeviceChoice::Cuda;
    let error = LlmEngineFactory::new(c).unwrap_err();
    assert!(error.to_string().contains("no CUDA device"), "{error}");
}
