//! Every route of the server, and the extractor error handlers that keep actix's own
//! errors in the API's JSON shape.

use actix_web::web;

use crate::api::error::ApiError;
use crate::generation::GenerationError;
use crate::api::middleware::resource;
use crate::api::{admin, health, openai, streams, ws};

/// Registers every route (`App::configure`).
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .app_data(extractor_errors_as_json_path())
        .app_data(extractor_errors_as_json_query())
        .app_data(extractor_errors_as_json_body())
        .service(resource("/healthz").route(web::get().to(health::healthz)))
        .service(resource("/readyz").route(web::get().to(health::readyz)))
        .service(resource("/metrics").route(web::get().to(health::metrics_text)))
        .service(resource("/v1/models").route(web::get().to(openai::list_models)))
        .service(resource("/v1/models/{id}").route(web::get().to(openai::get_model)))
        .service(resource("/v1/chat/completions").route(web::post().to(openai::chat_completions)))
        .service(resource("/v1/completions").route(web::post().to(openai::completions)))
        .service(resource("/v1/streams/{id}").route(web::get().to(streams::resume)))
        .service(resource("/v1/ws").route(web::get().to(ws::websocket)))
        .service(resource("/admin/v1/deployments").route(web::get().to(admin::list_deployments)))
        .service(
            resource("/admin/v1/deployments/{name}")
                .route(web::put().to(admin::put_deployment))
                .route(web::get().to(admin::get_deployment))
                .route(web::delete().to(admin::delete_deployment)),
        )
        .service(resource("/admin/v1/cluster").route(web::get().to(admin::get_cluster)))
        .service(resource("/admin/v1/tenants").route(web::get().to(admin::list_tenants)))
        .service(
            resource("/admin/v1/tenants/{id}")
                .route(web::put().to(admin::put_tenant))
                .route(web::get().to(admin::get_tenant)),
        )
        .service(resource("/admin/v1/tenants/{id}/keys").route(web::post().to(admin::create_key)))
        .service(
            resource("/admin/v1/tenants/{id}/keys/{key_id}").route(web::delete().to(admin::revoke_key)),
        );
}

fn extractor_errors_as_json_path() -> web::PathConfig {
    web::PathConfig::default().error_handler(|error, _| {
        ApiError::from(GenerationError::invalid_value("path", format!("invalid path: {error}"))).into()
    })
}

fn extractor_errors_as_json_query() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|error, _| {
        ApiError::from(GenerationError::invalid_value("query", format!("invalid query string: {error}"))).into()
    })
}

/// Handlers read bodies through [`crate::api::json_body`]; this covers any `web::Json`.
fn extractor_errors_as_json_body() -> web::JsonConfig {
    web::JsonConfig::default().error_handler(|error, _| {
        use actix_web::error::JsonPayloadError;
        match error {
            JsonPayloadError::OverflowKnownLength { limit, .. } | JsonPayloadError::Overflow { limit } => {
                ApiError::from(GenerationError::BodyTooLarge { limit }).into()
            }
            other => ApiError::from(GenerationError::InvalidJson(other.to_string())).into(),
        }
    })
}
