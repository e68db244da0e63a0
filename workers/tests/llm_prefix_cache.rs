//! Prefix caching in the `llm` engine on the real model: a hit reuses exactly the blocks
//! it should and gives the same bits as a recompute (token ids, logprobs and top
//! logprobs), a conversation's next turn finds its history, and preemption, cancellation
//! and eviction under a small cache leave every reference count at zero and the outputs
//! unchanged.
//!
//! Needs the model: `scripts/fetch-model` (or `SWELL_MODEL_PATH`).

mod common;

use std::collections::HashMap;

use common::*;
use swell_protocol::{OutputEvent, SamplingParams};
use swell_workers::llm::block_pool::PoolStats;
use swell_workers::llm::kv_cache::KvCacheType;
use swell_workers::llm::quant::Kernel;
use swell_workers::llm::{LlmConfig, LlmEngine, LlmEngineFactory};
use swell_workers::{ChatMessage, Engine, EngineFactory};

const SYSTEM: &str = "You are the support assistant of a company that runs serverless inference \
    for language models. Answer briefly and in plain words, say when you are unsure, never \
    invent facts, and prefer a short list when there are several items to name.";

fn uncached() -> LlmConfig {
    let mut c = config();
    c.prefix_cache = false;
    c
}

fn message(role: &str, content: &str) -> ChatMessage {
    ChatMessage { role: role.into(), content: content.into() }
}

/// The chat prompt of `turns` (user, then assistant, alternating) after the system turn.
fn conversation(f: &LlmEngineFactory, turns: &[&str]) -> Vec<u32> {
    let mut messages = vec![message("system", SYSTEM)];
    for (i, t) in turns.iter().enumerate() {
        messages.push(message(if i % 2 == 0 { "user" } else { "assistant" }, t));
    }
    let t = f.tokenizer();
    t.encode(&t.apply_chat_template(&messages, true).unwrap(), true).unwrap()
}

fn with_logprobs(max_tokens: u32) -> SamplingParams {
    SamplingParams { logprobs: Some(5), ..greedy(max_tokens) }
}

/// `run`, and the prefix-cache counters it moved.
fn run_counted(e: &mut LlmEngine, seqs: Vec<swell_workers::Sequence>) -> (HashMap<String, Collected>, PoolStats) {
    let (before, _) = e.prefix_cache();
    let got = run(e, seqs);
    let (after, _) = e.prefix_cache();
    let delta = PoolStats {
        evictions: after.evictions - before.evictions,
        hit_tokens: after.hit_tokens - before.hit_tokens,
        miss_tokens: after.miss_tokens - before.miss_tokens,
    };
    (got, delta)
}

fn assert_same_bits(a: &Collected, b: &Collected, what: &str) {
    assert_eq!(a.ids, b.ids, "{what}: token ids");
    assert_eq!(a.logprobs.len(), b.logprobs.len(), "{what}");
    for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
        assert_eq!(x.token_id, y.token_id, "{what}");
        assert_eq!(x.logprob.to_bits(), y.logprob.to_bits(), "{what}: logprob of {:?}", x.token);
        let tops = |t: &swell_protocol::TokenLogprob| t.top.iter().map(|p| (p.token.clone(), p.logprob.to_bits())).collect::<Vec<_>>();
        assert_eq!(tops(x), tops(y), "{what}: top logprobs");
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[test]
fn a_hit_takes_the_shared_full_blocks_and_gives_the_same_bits() {
    let (f, mut cached) = engine(config());
    let (_, mut plain) = engine(uncached());
    let first = conversation(&f, &["Which regions do you serve?"]);
    let second = conversation(&f, &["How do I rotate an API key?"]);
    let shared = common_prefix(&first, &second);
    assert!(shared >= 48, "the system turn spans several blocks ({shared} tokens)");

    let (_, warm) = run_counted(&mut cached, vec![seq("first", first.clone(), with_logprobs(12))]);
    assert_eq!(warm.hit_tokens, 0, "a cold cache has nothing");
    let (hit, counted) = run_counted(&mut cached, vec![seq("second", second.clone(), with_logprobs(12))]);
    assert_eq!(counted.hit_tokens as usize, shared / 16 * 16, "every full block of the shared prefix, no more");
    assert_eq!(counted.miss_tokens as usize, second.len() - shared / 16 * 16);

    let (recomputed, none) = run_counted(&mut plain, vec![seq("second", second, with_logprobs(12))]);
    assert_eq!(none.hit_tokens, 0, "caching off finds nothing");
    assert_same_bits(&hit["second"], &recomputed["second"], "hit vs recompute");

    // The same prompt again: everything but the block of its last token is cached.
    let (again, counted) = run_counted(&mut cached, vec![seq("first", first.clone(), with_logprobs(12))]);
    assert_eq!(counted.hit_tokens as usize, (first.len() - 1) / 16 * 16);
    let (fresh, _) = run_counted(&mut plain, vec![seq("first", first, with_logprobs(12))]);
    assert_same_bits(&again["first"], &fresh["first"], "repeat vs recompute");
}

#[test]
fn the_next_turn_of_a_conversation_finds_its_history() {
    let (f, mut cached) = engine(config());
    let (_, mut plain) = engine(uncached());
    let q1 = "Name three uses of a message queue.";
    let turn1 = conversation(&f, &[q1]);
    let (got, _) = run_counted(&mut cached, vec![seq("t1", turn1.clone(), greedy(40))]);
    let answer = got["t1"].text.clone();
    let generated = got["t1"].ids.clone();
    // The client resends the answer as text; the template closes it with <|im_end|>.
    let turn2 = conversation(&f, &[q1, &answer, "Which of those needs ordering?"]);
    // What was computed in turn 1: the prompt and every generated token but the last.
    let mut history = turn1.clone();
    history.extend(&generated[..generated.len() - 1]);
    let reusable = common_prefix(&history, &turn2) / 16 * 16;
    // What the replica reports for routing: the turn's blocks, named as a gateway names
    // them, and, once turn 2 waits, only its uncached tokens as pending prefill.
    let report = Engine::cached_prefix(&cached, 10_000).expect("the llm engine reports its cache");
    let names = swell_workers::llm::block_pool::prefix_block_hashes(&turn2);
    assert!(names[..reusable / 16].iter().all(|name| report.blocks.contains(name)), "the history's blocks are reported");
    assert_eq!(Engine::prefix_cache_version(&cached), Some(report.version));
    cached.add(seq("t2", turn2.clone(), with_logprobs(16)));
    assert_eq!(cached.load().pending_prefill_tokens as usize, turn2.len() - reusable);
    cached.cancel("t2");
    assert_eq!(cached.load().pending_prefill_tokens, 0);
    let (hit, counted) = run_counted(&mut cached, vec![seq("t2", turn2.clone(), with_logprobs(16))]);
    assert!(reusable >= turn1.len() / 16 * 16, "at least the first turn's prompt: {reusable}");
    assert_eq!(counted.hit_tokens as usize, reusable);
    eprintln!(
        "turn 2: {} tokens, {} cached ({} of the {} generated tokens re-tokenized alike)",
        turn2.len(),
        counted.hit_tokens,
        common_prefix(&history, &turn2).saturating_sub(turn1.len()),
        generated.len() - 1
    );
    let (recomputed, _) = run_counted(&mut plain, vec![seq("t2", turn2, with_logprobs(16))]);
    assert_same_bits(&hit["t2"], &recomputed["t2"], "turn 2");
}

/// Sequences sharing a long prefix in a cache of 20 blocks (they need about 45): admission
/// waits, decoding preempts, cached blocks are evicted and found again, two sequences are
/// cancelled mid-run. Every output equals a roomy uncached run's, and every reference is
/// given back.
#[test]
fn preemption_cancellation_and_eviction_keep_counts_and_outputs() {
    preemption_cancellation_and_eviction(KvCacheType::F32);
}

/// The same over the 8-bit cache, where this CPU runs it (elsewhere it is refused).
#[test]
fn preemption_cancellation_and_eviction_keep_counts_and_outputs_with_the_8_bit_cache() {
    if !Kernel::detect().has_q8_attention() {
        let mut c = config();
        c.kv_cache_type = KvCacheType::Q8;
        assert!(LlmEngineFactory::new(c).is_err(), "refused without AVX-512 VNNI");
        return;
    }
    preemption_cancellation_and_eviction(KvCacheType::Q8);
}

/// Six sampled sequences and two cancelled ones, three rounds on a cache of 20 blocks
/// (preempting, evicting, hitting): the same tokens as on a roomy cache without prefix
/// caching, and every reference given back.
fn preemption_cancellation_and_eviction(kind: KvCacheType) {
    let mut roomy_config = uncached();
    roomy_config.kv_cache_type = kind;
    let (f, mut roomy) = engine(roomy_config);
    let mut small_config = config();
    small_config.kv_cache_type = kind;
    small_config.kv_cache_tokens = 20 * 16;
    let (_, mut small) = engine(small_config);
    let questions = [
        "What is a replica?",
        "What does scale to zero mean?",
        "Why batch requests?",
        "What is a KV cache?",
        "What is a token?",
        "What is a quota?",
    ];
    let params = |seed| SamplingParams { max_tokens: 40, temperature: 0.8, seed: Some(seed), ignore_eos: true, ..Default::default() };
    let seqs = || {
        questions
            .iter()
            .enumerate()
            .map(|(i, q)| seq(&format!("s{i}"), conversation(&f, &[q]), params(i as u64)))
            .collect::<Vec<_>>()
    };
    let want = run(&mut roomy, seqs());

    for round in 0..3 {
        for s in seqs() {
            small.add(s);
        }
        for (i, q) in questions.iter().take(2).enumerate() {
            small.add(seq(&format!("x{i}"), conversation(&f, &[q, "…", "And then?"]), params(99)));
        }
        let mut got: HashMap<String, Collected> = HashMap::new();
        let mut out = Vec::new();
        for step in 0..10_000 {
            if step == 6 {
                small.cancel("x0");
                small.cancel("x1");
            }
            out.clear();
            small.step(&mut out).expect("step");
            for o in out.drain(..) {
                let c = got.entry(o.id.to_string()).or_default();
                match o.event {
                    OutputEvent::Tokens { token_ids, .. } => c.ids.extend(token_ids),
                    OutputEvent::Finished { reason, usage } => c.finish = Some((reason, usage)),
                    OutputEvent::Failed { code, message } => c.failed = Some(format!("{code}: {message}")),
                    _ => {}
                }
            }
            if small.load().running + small.load().waiting == 0 {
                break;
            }
        }
        assert_eq!(small.load().kv_tokens_used, 0, "round {round}: every reference was given back");
        for i in 0..questions.len() {
            let id = format!("s{i}");
            assert_eq!(got[&id].ids, want[&id].ids, "round {round}, {id}");
            assert!(got[&id].finish.is_some(), "round {round}, {id}");
        }
        assert!(!got.contains_key("x0") || got["x0"].finish.is_none(), "a cancelled sequence ends silently");
    }
    let (stats, cached) = small.prefix_cache();
    assert!(stats.hit_tokens > 0, "later rounds and readmissions hit: {stats:?}");
    assert!(stats.evictions > 0, "the cache was too small to keep everything: {stats:?}");
    assert!(cached <= 20);
}
