//! The admin API under `/admin/v1`: deployments and tenants.
//!
//! Every call needs `Authorization: Bearer <admin token>`. Without a configured token the
//! admin API is open when the server listens on loopback only, and disabled (403
//! `admin_disabled`) otherwise.
//!
//! - `PUT /admin/v1/deployments/{name}`: create (201) or update (200) a deployment. The
//!   body is a `DeploymentConfig` (unknown fields are errors). An update changes the
//!   autoscaling policy and request limits in place; a different engine or engine
//!   settings answers 409 `engine_change_requires_recreate`.
//! - `GET /admin/v1/deployments/{name}`: the supervisor's status (replicas, queue, load,
//!   recent scale events with their reasons).
//! - `DELETE /admin/v1/deployments/{name}`: removed from routing at once, then drained
//!   in the background; 202.
//! - `GET /admin/v1/deployments`: every deployment with a short status.
//! - `PUT /admin/v1/tenants/{id}` `{"limits": {...}, "priority": "high", "reserved_replicas":
//!   {"chat": 1}, "reply_prefix": "acme:replies:"}`: create (201) or update (200); the
//!   body replaces all four (`priority` defaults to `normal`, no reservations, the
//!   default reply prefix). A reservation naming a deployment that does not exist, or
//!   taking the tenants' reservations of a deployment past its `max_replicas`, is refused
//!   (400 `invalid_config`); so is a deployment update that lowers `max_replicas` below
//!   its reservations, and a `reply_prefix` that overlaps another tenant's, the default
//!   prefixes or Swell's own keys.
//! - `GET /admin/v1/tenants/{id}`: limits, key ids, quota state (never key hashes), and
//!   the reply prefix: configured (`reply_prefix`) and in effect (`effective_reply_prefix`).
//! - `GET /admin/v1/tenants`: tenant ids.
//! - `POST /admin/v1/tenants/{id}/keys`: a new API key, shown once; 201.
//! - `DELETE /admin/v1/tenants/{id}/keys/{key_id}`: revokes a key.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use swell_actors::quota::{ObserveQuota, TenantLimits};
use swell_actors::supervisor::{DeploymentStatus, ObserveDeployment, Shutdown, UpdatePolicy};
use swell_cluster::Priority;

use crate::api::auth::authorize_admin;
use crate::api::error::ApiError;
use crate::api::json_body::read_json;
use crate::config::DeploymentConfig;
use crate::deployments::{DeploymentError, DeploymentHandle};
use crate::config::KNOWN_ENGINES;
use crate::state::AppState;
use crate::tenants::{is_valid_name, TenantCapacity, TenantError, Upsert};

/// `PUT /admin/v1/tenants/{id}` body.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantBody {
    #[serde(default)]
    pub limits: TenantLimits,
    /// `high`, `normal` (default) or `low`: the queue service order of its requests.
    #[serde(default)]
    pub priority: Priority,
    /// Deployment → replicas kept warm for the tenant (see [`crate::tenants`]).
    #[serde(default)]
    pub reserved_replicas: BTreeMap<String, u32>,
    /// The Redis ingress answers the tenant's entries only at a `reply_to` starting with
    /// this (absent: the default prefix, see docs/ingress.md).
    #[serde(default)]
    pub reply_prefix: Option<String>,
}

/// One line of `GET /admin/v1/deployments`.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentSummary {
    pub name: String,
    pub engine: String,
    pub model: String,
    /// `None` when the supervisor did not answer.
    pub replicas: Option<Value>,
    pub queue_depth: Option<u64>,
    pub in_flight: Option<u64>,
}

/// The key an admin validation message starts with (`autoscaling.max_replicas (3) ...`).
pub fn key_of_message(message: &str) -> Option<String> {
    let first = message.split_whitespace().next()?.trim_end_matches(':');
    let is_key = !first.is_empty()
        && first.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'));
    is_key.then(|| first.to_string())
}

fn invalid_config(errors: Vec<String>) -> DeploymentError {
    let param = errors.first().and_then(|message| key_of_message(message));
    DeploymentError::InvalidConfig { message: errors.join("; "), param }
}

fn check_name(kind: &'static str, name: &str) -> Result<(), ApiError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::InvalidName { kind, name: name.to_string() })
    }
}

async fn observe(deployment: &DeploymentHandle) -> Result<DeploymentStatus, ApiError> {
    let status = deployment.supervisor.send(ObserveDeployment).await.map_err(|error| DeploymentError::Unavailable {
        deployment: deployment.name.clone(),
        reason: format!("its supervisor does not answer: {error}"),
    })?;
    Ok(status)
}

/// Checks an admin deployment body: a known engine first, then every setting.
pub fn check_deployment_body(body: &DeploymentConfig) -> Result<(), ApiError> {
    if !KNOWN_ENGINES.contains(&body.engine.as_str()) {
        return Err(DeploymentError::UnknownEngine {
            engine: body.engine.clone(),
            known: KNOWN_ENGINES.iter().map(|e| e.to_string()).collect(),
        }
        .into());
    }
    let errors = body.validate("");
    if errors.is_empty() {
        Ok(())
    } else {
        Err(invalid_config(errors).into())
    }
}

/// `PUT /admin/v1/deployments/{name}`.
pub async fn put_deployment(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &request)?;
    let name = path.into_inner();
    check_name("deployment", &name)?;
    let body: DeploymentConfig = read_json(&request, payload, state.config.server.max_body_bytes).await?;
    check_deployment_body(&body)?;
    let _writes = state.admin_writes.lock().await;
    let (status, handle) = match state.deployments.get(&name) {
        None => {
            tracing::info!(deployment = %name, "creating deployment: {}", crate::engines::describe_choice(&body));
            (StatusCode::CREATED, state.create_deployment(&name, body)?)
        }
        Some(existing) => {
            if existing.config.engine_differs(&body) {
                return Err(DeploymentError::EngineChangeRequiresRecreate(name).into());
            }
            state.check_reservations_fit(&name, &body)?;
            if existing.config.autoscaling != body.autoscaling {
                existing.supervisor.send(UpdatePolicy(body.autoscaling.clone())).await.map_err(|error| {
                    DeploymentError::Unavailable {
                        deployment: name.clone(),
                        reason: format!("its supervisor does not answer: {error}"),
                    }
                })?;
            }
            tracing::info!(deployment = %name, "updated deployment");
            let updated = existing.with_config(body, &state.config.queue);
            (StatusCode::OK, state.deployments.insert(updated))
        }
    };
    let observed = observe(&handle).await?;
    Ok(HttpResponse::build(status).json(observed))
}

/// `GET /admin/v1/deployments/{name}`.
pub async fn get_deployment(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &request)?;
    let deployment = state.deployments.get(&path).ok_or_else(|| DeploymentError::NotFound(path.into_inner()))?;
    Ok(HttpResponse::Ok().json(observe(&deployment).await?))
}

/// `DELETE /admin/v1/deployments/{name}`: out of routing now, drained in the background.
pub async fn delete_deployment(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &request)?;
    let name = path.into_inner();
    let _writes = state.admin_writes.lock().await;
    let deployment = state.deployments.remove(&name).ok_or_else(|| DeploymentError::NotFound(name.clone()))?;
    tracing::info!(deployment = %name, "deleting deployment: draining its replicas");
    let supervisor = deployment.supervisor.clone();
    let drained_name = name.clone();
    state.control.spawn(async move {
        match supervisor.send(Shutdown).await {
            Ok(()) => tracing::info!(deployment = %drained_name, "deployment drained and removed"),
            Err(error) => tracing::warn!(deployment = %drained_name, %error, "deployment supervisor gone before draining"),
        }
    });
    Ok(HttpResponse::Accepted().json(json!({"deleted": name, "draining": true})))
}

/// `GET /admin/v1/deployments`.
pub async fn list_deployments(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &request)?;
    let deployments = state.deployments.list();
    let statuses = futures_util::future::join_all(deployments.iter().map(|d| observe(d))).await;
    let data: Vec<DeploymentSummary> = deployments
        .iter()
        .zip(statuses)
        .map(|(deployment, status): (&Arc<DeploymentHandle>, _)| {
            let status = status.ok();
            DeploymentSummary {
                name: deployment.name.clone(),
                engine: deployment.description.engine.clone(),
                model: deployment.description.model.clone(),
                replicas: status.as_ref().and_then(|s| serde_json::to_value(&s.replicas).ok()),
                queue_depth: status.as_ref().map(|s| s.queue.depth),
                in_flight: status.as_ref().map(|s| s.queue.in_flight),
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

/// `PUT /admin/v1/tenants/{id}`.
pub async fn put_tenant(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &request)?;
    let id = path.into_inner();
    check_name("tenant", &id)?;
    let body: TenantBody = read_json(&request, payload, state.config.server.max_body_bytes).await?;
    body.limits.validate("limits").map_err(|error| TenantError::InvalidConfig {
        param: key_of_message(&error),
        message: error,
    })?;
    let _writes = state.admin_writes.lock().await;
    // Checked before anything changes (and admin writes are serialized by the lock).
    if let Some(prefix) = &body.reply_prefix {
        state.config.reply_namespace().check_configured(prefix).map_err(|error| TenantError::InvalidConfig {
            message: format!("reply_prefix: {error}"),
            param: Some("reply_prefix".into()),
        })?;
        state.tenants.check_reply_prefix(&id, prefix)?;
    }
    let capacity = TenantCapacity { priority: body.priority, reserved_replicas: body.reserved_replicas };
    let status = match state.upsert_tenant(&id, body.limits, capacity)? {
        Upsert::Created => StatusCode::CREATED,
        Upsert::Updated => StatusCode::OK,
    };
    state.tenants.set_reply_prefix(&id, body.reply_prefix)?;
    Ok(HttpResponse::build(status).json(tenant_view(&state, &id).await?))
}

/// One limit's state, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LimitView {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_seconds: f64,
}

/// `GET /admin/v1/tenants/{id}`: limits, key ids, quota state; never key hashes.
#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    pub id: String,
    pub limits: TenantLimits,
    #[serde(flatten)]
    pub capacity: TenantCapacity,
    /// The configured reply prefix (`None`: the default one).
    pub reply_prefix: Option<String>,
    /// What every `reply_to` of the tenant's ingress entries must start with.
    pub effective_reply_prefix: String,
    pub key_ids: Vec<String>,
    pub in_flight: u64,
    /// Present for the limits the tenant has: `requests`, `prompt_tokens`,
    /// `output_tokens`, `concurrent_requests`.
    pub rate_limits: BTreeMap<&'static str, LimitView>,
}

async fn tenant_view(state: &AppState, id: &str) -> Result<TenantView, ApiError> {
    let summary = state.tenants.summary(id).ok_or_else(|| TenantError::NotFound(id.to_string()))?;
    let handle = state.tenants.handle(id).ok_or_else(|| TenantError::NotFound(id.to_string()))?;
    let quota = handle
        .quota
        .send(ObserveQuota)
        .await
        .map_err(|error| ApiError::Internal(format!("the tenant's quota does not answer: {error}")))?;
    let rate_limits = [
        ("requests", quota.state.requests),
        ("prompt_tokens", quota.state.prompt_tokens),
        ("output_tokens", quota.state.output_tokens),
        ("concurrent_requests", quota.state.concurrent_requests),
    ]
    .into_iter()
    .filter_map(|(name, state)| {
        state.map(|s| (name, LimitView { limit: s.limit, remaining: s.remaining, reset_seconds: s.reset.as_secs_f64() }))
    })
    .collect();
    let effective_reply_prefix =
        state.config.reply_namespace().tenant_prefix(&summary.id, summary.reply_prefix.as_deref());
    Ok(TenantView {
        id: summary.id,
        limits: summary.limits,
        capacity: summary.capacity,
        reply_prefix: summary.reply_prefix,
        effective_reply_prefix,
        key_ids: summary.key_ids,
        in_flight: quota.in_flight,
        rate_limits,
    })
}

/// `GET /admin/v1/tenants/{id}`.
pub async fn get_tenant(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &request)?;
    Ok(HttpResponse::Ok().json(tenant_view(&state, &path).await?))
}

/// `GET /admin/v1/tenants`.
pub async fn list_tenants(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &request)?;
    let data: Vec<_> = state.tenants.ids().into_iter().filter_map(|id| state.tenants.summary(&id)).collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

/// `POST /admin/v1/tenants/{id}/keys`: the key is in this answer and nowhere else.
pub async fn create_key(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &request)?;
    let id = path.into_inner();
    let _writes = state.admin_writes.lock().await;
    let key = state.tenants.create_key(&id)?;
    tracing::info!(tenant = %id, key_id = %key.key_id, "api key created");
    Ok(HttpResponse::Created().json(json!({"tenant": id, "api_key": key.api_key, "key_id": key.key_id})))
}

/// `DELETE /admin/v1/tenants/{id}/keys/{key_id}`.
pub async fn revoke_key(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &request)?;
    let (id, key_id) = path.into_inner();
    let _writes = state.admin_writes.lock().await;
    state.tenants.revoke_key(&id, &key_id)?;
    tracing::info!(tenant = %id, key_id = %key_id, "api key revoked");
    Ok(HttpResponse::Ok().json(json!({"tenant": id, "revoked": key_id})))
}

#[cfg(test)]
mod tests {
    use swell_workers::sim::SimConfig;

    use super::*;
    use crate::generation::json::parse_json;

    #[test]
    fn keys_are_taken_from_validation_messages() {
        assert_eq!(
            key_of_message("autoscaling.max_replicas (1) must be at least autoscaling.min_replicas (5)").as_deref(),
            Some("autoscaling.max_replicas")
        );
        assert_eq!(key_of_message("sim.max_batch_size: must be at least 1").as_deref(), Some("sim.max_batch_size"));
        assert_eq!(key_of_message("the thing failed"), Some("the".to_string()));
        assert_eq!(key_of_message("(weird) message"), None);
    }

    #[test]
    fn deployment_bodies_are_strict() {
        let error = parse_json::<DeploymentConfig>(br#"{"engine": "sim", "autoscaling": {"max_replica": 2}}"#).unwrap_err();
        assert_eq!(error.code(), "unknown_parameter");
        assert_eq!(error.param(), Some("autoscaling.max_replica"));
        let error = parse_json::<DeploymentConfig>(br#"{"engine": "sim", "sim": {"profil": "x"}}"#).unwrap_err();
        assert_eq!(error.param(), Some("sim.profil"));
        let body: DeploymentConfig = parse_json(br#"{"engine": "sim", "sim": {"profile": "zero"}, "autoscaling": {"min_replicas": 0, "max_replicas": 2, "scale_to_zero_window": "2s"}, "max_tokens_default": 32}"#).unwrap();
        check_deployment_body(&body).unwrap();
    }

    #[test]
    fn deployment_bodies_are_validated() {
        let mut body = DeploymentConfig::sim(SimConfig::default());
        body.engine = "tgi".into();
        body.sim = None;
        assert_eq!(check_deployment_body(&body).unwrap_err().code(), "unknown_engine");
        let mut body = DeploymentConfig::sim(SimConfig::default());
        body.autoscaling.min_replicas = 3;
        body.autoscaling.max_replicas = 1;
        let error = check_deployment_body(&body).unwrap_err();
        assert_eq!(error.code(), "invalid_config");
        assert_eq!(error.param(), Some("autoscaling.max_replicas"));
    }

    #[test]
    fn tenant_bodies_are_strict() {
        let error = parse_json::<TenantBody>(br#"{"limits": {"rpm": 1}}"#).unwrap_err();
        assert_eq!(error.param(), Some("limits.rpm"));
        let body: TenantBody = parse_json(br#"{"limits": {"requests_per_minute": 2}}"#).unwrap();
        assert_eq!(body.limits.requests_per_minute, Some(2));
        assert_eq!(body.reply_prefix, None);
        let body: TenantBody = parse_json(br#"{"reply_prefix": "acme:replies:"}"#).unwrap();
        assert_eq!(body.reply_prefix.as_deref(), Some("acme:replies:"));
    }
}

/// `GET /admin/v1/cluster`: this node's view of the cluster (its role, the leader, its
/// assignment, the stored placement, and on the leader its last decisions). On an
/// embedded server: `{"distributed": false, ...}`.
pub async fn get_cluster(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &request)?;
    let body = match state.cluster.get() {
        Some(node) => {
            let mut value = serde_json::to_value(node.status().await)
                .map_err(|error| ApiError::Internal(format!("cluster status: {error}")))?;
            value["distributed"] = json!(true);
            value
        }
        None => json!({
            "distributed": false,
            "node_id": state.node.node_id,
            "role": state.node.role.as_str(),
        }),
    };
    Ok(HttpResponse::Ok().json(body))
}
