//! `StreamEncoder`: turns the `RequestEvent`s of a request's jobs (one job per choice)
//! into protocol-neutral [`StreamItem`]s: wait statuses, OpenAI chunks, the end with its
//! usage, or a failure. The SSE framing ([`crate::api::sse`]) and the WebSocket framing
//! ([`crate::api::ws_protocol`]) each render these items their own way.
//!
//! A single-choice stream numbers its chunks: each carries its *event id*, the number of
//! tokens generated up to and including it, which a client that reconnects gives back
//! to resume after it (`crate::generation::resume`).
//!
//! A plain struct with synchronous tests: events in, items out.

use std::time::Duration;

use swell_actors::request::RequestEvent;
use tokio::time::Instant;
use swell_cluster::{FinishReason, TokenLogprob, Usage};

use crate::generation::error::GenerationError;
use crate::generation::resume::ResumeFilter;
use crate::generation::openai_types::{
    ChatChunkChoice, ChatCompletionChunk, ChatDelta, ChatLogprobs, CompletionLogprobs,
    FunctionCallDelta, ResponseChunk, TextChoice, TextCompletion, ToolCallDelta, UsageBody,
    CHAT_COMPLETION_CHUNK, TEXT_COMPLETION,
};
use crate::generation::tool_format::{NativeReader, ToolFormat};
use crate::generation::tool_stream::{ToolDelta, ToolStreamReader};
use crate::generation::tools::{call_id, chat_message};
use crate::generation::validate::{EchoPrompt, GenerationKind, PreparedPrompt};

/// Whether a new wait estimate is news: it appeared or went away, or it differs from the
/// last one told, counted down by the time since (`told`: that estimate and its age), by
/// more than a second and a quarter of the told estimate.
pub fn eta_revised(told: Option<(Duration, Duration)>, eta: Option<Duration>) -> bool {
    match (told, eta) {
        (None, None) => false,
        (Some(_), None) | (None, Some(_)) => true,
        (Some((told, age)), Some(eta)) => {
            let expected = told.saturating_sub(age).as_secs_f64();
            let tolerance = (told.as_secs_f64() / 4.0).max(1.0);
            (eta.as_secs_f64() - expected).abs() > tolerance
        }
    }
}

/// The chunk delta of what a tools request's output adds as it streams.
/// One event's deltas as one chunk's delta (`None`: nothing to tell): its content, and a
/// call's start and arguments merged, so every chunk of the event carries one event id
/// and a resumed stream neither repeats nor drops part of an event.
fn tool_delta(response_id: &str, choice: usize, deltas: Vec<ToolDelta>) -> Option<ChatDelta> {
    let mut out = ChatDelta::default();
    let mut calls: Vec<ToolCallDelta> = Vec::new();
    for delta in deltas {
        match delta {
            ToolDelta::Content(text) => out.content.get_or_insert_with(String::new).push_str(&text),
            ToolDelta::CallStart { index, name } => calls.push(ToolCallDelta {
                index: index as u32,
                id: Some(call_id(response_id, choice, index)),
                kind: Some("function"),
                function: FunctionCallDelta { name: Some(name), arguments: String::new() },
            }),
            ToolDelta::Arguments { index, text } => match calls.last_mut() {
                Some(call) if call.index == index as u32 => call.function.arguments.push_str(&text),
                _ => calls.push(ToolCallDelta {
                    index: index as u32,
                    id: None,
                    kind: None,
                    function: FunctionCallDelta { name: None, arguments: text },
                }),
            },
        }
    }
    if !calls.is_empty() {
        out.tool_calls = Some(calls);
    }
    (out.content.is_some() || out.tool_calls.is_some()).then_some(out)
}

/// What every chunk of a response repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseMeta {
    /// `chatcmpl-...` or `cmpl-...`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    pub kind: GenerationKind,
    pub include_usage: bool,
    pub logprobs: bool,
    /// The request has tools (their format): its output is read back into tool calls or
    /// content as it streams ([`tools`](crate::generation::tools)).
    pub tools: Option<ToolFormat>,
}

impl ResponseMeta {
    /// The OpenAI id of a response for request `request_id` (`req-<uuid>`).
    pub fn response_id(kind: GenerationKind, request_id: &str) -> String {
        let suffix = request_id.strip_prefix("req-").unwrap_or(request_id);
        match kind {
            GenerationKind::Chat => format!("chatcmpl-{suffix}"),
            GenerationKind::Completion => format!("cmpl-{suffix}"),
        }
    }
}

/// One thing to tell a streaming client.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// Waiting for a replica: queued at `position`, and/or a replica is starting; `eta`:
    /// the expected time until a replica takes it.
    Waiting { position: Option<u64>, starting: bool, ready_in: Option<Duration>, eta: Option<Duration> },
    /// A replica took one of the request's jobs.
    Running { replica: String },
    /// An OpenAI chunk (`chat.completion.chunk` or `text_completion`), with its event id
    /// (tokens generated so far, this chunk's included) when the stream is resumable.
    Chunk(ResponseChunk, Option<u64>),
    /// Every choice finished; `usage` is summed over them.
    Done { usage: UsageBody, finish_reason: Option<&'static str> },
    /// The request failed; nothing follows.
    Failed(GenerationError),
}

impl StreamItem {
    pub fn is_terminal(&self) -> bool {
        matches!(self, StreamItem::Done { .. } | StreamItem::Failed(_))
    }
}

/// Reads a tools request's output as it streams, in its format.
#[derive(Debug)]
enum ToolReader {
    Generic(ToolStreamReader),
    Native(NativeReader),
}

impl ToolReader {
    fn new(format: ToolFormat) -> Self {
        match format {
            ToolFormat::Generic => ToolReader::Generic(ToolStreamReader::default()),
            native => ToolReader::Native(NativeReader::new(native)),
        }
    }

    fn push(&mut self, text: &str) -> Vec<ToolDelta> {
        match self {
            ToolReader::Generic(reader) => reader.push(text),
            ToolReader::Native(reader) => reader.push(text),
        }
    }
}

#[derive(Debug, Default)]
struct ChoiceState {
    /// Whether this choice's usage counts its prompt (the first of `n` choices does).
    counts_prompt: bool,
    role_sent: bool,
    /// The prompt still to echo (completions `echo`), sent before the first output.
    echo: Option<EchoPrompt>,
    /// Character offset of the next token in the choice's text.
    offset: u32,
    /// Tokens generated so far (the event id of its chunks).
    tokens: u64,
    /// A request with tools: its output, read as it streams.
    tools: Option<ToolReader>,
    finished: Option<(FinishReason, Usage)>,
}

/// Encodes one response's events into stream items.
#[derive(Debug)]
pub struct StreamEncoder {
    meta: ResponseMeta,
    choices: Vec<ChoiceState>,
    /// Position, starting, whether the start-up estimate is known: what was last told.
    last_waiting: Option<(Option<u64>, bool, bool)>,
    /// The last wait estimate told, and when.
    last_eta: Option<(Duration, Instant)>,
    ended: bool,
    /// Whether chunks carry event ids (a single choice without echo: resumable).
    event_ids: bool,
    /// A resumed stream: what the client already had, skipped.
    resume: Option<ResumeFilter>,
}

impl StreamEncoder {
    pub fn new(meta: ResponseMeta, prompts: &[PreparedPrompt]) -> Self {
        let choices = prompts
            .iter()
            .map(|prompt| ChoiceState {
                echo: prompt.echo.clone(),
                counts_prompt: prompt.choice == 0,
                tools: meta.tools.map(ToolReader::new),
                ..ChoiceState::default()
            })
            .collect::<Vec<_>>();
        let event_ids = prompts.len() == 1 && prompts[0].echo.is_none();
        Self { meta, choices, last_waiting: None, last_eta: None, ended: false, event_ids, resume: None }
    }

    /// The encoder of a resumed single-choice stream whose client had the chunks up to
    /// event id `after`, fed the stream's events from its start: it skips the tokens the
    /// client had (counting their text for completions' `text_offset`), and does not tell
    /// the assistant role (chat) again unless `after` is 0.
    pub fn resumed(meta: ResponseMeta, after: u64) -> Self {
        let tools = meta.tools.map(ToolReader::new);
        let choice = ChoiceState { counts_prompt: true, role_sent: after > 0, tokens: after, tools, ..ChoiceState::default() };
        let resume = Some(ResumeFilter::new(after));
        Self { meta, choices: vec![choice], last_waiting: None, last_eta: None, ended: false, event_ids: true, resume }
    }

    /// Whether the stream's chunks carry event ids (it can be resumed).
    pub fn resumable(&self) -> bool {
        self.event_ids
    }

    pub fn meta(&self) -> &ResponseMeta {
        &self.meta
    }

    /// Whether the response has ended (done or failed).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Items for one event of choice `index`.
    pub fn on_event(&mut self, index: usize, event: RequestEvent) -> Vec<StreamItem> {
        if self.ended || index >= self.choices.len() {
            return Vec::new();
        }
        if let Some(resume) = &mut self.resume {
            match resume.passes(&event) {
                Ok(true) => {}
                Ok(false) => {
                    if let RequestEvent::Tokens { text, .. } = &event {
                        self.choices[index].offset += text.chars().count() as u32;
                        // The client had what these tokens told; the reader reads them
                        // again so what follows is told as it was.
                        if let Some(reader) = &mut self.choices[index].tools {
                            reader.push(text);
                        }
                    }
                    return Vec::new();
                }
                Err(error) => {
                    self.ended = true;
                    return vec![StreamItem::Failed(error)];
                }
            }
        }
        let mut items = Vec::new();
        match event {
            RequestEvent::Waiting { position, starting, ready_in, eta } => {
                // Waiting is re-sent about once a second; tell only what changed (an
                // estimate that merely counts down is not news).
                let state = (position, starting, ready_in.is_some());
                let now = Instant::now();
                let told_eta = self.last_eta.map(|(told, at)| (told, now.saturating_duration_since(at)));
                if self.last_waiting != Some(state) || eta_revised(told_eta, eta) {
                    self.last_waiting = Some(state);
                    self.last_eta = eta.map(|eta| (eta, now));
                    items.push(StreamItem::Waiting { position, starting, ready_in, eta });
                }
            }
            RequestEvent::Started { replica } => {
                items.push(StreamItem::Running { replica });
                self.open_choice(index, &mut items);
            }
            RequestEvent::PromptLogprobs(logprobs) => {
                if let Some(echo) = self.choices[index].echo.take() {
                    let chunk = self.echo_chunk(index, echo, Some(&logprobs));
                    items.push(chunk);
                }
            }
            RequestEvent::Tokens { text, token_ids, logprobs } => {
                self.open_choice(index, &mut items);
                self.choices[index].tokens += token_ids.len() as u64;
                if let Some(reader) = &mut self.choices[index].tools {
                    if let Some(delta) = tool_delta(&self.meta.id, index, reader.push(&text)) {
                        items.push(self.chat_chunk(index, delta, None, None));
                    }
                    return items;
                }
                if text.is_empty() && logprobs.as_ref().is_none_or(Vec::is_empty) {
                    return items;
                }
                let chunk = self.token_chunk(index, text, logprobs.as_deref());
                items.push(chunk);
            }
            RequestEvent::Finished { reason, usage } => {
                self.open_choice(index, &mut items);
                self.choices[index].finished = Some((reason, usage));
                if let Some(reader) = self.choices[index].tools.take() {
                    let finish = match reader {
                        ToolReader::Native(mut reader) => {
                            if let Some(delta) = tool_delta(&self.meta.id, index, reader.finish()) {
                                items.push(self.chat_chunk(index, delta, None, None));
                            }
                            let called = reader.calls() > 0 && reason == FinishReason::Stop;
                            Some(if called { "tool_calls" } else { reason.as_str() })
                        }
                        ToolReader::Generic(reader) if reader.yielded() => {
                            // Streamed as it came: only the end is left to tell.
                            let called = reader.calls() > 0 && reason == FinishReason::Stop;
                            Some(if called { "tool_calls" } else { reason.as_str() })
                        }
                        ToolReader::Generic(reader) => {
                            // Not read as it streamed: the whole output, read now.
                            let text = reader.text().to_string();
                            let (message, finish) =
                                chat_message(&self.meta.id, index, text, Some(reason.as_str()), Some(ToolFormat::Generic));
                            let tool_calls = message.tool_calls.map(|calls| {
                                calls
                                    .into_iter()
                                    .enumerate()
                                    .map(|(i, call)| ToolCallDelta {
                                        index: i as u32,
                                        id: Some(call.id),
                                        kind: Some(call.kind),
                                        function: FunctionCallDelta { name: Some(call.function.name), arguments: call.function.arguments },
                                    })
                                    .collect()
                            });
                            let delta = ChatDelta { role: None, content: message.content, tool_calls };
                            items.push(self.chat_chunk(index, delta, None, None));
                            finish
                        }
                    };
                    items.push(self.chat_chunk(index, ChatDelta::default(), None, finish));
                } else {
                    items.push(self.finish_chunk(index, reason));
                }
                if self.choices.iter().all(|choice| choice.finished.is_some()) {
                    let usage = self.total_usage();
                    if self.meta.include_usage {
                        items.push(self.usage_chunk(usage));
                    }
                    let finish_reason =
                        self.choices[0].finished.map(|(reason, _)| reason.as_str());
                    items.push(StreamItem::Done { usage, finish_reason });
                    self.ended = true;
                }
            }
            RequestEvent::Failed { code, message } => {
                items.push(StreamItem::Failed(GenerationError::Failed { code, message }));
                self.ended = true;
            }
        }
        items
    }

    /// Items when the event streams ended: nothing if the response ended properly, else
    /// a failure (a stream that ends without a terminal event is never a success).
    pub fn on_streams_closed(&mut self) -> Vec<StreamItem> {
        if self.ended {
            return Vec::new();
        }
        self.ended = true;
        vec![StreamItem::Failed(GenerationError::Failed {
            code: "stream_incomplete".into(),
            message: "the request's output ended before it finished".into(),
        })]
    }

    fn total_usage(&self) -> UsageBody {
        let usage = self.choices.iter().filter_map(|c| c.finished.map(|(_, u)| (c.counts_prompt, u))).fold(
            Usage::default(),
            |sum, (counts_prompt, u)| Usage {
                prompt_tokens: sum.prompt_tokens + if counts_prompt { u.prompt_tokens } else { 0 },
                completion_tokens: sum.completion_tokens + u.completion_tokens,
            },
        );
        usage.into()
    }

    /// The first output of a choice: the assistant role (chat) or the echoed prompt
    /// (completions with `echo` and no prompt logprobs).
    fn open_choice(&mut self, index: usize, items: &mut Vec<StreamItem>) {
        match self.meta.kind {
            GenerationKind::Chat => {
                if !self.choices[index].role_sent {
                    self.choices[index].role_sent = true;
                    let delta = ChatDelta { role: Some("assistant"), content: Some(String::new()), tool_calls: None };
                    items.push(self.chat_chunk(index, delta, None, None));
                }
            }
            GenerationKind::Completion => {
                if let Some(echo) = self.choices[index].echo.take() {
                    items.push(self.echo_chunk(index, echo, None));
                }
            }
        }
    }

    fn echo_chunk(
        &mut self,
        index: usize,
        echo: EchoPrompt,
        logprobs: Option<&[Option<TokenLogprob>]>,
    ) -> StreamItem {
        let logprobs = match logprobs {
            Some(logprobs) if self.meta.logprobs => {
                let mut out = CompletionLogprobs::default();
                let offset = &mut self.choices[index].offset;
                for (position, token_text) in echo.token_texts.iter().enumerate() {
                    let logprob = logprobs.get(position).and_then(Option::as_ref);
                    out.push(token_text, logprob, offset);
                }
                Some(out)
            }
            _ => None,
        };
        self.choices[index].offset = echo.text.chars().count() as u32;
        self.text_chunk(index, echo.text, logprobs, None)
    }

    fn token_chunk(
        &mut self,
        index: usize,
        text: String,
        logprobs: Option<&[TokenLogprob]>,
    ) -> StreamItem {
        match self.meta.kind {
            GenerationKind::Chat => {
                let logprobs = logprobs
                    .filter(|_| self.meta.logprobs)
                    .map(ChatLogprobs::from_tokens);
                let delta = ChatDelta { role: None, content: Some(text), tool_calls: None };
                self.chat_chunk(index, delta, logprobs, None)
            }
            GenerationKind::Completion => {
                let logprobs = logprobs.filter(|_| self.meta.logprobs).map(|tokens| {
                    let mut out = CompletionLogprobs::default();
                    let mut offset = self.choices[index].offset;
                    for token in tokens {
                        out.push(&token.token, Some(token), &mut offset);
                    }
                    out
                });
                self.choices[index].offset += text.chars().count() as u32;
                self.text_chunk(index, text, logprobs, None)
            }
        }
    }

    fn finish_chunk(&self, index: usize, reason: FinishReason) -> StreamItem {
        match self.meta.kind {
            GenerationKind::Chat => {
                self.chat_chunk(index, ChatDelta::default(), None, Some(reason.as_str()))
            }
            GenerationKind::Completion => {
                self.text_chunk(index, String::new(), None, Some(reason.as_str()))
            }
        }
    }

    fn usage_field(&self) -> Option<Option<UsageBody>> {
        self.meta.include_usage.then_some(None)
    }

    fn event_id(&self, index: usize) -> Option<u64> {
        self.event_ids.then(|| self.choices[index].tokens)
    }

    fn chat_chunk(
        &self,
        index: usize,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish_reason: Option<&'static str>,
    ) -> StreamItem {
        let chunk = ChatCompletionChunk {
            id: self.meta.id.clone(),
            object: CHAT_COMPLETION_CHUNK,
            created: self.meta.created,
            model: self.meta.model.clone(),
            choices: vec![ChatChunkChoice { index: index as u32, delta, logprobs, finish_reason }],
            usage: self.usage_field(),
        };
        StreamItem::Chunk(ResponseChunk::Chat(chunk), self.event_id(index))
    }

    fn text_chunk(
        &self,
        index: usize,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish_reason: Option<&'static str>,
    ) -> StreamItem {
        let chunk = TextCompletion {
            id: self.meta.id.clone(),
            object: TEXT_COMPLETION,
            created: self.meta.created,
            model: self.meta.model.clone(),
            choices: vec![TextChoice { index: index as u32, text, logprobs, finish_reason }],
            usage: self.usage_field(),
        };
        StreamItem::Chunk(ResponseChunk::Text(chunk), self.event_id(index))
    }

    /// The last chunk with `stream_options.include_usage`: no choices, the usage.
    fn usage_chunk(&self, usage: UsageBody) -> StreamItem {
        let chunk = match self.meta.kind {
            GenerationKind::Chat => ResponseChunk::Chat(ChatCompletionChunk {
                id: self.meta.id.clone(),
                object: CHAT_COMPLETION_CHUNK,
                created: self.meta.created,
                model: self.meta.model.clone(),
                choices: Vec::new(),
                usage: Some(Some(usage)),
            }),
            GenerationKind::Completion => ResponseChunk::Text(TextCompletion {
                id: self.meta.id.clone(),
                object: TEXT_COMPLETION,
                created: self.meta.created,
                model: self.meta.model.clone(),
                choices: Vec::new(),
                usage: Some(Some(usage)),
            }),
        };
        StreamItem::Chunk(chunk, self.event_id(0))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::{json, Value};
    use swell_cluster::TopLogprob;

    use super::*;

    pub(crate) fn meta(kind: GenerationKind, include_usage: bool, logprobs: bool) -> ResponseMeta {
        ResponseMeta { id: "chatcmpl-1".into(), created: 7, model: "m".into(), kind, include_usage, logprobs, tools: None }
    }

    pub(crate) fn prompt(echo: Option<EchoPrompt>) -> PreparedPrompt {
        PreparedPrompt { tokens: vec![1, 2], max_tokens: 4, echo, choice: 0 }
    }

    pub(crate) fn tokens(text: &str) -> RequestEvent {
        RequestEvent::Tokens { text: text.into(), token_ids: vec![9], logprobs: None }
    }

    pub(crate) fn finished(completion_tokens: u32) -> RequestEvent {
        RequestEvent::Finished {
            reason: FinishReason::Stop,
            usage: Usage { prompt_tokens: 2, completion_tokens },
        }
    }

    fn chunk(item: &StreamItem) -> Value {
        match item {
            StreamItem::Chunk(chunk, _) => serde_json::to_value(chunk).unwrap(),
            other => panic!("expected a chunk, got {other:?}"),
        }
    }

    #[test]
    fn an_estimate_is_news_when_it_departs_from_its_countdown() {
        let secs = Duration::from_secs;
        assert!(!eta_revised(None, None));
        assert!(eta_revised(None, Some(secs(3))));
        assert!(eta_revised(Some((secs(3), secs(0))), None));
        assert!(!eta_revised(Some((secs(10), secs(4))), Some(secs(6))), "counted down");
        assert!(!eta_revised(Some((secs(10), secs(4))), Some(secs(8))), "within a quarter");
        assert!(eta_revised(Some((secs(10), secs(4))), Some(secs(9))));
        assert!(eta_revised(Some((secs(10), secs(4))), Some(secs(3))));
        assert!(!eta_revised(Some((secs(2), secs(1))), Some(secs(2))), "within a second");
    }

    #[test]
    fn chat_streams_role_then_content_then_finish() {
        let mut encoder = StreamEncoder::new(meta(GenerationKind::Chat, false, false), &[prompt(None)]);
        let waiting = encoder.on_event(0, RequestEvent::Waiting { position: Some(3), starting: true, ready_in: None, eta: None });
        assert_eq!(waiting, [StreamItem::Waiting { position: Some(3), starting: true, ready_in: None, eta: None }]);
        let again = encoder.on_event(0, RequestEvent::Waiting { position: Some(3), starting: true, ready_in: None, eta: None });
        assert!(again.is_empty(), "unchanged waiting state is not repeated");
        let estimate = RequestEvent::Waiting {
            position: Some(3),
            starting: true,
            ready_in: Some(Duration::from_secs(2)),
            eta: Some(Duration::from_secs(2)),
        };
        assert_eq!(encoder.on_event(0, estimate.clone()).len(), 1, "a new estimate is told");
        let later = RequestEvent::Waiting {
            position: Some(3),
            starting: true,
            ready_in: Some(Duration::from_secs(1)),
            eta: Some(Duration::from_millis(1_500)),
        };
        assert!(encoder.on_event(0, later).is_empty(), "a countdown alone is not repeated");
        let revised = RequestEvent::Waiting {
            position: Some(3),
            starting: true,
            ready_in: Some(Duration::from_secs(1)),
            eta: Some(Duration::from_secs(9)),
        };
        assert_eq!(encoder.on_event(0, revised).len(), 1, "a revised estimate is told");

        let started = encoder.on_event(0, RequestEvent::Started { replica: "r1".into() });
        assert_eq!(started[0], StreamItem::Running { replica: "r1".into() });
        assert_eq!(chunk(&started[1])["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(chunk(&started[1])["object"], "chat.completion.chunk");

        let token = encoder.on_event(0, tokens("Hello"));
        assert_eq!(token.len(), 1);
        let value = chunk(&token[0]);
        assert_eq!(value["choices"][0]["delta"], json!({"content": "Hello"}));
        assert_eq!(value["choices"][0]["finish_reason"], Value::Null);
        assert!(value.get("usage").is_none());

        let end = encoder.on_event(0, finished(1));
        assert_eq!(chunk(&end[0])["choices"][0]["delta"], json!({}));
        assert_eq!(chunk(&end[0])["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            end[1],
            StreamItem::Done {
                usage: UsageBody { prompt_tokens: 2, completion_tokens: 1, total_tokens: 3 },
                finish_reason: Some("stop"),
            }
        );
        assert!(encoder.ended());
        assert!(encoder.on_streams_closed().is_empty());
    }

    #[test]
    fn include_usage_adds_null_usage_and_a_usage_chunk() {
        let mut encoder = StreamEncoder::new(meta(GenerationKind::Chat, true, false), &[prompt(None)]);
        let token = encoder.on_event(0, tokens("Hi"));
        assert_eq!(chunk(&token[0])["usage"], Value::Null);
        let end = encoder.on_event(0, finished(1));
        assert_eq!(end.len(), 3);
        let usage = chunk(&end[1]);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"], json!({"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}));
        assert!(matches!(end[2], StreamItem::Done { .. }));
    }

    #[test]
    fn a_failure_ends_the_stream() {
        let mut encoder = StreamEncoder::new(meta(GenerationKind::Chat, false, false), &[prompt(None)]);
        encoder.on_event(0, tokens("Hi"));
        let failed = encoder.on_event(0, RequestEvent::Failed { code: "engine_failure".into(), message: "boom".into() });
        assert!(matches!(&failed[0], StreamItem::Failed(error) if error.code() == "engine_failure"));
        assert!(encoder.ended());
        assert!(encoder.on_event(0, tokens("more")).is_empty());
    }

    #[test]
    fn streams_closing_early_is_a_failure() {
        let mut encoder = StreamEncoder::new(meta(GenerationKind::Chat, false, false), &[prompt(None)]);
        encoder.on_event(0, tokens("Hi"));
        let closed = encoder.on_streams_closed();
        assert!(matches!(&closed[0], StreamItem::Failed(error) if error.code() == "stream_incomplete"));
    }

    #[test]
    fn several_choices_finish_together_with_summed_usage() {
        let mut encoder = StreamEncoder::new(
            meta(GenerationKind::Completion, false, false),
            &[prompt(None), prompt(None)],
        );
        let first = encoder.on_event(1, tokens("b"));
        assert_eq!(chunk(&first[0])["choices"][0]["index"], 1);
        assert_eq!(chunk(&first[0])["choices"][0]["text"], "b");
        assert_eq!(chunk(&first[0])["object"], "text_completion");
        let end_one = encoder.on_event(1, finished(1));
        assert_eq!(end_one.len(), 1, "not done until every choice finished");
        let end_all = encoder.on_event(0, finished(3));
        assert_eq!(
            end_all.last().unwrap(),
            &StreamItem::Done {
                usage: UsageBody { prompt_tokens: 4, completion_tokens: 4, total_tokens: 8 },
                finish_reason: Some("stop"),
            }
        );
    }

    #[test]
    fn echo_comes_first_with_prompt_logprobs() {
        let echo = EchoPrompt { text: "ab".into(), token_texts: vec!["a".into(), "b".into()] };
        let mut encoder =
            StreamEncoder::new(meta(GenerationKind::Completion, false, true), &[prompt(Some(echo))]);
        let lp = TokenLogprob { token: "b".into(), token_id: 2, logprob: -1.0, top: vec![TopLogprob { token: "b".into(), logprob: -1.0 }] };
        let echoed = encoder.on_event(0, RequestEvent::PromptLogprobs(vec![None, Some(lp.clone())]));
        let value = chunk(&echoed[0]);
        assert_eq!(value["choices"][0]["text"], "ab");
        assert_eq!(value["choices"][0]["logprobs"]["token_logprobs"], json!([null, -1.0]));
        assert_eq!(value["choices"][0]["logprobs"]["text_offset"], json!([0, 1]));
        let token = encoder.on_event(0, RequestEvent::Tokens { text: "c".into(), token_ids: vec![3], logprobs: Some(vec![TokenLogprob { token: "c".into(), ..lp }]) });
        assert_eq!(chunk(&token[0])["choices"][0]["logprobs"]["text_offset"], json!([2]));
    }

    #[test]
    fn echo_without_logprobs_comes_before_the_first_token() {
        let echo = EchoPrompt { text: "say".into(), token_texts: vec![] };
        let mut encoder =
            StreamEncoder::new(meta(GenerationKind::Completion, false, false), &[prompt(Some(echo))]);
        let items = encoder.on_event(0, tokens(" hi"));
        assert_eq!(chunk(&items[0])["choices"][0]["text"], "say");
        assert_eq!(chunk(&items[1])["choices"][0]["text"], " hi");
    }

    fn event_id(item: &StreamItem) -> Option<u64> {
        match item {
            StreamItem::Chunk(_, id) => *id,
            other => panic!("expected a chunk, got {other:?}"),
        }
    }

    #[test]
    fn a_single_choice_numbers_its_chunks_by_tokens() {
        let mut encoder = StreamEncoder::new(meta(GenerationKind::Chat, true, false), &[prompt(None)]);
        assert!(encoder.resumable());
        let started = encoder.on_event(0, RequestEvent::Started { replica: "r".into() });
        assert_eq!(event_id(&started[1]), Some(0), "the role chunk comes before any token");
        let two = RequestEvent::Tokens { text: "ab".into(), token_ids: vec![1, 2], logprobs: None };
        assert_eq!(event_id(&encoder.on_event(0, two)[0]), Some(2));
        // A token whose character is incomplete sends nothing but still counts.
        let partial = RequestEvent::Tokens { text: String::new(), token_ids: vec![3], logprobs: None };
        assert!(encoder.on_event(0, partial).is_empty());
        assert_eq!(event_id(&encoder.on_event(0, tokens("c"))[0]), Some(4));
        let end = encoder.on_event(0, finished(4));
        assert_eq!(event_id(&end[0]), Some(4), "the finish chunk");
        assert_eq!(event_id(&end[1]), Some(4), "the usage chunk");
    }

    #[test]
    fn several_choices_or_an_echo_carry_no_event_ids() {
        let mut several = StreamEncoder::new(meta(GenerationKind::Chat, false, false), &[prompt(None), prompt(None)]);
        assert!(!several.resumable());
        assert_eq!(event_id(&several.on_event(1, tokens("a"))[1]), None);
        let echo = EchoPrompt { text: "say".into(), token_texts: vec![] };
        let echoed = StreamEncoder::new(meta(GenerationKind::Completion, false, false), &[prompt(Some(echo))]);
        assert!(!echoed.resumable());
    }

    #[test]
    fn a_resumed_stream_skips_what_the_client_had_and_continues_the_numbering() {
        let mut encoder = StreamEncoder::resumed(meta(GenerationKind::Chat, false, false), 5);
        let started = encoder.on_event(0, RequestEvent::Started { replica: "r".into() });
        assert_eq!(started, [StreamItem::Running { replica: "r".into() }], "no role chunk again");
        let had = RequestEvent::Tokens { text: "abcde".into(), token_ids: vec![1, 2, 3, 4, 5], logprobs: None };
        assert!(encoder.on_event(0, had).is_empty(), "the client had these");
        let token = encoder.on_event(0, tokens("x"));
        assert_eq!(token.len(), 1);
        assert_eq!(event_id(&token[0]), Some(6));
        assert_eq!(chunk(&token[0])["choices"][0]["delta"]["content"], "x");
        let from_start = StreamEncoder::resumed(meta(GenerationKind::Chat, false, false), 0)
            .on_event(0, RequestEvent::Started { replica: "r".into() });
        assert_eq!(chunk(&from_start[1])["choices"][0]["delta"]["role"], "assistant");
    }

    #[test]
    fn a_resumed_completion_counts_the_skipped_text_in_its_offsets() {
        let mut encoder = StreamEncoder::resumed(meta(GenerationKind::Completion, false, true), 2);
        let lp = |token: &str| TokenLogprob { token: token.into(), token_id: 1, logprob: -0.5, top: vec![] };
        let had = RequestEvent::Tokens { text: "ab".into(), token_ids: vec![1, 2], logprobs: Some(vec![lp("a"), lp("b")]) };
        assert!(encoder.on_event(0, had).is_empty());
        let next = RequestEvent::Tokens { text: "c".into(), token_ids: vec![3], logprobs: Some(vec![lp("c")]) };
        let items = encoder.on_event(0, next);
        assert_eq!(chunk(&items[0])["choices"][0]["logprobs"]["text_offset"], json!([2]));
    }

    #[test]
    fn a_resume_after_a_point_inside_an_event_fails_the_stream() {
        let mut encoder = StreamEncoder::resumed(meta(GenerationKind::Chat, false, false), 1);
        let two = RequestEvent::Tokens { text: "ab".into(), token_ids: vec![1, 2], logprobs: None };
        let items = encoder.on_event(0, two);
        assert!(matches!(&items[..], [StreamItem::Failed(error)] if error.param() == Some("Last-Event-ID")), "{items:?}");
        assert!(encoder.ended());
    }

    #[test]
    fn response_ids_derive_from_the_request_id() {
        assert_eq!(ResponseMeta::response_id(GenerationKind::Chat, "req-abc"), "chatcmpl-abc");
        assert_eq!(ResponseMeta::response_id(GenerationKind::Completion, "req-abc"), "cmpl-abc");
    }
}
