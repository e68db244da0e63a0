//! The WebSocket client: requests multiplexed by id over a small pool of connections to
//! `GET {base}/v1/ws`.
//!
//! Each request sends `{"id", "type": "chat.completion" | "completion", "request": {...}}` on
//! a connection picked round robin, then receives that id's `status`, `chunk`, and finally
//! `done` or `error` messages. Every connection has a reader task that routes messages to the
//! waiting request by id, and a writer task that owns the sending half. A dead connection is
//! replaced on its next use.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    rc::Rc,
    time::{Duration, Instant},
};

use awc::{
    error::WsClientError,
    ws::{Frame, Message},
    Client,
};
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Mutex};

use crate::{
    record::{Failure, Recorder},
    sse::send_failure,
};

/// Largest incoming frame accepted.
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// A message routed to one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WsEvent {
    Status(String),
    Chunk(Value, Instant),
    Done(Value, Instant),
    Error(Value),
}

/// Parses a server message into its request id and event; `None` for anything else.
pub(crate) fn parse_message(text: &[u8], at: Instant) -> Option<(String, WsEvent)> {
    let mut message: Value = serde_json::from_slice(text).ok()?;
    let fields = message.as_object_mut()?;
    let id = match fields.get("id")? {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut take = |key: &str| fields.remove(key).unwrap_or(Value::Null);
    let event = match take("type").as_str()? {
        "status" => WsEvent::Status(take("status").as_str().unwrap_or("").to_string()),
        "chunk" => WsEvent::Chunk(take("chunk"), at),
        "done" => WsEvent::Done(take("usage"), at),
        "error" => WsEvent::Error(take("error")),
        _ => return None,
    };
    Some((id, event))
}

/// One WebSocket connection and the requests waiting on it.
#[derive(Debug)]
struct Connection {
    out: mpsc::UnboundedSender<Message>,
    pending: RefCell<HashMap<String, mpsc::UnboundedSender<WsEvent>>>,
    alive: Rc<Cell<bool>>,
}

impl Connection {
    fn route(&self, id: String, event: WsEvent) {
        let last = matches!(event, WsEvent::Done(..) | WsEvent::Error(_));
        let mut pending = self.pending.borrow_mut();
        if let Some(waiter) = pending.get(&id) {
            let _ = waiter.send(event);
        }
        if last {
            pending.remove(&id);
        }
    }

    fn close(&self) {
        self.alive.set(false);
        // Dropping the senders ends every waiting request.
        self.pending.borrow_mut().clear();
    }
}

/// Removes a request from its connection however it ends.
struct PendingGuard<'a> {
    conn: &'a Connection,
    id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.conn.pending.borrow_mut().remove(&self.id);
    }
}

/// Maps a failed WebSocket handshake to a failure.
fn handshake_failure(error: WsClientError) -> Failure {
    match error {
        WsClientError::InvalidResponseStatus(status) => Failure::new(
            format!("http_{}", status.as_u16()),
            format!("websocket upgrade refused with status {status}"),
        ),
        WsClientError::SendRequest(e) => send_failure(&e),
        other => Failure::new("send", format!("websocket handshake failed: {other}")),
    }
}

/// A fixed-size pool of WebSocket connections.
pub(crate) struct WsPool {
    client: Client,
    url: String,
    api_key: Option<String>,
    connect_timeout: Duration,
    slots: Vec<Mutex<Option<Rc<Connection>>>>,
    next: Cell<usize>,
    shutdown: watch::Sender<bool>,
}

impl WsPool {
    /// A pool of `size` connections to `{base_url}/v1/ws`, opened lazily.
    pub(crate) fn new(
        client: Client,
        base_url: &str,
        api_key: Option<String>,
        size: usize,
        connect_timeout: Duration,
    ) -> Self {
        WsPool {
            client,
            url: format!("{base_url}/v1/ws"),
            api_key,
            connect_timeout,
            slots: (0..size.max(1)).map(|_| Mutex::new(None)).collect(),
            next: Cell::new(0),
            shutdown: watch::channel(false).0,
        }
    }

    /// Opens every connection now, so that handshakes do not count in request latencies.
    /// Returns how many opened; failures are left for requests to retry and record.
    pub(crate) async fn prewarm(&self) -> usize {
        let mut opened = 0;
        for slot in &self.slots {
            let mut slot = slot.lock().await;
            if let Ok(conn) = self.connect().await {
                *slot = Some(conn);
                opened += 1;
            }
        }
        opened
    }

    /// Closes every connection (a close frame, then the reader tasks stop).
    pub(crate) fn close(&self) {
        for slot in &self.slots {
            if let Ok(slot) = slot.try_lock() {
                if let Some(conn) = slot.as_ref() {
                    let _ = conn.out.send(Message::Close(None));
                }
            }
        }
        self.shutdown.send_replace(true);
    }

    async fn connection(&self) -> Result<Rc<Connection>, Failure> {
        let index = self.next.get();
        self.next.set((index + 1) % self.slots.len());
        let mut slot = self.slots[index].lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| c.alive.get()) {
            return Ok(conn.clone());
        }
        let conn = self.connect().await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn connect(&self) -> Result<Rc<Connection>, Failure> {
        let mut request = self.client.ws(self.url.as_str()).max_frame_size(MAX_FRAME);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let (_response, framed) = tokio::time::timeout(self.connect_timeout, request.connect())
            .await
            .map_err(|_| Failure::new("connect", "the websocket handshake timed out"))?
            .map_err(handshake_failure)?;
        let (sink, stream) = framed.split();
        let (out, out_rx) = mpsc::unbounded_channel();
        let alive = Rc::new(Cell::new(true));
        let conn = Rc::new(Connection {
            out,
            pending: RefCell::new(HashMap::new()),
            alive: alive.clone(),
        });
        actix_rt::spawn(write_loop(sink, out_rx, alive));
        actix_rt::spawn(read_loop(conn.clone(), stream, self.shutdown.subscribe()));
        Ok(conn)
    }

    /// Sends one request (`kind` is the message type) and reads its messages into `recorder`.
    pub(crate) async fn send_request(
        &self,
        kind: &str,
        id: u64,
        request: Value,
        recorder: &mut Recorder,
    ) -> Result<(), Failure> {
        let conn = self.connection().await?;
        let id = format!("r{id}");
        let (waiter, mut events) = mpsc::unbounded_channel();
        conn.pending.borrow_mut().insert(id.clone(), waiter);
        let _guard = PendingGuard {
            conn: &conn,
            id: id.clone(),
        };
        if !conn.alive.get() {
            return Err(Failure::incomplete("the websocket connection closed"));
        }
        let message = json!({ "id": id, "type": kind, "request": request }).to_string();
        conn.out
            .send(Message::Text(message.into()))
            .map_err(|_| Failure::incomplete("the websocket connection closed"))?;
        while let Some(event) = events.recv().await {
            match event {
                WsEvent::Status(status) => recorder.on_status(&status),
                WsEvent::Chunk(chunk, at) => recorder.on_chunk(&chunk, at)?,
                WsEvent::Done(usage, at) => {
                    recorder.on_usage(&usage);
                    recorder.on_done(at);
                    return Ok(());
                }
                WsEvent::Error(error) => {
                    return Err(Failure::from_error_object("ws_error", &error))
                }
            }
        }
        Err(Failure::incomplete(
            "the websocket connection closed before done",
        ))
    }
}

async fn write_loop<S>(
    mut sink: S,
    mut messages: mpsc::UnboundedReceiver<Message>,
    alive: Rc<Cell<bool>>,
) where
    S: Sink<Message> + Unpin,
{
    while let Some(message) = messages.recv().await {
        let closing = matches!(message, Message::Close(_));
        if sink.send(message).await.is_err() {
            alive.set(false);
            break;
        }
        if closing {
            break;
        }
    }
    let _ = sink.close().await;
}

async fn read_loop<S, E>(conn: Rc<Connection>, mut frames: S, mut shutdown: watch::Receiver<bool>)
where
    S: Stream<Item = Result<Frame, E>> + Unpin,
{
    loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        let Some(Ok(frame)) = frame else { break };
        let at = Instant::now();
        match frame {
            Frame::Text(text) => {
                if let Some((id, event)) = parse_message(&text, at) {
                    conn.route(id, event);
                }
            }
            Frame::Ping(payload) => {
                let _ = conn.out.send(Message::Pong(payload));
            }
            Frame::Close(_) => break,
            // Binary frames mean nothing in this protocol; fragmented messages are not used.
            Frame::Binary(_) | Frame::Pong(_) | Frame::Continuation(_) => {}
        }
        if !conn.alive.get() {
            break;
        }
    }
    conn.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_messages() {
        let at = Instant::now();
        let status = br#"{"id":"r1","type":"status","status":"queued","position":3}"#;
        assert_eq!(
            parse_message(status, at),
            Some(("r1".into(), WsEvent::Status("queued".into())))
        );
        let chunk = br#"{"id":"r2","type":"chunk","chunk":{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}}"#;
        let (id, event) = parse_message(chunk, at).unwrap();
        assert_eq!(id, "r2");
        let WsEvent::Chunk(chunk, _) = event else {
            panic!("{event:?}")
        };
        assert!(crate::record::chunk_has_content(&chunk));
        let done = br#"{"id":"r3","type":"done","usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#;
        assert!(
            matches!(parse_message(done, at), Some((_, WsEvent::Done(u, _))) if u["completion_tokens"] == 2)
        );
        let error =
            br#"{"id":"r4","type":"error","error":{"message":"nope","code":"model_not_found"}}"#;
        assert!(
            matches!(parse_message(error, at), Some((_, WsEvent::Error(e))) if e["code"] == "model_not_found")
        );
        assert_eq!(parse_message(br#"{"id":"r5","type":"mystery"}"#, at), None);
        assert_eq!(parse_message(br#"{"type":"status"}"#, at), None);
        assert_eq!(parse_message(b"not json", at), None);
    }

    #[test]
    fn routing_delivers_by_id_and_forgets_finished_requests() {
        let (out, _out_rx) = mpsc::unbounded_channel();
        let conn = Connection {
            out,
            pending: RefCell::new(HashMap::new()),
            alive: Rc::new(Cell::new(true)),
        };
        let (a_tx, mut a_rx) = mpsc::unbounded_channel();
        let (b_tx, mut b_rx) = mpsc::unbounded_channel();
        conn.pending.borrow_mut().insert("a".into(), a_tx);
        conn.pending.borrow_mut().insert("b".into(), b_tx);
        let at = Instant::now();
        conn.route("b".into(), WsEvent::Status("running".into()));
        conn.route("a".into(), WsEvent::Done(Value::Null, at));
        conn.route("zzz".into(), WsEvent::Status("queued".into()));
        assert_eq!(a_rx.try_recv().unwrap(), WsEvent::Done(Value::Null, at));
        assert!(a_rx.try_recv().is_err(), "a is finished and forgotten");
        assert_eq!(b_rx.try_recv().unwrap(), WsEvent::Status("running".into()));
        assert_eq!(conn.pending.borrow().len(), 1);
        conn.close();
        assert!(b_rx.try_recv().is_err());
        assert!(!conn.alive.get());
    }
}
