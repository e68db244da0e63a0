//! The fault schedule of a campaign: a pure function of the seed, so a failing campaign
//! replays with the same faults at the same offsets.
//!
//! Faults come one after another at random gaps; each picks a target among the processes
//! not already under a fault, so faults overlap (a gateway paused while Redis restarts)
//! but never stack on one process.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// A process of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Target {
    Redis,
    Gateway(usize),
    Worker(usize),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Redis => write!(f, "redis"),
            Target::Gateway(i) => write!(f, "gw{}", i + 1),
            Target::Worker(i) => write!(f, "w{}", i + 1),
        }
    }
}

/// What is done to the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum FaultKind {
    /// `kill -9`, then started again after the fault's length.
    Kill,
    /// `SIGSTOP`, `SIGCONT` after the fault's length (longer than the lease and the node
    /// TTL: the node's writes must be fenced when it comes back).
    Pause,
    /// Every byte between the node and Redis held this long.
    Delay(Duration),
    /// Nothing passes between the node and Redis.
    BlackHole,
    /// Every connection between the node and Redis closed at once.
    Reset,
}

impl FaultKind {
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Delay(_) => "delay",
            FaultKind::BlackHole => "black-hole",
            FaultKind::Reset => "reset",
        }
    }
}

/// One fault: from `at` (since the campaign's start) for `length`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub at: Duration,
    pub length: Duration,
    pub target: Target,
    pub kind: FaultKind,
}

/// Every kind of fault a campaign may inject (`redis`: Redis killed and restarted).
pub const KINDS: [&str; 6] = ["kill", "pause", "delay", "black-hole", "reset", "redis"];

/// How often each kind comes, relative to the others.
const WEIGHTS: [(&str, u32); 6] = [("kill", 26), ("pause", 17), ("delay", 17), ("black-hole", 13), ("reset", 13), ("redis", 14)];

/// The shape of the cluster and of the campaign.
#[derive(Debug, Clone)]
pub struct Shape {
    pub gateways: usize,
    pub workers: usize,
    pub duration: Duration,
    /// The lease TTL: pauses last longer.
    pub lease: Duration,
    /// The kinds of fault injected (names of [`KINDS`]).
    pub kinds: Vec<String>,
}

/// The faults of campaign `seed`, in order of start.
pub fn schedule(seed: u64, shape: &Shape) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5ca1_ab1e);
    let mut faults: Vec<Fault> = Vec::new();
    let mut at = Duration::from_millis(rng.random_range(500..1500));
    let ms = |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..hi));
    while at < shape.duration {
        let busy = |target: &Target| faults.iter().any(|f| &f.target == target && f.at + f.length > at);
        // A kind among those asked for, by weight: Redis one fault in seven (it takes
        // every node with it).
        let allowed: Vec<(&str, u32)> = WEIGHTS.iter().copied().filter(|(k, _)| shape.kinds.iter().any(|a| a == k)).collect();
        let total: u32 = allowed.iter().map(|(_, w)| w).sum();
        let mut draw = if total > 0 { rng.random_range(0..total) } else { 0 };
        let name = allowed.iter().find(|(_, w)| draw < *w || { draw -= w; false }).map(|(k, _)| *k);
        let mut targets: Vec<Target> = if name == Some("redis") {
            vec![Target::Redis]
        } else {
            (0..shape.gateways).map(Target::Gateway).chain((0..shape.workers).map(Target::Worker)).collect()
        };
        targets.retain(|t| !busy(t));
        if let (Some(name), false) = (name, targets.is_empty()) {
            let target = targets[rng.random_range(0..targets.len())].clone();
            let lease = shape.lease.as_millis() as u64;
            let (kind, length) = match name {
                // Redis is restarted (with its AOF): down for a moment.
                "redis" => (FaultKind::Kill, ms(&mut rng, 200, 1500)),
                "kill" => (FaultKind::Kill, ms(&mut rng, 300, 2000)),
                "pause" => (FaultKind::Pause, ms(&mut rng, lease + 500, 2 * lease + 1000)),
                "delay" => (FaultKind::Delay(ms(&mut rng, 20, 400)), ms(&mut rng, 1000, 4000)),
                "black-hole" => (FaultKind::BlackHole, ms(&mut rng, 500, 3000)),
                _ => (FaultKind::Reset, Duration::ZERO),
            };
            faults.push(Fault { at, length, target, kind });
        }
        at += ms(&mut rng, 700, 2500);
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            gateways: 2,
            workers: 2,
            duration: Duration::from_secs(120),
            lease: Duration::from_secs(2),
            kinds: KINDS.map(String::from).to_vec(),
        }
    }

    #[test]
    fn a_seed_gives_one_schedule_and_seeds_differ() {
        assert_eq!(schedule(7, &shape()), schedule(7, &shape()));
        assert_ne!(schedule(7, &shape()), schedule(8, &shape()));
    }

    #[test]
    fn faults_never_stack_on_a_process_and_every_kind_comes() {
        let faults = schedule(1, &shape());
        for (i, fault) in faults.iter().enumerate() {
            for earlier in &faults[..i] {
                if earlier.target == fault.target {
                    assert!(earlier.at + earlier.length <= fault.at, "{earlier:?} overlaps {fault:?}");
                }
            }
            assert!(fault.at < shape().duration);
            if fault.kind == FaultKind::Pause {
                assert!(fault.length > shape().lease, "{fault:?}");
            }
        }
        for name in ["kill", "pause", "delay", "black-hole", "reset"] {
            assert!(faults.iter().any(|f| f.kind.name() == name), "no {name} in {faults:?}");
        }
        assert!(faults.iter().any(|f| f.target == Target::Redis));
        // A campaign of pauses only.
        let pauses = schedule(1, &Shape { kinds: vec!["pause".into()], ..shape() });
        assert!(!pauses.is_empty() && pauses.iter().all(|f| f.kind == FaultKind::Pause && f.target != Target::Redis));
    }
}
