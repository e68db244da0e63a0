//! The replica's engine thread: builds the engine (the cold start), then steps it and
//! applies the worker actor's commands (add, cancel, stop) between steps. Model math
//! never runs on an async executor.

use super::*;

pub(super) fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// The worker's side of the engine thread's command channel: sending a command also
/// wakes an engine blocked in `step` (see `Engine::waker`), once the engine exists.
#[derive(Clone)]
pub(super) struct Commands {
    tx: crossbeam_channel::Sender<EngineCommand>,
    waker: Arc<std::sync::OnceLock<EngineWaker>>,
}

impl Commands {
    pub(super) fn new() -> (Commands, crossbeam_channel::Receiver<EngineCommand>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Commands { tx, waker: Arc::default() }, rx)
    }

    /// Queue `command`; `Err` when the engine thread is gone.
    pub(super) fn send(&self, command: EngineCommand) -> Result<(), ()> {
        self.tx.send(command).map_err(|_| ())?;
        if let Some(wake) = self.waker.get() {
            wake();
        }
        Ok(())
    }

    /// Called on the engine thread once the engine is built.
    fn set_waker(&self, waker: EngineWaker) {
        let _ = self.waker.set(waker);
    }
}

/// Apply one command on the engine thread; `false` means shut down.
pub(super) fn apply_command(engine: &mut dyn Engine, gauges: &ReplicaGauges, command: EngineCommand) -> bool {
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
            // The freed slot shows at once, even if no step follows (an engine left idle
            // by the cancel is not stepped again until new work comes).
            gauges.set_load(engine.load());
            true
        }
        EngineCommand::Shutdown => false,
    }
}

/// How often, at most, the engine thread reads the prefix cache for the replica's
/// report while the engine is busy (an engine going idle is read at once).
const PREFIX_READ_EVERY: Duration = Duration::from_millis(100);

/// What the engine thread last read of the engine's prefix cache.
struct PrefixReader {
    version: Option<u64>,
    read_at: std::time::Instant,
}

impl PrefixReader {
    fn new() -> Self {
        Self { version: None, read_at: std::time::Instant::now() }
    }

    /// Store the engine's prefix cache in `shared` if it changed since the last read,
    /// and (unless `now`) the last read is old enough.
    fn read(&mut self, engine: &dyn Engine, shared: &Shared, now: bool) {
        let Some(version) = engine.prefix_cache_version() else { return };
        if self.version == Some(version) || (!now && self.read_at.elapsed() < PREFIX_READ_EVERY) {
            return;
        }
        if let Some(cached) = engine.cached_prefix(ReplicaReport::MAX_BLOCKS) {
            let blocks = PrefixBlocks { version: cached.version, block_tokens: cached.block_tokens, blocks: cached.blocks };
            *shared.prefix.lock() = Some(Arc::new(blocks));
        }
        self.version = Some(version);
        self.read_at = std::time::Instant::now();
    }
}

/// The engine thread: build the engine (cold start), then step it while it has work.
pub(super) fn run_engine_thread(
    factory: Arc<dyn EngineFactory>,
    context: ReplicaContext,
    commands: crossbeam_channel::Receiver<EngineCommand>,
    senders: Commands,
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
    if let Some(waker) = engine.waker() {
        senders.set_waker(waker);
    }
    drop(senders);
    shared.gauges.set_load(engine.load());
    let _ = lifecycle.send(EngineEvent::Ready(report));
    let gauges = shared.gauges.clone();
    let served = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        let mut out = Vec::new();
        let mut prefix = PrefixReader::new();
        loop {
            let load = engine.load();
            let idle = load.running + load.waiting == 0;
            prefix.read(&*engine, &shared, idle);
            if idle && load.free_slots > 0 {
                // Whatever emptied the engine (a cancel applied without a step after it),
                // the lease loop may take work now.
                shared.room.notify_one();
            }
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
            }
            if report.batch_size > 0 || report.decode_tokens > 0 {
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
            let emitted = !out.is_empty();
            if emitted && outputs.send(std::mem::take(&mut out)).is_err() {
                return Ok(());
            }
            let did_nothing = report.batch_size == 0 && report.decode_tokens == 0 && !emitted;
            if did_nothing && report.elapsed < Duration::from_micros(500) && load.running + load.waiting > 0 {
                // Work is waiting for room the engine cannot make yet: don't spin. (An
                // engine whose step itself waited for events, such as one in another
                // process, is not spinning: it steps again at once.)
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
