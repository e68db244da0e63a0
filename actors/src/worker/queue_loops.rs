//! The worker actor's tasks against the queue: leasing jobs while the engine has room,
//! publishing each step's output (retried, fenced by the lease epoch), acknowledging
//! finished jobs and renewing leases.

use super::*;

/// Lease jobs while the engine has room and the replica is not draining.
pub(super) async fn lease_loop(
    queue: Arc<dyn Queue>,
    shared: Arc<Shared>,
    commands: Commands,
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
            let engine_id = Attempts::engine_id(&lease.lease);
            let superseded = shared.attempts.lock().hold(lease.lease.clone(), lease.resume_after_seq);
            match superseded {
                // This replica held the job's previous attempt and has not learned yet
                // that its lease was lost: that attempt ends here (its outputs still on
                // their way are dropped), and its slot goes to this one.
                Some(old) => {
                    tracing::warn!(job = %old.job_id, epoch = old.epoch, "leased again: the earlier attempt's lease was lost");
                    let _ = commands.send(EngineCommand::Cancel(Attempts::engine_id(&old)));
                }
                None => {
                    gauges.active_leases.fetch_add(1, Ordering::Relaxed);
                }
            }
            gauges.in_transit.fetch_add(1, Ordering::Relaxed);
            // `Started` goes through the publisher so it precedes the job's tokens.
            let started = SequenceOutput {
                id: engine_id.clone(),
                event: OutputEvent::Started { replica: shared.replica_id.clone() },
            };
            let _ = outputs.send(vec![started]);
            let sequence = Sequence {
                id: engine_id,
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

/// How long a batch of nothing but `Started` events waits for the first output of
/// those sequences, to go in the same appends.
const STARTED_COALESCE: Duration = Duration::from_millis(2);

/// Publish outputs in order; acknowledge finished jobs; drop refused ones.
pub(super) async fn publish_loop(
    queue: Arc<dyn Queue>,
    shared: Arc<Shared>,
    commands: Commands,
    mut outputs: mpsc::UnboundedReceiver<Vec<SequenceOutput>>,
    worker: Addr<WorkerActor>,
) {
    while let Some(mut batch) = outputs.recv().await {
        // Whatever else is ready goes in the same appends (a lease's `Started` with its
        // first tokens, several engine steps queued behind a slow append).
        while let Ok(more) = outputs.try_recv() {
            batch.extend(more);
        }
        // Only leases just started, on a remote queue: their first output usually
        // follows within a moment and then goes in the same append (one append and one
        // read fewer for a short request). Never when other output is waiting to go.
        if queue.is_remote() && batch.iter().all(|output| matches!(output.event, OutputEvent::Started { .. })) {
            if let Ok(Some(more)) = tokio::time::timeout(STARTED_COALESCE, outputs.recv()).await {
                batch.extend(more);
                while let Ok(more) = outputs.try_recv() {
                    batch.extend(more);
                }
            }
        }
        // Group by attempt, keeping each one's order, so each job costs one append.
        let mut per_attempt: Vec<(String, Vec<OutputEvent>)> = Vec::new();
        for output in batch {
            match per_attempt.iter_mut().find(|(id, _)| *id == output.id) {
                Some((_, events)) => events.push(output.event),
                None => per_attempt.push((output.id, vec![output.event])),
            }
        }
        // Attempts are independent: their appends (and acks) go out together, one round
        // trip for the batch; each attempt's own events stay in order (one append per
        // attempt per batch, and the next batch waits for this one).
        let publishes = per_attempt
            .into_iter()
            .map(|(engine_id, events)| publish_attempt(&queue, &shared, &commands, &worker, engine_id, events));
        futures_util::future::join_all(publishes).await;
    }
}

/// Append one attempt's events; acknowledge its job when they end it (on a task of its
/// own: the client has its answer, and the next batch need not wait for the ack); stop
/// its sequence when the queue refuses them.
async fn publish_attempt(
    queue: &Arc<dyn Queue>,
    shared: &Arc<Shared>,
    commands: &Commands,
    worker: &Addr<WorkerActor>,
    engine_id: String,
    events: Vec<OutputEvent>,
) {
    // An attempt that ended or was superseded publishes nothing more.
    let Some(lease) = shared.attempts.lock().current(&engine_id) else { return };
    let terminal = events.iter().any(OutputEvent::is_terminal);
    #[cfg(feature = "chaos-mutant")]
    if terminal && swell_cluster::mutant::active("early-ack") {
        ack_with_retry(&**queue, shared, &lease).await;
    }
    match append_with_retry(&**queue, shared, &lease, events).await {
        Some(AppendOutcome::Accepted(_)) if terminal => {
            let (queue, shared, worker) = (queue.clone(), shared.clone(), worker.clone());
            tokio::spawn(async move {
                ack_with_retry(&*queue, &shared, &lease).await;
                end_attempt(&shared, &worker, &lease);
            });
        }
        Some(AppendOutcome::Accepted(_)) => {}
        Some(AppendOutcome::Cancelled) | Some(AppendOutcome::Fenced) | None => {
            let _ = commands.send(EngineCommand::Cancel(engine_id.clone()));
            end_attempt(shared, worker, &lease);
        }
    }
}

/// An attempt is over here: its slot is free for another job.
fn end_attempt(shared: &Shared, worker: &Addr<WorkerActor>, lease: &LeaseRef) {
    if shared.attempts.lock().forget(lease) {
        shared.gauges.active_leases.fetch_sub(1, Ordering::Relaxed);
        shared.room.notify_one();
        worker.do_send(SequenceEnded);
    }
}

/// Back-off for calls to an unreachable queue: 50 ms doubling to 2 s.
pub(super) fn queue_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
}

pub(super) fn holds(shared: &Shared, lease: &LeaseRef) -> bool {
    shared.attempts.lock().holds(lease)
}

/// Append, retrying a backend failure (Redis unreachable) for as long as the replica
/// still holds the lease: the engine keeps generating meanwhile and the events wait
/// here, in order, so nothing is dropped. The lease is given up only when the queue
/// says so (renewal refused, `Fenced`) or the replica releases it. `None`: never went.
///
/// A failed append may have been stored all the same (an append is atomic, but its
/// reply can be lost, or the first try can reach Redis after the second). Every try
/// names the last event known to be stored, and the queue stores the events only after
/// it: a try that finds them already there answers without storing them again.
pub(super) async fn append_with_retry(
    queue: &dyn Queue,
    shared: &Shared,
    lease: &LeaseRef,
    events: Vec<OutputEvent>,
) -> Option<AppendOutcome> {
    let mut backoff = queue_backoff();
    let after = shared.attempts.lock().last_seq(lease)?;
    loop {
        match queue.append_output(lease, after, events.clone()).await {
            Ok(outcome) => {
                if let AppendOutcome::Accepted(seq) = outcome {
                    shared.attempts.lock().stored(lease, seq);
                }
                return Some(outcome);
            }
            // The job is gone (its keys were removed): nothing to write to.
            Err(QueueError::UnknownJob(_)) => return None,
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
pub(super) async fn ack_with_retry(queue: &dyn Queue, shared: &Shared, lease: &LeaseRef) {
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
pub(super) async fn renew_loop(
    queue: Arc<dyn Queue>,
    shared: Arc<Shared>,
    commands: Commands,
    ttl: Duration,
    worker: Addr<WorkerActor>,
) {
    let mut interval = tokio::time::interval(ttl / 3);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let leases: Vec<LeaseRef> = shared.attempts.lock().leases();
        if leases.is_empty() {
            continue;
        }
        match queue.renew(&leases, ttl).await {
            Ok(held) => {
                for (lease, held) in leases.iter().zip(held) {
                    // (Only that epoch: the job may be held again, in a later attempt.)
                    if !held && shared.attempts.lock().forget(lease) {
                        tracing::warn!(job = %lease.job_id, "lease lost; dropping the sequence");
                        shared.gauges.active_leases.fetch_sub(1, Ordering::Relaxed);
                        let _ = commands.send(EngineCommand::Cancel(Attempts::engine_id(lease)));
                        // The sequence left the replica: room for another, and a draining
                        // replica that held only lost leases is done (it waited for its
                        // drain grace before).
                        shared.room.notify_one();
                        worker.do_send(SequenceEnded);
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
