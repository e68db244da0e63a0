//! A campaign request through the Redis ingress (docs/ingress.md): the client `XADD`s
//! it to the ingress stream (straight to Redis, not through a node's proxy: the client is
//! outside the cluster) and reads its replies from a reply stream of its own. An `XADD`
//! that fails is sent again with the same id (the ingress answers an id once), for up to
//! `resume_for`; the request counts as accepted once an `XADD` went through. Its replies
//! are recorded as one segment (event id: the reply's `seq`).
//!
//! After the campaign, [`check_replies`] reads every client's reply stream whole: each
//! request's replies must be numbered `0, 1, 2, ...` without a gap or a repeat, and end
//! with exactly one terminal reply.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use swell_cluster::ingress_wire::{default_reply_prefix, Encoding, IngressRequest, Producer, Reply, ReplyKind, RequestKind};

use crate::chaos::client::{body, Ask, ClientOptions};
use crate::chaos::history::{clock_ms, End, History, Segment};
use crate::chaos::tenants::{key_of, tenant_of};

/// Swell's key prefix in the campaign's cluster.
const KEY_PREFIX: &str = "swell";

/// The reply stream of client `index`, under its tenant's default reply prefix.
pub fn reply_to(index: usize) -> String {
    format!("{}{{chaos-{index}}}", default_reply_prefix(KEY_PREFIX, tenant_of(index)))
}

/// One client's side of the ingress: its producer (connected on first use) and how far
/// it has read its reply stream.
pub struct IngressClient {
    url: String,
    index: usize,
    producer: Option<Producer>,
    after: String,
}

impl IngressClient {
    pub fn new(url: String, index: usize) -> Self {
        Self { url, index, producer: None, after: "0".into() }
    }

    async fn producer(&mut self) -> Result<&Producer, String> {
        if self.producer.is_none() {
            let connected = actix_rt::time::timeout(Duration::from_secs(2), Producer::connect(&self.url, KEY_PREFIX)).await;
            self.producer = Some(match connected {
                Ok(Ok(producer)) => producer,
                Ok(Err(error)) => return Err(format!("redis: {error}")),
                Err(_) => return Err("redis: no connection within 2 s".into()),
            });
        }
        Ok(self.producer.as_ref().expect("connected"))
    }

    /// Runs `ask` (a request of this client) through the ingress.
    pub async fn one_request(&mut self, ask: Ask, options: &ClientOptions) -> History {
        let id = format!("c{}-{}", self.index, ask.number);
        let mut history = ask.history("ingress");
        let request = IngressRequest {
            id: id.clone(),
            api_key: Some(key_of(tenant_of(self.index))),
            deployment: "chat".into(),
            kind: RequestKind::Chat,
            request: body(ask.prompt, ask.seed, options.max_tokens, true).to_string(),
            reply_to: reply_to(self.index),
            deadline_ms: None,
        };
        let give_up = Instant::now() + options.resume_for;
        let mut tries = Vec::new();
        loop {
            let submitted = match self.producer().await {
                Ok(producer) => actix_rt::time::timeout(Duration::from_secs(2), producer.submit(&request, Encoding::Json))
                    .await
                    .map_err(|_| "XADD: no answer within 2 s".to_string())
                    .and_then(|r| r.map_err(|e| format!("XADD: {e}"))),
                Err(why) => Err(why),
            };
            match submitted {
                Ok(_) => break,
                Err(why) => {
                    tries.push(why);
                    // A connection that failed may be stale: a new one next time.
                    self.producer = None;
                    if Instant::now() >= give_up {
                        history.end = End::NotAccepted { why: format!("ingress: {}", tries.join("; ")) };
                        return history;
                    }
                    actix_rt::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        history.stream = Some(id.clone());
        let mut segment = Segment { gateway: "ingress".into(), resumed_after: None, chunks: Vec::new(), ended: String::new() };
        let (mut finish, mut admitted) = (None, false);
        // Queued, a replica started, 48 tokens, and every resume a fault may cost.
        let deadline = Instant::now() + Duration::from_secs(60) + options.resume_for;
        while Instant::now() < deadline {
            let after = self.after.clone();
            let read = match self.producer().await {
                Ok(producer) => producer.read_replies(&request.reply_to, &after, Some(Duration::from_secs(1))).await.map_err(|e| e.to_string()),
                Err(why) => Err(why),
            };
            let replies = match read {
                Ok(replies) => replies,
                Err(_) => {
                    self.producer = None;
                    actix_rt::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            for (stream_id, reply) in replies {
                self.after = stream_id;
                if reply.id.as_deref() != Some(id.as_str()) {
                    continue;
                }
                if !admitted && matches!(reply.kind, ReplyKind::Status | ReplyKind::Chunk) {
                    // Status and chunk replies come only after admission.
                    admitted = true;
                    history.accepted_ms = Some(clock_ms());
                }
                match reply.kind {
                    ReplyKind::Status => {}
                    ReplyKind::Chunk => {
                        let choice = &reply.data["choices"][0];
                        if let Some(reason) = choice["finish_reason"].as_str() {
                            finish = Some(reason.to_string());
                        }
                        let content = choice["delta"]["content"].as_str().unwrap_or_default().to_string();
                        segment.chunks.push((Some(reply.seq), content));
                    }
                    ReplyKind::Done | ReplyKind::Completion => {
                        segment.ended = "done".into();
                        let finish = reply.data["finish_reason"].as_str().map(str::to_string).or(finish).unwrap_or_else(|| "none".into());
                        history.segments.push(segment);
                        history.end = End::Completed { finish };
                        return history;
                    }
                    ReplyKind::Error => {
                        let code = reply.data["error"]["code"].as_str().unwrap_or("unknown").to_string();
                        segment.ended = format!("error:{code}");
                        history.segments.push(segment);
                        // Refused at admission (quota, queue full or unreachable) is not
                        // being accepted, as a non-200 answer over HTTP.
                        history.end = if admitted {
                            End::Error { code }
                        } else {
                            let status = reply.data["status"].as_u64().unwrap_or_default();
                            End::NotAccepted { why: format!("ingress: {status} {code}") }
                        };
                        return history;
                    }
                }
            }
        }
        segment.ended = "no terminal reply".into();
        history.segments.push(segment);
        history.end = End::Lost { why: format!("no terminal reply within {:?} of the XADD", Duration::from_secs(60) + options.resume_for) };
        history
    }
}

/// Reads the reply streams of clients `0..clients` whole and answers what is wrong with
/// them: `(request id, what)` for each request whose replies are not numbered `0, 1, 2,
/// ...` or that has no terminal reply, or more than one, or replies after it.
pub fn check_replies(url: &str, clients: usize) -> anyhow::Result<Vec<(String, String)>> {
    let mut conn = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))?;
    let mut found = Vec::new();
    for index in 0..clients {
        let entries: redis::streams::StreamRangeReply =
            redis::cmd("XRANGE").arg(reply_to(index)).arg("-").arg("+").query(&mut conn)?;
        let mut by_request: BTreeMap<String, Vec<Reply>> = BTreeMap::new();
        for entry in entries.ids {
            let fields = swell_cluster::ingress_wire::entry_fields(&entry);
            let reply = Reply::from_fields(&fields).map_err(|e| anyhow::anyhow!("a reply of {}: {e}", reply_to(index)))?;
            by_request.entry(reply.id.clone().unwrap_or_default()).or_default().push(reply);
        }
        for (id, replies) in by_request {
            if let Some(what) = replies_problem(&replies) {
                found.push((id, what));
            }
        }
    }
    Ok(found)
}

/// What is wrong with one request's replies, in stream order (`None`: nothing).
fn replies_problem(replies: &[Reply]) -> Option<String> {
    let seqs: Vec<u64> = replies.iter().map(|r| r.seq).collect();
    if seqs.iter().enumerate().any(|(i, &seq)| seq != i as u64) {
        return Some(format!("replies numbered {seqs:?}, not 0, 1, 2, ..."));
    }
    let terminals = replies.iter().filter(|r| r.kind.is_terminal()).count();
    if terminals != 1 {
        return Some(format!("{terminals} terminal replies"));
    }
    if !replies.last().is_some_and(|r| r.kind.is_terminal()) {
        return Some("replies after the terminal one".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply(seq: u64, kind: ReplyKind) -> Reply {
        Reply { id: Some("c0-1".into()), seq, kind, data: json!({}) }
    }

    #[test]
    fn replies_must_be_numbered_in_order_and_end_with_one_terminal() {
        use ReplyKind::*;
        assert_eq!(replies_problem(&[reply(0, Status), reply(1, Chunk), reply(2, Done)]), None);
        assert_eq!(replies_problem(&[reply(0, Error)]), None);
        assert!(replies_problem(&[reply(0, Chunk), reply(2, Done)]).unwrap().contains("numbered"));
        assert!(replies_problem(&[reply(0, Chunk), reply(1, Chunk), reply(1, Done)]).unwrap().contains("numbered"));
        assert_eq!(replies_problem(&[reply(0, Chunk), reply(1, Chunk)]).unwrap(), "0 terminal replies");
        assert_eq!(replies_problem(&[reply(0, Done), reply(1, Error)]).unwrap(), "2 terminal replies");
        assert_eq!(replies_problem(&[reply(0, Done), reply(1, Chunk)]).unwrap(), "replies after the terminal one");
    }

    #[test]
    fn each_client_replies_under_its_tenants_prefix() {
        assert_eq!(reply_to(3), "swell-replies:6:capped:{chaos-3}");
        assert_eq!(reply_to(4), "swell-replies:4:bulk:{chaos-4}");
    }
}
