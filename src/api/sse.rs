//! Server-sent events: the framing of [`StreamItem`]s and the response body stream.
//!
//! - waiting: comment lines (`: queued position=3 eta=4.2s`, `: starting replica
//!   ready_in=12s`; `eta` on the first line, when there is an estimate), which OpenAI
//!   clients ignore;
//! - `: keep-alive` when nothing was sent for the keep-alive interval;
//! - `data: {chunk}` per chunk, with `id: N` before it on a resumable stream (`N`: tokens
//!   generated up to it, what `Last-Event-ID` resumes after), then `data: [DONE]`;
//! - a failure mid-stream: `data: {"error": {...}}` and the stream ends (no `[DONE]`).
//!
//! The body stream owns the request's event receivers and watches the client
//! ([`ClientGone`]): when the client goes away, the body ends at once (queued or
//! running) and the receivers are dropped: the requests are cancelled (a resumable one
//! once `queue.resume_grace` passed without a resume, `GET /v1/streams/{id}`).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt};

use crate::api::client_gone::ClientGone;
use crate::api::error::ApiError;
use crate::generation::admit::TaggedEvents;
use crate::generation::stream_encoder::{StreamEncoder, StreamItem};

pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// The SSE text of one item (`None`: nothing to send).
pub fn frame(item: &StreamItem) -> Option<String> {
    match item {
        StreamItem::Waiting { position, starting, ready_in, eta } => {
            let mut lines = String::new();
            let eta = eta.map(|eta| format!(" eta={:.1}s", eta.as_secs_f64())).unwrap_or_default();
            if let Some(position) = position {
                lines.push_str(&format!(": queued position={position}{eta}\n"));
            }
            if *starting {
                lines.push_str(": starting replica");
                if let Some(ready_in) = ready_in {
                    lines.push_str(&format!(" ready_in={}s", ready_in.as_secs_f64().ceil() as u64));
                }
                if position.is_none() {
                    lines.push_str(&eta);
                }
                lines.push('\n');
            }
            if lines.is_empty() {
                return None;
            }
            lines.push('\n');
            Some(lines)
        }
        StreamItem::Running { .. } => None,
        StreamItem::Chunk(chunk, event_id) => {
            let id = event_id.map(|id| format!("id: {id}\n")).unwrap_or_default();
            Some(format!("{id}data: {}\n\n", serde_json::to_string(chunk).expect("chunks serialize")))
        }
        StreamItem::Done { .. } => Some(String::from_utf8_lossy(DONE).into_owned()),
        StreamItem::Failed(error) => Some(format!(
            "data: {}\n\n",
            serde_json::to_string(&ApiError::from(error.clone()).body()).expect("error bodies serialize")
        )),
    }
}

struct BodyState {
    events: TaggedEvents,
    encoder: StreamEncoder,
    pending: VecDeque<Bytes>,
    keep_alive: Duration,
    client_gone: ClientGone,
    finished: bool,
    /// Dropped with the body (request handles, quota permits, ...).
    _guard: Box<dyn std::any::Any>,
}

/// The SSE response body: frames of the encoder's items, keep-alives while idle.
/// `guard` lives as long as the body (keep request handles alive with it).
pub fn body_stream(
    events: TaggedEvents,
    encoder: StreamEncoder,
    keep_alive: Duration,
    client_gone: ClientGone,
    guard: Box<dyn std::any::Any>,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    let state =
        BodyState { events, encoder, pending: VecDeque::new(), keep_alive, client_gone, finished: false, _guard: guard };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(bytes) = state.pending.pop_front() {
                return Some((Ok(bytes), state));
            }
            if state.finished {
                return None;
            }
            let next = tokio::select! {
                next = tokio::time::timeout(state.keep_alive, state.events.next()) => next,
                // The client left: end the body; dropping the events cancels the request.
                _ = state.client_gone.wait() => return None,
            };
            let items = match next {
                Err(_) => return Some((Ok(Bytes::from_static(KEEP_ALIVE)), state)),
                Ok(Some((index, event))) => state.encoder.on_event(index, event),
                Ok(None) => state.encoder.on_streams_closed(),
            };
            let mut text = String::new();
            for item in &items {
                if let Some(framed) = frame(item) {
                    text.push_str(&framed);
                }
                if item.is_terminal() {
                    state.finished = true;
                }
            }
            if !text.is_empty() {
                state.pending.push_back(Bytes::from(text));
            }
            if state.finished {
                // Cancel whatever is still running (other choices of a failed request).
                state.events = futures_util::stream::empty().boxed();
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use swell_cluster::{FinishReason, Usage};

    use swell_actors::request::RequestEvent;

    use super::*;
    use crate::generation::GenerationError;
    use crate::generation::openai_types::{ResponseChunk, TextCompletion, UsageBody, TEXT_COMPLETION};
    use crate::generation::stream_encoder::tests::{finished, meta, prompt, tokens};
    use crate::generation::validate::GenerationKind;

    #[test]
    fn waiting_becomes_comment_lines() {
        let queued = StreamItem::Waiting { position: Some(3), starting: false, ready_in: None, eta: None };
        assert_eq!(frame(&queued).unwrap(), ": queued position=3\n\n");
        let estimated = StreamItem::Waiting { position: Some(3), starting: false, ready_in: None, eta: Some(Duration::from_millis(4_240)) };
        assert_eq!(frame(&estimated).unwrap(), ": queued position=3 eta=4.2s\n\n");
        let starting = StreamItem::Waiting {
            position: Some(1),
            starting: true,
            ready_in: Some(Duration::from_millis(11_200)),
            eta: Some(Duration::from_millis(11_200)),
        };
        assert_eq!(frame(&starting).unwrap(), ": queued position=1 eta=11.2s\n: starting replica ready_in=12s\n\n");
        let unknown = StreamItem::Waiting { position: None, starting: true, ready_in: None, eta: None };
        assert_eq!(frame(&unknown).unwrap(), ": starting replica\n\n");
        let unplaced = StreamItem::Waiting { position: None, starting: true, ready_in: None, eta: Some(Duration::from_secs(3)) };
        assert_eq!(frame(&unplaced).unwrap(), ": starting replica eta=3.0s\n\n");
        assert_eq!(frame(&StreamItem::Waiting { position: None, starting: false, ready_in: None, eta: None }), None);
        assert_eq!(frame(&StreamItem::Running { replica: "r".into() }), None);
    }

    #[test]
    fn chunks_and_done_are_data_lines() {
        let chunk = ResponseChunk::Text(TextCompletion {
            id: "cmpl-1".into(),
            object: TEXT_COMPLETION,
            created: 1,
            model: "m".into(),
            choices: vec![],
            usage: None,
        });
        assert_eq!(
            frame(&StreamItem::Chunk(chunk.clone(), None)).unwrap(),
            "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[]}\n\n"
        );
        let done = StreamItem::Done {
            usage: UsageBody { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
            finish_reason: Some("stop"),
        };
        assert_eq!(frame(&done).unwrap(), "data: [DONE]\n\n");
        let numbered = frame(&StreamItem::Chunk(chunk, Some(7))).unwrap();
        assert!(numbered.starts_with("id: 7\ndata: {\"id\":\"cmpl-1\""), "{numbered}");
    }

    #[test]
    fn errors_mid_stream_are_data_with_an_error_body() {
        let failed = StreamItem::Failed(GenerationError::Failed { code: "engine_failure".into(), message: "boom".into() });
        let text = frame(&failed).unwrap();
        let body: serde_json::Value = serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(body["error"]["code"], "engine_failure");
        assert_eq!(body["error"]["type"], "server_error");
    }

    async fn collect_body(events: Vec<(usize, RequestEvent)>, keep_open: bool) -> String {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        for event in events {
            tx.send(event).await.unwrap();
        }
        if !keep_open {
            drop(tx);
        } else {
            // Keep the sender alive past the body's end.
            std::mem::forget(tx);
        }
        let events = tokio_stream::wrappers::ReceiverStream::new(rx).boxed();
        let encoder = StreamEncoder::new(meta(GenerationKind::Chat, false, false), &[prompt(None)]);
        let body = body_stream(events, encoder, Duration::from_secs(10), ClientGone::never(), Box::new(()));
        let parts: Vec<_> = body.collect().await;
        parts.into_iter().map(|part| String::from_utf8(part.unwrap().to_vec()).unwrap()).collect()
    }

    #[tokio::test]
    async fn a_complete_stream_ends_with_done() {
        let text = collect_body(
            vec![
                (0, RequestEvent::Waiting { position: Some(2), starting: false, ready_in: None, eta: None }),
                (0, RequestEvent::Started { replica: "r".into() }),
                (0, tokens("Hi")),
                (0, finished(1)),
            ],
            true,
        )
        .await;
        assert!(text.starts_with(": queued position=2\n\nid: 0\ndata: "), "{text}");
        assert!(text.contains("id: 1\ndata: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}"), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert_eq!(text.matches("[DONE]").count(), 1);
    }

    #[tokio::test]
    async fn a_failure_ends_without_done() {
        let text = collect_body(
            vec![
                (0, tokens("Hi")),
                (0, RequestEvent::Failed { code: "engine_failure".into(), message: "boom".into() }),
            ],
            true,
        )
        .await;
        assert!(text.contains("data: {\"error\""), "{text}");
        assert!(!text.contains("[DONE]"), "{text}");
    }

    #[tokio::test]
    async fn a_stream_cut_short_reports_it() {
        let text = collect_body(vec![(0, tokens("Hi"))], false).await;
        assert!(text.contains("stream_incomplete"), "{text}");
        assert!(!text.contains("[DONE]"));
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alives_fill_silence() {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let events = tokio_stream::wrappers::ReceiverStream::new(rx).boxed();
        let encoder = StreamEncoder::new(meta(GenerationKind::Chat, false, false), &[prompt(None)]);
        let mut body = Box::pin(body_stream(events, encoder, Duration::from_secs(10), ClientGone::never(), Box::new(())));
        let first = body.next().await.unwrap().unwrap();
        assert_eq!(&first[..], KEEP_ALIVE);
        tx.send((0, RequestEvent::Finished { reason: FinishReason::Length, usage: Usage::default() })).await.unwrap();
        let rest: Vec<_> = body.collect().await;
        let text: String = rest.into_iter().map(|p| String::from_utf8(p.unwrap().to_vec()).unwrap()).collect();
        assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[tokio::test]
    async fn dropping_the_body_drops_the_receivers() {
        let (tx, rx) = tokio::sync::mpsc::channel::<(usize, RequestEvent)>(16);
        let events = tokio_stream::wrappers::ReceiverStream::new(rx).boxed();
        let encoder = StreamEncoder::new(meta(GenerationKind::Chat, false, false), &[prompt(None)]);
        let body = body_stream(events, encoder, Duration::from_secs(10), ClientGone::never(), Box::new(()));
        drop(body);
        assert!(tx.is_closed(), "the request sees its client gone");
    }
}
