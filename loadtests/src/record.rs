//! Per-request measurements: the [`RequestRecord`] of each request, the [`Recorder`] that fills
//! it while a stream arrives (shared by the SSE and WebSocket clients), and error kinds.
//!
//! # Error kinds
//!
//! A failed request's `status` is one of:
//! - `http_<status>` or `http_<status>:<code>`: a non-2xx response (`code` is `error.code`, or
//!   `error.type` when there is no code); a refused WebSocket upgrade reads the same;
//! - `stream_error:<code>`: an SSE `data: {"error": ...}` event after the stream started;
//! - `ws_error:<code>`: a WebSocket `{"type": "error"}` message;
//! - `timeout`: the request took longer than `--timeout`;
//! - `drain_timeout`: still running when the drain after the run ended ran out;
//! - `connect`: no connection (refused, unreachable, connect timeout);
//! - `send`: any other failure to send the request or read the response head;
//! - `stream_incomplete`: the stream ended (or broke) without `data: [DONE]` / `done`;
//! - `invalid_chunk`: a data event or message that is not the expected JSON.

use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use crate::request::RequestSpec;

/// The `status` of a successful request.
pub const OK: &str = "ok";

/// What happened to one request. Times are microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    /// Sequence number, from 0 in issue order.
    pub id: u64,
    /// When it was sent, in seconds since the start of the run.
    pub start_s: f64,
    /// `ok` or an error kind (see the module docs).
    pub status: String,
    /// Human-readable detail of a failure.
    pub error_message: Option<String>,
    /// Time to the first content-bearing chunk.
    pub ttft_us: Option<u64>,
    /// Time to the end of the stream (or to the failure).
    pub e2e_us: u64,
    /// Gaps between consecutive content chunks. Emptied once the report has counted them.
    #[serde(skip)]
    pub itl_us: Vec<u64>,
    /// Mean of `itl_us`.
    pub itl_mean_us: Option<f64>,
    /// Largest of `itl_us`.
    pub itl_max_us: Option<u64>,
    /// Prompt length asked for (words).
    pub prompt_tokens: u32,
    /// `max_tokens` sent.
    pub max_tokens: u32,
    /// `usage.prompt_tokens` reported by the server.
    pub usage_prompt_tokens: Option<u64>,
    /// `usage.completion_tokens` reported by the server.
    pub usage_completion_tokens: Option<u64>,
    /// Content-bearing chunks received.
    pub content_chunks: u64,
    /// SSE `: queued ...` comments / WebSocket `queued` statuses.
    pub queue_events: u32,
    /// SSE `: starting ...` comments / WebSocket `starting` statuses.
    pub starting_events: u32,
    /// All SSE comments / WebSocket status messages, the above included.
    pub comments: u32,
    /// The first waiting comment (SSE `: queued ...` / `: starting ...`): when it came
    /// (since sending), the position and the `eta=` it told.
    pub wait_comment_us: Option<u64>,
    pub wait_position: Option<u64>,
    pub wait_eta_s: Option<f64>,
    /// Time to the first chunk of any kind (a chat stream's role chunk comes when a
    /// replica takes the request): the end of the wait.
    pub first_chunk_us: Option<u64>,
}

impl RequestRecord {
    pub fn is_ok(&self) -> bool {
        self.status == OK
    }

    /// Output tokens: `usage.completion_tokens` when reported, else the content chunks.
    pub fn output_tokens(&self) -> u64 {
        self.usage_completion_tokens.unwrap_or(self.content_chunks)
    }

    /// Prompt tokens: `usage.prompt_tokens` when reported, else the length asked for.
    pub fn input_tokens(&self) -> u64 {
        self.usage_prompt_tokens
            .unwrap_or(u64::from(self.prompt_tokens))
    }
}

/// Why a request failed: an error kind and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: String,
    pub message: String,
}

impl Failure {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Failure {
            kind: kind.into(),
            message: message.into(),
        }
    }

    /// A non-2xx response with its body (`{"error": {...}}` when the server follows the API).
    pub fn http(status: u16, body: &[u8]) -> Self {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        match parsed
            .as_ref()
            .and_then(|v| v.get("error"))
            .filter(|e| e.is_object())
        {
            Some(error) => Self::from_error_object(&format!("http_{status}"), error),
            None => {
                let text = String::from_utf8_lossy(body);
                let message = if text.trim().is_empty() {
                    format!("http status {status}")
                } else {
                    truncate(text.trim(), 300)
                };
                Failure::new(format!("http_{status}"), message)
            }
        }
    }

    /// An OpenAI error object (`{"message","type","code","param"}`): kind `prefix:code`.
    pub fn from_error_object(prefix: &str, error: &Value) -> Self {
        let code = match (&error["code"], &error["type"]) {
            (Value::String(s), _) if !s.is_empty() => Some(s.clone()),
            (Value::Number(n), _) => Some(n.to_string()),
            (_, Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let kind = match code {
            Some(code) => format!("{prefix}:{code}"),
            None => prefix.to_string(),
        };
        let message = match &error["message"] {
            Value::String(s) => truncate(s, 300),
            other => truncate(&other.to_string(), 300),
        };
        Failure::new(kind, message)
    }

    pub fn timeout() -> Self {
        Failure::new("timeout", "no complete response within the request timeout")
    }

    pub fn incomplete(message: impl Into<String>) -> Self {
        Failure::new("stream_incomplete", message)
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Does this OpenAI chunk carry generated text (`choices[].delta.content` or
/// `choices[].text`)? A role-only delta or a usage chunk does not.
pub fn chunk_has_content(chunk: &Value) -> bool {
    let non_empty = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
    chunk["choices"].as_array().is_some_and(|choices| {
        choices
            .iter()
            .any(|c| non_empty(&c["delta"]["content"]) || non_empty(&c["text"]))
    })
}

/// Fills a [`RequestRecord`] while the response arrives.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    end: Option<Instant>,
    last_content: Option<Instant>,
    record: RequestRecord,
}

impl Recorder {
    /// Starts the clock of a request now.
    pub fn new(spec: &RequestSpec, run_start: Instant) -> Self {
        let start = Instant::now();
        Recorder {
            start,
            end: None,
            last_content: None,
            record: RequestRecord {
                id: spec.id,
                start_s: start.saturating_duration_since(run_start).as_secs_f64(),
                status: OK.to_string(),
                error_message: None,
                ttft_us: None,
                e2e_us: 0,
                itl_us: Vec::new(),
                itl_mean_us: None,
                itl_max_us: None,
                prompt_tokens: spec.prompt_tokens,
                max_tokens: spec.max_tokens,
                usage_prompt_tokens: None,
                usage_completion_tokens: None,
                content_chunks: 0,
                queue_events: 0,
                starting_events: 0,
                comments: 0,
                wait_comment_us: None,
                wait_position: None,
                wait_eta_s: None,
                first_chunk_us: None,
            },
        }
    }

    /// A waiting comment (`queued position=3 eta=4.2s`, `starting replica ... eta=3.0s`)
    /// received at `at`: the first one's time, position and estimate are kept.
    pub fn on_wait_comment(&mut self, text: &str, at: Instant) {
        let text = text.trim_start();
        if self.record.wait_comment_us.is_some() || !(text.starts_with("queued") || text.starts_with("starting")) {
            return;
        }
        self.record.wait_comment_us = Some(micros(at.saturating_duration_since(self.start)));
        for field in text.split_whitespace() {
            if let Some(position) = field.strip_prefix("position=") {
                self.record.wait_position = position.parse().ok();
            } else if let Some(eta) = field.strip_prefix("eta=") {
                self.record.wait_eta_s = eta.trim_end_matches('s').parse().ok();
            }
        }
    }

    /// An SSE comment line (text after the `:`), e.g. `queued position=3`.
    pub fn on_comment(&mut self, text: &str) {
        self.on_status(text);
    }

    /// A WebSocket status (`queued`, `starting`, `running`).
    pub fn on_status(&mut self, status: &str) {
        let status = status.trim_start();
        self.record.comments += 1;
        if status.starts_with("queued") {
            self.record.queue_events += 1;
        } else if status.starts_with("starting") {
            self.record.starting_events += 1;
        }
    }

    /// An OpenAI chunk received at `at`: counts content, takes usage, fails on `error`.
    pub fn on_chunk(&mut self, chunk: &Value, at: Instant) -> Result<(), Failure> {
        if self.record.first_chunk_us.is_none() {
            self.record.first_chunk_us = Some(micros(at.saturating_duration_since(self.start)));
        }
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            return Err(Failure::from_error_object("stream_error", error));
        }
        if !chunk.is_object() {
            return Err(Failure::new(
                "invalid_chunk",
                format!("not a json object: {}", truncate(&chunk.to_string(), 200)),
            ));
        }
        if chunk_has_content(chunk) {
            self.on_content(at);
        }
        self.on_usage(&chunk["usage"]);
        Ok(())
    }

    fn on_content(&mut self, at: Instant) {
        match self.last_content {
            None => self.record.ttft_us = Some(micros(at.saturating_duration_since(self.start))),
            Some(last) => self
                .record
                .itl_us
                .push(micros(at.saturating_duration_since(last))),
        }
        self.last_content = Some(at);
        self.record.content_chunks += 1;
    }

    /// A `usage` object (ignored when null or absent).
    pub fn on_usage(&mut self, usage: &Value) {
        if let Some(n) = usage["prompt_tokens"].as_u64() {
            self.record.usage_prompt_tokens = Some(n);
        }
        if let Some(n) = usage["completion_tokens"].as_u64() {
            self.record.usage_completion_tokens = Some(n);
        }
    }

    /// The stream completed (`[DONE]` / `done`) at `at`.
    pub fn on_done(&mut self, at: Instant) {
        self.end = Some(at);
    }

    /// Closes the record with the outcome of the request.
    pub fn finish(mut self, outcome: Result<(), Failure>) -> RequestRecord {
        let end = self.end.unwrap_or_else(Instant::now);
        self.record.e2e_us = micros(end.saturating_duration_since(self.start));
        let gaps = &self.record.itl_us;
        if !gaps.is_empty() {
            self.record.itl_mean_us =
                Some(gaps.iter().map(|g| *g as f64).sum::<f64>() / gaps.len() as f64);
            self.record.itl_max_us = gaps.iter().max().copied();
        }
        if let Err(failure) = outcome {
            self.record.status = failure.kind;
            self.record.error_message = Some(failure.message);
        }
        self.record
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn spec() -> RequestSpec {
        RequestSpec {
            id: 4,
            prompt_tokens: 10,
            max_tokens: 3,
            prompt: "x".into(),
        }
    }

    #[test]
    fn content_detection() {
        assert!(chunk_has_content(
            &json!({"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]})
        ));
        assert!(chunk_has_content(
            &json!({"choices": [{"index": 0, "text": " a"}]})
        ));
        assert!(!chunk_has_content(
            &json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        ));
        assert!(!chunk_has_content(
            &json!({"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "length"}]})
        ));
        assert!(!chunk_has_content(
            &json!({"choices": [], "usage": {"completion_tokens": 3}})
        ));
    }

    #[test]
    fn the_first_waiting_comment_gives_the_wait_estimate() {
        let run_start = Instant::now();
        let mut r = Recorder::new(&spec(), run_start);
        let t0 = Instant::now();
        r.on_wait_comment(" keep-alive", t0);
        r.on_wait_comment(" queued position=3 eta=4.2s", t0 + Duration::from_millis(5));
        r.on_wait_comment(" queued position=2 eta=1.0s", t0 + Duration::from_millis(900));
        r.on_chunk(&json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}), t0 + Duration::from_secs(4))
            .unwrap();
        let rec = r.finish(Ok(()));
        assert_eq!((rec.wait_position, rec.wait_eta_s), (Some(3), Some(4.2)));
        let waited = rec.first_chunk_us.unwrap() - rec.wait_comment_us.unwrap();
        assert!((3_990_000..4_000_000).contains(&waited), "{waited}");
        assert_eq!(rec.ttft_us, None, "a role chunk is not content");
    }

    #[test]
    fn recorder_measures_ttft_itl_and_usage() {
        let run_start = Instant::now();
        let mut r = Recorder::new(&spec(), run_start);
        let t0 = Instant::now();
        let chunk = json!({"choices": [{"index": 0, "delta": {"content": "a"}}]});
        r.on_comment(" queued position=2");
        r.on_comment("starting replica");
        r.on_comment(" keep-alive");
        r.on_chunk(
            &json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
            t0,
        )
        .unwrap();
        r.on_chunk(&chunk, t0 + Duration::from_millis(100)).unwrap();
        r.on_chunk(&chunk, t0 + Duration::from_millis(110)).unwrap();
        r.on_chunk(&chunk, t0 + Duration::from_millis(130)).unwrap();
        r.on_chunk(&json!({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}), t0).unwrap();
        r.on_done(t0 + Duration::from_millis(140));
        let rec = r.finish(Ok(()));
        assert!(rec.is_ok());
        let ttft = rec.ttft_us.unwrap();
        assert!((100_000..101_000).contains(&ttft), "{ttft}");
        assert_eq!(rec.itl_us, [10_000, 20_000]);
        assert_eq!(
            (rec.itl_mean_us, rec.itl_max_us),
            (Some(15_000.0), Some(20_000))
        );
        assert_eq!(
            (rec.content_chunks, rec.output_tokens(), rec.input_tokens()),
            (3, 5, 12)
        );
        assert_eq!(
            (rec.comments, rec.queue_events, rec.starting_events),
            (3, 1, 1)
        );
        assert!(rec.e2e_us >= 140_000);
    }

    #[test]
    fn output_tokens_fall_back_to_chunks() {
        let mut r = Recorder::new(&spec(), Instant::now());
        r.on_chunk(&json!({"choices": [{"text": "a"}]}), Instant::now())
            .unwrap();
        r.on_usage(&Value::Null);
        let rec = r.finish(Err(Failure::timeout()));
        assert_eq!((rec.output_tokens(), rec.input_tokens()), (1, 10));
        assert_eq!(rec.status, "timeout");
        assert!(!rec.is_ok());
    }

    #[test]
    fn stream_errors_and_http_errors_get_kinds() {
        let mut r = Recorder::new(&spec(), Instant::now());
        let err = r
            .on_chunk(&json!({"error": {"message": "replica died", "type": "server_error", "code": "replica_failed", "param": null}}), Instant::now())
            .unwrap_err();
        assert_eq!(
            err,
            Failure::new("stream_error:replica_failed", "replica died")
        );
        let bad = r.on_chunk(&json!([1, 2]), Instant::now()).unwrap_err();
        assert_eq!(bad.kind, "invalid_chunk");

        let body = br#"{"error":{"message":"too many requests","type":"rate_limit_error","code":"rate_limited","param":null}}"#;
        assert_eq!(
            Failure::http(429, body),
            Failure::new("http_429:rate_limited", "too many requests")
        );
        let no_code =
            br#"{"error":{"message":"no such model","type":"invalid_request_error","code":null}}"#;
        assert_eq!(
            Failure::http(404, no_code).kind,
            "http_404:invalid_request_error"
        );
        assert_eq!(
            Failure::http(502, b"bad gateway"),
            Failure::new("http_502", "bad gateway")
        );
        assert_eq!(
            Failure::http(500, b""),
            Failure::new("http_500", "http status 500")
        );
        assert_eq!(
            Failure::from_error_object("ws_error", &json!({"code": 503})).kind,
            "ws_error:503"
        );
    }
}
