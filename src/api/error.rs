//! `ApiError`: every way an API call can fail, each with a stable `code()` (the JSON
//! `error.code`, the metric label and the log field). The domain errors
//! ([`GenerationError`], [`DeploymentError`], [`TenantError`]) are carried inside it;
//! the HTTP status of every error is decided in exactly one place,
//! `ResponseError::status_code` below, and the OpenAI error `type` is derived from the
//! status. Bodies have OpenAI's shape: `{"error": {"message", "type", "code", "param"}}`.

use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};

use crate::api::ratelimit_headers::{insert_rate_limit_headers, retry_after_seconds};
use crate::deployments::DeploymentError;
use crate::generation::GenerationError;
use crate::tenants::TenantError;

/// Every error the HTTP and WebSocket APIs answer with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    // -- the domain ------------------------------------------------------------------------
    /// A generation request's body, admission or generation failed.
    #[error(transparent)]
    Generation(#[from] GenerationError),
    /// Creating, changing or reaching a deployment failed.
    #[error(transparent)]
    Deployment(#[from] DeploymentError),
    /// Authentication, or managing a tenant or its keys, failed.
    #[error(transparent)]
    Tenant(#[from] TenantError),

    // -- routing --------------------------------------------------------------------------
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },

    // -- authentication of the admin api and /metrics ------------------------------------
    #[error("missing or invalid admin token: send `Authorization: Bearer <admin token>`")]
    InvalidAdminToken,
    #[error("the admin api is disabled: no admin token is configured and the server does not listen on loopback only")]
    AdminDisabled,
    #[error("missing or invalid metrics token: send `Authorization: Bearer <metrics token or admin token>`")]
    InvalidMetricsToken,
    #[error("/metrics is closed: set server.metrics_token (or server.admin_token) for scrapers, or server.metrics_public = true")]
    MetricsDisabled,

    // -- admin ----------------------------------------------------------------------------
    #[error("invalid {kind} name `{name}`: use 1 to 64 of a-z, A-Z, 0-9, `.`, `_`, `-`, `:` starting with a letter or digit")]
    InvalidName { kind: &'static str, name: String },

    // -- websocket ------------------------------------------------------------------------
    #[error("this endpoint takes websocket connections: {0}")]
    WebSocketUpgradeRequired(String),
    /// A well-formed JSON message that is not a valid client message.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    #[error("unknown message type `{0}`; known types: chat.completion, completion, cancel, auth")]
    UnknownMessageType(String),
    #[error("binary messages are not supported: send json text messages")]
    BinaryNotSupported,
    #[error("not authenticated: send {{\"type\": \"auth\", \"api_key\": \"...\"}} first")]
    Unauthorized,
    #[error("a request with id `{0}` is already in flight on this connection")]
    DuplicateId(String),
    #[error("no request with id `{0}` is in flight on this connection")]
    UnknownRequestId(String),
    #[error("at most {limit} requests may be in flight on one connection")]
    TooManyRequestsOnConnection { limit: usize },

    #[error("internal error: {0}")]
    Internal(String),
}

/// OpenAI's error body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: String,
    pub param: Option<String>,
}

impl ApiError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            ApiError::Generation(error) => error.code(),
            ApiError::Deployment(error) => error.code(),
            ApiError::Tenant(error) => error.code(),
            ApiError::RouteNotFound { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::InvalidAdminToken => "invalid_admin_token",
            ApiError::AdminDisabled => "admin_disabled",
            ApiError::InvalidMetricsToken => "invalid_metrics_token",
            ApiError::MetricsDisabled => "metrics_disabled",
            ApiError::InvalidName { .. } => "invalid_name",
            ApiError::WebSocketUpgradeRequired(_) => "websocket_upgrade_required",
            ApiError::InvalidMessage(_) => "invalid_message",
            ApiError::UnknownMessageType(_) => "unknown_message_type",
            ApiError::BinaryNotSupported => "binary_not_supported",
            ApiError::Unauthorized => "unauthorized",
            ApiError::DuplicateId(_) => "duplicate_id",
            ApiError::UnknownRequestId(_) => "unknown_request_id",
            ApiError::TooManyRequestsOnConnection { .. } => "too_many_requests_on_connection",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The parameter the error is about, when there is one.
    pub fn param(&self) -> Option<&str> {
        match self {
            ApiError::Generation(error) => error.param(),
            ApiError::Deployment(error) => error.param(),
            ApiError::Tenant(TenantError::InvalidConfig { param, .. }) => param.as_deref(),
            _ => None,
        }
    }

    /// OpenAI's error `type`, derived from the status.
    pub fn kind(&self) -> &'static str {
        match self.status_code() {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            status if status.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind: self.kind().to_string(),
                code: self.code().to_string(),
                param: self.param().map(str::to_string),
            },
        }
    }

    /// How long the client should wait before retrying, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Generation(error) => error.retry_after(),
            ApiError::Deployment(DeploymentError::Unavailable { .. }) => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

/// Status of a generation request's failure.
fn generation_status(error: &GenerationError) -> StatusCode {
    match error {
        GenerationError::InvalidJson(_)
        | GenerationError::InvalidType { .. }
        | GenerationError::MissingParameter(_)
        | GenerationError::UnknownParameter { .. }
        | GenerationError::UnrecognizedArgument(_)
        | GenerationError::InvalidValue { .. }
        | GenerationError::UnsupportedParameter { .. }
        | GenerationError::ContextLengthExceeded { .. }
        | GenerationError::MaxTokensExceedsLimit { .. }
        | GenerationError::InvalidPrompt(_) => StatusCode::BAD_REQUEST,
        GenerationError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        GenerationError::ModelNotFound(_) | GenerationError::StreamNotFound(_) => StatusCode::NOT_FOUND,
        GenerationError::Quota(_) => StatusCode::TOO_MANY_REQUESTS,
        GenerationError::QueueFull { .. }
        | GenerationError::DeploymentUnavailable { .. }
        | GenerationError::QueueUnavailable(_)
        | GenerationError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        GenerationError::NotAGateway { .. } => StatusCode::MISDIRECTED_REQUEST,
        GenerationError::Failed { code, .. } => failure_status(code),
        GenerationError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Status of a generation failure code (a failure reported by a replica or the queue).
fn failure_status(code: &str) -> StatusCode {
    match code {
        "invalid_prompt" => StatusCode::BAD_REQUEST,
        // The client cancelled it (nginx's "client closed request").
        "cancelled" => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        // Waited too long in the queue, or the queue or the deployment went away.
        "deadline_exceeded" | "queue_unavailable" | "deployment_deleted" | "shutting_down" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ResponseError for ApiError {
    /// The one place where an error becomes an HTTP status.
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Generation(error) => generation_status(error),
            ApiError::Deployment(error) => match error {
                DeploymentError::UnknownEngine { .. } | DeploymentError::InvalidConfig { .. } => StatusCode::BAD_REQUEST,
                DeploymentError::NotFound(_) => StatusCode::NOT_FOUND,
                DeploymentError::EngineChangeRequiresRecreate(_) => StatusCode::CONFLICT,
                DeploymentError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                DeploymentError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Tenant(error) => match error {
                TenantError::InvalidConfig { .. } => StatusCode::BAD_REQUEST,
                TenantError::NotFound(_) | TenantError::KeyNotFound { .. } => StatusCode::NOT_FOUND,
                TenantError::MissingApiKey | TenantError::InvalidApiKey => StatusCode::UNAUTHORIZED,
                TenantError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::InvalidName { .. }
            | ApiError::WebSocketUpgradeRequired(_)
            | ApiError::InvalidMessage(_)
            | ApiError::UnknownMessageType(_)
            | ApiError::BinaryNotSupported => StatusCode::BAD_REQUEST,
            ApiError::RouteNotFound { .. } | ApiError::UnknownRequestId(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::InvalidAdminToken | ApiError::InvalidMetricsToken | ApiError::Unauthorized => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::AdminDisabled | ApiError::MetricsDisabled => StatusCode::FORBIDDEN,
            ApiError::DuplicateId(_) => StatusCode::CONFLICT,
            ApiError::TooManyRequestsOnConnection { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(wait) = self.retry_after() {
            response.insert_header((header::RETRY_AFTER, retry_after_seconds(wait).to_string()));
        }
        if let ApiError::Generation(GenerationError::Quota(rejection)) = self {
            insert_rate_limit_headers(&mut response, &rejection.snapshot);
        }
        if matches!(
            self,
            ApiError::Tenant(TenantError::MissingApiKey | TenantError::InvalidApiKey)
                | ApiError::InvalidAdminToken
                | ApiError::InvalidMetricsToken
        ) {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        response.json(self.body())
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;
    use swell_actors::quota::{LimitKind, LimitState, QuotaRejection, RateLimitSnapshot};

    use super::*;

    fn body_of(response: HttpResponse) -> serde_json::Value {
        let bytes = response.into_body().try_into_bytes().expect("a complete body");
        serde_json::from_slice(&bytes).unwrap()
    }

    fn header_of(response: &HttpResponse, name: &str) -> Option<String> {
        response.headers().get(name).map(|v| v.to_str().unwrap().to_string())
    }

    fn quota_rejection(limit: LimitKind, retry_after: Option<Duration>) -> QuotaRejection {
        QuotaRejection {
            limit,
            requested: 1,
            retry_after,
            snapshot: RateLimitSnapshot {
                requests: Some(LimitState { limit: 2, remaining: 0, reset: Duration::from_secs(60) }),
                prompt_tokens: Some(LimitState {
                    limit: 1000,
                    remaining: 990,
                    reset: Duration::from_millis(600),
                }),
                output_tokens: None,
                concurrent_requests: None,
            },
        }
    }

    #[test]
    fn bodies_have_openai_shape() {
        let error = ApiError::from(GenerationError::invalid_value("temperature", "temperature must be between 0 and 2"));
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = body_of(response);
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "message": "temperature must be between 0 and 2",
                "type": "invalid_request_error",
                "code": "invalid_value",
                "param": "temperature",
            }})
        );
    }

    #[test]
    fn each_family_maps_to_its_status_and_type() {
        let cases: Vec<(ApiError, StatusCode, &str, &str)> = vec![
            (ApiError::from(GenerationError::InvalidJson("eof".into())), StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_json"),
            (ApiError::from(GenerationError::MissingParameter("model".into())), StatusCode::BAD_REQUEST, "invalid_request_error", "missing_required_parameter"),
            (ApiError::from(GenerationError::BodyTooLarge { limit: 10 }), StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "request_body_too_large"),
            (ApiError::from(GenerationError::ModelNotFound("x".into())), StatusCode::NOT_FOUND, "not_found_error", "model_not_found"),
            (ApiError::from(TenantError::MissingApiKey), StatusCode::UNAUTHORIZED, "authentication_error", "missing_api_key"),
            (ApiError::from(TenantError::InvalidApiKey), StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key"),
            (ApiError::AdminDisabled, StatusCode::FORBIDDEN, "permission_error", "admin_disabled"),
            (ApiError::from(DeploymentError::EngineChangeRequiresRecreate("d".into())), StatusCode::CONFLICT, "invalid_request_error", "engine_change_requires_recreate"),
            (ApiError::from(GenerationError::ShuttingDown), StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "shutting_down"),
            (ApiError::Internal("boom".into()), StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error"),
            (ApiError::from(GenerationError::Failed { code: "engine_failure".into(), message: "x".into() }), StatusCode::INTERNAL_SERVER_ERROR, "server_error", "engine_failure"),
            (ApiError::from(GenerationError::Failed { code: "deadline_exceeded".into(), message: "x".into() }), StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "deadline_exceeded"),
        ];
        for (error, status, kind, code) in cases {
            assert_eq!(error.status_code(), status, "{error:?}");
            let body = error.body();
            assert_eq!(body.error.kind, kind, "{error:?}");
            assert_eq!(body.error.code, code, "{error:?}");
            assert!(!body.error.message.ends_with('.'), "{}", body.error.message);
        }
    }

    #[test]
    fn rate_limited_answers_429_with_openai_headers() {
        let error = ApiError::from(GenerationError::Quota(Box::new(quota_rejection(
            LimitKind::Requests,
            Some(Duration::from_millis(29_500)),
        ))));
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header_of(&response, "retry-after").as_deref(), Some("30"));
        assert_eq!(header_of(&response, "x-ratelimit-limit-requests").as_deref(), Some("2"));
        assert_eq!(header_of(&response, "x-ratelimit-remaining-requests").as_deref(), Some("0"));
        assert_eq!(header_of(&response, "x-ratelimit-reset-requests").as_deref(), Some("1m0s"));
        assert_eq!(header_of(&response, "x-ratelimit-limit-tokens").as_deref(), Some("1000"));
        assert_eq!(header_of(&response, "x-ratelimit-reset-tokens").as_deref(), Some("600ms"));
        let body = body_of(response);
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    }

    #[test]
    fn a_request_that_can_never_fit_has_no_retry_after() {
        let error = ApiError::from(GenerationError::Quota(Box::new(quota_rejection(LimitKind::PromptTokens, None))));
        assert_eq!(error.code(), "request_too_large");
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(header_of(&response, "retry-after").is_none());
        let concurrent = GenerationError::Quota(Box::new(quota_rejection(
            LimitKind::ConcurrentRequests,
            Some(Duration::from_secs(1)),
        )));
        assert_eq!(concurrent.code(), "concurrency_limit_exceeded");
    }

    #[test]
    fn queue_full_answers_503_with_retry_after() {
        let error = ApiError::from(GenerationError::QueueFull {
            deployment: "chat".into(),
            depth: 1000,
            retry_after: Duration::from_millis(2100),
        });
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header_of(&response, "retry-after").as_deref(), Some("3"));
        assert_eq!(body_of(response)["error"]["code"], "queue_full");
    }

    #[test]
    fn auth_errors_ask_for_a_bearer_token() {
        let response = ApiError::from(TenantError::MissingApiKey).error_response();
        assert_eq!(header_of(&response, "www-authenticate").as_deref(), Some("Bearer"));
    }
}
