//! [`WaitEstimate`]: how long a queued request will wait for a replica to take it, from
//! its place in the queue, the replicas' batch slots, the measured distribution of the
//! service time of a job and the time left until each starting replica is ready. Plain
//! arithmetic, no clock:
//! the supervisor fills in its state ([`WaitInputs`]) and the request actor asks for the
//! estimate of its position about once a second (the `eta` of the waiting comments).
//!
//! # The model
//!
//! Every batch slot is a server that opens (takes the next queued job) each time its job
//! ends; the expected openings by a time `t` are counted per kind of slot:
//!
//! - a **free slot** of a ready replica opens now, and then as jobs started together
//!   end: `1 + M(t)`, with `M` the renewal function of the measured service-time
//!   distribution ([`RenewalCurve`]: short jobs end early, not all at the mean);
//! - a **starting replica** opens all its slots when it is ready (`ready_in`), then the
//!   same: `slots × (1 + M(t − ready_in))`;
//! - a **busy slot** is somewhere in its job: in the long run a slot ends one job per mean
//!   service time `T`, so the busy ones open `busy × t / T` times by `t`.
//!
//! The request at position `p` (1-based, in the queue's service order) starts at the
//! `p`-th opening: the smallest `t` with `openings(t) ≥ p`, found by bisection.
//! Without a measured service time only the slots free now or at a start count; a
//! request beyond them has no estimate (`None`).
//!
//! The naive estimate the docs compare against is `p × T` ([`naive_wait`]).

use std::sync::Arc;
use std::time::Duration;

use crate::renewal::RenewalCurve;

/// What the estimate is computed from: the deployment's state now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WaitInputs {
    /// Batch slots of one replica (its engine's `max_batch_size`).
    pub slots_per_replica: u32,
    /// Slots free now on ready replicas (not draining).
    pub free_slots: u64,
    /// Slots busy now on ready replicas (not draining).
    pub busy_slots: u64,
    /// For each starting replica, the time until it is ready (measured cold start minus
    /// its age; zero when it is late).
    pub starting_ready_in: Vec<Duration>,
    /// Measured times a job holds a slot (leased to finished), as a distribution; `None`
    /// until one finished.
    pub service: Option<Arc<RenewalCurve>>,
}

/// The estimate's arithmetic over [`WaitInputs`].
pub struct WaitEstimate;

impl WaitEstimate {
    /// Expected time until the request at `position` (1-based) is taken by a replica.
    /// `None`: no capacity exists or is coming (nothing to estimate from), or the
    /// request is beyond the slots opening without a measured service time.
    pub fn wait(inputs: &WaitInputs, position: u64) -> Option<Duration> {
        let position = position.max(1);
        if inputs.free_slots >= position {
            return Some(Duration::ZERO);
        }
        let slots = u64::from(inputs.slots_per_replica.max(1));
        let Some(service) = inputs.service.as_deref() else {
            // Only the first openings are known: free slots now, then each start's slots.
            let mut starts = inputs.starting_ready_in.clone();
            starts.sort();
            let mut opened = inputs.free_slots;
            for ready_in in starts {
                opened += slots;
                if opened >= position {
                    return Some(ready_in);
                }
            }
            return None;
        };
        if inputs.free_slots + inputs.busy_slots == 0 && inputs.starting_ready_in.is_empty() {
            return None;
        }
        let t = service.mean();
        let openings = |at: f64| -> f64 {
            // Slots that start jobs together at `first`: they open then, and as those end.
            let fresh = |first: f64| if at < first { 0.0 } else { 1.0 + service.renewals(at - first) };
            let free = inputs.free_slots as f64 * fresh(0.0);
            let busy = inputs.busy_slots as f64 * at / t;
            let starting: f64 =
                inputs.starting_ready_in.iter().map(|r| slots as f64 * fresh(r.as_secs_f64())).sum();
            free + busy + starting
        };
        let target = position as f64;
        // An upper bound: every slot there will be is open from the last start on, and
        // opens once per T.
        let last_start = inputs.starting_ready_in.iter().map(Duration::as_secs_f64).fold(0.0, f64::max);
        let capacity = (inputs.free_slots + inputs.busy_slots) as f64
            + slots as f64 * inputs.starting_ready_in.len() as f64;
        let mut high = last_start + t * (target / capacity.max(1.0) + 2.0);
        while openings(high) < target {
            high *= 2.0;
        }
        let mut low = 0.0;
        for _ in 0..60 {
            let mid = (low + high) / 2.0;
            if openings(mid) >= target {
                high = mid;
            } else {
                low = mid;
            }
        }
        Some(Duration::from_secs_f64(high))
    }
}

/// The naive estimate: `position × T` (each request ahead served one after another).
pub fn naive_wait(position: u64, service_time: Duration) -> Duration {
    service_time.saturating_mul(position.min(u64::from(u32::MAX)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Every job takes `seconds`.
    fn fixed(seconds: f64) -> Option<Arc<RenewalCurve>> {
        RenewalCurve::from_samples(&[seconds; 4]).map(Arc::new)
    }

    fn close(actual: Option<Duration>, expected: f64) {
        let actual = actual.expect("an estimate").as_secs_f64();
        assert!((actual - expected).abs() < 0.15, "{actual} != {expected}");
    }

    #[test]
    fn a_free_slot_means_no_wait() {
        let inputs = WaitInputs { slots_per_replica: 4, free_slots: 2, busy_slots: 2, ..Default::default() };
        assert_eq!(WaitEstimate::wait(&inputs, 1), Some(Duration::ZERO));
        assert_eq!(WaitEstimate::wait(&inputs, 2), Some(Duration::ZERO));
    }

    #[test]
    fn at_zero_the_first_batch_waits_for_the_cold_start() {
        let inputs = WaitInputs {
            slots_per_replica: 8,
            starting_ready_in: vec![secs(10.0)],
            service: fixed(4.0),
            ..Default::default()
        };
        close(WaitEstimate::wait(&inputs, 1), 10.0);
        close(WaitEstimate::wait(&inputs, 8), 10.0);
        // The ninth waits for the first batch to end: cold start + one service time (give
        // or take the grid's step, 1.2% of the longest service time).
        close(WaitEstimate::wait(&inputs, 9), 14.0);
        close(WaitEstimate::wait(&inputs, 17), 18.0);
    }

    #[test]
    fn short_jobs_of_a_fresh_batch_free_their_slots_early() {
        // Half the jobs take 1 s, half 7 s (mean 4 s): of a batch of 8 started at the
        // cold start, 4 end a second later.
        let inputs = WaitInputs {
            slots_per_replica: 8,
            starting_ready_in: vec![secs(10.0)],
            service: RenewalCurve::from_samples(&[1.0, 7.0]).map(Arc::new),
            ..Default::default()
        };
        let ninth = WaitEstimate::wait(&inputs, 9).unwrap().as_secs_f64();
        assert!((11.0..11.1).contains(&ninth), "{ninth}");
        let twelfth = WaitEstimate::wait(&inputs, 12).unwrap().as_secs_f64();
        assert!((11.0..11.1).contains(&twelfth), "{twelfth}");
    }

    #[test]
    fn without_a_service_time_only_the_first_openings_are_known() {
        let inputs = WaitInputs {
            slots_per_replica: 8,
            starting_ready_in: vec![secs(10.0), secs(3.0)],
            ..Default::default()
        };
        close(WaitEstimate::wait(&inputs, 8), 3.0);
        close(WaitEstimate::wait(&inputs, 9), 10.0);
        assert_eq!(WaitEstimate::wait(&inputs, 17), None);
        assert_eq!(WaitEstimate::wait(&WaitInputs::default(), 1), None);
    }

    #[test]
    fn busy_slots_open_evenly_over_one_service_time() {
        let inputs =
            WaitInputs { slots_per_replica: 4, busy_slots: 4, service: fixed(8.0), ..Default::default() };
        close(WaitEstimate::wait(&inputs, 1), 2.0);
        close(WaitEstimate::wait(&inputs, 4), 8.0);
        close(WaitEstimate::wait(&inputs, 5), 10.0);
        // Twice the replicas, half the wait.
        let twice = WaitInputs { busy_slots: 8, ..inputs.clone() };
        close(WaitEstimate::wait(&twice, 4), 4.0);
    }

    #[test]
    fn a_starting_replica_shortens_the_wait_of_those_behind() {
        let busy =
            WaitInputs { slots_per_replica: 4, busy_slots: 4, service: fixed(8.0), ..Default::default() };
        let with_start = WaitInputs { starting_ready_in: vec![secs(1.0)], ..busy.clone() };
        close(WaitEstimate::wait(&busy, 8), 16.0);
        // Four slots open at 1 s, and the busy ones at 2, 4, 6, 8 s: the 8th at 8 s.
        close(WaitEstimate::wait(&with_start, 8), 8.0);
        close(WaitEstimate::wait(&with_start, 3), 1.0);
    }

    #[test]
    fn nothing_running_and_nothing_coming_has_no_estimate() {
        let inputs = WaitInputs { slots_per_replica: 4, service: fixed(1.0), ..Default::default() };
        assert_eq!(WaitEstimate::wait(&inputs, 1), None);
    }

    #[test]
    fn the_naive_estimate_is_position_times_service_time() {
        assert_eq!(naive_wait(3, secs(2.0)), secs(6.0));
    }
}
