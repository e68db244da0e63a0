//! Resuming a stream: a client that lost its connection mid-stream reconnects with the
//! last event id it received (SSE `Last-Event-ID`, a WebSocket `resume`'s `after`) and
//! gets the rest of the stream, with no gap and no repeat.
//!
//! An event id is the number of tokens generated up to and including its chunk
//! ([`StreamEncoder`](crate::generation::stream_encoder::StreamEncoder) numbers them). A
//! resumed stream reads the job's output stream from its start through the queue (so a
//! resume works at any gateway while the output is kept) and [`ResumeFilter`] picks out
//! the token events the client already had, which the stream's encoder skips (a tools
//! stream's reader still reads them, so what follows is told as it was). Only
//! single-choice streams without `echo` are resumable; the job keeps what their
//! responses need as [`StreamMeta`].
//!
//! The request of a client that leaves runs on for `queue.resume_grace` and is cancelled
//! only if nobody resumed it by then (`swell_actors::request::resume`).

use futures_util::stream::StreamExt;
use serde::{Deserialize, Serialize};
use actix::Addr;
use swell_actors::request::{resume, RequestActor, RequestDeps, RequestEvent, RequestSpec};
use swell_cluster::{GenerationRequest, Priority, SamplingParams};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::generation::admit::TaggedEvents;
use crate::generation::error::GenerationError;
use crate::generation::stream_encoder::{ResponseMeta, StreamEncoder};
use crate::generation::tool_format::ToolFormat;
use crate::generation::validate::{GenerationKind, ValidatedRequest};
use crate::state::AppState;
use crate::tenants::TenantHandle;

/// What a resumed stream's chunks repeat, stored with the job (`Job::stream_meta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamMeta {
    /// `chat` or `completion`.
    pub kind: String,
    /// The response's `created` (Unix seconds).
    pub created: u64,
    pub include_usage: bool,
    pub logprobs: bool,
    /// The format of the request's tool calls, when it has tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolFormat>,
}

impl StreamMeta {
    /// The metadata of `validated`'s stream, or `None` when it cannot be resumed (several
    /// choices or prompts, or an echoed prompt).
    pub fn of(validated: &ValidatedRequest, created: u64) -> Option<Self> {
        if validated.prompts.len() != 1 || validated.prompts[0].echo.is_some() {
            return None;
        }
        let kind = match validated.kind {
            GenerationKind::Chat => "chat",
            GenerationKind::Completion => "completion",
        };
        Some(Self {
            kind: kind.into(),
            created,
            include_usage: validated.include_usage,
            logprobs: validated.logprobs,
            tools: validated.tools,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("stream metadata serializes")
    }

    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    /// The meta of the response of job `job_id` on `model`.
    pub fn response_meta(&self, job_id: &str, model: &str) -> Option<ResponseMeta> {
        let kind = match self.kind.as_str() {
            "chat" => GenerationKind::Chat,
            "completion" => GenerationKind::Completion,
            _ => return None,
        };
        Some(ResponseMeta {
            id: ResponseMeta::response_id(kind, job_id),
            created: self.created,
            model: model.to_string(),
            kind,
            include_usage: self.include_usage,
            logprobs: self.logprobs,
            tools: self.tools,
        })
    }
}

/// The job id a client names a stream by: its request id (`req-…`, the `x-request-id`
/// header) or the id of its chunks (`chatcmpl-…`, `cmpl-…`).
pub fn job_id_of(stream_id: &str) -> Option<String> {
    let suffix = ["req-", "chatcmpl-", "cmpl-"].iter().find_map(|prefix| stream_id.strip_prefix(prefix))?;
    let valid = !suffix.is_empty() && suffix.len() <= 64 && suffix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    valid.then(|| format!("req-{suffix}"))
}

/// The event id to resume after: `Last-Event-ID` (absent or empty: from the start).
pub fn parse_last_event_id(value: Option<&str>) -> Result<u64, GenerationError> {
    match value.map(str::trim) {
        None | Some("") => Ok(0),
        Some(text) => text.parse().map_err(|_| {
            GenerationError::invalid_value("Last-Event-ID", format!("`Last-Event-ID` must be an event id of the stream (a token count), got `{text}`"))
        }),
    }
}

/// Picks out the token events a resuming client already had (the first `after`
/// tokens); the encoder of a resumed stream
/// ([`StreamEncoder::resumed`](crate::generation::stream_encoder::StreamEncoder::resumed))
/// runs every event through it.
#[derive(Debug)]
pub struct ResumeFilter {
    after: u64,
    seen: u64,
}

impl ResumeFilter {
    pub fn new(after: u64) -> Self {
        Self { after, seen: 0 }
    }

    /// Whether to pass `event` on (`false`: the client had it), or an error when `after`
    /// is not an event id of the stream.
    pub fn passes(&mut self, event: &RequestEvent) -> Result<bool, GenerationError> {
        let skipping = self.seen < self.after;
        match event {
            RequestEvent::Tokens { token_ids, .. } if skipping => {
                self.seen += token_ids.len() as u64;
                if self.seen > self.after {
                    return Err(self.not_an_event_id());
                }
                Ok(false)
            }
            RequestEvent::PromptLogprobs(_) if self.after > 0 => Ok(false),
            RequestEvent::Finished { .. } if skipping => Err(self.not_an_event_id()),
            _ => Ok(true),
        }
    }

    fn not_an_event_id(&self) -> GenerationError {
        GenerationError::invalid_value(
            "Last-Event-ID",
            format!("{} is not an event id of this stream", self.after),
        )
    }
}

/// A resumed stream: its events, tagged as choice 0, and the encoder that sends only
/// those after the client's last one.
pub struct ResumedStream {
    pub meta: ResponseMeta,
    /// The stream's events from its start (dropping them lets this reader's resume grace
    /// start).
    pub events: TaggedEvents,
    /// Skips what the client had and continues the numbering after `after`.
    pub encoder: StreamEncoder,
    /// The relay's actor (a WebSocket `cancel` sends it `CancelRequest`).
    pub handle: Addr<RequestActor>,
}

/// Resume stream `stream_id` of `tenant` after event id `after`. Unknown, expired, not
/// resumable and another tenant's streams are all [`GenerationError::StreamNotFound`].
pub async fn resume_stream(
    state: &AppState,
    tenant: &TenantHandle,
    stream_id: &str,
    after: u64,
) -> Result<ResumedStream, GenerationError> {
    if state.is_shutting_down() {
        return Err(GenerationError::ShuttingDown);
    }
    if !state.node.role.serves_api() {
        return Err(GenerationError::NotAGateway { role: state.node.role.as_str() });
    }
    let not_found = || GenerationError::StreamNotFound(stream_id.to_string());
    let job_id = job_id_of(stream_id).ok_or_else(not_found)?;
    let unavailable = |error: swell_cluster::QueueError| GenerationError::QueueUnavailable(error.to_string());
    let owner = state.queue.output_owner(&job_id).await.map_err(unavailable)?.ok_or_else(not_found)?;
    if owner.tenant != tenant.id {
        return Err(not_found());
    }
    let stream_meta = owner.stream_meta.as_deref().and_then(StreamMeta::from_json).ok_or_else(not_found)?;
    let meta = stream_meta.response_meta(&job_id, &owner.deployment).ok_or_else(not_found)?;
    let deployment = state.deployments.get(&owner.deployment).ok_or_else(not_found)?;
    let reader = state.queue.attach_reader(&job_id).await.map_err(unavailable)?.ok_or_else(not_found)?;
    let spec = RequestSpec {
        job_id,
        deployment: deployment.name.clone(),
        tenant: tenant.id.clone(),
        // A resumed relay reads the job's output only; the request is the original's.
        request: GenerationRequest { prompt_tokens: Vec::new(), params: SamplingParams::default() },
        deadline: None,
        max_queue_depth: deployment.max_queue_depth,
        priority: Priority::Normal,
        received_at: Instant::now(),
        route: Default::default(),
        stream_meta: None,
        resume_grace: resume_grace(state),
    };
    let deps = RequestDeps {
        queue: state.queue.clone(),
        supervisor: deployment.supervisor.clone(),
        quota: None,
        // The first relay told the router about the job.
        router: None,
    };
    let admitted = resume(spec, deps, reader)
        .await
        .map_err(|_| GenerationError::DeploymentUnavailable { deployment: deployment.name.clone(), reason: "the stream could not be resumed".into() })?;
    let handle = admitted.handle.clone();
    let events = ReceiverStream::new(admitted.events)
        .map(move |event| {
            let _relay = &handle;
            (0, event)
        })
        .boxed();
    let encoder = StreamEncoder::resumed(meta.clone(), after);
    Ok(ResumedStream { meta, events, encoder, handle: admitted.handle })
}

/// How long a streamed request outlives its client, waiting for a resume (`None`: not
/// at all, `queue.resume_grace = "0s"`).
pub fn resume_grace(state: &AppState) -> Option<std::time::Duration> {
    let grace = state.config.queue.resume_grace;
    (!grace.is_zero()).then_some(grace)
}

#[cfg(test)]
#[path = "resume_tests.rs"]
mod tests;
