//! Cache-aware and session routing on a real server (real HTTP WebSocket API, real model,
//! real `llama-server` processes).
//!
//! - **Cache-aware, 4 replicas of the real model**: 4 conversations at once, each turn
//!   resending the whole history. Every later turn runs where its history is cached: the
//!   replicas' prefix caches find at least 80% of the later turns' prompt tokens
//!   (`swell_engine_prefix_cache_hit_tokens_total`), where any-replica routing would find
//!   a quarter of them on average. Then two of the four replicas drain while the
//!   conversations go on: every turn completes, and none waits for its replica longer
//!   than the promise bound allows (30 s here, against a few seconds observed).
//! - **Session routing, `llama-server` replicas** (an engine that reports no cache):
//!   a conversation's turns (same `user`) go back to the replica that served its
//!   previous turn; when that replica's engine is killed (`kill -9`), its conversation
//!   moves on to another replica and completes.
//!
//! Each turn's wait for its replica (request sent → `running` frame) is recorded; the
//! bound checked is a correctness bound (a job stranded on a gone replica would wait the
//! whole 30 s promise), not a speed figure: figures are in `loadtests/bench/routing.sh`.

mod common;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use swell::server::ServerHandle;

/// What one turn saw.
#[derive(Debug)]
struct Turn {
    replica: String,
    /// Request sent → `running` frame.
    waited: Duration,
    reply: String,
    prompt_tokens: u64,
}

/// Run one chat turn over its own WebSocket; panics on an error frame.
async fn turn(server: &ServerHandle, model: &str, user: &str, messages: &[Value], max_tokens: u32) -> Turn {
    let url = format!("ws://{}/v1/ws", server.addr);
    let (_, mut ws) = awc::Client::new().ws(url).connect().await.expect("websocket upgrade");
    let request = json!({
        "model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "user": user,
    });
    let sent = Instant::now();
    let message = json!({"id": "t", "type": "chat.completion", "request": request});
    ws.send(awc::ws::Message::Text(message.to_string().into())).await.unwrap();
    let (mut replica, mut waited, mut reply) = (String::new(), Duration::ZERO, String::new());
    while let Some(frame) = ws.next().await {
        let awc::ws::Frame::Text(bytes) = frame.expect("a valid frame") else { continue };
        let message: Value = serde_json::from_slice(&bytes).unwrap();
        match message["type"].as_str().unwrap() {
            "status" if message["status"] == "running" => {
                replica = message["replica"].as_str().unwrap().to_string();
                waited = sent.elapsed();
            }
            "status" => {}
            "chunk" => {
                if let Some(text) = message["chunk"]["choices"][0]["delta"]["content"].as_str() {
                    reply.push_str(text);
                }
            }
            "done" => {
                let prompt_tokens = message["usage"]["prompt_tokens"].as_u64().unwrap();
                return Turn { replica, waited, reply, prompt_tokens };
            }
            _ => panic!("turn of {user} failed: {message}"),
        }
    }
    panic!("the websocket of {user} closed before the turn ended");
}

/// A conversation's opening: a long system prompt of its own (so its history is worth
/// caching from the first turn) and a question.
fn opening(n: usize) -> Vec<Value> {
    let facts: Vec<String> = (0..40).map(|i| format!("Fact {i} of notebook {n}: item {} weighs {} grams.", i * 7 + n, i * 13 + n)).collect();
    vec![
        json!({"role": "system", "content": format!("You are assistant number {n}. {}", facts.join(" "))}),
        json!({"role": "user", "content": format!("Which item of notebook {n} is the heaviest?")}),
    ]
}

/// Run `turns` turns of conversation `n`, resending the history each time.
async fn converse(server: &ServerHandle, model: &str, n: usize, turns: usize, max_tokens: u32) -> Vec<Turn> {
    let mut messages = opening(n);
    let mut seen = Vec::new();
    for t in 0..turns {
        let done = turn(server, model, &format!("user-{n}"), &messages, max_tokens).await;
        messages.push(json!({"role": "assistant", "content": done.reply}));
        messages.push(json!({"role": "user", "content": format!("And the next one after that, step {t}?")}));
        seen.push(done);
    }
    seen
}

/// The sum of a counter over the series whose labels contain `label`.
async fn counter_sum(server: &ServerHandle, name: &str, label: &str) -> f64 {
    let (_, text) = common::get_text(server, "/metrics").await;
    text.lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .filter_map(|line| line.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn llm_deployment(replicas: u32, policy: &str, bound: &str) -> Value {
    json!({
        "engine": "llm",
        "max_tokens_default": 16,
        "llm": {"model_path": common::model_path(), "threads": 1, "kv_cache_tokens": 8192},
        "autoscaling": {"min_replicas": replicas, "max_replicas": replicas},
        "routing": {"policy": policy, "promise_bound": bound},
    })
}

async fn put(server: &ServerHandle, name: &str, body: Value) {
    let (code, reply) = common::admin(server, "PUT", &format!("/deployments/{name}"), Some(body)).await;
    assert!(code == 200 || code == 201, "{code}: {reply}");
}

async fn wait_ready(server: &ServerHandle, name: &str, ready: u64) {
    common::wait_for(&format!("{ready} ready replicas of {name}"), Duration::from_secs(120), || async {
        (common::replicas(&common::status(server, name).await) == (ready, 0, 0)).then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn cache_aware_routing_keeps_conversations_with_their_history_through_a_scale_down() {
    const MODEL: &str = "routed";
    let server = common::start("").await;
    put(&server, MODEL, llm_deployment(4, "cache-aware", "30s")).await;
    wait_ready(&server, MODEL, 4).await;

    // Phase 1: 4 conversations × 3 turns on 4 replicas.
    let label = format!("replica=\"{MODEL}-");
    let runs = (0..4).map(|n| converse(&server, MODEL, n, 3, 12));
    let conversations = futures_util::future::join_all(runs).await;
    let hits = counter_sum(&server, "swell_engine_prefix_cache_hit_tokens_total", &label).await;
    let later_prompts: u64 = conversations.iter().flat_map(|c| &c[1..]).map(|t| t.prompt_tokens).sum();
    assert!(
        hits >= 0.8 * later_prompts as f64,
        "cache hits {hits} of {later_prompts} later-turn prompt tokens; replicas per conversation: {:?}",
        conversations.iter().map(|c| c.iter().map(|t| t.replica.as_str()).collect::<Vec<_>>()).collect::<Vec<_>>()
    );
    for conversation in &conversations {
        let first = &conversation[0].replica;
        assert!(conversation.iter().all(|t| &t.replica == first), "a conversation moved: {conversation:?}");
    }
    let routed = counter_sum(&server, "swell_routing_decisions_total", "outcome=\"routed\"").await;
    assert!(routed >= 12.0, "{routed} jobs routed");

    // Phase 2: two replicas drain (4 → 2) while 4 new conversations run 2 turns each.
    put(&server, MODEL, llm_deployment(2, "cache-aware", "30s")).await;
    let runs = (4..8).map(|n| converse(&server, MODEL, n, 2, 8));
    let conversations = futures_util::future::join_all(runs).await;
    let turns: Vec<&Turn> = conversations.iter().flatten().collect();
    assert_eq!(turns.len(), 8, "every turn completed");
    let longest = turns.iter().map(|t| t.waited).max().unwrap();
    assert!(longest < Duration::from_secs(20), "a turn waited {longest:?} for its replica (promise bound 30 s)");
    wait_ready(&server, MODEL, 2).await;
    server.stop(true).await;
}

#[actix_rt::test]
async fn session_routing_brings_a_conversation_back_to_its_llama_server_and_survives_a_kill() {
    const MODEL: &str = "routed-llama";
    let mut deployment = common::llama_server::deployment(MODEL, 2, 2, 2);
    deployment["routing"] = json!({"policy": "session", "promise_bound": "30s"});
    let server = common::start("").await;
    put(&server, MODEL, deployment).await;
    wait_ready(&server, MODEL, 2).await;

    // Two conversations, 3 turns each: each stays on one replica.
    let runs = (0..2).map(|n| converse(&server, MODEL, n, 3, 8));
    let conversations = futures_util::future::join_all(runs).await;
    for conversation in &conversations {
        let first = &conversation[0].replica;
        assert!(conversation.iter().all(|t| &t.replica == first), "a conversation moved: {conversation:?}");
    }
    let replica = conversations[0][0].replica.clone();

    // Conversation 0's next turn is long; while it runs, its engine is killed. The turn
    // completes elsewhere, and so do the turns after it.
    let engines = common::llama_server::processes(MODEL);
    assert_eq!(engines.len(), 2, "{engines:?}");
    let mut messages = opening(0);
    let long = {
        let (server_addr, messages) = (server.addr, messages.clone());
        actix_rt::spawn(async move {
            let url = format!("ws://{server_addr}/v1/ws");
            let (_, mut ws) = awc::Client::new().ws(url).connect().await.expect("websocket upgrade");
            let request = json!({"model": MODEL, "messages": messages, "max_tokens": 200, "temperature": 0,
                "user": "user-0", "ignore_eos": true});
            let message = json!({"id": "long", "type": "chat.completion", "request": request});
            ws.send(awc::ws::Message::Text(message.to_string().into())).await.unwrap();
            let mut running = Vec::new();
            while let Some(frame) = ws.next().await {
                let awc::ws::Frame::Text(bytes) = frame.expect("a valid frame") else { continue };
                let message: Value = serde_json::from_slice(&bytes).unwrap();
                match message["type"].as_str().unwrap() {
                    "status" if message["status"] == "running" => running.push(message["replica"].as_str().unwrap().to_string()),
                    "done" => return (running, message["usage"]["completion_tokens"].as_u64()),
                    "status" | "chunk" => {}
                    _ => panic!("the long turn failed: {message}"),
                }
            }
            panic!("the long turn's websocket closed");
        })
    };
    let victim = common::wait_for("the engine generating the long turn", Duration::from_secs(60), || {
        let engines = engines.clone();
        async move {
            for engine in &engines {
                if common::llama_server::requests_processing(engine.port).await.unwrap_or(0.0) > 0.0 {
                    return Some(engine.pid);
                }
            }
            None
        }
    })
    .await;
    common::llama_server::kill_9(victim);
    let (running, completion_tokens) = long.await.unwrap();
    assert_eq!(completion_tokens, Some(200), "the long turn completed after the kill");
    assert_eq!(running.first(), Some(&replica), "the long turn went to the conversation's replica first");
    assert!(running.len() >= 2 && running.last() != Some(&replica), "it moved on after the kill: {running:?}");
    messages.push(json!({"role": "user", "content": "Go on."}));
    for _ in 0..2 {
        let done = turn(&server, MODEL, "user-0", &messages, 8).await;
        assert!(done.waited < Duration::from_secs(20), "waited {:?} for a replica (promise bound 30 s)", done.waited);
        assert_ne!(done.replica, replica, "a turn ran on the killed replica");
        messages.push(json!({"role": "assistant", "content": done.reply}));
        messages.push(json!({"role": "user", "content": "Go on."}));
    }
    server.stop(true).await;
}
