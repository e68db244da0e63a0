//! The HTTP and WebSocket API: OpenAI-compatible endpoints under `/v1`, the admin API
//! under `/admin/v1`, health and metrics. Handlers are thin: authentication, parsing and
//! validation, admission and response encoding each live in their own module as plain
//! functions and structs.

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
pub mod ws;
pub mod ws_protocol;

pub use error::ApiError;
