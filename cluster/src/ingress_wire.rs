//! The Redis ingress wire format, version 1: how programs that are not Swell push
//! generation requests into Redis and read the answers (`docs/ingress.md` is the full
//! description; this module is its Rust side).
//!
//! A producer `XADD`s one entry per request to the ingress stream
//! ([`ingress_stream_key`], `swell:{ingress}:requests` by default); a Swell gateway reads
//! it with a consumer group, validates the request exactly like an HTTP request, and
//! appends the answer to the producer's `reply_to` stream as [`Reply`] entries, the last
//! of which is terminal ([`ReplyKind::is_terminal`]). `reply_to` must start with the
//! tenant's reply prefix: the one configured for the tenant, or
//! [`default_reply_prefix`] (`swell-replies:<n>:<tenant>:`).
//!
//! An entry is either JSON fields (`enc` = `json`, the default: every field a string) or
//! one bincode payload (`enc` = `bincode`, `payload` = [`IngressRequest`] encoded with
//! `bincode::serde` and `bincode::config::standard()`), which Rust producers use. Either
//! way the OpenAI request body travels as JSON text: its shape is open-ended (content
//! parts, `stop` as a string or a list, ...), which a non-self-describing format cannot
//! carry, and Swell parses it with the same parser as an HTTP body.
//!
//! [`Producer`] is an async client for Rust programs: `submit` and `read_replies`.
//!
//! # Layout
//! - [`ingress_stream_key`], [`seen_key`], [`default_reply_prefix`]: key names.
//! - [`IngressRequest`], [`RequestKind`], [`Encoding`]: one request and how it is encoded.
//! - [`IngressRequest::to_fields`] / [`IngressRequest::from_fields`]: entry fields ⇄
//!   request, with [`WireError`] saying what is wrong (and [`WireRejection`] what is known
//!   of the entry, so it can still be answered).
//! - [`Reply`], [`ReplyKind`]: the entries of a `reply_to` stream.
//! - [`Producer`]: submitting requests and reading replies over Redis.

use std::collections::HashMap;
use std::time::Duration;

use redis::streams::{StreamId, StreamReadReply};
use redis::{RedisError, Value};

use crate::redis_conn::{BlockingConnection, RedisClient, RedisEndpoint, SharedConnection};
use serde::{Deserialize, Serialize};

/// The wire version this module speaks (the `v` field).
pub const WIRE_VERSION: &str = "1";
/// Longest accepted request id (the `id` field).
pub const MAX_ID_LENGTH: usize = 256;
/// Longest accepted `reply_to` key.
pub const MAX_REPLY_TO_LENGTH: usize = 512;

/// The ingress stream of an installation whose Redis keys start with `key_prefix`
/// (`swell` by default): `<prefix>:{ingress}:requests`. The hash tag puts the stream and
/// its idempotency markers in one Redis Cluster slot.
pub fn ingress_stream_key(key_prefix: &str) -> String {
    format!("{key_prefix}:{{ingress}}:requests")
}

/// The idempotency marker of request `id` of `tenant`:
/// `<prefix>:{ingress}:seen:<n>:<tenant>:<id>`, `<n>` the tenant id's length in bytes.
/// The length makes the parts unambiguous: tenant ids may contain `:`, and tenant `col`
/// with id `x:1` must not share a marker with tenant `col:x` with id `1`.
pub fn seen_key(key_prefix: &str, tenant: &str, id: &str) -> String {
    format!("{key_prefix}:{{ingress}}:seen:{}:{tenant}:{id}", tenant.len())
}

/// The root of the tenants' default reply prefixes: `<prefix>-replies:`, outside Swell's
/// own keys (`<prefix>:`, never a `reply_to`).
pub fn reply_namespace(key_prefix: &str) -> String {
    format!("{key_prefix}-replies:")
}

/// The reply prefix of a tenant that has none configured:
/// `<prefix>-replies:<n>:<tenant>:`, `<n>` the tenant id's length in bytes. Every
/// `reply_to` of the tenant's entries must start with its reply prefix. The length keeps
/// tenants apart although their ids may contain `:`: no tenant's prefix starts with
/// another's (`col` has `swell-replies:3:col:`, `col:x` has `swell-replies:5:col:x:`).
pub fn default_reply_prefix(key_prefix: &str, tenant: &str) -> String {
    format!("{}{}:{tenant}:", reply_namespace(key_prefix), tenant.len())
}

/// Whether two key prefixes share keys: one starts with the other.
pub fn prefixes_overlap(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Which OpenAI endpoint the request body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `/v1/chat/completions` (the default when `kind` is absent).
    Chat,
    /// `/v1/completions`.
    Completion,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Chat => "chat",
            RequestKind::Completion => "completion",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "chat" => Some(RequestKind::Chat),
            "completion" => Some(RequestKind::Completion),
            _ => None,
        }
    }
}

/// How an entry carries its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// One string field per request field.
    Json,
    /// The whole [`IngressRequest`] in the `payload` field (bincode 2, serde, standard
    /// config); `id` and `reply_to` are repeated as plain fields so that an entry whose
    /// payload cannot be decoded can still be answered.
    Bincode,
}

/// One request pushed into the ingress stream.
///
/// No `skip_serializing_if` anywhere: bincode is positional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressRequest {
    /// The producer's request id: unique per tenant; a repeated id is answered once.
    pub id: String,
    /// The plaintext API key, as a client would send it over HTTP (`None` only where
    /// the server runs without keys).
    pub api_key: Option<String>,
    /// The deployment (the OpenAI `model`); the body's `model` may be left out.
    pub deployment: String,
    pub kind: RequestKind,
    /// The OpenAI request body, as JSON text.
    pub request: String,
    /// The stream the replies are appended to.
    pub reply_to: String,
    /// Give up (`deadline_exceeded`) if not finished by then (Unix milliseconds).
    pub deadline_ms: Option<u64>,
}

/// What is wrong with an entry. Each variant has a stable [`WireError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unsupported wire version `{0}`; this server speaks version 1 (`v` = \"1\")")]
    UnsupportedVersion(String),
    #[error("missing required field: `{0}`")]
    MissingField(&'static str),
    #[error("invalid field `{field}`: {message}")]
    InvalidField { field: &'static str, message: String },
    #[error("unsupported encoding `{0}`; known encodings: json, bincode")]
    UnsupportedEncoding(String),
    #[error("the bincode payload could not be decoded: {0}")]
    InvalidPayload(String),
}

impl WireError {
    pub fn code(&self) -> &'static str {
        match self {
            WireError::UnsupportedVersion(_) => "unsupported_version",
            WireError::MissingField(_) => "missing_required_parameter",
            WireError::InvalidField { .. } => "invalid_value",
            WireError::UnsupportedEncoding(_) => "unsupported_encoding",
            WireError::InvalidPayload(_) => "invalid_payload",
        }
    }

    /// The field the error is about.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            WireError::UnsupportedVersion(_) => Some("v"),
            WireError::MissingField(field) | WireError::InvalidField { field, .. } => Some(field),
            WireError::UnsupportedEncoding(_) => Some("enc"),
            WireError::InvalidPayload(_) => Some("payload"),
        }
    }
}

/// An entry that could not be decoded, with what could be read of it so that it can be
/// answered (when `reply_to` is usable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRejection {
    pub id: Option<String>,
    pub reply_to: Option<String>,
    pub error: WireError,
}

/// The fields of a stream entry, as bytes.
pub type Fields = HashMap<String, Vec<u8>>;

/// The fields of an entry read with `XREAD`/`XREADGROUP` (non-string values are dropped).
pub fn entry_fields(entry: &StreamId) -> Fields {
    entry
        .map
        .iter()
        .filter_map(|(name, value)| match value {
            Value::BulkString(bytes) => Some((name.clone(), bytes.clone())),
            Value::SimpleString(text) => Some((name.clone(), text.clone().into_bytes())),
            Value::Int(n) => Some((name.clone(), n.to_string().into_bytes())),
            _ => None,
        })
        .collect()
}

fn text_field<'a>(fields: &'a Fields, name: &'static str) -> Result<Option<&'a str>, WireError> {
    match fields.get(name) {
        None => Ok(None),
        Some(bytes) => std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| WireError::InvalidField { field: name, message: "not valid utf-8".into() }),
    }
}

fn required<'a>(fields: &'a Fields, name: &'static str) -> Result<&'a str, WireError> {
    text_field(fields, name)?.ok_or(WireError::MissingField(name))
}

fn check_id(id: &str) -> Result<(), WireError> {
    if id.is_empty() || id.len() > MAX_ID_LENGTH {
        return Err(WireError::InvalidField {
            field: "id",
            message: format!("must be 1 to {MAX_ID_LENGTH} bytes"),
        });
    }
    Ok(())
}

fn check_reply_to(reply_to: &str) -> Result<(), WireError> {
    if reply_to.is_empty() || reply_to.len() > MAX_REPLY_TO_LENGTH {
        return Err(WireError::InvalidField {
            field: "reply_to",
            message: format!("must be 1 to {MAX_REPLY_TO_LENGTH} bytes"),
        });
    }
    Ok(())
}

impl IngressRequest {
    /// The fields of the stream entry for this request.
    pub fn to_fields(&self, encoding: Encoding) -> Vec<(&'static str, Vec<u8>)> {
        let mut fields = vec![("v", WIRE_VERSION.as_bytes().to_vec())];
        match encoding {
            Encoding::Json => {
                fields.push(("id", self.id.clone().into_bytes()));
                if let Some(api_key) = &self.api_key {
                    fields.push(("api_key", api_key.clone().into_bytes()));
                }
                fields.push(("deployment", self.deployment.clone().into_bytes()));
                fields.push(("kind", self.kind.as_str().as_bytes().to_vec()));
                fields.push(("request", self.request.clone().into_bytes()));
                fields.push(("reply_to", self.reply_to.clone().into_bytes()));
                if let Some(deadline) = self.deadline_ms {
                    fields.push(("deadline_ms", deadline.to_string().into_bytes()));
                }
            }
            Encoding::Bincode => {
                fields.push(("enc", b"bincode".to_vec()));
                fields.push(("id", self.id.clone().into_bytes()));
                fields.push(("reply_to", self.reply_to.clone().into_bytes()));
                fields.push(("payload", self.to_bincode()));
            }
        }
        fields
    }

    /// The request as bincode (serde, standard config).
    pub fn to_bincode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).expect("an ingress request encodes")
    }

    /// Decodes a bincode payload (all of it).
    pub fn from_bincode(bytes: &[u8]) -> Result<Self, WireError> {
        let (request, read): (Self, usize) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|error| WireError::InvalidPayload(error.to_string()))?;
        if read != bytes.len() {
            return Err(WireError::InvalidPayload(format!("{} trailing bytes", bytes.len() - read)));
        }
        Ok(request)
    }

    /// Decodes an entry's fields. On failure the rejection carries the `id` and
    /// `reply_to` when they could be read.
    pub fn from_fields(fields: &Fields) -> Result<Self, WireRejection> {
        let id = text_field(fields, "id").ok().flatten().filter(|id| check_id(id).is_ok()).map(str::to_string);
        let reply_to = text_field(fields, "reply_to")
            .ok()
            .flatten()
            .filter(|reply_to| check_reply_to(reply_to).is_ok())
            .map(str::to_string);
        Self::decode(fields).map_err(|error| WireRejection { id, reply_to, error })
    }

    fn decode(fields: &Fields) -> Result<Self, WireError> {
        match text_field(fields, "v")? {
            Some(WIRE_VERSION) => {}
            Some(other) => return Err(WireError::UnsupportedVersion(other.to_string())),
            None => return Err(WireError::MissingField("v")),
        }
        let request = match text_field(fields, "enc")? {
            None | Some("json") => Self::decode_json_fields(fields)?,
            Some("bincode") => {
                let payload = fields.get("payload").ok_or(WireError::MissingField("payload"))?;
                let request = Self::from_bincode(payload)?;
                // The plain fields, when present, must agree with the payload.
                for (name, plain, inside) in [
                    ("id", text_field(fields, "id")?, request.id.as_str()),
                    ("reply_to", text_field(fields, "reply_to")?, request.reply_to.as_str()),
                ] {
                    if plain.is_some_and(|plain| plain != inside) {
                        return Err(WireError::InvalidField {
                            field: if name == "id" { "id" } else { "reply_to" },
                            message: "differs from the payload's".into(),
                        });
                    }
                }
                request
            }
            Some(other) => return Err(WireError::UnsupportedEncoding(other.to_string())),
        };
        check_id(&request.id)?;
        check_reply_to(&request.reply_to)?;
        if request.deployment.is_empty() {
            return Err(WireError::InvalidField { field: "deployment", message: "must not be empty".into() });
        }
        Ok(request)
    }

    fn decode_json_fields(fields: &Fields) -> Result<Self, WireError> {
        let id = required(fields, "id")?.to_string();
        let reply_to = required(fields, "reply_to")?.to_string();
        let deployment = required(fields, "deployment")?.to_string();
        let request = required(fields, "request")?.to_string();
        let kind = match text_field(fields, "kind")? {
            None => RequestKind::Chat,
            Some(kind) => RequestKind::parse(kind).ok_or_else(|| WireError::InvalidField {
                field: "kind",
                message: format!("unknown kind `{kind}`; known kinds: chat, completion"),
            })?,
        };
        let deadline_ms = match text_field(fields, "deadline_ms")? {
            None | Some("") => None,
            Some(text) => Some(text.parse::<u64>().map_err(|_| WireError::InvalidField {
                field: "deadline_ms",
                message: "must be Unix milliseconds (an unsigned integer)".into(),
            })?),
        };
        let api_key = text_field(fields, "api_key")?.map(str::to_string);
        Ok(Self { id, api_key, deployment, kind, request, reply_to, deadline_ms })
    }
}

/// The type of a reply entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    /// Streaming only: waiting in the queue, a replica starting, or running.
    Status,
    /// Streaming only: an OpenAI chunk (`chat.completion.chunk` or `text_completion`).
    Chunk,
    /// Streaming only, terminal: every choice finished (`usage`, `finish_reason`).
    Done,
    /// Non-streaming, terminal: the whole OpenAI response body.
    Completion,
    /// Terminal: the request was refused or failed (`error`, `status`).
    Error,
}

impl ReplyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyKind::Status => "status",
            ReplyKind::Chunk => "chunk",
            ReplyKind::Done => "done",
            ReplyKind::Completion => "completion",
            ReplyKind::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [ReplyKind::Status, ReplyKind::Chunk, ReplyKind::Done, ReplyKind::Completion, ReplyKind::Error]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }

    /// Nothing follows a terminal reply for the same request.
    pub fn is_terminal(self) -> bool {
        matches!(self, ReplyKind::Done | ReplyKind::Completion | ReplyKind::Error)
    }
}

/// One entry of a `reply_to` stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The request's id (`None` for an entry whose id could not be read).
    pub id: Option<String>,
    /// 0, 1, 2, ... per request.
    pub seq: u64,
    pub kind: ReplyKind,
    /// The JSON `data` field.
    pub data: serde_json::Value,
}

impl Reply {
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.clone().unwrap_or_default()),
            ("seq", self.seq.to_string()),
            ("type", self.kind.as_str().to_string()),
            ("data", self.data.to_string()),
        ]
    }

    pub fn from_fields(fields: &Fields) -> Result<Self, WireError> {
        let id = required(fields, "id")?;
        let seq = required(fields, "seq")?
            .parse()
            .map_err(|_| WireError::InvalidField { field: "seq", message: "not an integer".into() })?;
        let kind = required(fields, "type")?;
        let kind = ReplyKind::parse(kind)
            .ok_or_else(|| WireError::InvalidField { field: "type", message: format!("unknown type `{kind}`") })?;
        let data = serde_json::from_str(required(fields, "data")?)
            .map_err(|error| WireError::InvalidField { field: "data", message: error.to_string() })?;
        Ok(Self { id: (!id.is_empty()).then(|| id.to_string()), seq, kind, data })
    }

    /// `data.error.code` of an error reply.
    pub fn error_code(&self) -> Option<&str> {
        (self.kind == ReplyKind::Error).then(|| self.data["error"]["code"].as_str()).flatten()
    }
}

/// Why a [`Producer`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("a reply entry could not be read: {0}")]
    BadReply(WireError),
    #[error("timed out waiting for replies")]
    TimedOut,
    #[error("redis address: {0}")]
    Address(String),
}

/// Pushes requests into the ingress stream and reads replies, for Rust programs.
///
/// ```no_run
/// # async fn example() -> Result<(), swell_cluster::ingress_wire::ProducerError> {
/// use swell_cluster::ingress_wire::{default_reply_prefix, Encoding, IngressRequest, Producer, RequestKind};
/// let producer = Producer::connect("redis://127.0.0.1:6379", "swell").await?;
/// // Replies go under the tenant's reply prefix (here the default one of tenant `acme`).
/// let reply_to = format!("{}{{me}}", default_reply_prefix("swell", "acme"));
/// let request = IngressRequest {
///     id: "job-1".into(),
///     api_key: Some("sk-swell-...".into()),
///     deployment: "default".into(),
///     kind: RequestKind::Chat,
///     request: r#"{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}"#.into(),
///     reply_to,
///     deadline_ms: None,
/// };
/// producer.submit(&request, Encoding::Bincode).await?;
/// let replies = producer.wait_for(&request.reply_to, "job-1", std::time::Duration::from_secs(30)).await?;
/// println!("{:?}", replies.last());
/// # Ok(())
/// # }
/// ```
pub struct Producer {
    client: RedisClient,
    shared: SharedConnection,
    stream: String,
}

impl Producer {
    /// Connects to the Redis of an installation whose keys start with `key_prefix`
    /// (`redis://…`, or `redis-cluster://host:port,…` for a Redis Cluster).
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self, ProducerError> {
        let endpoint = RedisEndpoint::parse(url).map_err(ProducerError::Address)?;
        let timeout = Duration::from_secs(5);
        let client = RedisClient::new(&endpoint, timeout, timeout)?;
        let shared = client.shared(timeout, timeout).await?;
        Ok(Self { client, shared, stream: ingress_stream_key(key_prefix) })
    }

    /// The ingress stream this producer writes to.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Appends one request; answers the entry's stream id.
    pub async fn submit(&self, request: &IngressRequest, encoding: Encoding) -> Result<String, ProducerError> {
        let mut command = redis::cmd("XADD");
        command.arg(&self.stream).arg("*");
        for (name, value) in request.to_fields(encoding) {
            command.arg(name).arg(value);
        }
        let mut connection = self.shared.clone();
        Ok(command.query_async(&mut connection).await?)
    }

    /// Reads the replies of `reply_to` after stream id `after` (`0` for all), waiting up
    /// to `block` for the first one when there is none. Answers `(stream id, reply)`.
    pub async fn read_replies(
        &self,
        reply_to: &str,
        after: &str,
        block: Option<Duration>,
    ) -> Result<Vec<(String, Reply)>, ProducerError> {
        let mut command = redis::cmd("XREAD");
        command.arg("COUNT").arg(1000);
        if let Some(block) = block {
            command.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        command.arg("STREAMS").arg(reply_to).arg(after);
        let read: Option<StreamReadReply> = match block {
            // A blocking read gets a connection of its own: it would stall the shared one.
            Some(_) => command.query_async(&mut self.blocking_connection().await?).await?,
            None => command.query_async(&mut self.shared.clone()).await?,
        };
        let mut replies = Vec::new();
        for entry in read.into_iter().flat_map(|read| read.keys).flat_map(|key| key.ids) {
            let reply = Reply::from_fields(&entry_fields(&entry)).map_err(ProducerError::BadReply)?;
            replies.push((entry.id, reply));
        }
        Ok(replies)
    }

    /// Reads `reply_to` from the start until request `id` has its terminal reply;
    /// answers that request's replies in order.
    pub async fn wait_for(&self, reply_to: &str, id: &str, timeout: Duration) -> Result<Vec<Reply>, ProducerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut after = "0".to_string();
        let mut mine = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ProducerError::TimedOut);
            }
            for (stream_id, reply) in self.read_replies(reply_to, &after, Some(left.min(Duration::from_secs(1)))).await? {
                after = stream_id;
                if reply.id.as_deref() == Some(id) {
                    let terminal = reply.kind.is_terminal();
                    mine.push(reply);
                    if terminal {
                        return Ok(mine);
                    }
                }
            }
        }
    }

    async fn blocking_connection(&self) -> Result<BlockingConnection, RedisError> {
        self.client.blocking(Duration::from_secs(5)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> IngressRequest {
        IngressRequest {
            id: "job-1".into(),
            api_key: Some("sk-swell-x".into()),
            deployment: "default".into(),
            kind: RequestKind::Completion,
            request: r#"{"prompt": "hi"}"#.into(),
            reply_to: "replies:a".into(),
            deadline_ms: Some(1_700_000_000_000),
        }
    }

    fn fields_of(encoded: Vec<(&'static str, Vec<u8>)>) -> Fields {
        encoded.into_iter().map(|(name, value)| (name.to_string(), value)).collect()
    }

    #[test]
    fn both_encodings_round_trip() {
        for encoding in [Encoding::Json, Encoding::Bincode] {
            let fields = fields_of(request().to_fields(encoding));
            assert_eq!(IngressRequest::from_fields(&fields).unwrap(), request(), "{encoding:?}");
        }
        let without = IngressRequest { api_key: None, deadline_ms: None, kind: RequestKind::Chat, ..request() };
        let mut fields = fields_of(without.to_fields(Encoding::Json));
        fields.remove("kind");
        assert_eq!(IngressRequest::from_fields(&fields).unwrap(), without);
    }

    #[test]
    fn bad_entries_say_what_is_wrong_and_keep_what_can_be_answered() {
        let mut fields = fields_of(request().to_fields(Encoding::Json));
        fields.insert("v".into(), b"2".to_vec());
        let rejection = IngressRequest::from_fields(&fields).unwrap_err();
        assert_eq!(rejection.error.code(), "unsupported_version");
        assert_eq!(rejection.id.as_deref(), Some("job-1"));
        assert_eq!(rejection.reply_to.as_deref(), Some("replies:a"));

        for missing in ["v", "id", "deployment", "request", "reply_to"] {
            let mut fields = fields_of(request().to_fields(Encoding::Json));
            fields.remove(missing);
            let rejection = IngressRequest::from_fields(&fields).unwrap_err();
            assert_eq!(rejection.error, WireError::MissingField(missing));
            assert_eq!(rejection.error.code(), "missing_required_parameter");
        }

        let mut fields = fields_of(request().to_fields(Encoding::Json));
        fields.insert("kind".into(), b"embedding".to_vec());
        assert_eq!(IngressRequest::from_fields(&fields).unwrap_err().error.param(), Some("kind"));
        fields.insert("kind".into(), b"chat".to_vec());
        fields.insert("deadline_ms".into(), b"soon".to_vec());
        assert_eq!(IngressRequest::from_fields(&fields).unwrap_err().error.param(), Some("deadline_ms"));
        fields.insert("enc".into(), b"msgpack".to_vec());
        assert_eq!(IngressRequest::from_fields(&fields).unwrap_err().error.code(), "unsupported_encoding");

        let mut fields = fields_of(request().to_fields(Encoding::Bincode));
        fields.insert("payload".into(), vec![0xff, 0x01]);
        let rejection = IngressRequest::from_fields(&fields).unwrap_err();
        assert_eq!(rejection.error.code(), "invalid_payload");
        assert_eq!(rejection.reply_to.as_deref(), Some("replies:a"));
        let mut fields = fields_of(request().to_fields(Encoding::Bincode));
        fields.insert("reply_to".into(), b"replies:b".to_vec());
        assert_eq!(IngressRequest::from_fields(&fields).unwrap_err().error.param(), Some("reply_to"));
    }

    #[test]
    fn markers_of_different_tenants_never_collide() {
        assert_eq!(seen_key("swell", "acme", "job-1"), "swell:{ingress}:seen:4:acme:job-1");
        // Tenant ids may contain `:`: the length keeps (`col`, `x:1`) and (`col:x`, `1`) apart.
        assert_ne!(seen_key("swell", "col", "x:1"), seen_key("swell", "col:x", "1"));
        let pairs = [("a", "b:c:d"), ("a:b", "c:d"), ("a:b:c", "d"), ("a:b:c:d", "1")];
        let markers: std::collections::HashSet<String> =
            pairs.iter().map(|(tenant, id)| seen_key("swell", tenant, id)).collect();
        assert_eq!(markers.len(), pairs.len());
        assert!(seen_key("p", "t", "i").starts_with("p:{ingress}:"), "one hash slot with the stream");
    }

    #[test]
    fn default_reply_prefixes_never_overlap_and_stay_outside_swells_keys() {
        assert_eq!(default_reply_prefix("swell", "col"), "swell-replies:3:col:");
        assert_eq!(default_reply_prefix("swell", "col:x"), "swell-replies:5:col:x:");
        let tenants = ["col", "col:x", "col:", "c", "co", "1", "1:col", "anonymous", "a:b:c", "a:b", "abcdefghij"];
        for a in tenants {
            let prefix = default_reply_prefix("swell", a);
            assert!(prefix.starts_with(&reply_namespace("swell")));
            assert!(!prefixes_overlap(&prefix, "swell:"), "{prefix}");
            for b in tenants.iter().filter(|b| **b != a) {
                assert!(!prefixes_overlap(&prefix, &default_reply_prefix("swell", b)), "{a} and {b}");
            }
        }
        assert!(prefixes_overlap("ab", "abc") && prefixes_overlap("abc", "ab") && prefixes_overlap("ab", "ab"));
        assert!(!prefixes_overlap("ab:", "ac:"));
    }

    #[test]
    fn replies_round_trip_and_know_when_they_end() {
        let reply = Reply {
            id: Some("job-1".into()),
            seq: 3,
            kind: ReplyKind::Error,
            data: serde_json::json!({"error": {"code": "invalid_api_key"}, "status": 401}),
        };
        let fields = reply.to_fields().into_iter().map(|(name, value)| (name.to_string(), value.into_bytes())).collect();
        let parsed = Reply::from_fields(&fields).unwrap();
        assert_eq!(parsed, reply);
        assert_eq!(parsed.error_code(), Some("invalid_api_key"));
        assert!(ReplyKind::Done.is_terminal() && ReplyKind::Completion.is_terminal());
        assert!(!ReplyKind::Chunk.is_terminal() && !ReplyKind::Status.is_terminal());
    }
}
