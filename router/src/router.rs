//! [`Router`]: a deployment's routing policy with the memory it needs (which replica
//! served each session). One [`Router::route`] per job as it is enqueued; one
//! [`Router::served`] when a replica takes a job.

use crate::chooser::{choose_cache_aware, Choice, JobView, ReplicaView};
use crate::policy::RoutingPolicy;
use crate::sessions::{rendezvous, SessionTable};

/// A routing policy and its session memory.
#[derive(Debug, Clone, Default)]
pub struct Router {
    policy: RoutingPolicy,
    sessions: SessionTable,
}

impl Router {
    /// A router with the default session bound ([`SessionTable::DEFAULT_MAX_SESSIONS`]).
    pub fn new(policy: RoutingPolicy) -> Self {
        Self::with_sessions(policy, SessionTable::default())
    }

    pub fn with_sessions(policy: RoutingPolicy, sessions: SessionTable) -> Self {
        Self { policy, sessions }
    }

    pub fn policy(&self) -> RoutingPolicy {
        self.policy
    }

    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// The replica to promise `job` to, among `replicas` that can take work; `None`:
    /// no preference, any replica may take it.
    ///
    /// - `any` ([`RoutingPolicy::AnyReplica`]) always returns `None`.
    /// - `cache-aware` ([`RoutingPolicy::CacheAware`]) returns [`choose_cache_aware`]'s choice.
    /// - `session` ([`RoutingPolicy::SessionAffine`]) returns the replica that last
    ///   served the job's session if it can take work, else the session's
    ///   [`rendezvous`] replica among those that can; `None` for a job without a
    ///   session.
    pub fn route<'a>(
        &self,
        job: &JobView,
        replicas: &[ReplicaView<'a>],
        prefill_tokens_per_second: f64,
    ) -> Option<Choice<'a>> {
        match self.policy {
            RoutingPolicy::AnyReplica => None,
            RoutingPolicy::CacheAware => {
                choose_cache_aware(job, replicas, prefill_tokens_per_second)
            }
            RoutingPolicy::SessionAffine => {
                let session = job.session?;
                let live = || replicas.iter().filter(|replica| replica.can_take_work);
                let previous = self
                    .sessions
                    .replica(session)
                    .and_then(|id| live().find(|replica| replica.id == id));
                let replica = match previous {
                    Some(replica) => replica,
                    None => {
                        let id = rendezvous(session, live().map(|replica| replica.id))?;
                        live().find(|replica| replica.id == id)?
                    }
                };
                Some(Choice::on(job, replica, prefill_tokens_per_second))
            }
        }
    }

    /// Records that `replica` took a job of `session`. Only session-affine routing
    /// remembers it (the others need no memory).
    pub fn served(&mut self, session: Option<u64>, replica: &str) {
        if let (RoutingPolicy::SessionAffine, Some(session)) = (self.policy, session) {
            self.sessions.served(session, replica);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefix_summary::PrefixSummary;

    fn views<'a>(ids: &[&'a str], summary: &'a PrefixSummary) -> Vec<ReplicaView<'a>> {
        ids.iter()
            .map(|id| ReplicaView {
                id,
                summary,
                queued_prefill_tokens: 0,
                running_sequences: 0,
                can_take_work: true,
            })
            .collect()
    }

    fn job(session: Option<u64>) -> JobView<'static> {
        JobView {
            block_hashes: &[],
            prompt_tokens: 100,
            block_tokens: 16,
            session,
        }
    }

    #[test]
    fn session_affinity_sticks_to_the_replica_that_served_and_moves_when_it_dies() {
        let empty = PrefixSummary::default();
        let three = ["r0", "r1", "r2"];
        let four = ["r0", "r1", "r2", "r3"];
        // A session whose rendezvous replica changes when r3 joins.
        let session = (0..).find(|&s| rendezvous(s, four) == Some("r3")).unwrap();
        let first = rendezvous(session, three).unwrap();
        let mut router = Router::new(RoutingPolicy::SessionAffine);
        let route = |router: &Router, replicas: &[ReplicaView]| {
            router
                .route(&job(Some(session)), replicas, 1_000.0)
                .map(|choice| choice.replica.to_string())
        };
        assert_eq!(
            route(&router, &views(&three, &empty)).as_deref(),
            Some(first)
        );
        router.served(Some(session), first);
        // r3 joins: the session stays where it was served.
        assert_eq!(
            route(&router, &views(&four, &empty)).as_deref(),
            Some(first)
        );
        // Another replica took a job of it (its promise ran out): it follows that one.
        let other = four
            .iter()
            .copied()
            .find(|&id| id != first && id != "r3")
            .unwrap();
        router.served(Some(session), other);
        assert_eq!(
            route(&router, &views(&four, &empty)).as_deref(),
            Some(other)
        );
        // That replica drains, then is gone: the session moves to its rendezvous replica.
        let mut draining = views(&four, &empty);
        draining
            .iter_mut()
            .filter(|v| v.id == other)
            .for_each(|v| v.can_take_work = false);
        assert_eq!(route(&router, &draining).as_deref(), Some("r3"));
        let alive: Vec<&str> = four.iter().copied().filter(|&id| id != other).collect();
        assert_eq!(
            route(&router, &views(&alive, &empty)).as_deref(),
            Some("r3")
        );
        // No session, no replica: no preference.
        assert_eq!(router.route(&job(None), &views(&four, &empty), 1.0), None);
        assert_eq!(route(&router, &[]), None);
    }

    #[test]
    fn any_replica_has_no_preference_and_remembers_nothing() {
        let empty = PrefixSummary::default();
        let mut router = Router::new(RoutingPolicy::AnyReplica);
        assert_eq!(
            router.route(&job(Some(1)), &views(&["r0"], &empty), 1.0),
            None
        );
        router.served(Some(1), "r0");
        assert!(router.sessions().is_empty());
        let cache_aware = Router::new(RoutingPolicy::CacheAware);
        let choice = cache_aware.route(&job(None), &views(&["r0", "r1"], &empty), 1.0);
        assert_eq!(choice.unwrap().replica, "r0");
    }
}
