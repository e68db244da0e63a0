//! `swell serve` with the real model (SmolLM2-135M-Instruct, Q4_1, the `llm` engine on
//! CPU), over real HTTP:
//!
//! 1. the official `openai` Python client, unchanged, lists the model and streams chat
//!    and text completions (streamed text equals the non-streamed text for the same
//!    seed: tests/python/openai_client.py);
//! 2. scoring as evaluation harnesses do it: `/v1/completions` with `prompt` as token ids
//!    (and a list of prompts), `echo` + `logprobs` + `max_tokens: 0` returns the prompt
//!    tokens' own log-probabilities and top alternatives;
//! 3. 16 concurrent streams are batched together (the `swell_engine_batch_size`
//!    histogram records steps with more than 8 sequences) and their aggregate
//!    throughput is above one stream's. The figures are printed; the only assertion on
//!    speed is that comparison (absolute figures are in the benchmark, not here).
//!
//! One test function, so the throughput comparison runs alone on the machine.

mod common;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

fn deployment() -> String {
    common::real_model_deployment(64, 16384)
}

/// Stream one completion; returns (generated tokens, seconds from send to last byte).
async fn stream_completion(base: &str, prompt: &str, max_tokens: u32) -> (u64, f64) {
    let started = Instant::now();
    let body = json!({
        "model": "default", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}
    });
    let mut response = common::client()
        .post(format!("{base}/v1/completions"))
        .send_json(&body)
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let mut text = Vec::new();
    while let Some(chunk) = response.next().await {
        text.extend_from_slice(&chunk.expect("stream chunk"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (_, data) = common::sse_parts(&String::from_utf8_lossy(&text));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let usage = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| v.get("usage").filter(|u| !u.is_null()).cloned())
        .expect("usage chunk");
    (usage["completion_tokens"].as_u64().unwrap(), elapsed)
}

/// Sum of `swell_engine_batch_size` bucket counts at `le` and the total count.
fn batch_histogram(metrics: &str, le: &str) -> (f64, f64) {
    let mut at = 0.0;
    let mut count = 0.0;
    for line in metrics.lines() {
        if line.starts_with("swell_engine_batch_size_bucket") && line.contains(&format!("le=\"{le}\"")) {
            at += line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
        }
        if line.starts_with("swell_engine_batch_size_count") {
            count += line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
        }
    }
    (at, count)
}

#[actix_rt::test]
async fn the_real_model_serves_streams_scores_and_batches() {
    let python = std::env::var("SWELL_TEST_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let server = common::start(&deployment()).await;
    let base = common::base(&server);
    common::wait_for("a ready replica", Duration::from_secs(120), || async {
        (common::replicas(&common::status(&server, "default").await).0 == 1).then_some(())
    })
    .await;

    // 1. The official client, unchanged.
    let script_base = base.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py"))
            .args([script_base.as_str(), "default"])
            .output()
            .expect("python runs (scripts/test-tools installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "openai client failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("all checks passed"), "{stdout}");

    // 2. Scoring: token ids in, the prompt's own logprobs out.
    let tokenize = |text: &str| {
        let path = swell_workers::llm::find_default_model().unwrap();
        let file = swell_workers::llm::gguf::GgufFile::open(&path).unwrap();
        let t = swell_workers::llm::GgufTokenizer::from_gguf(&file.content).unwrap();
        swell_workers::Tokenizer::encode(&t, text, false).unwrap()
    };
    let ids = tokenize("The capital of France is Paris.");
    let other = tokenize("Water boils at 100 degrees.");
    let (code, _, body) = common::post(
        &server,
        "/v1/completions",
        None,
        &json!({"model": "default", "prompt": [ids.clone(), other.clone()], "echo": true, "logprobs": 2, "max_tokens": 0}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["text"], "The capital of France is Paris.");
    assert_eq!(choices[1]["text"], "Water boils at 100 degrees.");
    let lp = &choices[0]["logprobs"];
    let token_logprobs = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(token_logprobs.len(), ids.len());
    assert!(token_logprobs[0].is_null(), "the first token has no logprob");
    for v in &token_logprobs[1..] {
        let v = v.as_f64().unwrap();
        assert!(v <= 0.0 && v > -30.0, "{v}");
    }
    let tokens: Vec<&str> = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens.concat(), "The capital of France is Paris.");
    // " Paris" is the model's first choice after "The capital of France is".
    let paris = ids.len() - 2;
    assert_eq!(tokens[paris], " Paris");
    let top = lp["top_logprobs"][paris].as_object().unwrap();
    assert_eq!(top.len(), 2);
    let best = top.iter().max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap())).unwrap();
    assert_eq!(best.0, " Paris", "{top:?}");
    assert_eq!(body["usage"]["completion_tokens"], 0);
    assert_eq!(body["usage"]["prompt_tokens"], (ids.len() + other.len()) as u64);

    // 3. `n` choices of one chat prompt: sampled with seeds offset per choice (so they
    // differ and each is reproducible), the prompt counted once in usage.
    let chat = |n: u32, stream: bool| {
        json!({"model": "default", "messages": [{"role": "user", "content": "Name a colour."}],
               "n": n, "temperature": 1.0, "seed": 11, "max_tokens": 12, "stream": stream})
    };
    let (code, _, body) = common::post(&server, "/v1/chat/completions", None, &chat(4, false)).await;
    assert_eq!(code, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let texts: Vec<String> = body["choices"].as_array().unwrap().iter().enumerate().map(|(i, c)| {
        assert_eq!(c["index"], i as u64);
        c["message"]["content"].as_str().unwrap().to_string()
    }).collect();
    assert_eq!(texts.len(), 4);
    let distinct: std::collections::HashSet<&String> = texts.iter().collect();
    assert!(distinct.len() >= 2, "4 sampled choices should not all be equal: {texts:?}");
    let (_, _, one) = common::post(&server, "/v1/chat/completions", None, &chat(1, false)).await;
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one["choices"][0]["message"]["content"].as_str().unwrap(), texts[0], "choice 0 is the n = 1 answer");
    assert_eq!(body["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"]);
    // Streamed, the same choices arrive interleaved, tagged by index.
    let (code, _, sse) = common::post(&server, "/v1/chat/completions", None, &chat(4, true)).await;
    assert_eq!(code, 200);
    let mut streamed = vec![String::new(); 4];
    for line in sse.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|l| *l != "[DONE]") {
        let chunk: Value = serde_json::from_str(line).unwrap();
        for c in chunk["choices"].as_array().unwrap() {
            if let Some(t) = c["delta"]["content"].as_str() {
                streamed[c["index"].as_u64().unwrap() as usize].push_str(t);
            }
        }
    }
    assert_eq!(streamed, texts);

    // 4. One stream, then 16 at once.
    let prompt = "Write a long story about a lighthouse keeper who finds a message in a bottle.";
    let max_tokens = 48;
    let (tokens, secs) = stream_completion(&base, prompt, max_tokens).await;
    assert_eq!(tokens, u64::from(max_tokens));
    let single = tokens as f64 / secs;
    let (_, metrics) = common::get_text(&server, "/metrics").await;
    let (before_le8, before_count) = batch_histogram(&metrics, "8");

    let started = Instant::now();
    let streams = (0..16).map(|i| {
        let base = base.clone();
        let prompt = format!("{prompt} Chapter {i}.");
        async move { stream_completion(&base, &prompt, max_tokens).await }
    });
    let results = futures_util::future::join_all(streams).await;
    let total: u64 = results.iter().map(|(t, _)| t).sum();
    assert_eq!(total, 16 * u64::from(max_tokens));
    let aggregate = total as f64 / started.elapsed().as_secs_f64();
    let (_, metrics) = common::get_text(&server, "/metrics").await;
    let (after_le8, after_count) = batch_histogram(&metrics, "8");
    let steps = after_count - before_count;
    let big_steps = steps - (after_le8 - before_le8);
    println!(
        "single stream: {single:.1} tokens/s; 16 streams: {aggregate:.1} tokens/s aggregate; {steps} engine steps, {big_steps} with more than 8 sequences"
    );
    assert!(big_steps > 0.0, "no engine step ran more than 8 sequences: the streams were not batched");
    assert!(aggregate > single, "16 batched streams ({aggregate:.1} tok/s) should beat one ({single:.1} tok/s)");
    server.stop(true).await;
}
