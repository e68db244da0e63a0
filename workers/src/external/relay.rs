//! One sequence's stream from the engine, read on its own thread: each `data:` event is
//! parsed ([`super::api`]) and sent to the replica's engine thread as a [`RelayEvent`].
//! Setting the sequence's cancel flag ends the read at the next event and closes the
//! connection, which stops the engine's generation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use swell_protocol::JobId;

use super::api::{Chunk, ChunkParser, StreamRequest};
use super::client::{CallError, EngineClient};
use super::presets::Api;

/// What a relay thread reports.
#[derive(Debug)]
pub enum RelayEvent {
    Chunk { id: JobId, attempt: u64, chunk: Chunk },
    /// The stream failed; nothing more comes for this attempt.
    Failed { id: JobId, attempt: u64, error: CallError },
    /// Not from a stream: the worker queued a command (see `Engine::waker`).
    Wake,
}

/// One stream to relay.
pub struct Relay {
    pub client: EngineClient,
    pub api: Api,
    pub request: StreamRequest,
    pub id: JobId,
    /// Tells this attempt's events from those of an earlier attempt of the same job.
    pub attempt: u64,
    pub cancel: Arc<AtomicBool>,
}

impl Relay {
    /// Read the stream on a new thread.
    pub fn spawn(self, events: Sender<RelayEvent>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name(format!("relay-{}", self.id))
            .spawn(move || self.run(&events))
            .map(|_| ())
    }

    fn run(self, events: &Sender<RelayEvent>) {
        let mut parser = ChunkParser::new(self.api);
        let mut finished = false;
        let mut parse_error = None;
        let result = self.client.stream(self.request.path, &self.request.body, |data| {
            if self.cancel.load(Ordering::Relaxed) {
                return false;
            }
            match parser.parse(data) {
                Ok(Some(chunk)) => {
                    finished = chunk.finish.is_some();
                    let sent = events.send(RelayEvent::Chunk { id: self.id.clone(), attempt: self.attempt, chunk });
                    sent.is_ok() && !finished
                }
                Ok(None) => true,
                Err(message) => {
                    parse_error = Some(CallError::Protocol(message));
                    false
                }
            }
        });
        if finished || self.cancel.load(Ordering::Relaxed) {
            return;
        }
        let error = match (parse_error, result) {
            (Some(error), _) | (None, Err(error)) => error,
            (None, Ok(())) => CallError::Transport("the engine closed the stream before the sequence ended".to_string()),
        };
        let _ = events.send(RelayEvent::Failed { id: self.id, attempt: self.attempt, error });
    }
}
