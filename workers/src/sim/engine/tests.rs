//! The `sim` engine on small profiles: seeds, limits, stop strings, batching, KV
//! preemption and resumption, chunked prefill, pacing.

use std::collections::HashMap;
use std::time::Duration;

use swell_protocol::SamplingParams;

use super::*;
use crate::sim::profile::builtin;
use crate::sim::tokenizer::SimTokenizer;
use crate::tokenizer::Tokenizer;

/// Free and fast, with small limits the tests can reason about.
fn profile(max_batch: u32, kv: u64, context: u32, prefill_chunk: u64) -> SimProfile {
    SimProfile {
        max_batch_size: max_batch,
        kv_capacity_tokens: kv,
        context_length: context,
        max_prefill_tokens_per_step: prefill_chunk,
        ..builtin("zero").unwrap()
    }
}

fn engine(p: SimProfile) -> SimEngine {
    SimEngine::new(p).with_pacing(false)
}

fn params(max_tokens: u32, seed: Option<u64>) -> SamplingParams {
    SamplingParams {
        max_tokens,
        seed,
        ..SamplingParams::default()
    }
}

fn seq(id: &str, prompt_len: u32, params: SamplingParams) -> Sequence {
    Sequence {
        id: id.into(),
        prompt_tokens: (0..prompt_len).map(|i| 40 + i % 100).collect(),
        resume_tokens: vec![],
        params,
    }
}

#[derive(Debug, Default, Clone)]
struct Collected {
    text: String,
    ids: Vec<u32>,
    events: Vec<OutputEvent>,
    finish: Option<(FinishReason, Usage)>,
    failed: Option<String>,
}

fn collect(into: &mut HashMap<String, Collected>, out: Vec<SequenceOutput>) {
    for o in out {
        let c = into.entry(o.id.clone()).or_default();
        assert!(
            c.finish.is_none() && c.failed.is_none(),
            "event after the end: {o:?}"
        );
        match &o.event {
            OutputEvent::Tokens {
                text, token_ids, ..
            } => {
                c.text.push_str(text);
                c.ids.extend(token_ids);
            }
            OutputEvent::Finished { reason, usage } => c.finish = Some((*reason, *usage)),
            OutputEvent::Failed { code, .. } => c.failed = Some(code.clone()),
            _ => {}
        }
        c.events.push(o.event);
    }
}

/// Step until nothing is left; returns the outputs and every step's report.
fn run(e: &mut SimEngine) -> (HashMap<String, Collected>, Vec<StepReport>) {
    let mut all = HashMap::new();
    let mut reports = Vec::new();
    for _ in 0..100_000 {
        let mut out = Vec::new();
        let r = e.step(&mut out).unwrap();
        let idle = out.is_empty()
            && r == StepReport {
                elapsed: r.elapsed,
                ..Default::default()
            };
        collect(&mut all, out);
        if idle && e.load().running == 0 && e.load().waiting == 0 {
            return (all, reports);
        }
        assert!(e.load().kv_tokens_used <= e.load().kv_tokens_capacity);
        reports.push(r);
    }
    panic!("engine did not drain");
}

fn generate(id: &str, prompt_len: u32, p: SamplingParams) -> Collected {
    let mut e = engine(builtin("zero").unwrap());
    e.add(seq(id, prompt_len, p));
    run(&mut e).0.remove(id).unwrap()
}

#[test]
fn same_seed_same_text_and_different_seeds_differ() {
    let a = generate("a", 10, params(30, Some(7)));
    let b = generate("b", 25, params(30, Some(7)));
    let c = generate("c", 10, params(30, Some(8)));
    assert_eq!(a.text, b.text, "same seed, same text (whatever the prompt)");
    assert_eq!(a.ids, b.ids);
    assert_ne!(a.text, c.text);
    // No seed: a hash of the prompt.
    let d1 = generate("d", 10, params(30, None));
    let d2 = generate("d", 10, params(30, None));
    let d3 = generate("d", 11, params(30, None));
    assert_eq!(d1.text, d2.text);
    assert_ne!(d1.text, d3.text);
    // The text is the decoding of the ids, one Tokens event per token.
    assert_eq!(SimTokenizer::new().decode(&a.ids), a.text);
    assert_eq!(a.events.len(), 31);
    assert!(!a.text.starts_with(' '));
}

#[test]
fn max_tokens_gives_length_and_exact_usage() {
    let c = generate("a", 12, params(7, Some(1)));
    assert_eq!(c.ids.len(), 7);
    assert_eq!(
        c.finish,
        Some((
            FinishReason::Length,
            Usage {
                prompt_tokens: 12,
                completion_tokens: 7
            }
        ))
    );
    for e in &c.events[..7] {
        match e {
            OutputEvent::Tokens {
                token_ids,
                logprobs,
                ..
            } => {
                assert_eq!(token_ids.len(), 1);
                assert!(logprobs.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn max_tokens_zero_and_empty_prompt_finish_at_once() {
    let mut e = engine(builtin("zero").unwrap());
    e.add(seq("zero", 5, params(0, None)));
    e.add(seq("empty", 0, params(3, Some(2))));
    let mut out = Vec::new();
    e.step(&mut out).unwrap();
    assert_eq!(
        out[0],
        SequenceOutput {
            id: "zero".into(),
            event: OutputEvent::Finished {
                reason: FinishReason::Length,
                usage: Usage {
                    prompt_tokens: 5,
                    completion_tokens: 0
                }
            }
        }
    );
    // The empty prompt produced its first token in the same step.
    let first = out.iter().filter(|o| o.id == "empty").count();
    assert_eq!(first, 1);
    let (mut all, _) = run(&mut e);
    let empty = all.remove("empty").unwrap();
    assert_eq!(empty.ids.len(), 2);
    assert_eq!(
        empty.finish.unwrap().1,
        Usage {
            prompt_tokens: 0,
            completion_tokens: 3
        }
    );
}

#[test]
fn prompt_over_the_context_fails_cleanly() {
    let mut e = engine(profile(4, 1000, 100, 1000));
    e.add(seq("long", 101, params(5, None)));
    // Exactly the context: nothing can be generated.
    e.add(seq("full", 100, params(5, None)));
    let (all, _) = run(&mut e);
    assert_eq!(all["long"].failed.as_deref(), Some("invalid_prompt"));
    assert_eq!(all["full"].finish.unwrap().0, FinishReason::Length);
    assert_eq!(all["full"].finish.unwrap().1.completion_tokens, 0);
    // A sequence stops at the context length even before max_tokens.
    let mut e = engine(profile(4, 1000, 100, 1000));
    e.add(seq("a", 95, params(50, None)));
    let (all, _) = run(&mut e);
    assert_eq!(
        all["a"].finish,
        Some((
            FinishReason::Length,
            Usage {
                prompt_tokens: 95,
                completion_tokens: 5
            }
        ))
    );
}

#[test]
fn stop_string_cuts_the_output() {
    let full = generate("a", 4, params(40, Some(3)));
    let pieces: Vec<String> = {
        let mut prev = None;
        full.ids
            .iter()
            .map(|t| {
                let p = piece(prev, *t);
                prev = Some(*t);
                p
            })
            .collect()
    };
    // Stop at the 10th token's text (and everything after it).
    let stop = pieces[10].trim().to_string();
    let cut = full.text.find(&stop).unwrap();
    let mut p = params(40, Some(3));
    p.stop = vec![stop.clone()];
    let c = generate("a", 4, p);
    assert_eq!(c.text, full.text[..cut]);
    assert!(!c.text.contains(&stop));
    let (reason, usage) = c.finish.unwrap();
    assert_eq!(reason, FinishReason::Stop);
    // Tokens up to and including the one holding the stop string were generated.
    let holding = pieces.iter().scan(0, |end, p| {
        *end += p.len();
        Some(*end)
    });
    let n = holding.take_while(|end| *end <= cut).count() + 1;
    assert_eq!(usage.completion_tokens as usize, n);
    assert_eq!(c.ids, full.ids[..n]);
}

#[test]
fn partial_stop_string_is_held_back_then_released() {
    let full = generate("a", 4, params(30, Some(11)));
    let (t5, t6) = (full.ids[5], full.ids[6]);
    // The text of tokens 5 and 6, then something the output never contains.
    let stop = format!(
        "{}{}#never",
        piece(Some(full.ids[4]), t5),
        piece(Some(t5), t6)
    );
    let mut p = params(30, Some(11));
    p.stop = vec![stop];
    let mut e = engine(builtin("zero").unwrap());
    e.add(seq("a", 4, p));
    let mut emitted_per_step = Vec::new();
    let mut all = HashMap::new();
    for _ in 0..40 {
        let mut out = Vec::new();
        e.step(&mut out).unwrap();
        let ids: Vec<u32> = out
            .iter()
            .flat_map(|o| match &o.event {
                OutputEvent::Tokens { token_ids, .. } => token_ids.clone(),
                _ => vec![],
            })
            .collect();
        emitted_per_step.push(ids);
        collect(&mut all, out);
    }
    let c = &all["a"];
    // Nothing was lost: the same text and ids as without the stop string.
    assert_eq!(c.text, full.text);
    assert_eq!(c.ids, full.ids);
    assert_eq!(c.finish.unwrap().0, FinishReason::Length);
    // Tokens 5 and 6 were held back (steps 5 and 6 emitted nothing), then released
    // together once a later token ruled the stop string out.
    assert!(emitted_per_step[5].is_empty() && emitted_per_step[6].is_empty());
    let mut seen = 0;
    let release_step = emitted_per_step
        .iter()
        .position(|ids| {
            seen += ids.len();
            seen > 5
        })
        .unwrap();
    assert!(release_step >= 7, "{emitted_per_step:?}");
    let released = &emitted_per_step[release_step];
    assert!(
        released.windows(2).any(|w| w == [t5, t6]),
        "{emitted_per_step:?}"
    );
}

#[test]
fn a_sequence_joins_the_running_batch_mid_flight() {
    let mut e = engine(profile(8, 100_000, 10_000, 10_000));
    e.add(seq("first", 10, params(20, Some(1))));
    let mut all = HashMap::new();
    for _ in 0..3 {
        let mut out = Vec::new();
        let r = e.step(&mut out).unwrap();
        assert_eq!(r.batch_size, 1);
        collect(&mut all, out);
    }
    e.add(seq("second", 10, params(5, Some(2))));
    let mut out = Vec::new();
    let r = e.step(&mut out).unwrap();
    assert_eq!(r.batch_size, 2);
    assert_eq!(r.prefill_tokens, 10);
    assert_eq!(r.decode_tokens, 2);
    collect(&mut all, out);
    assert_eq!(
        all["second"].ids.len(),
        1,
        "second got its first token at once"
    );
    assert!(all["first"].finish.is_none());
    let (rest, _) = run(&mut e);
    assert_eq!(rest["second"].finish.unwrap().0, FinishReason::Length);
    assert!(rest["first"].finish.is_some());
}

#[test]
fn max_batch_size_is_respected() {
    let mut e = engine(profile(2, 100_000, 10_000, 10_000));
    for id in ["a", "b", "c"] {
        e.add(seq(id, 5, params(4, Some(1))));
    }
    assert_eq!(e.load().free_slots, 0);
    let mut out = Vec::new();
    let r = e.step(&mut out).unwrap();
    assert_eq!(r.batch_size, 2);
    let load = e.load();
    assert_eq!((load.running, load.waiting, load.free_slots), (2, 1, 0));
    assert!(out.iter().all(|o| o.id != "c"));
    let (all, reports) = run(&mut e);
    assert!(reports.iter().all(|r| r.batch_size <= 2));
    for id in ["a", "b", "c"] {
        assert_eq!(all[id].finish.unwrap().1.completion_tokens, 4, "{id}");
    }
    assert_eq!(e.load().free_slots, 2);
}

#[test]
fn kv_capacity_is_respected() {
    // 100 tokens of KV, watermark 1: a 60-token prompt leaves no room for another.
    let mut e = engine(profile(8, 100, 100, 1000));
    e.add(seq("a", 60, params(10, Some(1))));
    e.add(seq("b", 60, params(10, Some(2))));
    let mut out = Vec::new();
    e.step(&mut out).unwrap();
    let load = e.load();
    assert_eq!((load.running, load.waiting), (1, 1));
    assert_eq!(load.kv_tokens_used, 61);
    assert_eq!(load.kv_tokens_capacity, 100);
    assert_eq!(load.free_slots, 0, "KV is the limit, not the batch");
    let (all, reports) = run(&mut e);
    assert!(reports.iter().all(|r| r.batch_size == 1));
    assert_eq!(all["b"].ids.len(), 10);
    assert_eq!(e.load().kv_tokens_used, 0);
    assert_eq!(e.load().free_slots, 8);
}

#[test]
fn kv_exhaustion_preempts_the_newest_and_it_resumes_exactly() {
    let alone = generate("b", 40, params(50, Some(2)));
    let mut e = engine(profile(8, 100, 100, 1000));
    e.add(seq("a", 40, params(50, Some(1))));
    e.add(seq("b", 40, params(50, Some(2))));
    let (all, reports) = run(&mut e);
    assert!(reports.iter().any(|r| r.preempted > 0), "{reports:?}");
    assert_eq!(all["a"].ids.len(), 50);
    assert_eq!(
        all["b"].ids, alone.ids,
        "preemption does not change the output"
    );
    assert_eq!(all["b"].text, alone.text);
    assert_eq!(all["b"].finish.unwrap().1.completion_tokens, 50);
    // Recompute after preemption shows up as prefill.
    let prefill: usize = reports.iter().map(|r| r.prefill_tokens).sum();
    assert!(prefill > 80, "{prefill}");
}

#[test]
fn long_prompts_are_prefilled_in_chunks() {
    let mut e = engine(profile(8, 100_000, 10_000, 100));
    e.add(seq("a", 350, params(2, Some(1))));
    let mut all = HashMap::new();
    let mut prefill = Vec::new();
    for step in 0..4 {
        let mut out = Vec::new();
        let r = e.step(&mut out).unwrap();
        prefill.push(r.prefill_tokens);
        assert_eq!(out.is_empty(), step < 3, "first token at the last chunk");
        collect(&mut all, out);
    }
    assert_eq!(prefill, vec![100, 100, 100, 50]);
    // A second prompt shares the budget with what is left.
    let mut e = engine(profile(8, 100_000, 10_000, 100));
    e.add(seq("a", 150, params(2, Some(1))));
    e.add(seq("b", 30, params(2, Some(1))));
    let mut out = Vec::new();
    assert_eq!(e.step(&mut out).unwrap().prefill_tokens, 100);
    let r = e.step(&mut out).unwrap();
    assert_eq!((r.prefill_tokens, r.decode_tokens), (80, 2));
}

#[test]
fn chunked_prefill_time_follows_the_model() {
    let p = SimProfile {
        prefill_tokens_per_second: 1000.0,
        decode_step_base: Duration::from_millis(10),
        decode_step_per_sequence: Duration::from_millis(1),
        decode_step_per_kv_token: Duration::from_micros(1),
        ..profile(8, 100_000, 10_000, 100)
    };
    let mut e = engine(p);
    e.add(seq("a", 150, params(3, Some(1))));
    let mut out = Vec::new();
    // 100 tokens: 100 ms, no token yet.
    assert_eq!(e.advance(&mut out).elapsed, Duration::from_millis(100));
    // 50 tokens + the first token: 50 + 10 ms.
    assert_eq!(e.advance(&mut out).elapsed, Duration::from_millis(60));
    // Decoding with 151 tokens of context: 10 ms + 151 us.
    assert_eq!(e.advance(&mut out).elapsed, Duration::from_micros(10_151));
    e.add(seq("b", 20, params(3, Some(1))));
    // a decodes (152 of context) while b prefills 20 tokens and gets its first token:
    // 20 ms + 10 ms + 1 ms (second sequence) + 152 us.
    assert_eq!(e.advance(&mut out).elapsed, Duration::from_micros(31_152));
}

#[test]
fn cancel_removes_a_sequence() {
    let mut e = engine(builtin("zero").unwrap());
    e.add(seq("a", 5, params(10, Some(1))));
    e.add(seq("b", 5, params(10, Some(2))));
    let mut out = Vec::new();
    e.step(&mut out).unwrap();
    e.cancel("a");
    assert_eq!(e.load().running, 1);
    assert_eq!(e.load().kv_tokens_used, 6);
    let (all, _) = run(&mut e);
    assert!(!all.contains_key("a"));
    assert_eq!(all["b"].ids.len(), 9);
    // Cancelling a waiting sequence, or an unknown id, is fine too.
    let mut e = engine(profile(1, 1000, 100, 100));
    e.add(seq("x", 5, params(3, None)));
    e.add(seq("y", 5, params(3, None)));
    e.cancel("y");
    e.cancel("nobody");
    let (all, _) = run(&mut e);
    assert_eq!(all.keys().collect::<Vec<_>>(), vec!["x"]);
    // A sequence decided at add (max_tokens 0) cancelled before any step: silent.
    let mut e = engine(builtin("zero").unwrap());
    e.add(seq("z", 5, params(0, None)));
    e.cancel("z");
    assert!(run(&mut e).0.is_empty());
}

#[test]
fn resume_continues_the_exact_token_sequence() {
    let full = generate("a", 6, params(12, Some(99)));
    let mut e = engine(builtin("zero").unwrap());
    let mut s = seq("a", 6, params(12, Some(99)));
    s.resume_tokens = full.ids[..5].to_vec();
    e.add(s);
    let (all, reports) = run(&mut e);
    let resumed = &all["a"];
    assert_eq!(resumed.ids, full.ids[5..]);
    assert_eq!(
        resumed.finish,
        Some((
            FinishReason::Length,
            Usage {
                prompt_tokens: 6,
                completion_tokens: 12
            }
        ))
    );
    let first_part = SimTokenizer::new().decode(&full.ids[..5]);
    assert_eq!(format!("{first_part}{}", resumed.text), full.text);
    // Prompt + resumed tokens are prefilled.
    assert_eq!(reports[0].prefill_tokens, 11);
    // Resumed tokens already at max_tokens: done at once.
    let mut e = engine(builtin("zero").unwrap());
    let mut s = seq("a", 6, params(5, Some(99)));
    s.resume_tokens = full.ids[..5].to_vec();
    e.add(s);
    let (all, _) = run(&mut e);
    assert_eq!(all["a"].finish.unwrap().1.completion_tokens, 5);
    assert!(all["a"].ids.is_empty());
}

#[test]
fn resumed_tokens_holding_a_stop_string_finish_with_stop() {
    let full = generate("a", 6, params(12, Some(99)));
    let mut p = params(12, Some(99));
    p.stop = vec![SimTokenizer::new()
        .decode(&full.ids[2..4])
        .trim()
        .to_string()];
    let mut s = seq("a", 6, p);
    s.resume_tokens = full.ids[..5].to_vec();
    let mut e = engine(builtin("zero").unwrap());
    e.add(s);
    let (all, _) = run(&mut e);
    assert_eq!(
        all["a"].finish,
        Some((
            FinishReason::Stop,
            Usage {
                prompt_tokens: 6,
                completion_tokens: 5
            }
        ))
    );
}

#[test]
fn logprobs_and_prompt_logprobs() {
    let mut p = params(4, Some(5));
    p.logprobs = Some(3);
    p.prompt_logprobs = true;
    let c = generate("a", 7, p.clone());
    match &c.events[0] {
        OutputEvent::PromptLogprobs { logprobs } => {
            assert_eq!(logprobs.len(), 7);
            assert!(logprobs[0].is_none());
            assert!(logprobs[1..]
                .iter()
                .all(|l| l.as_ref().unwrap().top.len() == 3));
        }
        other => panic!("expected prompt logprobs first, got {other:?}"),
    }
    for e in &c.events[1..5] {
        match e {
            OutputEvent::Tokens {
                text,
                token_ids,
                logprobs: Some(lps),
            } => {
                assert_eq!(lps.len(), 1);
                assert_eq!(lps[0].token_id, token_ids[0]);
                assert_eq!(&lps[0].token, text);
                assert_eq!(lps[0].top.len(), 3);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(c.events.len(), 6);
    // Scoring a prompt: max_tokens 0 with prompt logprobs still reports them.
    p.max_tokens = 0;
    let c = generate("a", 7, p);
    assert!(matches!(c.events[0], OutputEvent::PromptLogprobs { .. }));
    assert_eq!(
        c.finish,
        Some((
            FinishReason::Length,
            Usage {
                prompt_tokens: 7,
                completion_tokens: 0
            }
        ))
    );
    assert_eq!(c.events.len(), 2);
}

#[test]
fn adding_the_same_id_replaces_the_sequence() {
    let mut e = engine(builtin("zero").unwrap());
    e.add(seq("a", 5, params(50, Some(1))));
    let mut out = Vec::new();
    e.step(&mut out).unwrap();
    e.add(seq("a", 5, params(3, Some(1))));
    assert_eq!(e.load().running + e.load().waiting, 1);
    let (all, _) = run(&mut e);
    assert_eq!(all["a"].ids.len(), 3);
}

#[test]
fn nothing_to_do_returns_an_empty_report() {
    let mut e = SimEngine::new(builtin("llama-3.1-70b-4xh100").unwrap());
    let mut out = Vec::new();
    let r = e.step(&mut out).unwrap();
    assert_eq!((r.batch_size, r.prefill_tokens, r.decode_tokens), (0, 0, 0));
    assert!(out.is_empty());
    let load = e.load();
    assert_eq!(load.free_slots, 1024);
    assert_eq!(load.kv_tokens_capacity, 470_000);
}

#[test]
fn steps_sleep_the_modelled_time() {
    let p = SimProfile {
        decode_step_base: Duration::from_millis(20),
        ..builtin("zero").unwrap()
    };
    let mut e = SimEngine::new(p);
    e.add(seq("a", 5, params(5, Some(1))));
    let started = Instant::now();
    let (all, reports) = run(&mut e);
    assert_eq!(all["a"].ids.len(), 5);
    assert_eq!(reports.len(), 5);
    // A lower bound only: the model's contract. The machine may be slow.
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert!(reports
        .iter()
        .all(|r| r.elapsed >= Duration::from_millis(20)));
}

#[test]
fn zero_profile_runs_a_thousand_tokens_without_sleeping() {
    let mut e = SimEngine::new(builtin("zero").unwrap());
    e.add(seq("a", 20, params(1000, Some(1))));
    let started = Instant::now();
    let mut out = Vec::new();
    let mut steps = 0;
    while e.load().running + e.load().waiting > 0 {
        assert_eq!(e.advance(&mut out).elapsed, Duration::ZERO);
        steps += 1;
    }
    assert_eq!(steps, 1000);
    let mut all = HashMap::new();
    collect(&mut all, out);
    assert_eq!(all["a"].ids.len(), 1000);
    // Paced stepping of the zero profile does not sleep either.
    e.add(seq("b", 20, params(1000, Some(1))));
    let (all, _) = run(&mut e);
    assert_eq!(all["b"].ids.len(), 1000);
    // Generous: only catches sleeping (1000 steps of even 10 ms would be 10 s).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn many_sequences_on_a_real_profile_respect_every_limit() {
    let p = SimProfile {
        max_batch_size: 16,
        kv_capacity_tokens: 5_000,
        context_length: 2_000,
        ..builtin("qwen2.5-0.5b-l4").unwrap()
    };
    let mut e = SimEngine::new(p).with_pacing(false);
    for i in 0..40u32 {
        let mut sp = params(1 + i * 7 % 60, Some(u64::from(i)));
        if i % 5 == 0 {
            sp.stop = vec![" the".into()];
        }
        e.add(seq(&format!("s{i}"), 10 + (i * 37) % 400, sp));
    }
    let (all, reports) = run(&mut e);
    assert_eq!(all.len(), 40);
    for (id, c) in &all {
        let (reason, usage) = c.finish.unwrap_or_else(|| panic!("{id} unfinished"));
        assert_eq!(usage.completion_tokens as usize, c.ids.len(), "{id}");
        if reason == FinishReason::Stop {
            assert!(!c.text.contains(" the"), "{id}: {}", c.text);
        }
    }
    assert!(reports.iter().all(|r| r.batch_size <= 16));
    assert!(reports.iter().all(|r| r.prefill_tokens <= 2048));
    assert!(reports.iter().any(|r| r.batch_size == 16));
}
