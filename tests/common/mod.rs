//! Shared by the integration tests: start a whole server on port 0 from a TOML config,
//! talk to it over real HTTP, and wait for conditions without fixed sleeps.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;
use swell::config::Config;
use swell::server::ServerHandle;

pub mod llama_server;
pub mod nodes;

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A fast `sim` deployment named `default` (SmolLM2-on-CPU timing, quick cold start).
pub const DEFAULT_DEPLOYMENT: &str = r#"
[deployments.default]
engine = "sim"
max_tokens_default = 32
[deployments.default.sim]
profile = "smollm2-135m-cpu"
cold_start = "300ms"
decode_step_base = "5ms"
decode_step_per_sequence = "1ms"
"#;

/// The test model's path (absolute), or a panic saying how to get it.
pub fn model_path() -> std::path::PathBuf {
    let path = swell_workers::llm::find_default_model()
        .expect("the model is missing: run scripts/fetch-model (or set SWELL_MODEL_PATH)");
    std::fs::canonicalize(path).unwrap()
}

/// A deployment `default` of the real model: one always-on replica on 2 threads.
pub fn real_model_deployment(max_tokens_default: u32, kv_cache_tokens: u64) -> String {
    format!(
        r#"
[deployments.default]
engine = "llm"
max_tokens_default = {max_tokens_default}
[deployments.default.llm]
model_path = "{}"
threads = 2
kv_cache_tokens = {kv_cache_tokens}
[deployments.default.autoscaling]
min_replicas = 1
max_replicas = 1
"#,
        model_path().display()
    )
}

pub async fn start(deployments: &str) -> ServerHandle {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\nautoscaler_tick = \"100ms\"\nshutdown_timeout = \"2s\"\n{deployments}"
    );
    let config = Config::from_toml_str(&text).expect("test config is valid");
    swell::server::start(config).await.expect("server starts")
}

pub fn base(server: &ServerHandle) -> String {
    format!("http://{}", server.addr)
}

pub fn client() -> awc::Client {
    awc::Client::builder().timeout(Duration::from_secs(120)).finish()
}

pub async fn admin(server: &ServerHandle, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}/admin/v1{path}", base(server));
    let request = client()
        .request(method.parse().unwrap(), url)
        .insert_header(("authorization", format!("Bearer {ADMIN_TOKEN}")));
    let mut response = match body {
        Some(body) => request.send_json(&body).await.expect("admin request"),
        None => request.send().await.expect("admin request"),
    };
    let status = response.status().as_u16();
    let bytes = response.body().limit(16 << 20).await.expect("admin body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// POST a JSON body; answer the status, the headers we care about, and the raw body.
/// A chat completion sent over a raw TCP connection (so a test can leave mid-answer);
/// returns the connection.
pub async fn send_raw_chat(server: &ServerHandle, key: &str, body: &Value) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let body = body.to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        server.addr,
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

pub async fn post(server: &ServerHandle, path: &str, key: Option<&str>, body: &Value) -> (u16, awc::http::header::HeaderMap, String) {
    let mut request = client().post(format!("{}{path}", base(server)));
    if let Some(key) = key {
        request = request.insert_header(("authorization", format!("Bearer {key}")));
    }
    let mut response = request.send_json(body).await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.body().limit(64 << 20).await.expect("body");
    (status, headers, String::from_utf8_lossy(&bytes).into_owned())
}

/// GET a text page (`/metrics` included: the admin token is sent, which it accepts).
pub async fn get_text(server: &ServerHandle, path: &str) -> (u16, String) {
    let mut response = client()
        .get(format!("{}{path}", base(server)))
        .insert_header(("authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let bytes = response.body().limit(64 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Poll `check` every 50 ms until it answers `Some`, or panic after `within`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The deployment's status from the admin API.
pub async fn status(server: &ServerHandle, deployment: &str) -> Value {
    let (code, body) = admin(server, "GET", &format!("/deployments/{deployment}"), None).await;
    assert_eq!(code, 200, "status of {deployment}: {body}");
    body
}

pub fn replicas(status: &Value) -> (u64, u64, u64) {
    let r = &status["replicas"];
    (r["ready"].as_u64().unwrap(), r["starting"].as_u64().unwrap(), r["draining"].as_u64().unwrap())
}

/// Split an SSE body into its comment lines and its data payloads.
pub fn sse_parts(body: &str) -> (Vec<String>, Vec<String>) {
    let mut comments = Vec::new();
    let mut data = Vec::new();
    for line in body.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            comments.push(comment.trim().to_string());
        } else if let Some(payload) = line.strip_prefix("data:") {
            data.push(payload.trim().to_string());
        }
    }
    (comments, data)
}
