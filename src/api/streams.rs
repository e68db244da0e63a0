//! `GET /v1/streams/{id}`: resume a streamed response after the last event the client
//! received (`Last-Event-ID`), as Server-Sent Events framed like the original stream.
//!
//! `{id}` is the request id (`x-request-id`, `req-…`) or the id of the response's
//! chunks (`chatcmpl-…`, `cmpl-…`). The stream must be the caller's tenant's and its
//! output still kept; otherwise 404 `stream_not_found`, the same answer whichever it
//! is. The generation side is [`crate::generation::resume`].

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::api::auth::authenticate;
use crate::api::client_gone::ClientGone;
use crate::api::error::ApiError;
use crate::api::sse;
use crate::generation::resume::{parse_last_event_id, resume_stream};
use crate::generation::GenerationError;
use crate::state::AppState;

pub const LAST_EVENT_ID: &str = "last-event-id";

/// `GET /v1/streams/{id}`.
pub async fn resume(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &request)?;
    let last_event_id = match request.headers().get(LAST_EVENT_ID) {
        None => None,
        Some(value) => {
            let unreadable = |_| GenerationError::invalid_value("Last-Event-ID", "`Last-Event-ID` is not readable text");
            Some(value.to_str().map_err(unreadable)?)
        }
    };
    let after = parse_last_event_id(last_event_id)?;
    let resumed = resume_stream(&state, &tenant, &path, after).await?;
    let client_gone = ClientGone::of(&request);
    let keep_alive = state.config.server.keep_alive_interval;
    let body = sse::body_stream(resumed.events, resumed.encoder, keep_alive, client_gone, Box::new(()));
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}
