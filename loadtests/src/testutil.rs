//! A tiny fake Swell server for tests: raw HTTP/1.1 over tokio TCP speaking just enough of the
//! contract (SSE generations and the `/v1/ws` WebSocket protocol). What it does depends on
//! the request's `model`:
//! - anything else: `: queued`, `: starting` comments, a role chunk, `max_tokens` content
//!   chunks, a usage chunk, `[DONE]`;
//! - `busy`: HTTP 429 / WebSocket error `rate_limited`;
//! - `cut`: two tokens, then the connection closes;
//! - `broken`: one token, then an error event `replica_failed`;
//! - `slow`: nothing for 30 s.
//!
//! `Authorization: Bearer bad` gets a 401.

use std::{cell::Cell, rc::Rc, time::Duration};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{tcp::OwnedReadHalf, TcpListener, TcpStream},
    sync::mpsc,
};

/// Counters of a running fake server.
#[derive(Debug, Default)]
pub struct Seen {
    pub http_requests: Cell<u64>,
    pub ws_connections: Cell<u64>,
    pub ws_requests: Cell<u64>,
}

/// Starts a fake server on 127.0.0.1; returns its base URL and counters.
pub async fn fake_server() -> (String, Rc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Rc::new(Seen::default());
    let counters = seen.clone();
    actix_rt::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            actix_rt::spawn(handle_connection(stream, counters.clone()));
        }
    });
    (url, seen)
}

struct HttpRequest {
    head: String,
    body: Vec<u8>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<HttpRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut request = HttpRequest {
        head,
        body: buf[head_end..].to_vec(),
    };
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while request.body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        request.body.extend_from_slice(&chunk[..n]);
    }
    Some(request)
}

async fn handle_connection(mut stream: TcpStream, seen: Rc<Seen>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    if request.header("authorization") == Some("Bearer bad") {
        let body = json!({"error": {"message": "invalid api key", "type": "authentication_error", "code": "invalid_api_key", "param": null}});
        respond(&mut stream, 401, &body).await;
        return;
    }
    if request.head.starts_with("GET /v1/ws") {
        seen.ws_connections.set(seen.ws_connections.get() + 1);
        websocket(stream, &request, seen).await;
        return;
    }
    seen.http_requests.set(seen.http_requests.get() + 1);
    let completions = request.head.starts_with("POST /v1/completions");
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or("").to_string();
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(1);
    if model == "busy" {
        let body = json!({"error": {"message": "too many requests", "type": "rate_limit_error", "code": "rate_limited", "param": null}});
        respond(&mut stream, 429, &body).await;
        return;
    }
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut events: Vec<String> = vec![
        ": queued position=1\n\n".into(),
        ": starting replica\n\n".into(),
    ];
    for message in generation(&model, max_tokens, completions) {
        match message {
            Step::Sleep(d) => {
                for event in events.drain(..) {
                    // Split every event across two writes to exercise the parser.
                    let (a, b) = event.split_at(event.len() / 2);
                    for part in [a, b] {
                        let framed = format!("{:x}\r\n{part}\r\n", part.len());
                        if stream.write_all(framed.as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = stream.flush().await;
                    }
                }
                tokio::time::sleep(d).await;
            }
            Step::Chunk(chunk) => events.push(format!("data: {chunk}\n\n")),
            Step::Error(error) => events.push(format!("data: {}\n\n", json!({ "error": error }))),
            Step::Cut => return,
            Step::Done(_) => events.push("data: [DONE]\n\n".into()),
        }
    }
    for event in events {
        let framed = format!("{:x}\r\n{event}\r\n", event.len());
        let _ = stream.write_all(framed.as_bytes()).await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let _ = stream.shutdown().await;
}

async fn respond(stream: &mut TcpStream, status: u16, body: &Value) {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// One step of a fake generation.
enum Step {
    Sleep(Duration),
    Chunk(Value),
    Error(Value),
    Cut,
    Done(Value),
}

fn generation(model: &str, max_tokens: u64, completions: bool) -> Vec<Step> {
    let tick = Duration::from_millis(2);
    let token = |i: u64| {
        if completions {
            json!({"id": "c1", "object": "text_completion", "choices": [{"index": 0, "text": format!(" t{i}"), "finish_reason": null}]})
        } else {
            json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": format!(" t{i}")}, "finish_reason": null}]})
        }
    };
    let mut steps = vec![Step::Sleep(tick)];
    if model == "slow" {
        steps.push(Step::Sleep(Duration::from_secs(30)));
    }
    if !completions {
        steps.push(Step::Chunk(json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]})));
    }
    for i in 0..max_tokens {
        steps.push(Step::Chunk(token(i)));
        steps.push(Step::Sleep(tick));
        if model == "cut" && i == 1 {
            steps.push(Step::Cut);
            return steps;
        }
        if model == "broken" {
            steps.push(Step::Error(json!({"message": "replica died", "type": "server_error", "code": "replica_failed", "param": null})));
            steps.push(Step::Sleep(tick));
            return steps;
        }
    }
    let usage = json!({"prompt_tokens": 11, "completion_tokens": max_tokens, "total_tokens": 11 + max_tokens});
    steps.push(Step::Chunk(
        json!({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": usage}),
    ));
    steps.push(Step::Done(usage));
    steps.push(Step::Sleep(tick));
    steps
}

// --- WebSocket ---------------------------------------------------------------------------

async fn websocket(stream: TcpStream, request: &HttpRequest, seen: Rc<Seen>) {
    let key = request
        .header("sec-websocket-key")
        .unwrap_or("")
        .to_string();
    let accept = base64(&sha1(
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    ));
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
    );
    if writer.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let (out, mut out_rx) = mpsc::unbounded_channel::<(u8, Vec<u8>)>();
    actix_rt::spawn(async move {
        while let Some((opcode, payload)) = out_rx.recv().await {
            if writer
                .write_all(&server_frame(opcode, &payload))
                .await
                .is_err()
                || opcode == 0x8
            {
                break;
            }
        }
    });
    while let Ok((opcode, payload)) = read_client_frame(&mut reader).await {
        match opcode {
            0x1 => {
                seen.ws_requests.set(seen.ws_requests.get() + 1);
                let message: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                actix_rt::spawn(ws_generation(message, out.clone()));
            }
            0x8 => {
                let _ = out.send((0x8, Vec::new()));
                break;
            }
            0x9 => {
                let _ = out.send((0xA, payload));
            }
            _ => {}
        }
    }
}

async fn ws_generation(message: Value, out: mpsc::UnboundedSender<(u8, Vec<u8>)>) {
    let id = message["id"].clone();
    let request = &message["request"];
    let send = |v: Value| {
        let _ = out.send((0x1, v.to_string().into_bytes()));
    };
    if request["model"] == "busy" {
        send(
            json!({"id": id, "type": "error", "error": {"message": "too many requests", "type": "rate_limit_error", "code": "rate_limited"}}),
        );
        return;
    }
    send(json!({"id": id, "type": "status", "status": "queued", "position": 1}));
    send(json!({"id": id, "type": "status", "status": "running"}));
    let completions = message["type"] == "completion";
    let max_tokens = request["max_tokens"].as_u64().unwrap_or(1);
    for step in generation(
        request["model"].as_str().unwrap_or(""),
        max_tokens,
        completions,
    ) {
        match step {
            Step::Sleep(d) => tokio::time::sleep(d).await,
            Step::Chunk(chunk) => send(json!({"id": id, "type": "chunk", "chunk": chunk})),
            Step::Error(error) => send(json!({"id": id, "type": "error", "error": error})),
            Step::Cut => return,
            Step::Done(usage) => send(json!({"id": id, "type": "done", "usage": usage})),
        }
    }
}

async fn read_client_frame(reader: &mut OwnedReadHalf) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head).await?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let mut len = u64::from(head[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        reader.read_exact(&mut b).await?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        reader.read_exact(&mut b).await?;
        len = u64::from_be_bytes(b);
    }
    let mut mask = [0u8; 4];
    if masked {
        reader.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    reader.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((opcode, payload))
}

fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        frame.push(len as u8);
    } else if len < 65_536 {
        frame.push(126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(payload);
    frame
}

/// SHA-1, for the WebSocket handshake only.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in message.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[4 * i..4 * i + 4].try_into().unwrap());
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, word) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn handshake_helpers_match_known_vectors() {
    let hex: String = sha1(b"abc").iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
    let accept = base64(&sha1(
        b"dGhlIHNhbXBsZSBub25jZQ==258EAFA5-E914-47DA-95CA-C5AB0DC85B11",
    ));
    assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_eq!(base64(b"ab"), "YWI=");
}
