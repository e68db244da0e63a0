//! What a supervisor reports: its deployment's status (replicas, queue, scale events,
//! decisions, failures) and readiness.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use swell_autoscaler::{AutoscalingPolicy, Decision, DecisionRecord, LoadAverages, ScaleDirection};
use swell_workers::{ColdStartReport, EngineDescription};

use crate::wait_estimate::{WaitEstimate, WaitInputs};
use crate::worker::ReplicaState;

/// One recorded change of the replica count.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleEvent {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub from: u32,
    pub to: u32,
    pub direction: ScaleDirection,
    /// `queued_at_zero`, `concurrent_requests`, `idle`, `deleting`, ... (metric label).
    pub reason: &'static str,
    /// The inputs, in words.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaCountsView {
    pub desired: u32,
    pub ready: u32,
    pub starting: u32,
    pub draining: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueView {
    /// Requests waiting for a replica.
    pub depth: u64,
    /// Requests running on replicas.
    pub in_flight: u64,
    /// How long the oldest waiting request has waited.
    pub oldest_wait_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaDetail {
    pub replica: String,
    pub state: ReplicaState,
    pub active_sequences: u64,
    pub steps: u64,
    pub generated_tokens: u64,
    pub age_seconds: f64,
    pub cold_start_seconds: Option<f64>,
    pub cold_start_stages: Option<ColdStartReport>,
}

/// What `ObserveDeployment` answers: the admin API's status body.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentStatus {
    pub name: String,
    pub engine: EngineDescription,
    pub replicas: ReplicaCountsView,
    pub queue: QueueView,
    pub load: LoadAverages,
    pub autoscaling: AutoscalingPolicy,
    pub last_decision: Option<Decision>,
    /// The last decisions with their inputs (equivalent consecutive decisions folded
    /// into one record), most recent last.
    pub decisions: Vec<DecisionRecord>,
    /// Most recent last.
    pub scale_events: Vec<ScaleEvent>,
    pub replica_details: Vec<ReplicaDetail>,
    pub restarts: BTreeMap<&'static str, u64>,
    /// The last replica that failed (to start or while serving), and why; cleared when
    /// a replica becomes ready after it.
    pub last_failure: Option<ReplicaFailure>,
    /// While failed starts are backed off: how long until the next start may be tried.
    pub restart_backoff_seconds: Option<f64>,
    pub deleting: bool,
    /// Replicas tenants reserve (already raised into `autoscaling.min_replicas`).
    pub reserved_floor: u32,
    /// In a cluster whose leader places replicas: the replicas the placement gives this
    /// node (`null` until the first placement was read; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned: Option<Option<u32>>,
}

/// A replica's failure, as the status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaFailure {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub replica: String,
    /// `load_failed` or `engine_failed`.
    pub cause: &'static str,
    pub message: String,
}

/// Whether a request waiting for capacity has a replica coming, and what its wait is
/// estimated from.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    pub ready: u32,
    pub starting: u32,
    /// Expected time until the soonest starting replica is ready (measured cold start
    /// minus its age).
    pub ready_in: Option<Duration>,
    /// The deployment's state for [`WaitEstimate`](crate::wait_estimate::WaitEstimate).
    pub wait: WaitInputs,
    /// With a queue shared by several nodes (Redis): the ready slots are to be read
    /// from every replica's report ([`Readiness::with_reported_slots`]); on a gateway that
    /// runs no replicas `wait` has none of its own.
    pub reported: bool,
    /// The last of `wait.starting_ready_in` is not a replica but one assumed to start now
    /// (nothing is ready or starting here, and work queued at zero starts one).
    pub assumed_start: bool,
}

impl Readiness {
    /// Expected wait of the request at `position` (1-based).
    pub fn eta(&self, position: u64) -> Option<Duration> {
        WaitEstimate::wait(&self.wait, position)
    }

    /// The cluster's view: the slots every replica reports (free, running). With none
    /// reported, `wait` keeps its own (and the replica assumed to start at zero).
    pub fn with_reported_slots(mut self, free: u64, busy: u64) -> Self {
        if free + busy > 0 {
            self.wait.free_slots = free;
            self.wait.busy_slots = busy;
            if self.assumed_start {
                self.wait.starting_ready_in.pop();
                self.assumed_start = false;
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readiness(assumed_start: bool) -> Readiness {
        let wait = WaitInputs {
            slots_per_replica: 4,
            starting_ready_in: vec![Duration::from_secs(3), Duration::from_secs(10)],
            ..WaitInputs::default()
        };
        Readiness { ready: 0, starting: 1, ready_in: Some(Duration::from_secs(3)), wait, reported: true, assumed_start }
    }

    #[test]
    fn reported_slots_replace_the_local_ones_and_the_assumed_start() {
        let seen = readiness(true).with_reported_slots(2, 6);
        assert_eq!((seen.wait.free_slots, seen.wait.busy_slots), (2, 6));
        assert_eq!(seen.wait.starting_ready_in, [Duration::from_secs(3)], "the assumed start is dropped");
        let local = readiness(false).with_reported_slots(2, 6);
        assert_eq!(local.wait.starting_ready_in.len(), 2, "replicas starting here still come");
        let none = readiness(true).with_reported_slots(0, 0);
        assert_eq!(none.wait.starting_ready_in.len(), 2, "nothing reported: a start is still assumed");
    }
}
