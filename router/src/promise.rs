//! [`Promise`]: a routed job waits for its replica for a bounded time, then any replica
//! may take it, so routing never starves a job.
//!
//! A queue keeps its own order (priority first, then age) and, walking it, lets
//! consumer X take a job when [`may_take`] says so: the job is unpromised, promised to X,
//! its promise has run out, or the replica it was promised to is gone or draining.
//! Routing thus only filters within the queue's order; it never reorders it.

use std::time::Duration;

/// How long a routed job waits for its replica before any replica may take it.
pub const DEFAULT_PROMISE_BOUND: Duration = Duration::from_secs(2);

/// A job promised to `replica` until `until` (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promise {
    pub replica: String,
    pub until: Duration,
}

impl Promise {
    /// A promise to `replica` from `now` for `bound`.
    pub fn new(replica: impl Into<String>, now: Duration, bound: Duration) -> Self {
        Self {
            replica: replica.into(),
            until: now.saturating_add(bound),
        }
    }

    /// At `now` and after, the promise no longer holds.
    pub fn is_expired(&self, now: Duration) -> bool {
        now >= self.until
    }
}

/// Whether `consumer` may take a job with `promise` at `now`: true when the job is
/// unpromised, promised to `consumer`, promised until before `now`, or promised to a
/// replica that `alive` says is gone or draining (`alive(id)`: the replica lives and
/// takes work).
pub fn may_take(
    promise: Option<&Promise>,
    consumer: &str,
    now: Duration,
    alive: impl Fn(&str) -> bool,
) -> bool {
    match promise {
        None => true,
        Some(promise) => {
            promise.replica == consumer || promise.is_expired(now) || !alive(&promise.replica)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promised_job_is_takeable_by_others_after_its_bound_or_when_its_replica_is_dead() {
        let t = Duration::from_secs;
        let promise = Promise::new("a", t(10), DEFAULT_PROMISE_BOUND);
        assert_eq!(promise.until, t(12));
        let alive = |_: &str| true;
        assert!(may_take(None, "b", t(10), alive), "unpromised");
        assert!(
            may_take(Some(&promise), "a", t(10), alive),
            "its own replica"
        );
        assert!(
            !may_take(Some(&promise), "b", t(10), alive),
            "another, within the bound"
        );
        assert!(!may_take(
            Some(&promise),
            "b",
            t(12) - Duration::from_nanos(1),
            alive
        ));
        assert!(may_take(Some(&promise), "b", t(12), alive), "at the bound");
        assert!(may_take(Some(&promise), "b", t(30), alive), "after it");
        let a_is_dead = |id: &str| id != "a";
        assert!(
            may_take(Some(&promise), "b", t(10), a_is_dead),
            "its replica is dead or draining"
        );
        assert!(may_take(Some(&promise), "a", t(10), a_is_dead));
    }
}
