//! Tenant-aware capacity through the HTTP API (embedded server, `sim` engine):
//! - one replica of batch 1 busy, a `low` then a `high` priority request queued: the
//!   `high` one is served first, and the waiting `low` one sees its position move back;
//!   past `low_priority_queue_share` of the queue a `low` request is refused (503) while
//!   a `normal` one is admitted and also served before the `low` one;
//! - `reserved_replicas` keeps replicas warm without any load, is refused past
//!   `max_replicas` (and blocks lowering `max_replicas` below it), and the reserving
//!   tenant's requests go ahead of others within its reserved share.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use swell::server::ServerHandle;
use tokio::time::Instant;

/// One replica that runs one sequence at a time, 20 ms per token.
const ONE_SLOT: &str = r#"
[deployments.chat]
engine = "sim"
max_queue_depth = 4
[deployments.chat.sim]
profile = "smollm2-135m-cpu"
cold_start = "100ms"
decode_step_base = "20ms"
decode_step_per_sequence = "0ms"
max_batch_size = 1
[deployments.chat.autoscaling]
min_replicas = 1
max_replicas = 1
"#;

async fn tenant(server: &ServerHandle, id: &str, settings: Value) -> String {
    let (code, body) = common::admin(server, "PUT", &format!("/tenants/{id}"), Some(settings)).await;
    assert!(code == 200 || code == 201, "{body}");
    let (code, body) = common::admin(server, "POST", &format!("/tenants/{id}/keys"), None).await;
    assert_eq!(code, 201, "{body}");
    body["api_key"].as_str().unwrap().to_string()
}

/// A streamed chat request; answers its status, SSE body and when it completed.
fn spawn_chat(server: &ServerHandle, key: &str, max_tokens: u32) -> tokio::task::JoinHandle<(u16, String, Instant)> {
    let (server_addr, key) = (server.addr, key.to_string());
    actix_rt::spawn(async move {
        let body = json!({
            "model": "chat",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens,
            "stream": true,
        });
        let mut response = common::client()
            .post(format!("http://{server_addr}/v1/chat/completions"))
            .insert_header(("authorization", format!("Bearer {key}")))
            .send_json(&body)
            .await
            .expect("request");
        let status = response.status().as_u16();
        let bytes = response.body().limit(16 << 20).await.expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned(), Instant::now())
    })
}

/// Waits until the status API shows `waiting` queued and `in_flight` leased jobs.
async fn wait_for_queue(server: &ServerHandle, waiting: u64, in_flight: u64) {
    common::wait_for(&format!("{waiting} waiting and {in_flight} in flight"), Duration::from_secs(10), || async {
        let status = common::status(server, "chat").await;
        let queue = &status["queue"];
        (queue["depth"] == waiting && queue["in_flight"] == in_flight).then_some(())
    })
    .await;
}

fn served(result: &(u16, String, Instant), who: &str) -> (Vec<String>, Instant) {
    let (status, text, done) = result;
    assert_eq!(*status, 200, "{who}: {text}");
    let (comments, data) = common::sse_parts(text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{who}: {text}");
    assert!(!text.contains("\"error\""), "{who}: {text}");
    (comments, *done)
}

#[actix_rt::test]
async fn with_the_replica_busy_a_high_priority_request_is_served_before_an_earlier_low_one() {
    let server = common::start(ONE_SLOT).await;
    let busy = tenant(&server, "busy", json!({})).await;
    let low = tenant(&server, "batch-jobs", json!({"priority": "low"})).await;
    let high = tenant(&server, "interactive", json!({"priority": "high"})).await;
    let normal = tenant(&server, "regular", json!({"priority": "normal"})).await;
    let (_, view) = common::admin(&server, "GET", "/tenants/batch-jobs", None).await;
    assert_eq!(view["priority"], "low", "{view}");
    common::wait_for("a ready replica", Duration::from_secs(10), || async {
        (common::replicas(&common::status(&server, "chat").await).0 == 1).then_some(())
    })
    .await;

    // The replica's only slot is taken by a long request (120 tokens, ~2.4 s).
    let running = spawn_chat(&server, &busy, 120);
    wait_for_queue(&server, 0, 1).await;
    let low_request = spawn_chat(&server, &low, 4);
    wait_for_queue(&server, 1, 1).await;
    let high_request = spawn_chat(&server, &high, 4);
    wait_for_queue(&server, 2, 1).await;

    // Two waiting = max_queue_depth 4 × low_priority_queue_share 0.5: another `low`
    // request is refused, a `normal` one is admitted.
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let (status, headers, text) = common::post(&server, "/v1/chat/completions", Some(&low), &body).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("queue_full"), "{text}");
    assert!(headers.get("retry-after").is_some());
    let normal_request = spawn_chat(&server, &normal, 4);
    wait_for_queue(&server, 3, 1).await;

    let running = running.await.unwrap();
    let (high_comments, high_done) = served(&high_request.await.unwrap(), "high");
    let (normal_comments, normal_done) = served(&normal_request.await.unwrap(), "normal");
    let (low_comments, low_done) = served(&low_request.await.unwrap(), "low");
    let (_, running_done) = served(&running, "running");
    assert!(running_done < high_done, "the running request finishes first");
    assert!(high_done < normal_done, "high before normal");
    assert!(normal_done < low_done, "normal before the earlier low");
    // Positions are in service order: the high request was next in line at once; the
    // low one was first in line until the high one arrived, then behind it.
    // (A queued comment may carry an `eta=`: only the position is compared.)
    let queued_at = |comments: &[String], position: u64| {
        comments.iter().any(|c| c.split_whitespace().take(2).eq(["queued".to_string(), format!("position={position}")]))
    };
    assert!(queued_at(&high_comments, 1), "{high_comments:?}");
    assert!(!queued_at(&high_comments, 2), "{high_comments:?}");
    assert!(queued_at(&low_comments, 1), "{low_comments:?}");
    assert!(
        queued_at(&low_comments, 2) || queued_at(&low_comments, 3),
        "the low request's position moved back: {low_comments:?}"
    );
    assert!(queued_at(&normal_comments, 2), "{normal_comments:?}");
    server.stop(true).await;
}

#[actix_rt::test]
async fn reserved_replicas_stay_warm_are_bounded_by_max_replicas_and_serve_their_tenant_first() {
    // A long scale-up window: the reserved replica stays the only one while the queue
    // builds (the default window is 0: the second replica would start at once).
    let server = common::start(&ONE_SLOT.replace(
        "min_replicas = 1\nmax_replicas = 1",
        "min_replicas = 0\nmax_replicas = 2\nscale_up_window = \"10m\"",
    ))
    .await;
    assert_eq!(common::replicas(&common::status(&server, "chat").await), (0, 0, 0), "nothing runs without load");

    // Past max_replicas, or on an unknown deployment: refused, naming the problem.
    let (code, body) = common::admin(&server, "PUT", "/tenants/acme", Some(json!({"reserved_replicas": {"chat": 3}}))).await;
    assert_eq!(code, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("3 replica(s) of deployment `chat`, more than its autoscaling.max_replicas (2)"), "{message}");
    let (code, body) = common::admin(&server, "PUT", "/tenants/acme", Some(json!({"reserved_replicas": {"nope": 1}}))).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("no deployment `nope` exists"), "{body}");

    // A reservation of 1 (priority `low` otherwise) starts a replica with no load at all.
    let acme = tenant(&server, "acme", json!({"priority": "low", "reserved_replicas": {"chat": 1}})).await;
    let (_, view) = common::admin(&server, "GET", "/tenants/acme", None).await;
    assert_eq!(view["reserved_replicas"]["chat"], 1, "{view}");
    common::wait_for("the reserved replica", Duration::from_secs(10), || async {
        (common::replicas(&common::status(&server, "chat").await).0 == 1).then_some(())
    })
    .await;
    let status = common::status(&server, "chat").await;
    assert_eq!(status["reserved_floor"], 1, "{status}");
    assert_eq!(status["autoscaling"]["min_replicas"], 1, "{status}");


    // Within its share, acme's requests go ahead of a normal tenant's waiting one.
    let other = tenant(&server, "other", json!({})).await;
    let running = spawn_chat(&server, &other, 120);
    wait_for_queue(&server, 0, 1).await;
    let other_request = spawn_chat(&server, &other, 4);
    wait_for_queue(&server, 1, 1).await;
    let acme_request = spawn_chat(&server, &acme, 4);
    wait_for_queue(&server, 2, 1).await;
    served(&running.await.unwrap(), "running");
    let (_, acme_done) = served(&acme_request.await.unwrap(), "acme");
    let (_, other_done) = served(&other_request.await.unwrap(), "other");
    assert!(acme_done < other_done, "the reserving tenant is served first");

    // Two tenants reserve all of max_replicas 2: the deployment cannot drop below that.
    let (code, body) = common::admin(&server, "PUT", "/tenants/spare", Some(json!({"reserved_replicas": {"chat": 1}}))).await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = common::admin(&server, "PUT", "/tenants/more", Some(json!({"reserved_replicas": {"chat": 1}}))).await;
    assert_eq!(code, 400, "a third replica is past max_replicas: {body}");
    assert_eq!(common::status(&server, "chat").await["reserved_floor"], 2);
    let lower = json!({
        "engine": "sim",
        "max_queue_depth": 4,
        "sim": {"profile": "smollm2-135m-cpu", "cold_start": "100ms", "decode_step_base": "20ms",
                "decode_step_per_sequence": "0ms", "max_batch_size": 1},
        "autoscaling": {"min_replicas": 0, "max_replicas": 1},
    });
    let (code, body) = common::admin(&server, "PUT", "/deployments/chat", Some(lower)).await;
    assert_eq!(code, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("tenants reserve 2 replica(s) of deployment `chat`, more than its autoscaling.max_replicas (1)"), "{message}");
    let (code, body) = common::admin(&server, "PUT", "/tenants/spare", Some(json!({}))).await;
    assert_eq!(code, 200, "{body}");

    // Dropping the reservation lifts the floor.
    let (code, body) = common::admin(&server, "PUT", "/tenants/acme", Some(json!({"priority": "low"}))).await;
    assert_eq!(code, 200, "{body}");
    let status = common::status(&server, "chat").await;
    assert_eq!(status["reserved_floor"], 0, "{status}");
    assert_eq!(status["autoscaling"]["min_replicas"], 0, "{status}");
    server.stop(true).await;
}
