//! Structured outputs on one replica: `cargo bench -p swell-workers --bench structured`.
//!
//! 1 and 16 concurrent sequences of the same chat prompt (sampled at temperature 0.8,
//! distinct seeds, at most 160 tokens), free and constrained by a JSON schema (the
//! Pydantic `Person` of tests/python/structured_outputs.py): decode tokens per second of
//! each (from the last sequence's first token to the end), medians of `SWELL_BENCH_ROUNDS` (default 3) rounds, free and constrained
//! rounds interleaved. Then the mask's own cost: the constrained outputs replayed through
//! a matcher, timing the mask and the advance of every token (the engine computes the
//! mask beside the forward pass; this is what it costs on its thread).
//!
//! Env: `SWELL_MODEL_PATH`, `SWELL_BENCH_THREADS` (default: every core),
//! `SWELL_BENCH_ROUNDS`.

use std::time::{Duration, Instant};

use swell_protocol::{Constraint, OutputEvent, SamplingParams};
use swell_workers::llm::constraint::ConstraintCompiler;
use swell_workers::llm::{find_default_model, LlmConfig, LlmEngine};
use swell_workers::{ChatMessage, Engine, ReplicaContext, Sequence, Tokenizer};

const PROMPT: &str =
    "Invent a customer of a web shop. Give their name, age, role (admin, user or guest), \
    a few tags, their address (city and zip code) and a nickname if they have one.";

const SCHEMA: &str = r##"{"$defs": {"Address": {"properties": {"city": {"maxLength": 40, "type": "string"}, "zip_code": {"anyOf": [{"maxLength": 10, "type": "string"}, {"type": "null"}]}}, "required": ["city", "zip_code"], "type": "object", "additionalProperties": false}, "Role": {"enum": ["admin", "user", "guest"], "type": "string"}}, "properties": {"name": {"maxLength": 40, "type": "string"}, "age": {"maximum": 150, "minimum": 0, "type": "integer"}, "role": {"$ref": "#/$defs/Role"}, "tags": {"items": {"maxLength": 20, "type": "string"}, "maxItems": 4, "type": "array"}, "address": {"$ref": "#/$defs/Address"}, "nickname": {"anyOf": [{"maxLength": 20, "type": "string"}, {"type": "null"}]}}, "required": ["name", "age", "role", "tags", "address", "nickname"], "type": "object", "additionalProperties": false}"##;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs `n` sequences to their end; returns (tokens generated after each sequence's
/// first, seconds from the last first token to the end, each one's ids): decode only,
/// so the shared prompt's prefill does not weigh on the shorter constrained outputs.
fn round(
    e: &mut LlmEngine,
    prompt: &[u32],
    n: usize,
    round: usize,
    constraint: Option<&Constraint>,
) -> (usize, f64, Vec<Vec<u32>>) {
    let mut decoding_from = None;
    for k in 0..n {
        let params = SamplingParams {
            max_tokens: 160,
            temperature: 0.8,
            seed: Some((round * 1000 + k) as u64),
            constraint: constraint.cloned(),
            ..SamplingParams::default()
        };
        e.add(Sequence {
            id: format!("s{k}"),
            prompt_tokens: prompt.to_vec(),
            resume_tokens: vec![],
            params,
        });
    }
    let mut ids = vec![Vec::new(); n];
    let mut out = Vec::new();
    while e.load().running + e.load().waiting > 0 {
        out.clear();
        e.step(&mut out).expect("step");
        for o in out.drain(..) {
            match o.event {
                OutputEvent::Tokens { token_ids, .. } => {
                    let k = o.id[1..].parse::<usize>().unwrap();
                    ids[k].extend(token_ids);
                    if k == n - 1 && decoding_from.is_none() {
                        decoding_from =
                            Some((Instant::now(), ids.iter().map(Vec::len).sum::<usize>()));
                    }
                }
                OutputEvent::Failed { code, message } => panic!("{code}: {message}"),
                _ => {}
            }
        }
    }
    let (from, before) = decoding_from.expect("tokens");
    (
        ids.iter().map(Vec::len).sum::<usize>() - before,
        from.elapsed().as_secs_f64(),
        ids,
    )
}

fn main() {
    let path = find_default_model().expect("model missing: run scripts/fetch-model");
    let mut config = LlmConfig::new(path);
    config.threads = Some(env_usize(
        "SWELL_BENCH_THREADS",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    ));
    config.kv_cache_tokens = 16_384;
    let factory = swell_workers::llm::LlmEngineFactory::new(config).expect("factory");
    let mut e = factory
        .create_cpu(&ReplicaContext {
            replica_id: "bench".into(),
            devices: vec![],
        })
        .expect("engine")
        .0;
    let t = factory.gguf_tokenizer();
    let text = t
        .apply_chat_template(
            &[ChatMessage {
                role: "user".into(),
                content: PROMPT.into(),
            }],
            true,
        )
        .unwrap();
    let prompt = t.encode(&text, true).unwrap();
    let schema = Constraint::JsonSchema(SCHEMA.to_string());
    let rounds = env_usize("SWELL_BENCH_ROUNDS", 3);

    // Warm up (the first constrained sequence builds the engine's compiler).
    round(&mut e, &prompt, 1, 99, Some(&schema));
    let mut outputs = Vec::new();
    println!(
        "streams  free tok/s  schema tok/s  schema/free  (decoded tokens per round: free, schema)"
    );
    for n in [1, 16] {
        let (mut free, mut constrained, mut lengths) = (Vec::new(), Vec::new(), (0, 0));
        for r in 0..rounds {
            let (tokens, secs, _) = round(&mut e, &prompt, n, r, None);
            free.push(tokens as f64 / secs);
            lengths.0 = tokens;
            let (tokens, secs, ids) = round(&mut e, &prompt, n, r, Some(&schema));
            constrained.push(tokens as f64 / secs);
            lengths.1 = tokens;
            outputs.extend(ids);
        }
        let (free, constrained) = (median(free), median(constrained));
        println!(
            "{n:>7}  {free:>10.1}  {constrained:>12.1}  {:>11.3}  ({}, {})",
            constrained / free,
            lengths.0,
            lengths.1
        );
    }

    // The mask's cost per token, replaying the constrained outputs.
    let tokenizer = factory.gguf_tokenizer().clone();
    let vocab = Tokenizer::vocab_size(&*tokenizer) as usize;
    let compiler = ConstraintCompiler::new(tokenizer, vocab).expect("compiler");
    let (mut compile, mut mask, mut advance, mut tokens) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0u32);
    for ids in &outputs {
        let started = Instant::now();
        let mut matcher = compiler.compile(&schema, &[]).expect("compile");
        compile += started.elapsed();
        for &id in ids {
            let started = Instant::now();
            let allowed = matcher.mask().expect("mask");
            mask += started.elapsed();
            assert!(
                allowed.allows(id),
                "the engine drew a token the mask forbids"
            );
            let started = Instant::now();
            matcher.advance(id).expect("advance");
            advance += started.elapsed();
            tokens += 1;
        }
    }
    let per = |d: Duration, n: u32| d.as_secs_f64() * 1e6 / f64::from(n.max(1));
    println!(
        "mask {:.1} us/token, advance {:.1} us/token, compile {:.0} us/sequence ({} sequences, {tokens} tokens)",
        per(mask, tokens),
        per(advance, tokens),
        per(compile, outputs.len() as u32),
        outputs.len()
    );
}
