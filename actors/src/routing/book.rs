//! [`RouteBook`]: a gateway's view of one deployment's replicas for routing, and the
//! jobs it promised them. Pure: no clock, no I/O; times are Unix ms passed in.
//!
//! - **Replicas** come from their [`ReplicaReport`]s. A replica whose engine reports its
//!   prefix cache is seen as it reports (its summary is rebuilt when the report's
//!   version moves); one whose engine cannot (an external engine) is seen through what
//!   this gateway sent it: the blocks of every job it started, bounded.
//! - **Promises**: a routed job counts on its replica (its uncached prompt as queued
//!   prefill, one slot of its room) until the replica starts it, the job ends, or the
//!   promise lapses; so a burst of jobs spreads instead of piling on one replica.
//! - **Started jobs** add their blocks to their replica's summary at once: the replica
//!   computes them now, and its next report confirms (or corrects) it.

use std::collections::HashMap;
use std::time::Duration;

use swell_cluster::{JobId, JobRoute, PrefixBlocks, ReplicaReport};
use swell_router::{JobView, PrefixSummary, ReplicaView, Router, RoutingPolicy};

/// What routing needs of a job: its prompt's block names (`llm::block_pool`'s routing
/// names), its length and its session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteRequest {
    pub block_hashes: Vec<u64>,
    pub prompt_tokens: u64,
    /// The conversation or agent (a hash of the tenant and its `user` field).
    pub session: Option<u64>,
}

/// How a routed job's start went, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// Not routed by this book (no preference, or routed before a restart).
    Unrouted,
    /// Started on the replica it was promised to.
    Kept,
    /// Started elsewhere (its promise lapsed, or its replica stopped taking work).
    Moved,
}

#[derive(Debug)]
struct ReplicaEntry {
    report: ReplicaReport,
    summary: PrefixSummary,
    /// The report version the summary was built from (`None`: built by this gateway).
    version: Option<u64>,
}

#[derive(Debug, Clone)]
struct Promised {
    replica: String,
    uncached_tokens: u64,
    until_ms: u64,
    /// When its replica started it (Unix ms): it still counts on the replica until a
    /// report made after that shows the replica's own count.
    started_ms: Option<u64>,
}

/// One deployment's routing view.
#[derive(Debug)]
pub struct RouteBook {
    router: Router,
    block_tokens: u64,
    promise_bound: Duration,
    replicas: HashMap<String, ReplicaEntry>,
    promised: HashMap<JobId, Promised>,
}

impl RouteBook {
    /// Block names count `block_tokens` tokens each (the engine's block size).
    pub fn new(policy: RoutingPolicy, block_tokens: u64, promise_bound: Duration) -> Self {
        Self {
            router: Router::new(policy),
            block_tokens: block_tokens.max(1),
            promise_bound,
            replicas: HashMap::new(),
            promised: HashMap::new(),
        }
    }

    pub fn policy(&self) -> RoutingPolicy {
        self.router.policy()
    }

    /// The replicas of `reports` whose blocks this view lacks: their report names a
    /// version of them it has not built its summary from.
    pub fn wanted_prefixes<'a>(&self, reports: &'a [ReplicaReport]) -> Vec<&'a str> {
        reports
            .iter()
            .filter(|report| {
                report.prefix_version.is_some()
                    && self.replicas.get(&report.replica).is_none_or(|entry| entry.version != report.prefix_version)
            })
            .map(|report| report.replica.as_str())
            .collect()
    }

    /// Replace the replica view with `reports` (the fresh ones: replicas not in it are
    /// gone), with the blocks fetched for those [`RouteBook::wanted_prefixes`] named.
    pub fn apply_reports(&mut self, reports: Vec<ReplicaReport>, mut prefixes: HashMap<String, PrefixBlocks>) {
        let reported_at: HashMap<&str, u64> = reports.iter().map(|r| (r.replica.as_str(), r.at_ms)).collect();
        self.promised.retain(|_, promised| match promised.started_ms {
            None => true,
            Some(started) => reported_at.get(promised.replica.as_str()).is_some_and(|&at| at < started),
        });
        let mut next = HashMap::with_capacity(reports.len());
        for report in reports {
            let mut entry = self.replicas.remove(&report.replica).unwrap_or_else(|| ReplicaEntry {
                report: report.clone(),
                summary: PrefixSummary::default(),
                version: None,
            });
            if let Some(prefix) = prefixes.remove(&report.replica) {
                if entry.version != Some(prefix.version) {
                    entry.summary = PrefixSummary::from_hashes(prefix.blocks, PrefixSummary::DEFAULT_MAX_BLOCKS);
                    entry.version = Some(prefix.version);
                }
            }
            entry.report = report;
            next.insert(entry.report.replica.clone(), entry);
        }
        self.replicas = next;
    }

    /// Replicas in the view.
    pub fn replicas(&self) -> usize {
        self.replicas.len()
    }

    /// Slots free and busy on the replicas that take work, as they last reported (for
    /// wait estimates on a gateway that runs no replicas).
    pub fn reported_slots(&self) -> (u64, u64) {
        self.replicas
            .values()
            .filter(|entry| entry.report.accepting)
            .fold((0, 0), |(free, busy), entry| (free + entry.report.free_slots, busy + entry.report.running))
    }

    /// The replica to promise job `job_id` to, and the promise (until `now_ms` + the
    /// bound); `None`: any replica may take it.
    pub fn route(&mut self, job_id: &str, request: &RouteRequest, now_ms: u64) -> Option<JobRoute> {
        if self.router.policy() == RoutingPolicy::AnyReplica {
            return None;
        }
        self.promised.retain(|_, promised| promised.until_ms > now_ms);
        let mut queued: HashMap<&str, (u64, u64)> = HashMap::new();
        for promised in self.promised.values() {
            let (tokens, jobs) = queued.entry(promised.replica.as_str()).or_default();
            *tokens += promised.uncached_tokens;
            *jobs += 1;
        }
        let mut ids: Vec<&String> = self.replicas.keys().collect();
        ids.sort();
        let views: Vec<ReplicaView> = ids
            .into_iter()
            .map(|id| {
                let entry = &self.replicas[id];
                let (promised_tokens, promised_jobs) = queued.get(id.as_str()).copied().unwrap_or_default();
                ReplicaView {
                    id,
                    summary: &entry.summary,
                    queued_prefill_tokens: entry.report.pending_prefill_tokens.saturating_add(promised_tokens),
                    running_sequences: entry.report.running,
                    // A full replica is not promised more: the job would wait for room
                    // that another replica has now.
                    can_take_work: entry.report.accepting && entry.report.free_slots > promised_jobs,
                }
            })
            .collect();
        let job = JobView {
            block_hashes: &request.block_hashes,
            prompt_tokens: request.prompt_tokens,
            block_tokens: self.block_tokens,
            session: request.session,
        };
        let choice = self.router.route(&job, &views, 0.0);
        tracing::debug!(
            job_id,
            blocks = request.block_hashes.len(),
            chosen = ?choice.map(|c| (c.replica, c.matched_blocks)),
            // (replica, matched blocks, queued prefill, running, can take work)
            replicas = ?views
                .iter()
                .map(|v| (v.id, v.summary.matched_blocks(&request.block_hashes), v.queued_prefill_tokens, v.running_sequences, v.can_take_work))
                .collect::<Vec<_>>(),
            "routing a job"
        );
        let choice = choice?;
        let replica = choice.replica.to_string();
        let until_ms = now_ms.saturating_add(u64::try_from(self.promise_bound.as_millis()).unwrap_or(u64::MAX));
        self.promised.insert(
            job_id.to_string(),
            Promised { replica: replica.clone(), uncached_tokens: choice.uncached_tokens, until_ms, started_ms: None },
        );
        Some(JobRoute { replica, until_ms })
    }

    /// Job `job_id` started on `replica`: its promise is settled, its blocks are now on
    /// that replica, and its session was served there.
    pub fn started(&mut self, job_id: &str, replica: &str, request: &RouteRequest, now_ms: u64) -> StartOutcome {
        let outcome = match self.promised.remove(job_id) {
            None => StartOutcome::Unrouted,
            Some(promised) if promised.replica == replica => StartOutcome::Kept,
            Some(_) => StartOutcome::Moved,
        };
        // Its prefill is on `replica` now, and shows in that replica's reports from the
        // next one on: until then it counts here.
        if outcome != StartOutcome::Unrouted || self.replicas.contains_key(replica) {
            let uncached_tokens = match self.replicas.get(replica) {
                Some(entry) => JobView {
                    block_hashes: &request.block_hashes,
                    prompt_tokens: request.prompt_tokens,
                    block_tokens: self.block_tokens,
                    session: None,
                }
                .uncached_tokens(entry.summary.matched_blocks(&request.block_hashes)),
                None => request.prompt_tokens,
            };
            let until_ms = now_ms.saturating_add(u64::try_from(self.promise_bound.as_millis()).unwrap_or(u64::MAX));
            let counted = Promised { replica: replica.to_string(), uncached_tokens, until_ms, started_ms: Some(now_ms) };
            self.promised.insert(job_id.to_string(), counted);
        }
        self.router.served(request.session, replica);
        if let Some(entry) = self.replicas.get_mut(replica) {
            for &hash in &request.block_hashes {
                if entry.summary.is_full() {
                    if entry.version.is_some() {
                        break;
                    }
                    // A record of this gateway's own: start over rather than stop
                    // learning (the replica's cache has turned over by now too).
                    entry.summary = PrefixSummary::default();
                }
                entry.summary.insert(hash);
            }
        }
        outcome
    }

    /// Job `job_id` ended (or will never start): it counts nowhere any more.
    pub fn ended(&mut self, job_id: &str) {
        self.promised.remove(job_id);
    }

    /// Promises outstanding (tests, metrics).
    pub fn promised(&self) -> usize {
        self.promised.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report, and the blocks it names (`None`: an engine that reports none).
    fn report(replica: &str, blocks: Option<Vec<u64>>, version: u64) -> (ReplicaReport, Option<PrefixBlocks>) {
        let report = ReplicaReport {
            replica: replica.into(),
            at_ms: 0,
            accepting: true,
            free_slots: 4,
            running: 0,
            pending_prefill_tokens: 0,
            prefix_version: blocks.is_some().then_some(version),
        };
        (report, blocks.map(|blocks| PrefixBlocks { version, block_tokens: 16, blocks }))
    }

    trait Apply {
        /// Apply the reports as a router does: fetching the blocks the book wants.
        fn apply(&mut self, reports: Vec<(ReplicaReport, Option<PrefixBlocks>)>);
    }

    impl Apply for RouteBook {
        fn apply(&mut self, reports: Vec<(ReplicaReport, Option<PrefixBlocks>)>) {
            let only: Vec<ReplicaReport> = reports.iter().map(|(r, _)| r.clone()).collect();
            let wanted: Vec<String> = self.wanted_prefixes(&only).into_iter().map(String::from).collect();
            let prefixes = reports
                .into_iter()
                .filter(|(r, _)| wanted.contains(&r.replica))
                .filter_map(|(r, p)| Some((r.replica, p?)))
                .collect();
            self.apply_reports(only, prefixes);
        }
    }

    fn request(blocks: std::ops::Range<u64>, session: Option<u64>) -> RouteRequest {
        let block_hashes: Vec<u64> = blocks.collect();
        RouteRequest { prompt_tokens: block_hashes.len() as u64 * 16 + 3, block_hashes, session }
    }

    #[test]
    fn a_job_goes_where_its_prefix_is_and_a_burst_spreads_by_promised_work() {
        let mut book = RouteBook::new(RoutingPolicy::CacheAware, 16, Duration::from_secs(2));
        book.apply(vec![report("r0", Some(vec![]), 1), report("r1", Some((0..40).collect()), 1)]);
        let route = book.route("j1", &request(0..50, None), 1_000).unwrap();
        assert_eq!(route, JobRoute { replica: "r1".into(), until_ms: 3_000 });
        // A burst of unrelated 20-block prompts: the first goes to r0 (nothing queued),
        // the second to r1 (r0 now has 323 promised tokens, r1 163), then they alternate by work.
        let a = book.route("j2", &request(100..120, None), 1_000).unwrap();
        let b = book.route("j3", &request(200..220, None), 1_000).unwrap();
        assert_eq!((a.replica.as_str(), b.replica.as_str()), ("r0", "r1"));
        assert_eq!(book.promised(), 3);
        // Started where promised, and elsewhere; an ended one is forgotten.
        assert_eq!(book.started("j1", "r1", &request(0..50, None), 1_100), StartOutcome::Kept);
        assert_eq!(book.started("j2", "r1", &request(100..120, None), 1_100), StartOutcome::Moved);
        book.ended("j3");
        assert_eq!(book.started("j9", "r0", &request(0..1, None), 1_100), StartOutcome::Unrouted);
        // Started jobs count on their replica until it reports after their start.
        assert_eq!(book.promised(), 3);
        let at = |mut r: (ReplicaReport, Option<PrefixBlocks>), at_ms| {
            r.0.at_ms = at_ms;
            r
        };
        book.apply(vec![at(report("r0", Some(vec![]), 1), 1_050), at(report("r1", Some((0..40).collect()), 1), 1_050)]);
        assert_eq!(book.promised(), 3, "reports from before the starts");
        book.apply(vec![at(report("r0", Some(vec![]), 1), 1_200), at(report("r1", Some((0..40).collect()), 1), 1_200)]);
        assert_eq!(book.promised(), 0);
        // j2's blocks are on r1 now: a job sharing them goes there.
        assert_eq!(book.route("j4", &request(100..110, None), 1_500).unwrap().replica, "r1");
        // Promises lapse at their bound.
        assert_eq!(book.promised(), 1);
        book.route("j5", &request(300..301, None), 3_500);
        assert_eq!(book.promised(), 1, "j4's promise lapsed; j5's is the only one");
    }

    #[test]
    fn full_draining_and_vanished_replicas_are_not_promised_work() {
        let mut book = RouteBook::new(RoutingPolicy::CacheAware, 16, Duration::from_secs(2));
        let mut full = report("r1", Some((0..40).collect()), 1);
        full.0.free_slots = 0;
        book.apply(vec![report("r0", Some(vec![]), 1), full]);
        assert_eq!(book.route("j1", &request(0..40, None), 0).unwrap().replica, "r0", "r1 is full");
        let mut draining = report("r1", Some((0..40).collect()), 2);
        draining.0.accepting = false;
        book.apply(vec![report("r0", Some(vec![]), 1), draining]);
        assert_eq!(book.route("j2", &request(0..40, None), 0).unwrap().replica, "r0", "r1 drains");
        // r0 has room for 4; two promised already: two more, then no replica can take it.
        assert!(book.route("j3", &request(0..1, None), 0).is_some());
        assert!(book.route("j4", &request(0..1, None), 0).is_some());
        assert_eq!(book.route("j5", &request(0..1, None), 0), None);
        book.apply(vec![]);
        assert_eq!(book.replicas(), 0);
        assert_eq!(book.route("j6", &request(0..1, None), 0), None);
    }

    #[test]
    fn an_engine_without_a_report_is_seen_through_the_jobs_it_started() {
        let mut book = RouteBook::new(RoutingPolicy::CacheAware, 16, Duration::from_secs(2));
        book.apply(vec![report("ext-0", None, 0), report("ext-1", None, 0)]);
        let first = book.route("j1", &request(0..30, None), 0).unwrap();
        assert_eq!(first.replica, "ext-0");
        // It started on ext-1 (its promise lapsed): the next turn follows it there.
        book.started("j1", "ext-1", &request(0..30, None), 0);
        book.ended("j1");
        // Reports keep coming (load only): the record stays.
        book.apply(vec![report("ext-0", None, 0), report("ext-1", None, 0)]);
        assert_eq!(book.route("j2", &request(0..35, None), 0).unwrap().replica, "ext-1");
        // A reporting engine's own report replaces the gateway's guess when its version moves.
        book.apply(vec![report("ext-0", None, 0), report("ext-1", Some(vec![]), 5)]);
        book.ended("j2");
        assert_eq!(book.route("j3", &request(0..35, None), 0).unwrap().replica, "ext-0");
    }

    #[test]
    fn session_policy_follows_the_replica_that_served_and_any_routes_nothing() {
        let mut book = RouteBook::new(RoutingPolicy::SessionAffine, 16, Duration::from_secs(2));
        book.apply(vec![report("r0", None, 0), report("r1", None, 0), report("r2", None, 0)]);
        let first = book.route("j1", &request(0..4, Some(77)), 0).unwrap().replica;
        let other = if first == "r0" { "r1" } else { "r0" };
        book.started("j1", other, &request(0..4, Some(77)), 0);
        assert_eq!(book.route("j2", &request(0..8, Some(77)), 0).unwrap().replica, other);
        assert_eq!(book.route("j3", &request(0..8, None), 0), None, "no session, no preference");
        let mut any = RouteBook::new(RoutingPolicy::AnyReplica, 16, Duration::from_secs(2));
        any.apply(vec![report("r0", Some((0..8).collect()), 1)]);
        assert_eq!(any.route("j1", &request(0..8, None), 0), None);
    }
}
