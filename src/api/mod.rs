//! The HTTP and WebSocket layer: OpenAI-compatible endpoints under `/v1`, the admin API
//! under `/admin/v1`, health and metrics. Handlers are thin: they authenticate, read the
//! body and call the generation service (`crate::generation`), then frame its events as
//! SSE or WebSocket messages. [`error`] is the one place where any error (the service's,
//! a deployment's, a tenant's, or the API's own) becomes an HTTP status and body.
//!
//! # Layout
//! - [`routes`], [`middleware`]: the route table, request ids and spans, 404/405.
//! - [`auth`], [`json_body`], [`client_gone`], [`ratelimit_headers`]: what handlers share.
//! - [`openai`], [`streams`], [`ws`], [`admin`], [`health`]: the handlers.
//! - [`sse`], [`ws_protocol`]: SSE frames, WebSocket messages.
//! - [`error`]: `ApiError` and its mapping to HTTP.

pub mod admin;
pub mod auth;
pub mod client_gone;
pub mod error;
pub mod health;
pub mod json_body;
pub mod middleware;
pub mod openai;
pub mod ratelimit_headers;
pub mod routes;
pub mod sse;
pub mod streams;
pub mod ws;
pub mod ws_protocol;

pub use error::ApiError;
