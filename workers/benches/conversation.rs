//! Prefix caching on one replica: `cargo bench -p swell-workers --bench conversation`.
//!
//! One 8-turn conversation on the real model, each turn resending the whole history (a
//! system turn, the earlier questions and the model's own answers as text) plus a new
//! question, as a chat client does. Per turn it prints the prompt's tokens, how many the
//! cache held, the time to first token with the cache, without it (the same prompt on an
//! engine with `prefix_cache = false`), and of a fresh prompt as long as the turn's new
//! tokens (its last tokens, alone, uncached): what a turn should cost when its history
//! is cached. Medians of `SWELL_BENCH_ROUNDS` (default 3) conversations, each on fresh
//! engines.
//!
//! Env: `SWELL_MODEL_PATH`, `SWELL_BENCH_THREADS` (default: every core),
//! `SWELL_BENCH_KERNEL`, `SWELL_BENCH_ROUNDS`, `SWELL_BENCH_KV` (`f32`, the default, or
//! `q8`: the KV cache type of every engine).

use std::time::{Duration, Instant};

use swell_protocol::{OutputEvent, SamplingParams};
use swell_workers::llm::kv_cache::KvCacheType;
use swell_workers::llm::{find_default_model, LlmConfig, LlmEngine, LlmEngineFactory};
use swell_workers::{ChatMessage, Engine, ReplicaContext, Sequence, Tokenizer};

const SYSTEM: &str = "You are the support assistant of Swell, a self-hosted platform that serves \
    language models on demand. Answer in a few plain sentences. When a question is about \
    configuration, name the setting. When you are unsure, say so and suggest where to look.";

const QUESTIONS: [&str; 8] = [
    "We run a chat product with about two hundred users at peak and almost none at night. How should we set up a deployment so that we do not pay for idle machines overnight?",
    "If a request arrives while no replica is running, what happens to it, and what does the client see while it waits for the first replica to start?",
    "Our traffic has sharp spikes every hour when a batch job fires. Would a schedule or a predictive floor be the better tool, and why?",
    "How do per-tenant quotas interact with the queue? Can one noisy tenant still slow the others down when the queue is long?",
    "We would like to keep the first token under one second for our premium tenant. What does the SLO mode change in the autoscaler's decisions?",
    "When a replica is drained for maintenance, what happens to the streams it is serving at that moment? Does the client notice anything?",
    "Which metrics should we put on our dashboard first to tell whether the deployment is sized right, and what would a bad value look like?",
    "Finally, summarize in three bullet points what we should configure first, second and third for our setup.",
];

fn threads() -> usize {
    std::env::var("SWELL_BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn factory(prefix_cache: bool) -> LlmEngineFactory {
    let mut config = LlmConfig::new(find_default_model().expect("model missing: run scripts/fetch-model"));
    config.threads = Some(threads());
    config.kv_cache_tokens = 65_536;
    config.cpu_kernel = std::env::var("SWELL_BENCH_KERNEL").ok();
    config.prefix_cache = prefix_cache;
    config.kv_cache_type = match std::env::var("SWELL_BENCH_KV").as_deref() {
        Ok("q8") => KvCacheType::Q8,
        Ok("f32") | Err(_) => KvCacheType::F32,
        Ok(other) => panic!("SWELL_BENCH_KV: `{other}` is not f32 or q8"),
    };
    LlmEngineFactory::new(config).expect("factory")
}

fn engine(f: &LlmEngineFactory) -> LlmEngine {
    f.create_cpu(&ReplicaContext { replica_id: "bench".into(), devices: vec![] }).expect("engine").0
}

/// Time to the first token of `prompt`; with `answer`, runs on to the end and returns
/// the text as well (greedy, at most 64 tokens), else cancels after the first token.
fn run(e: &mut LlmEngine, id: &str, prompt: Vec<u32>, answer: bool) -> (Duration, String) {
    let params = SamplingParams { max_tokens: if answer { 64 } else { 1 }, temperature: 0.0, ..SamplingParams::default() };
    let started = Instant::now();
    e.add(Sequence { id: id.into(), prompt_tokens: prompt, resume_tokens: vec![], params });
    let (mut ttft, mut text) = (None, String::new());
    let mut out = Vec::new();
    while e.load().running + e.load().waiting > 0 {
        out.clear();
        e.step(&mut out).expect("step");
        for o in out.drain(..) {
            if let OutputEvent::Tokens { text: t, .. } = o.event {
                ttft.get_or_insert_with(|| started.elapsed());
                text.push_str(&t);
            }
        }
        if ttft.is_some() && !answer {
            e.cancel(id);
        }
    }
    (ttft.expect("a first token"), text)
}

struct Turn {
    prompt: usize,
    cached: usize,
    cached_ttft: Duration,
    uncached_ttft: Duration,
    fresh_ttft: Duration,
}

fn conversation(with: &LlmEngineFactory, without: &LlmEngineFactory) -> Vec<Turn> {
    let tokenizer = with.gguf_tokenizer();
    let (mut cached, mut plain) = (engine(with), engine(without));
    let mut messages = vec![ChatMessage { role: "system".into(), content: SYSTEM.into() }];
    let mut turns = Vec::new();
    for (k, q) in QUESTIONS.iter().enumerate() {
        messages.push(ChatMessage { role: "user".into(), content: (*q).into() });
        let text = tokenizer.apply_chat_template(&messages, true).expect("template");
        let prompt = tokenizer.encode(&text, true).expect("encode");
        let before = cached.prefix_cache().0.hit_tokens;
        let (cached_ttft, answer) = run(&mut cached, &format!("c{k}"), prompt.clone(), true);
        let hit = (cached.prefix_cache().0.hit_tokens - before) as usize;
        let (uncached_ttft, _) = run(&mut plain, &format!("u{k}"), prompt.clone(), false);
        let (fresh_ttft, _) = run(&mut plain, &format!("f{k}"), prompt[hit..].to_vec(), false);
        turns.push(Turn { prompt: prompt.len(), cached: hit, cached_ttft, uncached_ttft, fresh_ttft });
        messages.push(ChatMessage { role: "assistant".into(), content: answer });
    }
    turns
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("SWELL_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let (with, without) = (factory(true), factory(false));
    let kv = std::env::var("SWELL_BENCH_KV").unwrap_or_else(|_| "f32".into());
    println!("\n## One conversation, 8 turns, history resent ({} threads, kernel {}, {kv} KV cache, {rounds} rounds)\n", with.threads(), with.kernel().name());
    let runs: Vec<Vec<Turn>> = (0..rounds).map(|_| conversation(&with, &without)).collect();
    println!("| turn | prompt tokens | cached | new | TTFT cached (ms) | TTFT uncached (ms) | TTFT of a fresh prompt of the new tokens (ms) | cached / fresh (median of rounds) |");
    println!("|---|---|---|---|---|---|---|---|");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // Paired: each round's cached turn over the fresh prompt measured right after it.
    let ratios: Vec<f64> = (0..QUESTIONS.len()).map(|k| median(runs.iter().map(|r| ms(r[k].cached_ttft) / ms(r[k].fresh_ttft)).collect())).collect();
    for k in 0..QUESTIONS.len() {
        let (prompt, cached) = (runs[0][k].prompt, runs[0][k].cached);
        let c = median(runs.iter().map(|r| ms(r[k].cached_ttft)).collect());
        let u = median(runs.iter().map(|r| ms(r[k].uncached_ttft)).collect());
        let f = median(runs.iter().map(|r| ms(r[k].fresh_ttft)).collect());
        println!("| {} | {prompt} | {cached} | {} | {c:.1} | {u:.1} | {f:.1} | {:.2} |", k + 1, prompt - cached, ratios[k]);
    }
    let worst = ratios[1..].iter().copied().fold(0f64, f64::max);
    println!("\nTurns 2-8: highest cached / fresh {worst:.2}");
}
