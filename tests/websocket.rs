//! One WebSocket connection streams two concurrent requests and cancels a third; an
//! unknown message type and a request with a field Swell does not honour get error
//! frames, and the connection stays usable.

mod common;

use std::collections::HashMap;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

#[actix_rt::test]
async fn two_concurrent_streams_and_a_cancel_on_one_connection() {
    let server = common::start(common::DEFAULT_DEPLOYMENT).await;
    let url = format!("ws://{}/v1/ws", server.addr);
    let (_, mut ws) = awc::Client::new().ws(url).connect().await.expect("websocket upgrade");

    let send = |value: Value| awc::ws::Message::Text(value.to_string().into());
    let chat = |max_tokens: u32| {
        json!({"model": "default", "messages": [{"role": "user", "content": "count to ten"}],
               "max_tokens": max_tokens, "ignore_eos": true})
    };
    ws.send(send(json!({"id": "a", "type": "chat.completion", "request": chat(12)}))).await.unwrap();
    ws.send(send(json!({"id": "b", "type": "chat.completion", "request": chat(12)}))).await.unwrap();
    ws.send(send(json!({"id": "c", "type": "chat.completion", "request": chat(100_000.min(8000))}))).await.unwrap();
    ws.send(send(json!({"id": "x", "type": "bogus"}))).await.unwrap();
    // A field Swell does not honour is refused by name here too.
    let mut biased = chat(4);
    biased["logit_bias"] = json!({"42": -100});
    ws.send(send(json!({"id": "d", "type": "chat.completion", "request": biased}))).await.unwrap();

    let mut chunks: HashMap<String, usize> = HashMap::new();
    let mut ends: HashMap<String, Value> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut cancelled_sent = false;
    let mut bogus_error = None;
    while ends.len() < 4 {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(60), ws.next())
            .await
            .expect("a frame within 60s")
            .expect("connection open")
            .expect("valid frame");
        let awc::ws::Frame::Text(bytes) = frame else { continue };
        let message: Value = serde_json::from_slice(&bytes).unwrap();
        let id = message["id"].as_str().unwrap_or_default().to_string();
        match message["type"].as_str().unwrap() {
            "chunk" => {
                *chunks.entry(id.clone()).or_default() += 1;
                order.push(id.clone());
                if id == "c" && !cancelled_sent {
                    ws.send(send(json!({"id": "c", "type": "cancel"}))).await.unwrap();
                    cancelled_sent = true;
                }
            }
            "done" | "error" if id == "x" => bogus_error = Some(message),
            "done" | "error" => {
                ends.insert(id, message);
            }
            "status" => {}
            other => panic!("unexpected message type {other}: {message}"),
        }
    }
    for id in ["a", "b"] {
        let end = &ends[id];
        assert_eq!(end["type"], "done", "{end}");
        assert_eq!(end["usage"]["completion_tokens"], 12, "{end}");
        assert!(chunks[id] >= 1);
    }
    let c = &ends["c"];
    assert_eq!(c["type"], "error", "{c}");
    assert_eq!(c["error"]["code"], "cancelled", "{c}");
    assert!(chunks["c"] < 8000, "the cancelled request stopped early");
    // The two requests were in flight together: their chunks interleave.
    let first_b = order.iter().position(|id| id == "b").unwrap();
    let last_a = order.iter().rposition(|id| id == "a").unwrap();
    assert!(first_b < last_a, "a and b streamed concurrently: {order:?}");
    let d = &ends["d"];
    assert_eq!((d["type"].as_str(), d["error"]["code"].as_str()), (Some("error"), Some("unsupported_parameter")), "{d}");
    assert_eq!(d["error"]["param"], "logit_bias", "{d}");
    let bogus = bogus_error.expect("the unknown message type got an answer");
    assert_eq!(bogus["type"], "error");
    assert_eq!(bogus["error"]["code"], "unknown_message_type", "{bogus}");
    server.stop(true).await;
}
