//! Starting a generation: a validated request becomes one admitted job per prompt
//! (`swell_actors::request::submit`), and their event streams are merged into one
//! stream tagged with the choice index. Shared by the HTTP and WebSocket APIs.

use std::sync::Arc;

use actix::Addr;
use futures_util::stream::{BoxStream, StreamExt};
use swell_actors::quota::RateLimitSnapshot;
use swell_actors::request::{attach, submit, Admitted, Rejected, RequestActor, RequestDeps, RequestEvent, RequestSpec};
use swell_actors::routing::RouteRequest;
use swell_cluster::Priority;
use swell_router::RoutingPolicy;
use swell_workers::llm::block_pool::prefix_block_hashes;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::generation::error::GenerationError;
use crate::generation::resume::{resume_grace, StreamMeta};
use crate::generation::stream_encoder::ResponseMeta;
use crate::generation::validate::ValidatedRequest;
use crate::deployments::{unix_seconds, DeploymentHandle};
use crate::state::AppState;
use crate::tenants::{ReservedSlot, TenantHandle};

/// A request's events, tagged with the choice index they belong to.
pub type TaggedEvents = BoxStream<'static, (usize, RequestEvent)>;

/// An admitted request: its merged event stream and what its responses need.
pub struct Generation {
    pub meta: ResponseMeta,
    pub validated: ValidatedRequest,
    /// Events of every job, tagged with the choice index. Dropping it cancels them all.
    pub events: TaggedEvents,
    /// The request actors (a WebSocket `cancel` sends them `CancelRequest`).
    pub handles: Vec<Addr<RequestActor>>,
    /// The tenant's rate-limit state after admission (empty when it has no limits).
    pub rate_limits: RateLimitSnapshot,
}

/// A new request id: `req-<uuid>` (also the `x-request-id` header).
pub fn new_request_id() -> String {
    format!("req-{}", uuid::Uuid::new_v4().simple())
}

fn rejection_error(deployment: &str, rejected: Rejected) -> GenerationError {
    match rejected {
        Rejected::Quota(rejection) => GenerationError::Quota(Box::new(rejection)),
        Rejected::QueueFull { depth, retry_after } => {
            GenerationError::QueueFull { deployment: deployment.to_string(), depth, retry_after }
        }
        Rejected::QueueUnavailable(reason) => GenerationError::QueueUnavailable(reason),
        Rejected::Unavailable(reason) => {
            GenerationError::DeploymentUnavailable { deployment: deployment.to_string(), reason }
        }
    }
}

/// How a client reads a generation's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A stream the client may resume (SSE, WebSocket): a single-choice request
    /// outlives its client by `queue.resume_grace` ([`crate::generation::resume`]).
    Resumable,
    /// The client's leaving cancels the request at once (a collected answer, the ingress).
    Direct,
}

/// Admits every prompt of `validated` as its own job. All or nothing: if one is
/// rejected, the ones already admitted are cancelled (their receivers dropped).
pub async fn start_generation(
    state: &AppState,
    tenant: &TenantHandle,
    deployment: &Arc<DeploymentHandle>,
    validated: ValidatedRequest,
    request_id: &str,
    received_at: Instant,
    delivery: Delivery,
) -> Result<Generation, GenerationError> {
    generation(state, tenant, deployment, validated, request_id, received_at, Some(delivery)).await
}

/// The jobs of a request another gateway admitted as `request_id` (same validated
/// request, so the same job ids) and did not finish relaying: their events from the
/// start, without admitting anything (`swell_actors::request::attach`).
pub async fn attach_generation(
    state: &AppState,
    tenant: &TenantHandle,
    deployment: &Arc<DeploymentHandle>,
    validated: ValidatedRequest,
    request_id: &str,
) -> Result<Generation, GenerationError> {
    generation(state, tenant, deployment, validated, request_id, Instant::now(), None).await
}

async fn generation(
    state: &AppState,
    tenant: &TenantHandle,
    deployment: &Arc<DeploymentHandle>,
    validated: ValidatedRequest,
    request_id: &str,
    received_at: Instant,
    // `None`: attach to jobs admitted by another gateway.
    delivery: Option<Delivery>,
) -> Result<Generation, GenerationError> {
    let attached = delivery.is_none();
    if state.is_shutting_down() {
        return Err(GenerationError::ShuttingDown);
    }
    if !state.node.role.serves_api() {
        return Err(GenerationError::NotAGateway { role: state.node.role.as_str() });
    }
    if !state.node.redis_up() {
        // Known down (the last health check failed): answer now rather than after a
        // connect timeout.
        return Err(GenerationError::QueueUnavailable("redis does not answer".into()));
    }
    let deps = RequestDeps {
        queue: state.queue.clone(),
        supervisor: deployment.supervisor.clone(),
        quota: tenant.has_limits().then(|| tenant.quota.clone()),
        router: Some(deployment.router.clone()),
    };
    let routing = deployment.router.config().policy != RoutingPolicy::AnyReplica;
    let session = validated.session.as_deref().map(|key| session_key(&tenant.id, key));
    let requests = validated.generation_requests();
    let several = requests.len() > 1;
    let created = unix_seconds();
    let stream_meta = StreamMeta::of(&validated, created);
    let resume_grace = match delivery {
        Some(Delivery::Resumable) if stream_meta.is_some() => resume_grace(state),
        Some(Delivery::Resumable | Delivery::Direct) | None => None,
    };
    let stream_meta = stream_meta.map(|meta| meta.to_json());
    let (priority, reserved_slot) = if attached {
        (tenant.capacity.priority, None)
    } else {
        service_class(state, tenant, deployment, requests.len() as u64)
    };
    let max_queue_depth = match priority {
        Priority::Low => low_priority_queue_depth(deployment),
        Priority::High | Priority::Normal => deployment.max_queue_depth,
    };
    let submissions = requests.into_iter().enumerate().map(|(index, request)| {
        let route = RouteRequest {
            // Only full blocks are named; a prompt shorter than one shares nothing.
            block_hashes: if routing { prefix_block_hashes(&request.prompt_tokens) } else { Vec::new() },
            prompt_tokens: request.prompt_tokens.len() as u64,
            session,
        };
        let spec = RequestSpec {
            route,
            job_id: if several { format!("{request_id}-{index}") } else { request_id.to_string() },
            deployment: deployment.name.clone(),
            tenant: tenant.id.clone(),
            request,
            deadline: Some(state.config.server.request_timeout),
            max_queue_depth,
            priority,
            received_at,
            stream_meta: stream_meta.clone(),
            resume_grace,
        };
        let deps = deps.clone();
        async move {
            if attached {
                attach(spec, deps).await
            } else {
                submit(spec, deps).await
            }
        }
    });
    let results = futures_util::future::join_all(submissions).await;
    let mut admitted: Vec<Admitted> = Vec::with_capacity(results.len());
    let mut first_rejection = None;
    for result in results {
        match result {
            Ok(job) => admitted.push(job),
            Err(rejected) => {
                first_rejection.get_or_insert(rejected);
            }
        }
    }
    if let Some(rejected) = first_rejection {
        // Dropping `admitted` drops the receivers: those jobs are cancelled.
        return Err(rejection_error(&deployment.name, rejected));
    }
    let rate_limits = admitted
        .iter()
        .map(|job| job.rate_limits.clone())
        .min_by_key(|snapshot| snapshot.requests.map(|s| s.remaining).unwrap_or(u64::MAX))
        .unwrap_or_default();
    let mut handles = Vec::with_capacity(admitted.len());
    let streams = admitted.into_iter().enumerate().map(|(index, job)| {
        handles.push(job.handle);
        ReceiverStream::new(job.events).map(move |event| (index, event))
    });
    // A place in the tenant's reserved share is held until the response stream ends.
    let events = futures_util::stream::select_all(streams)
        .map(move |event| {
            let _held = &reserved_slot;
            event
        })
        .boxed();
    let meta = ResponseMeta {
        id: ResponseMeta::response_id(validated.kind, request_id),
        created,
        model: deployment.name.clone(),
        kind: validated.kind,
        include_usage: validated.include_usage,
        logprobs: validated.logprobs,
        tools: validated.tools,
    };
    Ok(Generation { meta, validated, events, handles, rate_limits })
}

/// A session's routing key: its tenant and `user`, hashed (tenants never share one).
fn session_key(tenant: &str, user: &str) -> u64 {
    swell_router::hashing::combine(swell_router::hashing::hash_str(tenant), swell_router::hashing::hash_str(user))
}

/// The priority a new request of `tenant` waits at (see [`crate::tenants`]): `high` while
/// the tenant's requests in flight on `deployment` through this gateway stay within its
/// reserved share (reserved replicas × `load_targets.concurrent_requests`, or × 1 with
/// that target off), with the slot that holds its place there; else its own priority.
fn service_class(
    state: &AppState,
    tenant: &TenantHandle,
    deployment: &DeploymentHandle,
    jobs: u64,
) -> (Priority, Option<ReservedSlot>) {
    if let Some(&reserved) = tenant.capacity.reserved_replicas.get(&deployment.name) {
        let per_replica = deployment.config.autoscaling.load_targets.concurrent_requests.unwrap_or(1.0).max(1.0);
        let share = (f64::from(reserved) * per_replica).floor() as u64;
        if let Some(slot) = state.tenants.take_reserved_slot(&tenant.id, &deployment.name, share, jobs) {
            return (Priority::High, Some(slot));
        }
    }
    (tenant.capacity.priority, None)
}

/// How many waiting jobs refuse a `low` request: `low_priority_queue_share` of the
/// deployment's `max_queue_depth` (at least 1).
fn low_priority_queue_depth(deployment: &DeploymentHandle) -> u64 {
    let share = deployment.config.low_priority_queue_share;
    ((deployment.max_queue_depth as f64 * share).ceil() as u64).clamp(1, deployment.max_queue_depth.max(1))
}
