//! [`WaitingJobs`]: the requests waiting for a replica, in a shared queue any replica
//! takes from and in per-replica queues of jobs promised to one replica.
//!
//! A routed job is promised to its replica ([`swell_router::Promise`]) until its bound
//! runs out or the replica stops taking work; then it moves to the shared queue, where
//! any replica may take it (as [`swell_router::may_take`] allows). A replica with room
//! takes its own promised jobs first, then the shared ones, oldest first in each.
//! Requests are numbered in arrival order, so "oldest" is "lowest number". Without
//! routing every job goes to the shared queue: one FIFO queue.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use swell_router::Promise;

/// A job's promise and what routing expected it to prefill there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Promised {
    replica: usize,
    promise: Promise,
    /// Prompt tokens routing expected it to prefill on its replica.
    prefill_tokens: u64,
    /// Still in its replica's queue (not moved to the shared one).
    holding: bool,
}

/// Where a replica's next job comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Promised to it.
    Own,
    /// The shared queue.
    Shared,
}

/// The waiting requests.
#[derive(Debug, Default)]
pub struct WaitingJobs {
    shared: BTreeSet<usize>,
    /// Replica → the jobs promised to it that it still holds (no empty sets).
    own: BTreeMap<usize, BTreeSet<usize>>,
    /// Replica → the prompt tokens of its held jobs, as routing expected them.
    own_prefill_tokens: HashMap<usize, u64>,
    /// Job → its promise, while it waits.
    promises: HashMap<usize, Promised>,
}

impl WaitingJobs {
    /// Waiting jobs, shared and promised.
    pub fn len(&self) -> usize {
        self.shared.len() + self.own.values().map(BTreeSet::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.is_empty() && self.own.is_empty()
    }

    /// The oldest waiting job.
    pub fn oldest(&self) -> Option<usize> {
        let own = self.own.values().filter_map(|jobs| jobs.first().copied());
        self.shared.first().copied().into_iter().chain(own).min()
    }

    /// Whether any replica may take a job now.
    pub fn has_shared(&self) -> bool {
        !self.shared.is_empty()
    }

    /// Any replica may take `job`.
    pub fn push_shared(&mut self, job: usize) {
        self.shared.insert(job);
    }

    /// `job` waits for `replica` under `promise`; routing expects it to prefill
    /// `prefill_tokens` there.
    pub fn push_promised(
        &mut self,
        job: usize,
        replica: usize,
        promise: Promise,
        prefill_tokens: u64,
    ) {
        self.own.entry(replica).or_default().insert(job);
        *self.own_prefill_tokens.entry(replica).or_default() += prefill_tokens;
        self.promises.insert(
            job,
            Promised {
                replica,
                promise,
                prefill_tokens,
                holding: true,
            },
        );
    }

    /// The promise of `job` ran out: if its replica still holds it, it moves to the
    /// shared queue. True when it moved.
    pub fn promise_ended(&mut self, job: usize) -> bool {
        let Some(promised) = self.promises.get(&job).filter(|p| p.holding) else {
            return false;
        };
        let replica = promised.replica;
        self.release_held(replica, job);
        self.shared.insert(job);
        true
    }

    /// `replica` stops taking work (draining or gone): every job promised to it moves to
    /// the shared queue. Returns how many moved.
    pub fn replica_left(&mut self, replica: usize) -> usize {
        let Some(jobs) = self.own.remove(&replica) else {
            return 0;
        };
        self.own_prefill_tokens.remove(&replica);
        for &job in &jobs {
            if let Some(promised) = self.promises.get_mut(&job) {
                promised.holding = false;
            }
        }
        let moved = jobs.len();
        self.shared.extend(jobs);
        moved
    }

    /// The job `replica` would take next, and from where: its own oldest, else the
    /// oldest shared one.
    pub fn next_for(&self, replica: usize) -> Option<(usize, Source)> {
        if let Some(&job) = self.own.get(&replica).and_then(BTreeSet::first) {
            return Some((job, Source::Own));
        }
        self.shared.first().map(|&job| (job, Source::Shared))
    }

    /// Takes `job` out of `source` (as [`WaitingJobs::next_for`] returned it) for
    /// `replica`.
    pub fn take(&mut self, job: usize, replica: usize, source: Source) {
        match source {
            Source::Own => self.release_held(replica, job),
            Source::Shared => {
                self.shared.remove(&job);
            }
        }
        self.promises.remove(&job);
    }

    /// The promise `job` waits under, if any (kept after it moved to the shared queue).
    pub fn promise(&self, job: usize) -> Option<&Promise> {
        self.promises.get(&job).map(|p| &p.promise)
    }

    /// Prompt tokens of the jobs `replica` holds, as routing expected them.
    pub fn promised_prefill_tokens(&self, replica: usize) -> u64 {
        self.own_prefill_tokens.get(&replica).copied().unwrap_or(0)
    }

    /// Removes `job` from the jobs `replica` holds.
    fn release_held(&mut self, replica: usize, job: usize) {
        let promised = self
            .promises
            .get_mut(&job)
            .expect("a held job has a promise");
        debug_assert_eq!(promised.replica, replica);
        promised.holding = false;
        let tokens = promised.prefill_tokens;
        if let Some(jobs) = self.own.get_mut(&replica) {
            jobs.remove(&job);
            if jobs.is_empty() {
                self.own.remove(&replica);
            }
        }
        if let Some(total) = self.own_prefill_tokens.get_mut(&replica) {
            *total -= tokens;
            if *total == 0 {
                self.own_prefill_tokens.remove(&replica);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn promise(replica: &str) -> Promise {
        Promise::new(replica, Duration::ZERO, Duration::from_secs(2))
    }

    #[test]
    fn a_replica_takes_its_own_jobs_first_then_the_oldest_shared() {
        let mut waiting = WaitingJobs::default();
        waiting.push_shared(0);
        waiting.push_promised(1, 7, promise("r7"), 100);
        waiting.push_promised(2, 8, promise("r8"), 50);
        waiting.push_shared(3);
        assert_eq!((waiting.len(), waiting.oldest()), (4, Some(0)));
        assert_eq!(waiting.promised_prefill_tokens(7), 100);
        assert_eq!(waiting.next_for(7), Some((1, Source::Own)));
        waiting.take(1, 7, Source::Own);
        assert_eq!(waiting.promised_prefill_tokens(7), 0);
        assert_eq!(waiting.next_for(7), Some((0, Source::Shared)));
        waiting.take(0, 7, Source::Shared);
        // Job 2 is r8's until its promise ends.
        assert_eq!(waiting.next_for(7), Some((3, Source::Shared)));
        assert!(waiting.promise_ended(2));
        assert!(!waiting.promise_ended(2), "moved once");
        assert_eq!(waiting.promised_prefill_tokens(8), 0);
        assert_eq!(waiting.next_for(7), Some((2, Source::Shared)));
        assert_eq!(
            waiting.promise(2).unwrap().replica,
            "r8",
            "kept for may_take"
        );
        waiting.take(2, 7, Source::Shared);
        assert_eq!(waiting.promise(2), None);
        assert_eq!(waiting.len(), 1);
    }

    #[test]
    fn the_jobs_of_a_replica_that_leaves_go_to_the_shared_queue() {
        let mut waiting = WaitingJobs::default();
        waiting.push_promised(4, 1, promise("r1"), 10);
        waiting.push_promised(5, 1, promise("r1"), 10);
        assert_eq!(waiting.next_for(2), None);
        assert!(!waiting.has_shared());
        assert_eq!(waiting.replica_left(1), 2);
        assert_eq!(waiting.promised_prefill_tokens(1), 0);
        assert_eq!(waiting.next_for(2), Some((4, Source::Shared)));
        assert!(!waiting.promise_ended(4), "no longer held");
        assert_eq!(waiting.len(), 2);
    }
}
