//! `WorkerActor`: one replica. It builds its engine on a dedicated thread (the cold
//! start), leases jobs from its deployment's queue while the engine has room, feeds them
//! to the engine, publishes every step's output to the jobs' output streams, renews its
//! leases, and retires when told to drain.
//!
//! Three loops, none blocking an arbiter:
//! - the **engine thread** owns the `Engine` and steps it; commands arrive on a
//!   crossbeam channel, outputs leave on a tokio channel;
//! - the **lease loop** leases as many jobs as the engine has free slots;
//! - the **publisher** appends each job's events to its output stream in order and
//!   acknowledges a job after its terminal event. A write that is refused (cancelled by
//!   the client, or fenced because the lease moved on) removes the sequence from the
//!   engine at its next step.
//!
//! Retiring is a protocol: `Drain` stops leasing; in-flight sequences finish within the
//! grace period; what is still running then is released back to the queue (its output
//! so far is kept, and the next replica resumes after it), never dropped.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use parking_lot::Mutex;
use serde::Serialize;
use swell_cluster::{AppendOutcome, LeaseRef, OutputEvent, PrefixBlocks, Queue, QueueError, ReplicaReport};
use swell_workers::{
    ColdStartReport, Engine, EngineFactory, EngineLoad, EngineWaker, ReplicaContext, Sequence, SequenceOutput,
};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

mod attempts;
mod engine_thread;
mod queue_loops;
mod reporting;

use attempts::Attempts;
use engine_thread::*;
use queue_loops::*;
use reporting::*;
use crate::backoff::Backoff;
use crate::metrics as m;

/// Timings of a replica's queue protocol.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// A lease lasts this long unless renewed (renewed every third of it).
    pub lease_ttl: Duration,
    /// How long one lease call waits for work before looking around again.
    pub lease_block: Duration,
    /// How long a draining replica lets in-flight sequences finish.
    pub drain_grace: Duration,
    /// The node this replica runs on, when several nodes share a queue: replica ids
    /// (the queue's consumer names) become `<node>/<deployment>-<n>`, unique in the
    /// cluster.
    pub node_id: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            lease_block: Duration::from_millis(500),
            drain_grace: Duration::from_secs(300),
            node_id: None,
        }
    }
}

/// A replica's state, as its supervisor counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    Starting,
    Ready,
    Draining,
}

impl ReplicaState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Starting => "starting",
            ReplicaState::Ready => "ready",
            ReplicaState::Draining => "draining",
        }
    }
}

/// Why a replica ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ExitCause {
    /// It drained as asked.
    Drained,
    /// Its engine could not be built.
    LoadFailed(String),
    /// Its engine failed or panicked while serving.
    EngineFailed(String),
}

impl ExitCause {
    /// What went wrong, in words (`None` for a drained replica).
    pub fn message(&self) -> Option<&str> {
        match self {
            ExitCause::Drained => None,
            ExitCause::LoadFailed(message) | ExitCause::EngineFailed(message) => Some(message),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            ExitCause::Drained => "drained",
            ExitCause::LoadFailed(_) => "load_failed",
            ExitCause::EngineFailed(_) => "engine_failed",
        }
    }
}

/// What a worker actor tells its supervisor.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum ReplicaLifecycle {
    Ready { ordinal: u64, cold_start: ColdStartReport, elapsed: Duration },
    Exited { ordinal: u64, cause: ExitCause },
}

/// Live counters of a replica, shared (read-only) with its supervisor.
#[derive(Default)]
pub struct ReplicaGauges {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub free_slots: AtomicU64,
    pub kv_tokens_used: AtomicU64,
    /// Engine steps taken: the replica's progress counter.
    pub steps: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Jobs leased and not yet finished.
    pub active_leases: AtomicU64,
    /// Jobs leased but not yet taken by the engine thread.
    in_transit: AtomicU64,
    /// Prompt tokens the engine has yet to prefill.
    pub pending_prefill_tokens: AtomicU64,
}

impl ReplicaGauges {
    fn set_load(&self, load: EngineLoad) {
        self.running.store(load.running as u64, Ordering::Relaxed);
        self.waiting.store(load.waiting as u64, Ordering::Relaxed);
        self.free_slots.store(load.free_slots as u64, Ordering::Relaxed);
        self.kv_tokens_used.store(load.kv_tokens_used, Ordering::Relaxed);
        self.pending_prefill_tokens.store(load.pending_prefill_tokens, Ordering::Relaxed);
    }

    /// Sequences on this replica: running, waiting in the engine, or on their way.
    pub fn load(&self) -> u64 {
        self.active_leases.load(Ordering::Relaxed)
    }
}

struct Shared {
    replica_id: String,
    deployment: String,
    gauges: Arc<ReplicaGauges>,
    draining: AtomicBool,
    /// The jobs held, an attempt (lease) each, with their last stored event.
    attempts: Mutex<Attempts>,
    /// Signalled when the engine may have room again.
    room: Notify,
    /// The engine's prefix cache as last read by the engine thread (`None`: the engine
    /// keeps none, or it was not read yet).
    prefix: Mutex<Option<Arc<PrefixBlocks>>>,
    /// Signalled when the replica's report should go out at once (it started draining).
    report_now: Notify,
}

enum EngineCommand {
    Add(Sequence),
    /// Remove the sequence of this engine id ([`Attempts::engine_id`]).
    Cancel(String),
    Shutdown,
}

enum EngineEvent {
    Ready(ColdStartReport),
    Failed { during_load: bool, message: String },
}

/// A snapshot of one replica.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaSnapshot {
    pub replica: String,
    pub state: ReplicaState,
    pub active_sequences: u64,
    pub running: u64,
    pub waiting: u64,
    pub kv_tokens_used: u64,
    pub steps: u64,
    pub generated_tokens: u64,
}

pub struct WorkerActor {
    ordinal: u64,
    state: ReplicaState,
    queue: Arc<dyn Queue>,
    factory: Arc<dyn EngineFactory>,
    supervisor: Recipient<ReplicaLifecycle>,
    shared: Arc<Shared>,
    commands: Option<Commands>,
    config: WorkerConfig,
    created_at: Instant,
    exited: bool,
    /// The publisher's input, handed to the lease loop once the engine is ready.
    pending_outputs: Option<mpsc::UnboundedSender<Vec<SequenceOutput>>>,
}

impl WorkerActor {
    pub fn new(
        deployment: &str,
        ordinal: u64,
        queue: Arc<dyn Queue>,
        factory: Arc<dyn EngineFactory>,
        supervisor: Recipient<ReplicaLifecycle>,
        config: WorkerConfig,
    ) -> Self {
        let shared = Arc::new(Shared {
            replica_id: match &config.node_id {
                Some(node) => format!("{node}/{deployment}-{ordinal}"),
                None => format!("{deployment}-{ordinal}"),
            },
            deployment: deployment.to_string(),
            gauges: Arc::new(ReplicaGauges::default()),
            draining: AtomicBool::new(false),
            attempts: Mutex::new(Attempts::default()),
            room: Notify::new(),
            prefix: Mutex::new(None),
            report_now: Notify::new(),
        });
        Self {
            ordinal,
            state: ReplicaState::Starting,
            queue,
            factory,
            supervisor,
            shared,
            commands: None,
            config,
            created_at: Instant::now(),
            exited: false,
            pending_outputs: None,
        }
    }

    pub fn replica_id(&self) -> &str {
        &self.shared.replica_id
    }

    pub fn gauges(&self) -> Arc<ReplicaGauges> {
        self.shared.gauges.clone()
    }

    fn exit(&mut self, cause: ExitCause, ctx: &mut Context<Self>) {
        if !self.exited {
            self.exited = true;
            self.supervisor.do_send(ReplicaLifecycle::Exited { ordinal: self.ordinal, cause });
            // Its report goes at once, so no gateway routes to it any more.
            self.shared.draining.store(true, Ordering::Relaxed);
            tokio::spawn(forget_report(self.queue.clone(), self.shared.clone()));
        }
        if let Some(commands) = self.commands.take() {
            let _ = commands.send(EngineCommand::Shutdown);
        }
        ctx.stop();
    }

    /// Hand every job still held back to the queue, so another replica resumes it, then
    /// exit. The exit waits for the releases: an actor that stops first would drop them,
    /// and the jobs would wait for their leases to expire.
    fn release_all_then_exit(&mut self, cause: ExitCause, ctx: &mut Context<Self>) {
        let leases: Vec<LeaseRef> = self.shared.attempts.lock().take_all();
        self.shared.gauges.active_leases.store(0, Ordering::Relaxed);
        if let Some(commands) = &self.commands {
            for lease in &leases {
                let _ = commands.send(EngineCommand::Cancel(Attempts::engine_id(lease)));
            }
        }
        let queue = self.queue.clone();
        ctx.wait(
            async move {
                for lease in leases {
                    if let Err(error) = queue.release(&lease).await {
                        tracing::warn!(job = %lease.job_id, %error, "could not release a job; it will be redelivered when its lease expires");
                    }
                }
            }
            .into_actor(self)
            .map(move |_, worker, ctx| worker.exit(cause, ctx)),
        );
    }

    fn finish_if_drained(&mut self, ctx: &mut Context<Self>) {
        if self.state == ReplicaState::Draining && self.shared.attempts.lock().is_empty() {
            self.exit(ExitCause::Drained, ctx);
        }
    }

    fn start_engine_thread(
        &mut self,
        outputs: mpsc::UnboundedSender<Vec<SequenceOutput>>,
        lifecycle: mpsc::UnboundedSender<EngineEvent>,
    ) {
        let (commands, command_rx) = Commands::new();
        let senders = commands.clone();
        self.commands = Some(commands);
        let factory = self.factory.clone();
        let shared = self.shared.clone();
        let context = ReplicaContext { replica_id: shared.replica_id.clone(), devices: Vec::new() };
        let report = lifecycle.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("engine-{}", shared.replica_id))
            .spawn(move || run_engine_thread(factory, context, command_rx, senders, outputs, lifecycle, shared));
        if let Err(error) = spawned {
            // The system would not give a thread (its limit is reached): the replica
            // fails to start like any failed load, and the supervisor backs off.
            let message = format!("could not start the engine thread: {error}");
            let _ = report.send(EngineEvent::Failed { during_load: true, message });
        }
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (output_tx, output_rx) = mpsc::unbounded_channel();
        let (lifecycle_tx, lifecycle_rx) = mpsc::unbounded_channel();
        self.start_engine_thread(output_tx.clone(), lifecycle_tx);
        ctx.add_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(lifecycle_rx));
        let commands = self.commands.clone().expect("set by start_engine_thread");
        ctx.spawn(
            publish_loop(self.queue.clone(), self.shared.clone(), commands, output_rx, ctx.address())
                .into_actor(self),
        );
        // The lease loop starts when the engine is ready; keep a sender for it.
        self.pending_outputs = Some(output_tx);
    }
}

impl StreamHandler<EngineEvent> for WorkerActor {
    fn handle(&mut self, event: EngineEvent, ctx: &mut Context<Self>) {
        match event {
            EngineEvent::Ready(cold_start) => {
                let elapsed = self.created_at.elapsed();
                tracing::info!(replica = %self.shared.replica_id, ?elapsed, "replica ready");
                self.supervisor.do_send(ReplicaLifecycle::Ready {
                    ordinal: self.ordinal,
                    cold_start,
                    elapsed,
                });
                if self.state == ReplicaState::Draining {
                    // Told to drain while still starting: nothing to finish.
                    self.finish_if_drained(ctx);
                    return;
                }
                self.state = ReplicaState::Ready;
                let (Some(commands), Some(outputs)) = (self.commands.clone(), self.pending_outputs.take())
                else {
                    return;
                };
                ctx.spawn(
                    lease_loop(self.queue.clone(), self.shared.clone(), commands.clone(), outputs, self.config.clone())
                        .into_actor(self),
                );
                ctx.spawn(
                    renew_loop(self.queue.clone(), self.shared.clone(), commands, self.config.lease_ttl, ctx.address())
                        .into_actor(self),
                );
                ctx.spawn(report_loop(self.queue.clone(), self.shared.clone()).into_actor(self));
            }
            EngineEvent::Failed { during_load, message } => {
                tracing::error!(replica = %self.shared.replica_id, %message, "engine failed");
                let cause = if during_load {
                    ExitCause::LoadFailed(message)
                } else {
                    ExitCause::EngineFailed(message)
                };
                self.release_all_then_exit(cause, ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The engine thread is gone. A failure was reported above; one that ended
        // without a word while the replica was starting still fails the start.
        if self.state == ReplicaState::Starting && !self.exited {
            let cause = ExitCause::LoadFailed("the engine thread ended before the engine was ready".into());
            self.release_all_then_exit(cause, ctx);
        }
    }
}

/// A sequence left the replica (finished, cancelled or fenced).
#[derive(Message)]
#[rtype(result = "()")]
struct SequenceEnded;

impl Handler<SequenceEnded> for WorkerActor {
    type Result = ();

    fn handle(&mut self, _: SequenceEnded, ctx: &mut Context<Self>) {
        self.finish_if_drained(ctx);
    }
}

/// Stop taking work; let in-flight sequences finish within the grace period; then
/// release what is left to the queue and exit.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

impl Handler<Drain> for WorkerActor {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) {
        if self.state == ReplicaState::Draining {
            return;
        }
        let was_starting = self.state == ReplicaState::Starting;
        self.state = ReplicaState::Draining;
        self.shared.draining.store(true, Ordering::Relaxed);
        self.shared.room.notify_waiters();
        self.shared.report_now.notify_one();
        if was_starting {
            // Abandon the cold start: the engine thread exits when its channel closes.
            self.exit(ExitCause::Drained, ctx);
            return;
        }
        self.finish_if_drained(ctx);
        ctx.run_later(self.config.drain_grace, |worker, ctx| worker.hand_back(ctx));
    }
}

impl WorkerActor {
    /// Release what is still held to the queue (another replica resumes it after the
    /// tokens already delivered) and exit as drained.
    fn hand_back(&mut self, ctx: &mut Context<Self>) {
        if self.exited {
            return;
        }
        let left = self.shared.attempts.lock().len();
        tracing::info!(replica = %self.shared.replica_id, left, "handing the rest back to the queue");
        self.shared.draining.store(true, Ordering::Relaxed);
        self.shared.room.notify_waiters();
        self.release_all_then_exit(ExitCause::Drained, ctx);
    }
}

/// Stop now: release every held job to the queue (it resumes on another replica, after
/// the tokens already delivered) and exit. What a node that shuts down does with the
/// streams that did not finish within its shutdown timeout.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HandBack;

impl Handler<HandBack> for WorkerActor {
    type Result = ();

    fn handle(&mut self, _: HandBack, ctx: &mut Context<Self>) {
        self.state = ReplicaState::Draining;
        self.hand_back(ctx);
    }
}

/// A snapshot of the replica.
#[derive(Message)]
#[rtype(result = "ReplicaSnapshot")]
pub struct ObserveReplica;

impl Handler<ObserveReplica> for WorkerActor {
    type Result = MessageResult<ObserveReplica>;

    fn handle(&mut self, _: ObserveReplica, _: &mut Context<Self>) -> Self::Result {
        let gauges = &self.shared.gauges;
        MessageResult(ReplicaSnapshot {
            replica: self.shared.replica_id.clone(),
            state: self.state,
            active_sequences: gauges.load(),
            running: gauges.running.load(Ordering::Relaxed),
            waiting: gauges.waiting.load(Ordering::Relaxed),
            kv_tokens_used: gauges.kv_tokens_used.load(Ordering::Relaxed),
            steps: gauges.steps.load(Ordering::Relaxed),
            generated_tokens: gauges.generated_tokens.load(Ordering::Relaxed),
        })
    }
}

/// The replica made no progress: hand its jobs back and exit as failed. (Its engine
/// thread, if truly hung, is left behind; the work moves on.)
#[derive(Message)]
#[rtype(result = "()")]
pub struct Abandon;

impl Handler<Abandon> for WorkerActor {
    type Result = ();

    fn handle(&mut self, _: Abandon, ctx: &mut Context<Self>) {
        self.shared.draining.store(true, Ordering::Relaxed);
        self.release_all_then_exit(ExitCause::EngineFailed("no progress within the stall timeout".into()), ctx);
    }
}
