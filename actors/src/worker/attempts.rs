//! [`Attempts`]: the jobs a replica holds, one attempt (lease epoch) each, and the engine
//! id of each attempt.
//!
//! The queue may hand a job back to the replica that last held it: its lease expired
//! while its traffic to Redis was delayed or cut off, the job was reclaimed, and this
//! replica leased it again before it learned the first lease was lost. The two attempts
//! must not be confused. The engine knows each attempt by its own id (the job id and the
//! epoch, [`Attempts::engine_id`]), so an output of the superseded attempt, still on its
//! way to the publisher, is dropped instead of being stored under the new lease (the
//! new attempt resumes after what was stored, and would repeat those tokens), and
//! forgetting a lost lease forgets only that epoch, never the attempt that replaced it.

use std::collections::HashMap;

use swell_cluster::{JobId, LeaseRef};

/// One held attempt.
#[derive(Debug, Clone)]
struct Held {
    lease: LeaseRef,
    /// The sequence number of the last event stored for the job (from the lease's
    /// `resume_after_seq`, then each accepted append): every append names it, so the
    /// queue stores a retried append's events only if its first try was not stored (the
    /// reply lost, e.g. Redis died right after writing, or the first try ran late).
    last_seq: u64,
}

/// The attempts a replica holds, by job.
#[derive(Debug, Default)]
pub(super) struct Attempts {
    held: HashMap<JobId, Held>,
}

impl Attempts {
    /// The id the engine knows this attempt by.
    pub(super) fn engine_id(lease: &LeaseRef) -> String {
        format!("{}#{}", lease.job_id, lease.epoch)
    }

    /// Hold `lease` (its events so far end at `last_seq`). Answers the lease of an earlier
    /// attempt at the same job that this one supersedes, if this replica still held it.
    pub(super) fn hold(&mut self, lease: LeaseRef, last_seq: u64) -> Option<LeaseRef> {
        let job = lease.job_id.clone();
        self.held.insert(job, Held { lease, last_seq }).map(|old| old.lease)
    }

    /// The lease of the attempt the engine knows as `engine_id`, if it is still held (not
    /// ended, not superseded).
    pub(super) fn current(&self, engine_id: &str) -> Option<LeaseRef> {
        let (job, epoch) = engine_id.rsplit_once('#')?;
        let held = self.held.get(job)?;
        (held.lease.epoch.to_string() == epoch).then(|| held.lease.clone())
    }

    /// Whether `lease` (that epoch) is still held.
    pub(super) fn holds(&self, lease: &LeaseRef) -> bool {
        self.held.get(&lease.job_id).is_some_and(|held| held.lease.epoch == lease.epoch)
    }

    /// Stop holding `lease`; true if it was held (a later attempt is left alone).
    pub(super) fn forget(&mut self, lease: &LeaseRef) -> bool {
        if !self.holds(lease) {
            return false;
        }
        self.held.remove(&lease.job_id);
        true
    }

    /// The last stored event's sequence number, while `lease` is held.
    pub(super) fn last_seq(&self, lease: &LeaseRef) -> Option<u64> {
        self.held.get(&lease.job_id).filter(|held| held.lease.epoch == lease.epoch).map(|held| held.last_seq)
    }

    /// Record that `lease`'s events up to `seq` are stored (ignored once it is not held).
    pub(super) fn stored(&mut self, lease: &LeaseRef, seq: u64) {
        if let Some(held) = self.held.get_mut(&lease.job_id).filter(|held| held.lease.epoch == lease.epoch) {
            held.last_seq = seq;
        }
    }

    /// Every held lease.
    pub(super) fn leases(&self) -> Vec<LeaseRef> {
        self.held.values().map(|held| held.lease.clone()).collect()
    }

    /// Stop holding everything; answers what was held.
    pub(super) fn take_all(&mut self) -> Vec<LeaseRef> {
        self.held.drain().map(|(_, held)| held.lease).collect()
    }

    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(job: &str, epoch: u32) -> LeaseRef {
        LeaseRef { job_id: job.into(), deployment: "d".into(), consumer: "r".into(), epoch }
    }

    #[test]
    fn a_superseded_attempt_is_no_longer_current_and_forgetting_it_keeps_the_new_one() {
        let mut a = Attempts::default();
        let (first, second) = (lease("j#1", 1), lease("j#1", 2));
        assert!(a.hold(first.clone(), 0).is_none());
        a.stored(&first, 3);
        let first_id = Attempts::engine_id(&first);
        assert_eq!(a.current(&first_id), Some(first.clone()));

        // The job comes back to this replica with a new epoch, resuming after event 3.
        assert_eq!(a.hold(second.clone(), 3), Some(first.clone()));
        assert_eq!(a.current(&first_id), None, "the first attempt's outputs are dropped");
        assert_eq!(a.current(&Attempts::engine_id(&second)), Some(second.clone()));

        // The first attempt's late news (lease lost, append fenced) changes nothing.
        a.stored(&first, 9);
        assert!(!a.forget(&first));
        assert!(a.holds(&second) && !a.holds(&first));
        assert_eq!(a.last_seq(&second), Some(3));
        assert_eq!(a.last_seq(&first), None);
        assert_eq!(a.len(), 1);

        assert!(a.forget(&second));
        assert!(a.is_empty());
    }

    #[test]
    fn engine_ids_name_the_job_even_when_its_id_holds_the_separator() {
        let mut a = Attempts::default();
        let l = lease("tenant#job#7", 12);
        a.hold(l.clone(), 0);
        assert_eq!(a.current(&Attempts::engine_id(&l)), Some(l.clone()));
        assert_eq!(a.current("tenant#job#7#11"), None);
        assert_eq!(a.current("tenant#job#7"), None);
        assert_eq!(a.take_all(), vec![l]);
        assert!(a.leases().is_empty());
    }
}
