//! Resuming a stream (`GET /v1/streams/{id}` with `Last-Event-ID`, a WebSocket `resume`):
//! a client killed mid-stream reconnects and gets exactly the tokens it missed (compared
//! with an uninterrupted run of the same seeded request); another tenant's key, an
//! unknown id and an expired stream get 404; a stream nobody resumes is cancelled once
//! `queue.resume_grace` passed, and its tenant's slot is freed; a WebSocket `cancel` still
//! cancels at once. (The metrics are the process's, shared by the tests: each test has
//! its own tenants.)

mod common;

use std::time::Duration;

use awc::ws::{Frame, Message};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use swell::server::ServerHandle;
use tokio::io::AsyncReadExt;

/// A `sim` deployment slow enough (about 25 ms a token) to leave mid-stream.
const SLOW: &str = r#"
[queue]
resume_grace = "2s"
output_retention = "3s"

[deployments.default]
engine = "sim"
max_tokens_default = 32
[deployments.default.sim]
profile = "smollm2-135m-cpu"
cold_start = "100ms"
decode_step_base = "25ms"
decode_step_per_sequence = "1ms"
[deployments.default.autoscaling]
min_replicas = 1
"#;

const TOKENS: u64 = 100;

async fn tenant_with_key(server: &ServerHandle, tenant: &str) -> String {
    let limits = json!({"limits": {"max_concurrent_requests": 4}});
    let (code, body) = common::admin(server, "PUT", &format!("/tenants/{tenant}"), Some(limits)).await;
    assert!(code == 200 || code == 201, "{body}");
    let (code, body) = common::admin(server, "POST", &format!("/tenants/{tenant}/keys"), None).await;
    assert_eq!(code, 201, "{body}");
    body["api_key"].as_str().unwrap().to_string()
}

fn request(max_tokens: u64) -> Value {
    json!({"model": "default", "messages": [{"role": "user", "content": "tell me a story"}],
           "max_tokens": max_tokens, "ignore_eos": true, "seed": 7, "stream": true})
}

/// One SSE event: its `id:` (if any) and its `data:` payload.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    id: Option<u64>,
    data: String,
}

/// The complete events of an SSE text (comments skipped).
fn events(text: &str) -> Vec<Event> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut id = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("id: ") {
                id = Some(value.trim().parse().expect("numeric id"));
            } else if let Some(value) = line.strip_prefix("data: ") {
                data = Some(value.to_string());
            }
        }
        if let Some(data) = data {
            events.push(Event { id, data });
        }
    }
    events
}

/// The generated text of chat chunk events.
fn content(events: &[Event]) -> String {
    events
        .iter()
        .filter(|event| event.data != "[DONE]")
        .filter_map(|event| {
            let chunk: Value = serde_json::from_str(&event.data).unwrap();
            chunk["choices"][0]["delta"]["content"].as_str().map(str::to_string)
        })
        .collect()
}

/// Starts a streamed request over a raw connection, reads until it has a complete event
/// with id >= `leave_after`, then drops the connection. Answers the request id and the
/// complete events it received.
async fn stream_and_leave(server: &ServerHandle, key: &str, body: &Value, leave_after: u64) -> (String, Vec<Event>) {
    let mut stream = common::send_raw_chat(server, key, body).await;
    let mut raw = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buffer)).await.expect("data in time").unwrap();
        assert!(read > 0, "the server closed the stream early: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let Some((head, chunked)) = text.split_once("\r\n\r\n") else { continue };
        let body = dechunk(chunked);
        let received = events(&body);
        if received.iter().any(|event| event.id.is_some_and(|id| id >= leave_after)) {
            drop(stream);
            let request_id = head
                .lines()
                .find_map(|line| line.strip_prefix("x-request-id: "))
                .expect("x-request-id")
                .trim()
                .to_string();
            // Only whole events count: a block cut short is not one the client had.
            let complete = body.rfind("\n\n").map(|end| &body[..end + 2]).unwrap_or("");
            return (request_id, events(complete));
        }
    }
}

/// The payload of a chunked body read so far (a last, incomplete chunk partly).
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 {
            break;
        }
        let take = size.min(after.len());
        body.push_str(&after[..take]);
        if take < size {
            break;
        }
        rest = after[size..].strip_prefix("\r\n").unwrap_or("");
    }
    body
}

async fn resume(server: &ServerHandle, key: &str, stream_id: &str, last_event_id: Option<u64>) -> (u16, String) {
    let mut request = common::client()
        .get(format!("{}/v1/streams/{stream_id}", common::base(server)))
        .insert_header(("authorization", format!("Bearer {key}")));
    if let Some(id) = last_event_id {
        request = request.insert_header(("last-event-id", id.to_string()));
    }
    let mut response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let bytes = response.body().limit(64 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn assert_not_found(status: u16, body: &str) {
    assert_eq!(status, 404, "{body}");
    let error: Value = serde_json::from_str(body).expect("an error body");
    assert_eq!(error["error"]["code"], "stream_not_found", "{body}");
    assert_eq!(error["error"]["type"], "not_found_error", "{body}");
}

async fn in_flight(server: &ServerHandle, tenant: &str) -> u64 {
    let (_, view) = common::admin(server, "GET", &format!("/tenants/{tenant}"), None).await;
    view["in_flight"].as_u64().expect("in_flight")
}

fn requests_with_status(metrics: &str, tenant: &str, status: &str) -> u64 {
    let series = format!(r#"swell_requests_total{{deployment="default",tenant="{tenant}",status="{status}"}} "#);
    metrics.lines().find_map(|line| line.strip_prefix(&series)).map_or(0, |value| value.trim().parse().unwrap())
}

#[actix_rt::test]
async fn a_client_killed_mid_stream_resumes_with_exactly_the_missing_tokens() {
    let server = common::start(SLOW).await;
    let key = tenant_with_key(&server, "acme").await;
    let other_key = tenant_with_key(&server, "other").await;

    // The uninterrupted run: every chunk numbered, ending at the token count.
    let (status, _, whole) = common::post(&server, "/v1/chat/completions", Some(&key), &request(TOKENS)).await;
    assert_eq!(status, 200, "{whole}");
    let whole = events(&whole);
    let expected = content(&whole);
    let ids: Vec<u64> = whole.iter().filter_map(|event| event.id).collect();
    assert_eq!(ids.first(), Some(&0), "the role chunk is event 0");
    assert!(ids.windows(2).all(|pair| pair[0] <= pair[1]), "ids never go back: {ids:?}");
    assert_eq!(ids.last(), Some(&TOKENS), "the last chunk's id is the token count");
    assert_eq!(whole.last().unwrap().data, "[DONE]");

    // The same request, left after a few tokens.
    let (request_id, had) = stream_and_leave(&server, &key, &request(TOKENS), 5).await;
    let last_id = had.iter().filter_map(|event| event.id).max().unwrap();
    assert!((5..TOKENS).contains(&last_id), "left mid-stream at {last_id}");
    let chunk_id: Value = serde_json::from_str(&had[0].data).unwrap();
    let chunk_id = chunk_id["id"].as_str().unwrap().to_string();
    assert_eq!(chunk_id, format!("chatcmpl-{}", request_id.strip_prefix("req-").unwrap()));

    // Another tenant cannot resume it, nor can anyone resume an unknown stream.
    let (status, body) = resume(&server, &other_key, &chunk_id, Some(last_id)).await;
    assert_not_found(status, &body);
    let (status, body) = resume(&server, &key, "chatcmpl-0123456789abcdef", Some(0)).await;
    assert_not_found(status, &body);
    let (status, body) = resume(&server, &key, "not-a-stream", Some(0)).await;
    assert_not_found(status, &body);

    // A Last-Event-ID that is no token count is refused before anything is resumed.
    let mut response = common::client()
        .get(format!("{}/v1/streams/{chunk_id}", common::base(&server)))
        .insert_header(("authorization", format!("Bearer {key}")))
        .insert_header(("last-event-id", "seven"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let error: Value = serde_json::from_slice(&response.body().await.unwrap()).unwrap();
    assert_eq!((error["error"]["code"].as_str(), error["error"]["param"].as_str()), (Some("invalid_value"), Some("Last-Event-ID")), "{error}");

    // Its own tenant resumes it (by chunk id) and gets the rest: no gap, no repeat.
    let (status, rest) = resume(&server, &key, &chunk_id, Some(last_id)).await;
    assert_eq!(status, 200, "{rest}");
    let rest = events(&rest);
    let first_rest = rest.iter().find_map(|event| event.id).unwrap();
    assert!(first_rest > last_id, "the first resumed event ({first_rest}) follows {last_id}");
    assert_eq!(rest.iter().filter_map(|event| event.id).max(), Some(TOKENS));
    assert_eq!(rest.last().unwrap().data, "[DONE]");
    assert_eq!(format!("{}{}", content(&had), content(&rest)), expected, "the two parts are the whole");

    // The request itself ran to its end (not cancelled) and freed its slot.
    common::wait_for("the slot freed", Duration::from_secs(10), || async {
        (in_flight(&server, "acme").await == 0).then_some(())
    })
    .await;
    let (_, metrics) = common::get_text(&server, "/metrics").await;
    assert_eq!(requests_with_status(&metrics, "acme", "ok"), 2, "{metrics}");
    assert_eq!(requests_with_status(&metrics, "acme", "cancelled"), 0, "{metrics}");

    // From the start (no Last-Event-ID, by request id): the whole stream again.
    let (status, again) = resume(&server, &key, &request_id, None).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(content(&events(&again)), expected);

    // Once the output is dropped (`output_retention`), the stream is gone.
    common::wait_for("the stream to expire", Duration::from_secs(15), || async {
        let (status, body) = resume(&server, &key, &chunk_id, Some(last_id)).await;
        (status == 404).then_some(body)
    })
    .await;
    let (status, body) = resume(&server, &key, &chunk_id, Some(last_id)).await;
    assert_not_found(status, &body);
    server.stop(true).await;
}

#[actix_rt::test]
async fn a_stream_nobody_resumes_is_cancelled_after_the_grace_and_frees_its_slot() {
    let server = common::start(SLOW).await;
    let key = tenant_with_key(&server, "beta").await;
    let (request_id, had) = stream_and_leave(&server, &key, &request(4000), 3).await;
    assert!(!had.is_empty());
    // Within the grace the request still runs and holds its slot.
    assert_eq!(in_flight(&server, "beta").await, 1, "held during the grace");
    common::wait_for("the slot freed after the grace", Duration::from_secs(10), || async {
        (in_flight(&server, "beta").await == 0).then_some(())
    })
    .await;
    let (_, metrics) = common::get_text(&server, "/metrics").await;
    assert_eq!(requests_with_status(&metrics, "beta", "cancelled"), 1, "{metrics}");
    // What is resumed now ends with the cancellation, well before 4000 tokens.
    let (status, rest) = resume(&server, &key, &request_id, Some(0)).await;
    assert_eq!(status, 200, "{rest}");
    let rest = events(&rest);
    assert!(rest.last().unwrap().data.contains("\"cancelled\""), "{:?}", rest.last());
    assert!(rest.iter().filter_map(|event| event.id).max().unwrap() < 4000);
    server.stop(true).await;
}

async fn open_socket(
    server: &ServerHandle,
    key: &str,
) -> impl futures_util::Sink<Message, Error = awc::error::WsProtocolError> + futures_util::Stream<Item = Result<Frame, awc::error::WsProtocolError>> + Unpin {
    let (_, socket) = awc::Client::new()
        .ws(format!("ws://{}/v1/ws", server.addr))
        .bearer_auth(key)
        .connect()
        .await
        .expect("websocket upgrade");
    socket
}

async fn next_frame(socket: &mut (impl futures_util::Stream<Item = Result<Frame, awc::error::WsProtocolError>> + Unpin)) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), socket.next()).await.expect("a frame in time");
        match frame.expect("the socket is open").expect("a valid frame") {
            Frame::Text(text) => return serde_json::from_slice(&text).unwrap(),
            _ => continue,
        }
    }
}

/// The text of the seeded story over HTTP, and a socket that just sent it as request `a`.
async fn story_on_a_socket(
    server: &ServerHandle,
    key: &str,
) -> (String, impl futures_util::Sink<Message, Error = awc::error::WsProtocolError> + futures_util::Stream<Item = Result<Frame, awc::error::WsProtocolError>> + Unpin) {
    let (status, _, whole) = common::post(server, "/v1/chat/completions", Some(key), &request(TOKENS)).await;
    assert_eq!(status, 200);
    let expected = content(&events(&whole));
    let mut socket = open_socket(server, key).await;
    let body = json!({"model": "default", "messages": [{"role": "user", "content": "tell me a story"}],
                      "max_tokens": TOKENS, "ignore_eos": true, "seed": 7});
    socket.send(Message::Text(json!({"id": "a", "type": "chat.completion", "request": body}).to_string().into())).await.unwrap();
    (expected, socket)
}

fn chunk_content(frame: &Value) -> String {
    frame["chunk"]["choices"][0]["delta"]["content"].as_str().unwrap_or("").to_string()
}

#[actix_rt::test]
async fn a_websocket_resume_continues_a_stream_on_a_new_socket() {
    let server = common::start(SLOW).await;
    let key = tenant_with_key(&server, "gamma").await;
    let other_key = tenant_with_key(&server, "delta").await;
    let (expected, mut first) = story_on_a_socket(&server, &key).await;
    let mut had = String::new();
    let (mut last_id, mut stream_id) = (0, String::new());
    while last_id < 5 {
        let frame = next_frame(&mut first).await;
        if frame["type"] == "chunk" {
            had.push_str(&chunk_content(&frame));
            last_id = frame["event_id"].as_u64().expect("event_id");
            stream_id = frame["chunk"]["id"].as_str().unwrap().to_string();
        }
    }
    drop(first);

    let mut intruder = open_socket(&server, &other_key).await;
    let resume = |id: &str| json!({"id": id, "type": "resume", "request_id": stream_id, "after": last_id}).to_string();
    intruder.send(Message::Text(resume("x").into())).await.unwrap();
    let refused = next_frame(&mut intruder).await;
    assert_eq!((refused["type"].as_str(), refused["error"]["code"].as_str()), (Some("error"), Some("stream_not_found")), "{refused}");

    let mut second = open_socket(&server, &key).await;
    second.send(Message::Text(resume("b").into())).await.unwrap();
    let mut rest = String::new();
    loop {
        let frame = next_frame(&mut second).await;
        assert_eq!(frame["id"], "b", "{frame}");
        match frame["type"].as_str() {
            Some("chunk") => {
                assert!(frame["event_id"].as_u64().unwrap() > last_id, "{frame}");
                rest.push_str(&chunk_content(&frame));
            }
            Some("done") => break,
            Some("status") => {}
            other => panic!("unexpected {other:?}: {frame}"),
        }
    }
    assert_eq!(format!("{had}{rest}"), expected);
    server.stop(true).await;
}

/// The first frame of an admitted request names its stream, so a socket lost before any
/// chunk can still resume it (from the start).
#[actix_rt::test]
async fn a_websocket_request_is_resumable_from_its_accepted_frame_before_any_chunk() {
    let server = common::start(SLOW).await;
    let key = tenant_with_key(&server, "zeta").await;
    let (expected, mut first) = story_on_a_socket(&server, &key).await;
    let accepted = next_frame(&mut first).await;
    assert_eq!((accepted["type"].as_str(), accepted["status"].as_str()), (Some("status"), Some("accepted")), "{accepted}");
    let stream_id = accepted["request_id"].as_str().expect("request_id").to_string();
    assert!(stream_id.starts_with("req-"), "{accepted}");
    drop(first);

    let mut second = open_socket(&server, &key).await;
    second.send(Message::Text(json!({"id": "b", "type": "resume", "request_id": stream_id}).to_string().into())).await.unwrap();
    let mut text = String::new();
    loop {
        let frame = next_frame(&mut second).await;
        match frame["type"].as_str() {
            Some("chunk") => text.push_str(&chunk_content(&frame)),
            Some("done") => break,
            Some("status") => {}
            other => panic!("unexpected {other:?}: {frame}"),
        }
    }
    assert_eq!(text, expected);
    server.stop(true).await;
}

#[actix_rt::test]
async fn a_websocket_cancel_cancels_at_once_not_after_the_grace() {
    // A grace far longer than the wait below: only an immediate cancel frees the slot.
    let server = common::start(&SLOW.replace("resume_grace = \"2s\"", "resume_grace = \"60s\"")).await;
    let key = tenant_with_key(&server, "epsilon").await;
    let mut socket = open_socket(&server, &key).await;
    let body = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000, "ignore_eos": true});
    socket.send(Message::Text(json!({"id": "c", "type": "chat.completion", "request": body}).to_string().into())).await.unwrap();
    while next_frame(&mut socket).await["type"] != "chunk" {}
    socket.send(Message::Text(json!({"id": "c", "type": "cancel"}).to_string().into())).await.unwrap();
    common::wait_for("the slot freed by the cancel", Duration::from_secs(10), || async {
        (in_flight(&server, "epsilon").await == 0).then_some(())
    })
    .await;
    let (_, metrics) = common::get_text(&server, "/metrics").await;
    assert_eq!(requests_with_status(&metrics, "epsilon", "cancelled"), 1, "{metrics}");
    server.stop(true).await;
}
