//! [`ExternalEngine`]: one replica whose model runs in another process (or at a fixed
//! endpoint), driven through the same [`Engine`] contract as Swell's own engine.
//!
//! `add` starts a stream for the sequence (on a relay thread); `step` waits for the
//! streams' events (or for the worker's wake-up when it queued a command, see
//! [`Engine::waker`]) and turns the token ids in them into output as the built-in
//! engine does: text through the deployment's tokenizer, stop strings through
//! the [`StopWatcher`], `max_tokens` and usage counted here. A sequence resumed after a
//! hand-back is sent as prompt + the tokens already delivered, and asked only for what
//! remains of `max_tokens`.
//!
//! Failures: an engine that answers a request with an error fails that sequence with
//! the engine's message; an engine that stops answering (its process exited, a stream
//! broke, or it sent nothing for `stream_idle_timeout`) fails the replica: `step`
//! returns an error and every sequence still held goes back to the queue, to resume on
//! another replica after the tokens it already delivered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swell_protocol::{FinishReason, JobId, OutputEvent, Usage};

use super::api::{self, Chunk, EngineFinish, Generate};
use super::client::{CallError, EngineClient};
use super::presets::Api;
use super::process::EngineProcess;
use super::relay::{Relay, RelayEvent};
use super::scrape::Scraped;
use super::detok::TextStream;
use crate::engine::{Engine, EngineLoad, EngineWaker, Sequence, SequenceOutput, StepReport};
use crate::error::EngineError;
use crate::stop::{Release, StopWatcher};
use crate::tokenizer::Tokenizer;

/// The longest a step waits for an event before it looks at the process and the
/// streams' idle time.
pub const WAIT: Duration = Duration::from_millis(100);

/// Consecutive 5xx answers after which the engine is taken for broken.
const MAX_SERVER_ERRORS: u32 = 3;

/// How one replica reaches its engine.
pub struct Connection {
    pub client: EngineClient,
    pub api: Api,
    pub model: String,
    /// The engine process, when Swell started it (stopped when the engine is dropped).
    pub process: Option<EngineProcess>,
    pub stop_grace: Duration,
    pub scraped: Arc<Scraped>,
    /// What this replica holds until it ends (its GPUs, its endpoint).
    pub lease: Box<dyn Send>,
}

/// Limits of one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub slots: usize,
    pub context_length: usize,
    pub stream_idle_timeout: Duration,
}

struct Relayed {
    attempt: u64,
    prompt_len: usize,
    generated: usize,
    max_generated: usize,
    logprobs: bool,
    text: TextStream,
    stop: StopWatcher,
    cancel: Arc<AtomicBool>,
    last_event: Instant,
}

impl Relayed {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: u32::try_from(self.prompt_len).unwrap_or(u32::MAX),
            completion_tokens: u32::try_from(self.generated).unwrap_or(u32::MAX),
        }
    }
}

pub struct ExternalEngine {
    conn: Connection,
    tokenizer: Arc<dyn Tokenizer>,
    limits: Limits,
    replica: String,
    sequences: HashMap<JobId, Relayed>,
    next_attempt: u64,
    events_tx: Sender<RelayEvent>,
    events: Receiver<RelayEvent>,
    ready: Vec<SequenceOutput>,
    server_errors: u32,
    /// When the process and the streams' idle times were last looked at.
    last_check: Instant,
}

fn failed(id: &JobId, code: &str, message: String) -> SequenceOutput {
    SequenceOutput { id: id.clone(), event: OutputEvent::Failed { code: code.to_string(), message } }
}

impl ExternalEngine {
    pub fn new(conn: Connection, tokenizer: Arc<dyn Tokenizer>, limits: Limits, replica: String) -> Self {
        let (events_tx, events) = std::sync::mpsc::channel();
        Self {
            conn,
            tokenizer,
            limits,
            replica,
            sequences: HashMap::new(),
            next_attempt: 0,
            events_tx,
            events,
            ready: Vec::new(),
            server_errors: 0,
            last_check: Instant::now(),
        }
    }

    fn remove(&mut self, id: &str) -> Option<Relayed> {
        let s = self.sequences.remove(id)?;
        s.cancel.store(true, Ordering::Relaxed);
        Some(s)
    }

    /// The engine process has exited: the message says how, with its last lines.
    fn process_exit(&mut self) -> Option<String> {
        let process = self.conn.process.as_mut()?;
        let status = process.exit_status()?;
        Some(format!("the engine process exited ({status}); its last lines:\n{}", process.last_lines().join("\n")))
    }

    /// A broken stream: the replica fails (its sequences resume elsewhere).
    fn broken(&mut self, why: &CallError) -> EngineError {
        // A stream breaks a moment before the process is reaped: give it that moment, so
        // the message says the process died rather than only that a stream broke.
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline && self.conn.process.is_some() {
            if let Some(exit) = self.process_exit() {
                return EngineError::Step(exit);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        EngineError::Step(format!("engine at {}: {why}", self.conn.client.base()))
    }

    fn emit(&self, out: &mut Vec<SequenceOutput>, id: &JobId, s: &Relayed, release: Release) {
        if release.token_ids.is_empty() && release.text.is_empty() {
            return;
        }
        let logprobs = s.logprobs.then_some(release.logprobs);
        out.push(SequenceOutput {
            id: id.clone(),
            event: OutputEvent::Tokens { text: release.text, token_ids: release.token_ids, logprobs },
        });
    }

    /// Apply one chunk; `true` when the sequence ended.
    fn apply(&self, out: &mut Vec<SequenceOutput>, id: &JobId, s: &mut Relayed, chunk: Chunk) -> bool {
        s.last_event = Instant::now();
        let mut logprobs = chunk.logprobs.into_iter();
        for token in chunk.token_ids {
            if s.generated >= s.max_generated || s.prompt_len + s.generated >= self.limits.context_length {
                break;
            }
            s.generated += 1;
            let piece = s.text.step(&*self.tokenizer, token);
            let logprob = logprobs.next().map(|mut lp| {
                if lp.token.is_empty() {
                    lp.token = self.tokenizer.token_text(token);
                }
                lp.token_id = token;
                lp
            });
            let release = s.stop.push(token, &piece, logprob);
            let stopped = release.stopped;
            self.emit(out, id, s, release);
            if stopped {
                out.push(SequenceOutput { id: id.clone(), event: OutputEvent::Finished { reason: FinishReason::Stop, usage: s.usage() } });
                return true;
            }
        }
        let at_limit = s.generated >= s.max_generated || s.prompt_len + s.generated >= self.limits.context_length;
        let reason = match chunk.finish {
            Some(EngineFinish::Eos) if !at_limit => Some(FinishReason::Stop),
            Some(EngineFinish::Other(_)) if !at_limit => Some(FinishReason::Stop),
            Some(_) => Some(FinishReason::Length),
            None if at_limit => Some(FinishReason::Length),
            None => None,
        };
        let Some(reason) = reason else { return false };
        let mut release = s.stop.flush();
        release.text.push_str(&s.text.finish(&*self.tokenizer));
        self.emit(out, id, s, release);
        out.push(SequenceOutput { id: id.clone(), event: OutputEvent::Finished { reason, usage: s.usage() } });
        true
    }

    fn on_event(&mut self, out: &mut Vec<SequenceOutput>, event: RelayEvent) -> Result<usize, EngineError> {
        match event {
            RelayEvent::Chunk { id, attempt, chunk } => {
                let Some(mut s) = self.sequences.remove(&id).filter(|s| s.attempt == attempt) else {
                    return Ok(0);
                };
                self.server_errors = 0;
                let tokens = chunk.token_ids.len();
                if self.apply(out, &id, &mut s, chunk) {
                    s.cancel.store(true, Ordering::Relaxed);
                } else {
                    self.sequences.insert(id, s);
                }
                Ok(tokens)
            }
            RelayEvent::Wake => Ok(0),
            RelayEvent::Failed { id, attempt, error } => {
                if self.sequences.get(&id).is_none_or(|s| s.attempt != attempt) {
                    return Ok(0);
                }
                match error {
                    CallError::Status { status, body } if status < 500 => {
                        self.remove(&id);
                        out.push(failed(&id, "invalid_request", format!("the engine refused the request ({status}): {body}")));
                        Ok(0)
                    }
                    CallError::Status { status, body } => {
                        self.server_errors += 1;
                        if self.server_errors >= MAX_SERVER_ERRORS {
                            return Err(EngineError::Step(format!(
                                "the engine answered {MAX_SERVER_ERRORS} requests in a row with server errors, the last {status}: {body}"
                            )));
                        }
                        self.remove(&id);
                        out.push(failed(&id, "engine_error", format!("the engine failed the request ({status}): {body}")));
                        Ok(0)
                    }
                    CallError::Protocol(message) => {
                        self.remove(&id);
                        out.push(failed(&id, "engine_error", message));
                        Ok(0)
                    }
                    transport @ CallError::Transport(_) => Err(self.broken(&transport)),
                }
            }
        }
    }

    fn start(&mut self, seq: Sequence) -> Result<(), SequenceOutput> {
        let context_len = seq.prompt_tokens.len() + seq.resume_tokens.len();
        if seq.prompt_tokens.is_empty() {
            return Err(failed(&seq.id, "invalid_prompt", "the prompt has no tokens".to_string()));
        }
        if context_len >= self.limits.context_length {
            return Err(failed(
                &seq.id,
                "invalid_prompt",
                format!("the prompt has {context_len} tokens; this replica's context holds {}", self.limits.context_length),
            ));
        }
        if seq.params.constraint.is_some() && !seq.resume_tokens.is_empty() {
            // The engine would start the grammar over after the delivered tokens.
            return Err(failed(
                &seq.id,
                "constraint_not_resumable",
                "a constrained output cannot continue on another replica of an external engine: the engine's grammar would start over".to_string(),
            ));
        }
        let params = seq.params.clone();
        let mut text = TextStream::default();
        let stop = StopWatcher::new(&params.stop);
        let mut resumed_text = String::new();
        for &t in &seq.resume_tokens {
            resumed_text.push_str(&text.step(&*self.tokenizer, t));
        }
        let mut s = Relayed {
            attempt: self.next_attempt,
            prompt_len: seq.prompt_tokens.len(),
            generated: seq.resume_tokens.len(),
            max_generated: params.max_tokens as usize,
            logprobs: params.logprobs.is_some(),
            text,
            stop,
            cancel: Arc::new(AtomicBool::new(false)),
            last_event: Instant::now(),
        };
        self.next_attempt += 1;
        // A resumed attempt that had already ended: decided without the engine.
        let stopped = s.stop.find_stop(&resumed_text).is_some();
        let room = s.max_generated.saturating_sub(s.generated).min(self.limits.context_length - context_len);
        if stopped || room == 0 {
            let reason = if stopped { FinishReason::Stop } else { FinishReason::Length };
            s.text.finish(&*self.tokenizer);
            return Err(SequenceOutput { id: seq.id.clone(), event: OutputEvent::Finished { reason, usage: s.usage() } });
        }
        let mut context = seq.prompt_tokens;
        context.extend_from_slice(&seq.resume_tokens);
        let context_text = (!self.conn.api.takes_token_ids()).then(|| self.tokenizer.decode_with_special(&context));
        let request = api::request(
            self.conn.api,
            &Generate {
                context: &context,
                context_text: context_text.as_deref(),
                max_new_tokens: u32::try_from(room).unwrap_or(u32::MAX),
                params: &params,
                model: &self.conn.model,
            },
        );
        let relay = Relay {
            client: self.conn.client.clone(),
            api: self.conn.api,
            request,
            id: seq.id.clone(),
            attempt: s.attempt,
            cancel: s.cancel.clone(),
        };
        if let Err(error) = relay.spawn(self.events_tx.clone()) {
            return Err(failed(&seq.id, "engine_error", format!("could not start a relay thread: {error}")));
        }
        self.sequences.insert(seq.id, s);
        Ok(())
    }
}

impl Engine for ExternalEngine {
    fn add(&mut self, seq: Sequence) {
        self.remove(&seq.id);
        if let Err(output) = self.start(seq) {
            self.ready.push(output);
        }
    }

    fn cancel(&mut self, id: &str) {
        self.remove(id);
    }

    fn step(&mut self, out: &mut Vec<SequenceOutput>) -> Result<StepReport, EngineError> {
        let started = Instant::now();
        out.append(&mut self.ready);
        if self.sequences.is_empty() {
            return Ok(StepReport::default());
        }
        let first = if out.is_empty() {
            match self.events.recv_timeout(WAIT) {
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => unreachable!("the engine holds a sender"),
            }
        } else {
            None
        };
        let mut arrived: Vec<RelayEvent> = first.into_iter().collect();
        arrived.extend(self.events.try_iter());
        let mut decoded = 0;
        for event in arrived {
            decoded += self.on_event(out, event)?;
        }
        if self.last_check.elapsed() >= WAIT {
            self.last_check = Instant::now();
            if let Some(exit) = self.process_exit() {
                return Err(EngineError::Step(exit));
            }
            let idle = self.limits.stream_idle_timeout;
            if let Some((id, _)) = self.sequences.iter().find(|(_, s)| s.last_event.elapsed() > idle) {
                return Err(EngineError::Step(format!(
                    "the engine sent nothing on the stream of {id} for {}",
                    humantime::format_duration(idle)
                )));
            }
        }
        // The engine's batches are its own: this step only relayed tokens, so it reports
        // no batch (and no step time to the engine-step metrics), only the tokens.
        Ok(StepReport {
            batch_size: 0,
            prefill_tokens: 0,
            decode_tokens: decoded,
            preempted: 0,
            elapsed: started.elapsed(),
        })
    }

    fn load(&self) -> EngineLoad {
        let running = self.sequences.len();
        let capacity = (self.limits.context_length * self.limits.slots) as u64;
        let counted: u64 = self.sequences.values().map(|s| (s.prompt_len + s.generated) as u64).sum();
        let reported = self.conn.scraped.kv_usage().map_or(0, |share| (share.clamp(0.0, 1.0) * capacity as f64) as u64);
        EngineLoad {
            running,
            waiting: self.conn.scraped.waiting().unwrap_or(0) as usize,
            kv_tokens_used: counted.max(reported).min(capacity),
            kv_tokens_capacity: capacity,
            free_slots: self.limits.slots.saturating_sub(running),
            // Sequences with no token yet are (about) still prefilling; the server does
            // not say how much of their prompt it found cached.
            pending_prefill_tokens: self.sequences.values().filter(|s| s.generated == 0).map(|s| s.prompt_len as u64).sum(),
        }
    }

    fn waker(&self) -> Option<EngineWaker> {
        let events = self.events_tx.clone();
        Some(Arc::new(move || {
            let _ = events.send(RelayEvent::Wake);
        }))
    }
}

impl Drop for ExternalEngine {
    fn drop(&mut self) {
        for s in self.sequences.values() {
            s.cancel.store(true, Ordering::Relaxed);
        }
        self.conn.scraped.stop();
        if let Some(process) = self.conn.process.take() {
            let pid = process.pid();
            let status = process.stop(self.conn.stop_grace);
            tracing::info!(replica = %self.replica, pid, ?status, "engine process stopped");
        }
    }
}
