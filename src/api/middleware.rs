//! What wraps every request: a request id (`x-request-id`, also the job id of a
//! generation), the HTTP metrics, and JSON answers for unknown routes and methods.

use std::future::Future;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};

use crate::api::error::ApiError;
use crate::generation::admit::new_request_id;
use crate::metrics;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of the current request, set by [`request_context`].
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The request id of a request (a fresh one if the middleware did not run).
pub fn request_id(request: &HttpRequest) -> String {
    request.extensions().get::<RequestId>().map(|id| id.0.clone()).unwrap_or_else(new_request_id)
}

/// Assigns the request id, sets `x-request-id` on the response and counts the request
/// by route pattern and status. (For `App::wrap_fn`.)
pub fn request_context<S, B>(
    request: ServiceRequest,
    service: &S,
) -> impl Future<Output = Result<ServiceResponse<B>, actix_web::Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: MessageBody,
{
    let id = new_request_id();
    request.extensions_mut().insert(RequestId(id.clone()));
    let call = service.call(request);
    async move {
        let mut response = call.await?;
        let route = response.request().match_pattern().unwrap_or_else(|| "unmatched".to_string());
        metrics::http_request(&route, response.status().as_u16());
        if let Ok(value) = HeaderValue::from_str(&id) {
            response.headers_mut().insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
        }
        Ok(response)
    }
}

/// The answer for a path no route matches.
pub async fn route_not_found(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound { method: request.method().to_string(), path: request.path().to_string() })
}

/// The answer for a known path with a method it does not take.
pub async fn method_not_allowed(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { method: request.method().to_string(), path: request.path().to_string() })
}

/// A resource whose unsupported methods answer 405 in the API's error shape.
pub fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}
