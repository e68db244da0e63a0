//! The generation service: what HTTP, WebSocket and the Redis ingress all call to turn a
//! request body into tokens. It knows nothing of HTTP: its errors are
//! [`GenerationError`]s, which `crate::api::error` maps to HTTP statuses and
//! `crate::ingress::reply` to ingress replies.
//!
//! A request's way through it: [`json`] parses the body into the OpenAI types of
//! [`openai_types`]; [`resolve`](resolve::resolve) finds the deployment named by `model`
//! and [`validate`] checks and tokenizes the request against it; [`admit`] takes it
//! through the tenant's quota into the queue (one job per choice) and merges the jobs'
//! event streams; [`stream_encoder`] turns events into OpenAI chunks (for SSE, WebSocket
//! frames or ingress replies) and [`collect`] into one response.
//!
//! # Layout
//! - [`error`]: `GenerationError`, with a stable code per failure.
//! - [`json`]: JSON bodies into typed structs, errors naming the parameter.
//! - [`openai_types`]: the OpenAI request and response bodies.
//! - [`messages`]: chat messages into the turns the chat template renders.
//! - [`fields`]: which fields outside the typed ones are accepted, refused or unknown.
//! - [`structured`]: `response_format` and the guided-decoding extensions into the
//!   constraint the engine enforces.
//! - [`tools`]: `tools` and `tool_choice`: instructions, the output's schema, and the
//!   output read back into tool calls; [`tool_stream`] reads it as it streams;
//!   [`tool_format`]: the tool-call format of the model's own template (Hermes, Llama 3).
//! - [`validate`]: bodies into validated, tokenized generation requests.
//! - [`resolve`]: the deployment of a request, and validation against it.
//! - [`admit`]: admission (quota, queue) and the merged event stream.
//! - [`stream_encoder`], [`collect`]: events into chunks, or into one response.
//! - [`resume`]: a stream resumed after the last event its client received.

pub mod admit;
pub mod collect;
pub mod error;
pub mod fields;
pub mod json;
pub mod messages;
pub mod openai_types;
pub mod resolve;
pub mod resume;
pub mod stream_encoder;
pub mod structured;
pub mod tool_format;
pub mod tool_stream;
pub mod tools;
pub mod validate;

pub use error::GenerationError;
