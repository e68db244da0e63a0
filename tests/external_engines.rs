//! Replicas that are real `llama-server` processes (llama.cpp, built by
//! `scripts/reference/build-llama-cpp --server-only`), started, scaled, killed and
//! replaced by Swell. No mock of the engine: every test drives the real binary with the
//! test model over HTTP.
//!
//! - the official `openai` client, streaming and not, chat and completions, plus `n`,
//!   `stop`, `logprobs`, `seed`, and a 400 naming `echo` for prompt logprobs, which
//!   llama-server cannot give;
//! - 0 → 2 → 0 replicas under load: two processes started and stopped, none left in
//!   `/proc` afterwards;
//! - `kill -9` of the engine serving a stream: the stream completes on the other
//!   replica with exactly the text of an undisturbed greedy run (nothing missing or
//!   repeated), and the dead replica is replaced;
//! - `examples/configs/llama-server.toml` serves from zero as its comment says, and
//!   `kill -9` of the Swell process itself takes its engine process with it;
//! - a command that does not exist, a model the engine cannot load, a port that never
//!   answers: the status says why (with the process's last lines), and a request
//!   waiting for the deployment ends with an explicit error at its deadline;
//! - a llama-server Swell did not start, as a fixed endpoint.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::llama_server;
use serde_json::{json, Value};
use swell::server::ServerHandle;

async fn create(server: &ServerHandle, name: &str, body: Value) {
    let (code, reply) = common::admin(server, "PUT", &format!("/deployments/{name}"), Some(body)).await;
    assert_eq!(code, 201, "{reply}");
}

async fn wait_ready(server: &ServerHandle, name: &str, ready: u64) {
    common::wait_for(&format!("{ready} ready replica(s) of {name}"), Duration::from_secs(60), || async {
        let status = common::status(server, name).await;
        (common::replicas(&status).0 == ready).then_some(())
    })
    .await;
}

async fn wait_no_process(alias: &str) {
    common::wait_for(&format!("no llama-server of {alias} left"), Duration::from_secs(20), || async {
        llama_server::processes(alias).is_empty().then_some(())
    })
    .await;
}

fn python() -> String {
    std::env::var("SWELL_TEST_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into())
}

async fn run_python(script: &str, base: &str, model: &str) -> String {
    let (script, base, model) = (script.to_string(), base.to_string(), model.to_string());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python())
            .arg(format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR")))
            .args([base.as_str(), model.as_str()])
            .output()
            .expect("python runs (scripts/test-tools installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}:\n{stdout}\n{stderr}", output.status);
    stdout
}

#[actix_rt::test]
async fn the_official_openai_client_works_against_llama_server_replicas() {
    let alias = "swell-test-openai";
    let server = common::start("").await;
    create(&server, "ls", llama_server::deployment(alias, 4, 1, 1)).await;
    wait_ready(&server, "ls", 1).await;
    assert_eq!(llama_server::processes(alias).len(), 1, "one replica, one process");
    let base = common::base(&server);
    let out = run_python("openai_client.py", &base, "ls").await;
    assert!(out.contains("all checks passed"), "{out}");
    let out = run_python("openai_engine_features.py", &base, "ls").await;
    assert!(out.contains("all checks passed"), "{out}");
    let status = common::status(&server, "ls").await;
    assert_eq!(status["engine"]["engine"], "llama-server", "{status:#}");
    assert_eq!(status["restarts"], json!({}), "{status:#}");
    server.stop(true).await;
    wait_no_process(alias).await;
}

/// One streamed completion: its text pieces, finish reasons, usage, and whether it ended
/// with exactly one `[DONE]` and no error.
struct Streamed {
    pieces: Vec<String>,
    finishes: Vec<String>,
    completion_tokens: Option<u64>,
    done: usize,
    errors: Vec<String>,
}

fn streamed(body: &str) -> Streamed {
    let (_, data) = common::sse_parts(body);
    let mut s = Streamed { pieces: Vec::new(), finishes: Vec::new(), completion_tokens: None, done: 0, errors: Vec::new() };
    for payload in data {
        if payload == "[DONE]" {
            s.done += 1;
            continue;
        }
        let v: Value = serde_json::from_str(&payload).unwrap_or_else(|e| panic!("{e}: {payload}"));
        if v.get("error").is_some() {
            s.errors.push(payload.clone());
        }
        if let Some(tokens) = v["usage"]["completion_tokens"].as_u64() {
            s.completion_tokens = Some(tokens);
        }
        for choice in v["choices"].as_array().into_iter().flatten() {
            if let Some(text) = choice["text"].as_str().filter(|t| !t.is_empty()) {
                s.pieces.push(text.to_string());
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                s.finishes.push(reason.to_string());
            }
        }
    }
    s
}

fn long_request(model: &str, max_tokens: u64) -> Value {
    json!({
        "model": model, "prompt": "Once upon a time, in a small village by the sea,",
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true,
        "stream": true, "stream_options": {"include_usage": true},
    })
}

#[actix_rt::test]
async fn replicas_go_from_zero_to_two_and_back_under_load_leaving_no_process() {
    let alias = "swell-test-scale";
    let server = common::start("").await;
    let mut body = llama_server::deployment(alias, 1, 0, 2);
    body["autoscaling"] = json!({
        "min_replicas": 0, "max_replicas": 2,
        "scale_up_window": "0s", "scale_down_window": "1s",
        "scale_to_zero_window": "2s", "metrics_window": "1s",
    });
    create(&server, "burst", body).await;
    assert_eq!(common::replicas(&common::status(&server, "burst").await), (0, 0, 0));
    assert!(llama_server::processes(alias).is_empty(), "no process at zero replicas");

    // Four long streams at once, one slot per replica: the deployment goes to 2.
    let streams: Vec<_> = (0..4)
        .map(|_| {
            let server_base = common::base(&server);
            actix_rt::spawn(async move {
                let mut response = common::client()
                    .post(format!("{server_base}/v1/completions"))
                    .send_json(&long_request("burst", 120))
                    .await
                    .expect("request");
                assert_eq!(response.status().as_u16(), 200);
                let bytes = response.body().limit(16 << 20).await.expect("body");
                String::from_utf8_lossy(&bytes).into_owned()
            })
        })
        .collect();
    let mut most = 0;
    for stream in streams {
        while !stream.is_finished() {
            most = most.max(llama_server::processes(alias).len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let body = stream.await.unwrap();
        let s = streamed(&body);
        assert!(s.errors.is_empty(), "{body}");
        assert_eq!((s.completion_tokens, s.done), (Some(120), 1), "{body}");
    }
    assert_eq!(most, 2, "two llama-server processes ran under load");
    let status = common::status(&server, "burst").await;
    let ups = status["scale_events"].as_array().unwrap().iter().filter(|e| e["direction"] == "up").count();
    assert!(ups >= 1, "{status:#}");

    // Idle: back to zero replicas, and no process is left.
    common::wait_for("scale to zero", Duration::from_secs(30), || async {
        let status = common::status(&server, "burst").await;
        (common::replicas(&status) == (0, 0, 0)).then_some(())
    })
    .await;
    wait_no_process(alias).await;
    let status = common::status(&server, "burst").await;
    assert_eq!(status["restarts"], json!({}), "stopped, not failed: {status:#}");
    server.stop(true).await;
}

#[actix_rt::test]
async fn a_stream_whose_engine_is_killed_completes_on_the_other_replica_with_no_gap() {
    let alias = "swell-test-kill";
    const TOKENS: u64 = 240;
    let server = common::start("").await;
    create(&server, "pair", llama_server::deployment(alias, 1, 2, 2)).await;
    wait_ready(&server, "pair", 2).await;
    let before = llama_server::processes(alias);
    assert_eq!(before.len(), 2, "{before:?}");

    // The reference: the same greedy request, undisturbed.
    let (code, _, body) = common::post(&server, "/v1/completions", None, &long_request("pair", TOKENS)).await;
    assert_eq!(code, 200, "{body}");
    let reference = streamed(&body);
    assert!(reference.errors.is_empty() && reference.completion_tokens == Some(TOKENS), "{body}");

    // Again, and kill -9 the engine generating it once 20 pieces have arrived.
    let base = common::base(&server);
    let mut response = common::client()
        .post(format!("{base}/v1/completions"))
        .send_json(&long_request("pair", TOKENS))
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let mut text = String::new();
    let mut killed = None;
    while let Some(chunk) = futures_util::StreamExt::next(&mut response).await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream goes on")));
        if killed.is_none() && streamed(&text).pieces.len() >= 20 {
            let mut busy = None;
            for p in llama_server::processes(alias) {
                if llama_server::requests_processing(p.port).await.unwrap_or(0.0) >= 1.0 {
                    busy = Some(p);
                }
            }
            let busy = busy.expect("one engine is generating the stream");
            llama_server::kill_9(busy.pid);
            killed = Some((busy, streamed(&text).pieces.len()));
        }
    }
    let (victim, delivered) = killed.expect("the stream ran long enough to kill its engine");
    let got = streamed(&text);
    assert!(got.errors.is_empty(), "the client sees no error: {text}");
    assert_eq!((got.done, got.finishes.as_slice()), (1, &["length".to_string()][..]), "{text}");
    assert_eq!(got.completion_tokens, Some(TOKENS), "usage counts every token once");
    assert_eq!(
        got.pieces.concat(),
        reference.pieces.concat(),
        "the text equals the undisturbed run's ({delivered} pieces came before the kill)"
    );
    assert!(got.pieces.len() > delivered, "the rest came after the kill");

    // The dead replica is replaced: two processes again, the victim not among them.
    common::wait_for("the replacement replica", Duration::from_secs(60), || async {
        let status = common::status(&server, "pair").await;
        let now = llama_server::processes(alias);
        (common::replicas(&status).0 == 2 && now.len() == 2 && !now.iter().any(|p| p.pid == victim.pid)).then_some(())
    })
    .await;
    let status = common::status(&server, "pair").await;
    assert_eq!(status["restarts"]["engine_failed"], 1, "counted as a replica failure: {status:#}");
    server.stop(true).await;
    wait_no_process(alias).await;
}

/// `examples/configs/llama-server.toml`, as its comment says to run it: a request scales
/// it from zero; then `kill -9` of Swell takes the engine process with it.
#[actix_rt::test]
async fn the_example_config_serves_and_kill_9_of_swell_takes_its_engine_with_it() {
    // The example names no model alias: llama-server gets the file's stem.
    let alias = "SmolLM2-135M-Instruct.Q4_1";
    let mut swell = std::process::Command::new(env!("CARGO_BIN_EXE_swell"))
        .args(["serve", "--config", concat!(env!("CARGO_MANIFEST_DIR"), "/examples/configs/llama-server.toml")])
        .args(["--listen", "127.0.0.1:0"])
        .env("LLAMA_SERVER", llama_server::binary())
        .env("SWELL_MODEL_PATH", common::model_path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("swell starts");
    let stdout = BufReader::new(swell.stdout.take().unwrap());
    let base = tokio::task::spawn_blocking(move || {
        let line = stdout.lines().map_while(Result::ok).find(|l| l.contains("serving on")).expect("swell says where it serves");
        line.rsplit(' ').next().unwrap().to_string()
    })
    .await
    .unwrap();
    assert!(llama_server::processes(alias).is_empty(), "min_replicas = 0: no engine before the first request");
    let request = json!({"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8});
    let mut response = common::client().post(format!("{base}/v1/chat/completions")).send_json(&request).await.expect("request");
    let body: Value = response.json().await.expect("a JSON answer");
    assert_eq!(body["usage"]["completion_tokens"].as_u64().map(|n| n > 0), Some(true), "{body}");
    let engine = llama_server::processes(alias);
    assert_eq!(engine.len(), 1, "one replica now: {engine:?}");

    swell.kill().expect("kill -9 swell");
    swell.wait().unwrap();
    common::wait_for(&format!("llama-server {} to die with swell", engine[0].pid), Duration::from_secs(10), || async {
        llama_server::processes(alias).is_empty().then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn engines_that_cannot_start_are_explained_and_their_requests_end_at_the_deadline() {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{}\"\nautoscaler_tick = \"100ms\"\nrequest_timeout = \"2s\"\n",
        common::ADMIN_TOKEN
    );
    let server = swell::server::start(swell::config::Config::from_toml_str(&text).unwrap()).await.expect("server starts");
    let model = common::model_path();
    let mut missing = llama_server::deployment("swell-test-missing", 1, 0, 1);
    missing["external"]["command"] = json!("/nonexistent/llama-server");
    let mut unloadable = llama_server::deployment("swell-test-unloadable", 1, 0, 1);
    unloadable["external"]["model"] = json!(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
    unloadable["external"]["tokenizer"] = json!(model);
    let mut silent = llama_server::deployment("swell-test-silent", 1, 0, 1);
    silent["external"]["command"] = json!("sleep");
    silent["external"]["args"] = json!(["600.4242"]);
    silent["external"]["extra_args"] = json!([]);
    silent["external"]["start_timeout"] = json!("1s");
    let cases = [
        ("missing", missing, "cannot start `/nonexistent/llama-server`"),
        ("unloadable", unloadable, "exited"),
        ("silent", silent, "was not ready within 1s"),
    ];
    for (name, body, _) in &cases {
        create(&server, name, body.clone()).await;
    }
    for (name, _, why) in &cases {
        let request = json!({"model": name, "prompt": "hi", "max_tokens": 4});
        let started = std::time::Instant::now();
        let (code, _, body) = common::post(&server, "/v1/completions", None, &request).await;
        assert_ne!(code, 200, "{name}: {body}");
        assert!(body.contains("deadline_exceeded"), "{name}: an explicit error: {body}");
        assert!(started.elapsed() < Duration::from_secs(20), "{name}: ended at its deadline");
        let status = common::status(&server, name).await;
        let message = status["last_failure"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{name}: the status says why ({why}): {status:#}");
        assert_eq!(status["last_failure"]["cause"], "load_failed", "{status:#}");
    }
    let unloadable = common::status(&server, "unloadable").await;
    let message = unloadable["last_failure"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("last lines") && message.lines().count() > 2, "with the engine's own words: {message}");
    assert!(llama_server::pids_with_arg("600.4242").is_empty(), "the engine that never answered was stopped");
    server.stop(true).await;
}

/// A llama-server Swell did not start, as a fixed endpoint: one replica per URL, the same
/// relay; a config that would scale it is refused.
#[actix_rt::test]
async fn a_fixed_endpoint_is_served_through_the_same_relay() {
    let alias = "swell-test-endpoint";
    let port = swell_workers::external::free_port().unwrap();
    let mut engine = KillOnDrop(std::process::Command::new(llama_server::binary())
        .args(["--model", &common::model_path().display().to_string(), "--alias", alias])
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--threads", "1", "--no-repack"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("llama-server starts"));
    let server = common::start("").await;
    let mut body = llama_server::deployment(alias, 2, 1, 1);
    body["external"] = json!({
        "preset": "llama-server",
        "endpoints": [format!("http://127.0.0.1:{port}")],
        "tokenizer": common::model_path(),
        "slots": 2,
    });
    // Two replicas cannot share one endpoint, and an endpoint cannot scale to zero.
    body["autoscaling"] = json!({"min_replicas": 0, "max_replicas": 2});
    let (code, reply) = common::admin(&server, "PUT", "/deployments/fixed", Some(body.clone())).await;
    assert_eq!(code, 400, "{reply}");
    assert!(reply.to_string().contains("external.endpoints"), "{reply}");
    body["autoscaling"] = json!({"min_replicas": 1, "max_replicas": 1});
    create(&server, "fixed", body).await;
    wait_ready(&server, "fixed", 1).await;
    let (code, _, text) = common::post(&server, "/v1/completions", None, &long_request("fixed", 16)).await;
    assert_eq!(code, 200, "{text}");
    let s = streamed(&text);
    assert!(s.errors.is_empty() && s.completion_tokens == Some(16) && s.done == 1, "{text}");
    server.stop(true).await;
    assert_eq!(engine.0.try_wait().unwrap(), None, "an engine Swell did not start is left running");
}

/// The test's own llama-server, killed however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
