//! What one run did (scale events, per-request latencies), and the simulated run of a
//! workload that records it.

use std::time::Duration;

use serde::Serialize;
use swell_autoscaler::{AutoscalingPolicy, LoadSample, ReplicaCounts};
use swell_workers::sim::SimProfile;

use crate::engine::Simulator;
use crate::policies::{ScalingPolicy, Swell};
use crate::workload::SimRequest;

/// A change of the replica count, seconds since the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ObservedScaleEvent {
    pub t: f64,
    pub from: u32,
    pub to: u32,
}

/// One request's latencies, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ObservedRequest {
    pub arrival: f64,
    pub ttft: f64,
    pub e2e: f64,
}

/// What one run (live or simulated) did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    /// Oldest first; the count starts at 0.
    pub scale_events: Vec<ObservedScaleEvent>,
    pub requests: Vec<ObservedRequest>,
}

impl Observation {
    /// The replica count (ready + starting) at `t`: the `to` of the last event at or
    /// before `t`.
    pub fn capacity_at(&self, t: f64) -> u32 {
        self.scale_events
            .iter()
            .take_while(|e| e.t <= t)
            .last()
            .map_or(0, |e| e.to)
    }

    /// Every count the run held at some time within `[from, to]`.
    pub(super) fn counts_within(&self, from: f64, to: f64) -> Vec<u32> {
        let mut counts = vec![self.capacity_at(from)];
        counts.extend(
            self.scale_events
                .iter()
                .filter(|e| e.t > from && e.t <= to)
                .map(|e| e.to),
        );
        counts
    }
}

/// Wraps a policy and records every change the simulator made.
struct Recording<'a> {
    inner: &'a mut dyn ScalingPolicy,
    events: Vec<ObservedScaleEvent>,
}

impl ScalingPolicy for Recording<'_> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn tick(&self) -> Duration {
        self.inner.tick()
    }
    fn initial_replicas(&self) -> u32 {
        self.inner.initial_replicas()
    }
    fn per_replica_cap(&self) -> Option<u32> {
        self.inner.per_replica_cap()
    }
    fn decide(&mut self, now: Duration, sample: &LoadSample, counts: ReplicaCounts) -> u32 {
        self.inner.decide(now, sample, counts)
    }
    fn scaled(&mut self, now: Duration, from: u32, to: u32) {
        self.events.push(ObservedScaleEvent {
            t: now.as_secs_f64(),
            from,
            to,
        });
        self.inner.scaled(now, from, to);
    }
}

/// Runs `requests` through the simulator with Swell's policy, from zero replicas.
///
/// The policy keeps ticking until `horizon` seconds (and every request finished), so a
/// scale-down after the last request is seen.
pub fn simulate(
    requests: &[SimRequest],
    profile: &SimProfile,
    policy: AutoscalingPolicy,
    horizon: f64,
) -> Observation {
    // As the live supervisor builds it: the capacity model from the engine's description
    // (SLO mode and `auto` targets follow it) and the expected cold start.
    let mut swell =
        Swell::with_capacity("swell", policy, profile).with_expected_cold_start(profile.cold_start);
    let mut recording = Recording {
        inner: &mut swell,
        events: Vec::new(),
    };
    let result = Simulator::new(requests, profile, &mut recording).run(Some(horizon));
    let requests = result
        .outcomes
        .iter()
        .map(|o| ObservedRequest {
            arrival: o.arrival,
            ttft: o.ttft(),
            e2e: o.finish - o.arrival,
        })
        .collect();
    Observation {
        scale_events: recording.events,
        requests,
    }
}
