//! The queue's conformance suite, run against `InMemoryQueue` and `RedisQueue` alike,
//! plus what only Redis can do wrong (a crash, a blocked connection).
//!
//! The Redis tests start their own `redis-server` on a free port (`redis_queue::testing`);
//! they need `redis-server` installed (`apt-get install redis-server`) and fail without it.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use swell_cluster::redis_queue::testing::{RedisServer, RedisServerOptions};
use swell_cluster::{
    unix_millis, AdmissionLimits, AppendOutcome, Job,
    OutputEvent, OutputOwner, Priority, Queue, QueueError, RedisQueue, RedisQueueConfig,
};
use common::backend::{redis_config, Backend, Settings};
use common::{finished, job, tokens};
use tokio::time::Instant;

const LIMITS: AdmissionLimits = AdmissionLimits { max_queue_depth: 100 };
const LONG_TTL: Duration = Duration::from_secs(30);
const SHORT_TTL: Duration = Duration::from_millis(300);
const NO_BLOCK: Duration = Duration::ZERO;

/// A job of `priority`, enqueued at `enqueued_at_ms`.
fn job_at(id: &str, priority: Priority, enqueued_at_ms: u64) -> Job {
    Job { priority, enqueued_at_ms, ..job(id) }
}

fn ids(leases: &[swell_cluster::Lease]) -> Vec<&str> {
    leases.iter().map(|lease| lease.job.id.as_str()).collect()
}



fn failed_with(event: &OutputEvent, expected: &str) -> bool {
    matches!(event, OutputEvent::Failed { code, .. } if code == expected)
}

/// Retry `call` until it answers `Ok` (Redis coming back), for at most `limit`.
async fn eventually<T, F, Fut>(limit: Duration, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, QueueError>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(error) if Instant::now() < deadline => {
                assert_eq!(error.code(), "queue_unavailable", "{error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("still failing after {limit:?}: {error}"),
        }
    }
}

/// The same scenarios for every backend.
mod scenarios {
    use super::*;

    pub async fn enqueue_reports_positions_and_refuses_past_the_depth_limit(backend: Backend) {
        let h = backend.start(Settings::default()).await;
        let q = &h.queue;
        let limits = AdmissionLimits { max_queue_depth: 2 };
        assert_eq!(q.enqueue(job("a"), limits).await.unwrap().position, 1);
        assert_eq!(q.enqueue(job("b"), limits).await.unwrap().position, 2);
        let err = q.enqueue(job("c"), limits).await.unwrap_err();
        assert_eq!(err, QueueError::Full { deployment: "d".into(), depth: 2 });
        assert_eq!(q.position("d", "b").await.unwrap(), Some(2));
        assert!(matches!(q.position("d", "c").await, Err(QueueError::UnknownJob(_))), "a refused job is not queued");
        assert_eq!(q.enqueue(job("a"), LIMITS).await.unwrap_err(), QueueError::DuplicateJob("a".into()));
        // The refused id can be used again once there is room.
        assert_eq!(q.enqueue(job("c"), LIMITS).await.unwrap().position, 3);
    }

    pub async fn lease_takes_oldest_first_and_ack_finishes(backend: Backend) {
        let h = backend.start(Settings::default()).await;
        let q = &h.queue;
        let mut first = job("a");
        first.enqueued_at_ms = 1_000;
        q.enqueue(first, LIMITS).await.unwrap();
        for id in ["b", "c"] {
            q.enqueue(job(id), LIMITS).await.unwrap();
        }
        let depth = q.depth("d").await.unwrap();
        assert_eq!((depth.waiting, depth.leased, depth.oldest_waiting_enqueued_at_ms), (3, 0, Some(1_000)));
        let leases = q.lease("d", "w1", 2, LONG_TTL, NO_BLOCK).await.unwrap();
        let ids: Vec<_> = leases.iter().map(|l| l.job.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(leases[0].job, {
            let mut expected = job("a");
            expected.enqueued_at_ms = 1_000;
            expected
        });
        assert_eq!((leases[0].deliveries, leases[0].lease.epoch), (1, 1));
        assert!(leases[0].resume_tokens.is_empty());
        assert_eq!(leases[0].resume_after_seq, 0);
        let depth = q.depth("d").await.unwrap();
        assert_eq!((depth.waiting, depth.leased), (1, 2));
        assert!(depth.oldest_waiting_enqueued_at_ms.unwrap() > 1_000);
        assert_eq!(q.position("d", "a").await.unwrap(), None);
        assert_eq!(q.position("d", "c").await.unwrap(), Some(1));
        assert!(q.ack(&leases[0].lease).await.unwrap());
        assert!(!q.ack(&leases[0].lease).await.unwrap(), "a second ack finds nothing");
        assert_eq!(
            q.append_output(&leases[0].lease, 0, vec![tokens(&[1])]).await.unwrap(),
            AppendOutcome::Fenced,
            "no write after the ack"
        );
        let depth = q.depth("d").await.unwrap();
        assert_eq!((depth.waiting, depth.leased), (1, 1));
        let empty = q.depth("nothing-here").await.unwrap();
        assert_eq!((empty.waiting, empty.leased, empty.oldest_waiting_enqueued_at_ms), (0, 0, None));
    }

    pub async fn a_blocked_lease_wakes_when_work_arrives(backend: Backend) {
        let h = backend.start(Settings::default()).await;
        let waiter = {
            let q = h.queue.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let leases = q.lease("d", "w1", 1, LONG_TTL, Duration::from_secs(5)).await.unwrap();
                (leases, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.queue.enqueue(job("a"), LIMITS).await.unwrap();
        let (leases, waited) = waiter.await.unwrap();
        assert_eq!(leases.len(), 1);
        assert!(waited < Duration::from_secs(2), "woke up after {waited:?}");

        // And nothing to take: empty after the block.
        let started = Instant::now();
        let none = h.queue.lease("d", "w1", 1, LONG_TTL, Duration::from_millis(200)).await.unwrap();
        assert!(none.is_empty());
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(190) && waited < Duration::from_secs(2), "{waited:?}");
    }

    pub async fn output_is_read_in_order_and_resumable_from_a_sequence_number(backend: Backend) {
        let h = backend.start(Settings::default()).await;
        let q = &h.queue;
        q.enqueue(job("a"), LIMITS).await.unwrap();
        assert!(q.read_output("a", 0, NO_BLOCK).await.unwrap().is_empty());
        let lease = q.lease("d", "w1", 1, LONG_TTL, NO_BLOCK).await.unwrap().remove(0);
        let outcome = q.append_output(&lease.lease, 0, vec![tokens(&[7]), tokens(&[8])]).await.unwrap();
        assert_eq!(outcome, AppendOutcome::Accepted(2));

        // A blocked reader resumes after seq 2 and wakes for the next event.
        let reader = {
            let q = h.queue.clone();
            tokio::spawn(async move { q.read_output("a", 2, Duration::from_secs(5)).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let outcome = q.append_output(&lease.lease, 2, vec![finished(), tokens(&[9])]).await.unwrap();
        assert_eq!(outcome, AppendOutcome::Accepted(3), "nothing is stored after the terminal event");
        let woken = reader.await.unwrap();
        assert_eq!(woken.len(), 1);
        assert_eq!((woken[0].seq, woken[0].epoch), (3, 1));
        assert!(woken[0].event.is_terminal());

        let all = q.read_output("a", 0, NO_BLOCK).await.unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(all[0].event, tokens(&[7]));
        let rest = q.read_output("a", 1, NO_BLOCK).await.unwrap();
        assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        let started = Instant::now();
        assert!(q.read_output("a", 3, Duration::from_millis(200)).await.unwrap().is_empty());
        assert!(started.elapsed() >= Duration::from_millis(190));
        assert!(matches!(q.read_output("nope", 0, NO_BLOCK).await, Err(QueueError::UnknownJob(_))));
    }

    /// An append tried again after its first try was stored (its reply lost, or the first
    /// try reaching the queue late) is not stored twice, terminal or not; one naming an
    /// earlier end that is not its own retry is fenced.
    pub async fn an_append_tried_again_after_it_was_stored_is_not_stored_twice(backend: Backend) {
        let h = backend.start(Settings::default()).await;
        let q = &h.queue;
        q.enqueue(job("a"), LIMITS).await.unwrap();
        let lease = q.lease("d", "w1", 1, LONG_TTL, NO_BLOCK).await.unwrap().remove(0);
        let first = vec![tokens(&[7]), tokens(&[8])];
        assert_eq!(q.append_output(&lease.lease, 0, first.clone()).await.unwrap(), AppendOutcome::Accepted(2));
        assert_eq!(q.append_output(&lease.lease, 0, first).await.unwrap(), AppendOutcome::Accepted(2), "the retry");
        // (Naming an end past the output is a write Redis lost: redis_failover.rs.)
        let stale = vec![tokens(&[9]), tokens(&[10])];
        assert_eq!(q.append_output(&lease.lease, 1, stale).await.unwrap(), AppendOutcome::Fenced);
        let last = vec![tokens(&[9]), finished()];
        assert_eq!(q.append_output(&lease.lease, 2, last.clone()).await.unwrap(), AppendOutcome::Accepted(4));
        assert_eq!(q.append_output(&lease.lease, 2, last).await.unwrap(), AppendOutcome::Accepted(4), "a terminal retry");
        let all = q.read_output("a", 0, NO_BLOCK).await.unwrap();
        assert_eq!(all.iter().map(|e| (e.seq, e.event.clone())).collect::<Vec<_>>(), [
            (1, tokens(&[7])),
            (2, tokens(&[8])),
            (3, tokens(&[9])),
            (4, finished())
        ]);
        assert!(q.ack(&lease.lease).await.unwrap());
    }

    pub async fn renewing_keeps_a_long_job_from_being_reclaimed(backend: Backend) {
        let h = backend.start(Settings::default()).await;
        let q = &h.queue;
        q.enqueue(job("a"), LIMITS).await.unwrap();
        let lease = q.lease("d", "w1", 1, SHORT_TTL, NO_BLOCK).await.unwrap().remove(0);
        // Four TTLs long, renewed every third of one.
        let until = Instant::now() + SHORT_TTL * 4;
        while Instant::now() < until {
            tokio::time::sleep(SHORT_TTL / 3).await;
            assert_eq!(q.renew(std::slice::from_ref(&lease.lease), SHORT_TTL).await.unwrap(), [true]);
            assert_eq!(q.reclaim_expired("d").await.unwrap(), 0);
        }
        assert_eq!(q.append_output(&lease.lease, 0, vec![tokens(&[1])]).await.unwrap(), AppendOutcome::Accepted(1));
        assert!(q.lease("d", "w2", 1, SHORT_TTL, NO_BLOCK).await.unwrap().is_empty());
        assert!(q.ack(&lease.lease).await.unwrap());
    }

    pub async fn an_expired_lease_is_redelivered_with_a_new_epoch_and_the_old_writer_is_fenced(
        backend: Backend,
    ) {
        let h = backend.start(Settings::default()).await;
        let q = &h.queue;
        q.enqueue(job("a"), LIMITS).await.unwrap();
        let first = q.lease("d", "w1", 1, SHORT_TTL, NO_BLOCK).await.unwrap().remove(0);
        q.append_output(&first.lease, 0, vec![OutputEvent::Started { replica: "w1".into() }, tokens(&[5, 6])])
            .await
            .unwrap();
        assert_eq!(q.reclaim_expired("d").await.unwrap(), 0, "not expired yet");

        tokio::time::sleep(SHORT_TTL + Duration::from_millis(100)).await;
        assert_eq!(q.reclaim_expired("d").await.unwrap(), 1);
        assert_eq!(q.position("d", "a").await.unwrap(), Some(1));
        let depth = q.depth("d").await.unwrap();
        assert_eq!((depth.waiting, depth.leased), (1, 0));
        let second = q.lease("d", "w2", 1, LONG_TTL, NO_BLOCK).await.unwrap().remove(0);
        assert_eq!(second.lease.epoch, first.lease.epoch + 1);
        assert_eq!(second.deliveries, 2);
        assert_eq!(second.resume_tokens, [5, 6]);
        assert_eq!(second.resume_after_seq, 2);

        // The old owner wakes up: every write is rejected.
        assert_eq!(q.append_output(&first.lease, 2, vec![tokens(&[9])]).await.unwrap(), AppendOutcome::Fenced);
        assert!(!q.ack(&first.lease).await.unwrap());
        assert!(!q.release(&first.lease).await.unwrap());
        assert_eq!(q.renew(std::slice::from_ref(&first.lease), LONG_TTL).await.unwrap(), [false]);

        // The new owner continues the same stream.
        q.append_output(&second.lease, second.resume_after_seq, vec![tokens(&[7]), finished()]).await.unwrap();
        assert!(q.ack(&second.lease).await.unwrap());
        let events = q.read_output("a", 0, NO_BLOCK).await.unwrap();
        assert_eq!(
            events.iter().map(|e| (e.seq, e.epoch)).collect::<Vec<_>>(),
            [(1, 1), (2, 1), (3, 2), (4, 2)]
        );
        let depth = q.depth("d").await.unwrap();
        assert_eq!((depth.waiting, depth.leased), (0, 0));
    }

    pub async fn a_job_whose_consumers_keep_dying_is_dead_lettered_after_max_deliveries(backend: Backend) {
        let h = backend.start(Settings { max_deliveries: 2, ..Default::default() }).await;
        let q = &h.queue;
        q.enqueue(job("a"), LIMITS).await.unwrap();
        let mut reclaimed = Vec::new();
        for attempt in 1..=2 {
            let lease = q.lease("d", "w", 1, SHORT_TTL, NO_BLOCK).await.unwrap().remove(0);
            assert_eq!(lease.deliveries, attempt);
            tokio::time::sleep(SHORT_TTL + Duration::from_millis(100)).await;
            reclaimed.push(q.reclaim_expired("d").await.unwrap());
        }
        assert_eq!(reclaimed, [1, 0], "the second expiry dead-letters instead of redelivering");
        let events = q.read_output("a", 0, NO_BLOCK).await.unwrap();
        assert_eq!(events.len(), 1);
        assert!(failed_with(&events[0].event, "delivery_limit"), "{:?}", events[0]);
        assert_eq!(events[0].epoch, 3);
        assert!(q.lease("d", "w", 1, SHORT_TTL, NO_BLOCK).await.unwrap().is_empty());
        let depth = q.depth("d").await.unwrap();
        assert_eq!((depth.waiting, depth.leased), (0, 0));
    }

    pub async fn release_hands_a_job_back_to_the_head_without_counting_a_delivery(backend: Backend) {
        let h = backend.start(Settings::default()).await;
        let q = &h.queue;
        q.enqueue(job("a"), LIMITS).await.unwrap();
        q.enqueue(job("b"), LIMITS).await.unwrap();
        let first = q.lease("d", "w1", 1, LONG_TTL, NO_BLOCK).await.unwrap().remove(0);
        q.append_output(&first.lease, 0, vec![tokens(&[4])]).await.unwrap();
        assert!(q.release(&first.lease).await.unwrap());
        assert_eq!(q.position("d", "a").await.unwrap(), Some(1));
        assert_eq!(q.position("d", "b").await.unwrap(), Some(2));
        let depth = q.depth("d").await.unwrap();
        assert_eq!((depth.waiting, depth.leased), (2, 0));
        let again = q.lease("d", "w2", 1, LONG_TTL, NO_BLOCK).await.unwrap().remove(0);
        assert_eq!(again.job.id, "a");
        assert_eq!((again.deliveries, again.lease.epoch), (1, 2));
        assert_eq!((again.resume_tokens.as_slice(), again.resume_after_seq), (&[4][..], 1));
        assert_eq!(q.append_output(&first.lease, 1, vec![tokens(&[1])]).await.unwrap(), AppendOutcome::Fenced);
        assert_eq!(q.append_output(&again.lease, again.resume_after_seq, vec![tokens(&[5])]).await.unwrap(), AppendOutcome::Accepted(2));
    }

    pub async fn cancelling_a_waiting_job_removes_it_and_ends_its_stream(backend: Backend) {
        let h = backend.start(Settings::default()).await;
        let q = &h.queue;
        q.enqueue(job("a"), LIMITS).await.unwrap();
        q.enqueue(job("b"), LIMITS).await.unwrap();
        q.cancel("a").await.unwrap();
        assert_eq!(q.depth("d").await.unwrap().waiting, 1);
        assert_eq!(q.position("d", "b").await.unwrap(), Some(1));
        let events = q.read_output("a", 0, NO_BLOCK).await.unwrap();
        assert_eq!(events.len(), 1);
        assert!(failed_with(&events[0].event, "cancelled"));
        q.cancel("a").await.unwrap();
        q.cancel("unknown").await.unwrap();
        assert_eq!(q.read_output("a", 0, NO_BLOCK).await.unwrap().len(), 1, "idempotent");
        let leases = q.lease("d", "w1", 2, LONG_TTL, NO_BLOCK).await.unwrap();
        assert_eq!(leases.iter().map(|l| l.job.id.as_str()).collect::<Vec<_>>(), ["b"]);

        // A handed-back (waiting again) job can be cancelled too.
        assert!(q.release(&leases[0].lease).await.unwrap());
        q.cancel("b").await.unwrap();
        let depth = q.depth("d").await.unwrap();
        assert_eq!((depth.waiting, depth.leased), (0, 0));
        assert!(q.lease("d", "w1", 2, LONG_TTL, NO_BLOCK).await.unwrap().is_empty());
    }

    pub async fn cancelling_a_leased_job_stops_its_writer_at_the_next_append(backend: Backend) {
        let h = backend.start(Settings::default()).await;
        let q = &h.queue;
        q.enqueue(job("a"), LIMITS).await.unwrap();
        let lease = q.lease("d", "w1", 1, LONG_TTL, NO_BLOCK).await.unwrap().remove(0);
        q.cancel("a").await.unwrap();
        q.cancel("a").await.unwrap();
        assert_eq!(q.append_output(&lease.lease, 0, vec![tokens(&[1])]).await.unwrap(), AppendOutcome::Cancelled);
        assert_eq!(q.append_output(&lease.lease, 0, vec![tokens(&[2])]).await.unwrap(), AppendOutcome::Cancelled);
        assert_eq!(q.depth("d").await.unwrap().leased, 0);
        let events = q.read_output("a", 0, NO_BLOCK).await.unwrap();
        assert_eq!(events.len(), 1, "the cancelled write was not stored");
        assert!(failed_with(&events[0].event, "cancelled"));
    }

    pub async fn a_streams_owner_and_its_readers_are_kept_with_its_output(backend: Backend) {
        let h = backend.start(Settings::default()).await;
        let q = &h.queue;
        let meta = Some(r#"{"kind":"chat"}"#.to_string());
        q.enqueue(Job { tenant: "acme".into(), stream_meta: meta.clone(), ..job("a") }, LIMITS).await.unwrap();
        q.enqueue(job("plain"), LIMITS).await.unwrap();
        let owner = q.output_owner("a").await.unwrap().expect("a waiting job has an owner");
        assert_eq!(owner, OutputOwner { tenant: "acme".into(), deployment: "d".into(), stream_meta: meta.clone(), readers: 0 });
        assert_eq!(q.output_owner("plain").await.unwrap().unwrap().stream_meta, None);
        assert_eq!(q.attach_reader("a").await.unwrap(), Some(1));
        assert_eq!(q.attach_reader("a").await.unwrap(), Some(2));
        assert_eq!(q.output_owner("a").await.unwrap().unwrap().readers, 2);
        assert_eq!(q.output_owner("plain").await.unwrap().unwrap().readers, 0, "per job");
        // Finished and acknowledged: the owner stays as long as the output.
        let lease = q.lease("d", "w1", 1, LONG_TTL, NO_BLOCK).await.unwrap().remove(0);
        assert_eq!(lease.job.stream_meta, meta);
        q.append_output(&lease.lease, 0, vec![tokens(&[1]), finished()]).await.unwrap();
        assert!(q.ack(&lease.lease).await.unwrap());
        assert_eq!(q.output_owner("a").await.unwrap().unwrap().tenant, "acme");
        assert_eq!(q.attach_reader("a").await.unwrap(), Some(3));
        assert_eq!(q.output_owner("unknown").await.unwrap(), None);
        assert_eq!(q.attach_reader("unknown").await.unwrap(), None, "no state is created for an unknown job");
        assert_eq!(q.output_owner("unknown").await.unwrap(), None);
    }

    pub async fn a_job_past_its_deadline_is_failed_instead_of_leased(backend: Backend) {
        let h = backend.start(Settings::default()).await;
        let q = &h.queue;
        let mut late = job("a");
        late.deadline_ms = Some(unix_millis() - 1);
        q.enqueue(late, LIMITS).await.unwrap();
        let mut in_time = job("b");
        in_time.deadline_ms = Some(unix_millis() + 60_000);
        q.enqueue(in_time, LIMITS).await.unwrap();
        let leases = q.lease("d", "w1", 2, LONG_TTL, NO_BLOCK).await.unwrap();
        assert_eq!(leases.iter().map(|l| l.job.id.as_str()).collect::<Vec<_>>(), ["b"]);
        let events = q.read_output("a", 0, NO_BLOCK).await.unwrap();
        assert_eq!(events.len(), 1);
        assert!(failed_with(&events[0].event, "deadline_exceeded"));
        let depth = q.depth("d").await.unwrap();
        assert_eq!((depth.waiting, depth.leased), (0, 1));
    }

    pub async fn renew_answers_per_lease_across_deployments(backend: Backend) {
        let h = backend.start(Settings::default()).await;
        let q = &h.queue;
        let mut other = job("x");
        other.deployment = "e".into();
        q.enqueue(job("a"), LIMITS).await.unwrap();
        q.enqueue(other, LIMITS).await.unwrap();
        let a = q.lease("d", "w1", 1, LONG_TTL, NO_BLOCK).await.unwrap().remove(0).lease;
        let x = q.lease("e", "w1", 1, LONG_TTL, NO_BLOCK).await.unwrap().remove(0).lease;
        let mut wrong_consumer = a.clone();
        wrong_consumer.consumer = "w2".into();
        let held = q.renew(&[a.clone(), wrong_consumer, x.clone()], LONG_TTL).await.unwrap();
        assert_eq!(held, [true, false, true]);
        // (On Redis, a first delivery starts with its holder's first append.)
        assert_eq!(q.append_output(&x, 0, vec![tokens(&[1])]).await.unwrap(), AppendOutcome::Accepted(1));
        assert_eq!(
            q.append_output(&{ let mut l = x.clone(); l.consumer = "w2".into(); l }, 1, vec![tokens(&[2])])
                .await
                .unwrap(),
            AppendOutcome::Fenced
        );
    }

    pub async fn concurrent_consumers_each_get_a_job_once(backend: Backend) {
        let h = backend.start(Settings::default()).await;
        for i in 0..24 {
            h.queue.enqueue(job(&format!("j{i:02}")), LIMITS).await.unwrap();
        }
        let consumers: Vec<_> = (0..4)
            .map(|c| {
                let q = h.queue.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let leases = q.lease("d", &format!("w{c}"), 2, LONG_TTL, NO_BLOCK).await.unwrap();
                        if leases.is_empty() {
                            return mine;
                        }
                        for lease in leases {
                            assert!(q.ack(&lease.lease).await.unwrap());
                            mine.push(lease.job.id);
                        }
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for consumer in consumers {
            all.extend(consumer.await.unwrap());
        }
        all.sort();
        let expected: Vec<_> = (0..24).map(|i| format!("j{i:02}")).collect();
        assert_eq!(all, expected);
        let depth = h.queue.depth("d").await.unwrap();
        assert_eq!((depth.waiting, depth.leased), (0, 0));
    }

    pub async fn lease_serves_higher_priorities_first_and_oldest_first_within_one(backend: Backend) {
        use Priority::{High, Low, Normal};
        let h = backend.start(Settings::default()).await;
        let q = &h.queue;
        // Enqueued in this order; the answer is the position in service order.
        let arrivals = [("a", Low, 1), ("b", Normal, 1), ("c", High, 1), ("d", Low, 4), ("e", High, 2), ("f", Normal, 4)];
        for (index, (id, priority, position)) in arrivals.into_iter().enumerate() {
            let enqueued = q.enqueue(job_at(id, priority, 1_000 + index as u64), LIMITS).await.unwrap();
            assert_eq!(enqueued.position, position, "{id}");
        }
        for (id, position) in [("c", 1), ("e", 2), ("b", 3), ("f", 4), ("a", 5), ("d", 6)] {
            assert_eq!(q.position("d", id).await.unwrap(), Some(position), "{id}");
        }
        let depth = q.depth("d").await.unwrap();
        assert_eq!(depth.waiting, 6);
        assert_eq!(depth.oldest_waiting_enqueued_at_ms, Some(1_000), "the oldest is `a`, a low job");

        let first = q.lease("d", "w1", 3, LONG_TTL, NO_BLOCK).await.unwrap();
        assert_eq!(ids(&first), ["c", "e", "b"]);
        assert_eq!(q.position("d", "a").await.unwrap(), Some(2));
        // A high job arriving now goes ahead of every waiting normal and low job.
        assert_eq!(q.enqueue(job_at("g", High, 2_000), LIMITS).await.unwrap().position, 1);
        assert_eq!(q.position("d", "d").await.unwrap(), Some(4));
        let rest = q.lease("d", "w2", 10, LONG_TTL, NO_BLOCK).await.unwrap();
        assert_eq!(ids(&rest), ["g", "f", "a", "d"]);
        for lease in first.iter().chain(&rest) {
            assert!(q.ack(&lease.lease).await.unwrap());
        }
        let depth = q.depth("d").await.unwrap();
        assert_eq!((depth.waiting, depth.leased, depth.oldest_waiting_enqueued_at_ms), (0, 0, None));
    }

    pub async fn handed_back_and_redelivered_jobs_go_before_higher_priorities(backend: Backend) {
        use Priority::{High, Low};
        let h = backend.start(Settings::default()).await;
        let q = &h.queue;
        q.enqueue(job_at("released", Low, 1), LIMITS).await.unwrap();
        q.enqueue(job_at("expired", Low, 2), LIMITS).await.unwrap();
        let released = q.lease("d", "w1", 1, LONG_TTL, NO_BLOCK).await.unwrap().remove(0);
        let expired = q.lease("d", "w2", 1, SHORT_TTL, NO_BLOCK).await.unwrap().remove(0);
        assert_eq!((released.job.id.as_str(), expired.job.id.as_str()), ("released", "expired"));
        q.enqueue(job_at("high", High, 3), LIMITS).await.unwrap();

        assert!(q.release(&released.lease).await.unwrap());
        assert_eq!(q.position("d", "released").await.unwrap(), Some(1));
        assert_eq!(q.position("d", "high").await.unwrap(), Some(2));
        tokio::time::sleep(SHORT_TTL + Duration::from_millis(100)).await;
        assert_eq!(q.reclaim_expired("d").await.unwrap(), 1);
        // The latest hand-back first, then the other, then new work by priority.
        assert_eq!(q.position("d", "expired").await.unwrap(), Some(1));
        assert_eq!(q.position("d", "high").await.unwrap(), Some(3));
        assert_eq!(q.enqueue(job_at("new-high", High, 4), LIMITS).await.unwrap().position, 4);
        let leases = q.lease("d", "w3", 4, LONG_TTL, NO_BLOCK).await.unwrap();
        assert_eq!(ids(&leases), ["expired", "released", "high", "new-high"]);
        assert_eq!(leases[0].lease.epoch, 2);
        assert_eq!(leases[1].lease.epoch, 2);
    }

    pub async fn jobs_of_every_priority_are_cancelled_expired_and_dead_lettered_alike(backend: Backend) {
        use Priority::{High, Low, Normal};
        let h = backend.start(Settings { max_deliveries: 1, ..Default::default() }).await;
        let q = &h.queue;
        let mut late = job_at("late", High, 1);
        late.deadline_ms = Some(unix_millis() - 1);
        q.enqueue(late, LIMITS).await.unwrap();
        q.enqueue(job_at("cancelled", Low, 2), LIMITS).await.unwrap();
        q.enqueue(job_at("dies", Low, 3), LIMITS).await.unwrap();
        q.enqueue(job_at("normal", Normal, 4), LIMITS).await.unwrap();
        q.cancel("cancelled").await.unwrap();
        assert_eq!(q.depth("d").await.unwrap().waiting, 3);
        assert_eq!(q.position("d", "dies").await.unwrap(), Some(3), "behind `late` and `normal`");

        let leases = q.lease("d", "w1", 2, SHORT_TTL, NO_BLOCK).await.unwrap();
        assert_eq!(ids(&leases), ["normal", "dies"], "`late` was dropped past its deadline");
        let events = q.read_output("late", 0, NO_BLOCK).await.unwrap();
        assert!(failed_with(&events[0].event, "deadline_exceeded"));
        let events = q.read_output("cancelled", 0, NO_BLOCK).await.unwrap();
        assert!(failed_with(&events[0].event, "cancelled"));

        assert!(q.ack(&leases[0].lease).await.unwrap());
        tokio::time::sleep(SHORT_TTL + Duration::from_millis(100)).await;
        assert_eq!(q.reclaim_expired("d").await.unwrap(), 0, "`dies` reached max_deliveries");
        let events = q.read_output("dies", 0, NO_BLOCK).await.unwrap();
        assert!(failed_with(&events.last().unwrap().event, "delivery_limit"));
        let depth = q.depth("d").await.unwrap();
        assert_eq!((depth.waiting, depth.leased), (0, 0));
        assert!(q.lease("d", "w2", 5, LONG_TTL, NO_BLOCK).await.unwrap().is_empty());
    }
}

crate::conformance!(
    enqueue_reports_positions_and_refuses_past_the_depth_limit,
    lease_takes_oldest_first_and_ack_finishes,
    a_blocked_lease_wakes_when_work_arrives,
    output_is_read_in_order_and_resumable_from_a_sequence_number,
    an_append_tried_again_after_it_was_stored_is_not_stored_twice,
    renewing_keeps_a_long_job_from_being_reclaimed,
    an_expired_lease_is_redelivered_with_a_new_epoch_and_the_old_writer_is_fenced,
    a_job_whose_consumers_keep_dying_is_dead_lettered_after_max_deliveries,
    release_hands_a_job_back_to_the_head_without_counting_a_delivery,
    cancelling_a_waiting_job_removes_it_and_ends_its_stream,
    cancelling_a_leased_job_stops_its_writer_at_the_next_append,
    a_job_past_its_deadline_is_failed_instead_of_leased,
    a_streams_owner_and_its_readers_are_kept_with_its_output,
    renew_answers_per_lease_across_deployments,
    concurrent_consumers_each_get_a_job_once,
    lease_serves_higher_priorities_first_and_oldest_first_within_one,
    handed_back_and_redelivered_jobs_go_before_higher_priorities,
    jobs_of_every_priority_are_cancelled_expired_and_dead_lettered_alike,
);

/// Redis only: a crash with AOF (`appendfsync always`) loses nothing; while Redis is
/// down calls fail fast with `Unavailable`; afterwards work resumes.
#[tokio::test]
async fn redis_a_crash_with_aof_loses_nothing_and_calls_fail_fast_while_it_is_down() {
    let mut server = RedisServer::start(RedisServerOptions { append_only: true, append_fsync: "always" });
    let queue = RedisQueue::connect(redis_config(&server, 3)).await.unwrap();
    queue.enqueue(job("leased"), LIMITS).await.unwrap();
    queue.enqueue(job("queued"), LIMITS).await.unwrap();
    let lease = queue.lease("d", "w1", 1, LONG_TTL, NO_BLOCK).await.unwrap().remove(0);
    assert_eq!(lease.job.id, "leased");
    queue.append_output(&lease.lease, 0, vec![tokens(&[1, 2])]).await.unwrap();

    server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let error = queue.depth("d").await.unwrap_err();
        assert_eq!(error.code(), "queue_unavailable", "{error}");
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    }
    let started = Instant::now();
    let error = queue.read_output("leased", 0, Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(error.code(), "queue_unavailable");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    let error = queue.lease("d", "w2", 1, LONG_TTL, Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(error.code(), "queue_unavailable");

    server.restart();
    let depth = eventually(Duration::from_secs(10), || queue.depth("d")).await;
    assert_eq!((depth.waiting, depth.leased), (1, 1), "nothing lost");
    assert_eq!(queue.position("d", "queued").await.unwrap(), Some(1));
    // The lease survived with its epoch: the writer carries on.
    assert_eq!(
        queue.append_output(&lease.lease, 1, vec![tokens(&[3]), finished()]).await.unwrap(),
        AppendOutcome::Accepted(3)
    );
    assert!(queue.ack(&lease.lease).await.unwrap());
    let events = queue.read_output("leased", 0, Duration::from_secs(1)).await.unwrap();
    assert_eq!(events.len(), 3);
    let next = queue.lease("d", "w2", 1, LONG_TTL, Duration::from_secs(1)).await.unwrap();
    assert_eq!(next[0].job.id, "queued");
    // A fresh queue on the restarted server sees the same state (scripts reloaded too).
    let other = RedisQueue::connect(redis_config(&server, 3)).await.unwrap();
    assert_eq!(other.depth("d").await.unwrap().leased, 1);
}

/// Redis only: an enqueue that got no answer may have queued the job (and a replica may
/// have started it): its job is cancelled rather than deleted, so a replica that holds it
/// stops at its next write and every key of it expires with the output TTL, never with
/// `job_max_age`. Here the enqueue fails for sure (its stream is a string).
#[tokio::test]
async fn redis_an_enqueue_without_an_answer_cancels_its_job_so_nothing_is_kept_long() {
    let server = RedisServer::start(RedisServerOptions::default());
    let output_ttl = Duration::from_secs(5);
    let queue = RedisQueue::connect(RedisQueueConfig { output_ttl, ..redis_config(&server, 3) }).await.unwrap();
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("SET").arg("test:{dep:d}:jobs").arg("not a stream").query_async(&mut raw).await.unwrap();

    assert!(queue.enqueue(job("lost"), LIMITS).await.is_err());
    let events = queue.read_output("lost", 0, NO_BLOCK).await.unwrap();
    assert!(events.last().is_some_and(|e| failed_with(&e.event, "cancelled")), "{events:?}");
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("test:{dep:d}:*:lost").query_async(&mut raw).await.unwrap();
    assert_eq!(keys.len(), 2, "its state and output: {keys:?}");
    for key in keys {
        let ttl: i64 = ::redis::cmd("PTTL").arg(&key).query_async(&mut raw).await.unwrap();
        assert!(ttl > 0 && ttl <= output_ttl.as_millis() as i64, "{key} expires in {ttl} ms");
    }
}

/// Redis only: a reader blocked on one job's output does not stall other calls.
#[tokio::test]
async fn redis_a_long_blocking_read_does_not_stall_other_calls() {
    let server = RedisServer::start(RedisServerOptions::default());
    let queue = Arc::new(RedisQueue::connect(redis_config(&server, 3)).await.unwrap());
    queue.enqueue(job("a"), LIMITS).await.unwrap();
    let blocked: Vec<_> = (0..3)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.read_output("a", 0, Duration::from_secs(5)).await.unwrap() })
        })
        .collect();
    let blocked_lease = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.lease("idle", "w9", 1, LONG_TTL, Duration::from_secs(5)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    for i in 0..20 {
        queue.enqueue(job(&format!("other-{i}")), LIMITS).await.unwrap();
        queue.depth("d").await.unwrap();
    }
    let lease = queue.lease("d", "w1", 1, LONG_TTL, NO_BLOCK).await.unwrap().remove(0);
    queue.append_output(&lease.lease, 0, vec![tokens(&[1])]).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "other calls took {:?}", started.elapsed());
    for reader in blocked {
        assert_eq!(reader.await.unwrap().len(), 1);
    }
    assert!(!blocked_lease.is_finished());
    blocked_lease.abort();
    drop(server);
}

/// Redis only: the fixture itself.
#[test]
fn redis_fixture_restarts_on_the_same_port_and_cleans_up() {
    let mut server = RedisServer::start(RedisServerOptions::default());
    let port = server.port();
    server.kill();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    server.restart();
    assert_eq!(server.port(), port);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(server);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// Redis only: every key carries a `{dep:..}` or `{job:..}` hash tag; acknowledged,
/// dead-lettered and cancelled entries leave the work stream and its pending list; the
/// dead-letter stream keeps the job; finished output expires after `output_ttl`.
#[tokio::test]
async fn redis_keys_are_hash_tagged_and_finished_entries_leave_the_stream() {
    let server = RedisServer::start(RedisServerOptions::default());
    let config = RedisQueueConfig {
        output_ttl: Duration::from_millis(500),
        ..redis_config(&server, 1)
    };
    let queue = RedisQueue::connect(config).await.unwrap();
    for id in ["acked", "dead", "cancelled", "waiting"] {
        queue.enqueue(job(id), LIMITS).await.unwrap();
    }
    let leases = queue.lease("d", "w1", 2, SHORT_TTL, NO_BLOCK).await.unwrap();
    queue.append_output(&leases[0].lease, 0, vec![tokens(&[1]), finished()]).await.unwrap();
    assert!(queue.ack(&leases[0].lease).await.unwrap());
    queue.cancel("cancelled").await.unwrap();
    tokio::time::sleep(SHORT_TTL + Duration::from_millis(100)).await;
    assert_eq!(queue.reclaim_expired("d").await.unwrap(), 0); // "dead": max_deliveries 1

    let client = ::redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query_async(&mut raw).await.unwrap();
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(
            key.starts_with("test:{dep:d}:") || key.starts_with("test:{job:"),
            "{key} has no hash tag"
        );
    }
    let stream_length: u64 = ::redis::cmd("XLEN").arg("test:{dep:d}:jobs").query_async(&mut raw).await.unwrap();
    assert_eq!(stream_length, 1, "only the waiting job's entry is left");
    let pending: Vec<::redis::Value> =
        ::redis::cmd("XPENDING").arg("test:{dep:d}:jobs").arg("workers").query_async(&mut raw).await.unwrap();
    assert_eq!(pending[0], ::redis::Value::Int(0));
    let dead: ::redis::streams::StreamRangeReply =
        ::redis::cmd("XRANGE").arg("test:{dep:d}:dead").arg("-").arg("+").query_async(&mut raw).await.unwrap();
    assert_eq!(dead.ids.len(), 1);
    let dead_job: String = dead.ids[0].get("job").unwrap();
    assert_eq!(serde_json::from_str::<Job>(&dead_job).unwrap().id, "dead");

    // The finished jobs' output expires; the waiting job's does not.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for id in ["acked", "dead", "cancelled"] {
        assert!(
            matches!(queue.read_output(id, 0, NO_BLOCK).await, Err(QueueError::UnknownJob(_))),
            "{id} still readable"
        );
    }
    assert!(queue.read_output("waiting", 0, NO_BLOCK).await.unwrap().is_empty());
    // An expired id may be used again.
    queue.enqueue(job("acked"), LIMITS).await.unwrap();
}

/// Redis only: connecting to nothing fails fast with `Unavailable`; a bad config is refused.
#[tokio::test]
async fn redis_connect_fails_fast_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = RedisQueueConfig {
        url: format!("redis://127.0.0.1:{port}"),
        connect_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let started = Instant::now();
    let error = RedisQueue::connect(config.clone()).await.err().expect("nothing listens");
    assert_eq!(error.code(), "queue_unavailable");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    let bad = RedisQueueConfig { key_prefix: "{x}".into(), ..config };
    let error = RedisQueue::connect(bad).await.err().expect("refused");
    assert!(error.to_string().contains("key_prefix"), "{error}");
}

/// Redis only: each priority has its own work stream in the deployment's hash slot, and a
/// finished job's entry leaves its own stream and that stream's pending list.
#[tokio::test]
async fn redis_priorities_have_their_own_streams_and_finished_entries_leave_them() {
    let server = RedisServer::start(RedisServerOptions::default());
    let queue = RedisQueue::connect(redis_config(&server, 3)).await.unwrap();
    for (id, priority) in [("h", Priority::High), ("n", Priority::Normal), ("l", Priority::Low), ("l2", Priority::Low)] {
        queue.enqueue(job_at(id, priority, unix_millis()), LIMITS).await.unwrap();
    }
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    for (stream, length) in [("test:{dep:d}:jobs:high", 1), ("test:{dep:d}:jobs", 1), ("test:{dep:d}:jobs:low", 2)] {
        let found: u64 = ::redis::cmd("XLEN").arg(stream).query_async(&mut raw).await.unwrap();
        assert_eq!(found, length, "{stream}");
    }
    let leases = queue.lease("d", "w1", 3, LONG_TTL, NO_BLOCK).await.unwrap();
    assert_eq!(ids(&leases), ["h", "n", "l"]);
    // A handed-back low job is claimed again from its own stream.
    assert!(queue.release(&leases[2].lease).await.unwrap());
    let again = queue.lease("d", "w2", 1, LONG_TTL, NO_BLOCK).await.unwrap();
    assert_eq!(ids(&again), ["l"]);
    for lease in leases[..2].iter().chain(&again) {
        assert!(queue.ack(&lease.lease).await.unwrap());
    }
    queue.cancel("l2").await.unwrap();
    for stream in ["test:{dep:d}:jobs:high", "test:{dep:d}:jobs", "test:{dep:d}:jobs:low"] {
        let length: u64 = ::redis::cmd("XLEN").arg(stream).query_async(&mut raw).await.unwrap();
        assert_eq!(length, 0, "{stream} still has entries");
        let pending: Vec<::redis::Value> =
            ::redis::cmd("XPENDING").arg(stream).arg("workers").query_async(&mut raw).await.unwrap();
        assert_eq!(pending[0], ::redis::Value::Int(0), "{stream} still has pending entries");
    }
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("test:{dep:d}:job:*").query_async(&mut raw).await.unwrap();
    assert!(keys.is_empty(), "lease hashes left: {keys:?}");
}

/// Redis only: a work stream deleted by hand (its consumer group with it) and made again
/// by the next enqueue gets its group back at the next take, so its jobs are served.
#[tokio::test]
async fn redis_a_work_stream_deleted_by_hand_is_served_again() {
    let server = RedisServer::start(RedisServerOptions::default());
    let queue = RedisQueue::connect(redis_config(&server, 3)).await.unwrap();
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    queue.enqueue(job("a"), LIMITS).await.unwrap();
    let lease = queue.lease("d", "w1", 1, LONG_TTL, NO_BLOCK).await.unwrap().remove(0);
    assert!(queue.ack(&lease.lease).await.unwrap());
    let _: () = ::redis::cmd("DEL").arg("test:{dep:d}:jobs").query_async(&mut raw).await.unwrap();

    queue.enqueue(job("b"), LIMITS).await.unwrap();
    let leases = queue.lease("d", "w1", 1, LONG_TTL, NO_BLOCK).await.unwrap();
    assert_eq!(leases.iter().map(|l| l.job.id.as_str()).collect::<Vec<_>>(), ["b"]);
}

/// Redis only: a queue that did not enqueue a job (another gateway's, where a client
/// resumes its stream) finds it by its pointer key: its owner, a reader taking over,
/// its output, and cancelling it. An id taken in one deployment is refused in another.
#[tokio::test]
async fn redis_a_job_is_found_by_its_id_from_another_gateway() {
    let server = RedisServer::start(RedisServerOptions::default());
    let queue = RedisQueue::connect(redis_config(&server, 3)).await.unwrap();
    let mut first = job("a");
    first.tenant = "acme".into();
    first.stream_meta = Some("{\"a\":1}".into());
    queue.enqueue(first, LIMITS).await.unwrap();
    queue.enqueue(job("b"), LIMITS).await.unwrap();
    let leased = queue.lease("d", "w1", 1, LONG_TTL, NO_BLOCK).await.unwrap().remove(0);
    assert_eq!(leased.job.id, "a");
    queue.append_output(&leased.lease, 0, vec![tokens(&[1, 2])]).await.unwrap();

    let other = RedisQueue::connect(redis_config(&server, 3)).await.unwrap();
    let owner = other.output_owner("a").await.unwrap().expect("known");
    assert_eq!((owner.tenant.as_str(), owner.deployment.as_str(), owner.stream_meta.as_deref()), ("acme", "d", Some("{\"a\":1}")));
    assert_eq!(other.attach_reader("a").await.unwrap(), Some(1));
    let events = other.read_output("a", 0, NO_BLOCK).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    other.cancel("b").await.unwrap();
    let events = queue.read_output("b", 0, NO_BLOCK).await.unwrap();
    assert!(events.last().is_some_and(|e| failed_with(&e.event, "cancelled")), "{events:?}");
    assert_eq!(other.output_owner("nobody").await.unwrap(), None);
    assert_eq!(other.attach_reader("nobody").await.unwrap(), None);
    assert!(matches!(other.read_output("nobody", 0, NO_BLOCK).await, Err(QueueError::UnknownJob(_))));

    // The id `a` is taken in `d`: refused in `e`, and `a` is still `d`'s.
    let mut elsewhere = job("a");
    elsewhere.deployment = "e".into();
    assert!(matches!(other.enqueue(elsewhere, LIMITS).await, Err(QueueError::DuplicateJob(_))));
    assert_eq!(other.depth("e").await.unwrap().waiting, 0);
    assert_eq!(other.output_owner("a").await.unwrap().expect("known").deployment, "d");
    assert_eq!(queue.depth("d").await.unwrap().leased, 1);
}
