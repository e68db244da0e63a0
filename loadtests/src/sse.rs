//! The SSE client: one `POST` per request, the response read as server-sent events.
//!
//! [`SseParser`] is incremental: feed it network chunks as they come; events split across
//! chunks (even inside a UTF-8 character) come out whole. Lines end with `\n` or `\r\n`;
//! `data:` lines up to a blank line form one event; lines starting with `:` are comments
//! (`: queued position=3`, `: keep-alive`); other fields (`event:`, `id:`, `retry:`) are
//! ignored; `data: [DONE]` ends the stream.

use std::time::Instant;

use awc::{error::SendRequestError, http::header, Client};
use futures_util::StreamExt as _;
use serde_json::Value;

use crate::record::{Failure, Recorder};

/// One parsed server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// A comment line, without the leading `:`.
    Comment(String),
    /// The data of one event (several `data:` lines joined by `\n`).
    Data(String),
    /// `data: [DONE]`.
    Done,
}

/// Incremental SSE parser.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Option<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let scan_from = self.buf.len();
        self.buf.extend_from_slice(bytes);
        if !bytes.contains(&b'\n') {
            return events;
        }
        let mut consumed = 0;
        let mut search = scan_from;
        while let Some(pos) = self.buf[search..].iter().position(|b| *b == b'\n') {
            let end = search + pos;
            let line = self.buf[consumed..end]
                .strip_suffix(b"\r")
                .unwrap_or(&self.buf[consumed..end]);
            let line = String::from_utf8_lossy(line).into_owned();
            consumed = end + 1;
            search = consumed;
            self.line(&line, &mut events);
        }
        self.buf.drain(..consumed);
        events
    }

    /// Ends the input: a last line without a newline and a last event without its blank line
    /// still count.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let line =
                String::from_utf8_lossy(rest.strip_suffix(b"\r").unwrap_or(&rest)).into_owned();
            self.line(&line, &mut events);
        }
        self.dispatch(&mut events);
        events
    }

    fn line(&mut self, line: &str, events: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(events);
        } else if let Some(comment) = line.strip_prefix(':') {
            events.push(SseEvent::Comment(comment.to_string()));
        } else {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            if field == "data" {
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                }
            }
        }
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        if let Some(data) = self.data.take() {
            events.push(if data.trim() == "[DONE]" {
                SseEvent::Done
            } else {
                SseEvent::Data(data)
            });
        }
    }
}

/// Maps an awc send error to a failure (`connect`, `timeout` or `send`).
pub(crate) fn send_failure(error: &SendRequestError) -> Failure {
    match error {
        SendRequestError::Connect(e) => Failure::new("connect", e.to_string()),
        SendRequestError::Timeout => Failure::timeout(),
        other => Failure::new("send", other.to_string()),
    }
}

/// Applies one event to the record; `Ok(true)` when the stream is complete.
pub(crate) fn apply_event(
    recorder: &mut Recorder,
    event: SseEvent,
    at: Instant,
) -> Result<bool, Failure> {
    match event {
        SseEvent::Comment(text) => {
            recorder.on_comment(&text);
            recorder.on_wait_comment(&text, at);
        }
        SseEvent::Done => {
            recorder.on_done(at);
            return Ok(true);
        }
        SseEvent::Data(data) => {
            let chunk: Value = serde_json::from_str(&data).map_err(|e| {
                Failure::new(
                    "invalid_chunk",
                    format!("data event is not json ({e}): {data:.200}"),
                )
            })?;
            recorder.on_chunk(&chunk, at)?;
        }
    }
    Ok(false)
}

/// Sends one streaming request and reads its events into `recorder`.
pub(crate) async fn send_request(
    client: &Client,
    url: &str,
    api_key: Option<&str>,
    body: Vec<u8>,
    recorder: &mut Recorder,
) -> Result<(), Failure> {
    let mut request = client
        .post(url)
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((header::ACCEPT, "text/event-stream"));
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let mut response = request
        .send_body(body)
        .await
        .map_err(|e| send_failure(&e))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.body().limit(256 * 1024).await.unwrap_or_default();
        return Err(Failure::http(status.as_u16(), &body));
    }
    let mut parser = SseParser::new();
    while let Some(bytes) = response.next().await {
        let bytes = bytes.map_err(|e| Failure::incomplete(format!("the stream broke: {e}")))?;
        let at = Instant::now();
        for event in parser.push(&bytes) {
            if apply_event(recorder, event, at)? {
                return Ok(());
            }
        }
    }
    let at = Instant::now();
    for event in parser.finish() {
        if apply_event(recorder, event, at)? {
            return Ok(());
        }
    }
    Err(Failure::incomplete("the stream ended without data: [DONE]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &str) -> SseEvent {
        SseEvent::Data(s.to_string())
    }

    #[test]
    fn parses_comments_data_and_done() {
        let mut p = SseParser::new();
        let events =
            p.push(b": queued position=3\n\n: keep-alive\n\ndata: {\"a\":1}\n\ndata: [DONE]\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent::Comment(" queued position=3".into()),
                SseEvent::Comment(" keep-alive".into()),
                data("{\"a\":1}"),
                SseEvent::Done,
            ]
        );
        assert!(p.finish().is_empty());
    }

    #[test]
    fn events_split_across_chunks_come_out_whole() {
        let stream = ": starting replica\n\ndata: {\"x\":\"h\u{e9}llo\"}\r\n\r\ndata:{\"y\":2}\n\ndata: [DONE]\n\n";
        let expected = vec![
            SseEvent::Comment(" starting replica".into()),
            data("{\"x\":\"h\u{e9}llo\"}"),
            data("{\"y\":2}"),
            SseEvent::Done,
        ];
        // Every split point, including inside the two-byte 'é'.
        let bytes = stream.as_bytes();
        for cut in 0..=bytes.len() {
            let mut p = SseParser::new();
            let mut got = p.push(&bytes[..cut]);
            got.extend(p.push(&bytes[cut..]));
            got.extend(p.finish());
            assert_eq!(got, expected, "cut at {cut}");
        }
        // Byte by byte.
        let mut p = SseParser::new();
        let mut got: Vec<_> = bytes.iter().flat_map(|b| p.push(&[*b])).collect();
        got.extend(p.finish());
        assert_eq!(got, expected);
    }

    #[test]
    fn multi_line_data_and_other_fields() {
        let mut p = SseParser::new();
        let events = p.push(b"event: message\nid: 7\ndata: one\ndata: two\nretry: 100\n\ndata\n\n");
        assert_eq!(events, vec![data("one\ntwo"), data("")]);
    }

    #[test]
    fn data_only_dispatches_on_a_blank_line_or_finish() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: {\"z\":1}\n").is_empty());
        assert_eq!(p.push(b"\n"), vec![data("{\"z\":1}")]);
        assert!(p.push(b"data: [DONE]").is_empty());
        assert_eq!(p.finish(), vec![SseEvent::Done]);
    }

    #[test]
    fn events_update_the_recorder() {
        use crate::request::RequestSpec;
        let spec = RequestSpec {
            id: 0,
            prompt_tokens: 1,
            max_tokens: 2,
            prompt: "a".into(),
        };
        let mut r = Recorder::new(&spec, Instant::now());
        let now = Instant::now();
        assert!(!apply_event(&mut r, SseEvent::Comment(" queued position=1".into()), now).unwrap());
        assert!(!apply_event(
            &mut r,
            data(r#"{"choices":[{"index":0,"delta":{"content":"hi"}}]}"#),
            now
        )
        .unwrap());
        assert!(apply_event(&mut r, SseEvent::Done, now).unwrap());
        let bad = apply_event(&mut r, data("{not json"), now).unwrap_err();
        assert_eq!(bad.kind, "invalid_chunk");
        let err = apply_event(
            &mut r,
            data(r#"{"error":{"message":"boom","code":"internal"}}"#),
            now,
        )
        .unwrap_err();
        assert_eq!(err.kind, "stream_error:internal");
        let rec = r.finish(Ok(()));
        assert_eq!((rec.content_chunks, rec.queue_events), (1, 1));
    }
}
