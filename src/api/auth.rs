//! Who is calling: the tenant of a `/v1` request (by API key), and whether a caller may
//! use the admin API (by admin token) or read `/metrics` (by metrics or admin token).

use actix_web::http::header;
use actix_web::HttpRequest;
use sha2::{Digest, Sha256};

use crate::api::error::ApiError;
use crate::state::AppState;
use crate::tenants::{bearer_token, TenantHandle};

/// The `Authorization` header's value, when present and readable.
pub fn authorization(request: &HttpRequest) -> Option<&str> {
    request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok())
}

/// The tenant of a `/v1` request.
pub fn authenticate(state: &AppState, request: &HttpRequest) -> Result<TenantHandle, ApiError> {
    Ok(state.tenants.authenticate(authorization(request))?)
}

/// Admits an admin API call: a matching bearer admin token, or no token configured and
/// a loopback-only server.
pub fn authorize_admin(state: &AppState, request: &HttpRequest) -> Result<(), ApiError> {
    match &state.config.server.admin_token {
        Some(expected) => {
            let presented = authorization(request).and_then(bearer_token).ok_or(ApiError::InvalidAdminToken)?;
            if tokens_match(presented, expected) {
                Ok(())
            } else {
                Err(ApiError::InvalidAdminToken)
            }
        }
        None if state.admin_open_without_token() => Ok(()),
        None => Err(ApiError::AdminDisabled),
    }
}

/// Admits a `/metrics` scrape (the metrics name every tenant and deployment and show
/// their traffic): anyone when `server.metrics_public`; else a bearer metrics token or
/// admin token; without any token configured, only on a loopback-only server (as the
/// admin API).
pub fn authorize_metrics(state: &AppState, request: &HttpRequest) -> Result<(), ApiError> {
    let server = &state.config.server;
    if server.metrics_public {
        return Ok(());
    }
    let presented = authorization(request).and_then(bearer_token);
    let accepted = [server.metrics_token.as_deref(), server.admin_token.as_deref()];
    if accepted.iter().flatten().any(|expected| presented.is_some_and(|token| tokens_match(token, expected))) {
        return Ok(());
    }
    match accepted {
        [None, None] if state.admin_open_without_token() => Ok(()),
        [None, None] => Err(ApiError::MetricsDisabled),
        _ => Err(ApiError::InvalidMetricsToken),
    }
}

/// Compares two secrets in time independent of where they differ (by comparing their
/// SHA-256 digests byte by byte, without early exit).
pub fn tokens_match(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter().zip(b.iter()).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_value() {
        assert!(tokens_match("secret", "secret"));
        assert!(!tokens_match("secret", "secreT"));
        assert!(!tokens_match("", "secret"));
    }
}
