//! Decision records: the last decisions of a deployment, kept by its supervisor and
//! shown by the status API.
//!
//! A supervisor decides every tick, and most decisions repeat the one before ("stable
//! at 3"). [`DecisionHistory`] therefore folds a decision into the previous record when
//! they agree on everything but the measured values (same counts, desired count,
//! direction, reason, velocity cut, firing rules, burst mode, active schedules,
//! predictive floor, bounds and scale-in-progress hold): the record keeps the latest
//! decision with its inputs, when the run began and how many decisions it stands for.
//! Any change starts a new record; the oldest records go first once `capacity` is
//! reached.

use std::collections::VecDeque;

use serde::Serialize;

use crate::decision::Decision;

/// The default number of records a supervisor keeps.
pub const DEFAULT_DECISION_HISTORY: usize = 100;

/// One run of equivalent decisions: the latest of them, in full.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRecord {
    /// When the first decision of the run was taken (seconds on the decision clock).
    pub first_at_seconds: f64,
    /// How many decisions the run holds (1 for a single decision).
    pub decisions: u64,
    /// The latest decision of the run.
    #[serde(flatten)]
    pub decision: Decision,
}

/// The last `capacity` runs of decisions, oldest first.
#[derive(Debug, Clone)]
pub struct DecisionHistory {
    capacity: usize,
    records: VecDeque<DecisionRecord>,
}

impl Default for DecisionHistory {
    fn default() -> Self {
        Self::new(DEFAULT_DECISION_HISTORY)
    }
}

impl DecisionHistory {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            records: VecDeque::new(),
        }
    }

    /// Adds a decision: folded into the latest record when equivalent, else a new one.
    pub fn push(&mut self, decision: Decision) {
        if let Some(last) = self.records.back_mut() {
            if equivalent(&last.decision, &decision) {
                last.decisions += 1;
                last.decision = decision;
                return;
            }
        }
        self.records.push_back(DecisionRecord {
            first_at_seconds: decision.at_seconds,
            decisions: 1,
            decision,
        });
        while self.records.len() > self.capacity {
            self.records.pop_front();
        }
    }

    /// The records, oldest first.
    pub fn records(&self) -> Vec<DecisionRecord> {
        self.records.iter().cloned().collect()
    }

    /// The latest decision.
    pub fn latest(&self) -> Option<&Decision> {
        self.records.back().map(|record| &record.decision)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Same outcome for the same reasons (measured values may differ).
fn equivalent(a: &Decision, b: &Decision) -> bool {
    let rules = |decision: &Decision| {
        decision
            .rules_fired
            .iter()
            .map(|rule| (rule.name.clone(), rule.replicas))
            .collect::<Vec<_>>()
    };
    a.desired == b.desired
        && a.direction == b.direction
        && a.reason == b.reason
        && a.velocity_limited == b.velocity_limited
        && a.current == b.current
        && a.stabilized == b.stabilized
        && a.min_replicas == b.min_replicas
        && a.max_replicas == b.max_replicas
        && a.scale_in_progress == b.scale_in_progress
        && a.panic.as_ref().map(|panic| panic.active) == b.panic.as_ref().map(|panic| panic.active)
        && a.schedule.as_ref().map(|schedule| &schedule.active)
            == b.schedule.as_ref().map(|schedule| &schedule.active)
        && a.predictive.as_ref().map(|p| (p.floor, p.raised))
            == b.predictive.as_ref().map(|p| (p.floor, p.raised))
        && rules(a) == rules(b)
}
