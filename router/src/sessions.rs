//! Session affinity: [`SessionTable`] remembers which replica served each session, and
//! [`rendezvous`] places a session on a replica when the table has none alive.
//!
//! Rendezvous (highest-random-weight) hashing gives each (session, replica) pair a
//! weight and picks the replica of highest weight: when a replica joins or leaves, only
//! the sessions whose best replica it is move; every other session keeps its replica.
//!
//! **Bound.** The table holds at most `max_sessions` sessions (default
//! [`SessionTable::DEFAULT_MAX_SESSIONS`], 100,000, a few MiB). Past it the session
//! served least recently is forgotten; its next job goes to its rendezvous replica,
//! which is the one it had unless replicas came and went since.

use std::collections::{BTreeMap, HashMap};

use crate::hashing::{combine, hash_str};

/// The replica of highest rendezvous weight for `session` among `replicas`; ties (a
/// 64-bit collision) go to the lowest id. `None` without replicas.
pub fn rendezvous<'a>(
    session: u64,
    replicas: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    replicas
        .into_iter()
        .map(|id| (rendezvous_weight(session, id), id))
        .max_by(|(weight_a, id_a), (weight_b, id_b)| weight_a.cmp(weight_b).then(id_b.cmp(id_a)))
        .map(|(_, id)| id)
}

/// The weight of `replica` for `session`: higher wins.
pub fn rendezvous_weight(session: u64, replica: &str) -> u64 {
    combine(session, hash_str(replica))
}

/// Which replica served each session, the least recently served forgotten first past
/// `max_sessions`.
#[derive(Debug, Clone)]
pub struct SessionTable {
    /// Session → (replica, stamp of its last record).
    replicas: HashMap<u64, (String, u64)>,
    /// Stamp → session, oldest first.
    by_age: BTreeMap<u64, u64>,
    next_stamp: u64,
    max_sessions: usize,
}

impl Default for SessionTable {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_SESSIONS)
    }
}

impl SessionTable {
    /// The default bound: 100,000 sessions.
    pub const DEFAULT_MAX_SESSIONS: usize = 100_000;

    pub fn new(max_sessions: usize) -> Self {
        Self {
            replicas: HashMap::new(),
            by_age: BTreeMap::new(),
            next_stamp: 0,
            max_sessions: max_sessions.max(1),
        }
    }

    /// Records that `replica` served `session` (now its most recent).
    pub fn served(&mut self, session: u64, replica: &str) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some((old_replica, old_stamp)) = self.replicas.get_mut(&session) {
            self.by_age.remove(old_stamp);
            *old_stamp = stamp;
            if old_replica != replica {
                *old_replica = replica.to_string();
            }
        } else {
            if self.replicas.len() >= self.max_sessions {
                if let Some((_, oldest)) = self.by_age.pop_first() {
                    self.replicas.remove(&oldest);
                }
            }
            self.replicas.insert(session, (replica.to_string(), stamp));
        }
        self.by_age.insert(stamp, session);
    }

    /// The replica that last served `session`, if the table remembers it.
    pub fn replica(&self, session: u64) -> Option<&str> {
        self.replicas
            .get(&session)
            .map(|(replica, _)| replica.as_str())
    }

    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_sessions_of_a_replica_that_leaves() {
        let all = ["r0", "r1", "r2", "r3"];
        let without_r2 = ["r0", "r1", "r3"];
        let mut moved = 0;
        for session in 0..1_000u64 {
            let before = rendezvous(session, all).unwrap();
            let after = rendezvous(session, without_r2).unwrap();
            if before == "r2" {
                moved += 1;
                assert_ne!(after, "r2");
            } else {
                assert_eq!(before, after, "session {session} kept its replica");
            }
        }
        // About a quarter of the sessions were on r2.
        assert!((150..350).contains(&moved), "{moved}");
        assert_eq!(rendezvous(7, []), None);
    }

    #[test]
    fn the_table_forgets_the_least_recently_served_session_past_its_bound() {
        let mut table = SessionTable::new(2);
        table.served(1, "a");
        table.served(2, "b");
        table.served(1, "c");
        table.served(3, "d");
        assert_eq!(table.len(), 2);
        assert_eq!(table.replica(1), Some("c"), "refreshed, moved to c");
        assert_eq!(table.replica(2), None, "served least recently");
        assert_eq!(table.replica(3), Some("d"));
    }
}
