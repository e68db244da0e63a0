//! `GET /v1/ws`: several OpenAI requests streamed over one WebSocket.
//!
//! One task reads the client's messages; each generation request runs in its own task
//! that relays its events into the session. The connection keeps a map id → task: a
//! `cancel` cancels the request (`CancelRequest`) and aborts the task; when the client
//! closes or goes away, every task in flight is aborted (dropping its event receivers:
//! a request then runs on for `queue.resume_grace`, for a `resume` on another socket,
//! and is cancelled if none comes). A `resume` relays the rest of a stream of the same
//! tenant after the client's last `event_id` ([`crate::generation::resume`]). At most
//! [`MAX_IN_FLIGHT`] requests per connection.
//!
//! The connection keeps the hash of the key it authenticated with, never the tenant:
//! every request looks the tenant up again, so a revoked key is refused and the
//! tenant's current limits apply on connections opened before the change.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, Session};
use futures_util::StreamExt;
use swell_actors::request::{CancelRequest, RequestActor};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::auth::authorization;
use crate::api::error::ApiError;
use crate::generation::admit::{new_request_id, start_generation, Delivery, Generation, TaggedEvents};
use crate::generation::resume::resume_stream;
use crate::generation::json::from_value;
use crate::generation::resolve::resolve;
use crate::generation::openai_types::{ChatCompletionRequest, CompletionRequest};
use crate::generation::stream_encoder::{StreamEncoder, StreamItem};
use crate::generation::validate::GenerationKind;
use crate::generation::GenerationError;
use crate::api::ws_protocol::{parse_client_message, ClientMessage, ServerFrame, WsStatus};
use crate::metrics;
use crate::state::AppState;
use crate::tenants::{bearer_token, hash_api_key, TenantHandle, ANONYMOUS_TENANT};

/// Requests one connection may have in flight.
pub const MAX_IN_FLIGHT: usize = 64;

/// `GET /v1/ws`: upgrades, authenticating by the `Authorization` header when present.
pub async fn websocket(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // A key on the upgrade is checked now (401 before upgrading); without one the
    // client may authenticate with an `auth` message. While no key exists at all
    // (open mode) requests run as `anonymous`, decided per request.
    let key_hash = match authorization(&request) {
        Some(header) if state.tenants.auth_required() => {
            state.tenants.authenticate(Some(header))?;
            bearer_token(header).map(hash_api_key)
        }
        _ => None,
    };
    let (response, session, messages) = actix_ws::handle(&request, body)
        .map_err(|error| ApiError::WebSocketUpgradeRequired(error.to_string()))?;
    let max_bytes = state.config.server.max_body_bytes;
    let messages = messages.max_frame_size(max_bytes).aggregate_continuations().max_continuation_size(max_bytes);
    let connection = Connection {
        state: state.into_inner(),
        session,
        key_hash,
        in_flight: Rc::new(RefCell::new(HashMap::new())),
        next_serial: 0,
    };
    actix_rt::spawn(connection.run(messages));
    Ok(response)
}

struct InFlight {
    serial: u64,
    task: JoinHandle<()>,
    /// The request actors, once admitted (a `cancel` cancels them).
    handles: RequestHandles,
}

type RequestHandles = Rc<RefCell<Vec<Addr<RequestActor>>>>;

type InFlightMap = Rc<RefCell<HashMap<String, InFlight>>>;

struct Connection {
    state: Arc<AppState>,
    session: Session,
    /// The hash of the key the client presented (header or `auth` message). The tenant
    /// is looked up by it for every request, so a revoked key stops working and changed
    /// limits apply at once, on open connections too.
    key_hash: Option<String>,
    in_flight: InFlightMap,
    next_serial: u64,
}

impl Connection {
    async fn run(mut self, mut messages: AggregatedMessageStream) {
        metrics::websocket_connections(1.0);
        let mut close_reason = None;
        let state = self.state.clone();
        let shutdown = state.shutdown_started();
        tokio::pin!(shutdown);
        let mut shutting_down = false;
        loop {
            let message = if shutting_down {
                // Shutting down: requests in flight finish, then the connection closes.
                if self.in_flight.borrow().is_empty() {
                    close_reason = Some(actix_ws::CloseReason {
                        code: actix_ws::CloseCode::Away,
                        description: Some("the server is shutting down".into()),
                    });
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(100), messages.recv()).await {
                    Ok(message) => message,
                    Err(_) => continue,
                }
            } else {
                tokio::select! {
                    message = messages.recv() => message,
                    _ = &mut shutdown => {
                        shutting_down = true;
                        continue;
                    }
                }
            };
            let Some(message) = message else { break };
            let keep_going = match message {
                Ok(AggregatedMessage::Text(text)) => self.on_text(&text).await,
                Ok(AggregatedMessage::Binary(_)) => self.send(ServerFrame::error(None, &ApiError::BinaryNotSupported)).await,
                Ok(AggregatedMessage::Ping(bytes)) => self.session.pong(&bytes).await.is_ok(),
                Ok(AggregatedMessage::Pong(_)) => true,
                Ok(AggregatedMessage::Close(reason)) => {
                    close_reason = reason;
                    false
                }
                Err(error) => {
                    tracing::debug!(%error, "websocket protocol error");
                    let _ = self
                        .send(ServerFrame::error(None, &ApiError::InvalidMessage(format!("websocket protocol error: {error}"))))
                        .await;
                    false
                }
            };
            if !keep_going {
                break;
            }
        }
        // The client is gone: cancel everything it had in flight.
        for (_, entry) in self.in_flight.borrow_mut().drain() {
            entry.task.abort();
        }
        let _ = self.session.close(close_reason).await;
        metrics::websocket_connections(-1.0);
    }

    /// Sends a frame; `false` when the session is closed.
    async fn send(&mut self, frame: ServerFrame) -> bool {
        self.session.text(frame.to_text()).await.is_ok()
    }

    async fn on_text(&mut self, text: &str) -> bool {
        match parse_client_message(text) {
            Err(rejection) => self.send(ServerFrame::error(rejection.id, &rejection.error)).await,
            Ok(ClientMessage::Auth { api_key }) => {
                if !self.state.tenants.auth_required() {
                    // Open mode: any key is accepted and requests run as `anonymous`.
                    let frame = ServerFrame::Authenticated { tenant: ANONYMOUS_TENANT.to_string() };
                    return self.send(frame).await;
                }
                match self.state.tenants.authenticate_key(&api_key) {
                    Ok(tenant) => {
                        let frame = ServerFrame::Authenticated { tenant: tenant.id.clone() };
                        self.key_hash = Some(hash_api_key(&api_key));
                        self.send(frame).await
                    }
                    Err(error) => self.send(ServerFrame::error(None, &error.into())).await,
                }
            }
            Ok(ClientMessage::Cancel { id }) => {
                let entry = self.in_flight.borrow_mut().remove(&id);
                let error = match entry {
                    Some(entry) => {
                        for handle in entry.handles.borrow().iter() {
                            handle.do_send(CancelRequest);
                        }
                        entry.task.abort();
                        metrics::websocket_request("cancelled");
                        GenerationError::Failed { code: "cancelled".into(), message: "the request was cancelled".into() }.into()
                    }
                    None => ApiError::UnknownRequestId(id.clone()),
                };
                self.send(ServerFrame::error(Some(id), &error)).await
            }
            Ok(ClientMessage::Generate { id, kind, request }) => match self.admit(&id) {
                Err(error) => self.send(ServerFrame::error(Some(id), &error)).await,
                Ok(tenant) => {
                    self.spawn_request(id, Start::Generate { kind, request, size: text.len() }, tenant);
                    true
                }
            },
            Ok(ClientMessage::Resume { id, request_id, after }) => match self.admit(&id) {
                Err(error) => self.send(ServerFrame::error(Some(id), &error)).await,
                Ok(tenant) => {
                    self.spawn_request(id, Start::Resume { request_id, after }, tenant);
                    true
                }
            },
        }
    }

    /// The tenant a new request runs as (with its current keys and limits), or why it
    /// may not start.
    fn admit(&self, id: &str) -> Result<TenantHandle, ApiError> {
        let tenant = match &self.key_hash {
            Some(hash) => self.state.tenants.authenticate_hash(hash)?,
            // Open mode (no key exists) runs as `anonymous`; otherwise a key is needed.
            None => self.state.tenants.authenticate(None).map_err(|_| ApiError::Unauthorized)?,
        };
        let in_flight = self.in_flight.borrow();
        if in_flight.contains_key(id) {
            return Err(ApiError::DuplicateId(id.to_string()));
        }
        if in_flight.len() >= MAX_IN_FLIGHT {
            return Err(ApiError::TooManyRequestsOnConnection { limit: MAX_IN_FLIGHT });
        }
        Ok(tenant)
    }

    fn spawn_request(&mut self, id: String, start: Start, tenant: TenantHandle) {
        self.next_serial += 1;
        let serial = self.next_serial;
        let handles = RequestHandles::default();
        let relay = RequestRelay {
            state: self.state.clone(),
            session: self.session.clone(),
            id: id.clone(),
            in_flight: self.in_flight.clone(),
            serial,
            handles: handles.clone(),
        };
        let task = actix_rt::spawn(relay.run(start, tenant));
        self.in_flight.borrow_mut().insert(id, InFlight { serial, task, handles });
    }
}

/// What a relay starts: a new generation, or the rest of a stream.
enum Start {
    Generate { kind: GenerationKind, request: serde_json::Value, size: usize },
    Resume { request_id: String, after: u64 },
}

/// Runs one request of a connection and relays its stream as frames.
struct RequestRelay {
    state: Arc<AppState>,
    session: Session,
    id: String,
    in_flight: InFlightMap,
    serial: u64,
    handles: RequestHandles,
}

impl RequestRelay {
    async fn run(mut self, start: Start, tenant: TenantHandle) {
        let outcome = match start {
            Start::Generate { kind, request, size } => self.relay(kind, request, size, tenant).await,
            Start::Resume { request_id, after } => match resume_stream(&self.state, &tenant, &request_id, after).await {
                Ok(resumed) => {
                    self.handles.borrow_mut().push(resumed.handle);
                    self.forward(resumed.events, resumed.encoder).await
                }
                Err(error) => {
                    self.send(ServerFrame::error(Some(self.id.clone()), &error.into())).await;
                    "rejected"
                }
            },
        };
        metrics::websocket_request(outcome);
        let mut in_flight = self.in_flight.borrow_mut();
        if in_flight.get(&self.id).is_some_and(|entry| entry.serial == self.serial) {
            in_flight.remove(&self.id);
        }
    }

    async fn send(&mut self, frame: ServerFrame) -> bool {
        self.session.text(frame.to_text()).await.is_ok()
    }

    async fn relay(
        &mut self,
        kind: GenerationKind,
        request: serde_json::Value,
        size: usize,
        tenant: TenantHandle,
    ) -> &'static str {
        let received_at = Instant::now();
        let request_id = new_request_id();
        let generation = match self.start(kind, request, size, &tenant, received_at, &request_id).await {
            Ok(generation) => generation,
            Err(error) => {
                self.send(ServerFrame::error(Some(self.id.clone()), &error)).await;
                return "rejected";
            }
        };
        // Admitted: the client learns the stream's id at once (as an HTTP client does from
        // `x-request-id`), so it can resume even before the first chunk.
        if !self.send(ServerFrame::Status { id: self.id.clone(), status: WsStatus::Accepted { request_id } }).await {
            return "disconnected";
        }
        let encoder = StreamEncoder::new(generation.meta, &generation.validated.prompts);
        *self.handles.borrow_mut() = generation.handles;
        self.forward(generation.events, encoder).await
    }

    /// Relays events as frames until the stream ends or the socket closes.
    async fn forward(&mut self, mut events: TaggedEvents, mut encoder: StreamEncoder) -> &'static str {
        loop {
            let items = match events.next().await {
                Some((index, event)) => encoder.on_event(index, event),
                None => encoder.on_streams_closed(),
            };
            for item in items {
                let outcome = match &item {
                    StreamItem::Done { .. } => Some("ok"),
                    StreamItem::Failed(_) => Some("failed"),
                    _ => None,
                };
                if let Some(frame) = ServerFrame::from_item(&self.id, item) {
                    if !self.send(frame).await {
                        return "disconnected";
                    }
                }
                if let Some(outcome) = outcome {
                    return outcome;
                }
            }
        }
    }

    async fn start(
        &self,
        kind: GenerationKind,
        request: serde_json::Value,
        size: usize,
        tenant: &TenantHandle,
        received_at: Instant,
        request_id: &str,
    ) -> Result<Generation, ApiError> {
        let (deployment, validated) = match kind {
            GenerationKind::Chat => resolve(&self.state, from_value::<ChatCompletionRequest>(request)?, size).await?,
            GenerationKind::Completion => resolve(&self.state, from_value::<CompletionRequest>(request)?, size).await?,
        };
        Ok(start_generation(&self.state, tenant, &deployment, validated, request_id, received_at, Delivery::Resumable).await?)
    }
}
