//! A campaign request over the WebSocket API (`GET /v1/ws`), recorded as the same
//! [`History`] as an SSE request. The request counts as accepted once its `accepted`
//! status frame named its stream (`request_id`); a socket that closes, or stays silent
//! for `idle`, is replaced by a new one at the next gateway that sends `resume` with the
//! last `event_id` received, for up to `resume_for`.

use std::time::{Duration, Instant};

use awc::ws::{Frame, Message};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};

use crate::chaos::client::{body, Ask, ClientOptions};
use crate::chaos::history::{clock_ms, End, History, Segment};
use crate::chaos::tenants::key_of;

/// What one socket's part of the request came to.
enum SocketEnd {
    /// The request ended (completion or explicit error).
    Ended(End),
    /// Refused before it was accepted (the error frame's code), or a resume refused.
    Refused(String),
    /// Lost: the socket closed or went silent; the request may be resumed.
    Lost,
}

type Socket = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

/// Runs `ask` over WebSocket.
pub async fn one_request(ask: Ask, gateways: &[String], options: &ClientOptions) -> History {
    let first = ask.first;
    let mut history = ask.history("ws");
    let gateway = &gateways[first];
    let key = key_of(&history.tenant);
    let mut socket = match connect(gateway, &key).await {
        Ok(socket) => socket,
        Err(why) => {
            history.end = End::NotAccepted { why };
            return history;
        }
    };
    let mut request = body(ask.prompt, ask.seed, options.max_tokens, true);
    request.as_object_mut().expect("an object").remove("stream");
    let message = json!({"id": "r", "type": "chat.completion", "request": request});
    if let Err(error) = socket.send(Message::Text(message.to_string().into())).await {
        history.end = End::NotAccepted { why: format!("{gateway}: send: {error}") };
        return history;
    }
    let mut segment = Segment { gateway: gateway.clone(), resumed_after: None, chunks: Vec::new(), ended: String::new() };
    let mut accepted = None;
    let end = read(&mut socket, &mut segment, &mut accepted, options.idle).await;
    if let Some((stream, at)) = accepted {
        history.stream = Some(stream);
        history.accepted_ms = Some(at);
    }
    history.segments.push(segment);
    match end {
        SocketEnd::Ended(end) => {
            history.end = end;
            return history;
        }
        SocketEnd::Refused(why) if history.stream.is_none() => {
            history.end = End::NotAccepted { why: format!("{gateway}: {why}") };
            return history;
        }
        SocketEnd::Refused(why) => {
            history.end = End::Lost { why: format!("refused after it was accepted: {why}") };
            return history;
        }
        SocketEnd::Lost if history.stream.is_none() => {
            // The socket went before the request was accepted: the client never learned
            // of it, and the cluster cancels it after its resume grace.
            history.end = End::NotAccepted { why: format!("{gateway}: the socket was lost before `accepted`") };
            return history;
        }
        SocketEnd::Lost => {}
    }
    let stream = history.stream.clone().expect("accepted");
    let deadline = Instant::now() + options.resume_for;
    let mut attempt = first + 1;
    let mut tries = Vec::new();
    while Instant::now() < deadline {
        let gateway = &gateways[attempt % gateways.len()];
        attempt += 1;
        let last = history.last_event_id();
        let mut socket = match connect(gateway, &key).await {
            Ok(socket) => socket,
            Err(why) => {
                tries.push(why);
                actix_rt::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let resume = json!({"id": "r", "type": "resume", "request_id": stream, "after": last.unwrap_or(0)});
        if let Err(error) = socket.send(Message::Text(resume.to_string().into())).await {
            tries.push(format!("{gateway}: send: {error}"));
            continue;
        }
        let mut segment = Segment { gateway: gateway.clone(), resumed_after: last, chunks: Vec::new(), ended: String::new() };
        let mut ignored = None;
        let end = read(&mut socket, &mut segment, &mut ignored, options.idle).await;
        let received = !segment.chunks.is_empty();
        history.segments.push(segment);
        match end {
            SocketEnd::Ended(end) => {
                history.end = end;
                return history;
            }
            SocketEnd::Refused(why) => {
                let code = why.split(':').next().unwrap_or_default().to_string();
                tries.push(format!("{gateway}: {why}"));
                match code.as_str() {
                    // The stream is unknown or the id wrong: nothing more to try.
                    "stream_not_found" | "invalid_value" => {
                        history.end = End::Lost { why: format!("resume refused: {}", tries.join("; ")) };
                        return history;
                    }
                    // The gateway cannot reach the queue now: try again.
                    "queue_unavailable" | "shutting_down" => actix_rt::time::sleep(Duration::from_millis(300)).await,
                    // The stream's own end, an error, told first.
                    _ => {
                        history.end = End::Error { code };
                        return history;
                    }
                }
            }
            SocketEnd::Lost if received => {}
            SocketEnd::Lost => tries.push(format!("{gateway}: lost before a chunk")),
        }
    }
    history.end = End::Lost { why: format!("no gateway resumed the stream within {:?}: {}", options.resume_for, tries.join("; ")) };
    history
}

async fn connect(gateway: &str, key: &str) -> Result<Socket, String> {
    let url = format!("{}/v1/ws", gateway.replacen("http://", "ws://", 1));
    let client = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
    match actix_rt::time::timeout(Duration::from_secs(5), client.ws(url).bearer_auth(key).connect()).await {
        Ok(Ok((_, socket))) => Ok(socket),
        Ok(Err(error)) => Err(format!("{gateway}: {error}")),
        Err(_) => Err(format!("{gateway}: no upgrade within 5 s")),
    }
}

/// Reads one socket's frames of request `r` into `segment`; `accepted` is set from the
/// `accepted` frame: the stream's id and when it came ([`clock_ms`]).
async fn read(socket: &mut Socket, segment: &mut Segment, accepted: &mut Option<(String, u64)>, idle: Duration) -> SocketEnd {
    let mut finish: Option<String> = None;
    let mut chunks_or_status = false;
    loop {
        let frame = match actix_rt::time::timeout(idle, socket.next()).await {
            Err(_) => {
                segment.ended = format!("nothing for {idle:?}");
                return SocketEnd::Lost;
            }
            Ok(None) => {
                segment.ended = "the socket closed".into();
                return SocketEnd::Lost;
            }
            Ok(Some(Err(error))) => {
                segment.ended = format!("read error: {error}");
                return SocketEnd::Lost;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let bytes = match frame {
            Frame::Text(bytes) => bytes,
            Frame::Close(reason) => {
                segment.ended = format!("closed: {reason:?}");
                return SocketEnd::Lost;
            }
            _ => continue,
        };
        let Ok(message) = serde_json::from_slice::<Value>(&bytes) else { continue };
        match message["type"].as_str() {
            Some("status") => {
                chunks_or_status = true;
                if message["status"] == "accepted" {
                    *accepted = message["request_id"].as_str().map(|id| (id.to_string(), clock_ms()));
                }
            }
            Some("chunk") => {
                chunks_or_status = true;
                let choice = &message["chunk"]["choices"][0];
                if let Some(reason) = choice["finish_reason"].as_str() {
                    finish = Some(reason.to_string());
                }
                let content = choice["delta"]["content"].as_str().unwrap_or_default().to_string();
                segment.chunks.push((message["event_id"].as_u64(), content));
            }
            Some("done") => {
                segment.ended = "done".into();
                let finish = message["finish_reason"].as_str().map(str::to_string).or(finish).unwrap_or_else(|| "none".into());
                return SocketEnd::Ended(End::Completed { finish });
            }
            Some("error") => {
                let code = message["error"]["code"].as_str().unwrap_or("unknown").to_string();
                segment.ended = format!("error:{code}");
                // An error before anything of the request came is a refusal (of the
                // request, or of the resume); after, it is how the request ended.
                if !chunks_or_status {
                    let text = message["error"]["message"].as_str().unwrap_or_default();
                    return SocketEnd::Refused(format!("{code}: {text}"));
                }
                return SocketEnd::Ended(End::Error { code });
            }
            _ => {}
        }
    }
}
