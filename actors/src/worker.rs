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

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use parking_lot::Mutex;
use serde::Serialize;
use swell_cluster::{AppendOutcome, JobId, LeaseRef, OutputEvent, Queue, QueueError};
use swell_workers::{
    ColdStartReport, Engine, EngineFactory, EngineLoad, ReplicaContext, Sequence, SequenceOutput,
};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

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

/// What a worker tells its supervisor.
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
}

impl ReplicaGauges {
    fn set_load(&self, load: EngineLoad) {
        self.running.store(load.running as u64, Ordering::Relaxed);
        self.waiting.store(load.waiting as u64, Ordering::Relaxed);
        self.free_slots.store(load.free_slots as u64, Ordering::Relaxed);
        self.kv_tokens_used.store(load.kv_tokens_used, Ordering::Relaxed);
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
    leases: Mutex<HashMap<JobId, LeaseRef>>,
    /// The sequence number of the last event stored for each held job (from the lease's
    /// `resume_after_seq`, then each accepted append): how a retried append learns that
    /// its first try was stored after all (the reply was lost, e.g. Redis died right
    /// after writing), so it is not stored twice.
    last_seq: Mutex<HashMap<JobId, u64>>,
    /// Signalled when the engine may have room again.
    room: Notify,
}

enum EngineCommand {
    Add(Sequence),
    Cancel(JobId),
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
    commands: Option<crossbeam_channel::Sender<EngineCommand>>,
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
            leases: Mutex::new(HashMap::new()),
            last_seq: Mutex::new(HashMap::new()),
            room: Notify::new(),
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
        let leases: Vec<LeaseRef> = self.shared.leases.lock().drain().map(|(_, l)| l).collect();
        self.shared.last_seq.lock().clear();
        self.shared.gauges.active_leases.store(0, Ordering::Relaxed);
        if let Some(commands) = &self.commands {
            for lease in &leases {
                let _ = commands.send(EngineCommand::Cancel(lease.job_id.clone()));
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
        if self.state == ReplicaState::Draining && self.shared.leases.lock().is_empty() {
            self.exit(ExitCause::Drained, ctx);
        }
    }

    fn start_engine_thread(
        &mut self,
        outputs: mpsc::UnboundedSender<Vec<SequenceOutput>>,
        lifecycle: mpsc::UnboundedSender<EngineEvent>,
    ) {
        let (commands, command_rx) = crossbeam_channel::unbounded();
        self.commands = Some(commands);
        let factory = self.factory.clone();
        let shared = self.shared.clone();
        let context = ReplicaContext { replica_id: shared.replica_id.clone(), devices: Vec::new() };
        let report = lifecycle.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("engine-{}", shared.replica_id))
            .spawn(move || run_engine_thread(factory, context, command_rx, outputs, lifecycle, shared));
        if let Err(error) = spawned {
            // The system would not give a thread (its limit is reached): the replica
            // fails to start like any failed load, and the supervisor backs off.
            let message = format!("could not start the engine thread: {error}");
            let _ = report.send(EngineEvent::Failed { during_load: true, message });
        }
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// Apply one command on the engine thread; `false` means shut down.
fn apply_command(engine: &mut dyn Engine, gauges: &ReplicaGauges, command: EngineCommand) -> bool {
    match command {
        EngineCommand::Add(sequence) => {
            engine.add(sequence);
            // The new sequence's slot shows in `free_slots` before it leaves
            // `in_transit`, so the lease loop never sees a free slot that is not there
            // (and takes a job a full replica would only hold back from other replicas).
            gauges.set_load(engine.load());
            gauges.in_transit.fetch_sub(1, Ordering::Relaxed);
            true
        }
        EngineCommand::Cancel(id) => {
            engine.cancel(&id);
            true
        }
        EngineCommand::Shutdown => false,
    }
}

/// The engine thread: build the engine (cold start), then step it while it has work.
fn run_engine_thread(
    factory: Arc<dyn EngineFactory>,
    context: ReplicaContext,
    commands: crossbeam_channel::Receiver<EngineCommand>,
    outputs: mpsc::UnboundedSender<Vec<SequenceOutput>>,
    lifecycle: mpsc::UnboundedSender<EngineEvent>,
    shared: Arc<Shared>,
) {
    let created = std::panic::catch_unwind(AssertUnwindSafe(|| factory.create(&context)));
    let (mut engine, report) = match created {
        Ok(Ok(built)) => built,
        Ok(Err(error)) => {
            let _ = lifecycle.send(EngineEvent::Failed { during_load: true, message: error.to_string() });
            return;
        }
        Err(panic) => {
            let message = format!("engine load panicked: {}", panic_message(panic));
            let _ = lifecycle.send(EngineEvent::Failed { during_load: true, message });
            return;
        }
    };
    shared.gauges.set_load(engine.load());
    let _ = lifecycle.send(EngineEvent::Ready(report));
    let gauges = shared.gauges.clone();
    let served = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        let mut out = Vec::new();
        loop {
            let load = engine.load();
            let idle = load.running + load.waiting == 0;
            let first = if idle {
                match commands.recv() {
                    Ok(command) => Some(command),
                    Err(_) => return Ok(()),
                }
            } else {
                None
            };
            for command in first.into_iter().chain(commands.try_iter()) {
                if !apply_command(&mut *engine, &gauges, command) {
                    return Ok(());
                }
            }
            let report = engine.step(&mut out).map_err(|e| e.to_string())?;
            let load = engine.load();
            gauges.set_load(load);
            gauges.steps.fetch_add(1, Ordering::Relaxed);
            if report.batch_size > 0 {
                m::engine_step(&shared.deployment, &report);
                m::engine_kv_tokens(&shared.deployment, &shared.replica_id, load.kv_tokens_used);
            }
            let generated: usize = out
                .iter()
                .map(|o| match &o.event {
                    OutputEvent::Tokens { token_ids, .. } => token_ids.len(),
                    _ => 0,
                })
                .sum();
            gauges.generated_tokens.fetch_add(generated as u64, Ordering::Relaxed);
            if load.free_slots > 0 {
                shared.room.notify_one();
            }
            if !out.is_empty() && outputs.send(std::mem::take(&mut out)).is_err() {
                return Ok(());
            }
            if report.batch_size == 0 && load.running + load.waiting > 0 {
                // Work is waiting for room the engine cannot make yet: don't spin.
                if let Ok(command) = commands.recv_timeout(Duration::from_millis(5)) {
                    if !apply_command(&mut *engine, &gauges, command) {
                        return Ok(());
                    }
                }
            }
        }
    }));
    let failure = match served {
        Ok(Ok(())) => None,
        Ok(Err(message)) => Some(message),
        Err(panic) => Some(format!("engine panicked: {}", panic_message(panic))),
    };
    if let Some(message) = failure {
        let _ = lifecycle.send(EngineEvent::Failed { during_load: false, message });
    }
}

/// Lease jobs while the engine has room and the replica is not draining.
async fn lease_loop(
    queue: Arc<dyn Queue>,
    shared: Arc<Shared>,
    commands: crossbeam_channel::Sender<EngineCommand>,
    outputs: mpsc::UnboundedSender<Vec<SequenceOutput>>,
    config: WorkerConfig,
) {
    let gauges = shared.gauges.clone();
    let mut backoff = queue_backoff();
    while !shared.draining.load(Ordering::Relaxed) {
        let free = gauges
            .free_slots
            .load(Ordering::Relaxed)
            .saturating_sub(gauges.in_transit.load(Ordering::Relaxed));
        if free == 0 {
            let _ = tokio::time::timeout(Duration::from_millis(50), shared.room.notified()).await;
            continue;
        }
        let leased = queue
            .lease(&shared.deployment, &shared.replica_id, free as usize, config.lease_ttl, config.lease_block)
            .await;
        let leases = match leased {
            Ok(leases) => {
                if backoff.reset() {
                    tracing::info!(replica = %shared.replica_id, "the queue answers again; leasing");
                }
                leases
            }
            Err(error) => {
                // The queue is unreachable (Redis down): wait and try again, quietly
                // after the first warning. Held jobs keep running meanwhile.
                let wait = backoff.failed();
                if backoff.failures() == 1 {
                    tracing::warn!(%error, replica = %shared.replica_id, "lease failed; retrying with back-off");
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        for lease in leases {
            if shared.draining.load(Ordering::Relaxed) {
                let _ = queue.release(&lease.lease).await;
                continue;
            }
            let job_id = lease.job.id.clone();
            shared.leases.lock().insert(job_id.clone(), lease.lease.clone());
            shared.last_seq.lock().insert(job_id.clone(), lease.resume_after_seq);
            gauges.active_leases.fetch_add(1, Ordering::Relaxed);
            gauges.in_transit.fetch_add(1, Ordering::Relaxed);
            // `Started` goes through the publisher so it precedes the job's tokens.
            let started = SequenceOutput {
                id: job_id.clone(),
                event: OutputEvent::Started { replica: shared.replica_id.clone() },
            };
            let _ = outputs.send(vec![started]);
            let sequence = Sequence {
                id: job_id,
                prompt_tokens: lease.job.request.prompt_tokens,
                resume_tokens: lease.resume_tokens,
                params: lease.job.request.params,
            };
            if commands.send(EngineCommand::Add(sequence)).is_err() {
                return;
            }
        }
    }
}

/// Publish outputs in order; acknowledge finished jobs; drop refused ones.
async fn publish_loop(
    queue: Arc<dyn Queue>,
    shared: Arc<Shared>,
    commands: crossbeam_channel::Sender<EngineCommand>,
    mut outputs: mpsc::UnboundedReceiver<Vec<SequenceOutput>>,
    worker: Addr<WorkerActor>,
) {
    while let Some(batch) = outputs.recv().await {
        // Group by job, keeping each job's order, so each job costs one append.
        let mut per_job: Vec<(JobId, Vec<OutputEvent>)> = Vec::new();
        for output in batch {
            match per_job.iter_mut().find(|(id, _)| *id == output.id) {
                Some((_, events)) => events.push(output.event),
                None => per_job.push((output.id, vec![output.event])),
            }
        }
        for (job_id, events) in per_job {
            let Some(lease) = shared.leases.lock().get(&job_id).cloned() else { continue };
            let terminal = events.iter().any(OutputEvent::is_terminal);
            let outcome = append_with_retry(&*queue, &shared, &lease, events).await;
            let finished = match outcome {
                Some(AppendOutcome::Accepted(_)) if terminal => {
                    ack_with_retry(&*queue, &shared, &lease).await;
                    true
                }
                Some(AppendOutcome::Accepted(_)) => false,
                Some(AppendOutcome::Cancelled) | Some(AppendOutcome::Fenced) | None => {
                    let _ = commands.send(EngineCommand::Cancel(job_id.clone()));
                    true
                }
            };
            if finished {
                shared.last_seq.lock().remove(&job_id);
            }
            if finished && shared.leases.lock().remove(&job_id).is_some() {
                shared.gauges.active_leases.fetch_sub(1, Ordering::Relaxed);
                shared.room.notify_one();
                worker.do_send(SequenceEnded);
            }
        }
    }
}

/// Back-off for calls to an unreachable queue: 50 ms doubling to 2 s.
fn queue_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
}

fn holds(shared: &Shared, lease: &LeaseRef) -> bool {
    shared.leases.lock().get(&lease.job_id).is_some_and(|held| held.epoch == lease.epoch)
}

/// Append, retrying a backend failure (Redis unreachable) for as long as the replica
/// still holds the lease: the engine keeps generating meanwhile and the events wait
/// here, in order, so nothing is dropped. The lease is given up only when the queue
/// says so (renewal refused, `Fenced`) or the replica releases it. `None`: never went.
///
/// A failed append may have been stored all the same (an append is atomic, but its
/// reply can be lost). Before trying again, the stream is read after the last event
/// known to be stored: if the events that follow are this lease's (its epoch; it is the
/// only writer of that epoch), the first try went through and is not repeated.
async fn append_with_retry(
    queue: &dyn Queue,
    shared: &Shared,
    lease: &LeaseRef,
    events: Vec<OutputEvent>,
) -> Option<AppendOutcome> {
    let mut backoff = queue_backoff();
    let known_last = shared.last_seq.lock().get(&lease.job_id).copied();
    let mut tried = false;
    loop {
        if tried {
            if let Some(known_last) = known_last {
                match queue.read_output(&lease.job_id, known_last, Duration::ZERO).await {
                    Ok(stored) => {
                        let ours: Vec<_> =
                            stored.iter().take(events.len()).take_while(|e| e.epoch == lease.epoch).collect();
                        if let Some(last) = ours.last().filter(|_| ours.len() == events.len()) {
                            tracing::info!(job = %lease.job_id, seq = last.seq, "a retried append had been stored; not repeating it");
                            shared.last_seq.lock().insert(lease.job_id.clone(), last.seq);
                            return Some(AppendOutcome::Accepted(last.seq));
                        }
                    }
                    Err(QueueError::UnknownJob(_)) => return None,
                    Err(_) => {
                        if !holds(shared, lease) {
                            return None;
                        }
                        tokio::time::sleep(backoff.failed()).await;
                        continue;
                    }
                }
            }
        }
        tried = true;
        match queue.append_output(lease, events.clone()).await {
            Ok(outcome) => {
                if let AppendOutcome::Accepted(seq) = outcome {
                    shared.last_seq.lock().insert(lease.job_id.clone(), seq);
                }
                return Some(outcome);
            }
            Err(error) => {
                if !holds(shared, lease) {
                    return None;
                }
                let wait = backoff.failed();
                if backoff.failures() == 1 {
                    tracing::warn!(job = %lease.job_id, %error, "output append failed; retrying while the lease is held");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Acknowledge a finished job, retrying an unreachable queue while the lease is held.
/// (If it never goes through, the lease expires and the redelivered attempt finds the
/// job already finished.)
async fn ack_with_retry(queue: &dyn Queue, shared: &Shared, lease: &LeaseRef) {
    let mut backoff = queue_backoff();
    loop {
        match queue.ack(lease).await {
            Ok(_) => return,
            Err(error) => {
                if !holds(shared, lease) {
                    return;
                }
                let wait = backoff.failed();
                if backoff.failures() == 1 {
                    tracing::warn!(job = %lease.job_id, %error, "ack failed; retrying");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Renew every held lease every third of its TTL; a lease found lost stops its sequence.
async fn renew_loop(
    queue: Arc<dyn Queue>,
    shared: Arc<Shared>,
    commands: crossbeam_channel::Sender<EngineCommand>,
    ttl: Duration,
) {
    let mut interval = tokio::time::interval(ttl / 3);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let leases: Vec<LeaseRef> = shared.leases.lock().values().cloned().collect();
        if leases.is_empty() {
            continue;
        }
        match queue.renew(&leases, ttl).await {
            Ok(held) => {
                for (lease, held) in leases.iter().zip(held) {
                    if !held && shared.leases.lock().remove(&lease.job_id).is_some() {
                        shared.last_seq.lock().remove(&lease.job_id);
                        tracing::warn!(job = %lease.job_id, "lease lost; dropping the sequence");
                        shared.gauges.active_leases.fetch_sub(1, Ordering::Relaxed);
                        let _ = commands.send(EngineCommand::Cancel(lease.job_id.clone()));
                    }
                }
            }
            // Unreachable queue: keep the leases and try again next period. If the
            // outage outlasts the TTL, the queue may hand the jobs to another replica;
            // the next renewal (or write) then learns it and stops the sequence here.
            Err(error) => tracing::warn!(%error, "lease renewal failed; keeping the leases and retrying"),
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
                    renew_loop(self.queue.clone(), self.shared.clone(), commands, self.config.lease_ttl)
                        .into_actor(self),
                );
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
        let left = self.shared.leases.lock().len();
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
