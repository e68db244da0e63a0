//! One ingress entry, from its fields to its last reply: decode the entry, then exactly
//! the HTTP path (authenticate the key, parse and validate the body against its
//! deployment, admit it through the tenant's quota into the queue), acknowledge the
//! entry, and relay the request's events to `reply_to`.
//!
//! Before anything is written to `reply_to` it is checked (`super::reply_to`): under the
//! tenant's reply prefix (for an entry of no known tenant, under some tenant's), and a
//! stream or no key at all. An entry whose `reply_to` is refused takes one path,
//! [`EntryContext::refuse_reply_to`]: logged with the reason's code, counted
//! (`reply_to_refused`), acknowledged, never retried.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use swell_cluster::redis_conn::SharedConnection;
use serde_json::Value;
use swell_cluster::ingress_wire::{seen_key, Fields, IngressRequest, ReplyKind, RequestKind};
use tokio::time::Instant;

use super::reply::{check_writable, item_reply, IngressError, ReplyError, ReplyWriter};
use super::reply_to::{ReplyNamespace, ReplyToRefusal};
use super::{IngressConfig, IngressStats};
use crate::generation::collect::{Collected, ResponseCollector};
use crate::api::error::ApiError;
use crate::generation::GenerationError;
use crate::generation::admit::{attach_generation, new_request_id, start_generation, Delivery, Generation};
use crate::generation::json::{from_value, strip_position};
use crate::generation::resolve::resolve;
use crate::generation::openai_types::{ChatCompletionRequest, CompletionRequest};
use crate::generation::stream_encoder::StreamEncoder;
use crate::state::AppState;

/// What every entry of one consumer shares.
pub(crate) struct EntryContext {
    pub state: Arc<AppState>,
    /// For everything but the blocking reads.
    pub redis: SharedConnection,
    pub stream: String,
    pub consumer: String,
    pub config: IngressConfig,
    /// Where replies may go.
    pub namespace: ReplyNamespace,
    pub stats: Arc<IngressStats>,
}

/// How an entry's request came to be relayed.
enum Admission {
    /// Admitted now.
    New(Generation),
    /// Admitted by a gateway that stopped before its terminal reply (the entry was
    /// taken over): its jobs' events from the start.
    Resumed(Generation),
}

/// Why an entry was not admitted.
enum NotAdmitted {
    /// Refused before its tenant was known (missing or wrong key): answered with this
    /// error only where an entry of no known tenant may be, then acknowledged.
    Unauthenticated(IngressError),
    /// Refused: answered with this error, then acknowledged.
    Refused(IngressError),
    /// Its `reply_to` is not the tenant's to write, or not a stream: acknowledged
    /// without a reply.
    ReplyToRefused(ReplyToRefusal),
    /// Its id was already admitted: acknowledged without a reply.
    Duplicate,
    /// Not decided here (shutting down, Redis trouble): left pending, so that this or
    /// another gateway takes it again after `claim_idle`.
    Later(String),
}

impl From<ApiError> for NotAdmitted {
    fn from(error: ApiError) -> Self {
        NotAdmitted::Refused(IngressError::Api(error))
    }
}

impl From<GenerationError> for NotAdmitted {
    fn from(error: GenerationError) -> Self {
        NotAdmitted::Refused(IngressError::Api(error.into()))
    }
}

impl EntryContext {
    /// Handles one entry to its end. `taken_over`: the entry was claimed from a gateway
    /// that stopped (`XAUTOCLAIM`), not read new.
    pub async fn handle(&self, entry_id: String, fields: Fields, taken_over: bool) {
        IngressStats::count(&self.stats.received);
        let received_at = Instant::now();
        let request = match IngressRequest::from_fields(&fields) {
            Ok(request) => request,
            Err(rejection) => {
                tracing::debug!(entry = %entry_id, error = %rejection.error, "ingress entry refused");
                match rejection.reply_to {
                    Some(reply_to) => {
                        let error = IngressError::Wire(rejection.error);
                        self.answer_unattributed(&entry_id, reply_to, rejection.id, &error).await;
                    }
                    None => IngressStats::count(&self.stats.unanswerable),
                }
                self.ack(&entry_id).await;
                return;
            }
        };
        let mut replies = self.replies(&entry_id, request.reply_to.clone(), Some(request.id.clone()));
        let deadline = request.deadline_ms.map(|unix_ms| {
            let left = unix_ms.saturating_sub(swell_cluster::unix_millis());
            received_at + Duration::from_millis(left)
        });
        match self.admit(&request, received_at, taken_over).await {
            Ok(admission) => {
                let generation = match admission {
                    Admission::New(generation) => {
                        IngressStats::count(&self.stats.admitted);
                        generation
                    }
                    Admission::Resumed(generation) => {
                        // Skip what the stopped gateway already wrote.
                        if !self.resume_replies(&entry_id, &request.id, &mut replies).await {
                            return;
                        }
                        IngressStats::count(&self.stats.resumed);
                        tracing::info!(entry = %entry_id, id = %request.id, skipped = replies.skipping(), "ingress: resuming the replies of a taken-over request");
                        generation
                    }
                };
                // The entry stays pending (kept fresh) until the terminal reply is
                // written: a gateway that dies while relaying leaves it to another.
                let relaying = relay(generation, &mut replies, deadline);
                let outcome = self.keeping_fresh(&entry_id, relaying).await;
                match outcome {
                    Relayed::Completed => {
                        self.ack(&entry_id).await;
                        IngressStats::count(&self.stats.completed);
                    }
                    Relayed::Failed => {
                        self.ack(&entry_id).await;
                        IngressStats::count(&self.stats.failed);
                    }
                    Relayed::Unwritable => IngressStats::count(&self.stats.failed),
                    Relayed::Refused(refusal) => {
                        // Dropping the events cancelled the request.
                        self.refuse_reply_to(&entry_id, &refusal);
                        IngressStats::count(&self.stats.failed);
                        self.ack(&entry_id).await;
                    }
                }
            }
            Err(NotAdmitted::Unauthenticated(error)) => {
                tracing::debug!(entry = %entry_id, id = %request.id, code = error.code(), "ingress request refused");
                self.answer_unattributed(&entry_id, request.reply_to.clone(), Some(request.id.clone()), &error).await;
                self.ack(&entry_id).await;
            }
            Err(NotAdmitted::Refused(error)) => {
                tracing::debug!(entry = %entry_id, id = %request.id, code = error.code(), "ingress request refused");
                // A taken-over entry may have replies already: its answer continues their
                // numbering, and is not written at all after a terminal one.
                if taken_over && !self.resume_replies(&entry_id, &request.id, &mut replies).await {
                    return;
                }
                self.answer(&entry_id, &mut replies, &error).await;
                self.ack(&entry_id).await;
            }
            Err(NotAdmitted::ReplyToRefused(refusal)) => {
                self.refuse_reply_to(&entry_id, &refusal);
                self.ack(&entry_id).await;
            }
            Err(NotAdmitted::Duplicate) => {
                tracing::debug!(entry = %entry_id, id = %request.id, "ingress request id already served");
                IngressStats::count(&self.stats.duplicates);
                self.ack(&entry_id).await;
            }
            Err(NotAdmitted::Later(reason)) => {
                tracing::info!(entry = %entry_id, id = %request.id, %reason, "ingress entry left for later");
            }
        }
    }

    /// Before relaying or answering a taken-over entry: reads the replies the stopped
    /// gateway wrote ([`ReplyWriter::resume`]). `false` when nothing more is to be done
    /// here: it was answered already (acknowledged now), its `reply_to` is refused
    /// (dropped), or the replies could not be read (left pending for later).
    async fn resume_replies(&self, entry_id: &str, id: &str, replies: &mut ReplyWriter) -> bool {
        match replies.resume().await {
            Ok(false) => true,
            Ok(true) => {
                tracing::info!(entry = %entry_id, %id, "ingress: taken-over request was already answered");
                self.ack(entry_id).await;
                false
            }
            Err(ReplyError::Refused(refusal)) => {
                self.refuse_reply_to(entry_id, &refusal);
                IngressStats::count(&self.stats.failed);
                self.ack(entry_id).await;
                false
            }
            Err(ReplyError::Redis(error)) => {
                tracing::warn!(entry = %entry_id, %error, "ingress: reading the replies written so far failed; left for later");
                false
            }
        }
    }

    fn replies(&self, entry_id: &str, reply_to: String, id: Option<String>) -> ReplyWriter {
        ReplyWriter::new(self.redis.clone(), reply_to, id, self.config.reply_ttl, self.config.reply_max_len).of_entry(entry_id)
    }

    /// Answers a refused entry with `error` (counted as rejected), unless its `reply_to`
    /// turns out not to be a stream.
    async fn answer(&self, entry_id: &str, replies: &mut ReplyWriter, error: &IngressError) {
        match replies.error(error).await {
            Ok(()) => IngressStats::count(&self.stats.rejected),
            Err(ReplyError::Refused(refusal)) => self.refuse_reply_to(entry_id, &refusal),
            Err(ReplyError::Redis(redis_error)) => {
                tracing::warn!(%redis_error, code = error.code(), "an ingress error reply could not be written");
                IngressStats::count(&self.stats.rejected);
            }
        }
    }

    /// Answers an entry whose tenant is not known (it could not be decoded, or its key
    /// is missing or wrong): only inside some tenant's reply prefix.
    async fn answer_unattributed(&self, entry_id: &str, reply_to: String, id: Option<String>, error: &IngressError) {
        let configured = self.state.tenants.reply_prefixes();
        match self.namespace.check_unattributed(&reply_to, configured.iter().map(String::as_str)) {
            Ok(()) => self.answer(entry_id, &mut self.replies(entry_id, reply_to, id), error).await,
            Err(refusal) => self.refuse_reply_to(entry_id, &refusal),
        }
    }

    /// The one path of an entry whose `reply_to` may not be written: logged and counted
    /// (`reply_to_refused`, `unanswerable`) here; the caller acknowledges the entry, so
    /// it is never retried.
    fn refuse_reply_to(&self, entry_id: &str, refusal: &ReplyToRefusal) {
        tracing::warn!(entry = %entry_id, code = refusal.code(), reason = %refusal, "ingress entry not answered");
        IngressStats::count(&self.stats.reply_to_refused);
        crate::metrics::ingress_unanswered(refusal.code());
        IngressStats::count(&self.stats.unanswerable);
    }

    /// Acknowledges and deletes an entry (a failure leaves it pending; its id's marker
    /// makes a redelivery harmless).
    async fn ack(&self, entry_id: &str) {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(&self.config.group)
            .arg(entry_id)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(entry_id)
            .ignore();
        if let Err(error) = pipe.query_async::<()>(&mut self.redis.clone()).await {
            tracing::warn!(%error, entry = %entry_id, "an ingress entry could not be acknowledged");
        }
    }

    /// Runs `relaying` while re-claiming the entry for this consumer every third of
    /// `claim_idle` (`XCLAIM` with no minimum idle time resets the entry's idle time), so
    /// no other gateway takes over an entry whose relay is alive, however long it lasts.
    async fn keeping_fresh(&self, entry_id: &str, relaying: impl std::future::Future<Output = Relayed>) -> Relayed {
        tokio::pin!(relaying);
        let every = (self.config.claim_idle / 3).max(Duration::from_millis(10));
        let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            tokio::select! {
                outcome = &mut relaying => return outcome,
                _ = ticks.tick() => {
                    let claimed: Result<redis::Value, _> = redis::cmd("XCLAIM")
                        .arg(&self.stream)
                        .arg(&self.config.group)
                        .arg(&self.consumer)
                        .arg(0)
                        .arg(entry_id)
                        .arg("JUSTID")
                        .query_async(&mut self.redis.clone())
                        .await;
                    if let Err(error) = claimed {
                        tracing::debug!(%error, entry = %entry_id, "ingress: keeping the entry claimed failed");
                    }
                }
            }
        }
    }

    /// The HTTP path: authenticate, validate, deduplicate, admit. A taken-over entry
    /// whose id was admitted before is resumed rather than refused as a duplicate.
    async fn admit(&self, request: &IngressRequest, received_at: Instant, taken_over: bool) -> Result<Admission, NotAdmitted> {
        let state = &self.state;
        if state.is_shutting_down() {
            return Err(NotAdmitted::Later("the server is shutting down".into()));
        }
        // The key as an HTTP client would present it, through the same lookup.
        let authorization = request.api_key.as_ref().map(|key| format!("Bearer {key}"));
        let tenant = state
            .tenants
            .authenticate(authorization.as_deref())
            .map_err(|error| NotAdmitted::Unauthenticated(IngressError::Api(error.into())))?;
        let prefix = self.namespace.tenant_prefix(&tenant.id, tenant.reply_prefix.as_deref());
        self.namespace.check(&request.reply_to, &prefix).map_err(NotAdmitted::ReplyToRefused)?;
        if request.deadline_ms.is_some_and(|deadline| deadline <= swell_cluster::unix_millis()) {
            return Err(deadline_exceeded().into());
        }
        let limit = state.config.server.max_body_bytes;
        if request.request.len() > limit {
            return Err(GenerationError::BodyTooLarge { limit }.into());
        }
        let body = body_with_model(&request.request, &request.deployment)?;
        let size = request.request.len();
        let (deployment, validated) = match request.kind {
            RequestKind::Chat => resolve(state, from_value::<ChatCompletionRequest>(body)?, size).await?,
            RequestKind::Completion => resolve(state, from_value::<CompletionRequest>(body)?, size).await?,
        };
        // Nothing is generated for replies that cannot be delivered.
        check_writable(&mut self.redis.clone(), &request.reply_to).await.map_err(|error| match error {
            ReplyError::Refused(refusal) => NotAdmitted::ReplyToRefused(refusal),
            ReplyError::Redis(error) => NotAdmitted::Later(format!("redis: {error}")),
        })?;
        let request_id = new_request_id();
        let marker = seen_key(&self.config.key_prefix, &tenant.id, &request.id);
        if !self.mark_seen(&marker, &request_id).await? {
            if !taken_over {
                return Err(NotAdmitted::Duplicate);
            }
            // Its gateway admitted it as `original` and stopped before the terminal
            // reply (otherwise the entry would be gone): relay the same jobs.
            let Some(original) = self.seen_request(&marker).await? else { return Err(NotAdmitted::Duplicate) };
            return match attach_generation(state, &tenant, &deployment, validated, &original).await {
                Ok(generation) => Ok(Admission::Resumed(generation)),
                Err(GenerationError::ShuttingDown) => Err(NotAdmitted::Later("the server is shutting down".into())),
                // The request runs on; its relay is taken over again once the queue
                // answers (answering `queue_unavailable` would end a live request).
                Err(GenerationError::QueueUnavailable(reason)) => Err(NotAdmitted::Later(format!("the queue: {reason}"))),
                Err(error) => Err(error.into()),
            };
        }
        match start_generation(state, &tenant, &deployment, validated, &request_id, received_at, Delivery::Direct).await {
            Ok(generation) => Ok(Admission::New(generation)),
            Err(error) => {
                // Not admitted: the id may be tried again (after a 429, say).
                self.forget_seen(&marker).await;
                match error {
                    GenerationError::ShuttingDown => Err(NotAdmitted::Later("the server is shutting down".into())),
                    error => Err(error.into()),
                }
            }
        }
    }

    /// Claims the request id: `false` when it is already claimed.
    async fn mark_seen(&self, marker: &str, request_id: &str) -> Result<bool, NotAdmitted> {
        let set: Option<String> = redis::cmd("SET")
            .arg(marker)
            .arg(request_id)
            .arg("NX")
            .arg("PX")
            .arg(self.config.dedupe_ttl.as_millis() as u64)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(|error| NotAdmitted::Later(format!("redis: {error}")))?;
        Ok(set.is_some())
    }

    /// The request id an earlier admission stored in the marker.
    async fn seen_request(&self, marker: &str) -> Result<Option<String>, NotAdmitted> {
        redis::cmd("GET")
            .arg(marker)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(|error| NotAdmitted::Later(format!("redis: {error}")))
    }

    async fn forget_seen(&self, marker: &str) {
        if let Err(error) = redis::cmd("DEL").arg(marker).query_async::<()>(&mut self.redis.clone()).await {
            tracing::warn!(%error, "an ingress id marker could not be removed");
        }
    }
}

fn deadline_exceeded() -> GenerationError {
    GenerationError::Failed { code: "deadline_exceeded".into(), message: "the request's deadline_ms has passed".into() }
}

/// Parses the body (as an HTTP body is parsed) and fills in `model` from the entry's
/// `deployment`; a body naming another model is refused.
fn body_with_model(text: &str, deployment: &str) -> Result<Value, GenerationError> {
    let body: Value =
        serde_json::from_str(text).map_err(|error| GenerationError::InvalidJson(strip_position(&error.to_string())))?;
    let Value::Object(mut object) = body else {
        return Err(GenerationError::InvalidType { message: "the request body must be a json object".into(), param: None });
    };
    match object.get("model") {
        None | Some(Value::Null) => {
            object.insert("model".into(), Value::String(deployment.to_string()));
        }
        Some(Value::String(model)) if model == deployment => {}
        Some(_) => {
            return Err(GenerationError::invalid_value(
                "model",
                format!("the body's `model` differs from the entry's deployment `{deployment}`; leave it out or make them equal"),
            ));
        }
    }
    Ok(Value::Object(object))
}

/// How a relay ended.
enum Relayed {
    /// The request completed and its terminal reply is written.
    Completed,
    /// It ended with an error reply (failed, cancelled, deadline exceeded).
    Failed,
    /// A reply could not be written (Redis unreachable for longer than the outage
    /// tolerance): the request is cancelled and the entry left pending, so a gateway
    /// takes it over (and answers it) later.
    Unwritable,
    /// `reply_to` is not a stream (any more): the request is cancelled and the entry
    /// dropped, since no gateway could ever answer it.
    Refused(ReplyToRefusal),
}

/// Relays a request's events as replies until its terminal reply. Gives up at the
/// deadline (dropping the events cancels the request) or when a reply cannot be
/// written.
async fn relay(generation: Generation, replies: &mut ReplyWriter, deadline: Option<Instant>) -> Relayed {
    let relaying = relay_events(generation, replies);
    let outcome = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, relaying).await.ok(),
        None => Some(relaying.await),
    };
    match outcome {
        Some(Ok(true)) => Relayed::Completed,
        Some(Ok(false)) => Relayed::Failed,
        Some(Err(ReplyError::Refused(refusal))) => Relayed::Refused(refusal),
        Some(Err(ReplyError::Redis(error))) => {
            tracing::warn!(%error, "ingress replies could not be written; the request is cancelled");
            Relayed::Unwritable
        }
        None => match replies.error(&IngressError::Api(deadline_exceeded().into())).await {
            Ok(()) => Relayed::Failed,
            Err(ReplyError::Refused(refusal)) => Relayed::Refused(refusal),
            Err(ReplyError::Redis(error)) => {
                tracing::warn!(%error, "an ingress error reply could not be written");
                Relayed::Unwritable
            }
        },
    }
}

async fn relay_events(generation: Generation, replies: &mut ReplyWriter) -> Result<bool, ReplyError> {
    let Generation { meta, validated, mut events, handles: _handles, rate_limits: _ } = generation;
    if validated.stream {
        let mut encoder = StreamEncoder::new(meta, &validated.prompts);
        loop {
            let items = match events.next().await {
                Some((index, event)) => encoder.on_event(index, event),
                None => encoder.on_streams_closed(),
            };
            for item in items {
                let terminal = item.is_terminal();
                if let Some((kind, data)) = item_reply(item) {
                    replies.send(kind, data).await?;
                    if terminal {
                        return Ok(kind != ReplyKind::Error);
                    }
                }
            }
        }
    }
    let mut collector = ResponseCollector::new(meta, &validated.prompts);
    let error = loop {
        match events.next().await {
            Some((index, event)) => match collector.on_event(index, event) {
                Ok(Collected::Complete(body)) => {
                    let body = serde_json::to_value(body).expect("responses serialize");
                    replies.send(ReplyKind::Completion, body).await?;
                    return Ok(true);
                }
                Ok(Collected::Pending) => {}
                Err(error) => break error,
            },
            None => break ResponseCollector::incomplete(),
        }
    };
    replies.error(&IngressError::Api(error.into())).await?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_gets_its_model_from_the_entry() {
        let body = body_with_model(r#"{"prompt": "hi"}"#, "chat").unwrap();
        assert_eq!(body["model"], "chat");
        assert!(body_with_model(r#"{"model": "chat", "prompt": "hi"}"#, "chat").is_ok());
        assert_eq!(body_with_model(r#"{"model": "other"}"#, "chat").unwrap_err().code(), "invalid_value");
        assert_eq!(body_with_model("{oops", "chat").unwrap_err().code(), "invalid_json");
        assert_eq!(body_with_model("[1]", "chat").unwrap_err().code(), "invalid_type");
    }
}
