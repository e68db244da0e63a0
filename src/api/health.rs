//! `/healthz` (the process serves), `/readyz` (every configured deployment was created
//! and the server is not shutting down) and `/metrics` (Prometheus text format).

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::metrics;
use crate::state::AppState;

/// `GET /healthz`: 200 while the process serves.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 once every configured deployment was created; 503 before and
/// during shutdown.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.is_shutting_down() {
        return HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE)
            .json(json!({"status": "shutting_down"}));
    }
    if !state.is_ready() {
        return HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE).json(json!({"status": "starting"}));
    }
    HttpResponse::Ok().json(json!({"status": "ready", "deployments": state.deployments.len()}))
}

/// `GET /metrics`.
pub async fn metrics_text() -> HttpResponse {
    HttpResponse::Ok().content_type(metrics::CONTENT_TYPE).body(metrics::render())
}
