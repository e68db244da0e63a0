//! Scale-down without waiting on long streams: a draining replica's in-flight
//! stream moves to another replica once `[queue] drain_grace` has passed, and the client's
//! stream goes on with no gap and no repeat.
//!
//! The scene, on a real server (`swell::server::start`, real HTTP/SSE and WebSocket):
//!
//! 1. A deployment (`sim`, or the real model) with `max_batch_size = 1` (one stream per
//!    replica) and `min = max = 1`; `drain_grace = "1s"`.
//! 2. A filler stream F takes the first replica R1. The policy goes to `min = max = 2`; the
//!    second replica R2 starts, and the long stream L (`sim`: 400 tokens at 10 ms a token,
//!    4 s of decoding) can only go to R2, since R1 is full.
//! 3. Once L has streamed 20 tokens, the policy goes back to `max_replicas = 1` through the
//!    admin API. Which replica retires is deterministic: the supervisor retires starting
//!    replicas first, then the least loaded, then the newest (`apply` in
//!    `actors/src/supervisor/`); R1 and R2 hold one stream each, so R2, the newer, drains.
//! 4. The test checks that R2 is gone from the status API's replica list about one grace
//!    period after the policy change (at least 0.9 s, at most 4 s), while L has not ended
//!    (the decoding L had left, 3.8 s with `sim`, would have kept a drain that waits on
//!    streams alive past that), that it exited as drained (no restart counted) and that L
//!    is back in the queue (depth 1: R1 is still full with F) and receives nothing there.
//! 5. F's client goes away (its job is cancelled: `resume_grace` is 0), R1 leases L and resumes it after the
//!    tokens already delivered. L's client sees, in order, exactly the pieces of text an
//!    undisturbed run of the same request produced on R1 alone (no gap, no repeat),
//!    `completion_tokens` = `max_tokens`, exactly one chunk with a `finish_reason` (`length`), and
//!    exactly one end (`data: [DONE]`; WebSocket: one `done` frame), no error.
//!
//! Four times: with the `sim` engine over SSE (`/v1/chat/completions`: the role chunk also
//! comes exactly once, although L starts twice) and over the WebSocket API (`/v1/ws`,
//! `completion`), whose `running` status frames name the replicas: R2, then R1; and with the
//! real model over SSE.
//!
//! Which engine, and why. The `sim` engine's text is a pure function of (seed, position)
//! (`workers/src/sim/engine/`), so "equal to an undisturbed run" can only fail through
//! the migration itself, and its steps are sleeps, so the timing is the test's (10 ms a
//! token), not the machine's: these two runs take about 5 s each. The real model
//! (SmolLM2-135M Q4_1, `llm`, one thread per replica, greedy, `ignore_eos`) checks the
//! same with real re-prefill: the resuming replica prefills prompt + delivered tokens, and
//! greedy decoding must carry on with exactly the tokens (and the text pieces: the
//! detokenizer is primed with the delivered tokens) the undisturbed run produced. Its L is
//! 600 tokens, so that what is left when the drain starts takes well over the 1 s grace
//! even at the engine's best speed (~230 tokens/s single-stream with 2 threads; a replica
//! here has 1); that run takes 10 to 60 s depending on how busy the cores are.
//! It needs the model (`scripts/fetch-model`; `models/` in the working directory, or
//! `SWELL_MODEL_PATH`), like `tests/real_model.rs`. A fourth run does the same with
//! `llama-server` processes as the replicas (`external` engine): the resuming replica
//! is sent prompt + delivered tokens, and llama.cpp's greedy decoding carries on with
//! exactly the undisturbed run's tokens.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use swell::server::ServerHandle;

const DEPLOYMENT: &str = "mig";
/// Tokens L has streamed when the scale-down starts.
const BEFORE_DRAIN: usize = 20;
const GRACE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
enum EngineKind {
    /// `sim`, 10 ms a token.
    Sim,
    /// The real model (SmolLM2-135M, `llm`, one thread per replica).
    Real,
    /// The same model in llama.cpp's `llama-server` processes (`external`, one slot and
    /// one thread per replica).
    LlamaServer,
}

impl EngineKind {
    /// Tokens of the long stream L: enough that what is left after the drain starts takes
    /// well over the grace period (sim: 3.8 s; real: 580 tokens, about 2.5 s even at the
    /// engine's best single-stream speed on this machine, ~230 tokens/s with 2 threads,
    /// where a replica here has 1).
    fn long_tokens(self) -> u64 {
        match self {
            EngineKind::Sim => 400,
            EngineKind::Real | EngineKind::LlamaServer => 600,
        }
    }

    fn deployment(self, replicas: u32) -> Value {
        let autoscaling = json!({"min_replicas": replicas, "max_replicas": replicas});
        match self {
            EngineKind::Sim => json!({
                "engine": "sim",
                "sim": {"profile": "zero", "cold_start": "200ms", "decode_step_base": "10ms", "max_batch_size": 1},
                "autoscaling": autoscaling,
            }),
            EngineKind::Real => {
                let path = swell_workers::llm::find_default_model()
                    .expect("the model is missing: run scripts/fetch-model (or set SWELL_MODEL_PATH)");
                let path = std::fs::canonicalize(path).unwrap();
                json!({
                    "engine": "llm",
                    "llm": {"model_path": path, "threads": 1, "max_batch_size": 1, "kv_cache_tokens": 8192},
                    "autoscaling": autoscaling,
                })
            }
            EngineKind::LlamaServer => {
                let mut deployment = common::llama_server::deployment("swell-test-drain", 1, replicas, replicas);
                deployment["external"]["context_length"] = json!(8192);
                deployment
            }
        }
    }
}

/// What a client saw, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// WebSocket `status: running` (SSE does not tell the replica).
    Running(String),
    /// Chat: the `role` delta.
    Role,
    /// A chunk's text (chat `delta.content`, completion `text`), empty ones left out.
    Text(String),
    /// A chunk with a `finish_reason`.
    Finish(String),
    Usage(Value),
    /// `data: [DONE]` or the WebSocket `done` frame.
    Done,
    Error(Value),
}

type Log = Rc<RefCell<Vec<Seen>>>;

#[derive(Clone, Copy, Debug)]
enum Transport {
    Sse,
    WebSocket,
}

fn long_request(transport: Transport, max_tokens: u64) -> Value {
    match transport {
        Transport::Sse => json!({
            "model": DEPLOYMENT,
            "messages": [{"role": "user", "content": "tell me a long story about the sea"}],
            "max_tokens": max_tokens, "temperature": 0, "seed": 7, "ignore_eos": true, "stream": true,
            "stream_options": {"include_usage": true},
        }),
        Transport::WebSocket => json!({
            "model": DEPLOYMENT, "prompt": "tell me a long story about the sea",
            "max_tokens": max_tokens, "temperature": 0, "seed": 7, "ignore_eos": true,
        }),
    }
}

/// Record one OpenAI chunk (chat or completion).
fn record_chunk(log: &Log, chunk: &Value) {
    let mut log = log.borrow_mut();
    if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
        log.push(Seen::Usage(usage.clone()));
    }
    for choice in chunk["choices"].as_array().into_iter().flatten() {
        if choice["delta"]["role"].is_string() {
            log.push(Seen::Role);
        }
        let text = choice["delta"]["content"].as_str().or(choice["text"].as_str()).unwrap_or_default();
        if !text.is_empty() {
            log.push(Seen::Text(text.to_string()));
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            log.push(Seen::Finish(reason.to_string()));
        }
    }
}

/// Stream a chat request over SSE into `log`, until the body ends.
fn spawn_sse(server: &ServerHandle, body: Value, log: Log) -> actix_rt::task::JoinHandle<()> {
    let url = format!("{}/v1/chat/completions", common::base(server));
    actix_rt::spawn(async move {
        let mut response = common::client().post(url).send_json(&body).await.expect("request");
        assert_eq!(response.status().as_u16(), 200);
        let mut buffer = String::new();
        while let Some(bytes) = response.next().await {
            let Ok(bytes) = bytes else {
                log.borrow_mut().push(Seen::Error(json!({"transport": "body read failed"})));
                return;
            };
            buffer.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                for line in event.lines() {
                    let Some(payload) = line.strip_prefix("data:").map(str::trim) else { continue };
                    if payload == "[DONE]" {
                        log.borrow_mut().push(Seen::Done);
                        continue;
                    }
                    let value: Value = serde_json::from_str(payload).expect("a JSON chunk");
                    if value.get("error").is_some() {
                        log.borrow_mut().push(Seen::Error(value));
                    } else {
                        record_chunk(&log, &value);
                    }
                }
            }
        }
    })
}

/// Stream a completion request over its own WebSocket connection into `log`, until the
/// request ends.
fn spawn_ws(server: &ServerHandle, request: Value, log: Log) -> actix_rt::task::JoinHandle<()> {
    let url = format!("ws://{}/v1/ws", server.addr);
    actix_rt::spawn(async move {
        let (_, mut ws) = awc::Client::new().ws(url).connect().await.expect("websocket upgrade");
        let message = json!({"id": "long", "type": "completion", "request": request});
        ws.send(awc::ws::Message::Text(message.to_string().into())).await.unwrap();
        while let Some(frame) = ws.next().await {
            let awc::ws::Frame::Text(bytes) = frame.expect("a valid frame") else { continue };
            let message: Value = serde_json::from_slice(&bytes).unwrap();
            match message["type"].as_str().unwrap() {
                "status" if message["status"] == "running" => {
                    log.borrow_mut().push(Seen::Running(message["replica"].as_str().unwrap().to_string()));
                }
                "status" => {}
                "chunk" => record_chunk(&log, &message["chunk"]),
                "done" => {
                    let mut log = log.borrow_mut();
                    log.push(Seen::Usage(message["usage"].clone()));
                    log.push(Seen::Done);
                    return;
                }
                _ => {
                    log.borrow_mut().push(Seen::Error(message));
                    return;
                }
            }
        }
    })
}

fn spawn_long(server: &ServerHandle, transport: Transport, max_tokens: u64, log: Log) -> actix_rt::task::JoinHandle<()> {
    match transport {
        Transport::Sse => spawn_sse(server, long_request(transport, max_tokens), log),
        Transport::WebSocket => spawn_ws(server, long_request(transport, max_tokens), log),
    }
}

fn texts(log: &[Seen]) -> Vec<String> {
    log.iter().filter_map(|s| if let Seen::Text(t) = s { Some(t.clone()) } else { None }).collect()
}

fn ended(log: &[Seen]) -> bool {
    log.iter().any(|s| matches!(s, Seen::Done | Seen::Error(_)))
}

/// Where two token sequences part, if they do: `(index, left, right)` around it.
fn first_difference(a: &[String], b: &[String]) -> Option<(usize, Vec<String>, Vec<String>)> {
    let at = a.iter().zip(b).position(|(x, y)| x != y).or((a.len() != b.len()).then(|| a.len().min(b.len())))?;
    let from = at.saturating_sub(3);
    Some((at, a[from..(at + 3).min(a.len())].to_vec(), b[from..(at + 3).min(b.len())].to_vec()))
}

/// The replica list of the status API: `(id, state, active_sequences)`.
fn replica_list(status: &Value) -> Vec<(String, String, u64)> {
    status["replica_details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["replica"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
                r["active_sequences"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn set_replicas(server: &ServerHandle, engine: EngineKind, replicas: u32, expect: u16) {
    let (code, body) =
        common::admin(server, "PUT", &format!("/deployments/{DEPLOYMENT}"), Some(engine.deployment(replicas))).await;
    assert_eq!(code, expect, "{body}");
}

async fn wait_log<F: Fn(&[Seen]) -> bool>(what: &str, log: &Log, within: Duration, check: F) {
    common::wait_for(what, within, || {
        let done = check(&log.borrow());
        async move { done.then_some(()) }
    })
    .await;
}

async fn a_long_stream_moves_off_a_draining_replica(engine: EngineKind, transport: Transport) {
    let long_tokens = engine.long_tokens();
    let server = common::start("[queue]\ndrain_grace = \"1s\"\nresume_grace = \"0s\"\n").await;
    set_replicas(&server, engine, 1, 201).await;
    let r1 = common::wait_for("the first replica", Duration::from_secs(20), || async {
        let status = common::status(&server, DEPLOYMENT).await;
        let list = replica_list(&status);
        (list.len() == 1 && list[0].1 == "ready").then(|| list[0].0.clone())
    })
    .await;

    // The reference: the same request, undisturbed, on R1 alone.
    let reference: Log = Rc::default();
    spawn_long(&server, transport, long_tokens, reference.clone()).await.expect("the reference run");
    let reference = reference.borrow().clone();
    assert!(!reference.iter().any(|s| matches!(s, Seen::Error(_))), "{reference:?}");
    assert_eq!(reference.iter().filter(|s| **s == Seen::Done).count(), 1, "{reference:?}");
    let reference_texts = texts(&reference);
    assert!(reference_texts.len() > BEFORE_DRAIN * 2, "{reference:?}");

    // F fills R1 (one stream per replica).
    let filler_log: Log = Rc::default();
    let filler = spawn_sse(
        &server,
        json!({"model": DEPLOYMENT, "messages": [{"role": "user", "content": "fill"}],
               "max_tokens": 4_000, "ignore_eos": true, "stream": true}),
        filler_log.clone(),
    );
    wait_log("the filler's first tokens", &filler_log, Duration::from_secs(20), |log| !texts(log).is_empty()).await;

    // A second replica; L can only go there.
    set_replicas(&server, engine, 2, 200).await;
    let r2 = common::wait_for("the second replica", Duration::from_secs(20), || async {
        let status = common::status(&server, DEPLOYMENT).await;
        let list = replica_list(&status);
        let ready: Vec<_> = list.iter().filter(|r| r.1 == "ready").collect();
        (ready.len() == 2).then(|| list.iter().find(|r| r.0 != r1).unwrap().0.clone())
    })
    .await;
    let long_log: Log = Rc::default();
    let long = spawn_long(&server, transport, long_tokens, long_log.clone());
    wait_log("L's first tokens", &long_log, Duration::from_secs(20), |log| texts(log).len() >= BEFORE_DRAIN).await;
    let status = common::status(&server, DEPLOYMENT).await;
    let mut list = replica_list(&status);
    list.sort();
    let mut expected = vec![(r1.clone(), "ready".to_string(), 1), (r2.clone(), "ready".to_string(), 1)];
    expected.sort();
    assert_eq!(list, expected, "F on R1 and L on R2: {status:#}");

    // Scale down: max_replicas 1. R2 (the newer of two equally loaded) drains.
    let scaled_at = Instant::now();
    set_replicas(&server, engine, 1, 200).await;
    let status = common::status(&server, DEPLOYMENT).await;
    assert!(
        replica_list(&status).contains(&(r2.clone(), "draining".to_string(), 1)),
        "R2 drains, holding L: {status:#}"
    );
    let last_event = status["scale_events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last_event["from"].as_u64(), last_event["to"].as_u64()), (Some(2), Some(1)), "{last_event}");
    assert_eq!(last_event["reason"], "max_replicas", "{last_event}");

    // R2 leaves about one grace period later, while L is still running.
    let status = common::wait_for("R2 to exit", Duration::from_secs(15), || async {
        let status = common::status(&server, DEPLOYMENT).await;
        (!replica_list(&status).iter().any(|r| r.0 == r2)).then_some(status)
    })
    .await;
    let drained_after = scaled_at.elapsed();
    let delivered = texts(&long_log.borrow()).len();
    println!("R2 exited {drained_after:?} after the scale-down; L had {delivered} tokens then");
    assert!(
        !ended(&long_log.borrow()),
        "L is still running when R2 is gone (it ended after {delivered} tokens: {:?})",
        long_log.borrow().last()
    );
    assert!((delivered as u64) < long_tokens, "L is not finished: {delivered}");
    assert!(drained_after >= GRACE - Duration::from_millis(100), "R2 waited for its grace: {drained_after:?}");
    assert!(
        drained_after <= GRACE + Duration::from_secs(3),
        "R2 exited after its grace, not when L would have ended: {drained_after:?}"
    );
    assert_eq!(status["restarts"], json!({}), "R2 exited as drained, not as a failure: {status:#}");
    // The status's queue depth is the supervisor's last sample (taken every tick), so
    // the hand-back shows within a tick or two of R2's exit.
    let status = common::wait_for("L back in the queue", Duration::from_secs(2), || async {
        let status = common::status(&server, DEPLOYMENT).await;
        (status["queue"]["depth"] == 1).then_some(status)
    })
    .await;
    assert_eq!(status["queue"]["in_flight"], 1, "L was handed back to the queue (R1 is full): {status:#}");
    assert_eq!(replica_list(&status), vec![(r1.clone(), "ready".to_string(), 1)], "{status:#}");

    // F goes away; R1 resumes L after the tokens already delivered.
    // While L waits in the queue, nothing arrives (after what R2 had stored before it let
    // go reached the client).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = texts(&long_log.borrow()).len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(texts(&long_log.borrow()).len(), held, "no token of L arrives while it waits in the queue");
    assert!(!ended(&long_log.borrow()));
    filler.abort();
    let aborted_at = Instant::now();
    wait_log("L to resume", &long_log, Duration::from_secs(60), |log| texts(log).len() > held).await;
    let resumed_after = aborted_at.elapsed();
    wait_log("L to end", &long_log, Duration::from_secs(120), ended).await;
    println!(
        "{engine:?}/{transport:?}: L resumed on R1 {resumed_after:?} after F's client went away; \
         {held} of {long_tokens} tokens came from R2, the rest from R1"
    );
    long.await.expect("L's reader");
    let long_log = long_log.borrow().clone();

    assert!(!long_log.iter().any(|s| matches!(s, Seen::Error(_))), "{long_log:?}");
    let long_texts = texts(&long_log);
    if let Some((at, got, want)) = first_difference(&long_texts, &reference_texts) {
        panic!(
            "L's text parts from the undisturbed run at piece {at} of {} (reference {}; {held} came \
             before the hand-back): got {got:?}, undisturbed {want:?}",
            long_texts.len(),
            reference_texts.len()
        );
    }
    let finishes: Vec<_> = long_log.iter().filter(|s| matches!(s, Seen::Finish(_))).collect();
    assert_eq!(finishes, [&Seen::Finish("length".into())], "exactly one finish_reason");
    assert_eq!(long_log.iter().filter(|s| **s == Seen::Done).count(), 1, "exactly one end");
    assert_eq!(long_log.last(), Some(&Seen::Done), "{long_log:?}");
    let usage = long_log.iter().find_map(|s| if let Seen::Usage(u) = s { Some(u.clone()) } else { None });
    assert_eq!(usage.expect("usage")["completion_tokens"], long_tokens);
    match transport {
        Transport::Sse => {
            assert_eq!(long_log.iter().filter(|s| **s == Seen::Role).count(), 1, "one role chunk");
        }
        Transport::WebSocket => {
            let running: Vec<_> = long_log.iter().filter(|s| matches!(s, Seen::Running(_))).collect();
            assert_eq!(running, [&Seen::Running(r2.clone()), &Seen::Running(r1.clone())], "L ran on R2, then R1");
        }
    }
    let status = common::status(&server, DEPLOYMENT).await;
    assert_eq!(status["restarts"], json!({}), "{status:#}");
    server.stop(true).await;
}

#[actix_rt::test]
async fn over_sse_a_long_stream_moves_off_a_draining_replica_with_no_gap() {
    a_long_stream_moves_off_a_draining_replica(EngineKind::Sim, Transport::Sse).await;
}

#[actix_rt::test]
async fn over_websocket_a_long_stream_moves_off_a_draining_replica_with_no_gap() {
    a_long_stream_moves_off_a_draining_replica(EngineKind::Sim, Transport::WebSocket).await;
}

#[actix_rt::test]
async fn with_the_real_model_a_long_stream_moves_off_a_draining_replica_with_no_gap() {
    a_long_stream_moves_off_a_draining_replica(EngineKind::Real, Transport::Sse).await;
}

#[actix_rt::test]
async fn with_llama_server_replicas_a_long_stream_moves_off_a_draining_replica_with_no_gap() {
    a_long_stream_moves_off_a_draining_replica(EngineKind::LlamaServer, Transport::Sse).await;
    // Every replica's engine process is gone once the server stopped.
    common::wait_for("no llama-server left", Duration::from_secs(20), || async {
        common::llama_server::processes("swell-test-drain").is_empty().then_some(())
    })
    .await;
}
