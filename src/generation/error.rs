//! `GenerationError`: every way a generation request can fail, from its body to its last
//! token, whichever door it came in by (HTTP, WebSocket or the Redis ingress). Each has a
//! stable [`code`](GenerationError::code); the HTTP status of each is decided in
//! `crate::api::error`, the ingress reply in `crate::ingress::reply`.

use std::time::Duration;

use swell_actors::quota::{LimitKind, QuotaRejection};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerationError {
    // -- the request body or its parameters --------------------------------------------
    /// The body is not JSON (or not complete JSON).
    #[error("the request body is not valid json: {0}")]
    InvalidJson(String),
    /// A parameter has the wrong JSON type.
    #[error("{message}")]
    InvalidType { message: String, param: Option<String> },
    #[error("missing required parameter: `{0}`")]
    MissingParameter(String),
    /// A body that allows no unknown fields (the admin API's) has one.
    #[error("unknown parameter: `{param}`{expected}")]
    UnknownParameter { param: String, expected: String },
    /// A parameter is out of range or malformed.
    #[error("{message}")]
    InvalidValue { message: String, param: String },
    /// A field no OpenAI endpoint or known extension has (OpenAI's own answer to one).
    #[error("Unrecognized request argument supplied: {0}")]
    UnrecognizedArgument(String),
    /// A parameter OpenAI accepts but Swell does not support (yet).
    #[error("{message}")]
    UnsupportedParameter { message: String, param: String },
    /// Prompt plus `max_tokens` exceed the model's context.
    #[error("{message}")]
    ContextLengthExceeded { message: String, param: String },
    /// `max_tokens` is beyond what the deployment allows.
    #[error("{message}")]
    MaxTokensExceedsLimit { message: String, param: String },
    #[error("the request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the prompt could not be processed: {0}")]
    InvalidPrompt(String),
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    /// No stream of this id to resume: unknown, expired or another tenant's (one answer
    /// for all three, so a tenant learns nothing of another's requests).
    #[error("no stream `{0}` to resume (unknown, expired, or not resumable)")]
    StreamNotFound(String),

    // -- admission ------------------------------------------------------------------------
    /// A tenant quota refused the request.
    #[error("{}", .0.message())]
    Quota(Box<QuotaRejection>),
    #[error("the queue of model `{deployment}` is full ({depth} waiting); retry later")]
    QueueFull { deployment: String, depth: u64, retry_after: Duration },
    #[error("model `{deployment}` is unavailable: {reason}")]
    DeploymentUnavailable { deployment: String, reason: String },
    /// The shared queue (Redis) cannot be reached; nothing was enqueued.
    #[error("the request queue is unreachable, retry later: {0}")]
    QueueUnavailable(String),
    /// A worker node serves no inference API.
    #[error("this node is a worker ({role} role) and serves no inference api; send requests to a gateway node")]
    NotAGateway { role: &'static str },
    #[error("the server is shutting down")]
    ShuttingDown,

    // -- generation -----------------------------------------------------------------------
    /// The request was admitted but failed while queued or generating; `code` comes from
    /// the replica or the queue (`deadline_exceeded`, `engine_failure`, ...).
    #[error("{message}")]
    Failed { code: String, message: String },

    #[error("internal error: {0}")]
    Internal(String),
}

impl GenerationError {
    pub fn invalid_value(param: impl Into<String>, message: impl Into<String>) -> Self {
        GenerationError::InvalidValue { param: param.into(), message: message.into() }
    }

    pub fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Self {
        GenerationError::UnsupportedParameter { param: param.into(), message: message.into() }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            GenerationError::InvalidJson(_) => "invalid_json",
            GenerationError::InvalidType { .. } => "invalid_type",
            GenerationError::MissingParameter(_) => "missing_required_parameter",
            GenerationError::UnknownParameter { .. } => "unknown_parameter",
            GenerationError::UnrecognizedArgument(_) => "unrecognized_argument",
            GenerationError::InvalidValue { .. } => "invalid_value",
            GenerationError::UnsupportedParameter { .. } => "unsupported_parameter",
            GenerationError::ContextLengthExceeded { .. } => "context_length_exceeded",
            GenerationError::MaxTokensExceedsLimit { .. } => "max_tokens_exceeds_limit",
            GenerationError::BodyTooLarge { .. } => "request_body_too_large",
            GenerationError::InvalidPrompt(_) => "invalid_prompt",
            GenerationError::ModelNotFound(_) => "model_not_found",
            GenerationError::StreamNotFound(_) => "stream_not_found",
            GenerationError::Quota(rejection) => match (rejection.limit, rejection.retry_after) {
                (_, None) => "request_too_large",
                (LimitKind::ConcurrentRequests, Some(_)) => "concurrency_limit_exceeded",
                (_, Some(_)) => "rate_limit_exceeded",
            },
            GenerationError::QueueFull { .. } => "queue_full",
            GenerationError::DeploymentUnavailable { .. } => "deployment_unavailable",
            GenerationError::QueueUnavailable(_) => "queue_unavailable",
            GenerationError::NotAGateway { .. } => "not_a_gateway",
            GenerationError::ShuttingDown => "shutting_down",
            GenerationError::Failed { code, .. } => code,
            GenerationError::Internal(_) => "internal_error",
        }
    }

    /// The parameter the error is about, when there is one.
    pub fn param(&self) -> Option<&str> {
        match self {
            GenerationError::InvalidType { param, .. } => param.as_deref(),
            GenerationError::MissingParameter(param)
            | GenerationError::UnrecognizedArgument(param)
            | GenerationError::UnknownParameter { param, .. }
            | GenerationError::InvalidValue { param, .. }
            | GenerationError::UnsupportedParameter { param, .. }
            | GenerationError::ContextLengthExceeded { param, .. }
            | GenerationError::MaxTokensExceedsLimit { param, .. } => Some(param),
            GenerationError::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    /// How long the client should wait before retrying, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GenerationError::Quota(rejection) => rejection.retry_after,
            GenerationError::QueueFull { retry_after, .. } => Some(*retry_after),
            GenerationError::DeploymentUnavailable { .. } | GenerationError::ShuttingDown => {
                Some(Duration::from_secs(5))
            }
            GenerationError::QueueUnavailable(_) => Some(Duration::from_secs(2)),
            _ => None,
        }
    }
}
