//! The replica's [`ReplicaReport`] for cache-aware routing: its load, whether it takes
//! new work, and the version of its [`PrefixBlocks`] (the prefix cache as the engine
//! thread last read it). Published through the queue when something changed (at most
//! every [`REPORT_EVERY`]; the blocks at most every [`PrefixBlocks::EVERY`]), at least
//! once a [`ReplicaReport::HEARTBEAT`], at once when the replica starts draining, and
//! removed when it exits.

use super::*;

/// How often the report is checked for changes.
pub(super) const REPORT_EVERY: Duration = Duration::from_millis(200);

/// What a report says apart from its time: two equal ones need not both go out.
type Content = (bool, u64, u64, u64, Option<u64>);

fn content(report: &ReplicaReport) -> Content {
    (report.accepting, report.free_slots, report.running, report.pending_prefill_tokens, report.prefix_version)
}

/// The replica's report now; its blocks are those last published (`prefix_version`).
pub(super) fn current_report(shared: &Shared, prefix_version: Option<u64>) -> ReplicaReport {
    let gauges = &shared.gauges;
    ReplicaReport {
        replica: shared.replica_id.clone(),
        at_ms: swell_cluster::unix_millis(),
        accepting: !shared.draining.load(Ordering::Relaxed),
        free_slots: gauges.free_slots.load(Ordering::Relaxed).saturating_sub(gauges.in_transit.load(Ordering::Relaxed)),
        running: gauges.running.load(Ordering::Relaxed),
        pending_prefill_tokens: gauges.pending_prefill_tokens.load(Ordering::Relaxed),
        prefix_version,
    }
}

/// Publish the replica's report while it lives (the actor cancels this loop on exit):
/// the small report when it changed, the blocks when they changed and
/// [`PrefixBlocks::EVERY`] has passed since they last went.
pub(super) async fn report_loop(queue: Arc<dyn Queue>, shared: Arc<Shared>) {
    // The last report published: when, and what it said.
    let mut last: Option<(u64, Content)> = None;
    // The blocks last published: their version and when.
    let mut published: Option<(u64, u64)> = None;
    loop {
        let now = swell_cluster::unix_millis();
        let held = shared.prefix.lock().clone();
        let fresh_blocks = held.filter(|blocks| match published {
            None => true,
            Some((version, at)) => blocks.version != version && now.saturating_sub(at) >= PrefixBlocks::EVERY,
        });
        let prefix_version = fresh_blocks.as_ref().map(|blocks| blocks.version).or(published.map(|(version, _)| version));
        let report = current_report(&shared, prefix_version);
        let due = fresh_blocks.is_some()
            || match &last {
                None => true,
                Some((at, said)) => *said != content(&report) || now.saturating_sub(*at) >= ReplicaReport::HEARTBEAT,
            };
        if due {
            match queue.report_replica(&shared.deployment, &report, fresh_blocks.as_deref()).await {
                Ok(()) => {
                    last = Some((now, content(&report)));
                    if let Some(blocks) = &fresh_blocks {
                        published = Some((blocks.version, now));
                    }
                }
                // The queue is unreachable: the report goes stale and gateways stop
                // routing here, which is right while this replica cannot lease either.
                Err(error) => tracing::debug!(%error, replica = %shared.replica_id, "could not publish the replica report"),
            }
        }
        let _ = tokio::time::timeout(REPORT_EVERY, shared.report_now.notified()).await;
    }
}

/// Remove the replica's report (it exited).
pub(super) async fn forget_report(queue: Arc<dyn Queue>, shared: Arc<Shared>) {
    if let Err(error) = queue.forget_replica(&shared.deployment, &shared.replica_id).await {
        tracing::debug!(%error, replica = %shared.replica_id, "could not remove the replica report; it goes stale");
    }
}
