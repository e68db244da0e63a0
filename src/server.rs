//! Starting and stopping a whole Swell server in the current actix system: what
//! `swell serve` runs, and what integration tests start on port 0.
//!
//! ```no_run
//! # async fn example() -> Result<(), swell::server::ServerError> {
//! let mut config = swell::config::Config::default();
//! config.server.listen = "127.0.0.1:0".parse().unwrap();
//! let server = swell::server::start(config).await?;
//! println!("serving on http://{}", server.addr);
//! server.stop(true).await;
//! # Ok(())
//! # }
//! ```
//!
//! Shutdown is graceful: `/readyz` turns 503, the listener closes, in-flight requests
//! (streams included) get `server.shutdown_timeout` to finish, then every deployment
//! drains its replicas and the control plane stops.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_rt::Arbiter;
use actix_web::{web, App, HttpServer};
use swell_actors::supervisor::{HandBackAll, Shutdown};
use swell_cluster::{InMemoryQueue, InMemoryQueueConfig, Queue, RedisQueue};

use crate::deployments::DeploymentError;
use crate::api::middleware::{request_context, route_not_found};
use crate::api::routes::routes;
use crate::config::{Config, ConfigError};
use crate::ingress::{start_ingress, IngressConfig, IngressHandle};
use crate::metrics;
use crate::state::AppState;
use crate::tenants::TenantError;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start: {0}")]
    Tenants(#[from] TenantError),
    #[error("cannot start: {0}")]
    Deployments(#[from] DeploymentError),
    #[error("cannot reach redis at {url} (cluster.redis_url): {error}")]
    Redis { url: String, error: swell_cluster::QueueError },
    #[error("cannot start the ingress stream reader: {0}")]
    Ingress(String),
    #[error("cannot join the cluster: {0}")]
    Cluster(String),
}

/// A running server.
pub struct ServerHandle {
    /// The bound address (the real port when the config said port 0).
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    server: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    control: Arbiter,
    /// The ingress stream reader of a gateway node of a cluster.
    ingress: Option<IngressHandle>,
}

/// Starts a server: with `cluster.redis_url`, a node of a cluster on that Redis (the
/// shared `RedisQueue`, quotas in Redis, the role of `cluster.role`); without it, the
/// embedded in-memory queue and local quotas.
pub async fn start(config: Config) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    match config.cluster.redis_queue_config() {
        None => {
            let queue = InMemoryQueue::new(InMemoryQueueConfig {
                output_retention: config.queue.output_retention,
                ..InMemoryQueueConfig::default()
            });
            start_with_queue(config, Arc::new(queue)).await
        }
        Some(queue_config) => {
            let url = redact(&queue_config.url);
            let redis = RedisQueue::connect(queue_config)
                .await
                .map_err(|error| ServerError::Redis { url, error })?;
            let redis = Arc::new(redis);
            start_node(config, redis.clone(), Some(redis)).await
        }
    }
}

/// A Redis url without its password (for errors and logs).
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Starts a server on a given queue. Must run inside an actix system (`actix_rt::System`,
/// `#[actix_rt::test]`); the control plane gets its own arbiter (thread).
pub async fn start_with_queue(config: Config, queue: Arc<dyn Queue>) -> Result<ServerHandle, ServerError> {
    start_node(config, queue, None).await
}

async fn start_node(
    config: Config,
    queue: Arc<dyn Queue>,
    redis: Option<Arc<RedisQueue>>,
) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    metrics::install();
    let control = Arbiter::new();
    let state = match AppState::for_node(config, queue, redis, control.handle()) {
        Ok(state) => Arc::new(state),
        Err(error) => {
            control.stop();
            return Err(error.into());
        }
    };
    if let Err(error) = state.start_configured_deployments() {
        shutdown_control_plane(&state, control, false).await;
        return Err(error.into());
    }
    if let Some(redis) = state.node.redis.clone() {
        let weak = Arc::downgrade(&state);
        let interval = state.config.cluster.health_interval;
        control.spawn(watch_redis(redis, weak, interval));
    }
    let listen = state.config.server.listen;
    let data = web::Data::from(state.clone());
    let mut http = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap_fn(request_context)
            .configure(routes)
            .default_service(web::to(route_not_found))
    })
    .on_connect(crate::api::client_gone::remember_socket)
    .shutdown_timeout(state.config.server.shutdown_timeout.as_secs().max(1))
    .disable_signals();
    if let Some(workers) = state.config.server.workers {
        http = http.workers(workers);
    }
    let http = match http.bind(listen) {
        Ok(http) => http,
        Err(source) => {
            shutdown_control_plane(&state, control, false).await;
            return Err(ServerError::Bind { addr: listen, source });
        }
    };
    let addr = http.addrs().first().copied().unwrap_or(listen);
    let server = http.run();
    let handle = server.handle();
    let task = actix_rt::spawn(server);
    tracing::info!(
        %addr,
        deployments = state.deployments.len(),
        role = state.node.role.as_str(),
        node = %state.node.node_id,
        distributed = state.node.is_distributed(),
        "swell is serving"
    );
    if state.node.is_distributed() {
        match crate::cluster_node::ClusterNode::start(&state, Some(addr.to_string())).await {
            Ok(node) => {
                let _ = state.cluster.set(Arc::new(node));
            }
            Err(error) => {
                handle.stop(false).await;
                shutdown_control_plane(&state, control, false).await;
                return Err(ServerError::Cluster(error.to_string()));
            }
        }
    }
    let ingress = match start_node_ingress(&state).await {
        Ok(ingress) => ingress,
        Err(error) => {
            handle.stop(false).await;
            leave_cluster(&state).await;
            shutdown_control_plane(&state, control, false).await;
            return Err(error);
        }
    };
    Ok(ServerHandle { addr, state, server: handle, task, control, ingress })
}

/// A gateway node of a cluster reads the Redis ingress stream (unless `[ingress]
/// enabled = false`), with the queue's key prefix.
async fn start_node_ingress(state: &Arc<AppState>) -> Result<Option<IngressHandle>, ServerError> {
    let config = &state.config;
    let Some(url) = config.cluster.redis_url.as_deref() else { return Ok(None) };
    if !config.ingress.enabled || !state.node.role.serves_api() {
        return Ok(None);
    }
    let ingress_config = IngressConfig { key_prefix: config.cluster.key_prefix.clone(), ..config.ingress.clone() };
    let handle = start_ingress(state.clone(), url, ingress_config)
        .await
        .map_err(|error| ServerError::Ingress(error.to_string()))?;
    let stream = swell_cluster::ingress_wire::ingress_stream_key(&config.cluster.key_prefix);
    tracing::info!(%stream, "reading the ingress stream");
    Ok(Some(handle))
}

impl ServerHandle {
    /// The base URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server. Graceful: in-flight requests finish (within
    /// `server.shutdown_timeout`) and deployments drain; otherwise everything stops now.
    pub async fn stop(self, graceful: bool) {
        self.state.begin_shutdown();
        if let Some(ingress) = self.ingress {
            ingress.stop(self.state.config.server.shutdown_timeout).await;
        }
        tracing::info!(graceful, "shutting down");
        // Leave the cluster first: the leader re-places this node's replicas on the
        // others at once while this one drains.
        leave_cluster(&self.state).await;
        self.server.stop(graceful).await;
        let _ = self.task.await;
        shutdown_control_plane(&self.state, self.control, graceful).await;
        tracing::info!("stopped");
    }
}

async fn leave_cluster(state: &AppState) {
    if let Some(node) = state.cluster.get() {
        node.shutdown().await;
    }
}

/// Pings Redis every `interval` and records whether it answers (`/readyz`, and new
/// requests fail fast with 503 while it does not). Ends with the state.
async fn watch_redis(redis: Arc<RedisQueue>, state: std::sync::Weak<AppState>, interval: std::time::Duration) {
    loop {
        let up = redis.ping().await.is_ok();
        let Some(state) = state.upgrade() else { return };
        state.node.set_redis_up(up);
        drop(state);
        tokio::time::sleep(interval).await;
    }
}

/// How long a shutting-down cluster node gives its replicas to release their jobs.
const HAND_BACK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Drains every deployment (when graceful, within the shutdown timeout), then stops the
/// control-plane arbiter.
async fn shutdown_control_plane(state: &AppState, control: Arbiter, graceful: bool) {
    if graceful {
        let drains = state.deployments.list().into_iter().map(|deployment| async move {
            let _ = deployment.supervisor.send(Shutdown).await;
        });
        let timeout = state.config.server.shutdown_timeout;
        if tokio::time::timeout(timeout, futures_util::future::join_all(drains)).await.is_err() {
            tracing::warn!(?timeout, "deployments did not drain in time");
            if state.node.is_distributed() {
                // Hand the unfinished jobs back so other nodes resume them now, not
                // after their leases expire.
                for deployment in state.deployments.list() {
                    let _ = deployment.supervisor.send(HandBackAll).await;
                }
                tokio::time::sleep(HAND_BACK_WAIT).await;
            }
        }
    }
    control.stop();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use awc::ws;
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{json, Value};

    use super::*;
    use crate::config::DeploymentConfig;

    /// A `zero` profile (no service time) deployment with one replica kept up.
    fn instant_deployment() -> DeploymentConfig {
        let mut deployment = DeploymentConfig::sim_profile("zero");
        deployment.autoscaling.min_replicas = 1;
        deployment
    }

    async fn next_json<S>(socket: &mut S) -> Value
    where
        S: futures_util::Stream<Item = Result<ws::Frame, awc::error::WsProtocolError>> + Unpin,
    {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(60), socket.next())
                .await
                .expect("a frame in time")
                .expect("the socket is open")
                .expect("a valid frame");
            match frame {
                ws::Frame::Text(bytes) => return serde_json::from_slice(&bytes).unwrap(),
                ws::Frame::Ping(_) | ws::Frame::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    #[test]
    fn redis_passwords_are_not_shown() {
        assert_eq!(redact("redis://user:secret@10.0.0.5:6379/1"), "redis://***@10.0.0.5:6379/1");
        assert_eq!(redact("redis://10.0.0.5:6379"), "redis://10.0.0.5:6379");
    }

    #[actix_rt::test]
    async fn a_server_starts_on_port_zero_serves_and_stops() {
        let config = Config::ephemeral().with_deployment("chat", instant_deployment());
        let server = start(config).await.unwrap();
        assert_ne!(server.addr.port(), 0);
        let client = awc::Client::new();
        let mut health = client.get(format!("{}/healthz", server.url())).send().await.unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(health.json::<Value>().await.unwrap(), json!({"status": "ok"}));
        let mut chat = client
            .post(format!("{}/v1/chat/completions", server.url()))
            .send_json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}))
            .await
            .unwrap();
        assert_eq!(chat.status(), 200);
        assert!(chat.headers().contains_key("x-request-id"));
        let body: Value = chat.json().await.unwrap();
        assert_eq!(body["usage"]["completion_tokens"], 3);
        server.stop(true).await;
    }

    /// A deployment with real (SmolLM2-on-CPU) decode timing, one replica kept up.
    fn timed_deployment() -> DeploymentConfig {
        let mut deployment = DeploymentConfig::sim_profile("smollm2-135m-cpu");
        if let Some(sim) = deployment.sim.as_mut() {
            sim.cold_start = Some(Duration::from_millis(100));
        }
        deployment.autoscaling.min_replicas = 1;
        deployment
    }

    #[actix_rt::test]
    async fn websocket_requests_stream_side_by_side_and_cancel() {
        let config = Config::ephemeral()
            .with_deployment("chat", instant_deployment())
            .with_deployment("slow", timed_deployment());
        let server = start(config).await.unwrap();
        let (_, mut socket) = awc::Client::new().ws(format!("{}/v1/ws", server.url())).connect().await.unwrap();
        let request = |id: &str, model: &str, max_tokens: u32| {
            json!({"id": id, "type": "chat.completion", "request": {
                "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "ignore_eos": true}})
            .to_string()
        };
        // `a` runs for a long while; `b` is quick; the second `a` is a duplicate.
        socket.send(ws::Message::Text(request("a", "slow", 8000).into())).await.unwrap();
        socket.send(ws::Message::Text(request("b", "chat", 5).into())).await.unwrap();
        socket.send(ws::Message::Text(request("a", "chat", 5).into())).await.unwrap();
        socket.send(ws::Message::Text(r#"{"id": "x", "type": "subscribe"}"#.into())).await.unwrap();
        socket.send(ws::Message::Text("{oops".into())).await.unwrap();
        let mut done = Vec::new();
        let mut errors = Vec::new();
        let mut chunks_of_a = 0;
        while done.is_empty() || errors.len() < 3 || chunks_of_a < 3 {
            let frame = next_json(&mut socket).await;
            match frame["type"].as_str().unwrap() {
                "done" => done.push(frame["id"].as_str().unwrap().to_string()),
                "chunk" if frame["id"] == "a" => chunks_of_a += 1,
                "error" => errors.push((frame["id"].clone(), frame["error"]["code"].as_str().unwrap().to_string())),
                "chunk" | "status" => {}
                other => panic!("unexpected frame type {other}"),
            }
        }
        assert_eq!(done, ["b"]);
        errors.sort_by_key(|e| e.1.clone());
        assert_eq!(
            errors,
            [
                (json!("a"), "duplicate_id".to_string()),
                (Value::Null, "invalid_json".to_string()),
                (json!("x"), "unknown_message_type".to_string()),
            ]
        );

        // `a` is still streaming: cancel it.
        socket.send(ws::Message::Text(r#"{"id": "a", "type": "cancel"}"#.into())).await.unwrap();
        loop {
            let frame = next_json(&mut socket).await;
            assert_ne!(frame["type"], "done");
            if frame["type"] == "error" {
                assert_eq!(frame["id"], "a");
                assert_eq!(frame["error"]["code"], "cancelled");
                break;
            }
        }
        socket.send(ws::Message::Text(r#"{"id": "a", "type": "cancel"}"#.into())).await.unwrap();
        assert_eq!(next_json(&mut socket).await["error"]["code"], "unknown_request_id");
        socket.send(ws::Message::Close(None)).await.unwrap();
        server.stop(true).await;
    }

    #[actix_rt::test]
    async fn websocket_clients_authenticate_by_message_and_deleted_models_are_gone() {
        let config = Config::ephemeral().with_deployment("chat", instant_deployment());
        let server = start(config).await.unwrap();
        let key = server.state.tenants.create_key(crate::tenants::ANONYMOUS_TENANT).unwrap();
        let (_, mut socket) = awc::Client::new().ws(format!("{}/v1/ws", server.url())).connect().await.unwrap();
        let request = json!({"id": "a", "type": "completion", "request": {"model": "chat", "prompt": "hi", "max_tokens": 2}}).to_string();
        socket.send(ws::Message::Text(request.clone().into())).await.unwrap();
        let refused = next_json(&mut socket).await;
        assert_eq!(refused["error"]["code"], "unauthorized");
        socket.send(ws::Message::Text(json!({"type": "auth", "api_key": "sk-swell-wrong"}).to_string().into())).await.unwrap();
        assert_eq!(next_json(&mut socket).await["error"]["code"], "invalid_api_key");
        socket.send(ws::Message::Text(json!({"type": "auth", "api_key": key.api_key}).to_string().into())).await.unwrap();
        assert_eq!(next_json(&mut socket).await, json!({"type": "authenticated", "tenant": "anonymous"}));
        socket.send(ws::Message::Text(request.into())).await.unwrap();
        loop {
            let frame = next_json(&mut socket).await;
            assert_ne!(frame["type"], "error", "{frame}");
            if frame["type"] == "done" {
                assert_eq!(frame["usage"]["completion_tokens"], 2);
                break;
            }
        }

        let client = awc::Client::new();
        let deleted = client.delete(format!("{}/admin/v1/deployments/chat", server.url())).send().await.unwrap();
        assert_eq!(deleted.status(), 202);
        let mut gone = client
            .post(format!("{}/v1/completions", server.url()))
            .insert_header(("authorization", format!("Bearer {}", key.api_key)))
            .send_json(&json!({"model": "chat", "prompt": "hi"}))
            .await
            .unwrap();
        assert_eq!(gone.status(), 404);
        assert_eq!(gone.json::<Value>().await.unwrap()["error"]["code"], "model_not_found");
        server.stop(true).await;
    }
}
