//! The WebSocket protocol of `GET /v1/ws`: parsing client messages and rendering server
//! frames. Plain functions, tested without a socket.
//!
//! Client → server (JSON text frames):
//! - `{"id": "a", "type": "chat.completion" | "completion", "request": {OpenAI body}}`
//! - `{"id": "a", "type": "cancel"}`
//! - `{"id": "a", "type": "resume", "request_id": "chatcmpl-...", "after": 17}`: the rest
//!   of a stream (of this tenant, possibly started on another socket) after the chunk
//!   whose `event_id` was `after`
//! - `{"type": "auth", "api_key": "sk-swell-..."}` (when the upgrade had no
//!   `Authorization` header)
//!
//! Server → client:
//! - `{"id", "type": "status", "status": "accepted", "request_id": "req-..."}`: admitted
//!   (the first frame of every admitted request; `request_id` is what a `resume` names)
//! - `{"id", "type": "status", "status": "queued", "position": 3, "eta_s": 4.2}`
//! - `{"id", "type": "status", "status": "starting", "position": 1, "ready_in_seconds": 12.0, "eta_s": 12.0}`
//!   (`eta_s`: the expected wait until a replica takes the request, when there is an
//!   estimate)
//! - `{"id", "type": "status", "status": "running", "replica": "..."}`
//! - `{"id", "type": "chunk", "chunk": {OpenAI chunk}, "event_id": 17}` (`event_id`:
//!   tokens generated so far, on resumable streams)
//! - `{"id", "type": "done", "usage": {...}, "finish_reason": "stop"}`
//! - `{"id", "type": "error", "error": {"message", "type", "code", "param"}}` (no `id` when
//!   the message it answers had none, e.g. invalid JSON)
//! - `{"type": "authenticated", "tenant": "..."}`

use serde::Serialize;
use serde_json::Value;

use crate::api::error::{ApiError, ErrorDetail};
use crate::generation::json::strip_position;
use crate::generation::openai_types::{ResponseChunk, UsageBody};
use crate::generation::stream_encoder::StreamItem;
use crate::generation::validate::GenerationKind;
use crate::generation::GenerationError;

/// Longest accepted request id.
pub const MAX_ID_LENGTH: usize = 256;

/// A parsed client message.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Generate { id: String, kind: GenerationKind, request: Value },
    Cancel { id: String },
    /// Resume stream `request_id` after event id `after`, as request `id`.
    Resume { id: String, request_id: String, after: u64 },
    Auth { api_key: String },
}

/// A message that could not be taken: the error to answer, with the message's id when
/// it had a usable one.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub id: Option<String>,
    pub error: ApiError,
}

/// Parses one text frame.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, Rejection> {
    let value: Value = serde_json::from_str(text).map_err(|error| Rejection {
        id: None,
        error: GenerationError::InvalidJson(strip_position(&error.to_string())).into(),
    })?;
    let Value::Object(mut object) = value else {
        return Err(Rejection { id: None, error: ApiError::InvalidMessage("a message must be a json object".into()) });
    };
    let id = match object.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_LENGTH => Some(id),
        Some(_) => {
            return Err(Rejection {
                id: None,
                error: ApiError::InvalidMessage(format!("`id` must be a non-empty string of at most {MAX_ID_LENGTH} characters")),
            });
        }
    };
    let reject = |error: ApiError| Rejection { id: id.clone(), error };
    let kind = match object.remove("type") {
        Some(Value::String(kind)) => kind,
        Some(_) => return Err(reject(ApiError::InvalidMessage("`type` must be a string".into()))),
        None => return Err(reject(ApiError::InvalidMessage("missing `type`".into()))),
    };
    let require_id = || {
        id.clone().ok_or_else(|| reject(ApiError::InvalidMessage(format!("a `{kind}` message needs an `id`"))))
    };
    match kind.as_str() {
        "chat.completion" | "completion" => {
            let id = require_id()?;
            let request = match object.remove("request") {
                Some(request @ Value::Object(_)) => request,
                Some(_) => return Err(reject(ApiError::InvalidMessage("`request` must be a json object".into()))),
                None => return Err(reject(ApiError::InvalidMessage("missing `request`".into()))),
            };
            let kind = if kind == "chat.completion" { GenerationKind::Chat } else { GenerationKind::Completion };
            Ok(ClientMessage::Generate { id, kind, request })
        }
        "cancel" => Ok(ClientMessage::Cancel { id: require_id()? }),
        "resume" => {
            let id = require_id()?;
            let request_id = match object.remove("request_id") {
                Some(Value::String(request_id)) if request_id.len() <= MAX_ID_LENGTH => request_id,
                _ => return Err(reject(ApiError::InvalidMessage("a `resume` message needs a string `request_id`".into()))),
            };
            let after = match object.remove("after") {
                None | Some(Value::Null) => 0,
                Some(value) => value.as_u64().ok_or_else(|| {
                    reject(ApiError::InvalidMessage("`after` must be a non-negative integer (an `event_id`)".into()))
                })?,
            };
            Ok(ClientMessage::Resume { id, request_id, after })
        }
        "auth" => match object.remove("api_key") {
            Some(Value::String(api_key)) => Ok(ClientMessage::Auth { api_key }),
            _ => Err(reject(ApiError::InvalidMessage("an `auth` message needs a string `api_key`".into()))),
        },
        _ => Err(reject(ApiError::UnknownMessageType(kind))),
    }
}

/// A request's state while it waits or runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum WsStatus {
    /// Admitted: from now on the request ends with `done` or `error`, and `request_id`
    /// resumes its stream if this socket closes first.
    Accepted {
        request_id: String,
    },
    Queued {
        position: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        eta_s: Option<f64>,
    },
    Starting {
        #[serde(skip_serializing_if = "Option::is_none")]
        position: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ready_in_seconds: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        eta_s: Option<f64>,
    },
    Running {
        replica: String,
    },
}

/// A server frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Status {
        id: String,
        #[serde(flatten)]
        status: WsStatus,
    },
    Chunk {
        id: String,
        chunk: ResponseChunk,
        /// Tokens generated up to this chunk: what a `resume` continues after.
        #[serde(skip_serializing_if = "Option::is_none")]
        event_id: Option<u64>,
    },
    Done {
        id: String,
        usage: UsageBody,
        finish_reason: Option<&'static str>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        error: ErrorDetail,
    },
    Authenticated {
        tenant: String,
    },
}

impl ServerFrame {
    pub fn error(id: Option<String>, error: &ApiError) -> Self {
        ServerFrame::Error { id, error: error.body().error }
    }

    /// The frame of a stream item of request `id` (`None`: nothing to send).
    pub fn from_item(id: &str, item: StreamItem) -> Option<Self> {
        let id = id.to_string();
        let tenths = |d: std::time::Duration| (d.as_secs_f64() * 10.0).ceil() / 10.0;
        match item {
            StreamItem::Waiting { position, starting: true, ready_in, eta } => Some(ServerFrame::Status {
                id,
                status: WsStatus::Starting { position, ready_in_seconds: ready_in.map(tenths), eta_s: eta.map(tenths) },
            }),
            StreamItem::Waiting { position: Some(position), starting: false, eta, .. } => {
                Some(ServerFrame::Status { id, status: WsStatus::Queued { position, eta_s: eta.map(tenths) } })
            }
            StreamItem::Waiting { position: None, starting: false, .. } => None,
            StreamItem::Running { replica } => Some(ServerFrame::Status { id, status: WsStatus::Running { replica } }),
            StreamItem::Chunk(chunk, event_id) => Some(ServerFrame::Chunk { id, chunk, event_id }),
            StreamItem::Done { usage, finish_reason } => Some(ServerFrame::Done { id, usage, finish_reason }),
            StreamItem::Failed(error) => Some(ServerFrame::error(Some(id), &error.into())),
        }
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("frames serialize")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn rejected(text: &str) -> Rejection {
        parse_client_message(text).expect_err("should be rejected")
    }

    #[test]
    fn a_resume_names_the_stream_and_the_last_event() {
        assert_eq!(
            parse_client_message(r#"{"id": "r", "type": "resume", "request_id": "chatcmpl-x", "after": 7}"#).unwrap(),
            ClientMessage::Resume { id: "r".into(), request_id: "chatcmpl-x".into(), after: 7 }
        );
        assert_eq!(
            parse_client_message(r#"{"id": "r", "type": "resume", "request_id": "req-x"}"#).unwrap(),
            ClientMessage::Resume { id: "r".into(), request_id: "req-x".into(), after: 0 }
        );
        for bad in [
            r#"{"id": "r", "type": "resume"}"#,
            r#"{"id": "r", "type": "resume", "request_id": "req-x", "after": -1}"#,
            r#"{"type": "resume", "request_id": "req-x"}"#,
        ] {
            assert!(parse_client_message(bad).is_err(), "{bad}");
        }
    }

    fn empty_text() -> crate::generation::openai_types::TextCompletion {
        crate::generation::openai_types::TextCompletion {
            id: "cmpl-1".into(),
            object: crate::generation::openai_types::TEXT_COMPLETION,
            created: 1,
            model: "m".into(),
            choices: vec![],
            usage: None,
        }
    }

    #[test]
    fn a_chunk_frame_carries_its_event_id() {
        let frame = ServerFrame::from_item("a", StreamItem::Chunk(ResponseChunk::Text(empty_text()), Some(5))).unwrap();
        let value: Value = serde_json::from_str(&frame.to_text()).unwrap();
        assert_eq!(value["event_id"], 5, "{value}");
    }

    #[test]
    fn each_message_type_parses() {
        assert_eq!(
            parse_client_message(r#"{"id": "a", "type": "chat.completion", "request": {"model": "m"}}"#).unwrap(),
            ClientMessage::Generate { id: "a".into(), kind: GenerationKind::Chat, request: json!({"model": "m"}) }
        );
        assert_eq!(
            parse_client_message(r#"{"id": "b", "type": "completion", "request": {}}"#).unwrap(),
            ClientMessage::Generate { id: "b".into(), kind: GenerationKind::Completion, request: json!({}) }
        );
        assert_eq!(
            parse_client_message(r#"{"id": "a", "type": "cancel"}"#).unwrap(),
            ClientMessage::Cancel { id: "a".into() }
        );
        assert_eq!(
            parse_client_message(r#"{"type": "auth", "api_key": "sk-swell-x"}"#).unwrap(),
            ClientMessage::Auth { api_key: "sk-swell-x".into() }
        );
    }

    #[test]
    fn invalid_json_has_no_id() {
        let rejection = rejected("{not json");
        assert_eq!(rejection.id, None);
        assert_eq!(rejection.error.code(), "invalid_json");
        assert_eq!(rejected("[1]").error.code(), "invalid_message");
    }

    #[test]
    fn unknown_types_keep_the_id() {
        let rejection = rejected(r#"{"id": "x", "type": "subscribe"}"#);
        assert_eq!(rejection.id.as_deref(), Some("x"));
        assert_eq!(rejection.error.code(), "unknown_message_type");
        assert!(rejection.error.to_string().contains("subscribe"));
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        assert_eq!(rejected(r#"{"id": "x"}"#).error.code(), "invalid_message");
        assert_eq!(rejected(r#"{"type": "chat.completion", "request": {}}"#).error.code(), "invalid_message");
        assert_eq!(rejected(r#"{"id": "x", "type": "completion"}"#).error.code(), "invalid_message");
        assert_eq!(rejected(r#"{"id": "x", "type": "completion", "request": "hi"}"#).error.code(), "invalid_message");
        assert_eq!(rejected(r#"{"id": 5, "type": "cancel"}"#).error.code(), "invalid_message");
        assert_eq!(rejected(r#"{"type": "cancel"}"#).error.code(), "invalid_message");
        assert_eq!(rejected(r#"{"type": "auth"}"#).error.code(), "invalid_message");
    }

    #[test]
    fn frames_have_the_documented_shape() {
        let queued =
            ServerFrame::from_item("a", StreamItem::Waiting { position: Some(3), starting: false, ready_in: None, eta: None }).unwrap();
        assert_eq!(serde_json::to_value(&queued).unwrap(), json!({"id": "a", "type": "status", "status": "queued", "position": 3}));
        let estimated = ServerFrame::from_item(
            "a",
            StreamItem::Waiting { position: Some(3), starting: false, ready_in: None, eta: Some(Duration::from_millis(4_210)) },
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&estimated).unwrap(),
            json!({"id": "a", "type": "status", "status": "queued", "position": 3, "eta_s": 4.3})
        );
        let starting = ServerFrame::from_item(
            "a",
            StreamItem::Waiting {
                position: Some(1),
                starting: true,
                ready_in: Some(Duration::from_millis(11_930)),
                eta: Some(Duration::from_millis(11_930)),
            },
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&starting).unwrap(),
            json!({"id": "a", "type": "status", "status": "starting", "position": 1, "ready_in_seconds": 12.0, "eta_s": 12.0})
        );
        let running = ServerFrame::from_item("a", StreamItem::Running { replica: "r1".into() }).unwrap();
        assert_eq!(serde_json::to_value(&running).unwrap(), json!({"id": "a", "type": "status", "status": "running", "replica": "r1"}));
        let accepted = ServerFrame::Status { id: "a".into(), status: WsStatus::Accepted { request_id: "req-1".into() } };
        assert_eq!(
            serde_json::to_value(&accepted).unwrap(),
            json!({"id": "a", "type": "status", "status": "accepted", "request_id": "req-1"})
        );
        let chunk = ServerFrame::from_item("a", StreamItem::Chunk(ResponseChunk::Text(empty_text()), None)).unwrap();
        assert_eq!(
            serde_json::to_value(&chunk).unwrap(),
            json!({"id": "a", "type": "chunk", "chunk": {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": []}})
        );
        let done = ServerFrame::from_item(
            "a",
            StreamItem::Done { usage: UsageBody { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 }, finish_reason: Some("length") },
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&done).unwrap(),
            json!({"id": "a", "type": "done", "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}, "finish_reason": "length"})
        );
        let error = ServerFrame::error(None, &GenerationError::InvalidJson("eof".into()).into());
        let value = serde_json::to_value(&error).unwrap();
        assert_eq!(value["type"], "error");
        assert!(value.get("id").is_none());
        assert_eq!(value["error"]["code"], "invalid_json");
        assert_eq!(value["error"]["type"], "invalid_request_error");
        assert!(ServerFrame::from_item("a", StreamItem::Waiting { position: None, starting: false, ready_in: None, eta: None }).is_none());
    }
}
