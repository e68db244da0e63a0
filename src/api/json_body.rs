//! Reading HTTP request bodies: capped at the configured size (413
//! `request_body_too_large`), then parsed by [`crate::generation::json`].
//!
//! Handlers read the body themselves, after authentication, so an unauthenticated client
//! learns nothing about the body's validity.

use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::api::error::ApiError;
use crate::generation::error::GenerationError;
use crate::generation::json::parse_json;

/// Reads the whole body of a request, refusing one larger than `limit` bytes.
pub async fn read_body(
    request: &actix_web::HttpRequest,
    mut payload: actix_web::web::Payload,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(GenerationError::BodyTooLarge { limit }.into());
    }
    let mut body = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|error| match error {
            actix_web::error::PayloadError::Overflow => GenerationError::BodyTooLarge { limit },
            other => GenerationError::InvalidJson(format!("the request body could not be read: {other}")),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(GenerationError::BodyTooLarge { limit }.into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Reads and parses a JSON body.
pub async fn read_json<T: DeserializeOwned>(
    request: &actix_web::HttpRequest,
    payload: actix_web::web::Payload,
    limit: usize,
) -> Result<T, ApiError> {
    let body = read_body(request, payload, limit).await?;
    Ok(parse_json(&body)?)
}
