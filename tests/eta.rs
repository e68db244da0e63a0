//! Wait estimates through the HTTP API (embedded server, `sim` engine, one replica of one
//! batch slot, 1 s cold start, 50 ms per token):
//! - a request at zero replicas is told `eta=` about the cold start;
//! - with the replica busy and two requests queued, the second is told a longer wait
//!   than the first, and both about their place times the measured service time;
//! - a request refused because the queue is full gets a `retry-after` computed from the
//!   measured service time (the running job's end, ~3 s), not a constant;
//! - a request refused by the tenant's concurrency limit gets a `retry-after` computed
//!   from how long its requests are measured to hold their slot.

mod common;

use std::time::Duration;

use serde_json::json;
use swell::server::ServerHandle;

const ONE_SLOT: &str = r#"
[deployments.chat]
engine = "sim"
max_queue_depth = 2
[deployments.chat.sim]
profile = "smollm2-135m-cpu"
cold_start = "1s"
decode_step_base = "50ms"
decode_step_per_sequence = "0ms"
max_batch_size = 1
[deployments.chat.autoscaling]
min_replicas = 0
max_replicas = 1
"#;

/// 60 tokens at 50 ms: a service time of about 3 s.
const TOKENS: u32 = 60;

fn body() -> serde_json::Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": TOKENS, "stream": true})
}

fn spawn_chat(server: &ServerHandle) -> tokio::task::JoinHandle<(u16, String)> {
    spawn_chat_as(server, None)
}

fn spawn_chat_as(server: &ServerHandle, key: Option<&str>) -> tokio::task::JoinHandle<(u16, String)> {
    let (addr, key) = (server.addr, key.map(str::to_string));
    actix_rt::spawn(async move {
        let mut request = common::client().post(format!("http://{addr}/v1/chat/completions"));
        if let Some(key) = key {
            request = request.insert_header(("authorization", format!("Bearer {key}")));
        }
        let mut response = request
            .send_json(&body())
            .await
            .expect("request");
        let status = response.status().as_u16();
        let bytes = response.body().limit(16 << 20).await.expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    })
}

/// The `eta=` (seconds) of the first waiting comment of an SSE body.
fn first_eta(text: &str) -> f64 {
    let (comments, data) = common::sse_parts(text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let first = comments.iter().find(|c| c.starts_with("queued")).unwrap_or_else(|| panic!("no queued comment: {text}"));
    let eta = first.split_whitespace().find_map(|field| field.strip_prefix("eta="));
    eta.unwrap_or_else(|| panic!("no eta in {first:?}")).trim_end_matches('s').parse().unwrap()
}

async fn wait_for_queue(server: &ServerHandle, waiting: u64, in_flight: u64) {
    common::wait_for(&format!("{waiting} waiting and {in_flight} in flight"), Duration::from_secs(10), || async {
        let status = common::status(server, "chat").await;
        let queue = &status["queue"];
        (queue["depth"] == waiting && queue["in_flight"] == in_flight).then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn waiting_comments_carry_an_eta_and_a_full_queue_a_computed_retry_after() {
    let server = common::start(ONE_SLOT).await;

    // At zero: the wait is the cold start (1 s; nothing measured yet, the engine's own).
    let (status, text) = spawn_chat(&server).await.unwrap();
    assert_eq!(status, 200, "{text}");
    let eta = first_eta(&text);
    assert!((0.5..=1.0).contains(&eta), "eta {eta} for a 1 s cold start: {text}");
    assert!(text.contains(": starting replica"), "{text}");

    // The replica is busy (a ~3 s job); two more wait behind it.
    let running = spawn_chat(&server);
    wait_for_queue(&server, 0, 1).await;
    let first = spawn_chat(&server);
    wait_for_queue(&server, 1, 1).await;
    let second = spawn_chat(&server);
    wait_for_queue(&server, 2, 1).await;

    // The queue is full: retry when a place frees, i.e. when the running job ends (its
    // measured service time, ~3 s, less what it has run); the old answer was 1 s.
    let (status, headers, text) = common::post(&server, "/v1/chat/completions", None, &body()).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("queue_full"), "{text}");
    let retry_after: u64 = headers.get("retry-after").expect("retry-after").to_str().unwrap().parse().unwrap();
    assert!((2..=4).contains(&retry_after), "retry-after {retry_after}");

    let (_, text) = running.await.unwrap();
    first_eta(&text);
    let (status, first) = first.await.unwrap();
    assert_eq!(status, 200, "{first}");
    let (status, second) = second.await.unwrap();
    assert_eq!(status, 200, "{second}");
    let (first_eta, second_eta) = (first_eta(&first), first_eta(&second));
    // One service time (~3 s, the running job's end), then one more.
    assert!((1.5..=3.5).contains(&first_eta), "first in line: {first_eta}");
    assert!((4.0..=7.0).contains(&second_eta), "second in line: {second_eta}");
    server.stop(true).await;
}

#[actix_rt::test]
async fn a_concurrency_refusal_retries_when_the_tenants_request_is_expected_to_end() {
    let server = common::start(ONE_SLOT).await;
    let (code, answer) =
        common::admin(&server, "PUT", "/tenants/acme", Some(json!({"limits": {"max_concurrent_requests": 1}}))).await;
    assert!(code == 200 || code == 201, "{answer}");
    let (code, answer) = common::admin(&server, "POST", "/tenants/acme/keys", None).await;
    assert_eq!(code, 201, "{answer}");
    let key = answer["api_key"].as_str().unwrap().to_string();

    // One request measures how long the tenant holds its slot (~1 s cold start + ~3 s).
    let (status, text) = spawn_chat_as(&server, Some(&key)).await.unwrap();
    assert_eq!(status, 200, "{text}");
    // The next holds the only slot; a third is told to retry when that one should end.
    let running = spawn_chat_as(&server, Some(&key));
    wait_for_queue(&server, 0, 1).await;
    let (status, headers, text) = common::post(&server, "/v1/chat/completions", Some(&key), &body()).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("concurrency_limit_exceeded"), "{text}");
    let retry_after: u64 = headers.get("retry-after").expect("retry-after").to_str().unwrap().parse().unwrap();
    assert!((2..=5).contains(&retry_after), "retry-after {retry_after}: {text}");
    assert_eq!(running.await.unwrap().0, 200);
    server.stop(true).await;
}
