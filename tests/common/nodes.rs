//! Distributed mode's building blocks for the tests that run real `swell serve` nodes
//! (`tests/cluster.rs`, `tests/redis_failover.rs`): node processes, their config, the
//! Redis they share (one server or a Redis Cluster), and streamed completions read
//! event by event.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use swell_cluster::redis_queue::testing::{RedisCluster, RedisServer, RedisServerOptions};

use super::{client, wait_for};

/// The Redis the nodes share: one server, or a Redis Cluster of 3 masters.
pub enum TestRedis {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl TestRedis {
    /// One server without persistence.
    pub fn server() -> Self {
        Self::Server(RedisServer::start(RedisServerOptions::default()))
    }

    /// 3 masters, no replicas.
    pub fn cluster() -> Self {
        Self::Cluster(RedisCluster::start(3, 0))
    }

    /// `server` or `cluster` (to name what a test made).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Server(_) => "server",
            Self::Cluster(_) => "cluster",
        }
    }

    /// What `--redis` gets: `redis://…` or `redis-cluster://…`.
    pub fn url(&self) -> String {
        match self {
            Self::Server(server) => server.url(),
            Self::Cluster(cluster) => cluster.url(),
        }
    }
}

/// A `swell serve` process; `kill -9`ed when dropped.
pub struct Node {
    pub name: String,
    pub child: Option<Child>,
    pub url: String,
    pub log: PathBuf,
}

impl Node {
    /// Starts `swell serve --config CONFIG --redis URL --role ROLE --node-id NAME` on a
    /// free port and waits until it says where it serves.
    pub fn start(dir: &Path, config: &Path, redis_url: &str, role: &str, name: &str) -> Node {
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_swell"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--redis", redis_url, "--role", role, "--node-id", name])
            .env_remove("SWELL_REDIS_URL")
            .env_remove("SWELL_ADMIN_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create the node's log"))
            .spawn()
            .expect("start swell");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // The tracing log goes to stdout: keep it in the log file, watch for the address.
        let mut log_file =
            std::fs::OpenOptions::new().append(true).open(&log).expect("open the node's log");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(log_file, "{line}");
                if let Some(url) = line.strip_prefix("swell is serving on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("node {name} did not start; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
        };
        Node { name: name.to_string(), child: Some(child), url, log }
    }

    /// `kill -9`: no drain, no release, no settle.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- log of node {} ----\n{}", self.name, self.log_text());
        }
    }
}

/// A temp directory of the test's own, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("swell-cluster-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test directory");
        TempDir(dir)
    }

    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.0.join("swell.toml");
        std::fs::write(&path, text).expect("write the config");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config: deployment `chat` (sim engine, `step` per decode step, `replicas` replicas
/// in the cluster (placed one per worker node), `batch` sequences per replica), short
/// leases, quick ticks, a node declared dead 1.5 s after its last heartbeat.
pub fn config(step: &str, batch: u32, replicas: u32, extra: &str) -> String {
    format!(
        r#"
[server]
autoscaler_tick = "100ms"
shutdown_timeout = "2s"
[queue]
lease_ttl = "2s"
[cluster]
health_interval = "200ms"
connect_timeout = "300ms"
response_timeout = "1s"
heartbeat_interval = "200ms"
node_ttl = "1500ms"
leader_lease_ttl = "1500ms"
[deployments.chat]
engine = "sim"
max_tokens_default = 32
[deployments.chat.sim]
profile = "smollm2-135m-cpu"
cold_start = "100ms"
decode_step_base = "{step}"
decode_step_per_sequence = "0ms"
max_batch_size = {batch}
[deployments.chat.autoscaling]
min_replicas = {replicas}
max_replicas = {replicas}
{extra}
"#
    )
}

pub async fn get_json(url: &str) -> Option<(u16, Value)> {
    let mut response = client().get(url).send().await.ok()?;
    let status = response.status().as_u16();
    let body = response.body().limit(16 << 20).await.ok()?;
    Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// The `chat` deployment's status on a node.
pub async fn status(node: &Node) -> Option<Value> {
    match get_json(&format!("{}/admin/v1/deployments/chat", node.url)).await {
        Some((200, body)) => Some(body),
        _ => None,
    }
}

/// Waits until the node answers `/readyz` and, for a worker, has a ready replica.
pub async fn wait_ready(node: &Node, worker: bool) {
    wait_for(&format!("node {} to be ready", node.name), Duration::from_secs(20), || async {
        let (code, _) = get_json(&format!("{}/readyz", node.url)).await?;
        if code != 200 {
            return None;
        }
        if worker {
            let status = status(node).await?;
            (status["replicas"]["ready"].as_u64() == Some(1)).then_some(())
        } else {
            Some(())
        }
    })
    .await
}

/// A gateway `gw` and two workers `w1`, `w2` on `config`, once all answer `/readyz` (and,
/// with `replicas`, each worker has its ready replica).
pub async fn gateway_and_two_workers(dir: &TempDir, config: &Path, redis: &TestRedis, replicas: bool) -> (Node, Vec<Node>) {
    let gateway = Node::start(&dir.0, config, &redis.url(), "gateway", "gw");
    let workers = vec![
        Node::start(&dir.0, config, &redis.url(), "worker", "w1"),
        Node::start(&dir.0, config, &redis.url(), "worker", "w2"),
    ];
    wait_ready(&gateway, false).await;
    for worker in &workers {
        wait_ready(worker, replicas).await;
    }
    (gateway, workers)
}

/// Sequences the node's replicas are working on.
pub async fn active_sequences(node: &Node) -> u64 {
    let Some(status) = status(node).await else { return 0 };
    status["replica_details"]
        .as_array()
        .map(|replicas| replicas.iter().filter_map(|r| r["active_sequences"].as_u64()).sum())
        .unwrap_or(0)
}

pub async fn generated_tokens(node: &Node) -> u64 {
    let Some(status) = status(node).await else { return 0 };
    status["replica_details"]
        .as_array()
        .map(|replicas| replicas.iter().filter_map(|r| r["generated_tokens"].as_u64()).sum())
        .unwrap_or(0)
}

/// A streamed completion's request body: `max_tokens` tokens, seeded, with usage.
pub fn completion(max_tokens: u32, seed: u64) -> Value {
    json!({"model": "chat", "prompt": "Tell me a long story", "max_tokens": max_tokens, "ignore_eos": true,
           "seed": seed, "stream": true, "stream_options": {"include_usage": true}})
}

/// How a streamed request ended.
#[derive(Debug, Default)]
pub struct StreamResult {
    pub text: String,
    pub chunks: usize,
    pub usage: Option<Value>,
    pub done: bool,
    pub error: Option<Value>,
    /// The last SSE `id:` (tokens so far) and the chunks' `id` (`cmpl-…`).
    pub last_event_id: Option<u64>,
    pub response_id: Option<String>,
}

/// An open SSE response, read event by event.
pub struct SseStream {
    pub body: Pin<Box<dyn Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>>>>,
    pub buffer: String,
    pub result: StreamResult,
}

impl SseStream {
    /// POSTs `body`; `Err(status, body)` when not admitted.
    pub async fn open(base: &str, key: Option<&str>, body: &Value) -> Result<SseStream, (u16, String)> {
        let mut request = client().post(format!("{base}/v1/completions"));
        if let Some(key) = key {
            request = request.insert_header(("authorization", format!("Bearer {key}")));
        }
        let mut response = request.send_json(body).await.map_err(|e| (0, e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            let bytes = response.body().await.map(|b| b.to_vec()).unwrap_or_default();
            return Err((status, String::from_utf8_lossy(&bytes).into_owned()));
        }
        Ok(SseStream { body: Box::pin(response), buffer: String::new(), result: StreamResult::default() })
    }

    /// Resumes stream `stream_id` after event `last_event_id` (`GET /v1/streams/{id}`).
    pub async fn resume(base: &str, stream_id: &str, last_event_id: u64) -> Result<SseStream, (u16, String)> {
        let request = client().get(format!("{base}/v1/streams/{stream_id}")).insert_header(("last-event-id", last_event_id.to_string()));
        let mut response = request.send().await.map_err(|e| (0, e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            let bytes = response.body().await.map(|b| b.to_vec()).unwrap_or_default();
            return Err((status, String::from_utf8_lossy(&bytes).into_owned()));
        }
        Ok(SseStream { body: Box::pin(response), buffer: String::new(), result: StreamResult::default() })
    }

    /// Reads until the stream has at least `chunks` chunks or ended; `false` if it ended.
    pub async fn read_until(&mut self, chunks: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.result.chunks < chunks {
            if self.ended() {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let next = actix_rt::time::timeout(left, self.body.next()).await;
            match next {
                Err(_) => panic!("stream stalled: {:?}", self.result),
                Ok(None) => return false,
                Ok(Some(Err(error))) => {
                    self.result.error = Some(json!({"transport": error.to_string()}));
                    return false;
                }
                Ok(Some(Ok(bytes))) => self.feed(&String::from_utf8_lossy(&bytes)),
            }
        }
        true
    }

    pub fn ended(&self) -> bool {
        self.result.done || self.result.error.is_some()
    }

    pub fn feed(&mut self, text: &str) {
        self.buffer.push_str(text);
        while let Some(end) = self.buffer.find("\n\n") {
            let frame: String = self.buffer.drain(..end + 2).collect();
            for line in frame.lines() {
                if let Some(id) = line.strip_prefix("id:") {
                    self.result.last_event_id = Some(id.trim().parse().expect("a numeric event id"));
                }
                let Some(data) = line.strip_prefix("data:") else { continue };
                let data = data.trim();
                if data == "[DONE]" {
                    self.result.done = true;
                    continue;
                }
                let value: Value = serde_json::from_str(data).expect("a json event");
                if value.get("error").is_some() {
                    self.result.error = Some(value);
                    continue;
                }
                if let Some(id) = value["id"].as_str() {
                    self.result.response_id = Some(id.to_string());
                }
                if let Some(text) = value["choices"][0]["text"].as_str() {
                    self.result.text.push_str(text);
                    self.result.chunks += 1;
                }
                if !value["usage"].is_null() {
                    self.result.usage = Some(value["usage"].clone());
                }
            }
        }
    }

    /// Reads to the end (panics past `within`: a stream that hangs fails the test).
    pub async fn finish(mut self, within: Duration) -> StreamResult {
        self.read_until(usize::MAX, within).await;
        self.result
    }
}

/// One undisturbed run: the reference output of `completion(max_tokens, seed)`.
pub async fn reference(gateway: &Node, max_tokens: u32, seed: u64) -> String {
    let stream = SseStream::open(&gateway.url, None, &completion(max_tokens, seed)).await.expect("admitted");
    let result = stream.finish(Duration::from_secs(30)).await;
    assert!(result.done && result.error.is_none(), "{result:?}");
    result.text
}

/// Opens `per_node` streams on every gateway at once; answers the admitted streams and
/// the number refused with 429.
pub async fn hammer(gateways: &[&Node], key: &str, per_node: usize, max_tokens: u32) -> (Vec<SseStream>, usize) {
    let body = completion(max_tokens, 1);
    let opens = gateways
        .iter()
        .flat_map(|node| (0..per_node).map(move |_| node.url.clone()))
        .map(|url| {
            let body = body.clone();
            async move { SseStream::open(&url, Some(key), &body).await }
        });
    let mut admitted = Vec::new();
    let mut refused = 0;
    for outcome in futures_util::future::join_all(opens).await {
        match outcome {
            Ok(stream) => admitted.push(stream),
            Err((429, _)) => refused += 1,
            Err((status, body)) => panic!("unexpected answer {status}: {body}"),
        }
    }
    (admitted, refused)
}
