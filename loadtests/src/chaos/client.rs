//! A campaign's client: seeded streaming chat requests to the gateways, over SSE, the
//! WebSocket API (`ws_client.rs`) or the Redis ingress (`ingress_client.rs`), each
//! request's transport drawn at random, each recorded as a [`History`]. A
//! client that loses its stream (the connection breaks, or nothing comes for `idle`)
//! resumes it at a gateway (`GET /v1/streams/{id}` with `Last-Event-ID`, or a WebSocket
//! `resume`), trying them in turn for up to `resume_for`, as a careful client would.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::Client;
use futures_util::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::chaos::history::{clock_ms, End, History, Segment};
use crate::chaos::tenants::{key_of, tenant_of};
use crate::chaos::ingress_client::IngressClient;

/// The prompts clients send (each with a seed from `0..seeds`).
pub const PROMPTS: [&str; 4] = [
    "Tell me about the sea.",
    "Write a haiku about autumn.",
    "What is a queue?",
    "Name three colours.",
];

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub seeds: u64,
    pub max_tokens: u32,
    /// Nothing received for this long: the stream is taken as lost and resumed.
    pub idle: Duration,
    /// How long a client tries to resume a lost stream.
    pub resume_for: Duration,
}

/// The body of request `(prompt, seed)`.
pub fn body(prompt: usize, seed: u64, max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": "chat",
        "messages": [{"role": "user", "content": PROMPTS[prompt]}],
        "stream": stream,
        "seed": seed,
        "temperature": 0.8,
        "max_tokens": max_tokens,
    })
}

/// Runs client `index` until `until`, appending each request's history to `histories`
/// (`redis`: the Redis URL its ingress requests go to).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    index: usize,
    seed: u64,
    gateways: Vec<String>,
    redis: String,
    options: ClientOptions,
    until: Instant,
    histories: Rc<RefCell<Vec<History>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
    let http = Client::builder().timeout(Duration::from_secs(3600)).disable_redirects().finish();
    let mut ingress = IngressClient::new(redis, index);
    let mut number = 0;
    while Instant::now() < until {
        number += 1;
        let prompt = rng.random_range(0..PROMPTS.len());
        let request_seed = rng.random_range(0..options.seeds);
        let first = rng.random_range(0..gateways.len());
        let ask = Ask { client: index, number, prompt, seed: request_seed, first };
        let sent = Instant::now();
        let mut history = match rng.random_range(0..3) {
            0 => one_request(&http, ask, &gateways, &options).await,
            1 => crate::chaos::ws_client::one_request(ask, &gateways, &options).await,
            _ => ingress.one_request(ask, &options).await,
        };
        history.took_ms = sent.elapsed().as_millis() as u64;
        // Refused by the tenant's quota: wait a little, as a careful client does.
        let over_quota = matches!(&history.end, End::NotAccepted { why } if why.contains("limit_exceeded"));
        histories.borrow_mut().push(history);
        let pause = if over_quota { 500 } else { 0 } + rng.random_range(0..150);
        actix_rt::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// One request of a client: its number, prompt and seed, and the gateway it goes to
/// first (`gateways[first]`).
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    pub client: usize,
    pub number: u64,
    pub prompt: usize,
    pub seed: u64,
    pub first: usize,
}

impl Ask {
    /// Its history, before it is sent over `transport`.
    pub fn history(self, transport: &str) -> History {
        History::new(self.client, self.number, transport, self.prompt, self.seed)
    }
}

async fn one_request(http: &Client, ask: Ask, gateways: &[String], options: &ClientOptions) -> History {
    let (first, client) = (ask.first, ask.client);
    let mut history = ask.history("sse");
    let gateway = &gateways[first];
    let key = key_of(tenant_of(client));
    let sent = http
        .post(format!("{gateway}/v1/chat/completions"))
        .bearer_auth(&key)
        .timeout(Duration::from_secs(5))
        .send_json(&body(ask.prompt, ask.seed, options.max_tokens, true))
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(error) => {
            history.end = End::NotAccepted { why: format!("{gateway}: {error}") };
            return history;
        }
    };
    if response.status().as_u16() != 200 {
        let body = response.body().await.unwrap_or_default();
        history.end = End::NotAccepted { why: format!("{gateway}: {} {}", response.status(), String::from_utf8_lossy(&body)) };
        return history;
    }
    let Some(stream) = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string) else {
        history.end = End::Lost { why: "a 200 without x-request-id".into() };
        return history;
    };
    history.stream = Some(stream.clone());
    history.accepted_ms = Some(clock_ms());
    let (segment, end) = read_stream(&mut response, gateway, None, options.idle).await;
    history.segments.push(segment);
    if let Some(end) = end {
        history.end = end;
        return history;
    }
    // The stream was lost: resume it, at each gateway in turn.
    let deadline = Instant::now() + options.resume_for;
    let mut attempt = first + 1;
    let mut tries = Vec::new();
    while Instant::now() < deadline {
        let gateway = &gateways[attempt % gateways.len()];
        attempt += 1;
        let last = history.last_event_id();
        let mut request = http.get(format!("{gateway}/v1/streams/{stream}")).bearer_auth(&key).timeout(Duration::from_secs(5));
        if let Some(last) = last {
            request = request.insert_header(("Last-Event-ID", last.to_string()));
        }
        match request.send().await {
            Ok(mut response) if response.status().as_u16() == 200 => {
                let (segment, end) = read_stream(&mut response, gateway, last, options.idle).await;
                history.segments.push(segment);
                if let Some(end) = end {
                    history.end = end;
                    return history;
                }
            }
            Ok(mut response) => {
                let status = response.status().as_u16();
                let body = response.body().await.unwrap_or_default();
                let text = String::from_utf8_lossy(&body).to_string();
                tries.push(format!("{gateway}: {status} {text}"));
                if status == 404 || status == 400 {
                    history.end = End::Lost { why: format!("resume refused: {}", tries.join("; ")) };
                    return history;
                }
                actix_rt::time::sleep(Duration::from_millis(300)).await;
            }
            Err(error) => {
                tries.push(format!("{gateway}: {error}"));
                actix_rt::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    history.end = End::Lost { why: format!("no gateway resumed the stream within {:?}: {}", options.resume_for, tries.join("; ")) };
    history
}

/// Reads one connection's part of a stream: its segment, and the stream's end if this
/// connection carried it (`None`: the connection was lost first).
async fn read_stream<S>(response: &mut awc::ClientResponse<S>, gateway: &str, after: Option<u64>, idle: Duration) -> (Segment, Option<End>)
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
{
    let mut segment = Segment { gateway: gateway.to_string(), resumed_after: after, chunks: Vec::new(), ended: String::new() };
    let mut buffer = String::new();
    let mut finish: Option<String> = None;
    loop {
        let next = match actix_rt::time::timeout(idle, response.next()).await {
            Err(_) => {
                segment.ended = format!("nothing for {idle:?}");
                return (segment, None);
            }
            Ok(None) => {
                segment.ended = "the connection closed".into();
                return (segment, None);
            }
            Ok(Some(Err(error))) => {
                segment.ended = format!("read error: {error}");
                return (segment, None);
            }
            Ok(Some(Ok(bytes))) => bytes,
        };
        buffer.push_str(&String::from_utf8_lossy(&next));
        while let Some(at) = buffer.find("\n\n") {
            let event: String = buffer.drain(..at + 2).collect();
            let (mut id, mut data) = (None, None);
            for line in event.lines() {
                if let Some(value) = line.strip_prefix("id:") {
                    id = value.trim().parse::<u64>().ok();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data = Some(value.trim().to_string());
                }
            }
            let Some(data) = data else { continue };
            if data == "[DONE]" {
                segment.ended = "done".into();
                let finish = finish.unwrap_or_else(|| "none".into());
                return (segment, Some(End::Completed { finish }));
            }
            let Ok(value) = serde_json::from_str::<Value>(&data) else { continue };
            if let Some(error) = value.get("error") {
                let code = error["code"].as_str().or(error["type"].as_str()).unwrap_or("unknown").to_string();
                segment.ended = format!("error:{code}");
                return (segment, Some(End::Error { code }));
            }
            let choice = &value["choices"][0];
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish = Some(reason.to_string());
            }
            let content = choice["delta"]["content"].as_str().unwrap_or_default().to_string();
            segment.chunks.push((id, content));
        }
    }
}
