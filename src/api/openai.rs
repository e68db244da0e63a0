//! The OpenAI-compatible HTTP API: `GET /v1/models`, `GET /v1/models/{id}`,
//! `POST /v1/chat/completions`, `POST /v1/completions`.
//!
//! Each generation handler: authenticate → read the body → find the deployment (404
//! `model_not_found`) → validate → admit (429/503 on rejection) → answer, streamed (SSE)
//! or collected. When the client disconnects (noticed by [`ClientGone`] in every state:
//! queued, starting, running; streamed or collected), the event receivers are dropped,
//! which cancels the requests and frees their quota slots (a resumable stream's after
//! `queue.resume_grace`, unless it is resumed: [`crate::api::streams`]).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::api::auth::authenticate;
use crate::api::client_gone::ClientGone;
use crate::api::error::ApiError;
use crate::api::json_body::read_body;
use crate::api::middleware::request_id;
use crate::api::ratelimit_headers::insert_rate_limit_headers;
use crate::api::sse;
use crate::deployments::DeploymentHandle;
use crate::generation::admit::{start_generation, Delivery, Generation};
use crate::generation::collect::{Collected, ResponseCollector};
use crate::generation::json::parse_json;
use crate::generation::openai_types::{ChatCompletionRequest, CompletionRequest, ModelList, ModelObject};
use crate::generation::resolve::{find_deployment, resolve, ModelRequest};
use crate::generation::stream_encoder::StreamEncoder;
use crate::generation::GenerationError;
use crate::state::AppState;


pub fn model_object(deployment: &DeploymentHandle) -> ModelObject {
    ModelObject {
        id: deployment.name.clone(),
        object: "model",
        created: deployment.created,
        owned_by: "swell",
        max_model_len: deployment.description.context_length,
        engine: deployment.description.engine.clone(),
    }
}

/// `GET /v1/models`.
pub async fn list_models(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    authenticate(&state, &request)?;
    let data = state.deployments.list().iter().map(|d| model_object(d)).collect();
    Ok(HttpResponse::Ok().json(ModelList { object: "list", data }))
}

/// `GET /v1/models/{id}`.
pub async fn get_model(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&state, &request)?;
    let deployment = find_deployment(&state, &path)?;
    Ok(HttpResponse::Ok().json(model_object(&deployment)))
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    generate::<ChatCompletionRequest>(state, request, payload).await
}

/// `POST /v1/completions`.
pub async fn completions(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    generate::<CompletionRequest>(state, request, payload).await
}

async fn generate<R: ModelRequest>(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let received_at = Instant::now();
    let tenant = authenticate(&state, &request)?;
    let bytes = read_body(&request, payload, state.config.server.max_body_bytes).await?;
    let body: R = parse_json(&bytes)?;
    let (deployment, validated) = resolve(&state, body, bytes.len()).await?;
    let id = request_id(&request);
    let stream = validated.stream;
    let delivery = if stream { Delivery::Resumable } else { Delivery::Direct };
    let generation = start_generation(&state, &tenant, &deployment, validated, &id, received_at, delivery).await?;
    let client_gone = ClientGone::of(&request);
    if stream {
        Ok(streaming_response(generation, state.config.server.keep_alive_interval, client_gone))
    } else {
        collected_response(generation, client_gone).await
    }
}

fn streaming_response(generation: Generation, keep_alive: std::time::Duration, client_gone: ClientGone) -> HttpResponse {
    let Generation { meta, validated, events, handles, rate_limits } = generation;
    let mut response = HttpResponse::Ok();
    response
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"));
    insert_rate_limit_headers(&mut response, &rate_limits);
    let encoder = StreamEncoder::new(meta, &validated.prompts);
    response.streaming(sse::body_stream(events, encoder, keep_alive, client_gone, Box::new(handles)))
}

/// Collects the whole answer; a client that leaves before it is complete cancels the
/// request (its events are dropped).
async fn collected_response(generation: Generation, mut client_gone: ClientGone) -> Result<HttpResponse, ApiError> {
    let Generation { meta, validated, mut events, handles: _handles, rate_limits } = generation;
    let mut collector = ResponseCollector::new(meta, &validated.prompts);
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            _ = client_gone.wait() => {
                return Err(GenerationError::Failed {
                    code: "cancelled".into(),
                    message: "the client closed the connection before the answer was complete".into(),
                }
                .into())
            }
        };
        let Some((index, event)) = next else { break };
        if let Collected::Complete(body) = collector.on_event(index, event)? {
            let mut response = HttpResponse::Ok();
            insert_rate_limit_headers(&mut response, &rate_limits);
            return Ok(response.json(body));
        }
    }
    Err(ResponseCollector::incomplete().into())
}
