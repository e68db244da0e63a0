//! # swell: the gateway and control plane of Swell
//!
//! Swell serves LLM deployments the serverless way: each deployment scales with its
//! load, down to zero replicas when idle and back up when a request arrives. This crate
//! is the `swell` binary and the library behind it: the configuration, the
//! OpenAI-compatible HTTP and WebSocket API, the admin API, tenants and their keys, and
//! the wiring of the control plane (`swell-actors`), the queue (`swell-cluster`) and the
//! engines (`swell-workers`).
//!
//! A request's path: the HTTP layer ([`api`]) authenticates the tenant and reads the
//! body; the generation service ([`generation`]) parses it, finds the deployment named by
//! `model`, validates and tokenizes the request against it, and hands it to
//! `swell_actors::request::submit`, which takes it through the tenant's quota into the
//! deployment's queue and relays the replica's output back as events; the HTTP layer
//! streams those events (SSE or WebSocket) or collects them into one response. The Redis
//! ingress ([`ingress`]) calls the same service. A client that goes away drops the event
//! stream, which cancels the request. `docs/architecture.md` follows one request by file.
//!
//! # Layout
//! - [`config`]: the TOML `Config`, one file per section, and `validate()` naming keys.
//! - [`engines`]: building a deployment's engine factory from its config.
//! - [`deployments`]: the registry name → running deployment (its supervisor, tokenizer
//!   and limits), and `DeploymentError`.
//! - [`tenants`]: tenants, API keys (generated, hashed, looked up), their quotas, and
//!   `TenantError`.
//! - [`state`]: `AppState`, what every handler shares.
//! - [`generation`]: the generation service: body parsing, validation, admission, event
//!   encoding, and `GenerationError`. Knows nothing of HTTP.
//! - [`api`]: the HTTP and WebSocket layer: routes, handlers, extractors, SSE and
//!   WebSocket framing, and `ApiError`, the one place where errors become HTTP statuses.
//! - [`ingress`]: the Redis ingress stream: requests pushed into Redis by other
//!   programs, admitted through [`generation`] like HTTP requests, answered on `reply_to`.
//! - [`cluster_node`]: a node of a cluster (`--redis`): heartbeat, leader election, the
//!   leader's cluster-wide autoscalers and placement, each node following its assignment.
//! - [`server`]: `start` / `ServerHandle::stop`, used by `swell serve` and by tests.
//! - [`metrics`]: the gateway's metrics and the process-wide Prometheus recorder.

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
