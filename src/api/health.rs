//! `/healthz` (the process serves), `/readyz` (every configured deployment was created,
//! the server is not shutting down and, in a cluster, Redis answers) and `/metrics` (Prometheus text format).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::api::auth::authorize_metrics;
use crate::api::error::ApiError;
use crate::metrics;
use crate::state::AppState;

/// `GET /healthz`: 200 while the process serves (a liveness probe: a Redis outage
/// does not make restarting the node useful). A cluster node also says its role and
/// whether Redis answers (`status` is then `degraded`).
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let node = &state.node;
    if !node.is_distributed() {
        return HttpResponse::Ok().json(json!({"status": "ok"}));
    }
    let redis_up = node.redis_up();
    HttpResponse::Ok().json(json!({
        "status": if redis_up { "ok" } else { "degraded" },
        "role": node.role.as_str(),
        "node_id": node.node_id,
        "redis": if redis_up { "ok" } else { "unreachable" },
    }))
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
    if !state.node.redis_up() {
        return HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE)
            .json(json!({"status": "redis_unavailable", "role": state.node.role.as_str()}));
    }
    HttpResponse::Ok().json(json!({"status": "ready", "deployments": state.deployments.len()}))
}

/// `GET /metrics` (for the metrics or admin token: [`authorize_metrics`]).
pub async fn metrics_text(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize_metrics(&state, &request)?;
    Ok(HttpResponse::Ok().content_type(metrics::CONTENT_TYPE).body(metrics::render()))
}
