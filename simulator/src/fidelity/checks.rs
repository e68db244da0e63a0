//! The comparison of a live run with the simulated one: [`Tolerances`], the checks
//! (requests served, peak, replica timeline, scale events, latency percentiles) and the
//! [`FidelityReport`].

use serde::Serialize;

use super::{ObservedRequest, ObservedScaleEvent, Observation};
use crate::stats::percentile;

/// How close the two runs must be.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerances {
    /// Replica count difference allowed at every whole second.
    pub replicas: u32,
    /// The other run's count is looked at within this many seconds of each second.
    pub replica_time_slack: f64,
    /// A scale event must be matched by the other run within this many seconds (see
    /// the module docs).
    pub scale_event_seconds: f64,
    /// Latency percentiles: `|live - simulated| <= absolute + relative * simulated`.
    pub latency_absolute: f64,
    pub latency_relative: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Self {
            replicas: 1,
            replica_time_slack: 1.0,
            scale_event_seconds: 3.0,
            latency_absolute: 0.25,
            latency_relative: 0.25,
        }
    }
}

/// One comparison and its verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub live: String,
    pub simulated: String,
    pub allowed: String,
    pub pass: bool,
}

/// Every check of one comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FidelityReport {
    pub tolerances: Tolerances,
    pub checks: Vec<Check>,
}

impl FidelityReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }

    /// A markdown table of the checks.
    pub fn render(&self) -> String {
        let mut s = String::from("| check | live | simulated | allowed | |\n|---|---:|---:|---|---|\n");
        for c in &self.checks {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                c.name,
                c.live,
                c.simulated,
                c.allowed,
                if c.pass { "ok" } else { "FAIL" }
            ));
        }
        s
    }
}

/// The largest difference, over the whole seconds of `[0, horizon]`, between `a`'s count
/// and the closest count `b` held within the slack; and the seconds over `allowed`.
fn replica_gap(a: &Observation, b: &Observation, horizon: f64, slack: f64, allowed: u32) -> (u32, Vec<u32>) {
    let mut worst = 0;
    let mut over = Vec::new();
    for second in 0..=horizon.floor() as u32 {
        let t = f64::from(second);
        let count = a.capacity_at(t);
        let gap = b
            .counts_within(t - slack, t + slack)
            .into_iter()
            .map(|c| c.abs_diff(count))
            .min()
            .unwrap_or(count);
        worst = worst.max(gap);
        if gap > allowed {
            over.push(second);
        }
    }
    (worst, over)
}

/// Events of `a` that `b` does not match. An event is matched when `b`, within `window`
/// seconds of it, changes in the same direction to a count within `replicas` of the
/// event's new count (one run may take in two steps what the other takes in one: 1→3
/// is matched by 1→2, 2→3), or when `b`'s count stays within `replicas` of the new count
/// for that whole time (it was there already: a run one replica higher takes one more
/// step down).
fn unmatched(a: &Observation, b: &Observation, window: f64, replicas: u32) -> Vec<ObservedScaleEvent> {
    let up = |e: &ObservedScaleEvent| e.to > e.from;
    a.scale_events
        .iter()
        .filter(|e| {
            let same_way = b.scale_events.iter().any(|other| {
                (other.t - e.t).abs() <= window && up(other) == up(e) && other.to.abs_diff(e.to) <= replicas
            });
            let already_there = b
                .counts_within(e.t - window, e.t + window)
                .iter()
                .all(|c| c.abs_diff(e.to) <= replicas);
            !(same_way || already_there)
        })
        .copied()
        .collect()
}

fn events_text(events: &[ObservedScaleEvent]) -> String {
    events
        .iter()
        .map(|e| format!("{}→{} at {:.1} s", e.from, e.to, e.t))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compares a live run with the simulated one over `[0, horizon]` seconds.
pub fn compare(live: &Observation, sim: &Observation, horizon: f64, tol: &Tolerances) -> FidelityReport {
    let mut checks = Vec::new();
    checks.push(Check {
        name: "requests served".into(),
        live: live.requests.len().to_string(),
        simulated: sim.requests.len().to_string(),
        allowed: "equal".into(),
        pass: live.requests.len() == sim.requests.len(),
    });
    let peak = |o: &Observation| o.scale_events.iter().map(|e| e.to).max().unwrap_or(0);
    checks.push(Check {
        name: "peak replicas".into(),
        live: peak(live).to_string(),
        simulated: peak(sim).to_string(),
        allowed: format!("± {}", tol.replicas),
        pass: peak(live).abs_diff(peak(sim)) <= tol.replicas,
    });
    let (gap_ls, over_ls) = replica_gap(live, sim, horizon, tol.replica_time_slack, tol.replicas);
    let (gap_sl, over_sl) = replica_gap(sim, live, horizon, tol.replica_time_slack, tol.replicas);
    let mut over: Vec<u32> = over_ls.into_iter().chain(over_sl).collect();
    over.sort_unstable();
    over.dedup();
    checks.push(Check {
        name: "replicas at every second (largest gap; seconds over)".into(),
        live: format!("{} replica(s)", gap_ls.max(gap_sl)),
        simulated: if over.is_empty() {
            "none over".into()
        } else {
            format!("over at {over:?} s")
        },
        allowed: format!("± {} within ± {} s", tol.replicas, tol.replica_time_slack),
        pass: over.is_empty(),
    });
    let live_unmatched = unmatched(live, sim, tol.scale_event_seconds, tol.replicas);
    let sim_unmatched = unmatched(sim, live, tol.scale_event_seconds, tol.replicas);
    checks.push(Check {
        name: "scale events (count; unmatched)".into(),
        live: format!(
            "{}; {}",
            live.scale_events.len(),
            if live_unmatched.is_empty() { "all matched".into() } else { events_text(&live_unmatched) }
        ),
        simulated: format!(
            "{}; {}",
            sim.scale_events.len(),
            if sim_unmatched.is_empty() { "all matched".into() } else { events_text(&sim_unmatched) }
        ),
        allowed: format!(
            "the other run moves the same way to ± {0} of the new count, or stays within ± {0} of it, within ± {1} s",
            tol.replicas, tol.scale_event_seconds
        ),
        pass: live_unmatched.is_empty() && sim_unmatched.is_empty(),
    });
    for (name, pick) in [
        ("TTFT", (|r: &ObservedRequest| r.ttft) as fn(&ObservedRequest) -> f64),
        ("end-to-end", |r: &ObservedRequest| r.e2e),
    ] {
        let live_values: Vec<f64> = live.requests.iter().map(pick).collect();
        let sim_values: Vec<f64> = sim.requests.iter().map(pick).collect();
        for p in [50.0, 90.0, 99.0] {
            let (l, s) = (
                percentile(&live_values, p).unwrap_or(0.0),
                percentile(&sim_values, p).unwrap_or(0.0),
            );
            let allowed = tol.latency_absolute + tol.latency_relative * s;
            checks.push(Check {
                name: format!("{name} p{p:.0}"),
                live: format!("{l:.3} s"),
                simulated: format!("{s:.3} s"),
                allowed: format!("± {allowed:.3} s"),
                pass: (l - s).abs() <= allowed,
            });
        }
    }
    FidelityReport {
        tolerances: *tol,
        checks,
    }
}
