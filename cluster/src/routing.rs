//! Routed jobs in a queue: a [`JobRoute`] promises a job to one replica (the one expected
//! to start it soonest: its prefix is cached there, or its conversation ran there) for a
//! bounded time, and [`Routing`] decides which waiting job a consumer may take.
//!
//! The rules, for consumer `C` leasing from a deployment's service order (handed-back
//! jobs, then by priority, oldest first within one):
//! - a job with no route, or routed to `C`, may be taken;
//! - a job routed to another replica is passed over while its promise holds: until its
//!   `until_ms`, and only while that replica is **alive** (it is waiting in `lease`, or
//!   it leased, renewed or wrote output within [`Routing::liveness`]) and has not said it
//!   stopped taking work (draining, or retired: [`Routing::accepting`]). So no job waits
//!   on a dead or vanished replica for longer than the liveness window, none on a
//!   draining one, and none past its promise;
//! - handed-back and redelivered jobs lose their route (their replica gave them up).
//!
//! Priorities still come first for every consumer: routing only passes over jobs, it
//! never reorders the ones a consumer may take.
//!
//! Pure logic over plain values: the embedded queue keeps a [`Routing`] in its state and
//! asks [`Routing::eligible`] per job; [`Eligibility::From`] says when a passed-over job
//! becomes takeable, so a blocked `lease` wakes then. The Redis queue applies the same
//! rules in its take script, parking passed-over jobs per replica (see
//! [`crate::redis_queue`]'s key layout); the conformance suite
//! (`cluster/tests/routing_queue.rs`) runs the same scenarios on both.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use swell_router::{may_take, Promise};

/// A job promised to `replica` (a queue consumer id) until `until_ms` (Unix ms): the wire
/// form of a [`swell_router::Promise`] whose times count from the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobRoute {
    pub replica: String,
    pub until_ms: u64,
}

/// Whether a consumer may take a job now, or from when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    Now,
    /// Passed over until this time (Unix ms): the promise's end or the moment its
    /// replica counts as gone, whichever comes first.
    From(u64),
}

/// What the queue last saw of one consumer.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Its last lease, renewal or write (Unix ms).
    at: u64,
    /// Its blocking `lease` calls in progress.
    waiting: usize,
    /// False once it reported draining or retired: it holds no routed job any more.
    accepting: bool,
}

impl Default for Seen {
    fn default() -> Self {
        Self { at: 0, waiting: 0, accepting: true }
    }
}

/// When each consumer was last seen, and which are waiting in `lease` now, per
/// deployment (looked up by `&str`: no allocation on the paths every write takes).
#[derive(Debug, Clone)]
pub struct Routing {
    liveness: Duration,
    consumers: HashMap<String, HashMap<String, Seen>>,
}

impl Routing {
    /// A replica not seen for `liveness` counts as gone.
    pub fn new(liveness: Duration) -> Self {
        Self { liveness, consumers: HashMap::new() }
    }

    pub fn liveness(&self) -> Duration {
        self.liveness
    }

    fn entry(&mut self, deployment: &str, consumer: &str) -> &mut Seen {
        if !self.consumers.contains_key(deployment) {
            self.consumers.insert(deployment.to_string(), HashMap::new());
        }
        let of_deployment = self.consumers.get_mut(deployment).expect("inserted above");
        if !of_deployment.contains_key(consumer) {
            of_deployment.insert(consumer.to_string(), Seen::default());
        }
        of_deployment.get_mut(consumer).expect("inserted above")
    }

    /// `consumer` of `deployment` did something at `now_ms` (leased, renewed, wrote).
    pub fn seen(&mut self, deployment: &str, consumer: &str, now_ms: u64) {
        let seen = self.entry(deployment, consumer);
        seen.at = seen.at.max(now_ms);
    }

    /// `consumer` entered (`true`) or left (`false`) a blocking `lease` call: alive
    /// throughout.
    pub fn waiting(&mut self, deployment: &str, consumer: &str, entered: bool, now_ms: u64) {
        let seen = self.entry(deployment, consumer);
        if entered {
            // Asking for work is taking work (a replica that restarted under the same
            // name after it retired).
            seen.accepting = true;
            seen.waiting += 1;
        } else {
            seen.waiting = seen.waiting.saturating_sub(1);
        }
        seen.at = seen.at.max(now_ms);
    }

    /// `consumer` reported whether it takes new work (false: draining or gone). A
    /// consumer that does not is not alive for routing: jobs routed to it are free.
    pub fn accepting(&mut self, deployment: &str, consumer: &str, accepting: bool) {
        self.entry(deployment, consumer).accepting = accepting;
    }

    /// Until when `consumer` counts as alive (Unix ms), if it was ever seen.
    fn alive_until(&self, deployment: &str, consumer: &str) -> Option<u64> {
        let seen = self.consumers.get(deployment)?.get(consumer)?;
        if !seen.accepting {
            return Some(0);
        }
        if seen.waiting > 0 {
            return Some(u64::MAX);
        }
        let window = u64::try_from(self.liveness.as_millis()).unwrap_or(u64::MAX);
        Some(seen.at.saturating_add(window))
    }

    /// May `consumer` take a job with `route` at `now_ms`? The rule is
    /// [`swell_router::may_take`] (times as Unix ms), with this queue's view of which
    /// replicas are alive; when the answer is no, also when it turns to yes.
    pub fn eligible(&self, deployment: &str, route: Option<&JobRoute>, consumer: &str, now_ms: u64) -> Eligibility {
        let Some(route) = route else { return Eligibility::Now };
        if route.replica == consumer {
            return Eligibility::Now;
        }
        let promise = Promise { replica: route.replica.clone(), until: Duration::from_millis(route.until_ms) };
        let alive = |replica: &str| self.alive_until(deployment, replica).is_some_and(|until| now_ms < until);
        if may_take(Some(&promise), consumer, Duration::from_millis(now_ms), alive) {
            return Eligibility::Now;
        }
        let alive_until = self.alive_until(deployment, &route.replica).unwrap_or(now_ms);
        Eligibility::From(alive_until.min(route.until_ms))
    }

    /// Forget consumers not seen for ten liveness windows (bounded memory).
    pub fn sweep(&mut self, now_ms: u64) {
        let keep = u64::try_from(self.liveness.as_millis()).unwrap_or(u64::MAX).saturating_mul(10);
        for of_deployment in self.consumers.values_mut() {
            of_deployment.retain(|_, seen| seen.waiting > 0 || now_ms.saturating_sub(seen.at) < keep);
        }
        self.consumers.retain(|_, of_deployment| !of_deployment.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(replica: &str, until_ms: u64) -> JobRoute {
        JobRoute {
            replica: replica.into(),
            until_ms,
        }
    }

    #[test]
    fn unrouted_and_own_jobs_are_takeable_others_wait_for_the_promise_or_liveness() {
        let mut r = Routing::new(Duration::from_millis(500));
        r.seen("d", "a", 1_000);
        assert_eq!(r.eligible("d", None, "b", 1_000), Eligibility::Now);
        let to_a = route("a", 3_000);
        assert_eq!(r.eligible("d", Some(&to_a), "a", 1_000), Eligibility::Now);
        // a is alive until 1,500: b waits until then (before the promise ends).
        assert_eq!(
            r.eligible("d", Some(&to_a), "b", 1_200),
            Eligibility::From(1_500)
        );
        assert_eq!(
            r.eligible("d", Some(&to_a), "b", 1_500),
            Eligibility::Now,
            "a went quiet"
        );
        r.seen("d", "a", 2_800);
        assert_eq!(
            r.eligible("d", Some(&to_a), "b", 2_900),
            Eligibility::From(3_000),
            "alive, but the promise ends first"
        );
        assert_eq!(r.eligible("d", Some(&to_a), "b", 3_000), Eligibility::Now);
        // A replica this queue never saw, or of another deployment, holds nothing.
        assert_eq!(
            r.eligible("d", Some(&route("ghost", 9_000)), "b", 1_000),
            Eligibility::Now
        );
        assert_eq!(r.eligible("e", Some(&to_a), "b", 2_900), Eligibility::Now);
    }

    #[test]
    fn a_replica_waiting_in_lease_is_alive_however_long_it_waits() {
        let mut r = Routing::new(Duration::from_millis(100));
        r.waiting("d", "a", true, 1_000);
        assert_eq!(
            r.eligible("d", Some(&route("a", 9_000)), "b", 5_000),
            Eligibility::From(9_000)
        );
        r.waiting("d", "a", false, 5_000);
        assert_eq!(
            r.eligible("d", Some(&route("a", 9_000)), "b", 5_050),
            Eligibility::From(5_100)
        );
        assert_eq!(
            r.eligible("d", Some(&route("a", 9_000)), "b", 5_100),
            Eligibility::Now
        );
    }

    #[test]
    fn a_replica_that_stops_accepting_holds_no_routed_job() {
        let mut r = Routing::new(Duration::from_millis(500));
        r.waiting("d", "a", true, 1_000);
        let to_a = route("a", 9_000);
        assert_eq!(r.eligible("d", Some(&to_a), "b", 1_100), Eligibility::From(9_000));
        r.accepting("d", "a", false);
        assert_eq!(r.eligible("d", Some(&to_a), "b", 1_100), Eligibility::Now, "draining");
        assert_eq!(r.eligible("d", Some(&to_a), "a", 1_100), Eligibility::Now, "its own jobs it may still take");
        r.accepting("d", "a", true);
        assert_eq!(r.eligible("d", Some(&to_a), "b", 1_100), Eligibility::From(9_000));
    }

    #[test]
    fn seen_never_goes_back_in_time_and_sweep_forgets_the_long_gone() {
        let mut r = Routing::new(Duration::from_millis(100));
        r.seen("d", "a", 5_000);
        r.seen("d", "a", 4_000);
        assert_eq!(
            r.eligible("d", Some(&route("a", 10_000)), "b", 5_050),
            Eligibility::From(5_100)
        );
        r.sweep(5_500);
        assert_eq!(
            r.eligible("d", Some(&route("a", 10_000)), "b", 5_050),
            Eligibility::From(5_100)
        );
        r.sweep(7_000);
        assert_eq!(
            r.eligible("d", Some(&route("a", 10_000)), "b", 5_050),
            Eligibility::Now,
            "forgotten"
        );
    }
}
