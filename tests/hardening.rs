//! What a hostile but legitimate user tried, and what must hold: admin input that cannot
//! take the process down, keys and limits that apply on open WebSockets, clients that
//! leave without holding their slot, and `/metrics` that shows nothing to strangers and
//! forgets deleted deployments. (Template injection: `tests/real_model.rs`; the Redis
//! ingress's `reply_to` and markers: `tests/ingress.rs`.)

mod common;

use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use serde_json::{json, Value};
use swell::server::ServerHandle;

type Frame = Result<awc::ws::Frame, awc::error::WsProtocolError>;

async fn put_deployment(server: &ServerHandle, name: &str, body: Value) -> (u16, Value) {
    common::admin(server, "PUT", &format!("/deployments/{name}"), Some(body)).await
}

fn sim(autoscaling: Value) -> Value {
    json!({"engine": "sim", "sim": {"profile": "zero"}, "autoscaling": autoscaling})
}

/// Each value out of bounds is refused with a 400 naming its key, and the process lives.
#[actix_rt::test]
async fn admin_input_out_of_bounds_is_refused_by_name_and_the_process_lives() {
    let server = common::start(common::DEFAULT_DEPLOYMENT).await;
    let model = common::model_path().display().to_string();
    let cases = [
        ("a million replicas", sim(json!({"min_replicas": 1_000_000, "max_replicas": 1_000_000})), "autoscaling.min_replicas"),
        ("max_replicas of u32::MAX", sim(json!({"max_replicas": 4_294_967_295u64})), "autoscaling.max_replicas"),
        ("a window of centuries", sim(json!({"scale_to_zero_window": "500000000y"})), "autoscaling.scale_to_zero_window"),
        ("velocity percent 1e308", sim(json!({"velocity": {"scale_up": {"percent": 1e308}}})), "autoscaling.velocity.scale_up.percent"),
        (
            "a sim cold start of 1,000,000 h",
            json!({"engine": "sim", "sim": {"profile": "zero", "cold_start": "1000000h"}}),
            "sim.cold_start",
        ),
        (
            "1e9 gpus per replica",
            json!({"engine": "sim", "sim": {"profile": "zero", "gpus_per_replica": 1_000_000_000u32}}),
            "sim.gpus_per_replica",
        ),
        ("100,000 threads", json!({"engine": "llm", "llm": {"model_path": model, "threads": 100_000}}), "llm.threads"),
        (
            "1e9 gpus per llm replica",
            json!({"engine": "llm", "llm": {"model_path": model, "gpus_per_replica": 1_000_000_000u32}}),
            "llm.gpus_per_replica",
        ),
    ];
    for (what, body, key) in cases {
        let (status, error) = put_deployment(&server, "bounds", body).await;
        assert_eq!(status, 400, "{what}: {error}");
        assert_eq!(error["error"]["code"], "invalid_config", "{what}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(key), "{what}: the message names {key}: {message}");
    }

    // An engine load error is one line: no backtrace, no build path.
    let (status, error) =
        put_deployment(&server, "bounds", json!({"engine": "llm", "llm": {"model_path": "/etc/passwd"}})).await;
    assert_eq!(status, 400, "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("llm.model_path: /etc/passwd"), "{message}");
    assert!(!message.contains('\n') && !message.contains(".rs:") && !message.contains("backtrace"), "{message}");

    let (status, _) = common::get_text(&server, "/healthz").await;
    assert_eq!(status, 200, "the server lives");
    let (status, _) = common::admin(&server, "GET", "/deployments/bounds", None).await;
    assert_eq!(status, 404, "nothing was created");
    server.stop(true).await;
}

/// A replica whose engine cannot be built (its KV cache cannot be allocated) fails its
/// start: counted, backed off, shown in the status; the process and its other
/// deployments live on. (Before: the failed allocation aborted the process.)
#[actix_rt::test]
async fn a_replica_that_cannot_start_is_counted_backed_off_and_shown() {
    let server = common::start(common::DEFAULT_DEPLOYMENT).await;
    let model = common::model_path();
    let body = json!({
        "engine": "llm",
        "llm": {"model_path": model, "kv_cache_tokens": 1u64 << 24, "context_length": 256},
        "autoscaling": {"min_replicas": 1, "max_replicas": 1},
    });
    let (status, created) = put_deployment(&server, "too-big", body).await;
    assert!(status == 200 || status == 201, "{created}");
    let status = common::wait_for("a failed start in the status", Duration::from_secs(60), || async {
        let status = common::status(&server, "too-big").await;
        status["last_failure"].is_object().then_some(status)
    })
    .await;
    let failure = &status["last_failure"];
    assert_eq!(failure["cause"], "load_failed", "{status}");
    let message = failure["message"].as_str().unwrap();
    assert!(message.contains("cannot be allocated") && message.contains("kv_cache_tokens"), "{message}");
    assert!(status["restarts"]["load_failed"].as_u64().unwrap() >= 1, "{status}");
    assert!(status["restart_backoff_seconds"].as_f64().is_some_and(|wait| wait > 0.0), "backed off: {status}");

    let (code, _) = common::get_text(&server, "/healthz").await;
    assert_eq!(code, 200);
    let request = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let (code, _, text) = common::post(&server, "/v1/chat/completions", None, &request).await;
    assert_eq!(code, 200, "another deployment still serves: {text}");
    let (code, body) = common::admin(&server, "DELETE", "/deployments/too-big", None).await;
    assert!(code == 200 || code == 202, "{body}");
    server.stop(true).await;
}

async fn tenant_with_key(server: &ServerHandle, tenant: &str, limits: Value) -> (String, String) {
    let (code, body) = common::admin(server, "PUT", &format!("/tenants/{tenant}"), Some(json!({"limits": limits}))).await;
    assert!(code == 200 || code == 201, "{body}");
    let (code, body) = common::admin(server, "POST", &format!("/tenants/{tenant}/keys"), None).await;
    assert_eq!(code, 201, "{body}");
    (body["api_key"].as_str().unwrap().to_string(), body["key_id"].as_str().unwrap().to_string())
}

async fn open_socket(
    server: &ServerHandle,
    key: &str,
) -> impl futures_util::Sink<awc::ws::Message, Error = awc::error::WsProtocolError> + Stream<Item = Frame> + Unpin {
    let url = format!("ws://{}/v1/ws", server.addr);
    let (_, socket) = awc::Client::new()
        .ws(url)
        .bearer_auth(key)
        .connect()
        .await
        .expect("websocket upgrade");
    socket
}

fn chat_frame(id: &str, max_tokens: u32) -> awc::ws::Message {
    let request = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": max_tokens, "ignore_eos": true});
    awc::ws::Message::Text(json!({"id": id, "type": "chat.completion", "request": request}).to_string().into())
}

/// The next `done` or `error` frame of request `id` (other frames are skipped).
async fn end_of(socket: &mut (impl Stream<Item = Frame> + Unpin), id: &str) -> Value {
    loop {
        let message = next_end(socket).await;
        if message["id"] == id {
            return message;
        }
    }
}

/// The next `count` `done` or `error` frames, whatever their request.
async fn ends_of(socket: &mut (impl Stream<Item = Frame> + Unpin), count: usize) -> Vec<Value> {
    let mut ends = Vec::with_capacity(count);
    while ends.len() < count {
        ends.push(next_end(socket).await);
    }
    ends
}

async fn next_end(socket: &mut (impl Stream<Item = Frame> + Unpin)) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .expect("a frame within 60 s")
            .expect("connection open")
            .expect("valid frame");
        let awc::ws::Frame::Text(bytes) = frame else { continue };
        let message: Value = serde_json::from_slice(&bytes).unwrap();
        if matches!(message["type"].as_str(), Some("done" | "error")) {
            return message;
        }
    }
}

#[actix_rt::test]
async fn a_revoked_key_stops_working_on_an_open_websocket() {
    let server = common::start(common::DEFAULT_DEPLOYMENT).await;
    let (key, key_id) = tenant_with_key(&server, "acme", json!({})).await;
    let _other = tenant_with_key(&server, "other", json!({})).await;
    let mut by_header = open_socket(&server, &key).await;
    let url = format!("ws://{}/v1/ws", server.addr);
    let (_, mut by_message) = awc::Client::new().ws(url).connect().await.unwrap();
    by_message
        .send(awc::ws::Message::Text(json!({"type": "auth", "api_key": key}).to_string().into()))
        .await
        .unwrap();

    by_header.send(chat_frame("before", 2)).await.unwrap();
    assert_eq!(end_of(&mut by_header, "before").await["type"], "done");
    by_message.send(chat_frame("before", 2)).await.unwrap();
    assert_eq!(end_of(&mut by_message, "before").await["type"], "done");

    let (code, body) = common::admin(&server, "DELETE", &format!("/tenants/acme/keys/{key_id}"), None).await;
    assert_eq!(code, 200, "{body}");
    by_header.send(chat_frame("after", 2)).await.unwrap();
    by_message.send(chat_frame("after", 2)).await.unwrap();
    for end in [end_of(&mut by_header, "after").await, end_of(&mut by_message, "after").await] {
        assert_eq!(end["type"], "error", "{end}");
        assert_eq!(end["error"]["code"], "invalid_api_key", "{end}");
    }
    server.stop(true).await;
}

#[actix_rt::test]
async fn limits_set_by_the_admin_apply_to_open_websockets_at_once() {
    let server = common::start(common::DEFAULT_DEPLOYMENT).await;
    let (key, _) = tenant_with_key(&server, "acme", json!({})).await;
    let mut socket = open_socket(&server, &key).await;
    let (code, body) =
        common::admin(&server, "PUT", "/tenants/acme", Some(json!({"limits": {"max_concurrent_requests": 1}}))).await;
    assert_eq!(code, 200, "{body}");

    for n in 0..5 {
        socket.send(chat_frame(&format!("r{n}"), 200)).await.unwrap();
    }
    let in_flight = common::wait_for("the tenant's request in flight", Duration::from_secs(10), || async {
        let (_, tenant) = common::admin(&server, "GET", "/tenants/acme", None).await;
        tenant["in_flight"].as_u64().filter(|n| *n > 0)
    })
    .await;
    assert_eq!(in_flight, 1, "counted against the new limit");
    let mut done = 0;
    let mut refused = 0;
    for end in ends_of(&mut socket, 5).await {
        match end["type"].as_str() {
            Some("done") => done += 1,
            _ => {
                assert_eq!(end["error"]["type"], "rate_limit_error", "{end}");
                refused += 1;
            }
        }
    }
    assert_eq!((done, refused), (1, 4), "one at a time");
    server.stop(true).await;
}

/// A stream whose client left waits 1 s for a resume before it is cancelled.
const SHORT_RESUME_GRACE: &str = "[queue]\nresume_grace = \"1s\"\n";

/// A deployment whose replica takes an hour to start: requests wait in the queue.
const NEVER_READY: &str = r#"
[deployments.slow]
engine = "sim"
[deployments.slow.sim]
profile = "zero"
cold_start = "1h"
"#;

/// A raw HTTP request whose client leaves after `stay` without reading the answer.
async fn send_and_leave(server: &ServerHandle, key: &str, body: &Value, stay: Duration) {
    let stream = common::send_raw_chat(server, key, body).await;
    tokio::time::sleep(stay).await;
    drop(stream);
}

async fn in_flight(server: &ServerHandle, tenant: &str) -> u64 {
    let (_, view) = common::admin(server, "GET", &format!("/tenants/{tenant}"), None).await;
    view["in_flight"].as_u64().expect("in_flight")
}

fn requests_with_status(metrics: &str, deployment: &str, tenant: &str, status: &str) -> u64 {
    let series = format!(r#"swell_requests_total{{deployment="{deployment}",tenant="{tenant}",status="{status}"}} "#);
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// Queued or starting, streaming or not: a client that leaves frees its slot (a stream
/// once its resume grace passed) and its request counts as cancelled.
#[actix_rt::test]
async fn a_client_that_leaves_a_queued_request_frees_its_slot() {
    let server = common::start(&format!("{SHORT_RESUME_GRACE}{NEVER_READY}")).await;
    let (key, _) = tenant_with_key(&server, "acme", json!({"max_concurrent_requests": 2})).await;
    for stream in [false, true, false, true] {
        let body = json!({"model": "slow", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": stream});
        send_and_leave(&server, &key, &body, Duration::from_millis(700)).await;
    }
    common::wait_for("every slot freed", Duration::from_secs(10), || async {
        (in_flight(&server, "acme").await == 0).then_some(())
    })
    .await;
    common::wait_for("four cancelled requests", Duration::from_secs(10), || async {
        let (_, metrics) = common::get_text(&server, "/metrics").await;
        (requests_with_status(&metrics, "slow", "acme", "cancelled") == 4).then_some(())
    })
    .await;
    common::wait_for("nothing left in the queue", Duration::from_secs(10), || async {
        (common::status(&server, "slow").await["queue"]["depth"] == 0).then_some(())
    })
    .await;
    server.stop(true).await;
}

/// A running request whose client leaves stops generating (a stream once its resume grace
/// passed), frees its slot and counts as cancelled, not ok.
#[actix_rt::test]
async fn a_client_that_leaves_a_running_request_cancels_it() {
    let server = common::start(&format!("{SHORT_RESUME_GRACE}{}", common::DEFAULT_DEPLOYMENT)).await;
    let (key, _) = tenant_with_key(&server, "acme", json!({"max_concurrent_requests": 2})).await;
    for stream in [false, true] {
        let body = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}],
                          "max_tokens": 4000, "ignore_eos": true, "stream": stream});
        send_and_leave(&server, &key, &body, Duration::from_millis(1500)).await;
    }
    common::wait_for("every slot freed", Duration::from_secs(10), || async {
        (in_flight(&server, "acme").await == 0).then_some(())
    })
    .await;
    let (_, metrics) = common::get_text(&server, "/metrics").await;
    assert_eq!(requests_with_status(&metrics, "default", "acme", "cancelled"), 2, "{metrics}");
    assert_eq!(requests_with_status(&metrics, "default", "acme", "ok"), 0, "{metrics}");
    server.stop(true).await;
}

async fn metrics_status(server: &ServerHandle, authorization: Option<&str>) -> (u16, String) {
    let mut request = common::client().get(format!("{}/metrics", common::base(server)));
    if let Some(value) = authorization {
        request = request.insert_header(("authorization", value.to_string()));
    }
    let mut response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.body().limit(64 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[actix_rt::test]
async fn metrics_need_a_token_unless_opened_and_forget_deleted_deployments() {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{}\"\nmetrics_token = \"scrape-me\"\nautoscaler_tick = \"100ms\"\nshutdown_timeout = \"2s\"\n{}",
        common::ADMIN_TOKEN,
        common::DEFAULT_DEPLOYMENT
    );
    let server = swell::server::start(swell::config::Config::from_toml_str(&text).unwrap()).await.unwrap();
    let (status, body) = metrics_status(&server, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("tenant="), "{body}");
    let (status, _) = metrics_status(&server, Some("Bearer wrong")).await;
    assert_eq!(status, 401);
    let (status, body) = metrics_status(&server, Some("Bearer scrape-me")).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = metrics_status(&server, Some(&format!("Bearer {}", common::ADMIN_TOKEN))).await;
    assert_eq!(status, 200, "the admin token opens it too");

    // Create and delete deployments: their series leave the scrape with them.
    let request = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    for n in 0..20 {
        let name = format!("cycle-{n}");
        let (code, body) = put_deployment(&server, &name, sim(json!({"min_replicas": 1, "max_replicas": 1}))).await;
        assert!(code == 200 || code == 201, "{body}");
        let (code, _, text) = common::post(&server, "/v1/chat/completions", None, &request(&name)).await;
        assert_eq!(code, 200, "{text}");
        let (_, body) = metrics_status(&server, Some("Bearer scrape-me")).await;
        assert!(body.contains(&format!("deployment=\"{name}\"")), "a live deployment's series are shown");
        let (code, body) = common::admin(&server, "DELETE", &format!("/deployments/{name}"), None).await;
        assert!(code == 200 || code == 202, "{body}");
    }
    // Deletion drains in the background (202): wait for the last one to finish.
    let body = common::wait_for("every deleted deployment gone", Duration::from_secs(30), || async {
        let (code, _) = common::admin(&server, "GET", "/deployments/cycle-19", None).await;
        let (_, body) = metrics_status(&server, Some("Bearer scrape-me")).await;
        (code == 404 && !body.contains("deployment=\"cycle-")).then_some(body)
    })
    .await;
    assert!(!body.contains("replica=\"cycle-"), "no series of a retired replica: {body}");
    assert!(body.contains("deployment=\"default\""), "the live deployment's series stay");
    server.stop(true).await;

    // `metrics_public` opens it to anyone.
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{}\"\nmetrics_public = true\n{}",
        common::ADMIN_TOKEN,
        common::DEFAULT_DEPLOYMENT
    );
    let server = swell::server::start(swell::config::Config::from_toml_str(&text).unwrap()).await.unwrap();
    let (status, _) = metrics_status(&server, None).await;
    assert_eq!(status, 200);
    server.stop(true).await;
}
