//! What each client saw, and the checks run on it afterwards. Nothing here reads a clock
//! of another process: a history is what one client observed, in its own order.
//!
//! A [`History`] is one request: the gateway it was sent to, then one [`Segment`] per
//! connection that carried its stream (the first, then each resume after the client
//! lost its connection), and how it [`End`]ed. [`check`] finds the [`Anomaly`]s:
//!
//! - **silence**: a request the cluster accepted (it answered 200 and a stream id) that
//!   ended neither with a completion nor an explicit error event;
//! - **gap or repeat**: event ids that do not grow across its segments (a resume must
//!   continue right after the last id the client had);
//! - **wrong output**: a completed request whose text differs from the undisturbed run of
//!   the same prompt and seed (a lost or repeated token shows here too).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use serde::Serialize;

/// Milliseconds on the clients' one clock (since its first reading in this process).
pub fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One connection's part of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// The gateway that served it.
    pub gateway: String,
    /// `Last-Event-ID` it resumed after (`None`: the original request).
    pub resumed_after: Option<u64>,
    /// Its chunks: event id and content.
    pub chunks: Vec<(Option<u64>, String)>,
    /// Why it ended: `done`, `error:<code>`, or what broke the connection.
    pub ended: String,
}

/// How a request ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum End {
    /// `[DONE]` after a finish reason.
    Completed { finish: String },
    /// An explicit error event or answer (its code) after the request was accepted.
    Error { code: String },
    /// Never accepted: refused (status) or no gateway answered. Not an anomaly.
    NotAccepted { why: String },
    /// Accepted, then no end the client could get: silence.
    Lost { why: String },
}

/// One request's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct History {
    pub client: usize,
    /// The client's request number.
    pub number: u64,
    /// `sse`, `ws` or `ingress`.
    pub transport: String,
    /// The tenant whose key it carried.
    pub tenant: String,
    /// When it was sent, and when the client learned it was accepted ([`clock_ms`]).
    pub sent_ms: u64,
    pub accepted_ms: Option<u64>,
    /// From sending it to its end, by the client's clock.
    pub took_ms: u64,
    pub prompt: usize,
    pub seed: u64,
    /// The stream's id (`req-...`), once the cluster accepted it.
    pub stream: Option<String>,
    pub segments: Vec<Segment>,
    pub end: End,
}

impl History {
    /// A request about to be sent by `client` (with its tenant's key), not accepted yet.
    pub fn new(client: usize, number: u64, transport: &str, prompt: usize, seed: u64) -> Self {
        Self {
            client,
            number,
            transport: transport.into(),
            tenant: crate::chaos::tenants::tenant_of(client).into(),
            sent_ms: clock_ms(),
            accepted_ms: None,
            took_ms: 0,
            prompt,
            seed,
            stream: None,
            segments: Vec::new(),
            end: End::NotAccepted { why: String::new() },
        }
    }

    /// The last event id the client received: what a resume continues after.
    pub fn last_event_id(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(|s| s.chunks.iter().rev().find_map(|(id, _)| *id))
    }

    /// The content the client put together from its segments.
    pub fn text(&self) -> String {
        self.segments.iter().flat_map(|s| s.chunks.iter().map(|(_, text)| text.as_str())).collect()
    }
}

/// Something a history shows that must not happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    pub kind: &'static str,
    pub detail: String,
    pub history: History,
}

/// The anomalies of `histories`; `reference` is the undisturbed output of each
/// `(prompt, seed)`.
pub fn check(histories: &[History], reference: &HashMap<(usize, u64), String>) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    for history in histories {
        let mut found = |kind: &'static str, detail: String| {
            anomalies.push(Anomaly { kind, detail, history: history.clone() })
        };
        if let End::Lost { why } = &history.end {
            found("silence", format!("accepted, then neither a completion nor an error: {why}"));
        }
        let mut last: Option<u64> = None;
        for (index, segment) in history.segments.iter().enumerate() {
            if index > 0 && segment.resumed_after != last {
                found("gap or repeat", format!("segment {index} resumed after {:?}, the client had {last:?}", segment.resumed_after));
            }
            for (id, _) in &segment.chunks {
                let Some(id) = *id else { continue };
                // The finish chunk repeats the last token's id; anything else grows.
                if last.is_some_and(|previous| id < previous) {
                    found("gap or repeat", format!("event id {id} after {last:?} in segment {index}"));
                }
                last = Some(id);
            }
        }
        if let End::Completed { .. } = &history.end {
            match reference.get(&(history.prompt, history.seed)) {
                Some(expected) if *expected != history.text() => found(
                    "wrong output",
                    format!("expected {expected:?}, got {:?}", history.text()),
                ),
                Some(_) => {}
                None => found("wrong output", "no undisturbed run to compare with".into()),
            }
        }
    }
    anomalies
}

/// Counts of how requests ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    pub completed: u64,
    pub errors: HashMap<String, u64>,
    pub not_accepted: u64,
    pub lost: u64,
    /// Requests whose stream was resumed at least once.
    pub resumed: u64,
    /// Why requests were not accepted: a status and error code, or a connection error.
    pub refusals: HashMap<String, u64>,
    /// Requests by transport (`sse`, `ws`).
    pub transports: HashMap<String, u64>,
}

pub fn outcomes(histories: &[History]) -> Outcomes {
    let mut outcomes = Outcomes::default();
    for history in histories {
        match &history.end {
            End::Completed { .. } => outcomes.completed += 1,
            End::Error { code } => *outcomes.errors.entry(format!("{code} ({})", history.transport)).or_default() += 1,
            End::NotAccepted { why } => {
                outcomes.not_accepted += 1;
                *outcomes.refusals.entry(refusal_kind(why)).or_default() += 1;
            }
            End::Lost { .. } => outcomes.lost += 1,
        }
        outcomes.resumed += u64::from(history.segments.len() > 1);
        *outcomes.transports.entry(history.transport.clone()).or_default() += 1;
    }
    outcomes
}

/// `"<gateway>: 503 Service Unavailable {..."code":"queue_unavailable"...}"` as `503
/// queue_unavailable`; a connection error as its first words.
fn refusal_kind(why: &str) -> String {
    let rest = why.split_once(": ").map_or(why, |(_, rest)| rest);
    let status = rest.split_whitespace().next().unwrap_or("").to_string();
    if status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit()) {
        let quoted = rest.split("\"code\":\"").nth(1).and_then(|c| c.split('"').next());
        // Else a bare code after the status (`429 concurrency_limit_exceeded`).
        let bare = rest.split_whitespace().nth(1).filter(|w| w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        let code = quoted.or(bare).unwrap_or("");
        return format!("{status} {code}").trim().to_string();
    }
    rest.split([':', '(']).next().unwrap_or(rest).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(after: Option<u64>, chunks: &[(u64, &str)], ended: &str) -> Segment {
        Segment {
            gateway: "gw1".into(),
            resumed_after: after,
            chunks: chunks.iter().map(|&(id, text)| (Some(id), text.to_string())).collect(),
            ended: ended.into(),
        }
    }

    fn history(segments: Vec<Segment>, end: End) -> History {
        History { stream: Some("req-1".into()), segments, end, ..History::new(0, 1, "sse", 0, 7) }
    }

    fn reference() -> HashMap<(usize, u64), String> {
        HashMap::from([((0, 7), "abc".to_string())])
    }

    fn kinds(histories: &[History]) -> Vec<&'static str> {
        check(histories, &reference()).iter().map(|a| a.kind).collect()
    }

    #[test]
    fn a_resumed_stream_with_exactly_the_rest_is_clean() {
        let done = End::Completed { finish: "length".into() };
        let clean = history(
            vec![segment(None, &[(0, ""), (1, "a")], "reset"), segment(Some(1), &[(2, "b"), (3, "c"), (3, "")], "done")],
            done.clone(),
        );
        assert!(kinds(&[clean]).is_empty());
        let errored = history(vec![segment(None, &[(0, "")], "error:queue_unavailable")], End::Error { code: "queue_unavailable".into() });
        let refused = history(Vec::new(), End::NotAccepted { why: "503".into() });
        assert!(kinds(&[errored, refused]).is_empty());
    }

    #[test]
    fn refusals_are_counted_by_status_and_code() {
        assert_eq!(refusal_kind(r#"http://gw: 503 Service Unavailable {"error":{"code":"queue_unavailable"}}"#), "503 queue_unavailable");
        assert_eq!(refusal_kind("http://127.0.0.1:1: Failed to connect to host: Connection refused"), "Failed to connect to host");
        assert_eq!(refusal_kind("ingress: 429 concurrency_limit_exceeded"), "429 concurrency_limit_exceeded");
    }

    #[test]
    fn silence_gaps_repeats_and_wrong_text_are_found() {
        let done = End::Completed { finish: "length".into() };
        let lost = history(vec![segment(None, &[(1, "a")], "reset")], End::Lost { why: "404".into() });
        assert_eq!(kinds(&[lost]), ["silence"]);
        // Resumed after an id the client did not have.
        let skipped = history(vec![segment(None, &[(1, "a")], "reset"), segment(Some(2), &[(3, "c")], "done")], done.clone());
        assert_eq!(kinds(&[skipped]), ["gap or repeat", "wrong output"]);
        // A token told twice.
        let repeated = history(vec![segment(None, &[(1, "a"), (2, "b"), (2, "b"), (3, "c")], "done")], done.clone());
        assert_eq!(kinds(&[repeated]), ["wrong output"]);
        let backwards = history(vec![segment(None, &[(2, "ab"), (1, "c")], "done")], done);
        assert_eq!(kinds(&[backwards]), ["gap or repeat"]);
    }
}
