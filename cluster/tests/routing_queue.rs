//! Routed jobs ([`swell_cluster::routing`]), on the embedded queue and on Redis alike: a
//! job promised to a replica goes to that replica; others pass it over only while the
//! promise holds and the replica is alive and taking work; priorities still come first;
//! a blocked `lease` of another replica wakes and takes the job when the promise lapses;
//! and replicas' reports are kept, replaced and forgotten.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::backend::{Backend, Settings};
use swell_cluster::{
    unix_millis, AdmissionLimits, Job, JobRoute, PrefixBlocks, Priority, Queue, ReplicaReport,
};

const LIMITS: AdmissionLimits = AdmissionLimits {
    max_queue_depth: 100,
};
const TTL: Duration = Duration::from_secs(30);
const NOW: Duration = Duration::ZERO;

fn job(id: &str, priority: Priority, route: Option<(&str, Duration)>) -> Job {
    let route = route.map(|(replica, bound)| JobRoute { replica: replica.into(), until_ms: unix_millis() + bound.as_millis() as u64 });
    Job { priority, route, ..common::job(id) }
}

async fn ids(q: &Arc<dyn Queue>, consumer: &str, n: usize, block: Duration) -> Vec<String> {
    q.lease("d", consumer, n, TTL, block)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.job.id.to_string())
        .collect()
}

async fn start(backend: Backend, liveness: Duration) -> common::backend::Harness {
    backend.start(Settings { route_liveness: liveness, ..Settings::default() }).await
}

mod scenarios {
    use super::*;

    pub async fn a_routed_job_goes_to_its_replica_and_others_take_the_rest_in_order(backend: Backend) {
        let h = start(backend, Duration::from_secs(30)).await;
        let q = &h.queue;
        // Both replicas have been seen (they lease in a loop).
        assert!(ids(q, "a", 1, NOW).await.is_empty());
        assert!(ids(q, "b", 1, NOW).await.is_empty());
        q.enqueue(
            job(
                "for-a",
                Priority::Normal,
                Some(("a", Duration::from_secs(30))),
            ),
            LIMITS,
        )
        .await
        .unwrap();
        q.enqueue(job("free-1", Priority::Normal, None), LIMITS)
            .await
            .unwrap();
        q.enqueue(
            job(
                "for-b",
                Priority::Normal,
                Some(("b", Duration::from_secs(30))),
            ),
            LIMITS,
        )
        .await
        .unwrap();
        q.enqueue(job("free-2", Priority::Low, None), LIMITS)
            .await
            .unwrap();
        // b passes over a's job, takes the next it may in service order.
        assert_eq!(ids(q, "b", 2, NOW).await, ["free-1", "for-b"]);
        assert_eq!(ids(q, "a", 5, NOW).await, ["for-a", "free-2"]);
        // Positions still count every waiting job in service order.
        q.enqueue(
            job(
                "for-a-2",
                Priority::High,
                Some(("a", Duration::from_secs(30))),
            ),
            LIMITS,
        )
        .await
        .unwrap();
        q.enqueue(job("free-3", Priority::Normal, None), LIMITS)
            .await
            .unwrap();
        assert_eq!(q.position("d", "free-3").await.unwrap(), Some(2));
        // Priorities come first for the replica a high job is routed to.
        assert_eq!(ids(q, "a", 1, NOW).await, ["for-a-2"]);
    }

    pub async fn a_promise_ends_with_its_bound_or_its_replica_and_hand_backs_are_free(backend: Backend) {
        let h = start(backend, Duration::from_millis(300)).await;
        let q = &h.queue;
        assert!(ids(q, "a", 1, NOW).await.is_empty());
        // Bound: a is alive, but the promise lapses after 200 ms.
        q.enqueue(
            job(
                "x",
                Priority::Normal,
                Some(("a", Duration::from_millis(200))),
            ),
            LIMITS,
        )
        .await
        .unwrap();
        assert!(
            ids(q, "b", 1, NOW).await.is_empty(),
            "promised to a live replica"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(ids(q, "b", 1, NOW).await, ["x"], "the promise lapsed");
        // Liveness: a promise of 60 s to a replica silent for longer than 300 ms.
        q.enqueue(
            job("y", Priority::Normal, Some(("a", Duration::from_secs(60)))),
            LIMITS,
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(
            ids(q, "b", 1, NOW).await,
            ["y"],
            "a went quiet: nobody waits for it"
        );
        // A job routed to a replica this queue never saw is free.
        q.enqueue(
            job(
                "z",
                Priority::Normal,
                Some(("ghost", Duration::from_secs(60))),
            ),
            LIMITS,
        )
        .await
        .unwrap();
        assert_eq!(ids(q, "b", 1, NOW).await, ["z"]);
        // A replica that hands a job back gives up its route.
        assert!(ids(q, "a", 1, NOW).await.is_empty());
        q.enqueue(
            job("w", Priority::Normal, Some(("a", Duration::from_secs(60)))),
            LIMITS,
        )
        .await
        .unwrap();
        let lease = q.lease("d", "a", 1, TTL, NOW).await.unwrap().remove(0);
        assert!(q.release(&lease.lease).await.unwrap());
        assert_eq!(ids(q, "b", 1, NOW).await, ["w"]);
    }

    pub async fn a_replica_waiting_in_lease_keeps_its_jobs_and_another_wakes_when_the_bound_passes(backend: Backend) {
        let h = start(backend, Duration::from_millis(100)).await;
        let q = &h.queue;
        // a blocks in lease (alive however long), taking nothing yet.
        let qa = h.queue.clone();
        let a = tokio::spawn(async move { ids(&qa, "a", 1, Duration::from_millis(600)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A job for a: a wakes and takes it, b (also blocked) does not.
        let qb = h.queue.clone();
        let b = tokio::spawn(async move { ids(&qb, "b", 1, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        q.enqueue(
            job(
                "for-a",
                Priority::Normal,
                Some(("a", Duration::from_secs(60))),
            ),
            LIMITS,
        )
        .await
        .unwrap();
        assert_eq!(a.await.unwrap(), ["for-a"]);
        // a stays alive (it renews its lease every 30 ms) but is busy; b waits in lease. A job
        // for a with a 300 ms bound: b takes it once the bound passes, with no new enqueue to
        // wake it, and not before.
        let qr = h.queue.clone();
        let renewing = tokio::spawn(async move {
            let lease = swell_cluster::LeaseRef {
                job_id: "for-a".into(),
                deployment: "d".into(),
                consumer: "a".into(),
                epoch: 1,
            };
            loop {
                qr.renew(std::slice::from_ref(&lease), TTL).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
        let started = std::time::Instant::now();
        q.enqueue(
            job(
                "late",
                Priority::Normal,
                Some(("a", Duration::from_millis(300))),
            ),
            LIMITS,
        )
        .await
        .unwrap();
        assert_eq!(b.await.unwrap(), ["late"]);
        let waited = started.elapsed();
        renewing.abort();
        assert!(
            waited >= Duration::from_millis(250),
            "b took it before the bound ({waited:?})"
        );
        assert!(
            waited < Duration::from_secs(4),
            "b's lease woke at the bound, not at its deadline ({waited:?})"
        );
    }

    fn report(replica: &str, accepting: bool) -> ReplicaReport {
        ReplicaReport {
            replica: replica.into(),
            at_ms: unix_millis(),
            accepting,
            free_slots: 4,
            running: 0,
            pending_prefill_tokens: 0,
            prefix_version: Some(1),
        }
    }

    fn blocks(version: u64) -> PrefixBlocks {
        PrefixBlocks { version, block_tokens: 16, blocks: vec![11, 12, version] }
    }

    pub async fn replica_reports_are_kept_replaced_and_forgotten_and_a_draining_replica_frees_its_jobs(backend: Backend) {
        let h = start(backend, Duration::from_secs(30)).await;
        let q = &h.queue;
        assert!(q.replica_reports("d").await.unwrap().is_empty());
        q.report_replica("d", &report("a", true), Some(&blocks(1))).await.unwrap();
        q.report_replica("d", &report("b", true), None).await.unwrap();
        let mut stale = report("c", true);
        stale.at_ms -= ReplicaReport::STALE_AFTER;
        q.report_replica("d", &stale, None).await.unwrap();
        let mut seen: Vec<String> = q.replica_reports("d").await.unwrap().into_iter().map(|r| r.replica).collect();
        seen.sort();
        assert_eq!(seen, ["a", "b"], "a stale report is not served");
        assert!(q.replica_reports("other").await.unwrap().is_empty());
        // Blocks are kept until replaced; a report without blocks leaves them as they are.
        assert_eq!(q.replica_prefix("d", "a").await.unwrap(), Some(blocks(1)));
        assert_eq!(q.replica_prefix("d", "b").await.unwrap(), None);
        q.report_replica("d", &report("a", true), None).await.unwrap();
        assert_eq!(q.replica_prefix("d", "a").await.unwrap(), Some(blocks(1)));
        q.report_replica("d", &report("a", true), Some(&blocks(2))).await.unwrap();
        assert_eq!(q.replica_prefix("d", "a").await.unwrap(), Some(blocks(2)));

        // a waits in lease (alive); a job promised to it is passed over by b.
        let waiting = {
            let q = h.queue.clone();
            tokio::spawn(async move { ids(&q, "a", 1, Duration::from_millis(50)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let _ = waiting.await.unwrap();
        q.enqueue(job("for-a", Priority::Normal, Some(("a", Duration::from_secs(30)))), LIMITS).await.unwrap();
        assert!(ids(q, "b", 1, NOW).await.is_empty(), "a is alive and its promise holds");
        // a starts draining: its report says so, and b may take the job at once.
        q.report_replica("d", &report("a", false), None).await.unwrap();
        assert_eq!(ids(q, "b", 1, NOW).await, ["for-a"]);
        let a = q.replica_reports("d").await.unwrap().into_iter().find(|r| r.replica == "a").unwrap();
        assert!(!a.accepting);
        // b retires: its report goes, and jobs routed to it are free.
        q.forget_replica("d", "b").await.unwrap();
        q.forget_replica("d", "a").await.unwrap();
        assert_eq!(q.replica_prefix("d", "a").await.unwrap(), None, "a retired: its blocks went too");
        q.report_replica("d", &report("a", true), None).await.unwrap();
        q.enqueue(job("for-b", Priority::Normal, Some(("b", Duration::from_secs(30)))), LIMITS).await.unwrap();
        assert_eq!(ids(q, "c", 1, NOW).await, ["for-b"]);
        let left: Vec<String> = q.replica_reports("d").await.unwrap().into_iter().map(|r| r.replica).collect();
        assert_eq!(left, ["a"]);
    }

    pub async fn passed_over_jobs_count_as_waiting_and_can_be_cancelled(backend: Backend) {
        let h = start(backend, Duration::from_secs(30)).await;
        let q = &h.queue;
        assert!(ids(q, "a", 1, NOW).await.is_empty());
        q.enqueue(job("for-a-1", Priority::Normal, Some(("a", Duration::from_secs(30)))), LIMITS).await.unwrap();
        q.enqueue(job("for-a-2", Priority::Normal, Some(("a", Duration::from_secs(30)))), LIMITS).await.unwrap();
        q.enqueue(job("free", Priority::Low, None), LIMITS).await.unwrap();
        // b passes over both of a's jobs and takes the low one.
        assert_eq!(ids(q, "b", 5, NOW).await, ["free"]);
        let depth = q.depth("d").await.unwrap();
        assert_eq!((depth.waiting, depth.leased), (2, 1), "passed-over jobs still wait");
        assert!(depth.oldest_waiting_enqueued_at_ms.is_some());
        assert_eq!(q.position("d", "for-a-1").await.unwrap(), Some(1));
        // A new normal job stands behind them.
        q.enqueue(job("later", Priority::Normal, None), LIMITS).await.unwrap();
        assert_eq!(q.position("d", "later").await.unwrap(), Some(3));
        // Cancelling one removes it wherever it waits.
        q.cancel("for-a-1").await.unwrap();
        assert_eq!(q.depth("d").await.unwrap().waiting, 2);
        assert_eq!(ids(q, "a", 5, NOW).await, ["for-a-2", "later"]);
        assert_eq!(q.depth("d").await.unwrap().waiting, 0);
        let events = q.read_output("for-a-1", 0, NOW).await.unwrap();
        assert!(matches!(&events[0].event, swell_cluster::OutputEvent::Failed { code, .. } if code == "cancelled"));
    }
}

crate::conformance!(
    a_routed_job_goes_to_its_replica_and_others_take_the_rest_in_order,
    a_promise_ends_with_its_bound_or_its_replica_and_hand_backs_are_free,
    a_replica_waiting_in_lease_keeps_its_jobs_and_another_wakes_when_the_bound_passes,
    replica_reports_are_kept_replaced_and_forgotten_and_a_draining_replica_frees_its_jobs,
    passed_over_jobs_count_as_waiting_and_can_be_cancelled,
);
