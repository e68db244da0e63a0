//! # swell: the gateway and control plane of Swell
//!
//! Swell serves LLM deployments the serverless way: each deployment scales with its
//! load, down to zero replicas when idle and back up when a request arrives. This crate
//! is the `swell` binary and the library behind it: the configuration, the
//! OpenAI-compatible HTTP and WebSocket API, the admin API, tenants and their keys, and
//! the wiring of the control plane (`swell-actors`), the queue (`swell-cluster`) and the
//! engines (`swell-workers`).
//!
//! A request's path: the API authenticates the tenant, finds the deployment named by
//! `model`, validates and tokenizes the request against it, and hands it to
//! `swell_actors::request::submit`, which takes it through the tenant's quota into the
//! deployment's queue and relays the replica's output back as events. The API streams
//! those events (SSE or WebSocket) or collects them into one response. A client that
//! goes away drops the event stream, which cancels the request.
//!
//! # Layout
//! - [`config`]: the TOML `Config`, defaults, and `validate()` naming keys.
//! - [`engines`]: which engine serves a deployment; the default deployment.
//! - [`deployments`]: the registry name → running deployment (its supervisor, tokenizer
//!   and limits).
//! - [`tenants`]: tenants, API keys (generated, hashed, looked up) and their quotas.
//! - [`state`]: `AppState`, what every handler shares.
//! - [`ingress`]: the Redis ingress stream: requests pushed into Redis by other
//!   programs, validated and admitted like HTTP requests, answered on `reply_to`.
//! - [`cluster_node`]: a node of a cluster (`--redis`): heartbeat, leader election, the
//!   leader's cluster-wide autoscalers and placement, each node following its assignment.
//! - [`server`]: `start` / `ServerHandle::stop`, used by `swell serve` and by tests.
//! - [`metrics`]: the gateway's metrics and the process-wide Prometheus recorder.
//! - [`api`]: the HTTP and WebSocket API:
//!   - `error`: `ApiError`, its codes and its one mapping to HTTP statuses;
//!   - `openai_types`, `validate`: OpenAI bodies and their validation into
//!     generation requests;
//!   - `generation`: admitting a request's jobs and merging their event streams;
//!   - `stream_encoder`, `collect`, `sse`, `ws_protocol`: events → chunks → SSE frames,
//!     WebSocket frames or one collected response;
//!   - `openai`, `ws`, `admin`, `health`: the handlers; `routes`, `middleware`, `auth`,
//!     `json_body`, `ratelimit_headers`: what they share.

pub mod api;
pub mod cluster_node;
pub mod config;
pub mod deployments;
pub mod engines;
pub mod generation;
pub mod ingress;
pub mod metrics;
pub mod server;
pub mod state;
pub mod tenants;

pub use config::Config;
pub use server::{start, ServerHandle};
