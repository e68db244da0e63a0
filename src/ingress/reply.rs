//! Writing a request's replies to its `reply_to` stream: one entry per reply (`id`,
//! `seq`, `type`, `data`), appended by one script (`reply.lua`) that writes only to a
//! stream (or creates one), caps its length, and sets or refreshes the TTL only of a
//! stream Swell created; and what an error looks like as reply data (the HTTP API's
//! error body plus its status).

use std::sync::LazyLock;
use std::time::Duration;

use actix_web::ResponseError;
use swell_cluster::redis_conn::SharedConnection;
use serde_json::{json, Value};
use swell_cluster::ingress_wire::{Reply, ReplyKind, WireError};

use crate::api::error::ApiError;
use crate::api::ratelimit_headers::retry_after_seconds;
use crate::generation::stream_encoder::StreamItem;
use crate::api::ws_protocol::ServerFrame;
use swell_actors::backoff::Backoff;
use swell_actors::request::OUTAGE_TOLERANCE;

use super::reply_to::ReplyToRefusal;

/// The empty consumer group that marks a `reply_to` stream Swell created (the only kind
/// whose TTL it sets).
pub const CREATED_BY_SWELL_GROUP: &str = "swell:created";

static APPEND_REPLY: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("reply.lua")));

/// Why an ingress entry was refused or failed: a malformed entry, or anything the HTTP
/// API answers (with the same code, message and status).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IngressError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl IngressError {
    pub fn code(&self) -> &str {
        match self {
            IngressError::Wire(error) => error.code(),
            IngressError::Api(error) => error.code(),
        }
    }
}

/// Why a reply was not written.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// Never writable (a key of another type): the entry is dropped, not retried.
    #[error(transparent)]
    Refused(#[from] ReplyToRefusal),
    /// Redis trouble: a later try may succeed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The `data` of an error reply: `{"error": {message, type, code, param}, "status": N}`
/// with `retry_after_seconds` when a retry may succeed later. `status` is what the HTTP
/// API would have answered.
pub fn error_data(error: &IngressError) -> Value {
    match error {
        IngressError::Wire(wire) => json!({
            "error": {
                "message": wire.to_string(),
                "type": "invalid_request_error",
                "code": wire.code(),
                "param": wire.param(),
            },
            "status": 400,
        }),
        IngressError::Api(api) => {
            let mut data = json!({"error": api.body().error, "status": api.status_code().as_u16()});
            if let Some(wait) = api.retry_after() {
                data["retry_after_seconds"] = json!(retry_after_seconds(wait));
            }
            data
        }
    }
}

/// The reply of a stream item (`None`: nothing to tell).
pub fn item_reply(item: StreamItem) -> Option<(ReplyKind, Value)> {
    match item {
        StreamItem::Chunk(chunk, _) => {
            Some((ReplyKind::Chunk, serde_json::to_value(&chunk).expect("chunks serialize")))
        }
        StreamItem::Done { usage, finish_reason } => {
            Some((ReplyKind::Done, json!({"usage": usage, "finish_reason": finish_reason})))
        }
        StreamItem::Failed(error) => Some((ReplyKind::Error, error_data(&IngressError::Api(error.into())))),
        // Statuses are rendered as for the WebSocket API, without its `id` and `type`.
        other => match ServerFrame::from_item("", other)? {
            ServerFrame::Status { status, .. } => {
                Some((ReplyKind::Status, serde_json::to_value(&status).expect("statuses serialize")))
            }
            _ => None,
        },
    }
}

/// Appends one request's replies, numbering them.
pub struct ReplyWriter {
    redis: SharedConnection,
    reply_to: String,
    id: Option<String>,
    next_seq: u64,
    ttl: Duration,
    max_len: u64,
    /// While resuming: chunk replies already written by the gateway that stopped.
    skip_chunks: u64,
    /// The ingress entry being answered: replies are stored once per id, entry and seq
    /// (a gateway taking an entry over continues its numbering; an id sent again in a
    /// new entry, after a refusal, is numbered afresh).
    entry: String,
}

/// Entries read per `XRANGE` while looking for the replies already written.
const RESUME_PAGE: usize = 1000;

impl ReplyWriter {
    pub fn new(redis: SharedConnection, reply_to: String, id: Option<String>, ttl: Duration, max_len: u64) -> Self {
        Self { redis, reply_to, id, next_seq: 0, ttl, max_len, skip_chunks: 0, entry: String::new() }
    }

    /// The replies of ingress entry `entry_id` (see [`ReplyWriter::entry`]).
    pub fn of_entry(mut self, entry_id: &str) -> Self {
        self.entry = entry_id.to_string();
        self
    }

    /// Before relaying a request taken over from a gateway that stopped: reads the
    /// replies it wrote for this id, so that the relay, which replays the request's
    /// events from the start, writes only what follows them (the first `chunk` replies
    /// are skipped, and `status` replies while catching up; `seq` continues). Answers
    /// whether a terminal reply was already written (then nothing is to be written).
    pub async fn resume(&mut self) -> Result<bool, ReplyError> {
        let Some(id) = self.id.clone() else { return Ok(false) };
        let (mut chunks, mut next_seq, mut terminal) = (0u64, 0u64, false);
        let mut from = "-".to_string();
        while let Some((replies, next)) = self.page(&from).await? {
            for reply in replies.into_iter().filter(|reply| reply.id.as_deref() == Some(id.as_str())) {
                next_seq = next_seq.max(reply.seq + 1);
                chunks += u64::from(reply.kind == ReplyKind::Chunk);
                terminal |= reply.kind.is_terminal();
            }
            match next {
                Some(next) => from = next,
                None => break,
            }
        }
        self.next_seq = next_seq;
        self.skip_chunks = chunks;
        Ok(terminal)
    }

    /// Chunk replies still to be skipped (see [`resume`](Self::resume)).
    pub fn skipping(&self) -> u64 {
        self.skip_chunks
    }

    /// Appends a reply (while resuming, skips what was written before): see
    /// `reply.lua`. A `reply_to` that is not a stream is [`ReplyError::Refused`].
    pub async fn send(&mut self, kind: ReplyKind, data: Value) -> Result<(), ReplyError> {
        if self.skip_chunks > 0 {
            match kind {
                ReplyKind::Chunk => {
                    self.skip_chunks -= 1;
                    return Ok(());
                }
                ReplyKind::Status => return Ok(()),
                _ => self.skip_chunks = 0,
            }
        }
        let reply = Reply { id: self.id.clone(), seq: self.next_seq, kind, data };
        let mut append = APPEND_REPLY.key(&self.reply_to);
        append.key(seq_key(&self.reply_to, self.id.as_deref().unwrap_or_default(), &self.entry));
        append.arg(self.ttl.as_millis() as u64).arg(self.max_len).arg(CREATED_BY_SWELL_GROUP);
        append.arg(reply.seq);
        for (name, value) in reply.to_fields() {
            append.arg(name).arg(value);
        }
        // Redis unreachable (restarting, a network blip) is waited out for up to
        // `OUTAGE_TOLERANCE`, as a request's output stream is. The script writes a
        // reply once per id and seq, so a write whose answer was lost, or that arrives
        // after its retry, is never stored twice.
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut failing_since = None;
        loop {
            let error = match self.redis.invoke::<String>(&append).await {
                Ok(outcome) => {
                    if let Some(found) = outcome.strip_prefix("wrongtype:") {
                        return Err(ReplyToRefusal::NotAStream { reply_to: self.reply_to.clone(), kind: found.to_string() }.into());
                    }
                    break;
                }
                Err(error) => error,
            };
            let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= OUTAGE_TOLERANCE {
                return Err(error.into());
            }
            if backoff.failures() == 0 {
                tracing::warn!(%error, reply_to = %self.reply_to, "an ingress reply could not be written; retrying");
            }
            tokio::time::sleep(backoff.failed()).await;
        }
        self.next_seq += 1;
        Ok(())
    }

    /// One page of `reply_to`'s replies from `from` (`-`: the start), and where the next
    /// page starts (`None`: this was the last). `None` for an empty stream.
    async fn page(&mut self, from: &str) -> Result<Option<(Vec<Reply>, Option<String>)>, ReplyError> {
        let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.reply_to)
            .arg(from)
            .arg("+")
            .arg("COUNT")
            .arg(RESUME_PAGE)
            .query_async(&mut self.redis)
            .await
            .map_err(|error| self.refused_if_wrong_type(error))?;
        if page.ids.is_empty() {
            return Ok(None);
        }
        let next = (page.ids.len() == RESUME_PAGE).then(|| format!("({}", page.ids.last().expect("a full page").id));
        let replies =
            page.ids.iter().filter_map(|entry| Reply::from_fields(&swell_cluster::ingress_wire::entry_fields(entry)).ok()).collect();
        Ok(Some((replies, next)))
    }

    pub async fn error(&mut self, error: &IngressError) -> Result<(), ReplyError> {
        self.send(ReplyKind::Error, error_data(error)).await
    }

    /// A command on `reply_to` answered `WRONGTYPE`: the key is not a stream.
    fn refused_if_wrong_type(&self, error: redis::RedisError) -> ReplyError {
        if error.code() != Some("WRONGTYPE") {
            return error.into();
        }
        ReplyToRefusal::NotAStream { reply_to: self.reply_to.clone(), kind: "key of another type".into() }.into()
    }
}

/// The key holding the last `seq` written to `reply_to` for request `id` of ingress entry
/// `entry`: under `reply_to`'s name (the tenant's prefix, and the same hash slot of a
/// Redis Cluster when `reply_to` has a hash tag), one per request, so each expires on
/// its own `reply_ttl` after its last reply.
pub fn seq_key(reply_to: &str, id: &str, entry: &str) -> String {
    if reply_to.contains('{') {
        // Its hash tag (if any) is the first `{…}` of both names.
        format!("{reply_to}:swell-seq:{id}@{entry}")
    } else {
        // No tag: `reply_to`'s slot is that of its whole name, which this tag repeats.
        format!("{reply_to}:swell-seq:{{{reply_to}}}:{id}@{entry}")
    }
}

/// Whether replies can be written at `reply_to` (no key yet, or a stream). Checked before
/// a request is admitted, so that nothing is generated for replies that cannot be
/// delivered; the script checks again at every write.
pub async fn check_writable(redis: &mut SharedConnection, reply_to: &str) -> Result<(), ReplyError> {
    let kind: String = redis::cmd("TYPE").arg(reply_to).query_async(redis).await?;
    match kind.as_str() {
        "none" | "stream" => Ok(()),
        _ => Err(ReplyToRefusal::NotAStream { reply_to: reply_to.to_string(), kind }.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use swell_actors::quota::{LimitKind, QuotaRejection, RateLimitSnapshot};

    use super::*;
    use crate::generation::openai_types::UsageBody;

    async fn shared(url: &str) -> SharedConnection {
        swell_cluster::redis_conn::connect_shared(url, Duration::from_secs(1), Duration::from_secs(2)).await.unwrap().1
    }

    #[test]
    fn a_reply_to_and_its_seq_keys_share_a_hash_slot() {
        use redis::cluster_routing::Slot;
        for reply_to in ["replies", "swell-replies:4:acme:p7", "r{t}", "a:{producer-7}:x"] {
            let key = seq_key(reply_to, "job-1", "1-0");
            assert!(key.starts_with(reply_to), "{key}");
            assert_eq!(Slot::for_key(reply_to), Slot::for_key(&key), "{reply_to} vs {key}");
        }
    }

    #[test]
    fn errors_carry_the_http_body_and_status() {
        let data = error_data(&IngressError::Api(crate::tenants::TenantError::InvalidApiKey.into()));
        assert_eq!(data["status"], 401);
        assert_eq!(data["error"]["code"], "invalid_api_key");
        assert_eq!(data["error"]["type"], "authentication_error");
        let data = error_data(&IngressError::Wire(WireError::MissingField("reply_to")));
        assert_eq!(data["status"], 400);
        assert_eq!(data["error"]["code"], "missing_required_parameter");
        assert_eq!(data["error"]["param"], "reply_to");
        let quota = QuotaRejection {
            limit: LimitKind::Requests,
            requested: 1,
            retry_after: Some(Duration::from_millis(2500)),
            snapshot: RateLimitSnapshot::default(),
        };
        let data = error_data(&IngressError::Api(crate::generation::GenerationError::Quota(Box::new(quota)).into()));
        assert_eq!(data["status"], 429);
        assert_eq!(data["error"]["code"], "rate_limit_exceeded");
        assert_eq!(data["retry_after_seconds"], 3);
    }

    /// The script against a real Redis: a stream only, a TTL only on a stream it created.
    #[actix_rt::test]
    async fn replies_go_only_to_streams_and_get_a_ttl_only_where_swell_created_the_stream() {
        use swell_cluster::redis_queue::testing::{RedisServer, RedisServerOptions};
        let server = RedisServer::start(RedisServerOptions::default());
        let redis = shared(&server.url()).await;
        let mut plain = redis.clone();
        let ttl = Duration::from_secs(3600);
        let writer = |key: &str| ReplyWriter::new(redis.clone(), key.to_string(), Some("job".into()), ttl, 100);
        let pttl = |key: &'static str| {
            let mut redis = redis.clone();
            async move { redis::cmd("PTTL").arg(key).query_async::<i64>(&mut redis).await.unwrap() }
        };
        let data = || json!({"ok": true});

        // No key: created, marked, with the TTL; the next reply keeps it alive.
        let mut new = writer("new");
        new.send(ReplyKind::Status, data()).await.unwrap();
        assert!(pttl("new").await > 3_000_000);
        let groups: Vec<Vec<redis::Value>> =
            redis::cmd("XINFO").arg("GROUPS").arg("new").query_async(&mut plain).await.unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0][1], redis::Value::BulkString(CREATED_BY_SWELL_GROUP.as_bytes().to_vec()));
        let _: () = redis::cmd("PERSIST").arg("new").query_async(&mut plain).await.unwrap();
        new.send(ReplyKind::Done, data()).await.unwrap();
        assert!(pttl("new").await > 3_000_000, "the TTL of a stream swell created is refreshed");

        // A stream made by someone else: the reply is appended, its TTL left alone.
        let _: String = redis::cmd("XADD").arg("theirs").arg("*").arg("a").arg("1").query_async(&mut plain).await.unwrap();
        writer("theirs").send(ReplyKind::Completion, data()).await.unwrap();
        let length: u64 = redis::cmd("XLEN").arg("theirs").query_async(&mut plain).await.unwrap();
        assert_eq!((length, pttl("theirs").await), (2, -1));

        // Another type: nothing written, no TTL; refused, not a Redis error.
        let _: () = redis::cmd("SET").arg("text").arg("keep me").query_async(&mut plain).await.unwrap();
        let _: () = redis::cmd("RPUSH").arg("list").arg("x").query_async(&mut plain).await.unwrap();
        for key in ["text", "list"] {
            let error = writer(key).send(ReplyKind::Error, data()).await.unwrap_err();
            assert!(matches!(&error, ReplyError::Refused(refusal) if refusal.code() == "reply_to_not_a_stream"), "{error:?}");
            assert!(matches!(writer(key).resume().await, Err(ReplyError::Refused(_))));
            assert!(matches!(check_writable(&mut plain.clone(), key).await, Err(ReplyError::Refused(_))));
        }
        assert_eq!((pttl("text").await, pttl("list").await), (-1, -1));
        let text: String = redis::cmd("GET").arg("text").query_async(&mut plain).await.unwrap();
        assert_eq!(text, "keep me");
        check_writable(&mut plain.clone(), "new").await.unwrap();
        check_writable(&mut plain.clone(), "absent").await.unwrap();
    }

    /// A write that arrives again (its answer was lost and it was retried, or the first
    /// try was held up in the network and lands after the retry) is stored once.
    #[actix_rt::test]
    async fn a_reply_is_stored_once_per_id_and_seq() {
        use swell_cluster::redis_queue::testing::{RedisServer, RedisServerOptions};
        let server = RedisServer::start(RedisServerOptions::default());
        let redis = shared(&server.url()).await;
        let ttl = Duration::from_secs(60);
        let writer = || ReplyWriter::new(redis.clone(), "r{t}".into(), Some("job".into()), ttl, 100);
        let (mut first, mut again) = (writer(), writer());
        first.send(ReplyKind::Chunk, json!({"n": 0})).await.unwrap();
        again.send(ReplyKind::Chunk, json!({"n": 0})).await.unwrap();
        first.send(ReplyKind::Done, json!({})).await.unwrap();
        let other = ReplyWriter::new(redis.clone(), "r{t}".into(), Some("other".into()), ttl, 100);
        let mut other = other;
        other.send(ReplyKind::Chunk, json!({"n": 0})).await.unwrap();
        let mut plain = redis.clone();
        let length: u64 = redis::cmd("XLEN").arg("r{t}").query_async(&mut plain).await.unwrap();
        assert_eq!(length, 3, "job's 0 once, job's 1, other's 0");
        let seq_ttl: i64 = redis::cmd("PTTL").arg(seq_key("r{t}", "job", "")).query_async(&mut plain).await.unwrap();
        assert!(seq_ttl > 0 && seq_ttl <= 60_000, "{seq_ttl}");
    }

    #[test]
    fn stream_items_become_replies() {
        let (kind, data) =
            item_reply(StreamItem::Waiting { position: Some(2), starting: false, ready_in: None, eta: Some(Duration::from_secs(3)) })
                .unwrap();
        assert_eq!((kind, data), (ReplyKind::Status, json!({"status": "queued", "position": 2, "eta_s": 3.0})));
        let usage = UsageBody { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 };
        let (kind, data) = item_reply(StreamItem::Done { usage, finish_reason: Some("length") }).unwrap();
        assert_eq!(kind, ReplyKind::Done);
        assert_eq!(data["finish_reason"], "length");
        assert_eq!(data["usage"]["total_tokens"], 3);
        assert!(item_reply(StreamItem::Waiting { position: None, starting: false, ready_in: None, eta: None }).is_none());
    }
}
