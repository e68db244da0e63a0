//! The embedded queue's own behaviour, through the `Queue` trait: positions and the depth
//! limit, leases, blocking, output streams, redelivery with fencing, the delivery limit,
//! hand-backs, cancellation, deadlines and output retention. (The conformance suite that
//! runs against Redis too is `redis_queue.rs`; routed jobs are `memory_routing.rs`.)

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{finished, job, tokens};
use swell_cluster::{unix_millis, AdmissionLimits, AppendOutcome, InMemoryQueue, InMemoryQueueConfig, OutputEvent, Queue, QueueError};
use tokio::time::Instant;


const LIMITS: AdmissionLimits = AdmissionLimits { max_queue_depth: 100 };
const TTL: Duration = Duration::from_secs(10);




#[tokio::test]
async fn enqueue_reports_positions_and_refuses_past_the_depth_limit() {
    let queue = InMemoryQueue::default();
    let limits = AdmissionLimits { max_queue_depth: 2 };
    assert_eq!(queue.enqueue(job("a"), limits).await.unwrap().position, 1);
    assert_eq!(queue.enqueue(job("b"), limits).await.unwrap().position, 2);
    let err = queue.enqueue(job("c"), limits).await.unwrap_err();
    assert_eq!(err.code(), "queue_full");
    assert_eq!(queue.position("d", "b").await.unwrap(), Some(2));
    assert_eq!(
        queue.enqueue(job("a"), LIMITS).await.unwrap_err(),
        QueueError::DuplicateJob("a".into())
    );
}

#[tokio::test]
async fn lease_takes_oldest_first_and_ack_finishes() {
    let queue = InMemoryQueue::default();
    for id in ["a", "b", "c"] {
        queue.enqueue(job(id), LIMITS).await.unwrap();
    }
    let leases = queue.lease("d", "w1", 2, TTL, Duration::ZERO).await.unwrap();
    let ids: Vec<_> = leases.iter().map(|l| l.job.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(leases[0].deliveries, 1);
    let depth = queue.depth("d").await.unwrap();
    assert_eq!((depth.waiting, depth.leased), (1, 2));
    assert_eq!(queue.position("d", "a").await.unwrap(), None);
    assert_eq!(queue.position("d", "c").await.unwrap(), Some(1));
    assert!(queue.ack(&leases[0].lease).await.unwrap());
    assert_eq!(queue.depth("d").await.unwrap().leased, 1);
}

#[tokio::test]
async fn a_blocked_lease_wakes_when_work_arrives() {
    let queue = Arc::new(InMemoryQueue::default());
    let waiter = {
        let queue = queue.clone();
        tokio::spawn(async move {
            queue.lease("d", "w1", 1, TTL, Duration::from_secs(5)).await.unwrap()
        })
    };
    tokio::task::yield_now().await;
    queue.enqueue(job("a"), LIMITS).await.unwrap();
    let leases = waiter.await.unwrap();
    assert_eq!(leases.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lease_with_nothing_to_take_returns_empty_after_block() {
    let queue = InMemoryQueue::default();
    let started = Instant::now();
    let leases = queue.lease("d", "w1", 1, TTL, Duration::from_millis(300)).await.unwrap();
    assert!(leases.is_empty());
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}

#[tokio::test]
async fn output_is_read_in_order_and_resumable_from_a_sequence_number() {
    let queue = InMemoryQueue::default();
    queue.enqueue(job("a"), LIMITS).await.unwrap();
    let lease = queue.lease("d", "w1", 1, TTL, Duration::ZERO).await.unwrap().remove(0);
    let outcome = queue
        .append_output(&lease.lease, 0, vec![tokens(&[7]), tokens(&[8]), finished()])
        .await
        .unwrap();
    assert_eq!(outcome, AppendOutcome::Accepted(3));
    let all = queue.read_output("a", 0, Duration::ZERO).await.unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let rest = queue.read_output("a", 2, Duration::ZERO).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(rest[0].event.is_terminal());
    assert!(queue.read_output("a", 3, Duration::ZERO).await.unwrap().is_empty());
    assert!(matches!(
        queue.read_output("nope", 0, Duration::ZERO).await,
        Err(QueueError::UnknownJob(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_redelivered_with_a_new_epoch_and_the_old_writer_is_fenced() {
    let queue = InMemoryQueue::default();
    queue.enqueue(job("a"), LIMITS).await.unwrap();
    let first = queue.lease("d", "w1", 1, TTL, Duration::ZERO).await.unwrap().remove(0);
    queue.append_output(&first.lease, 0, vec![tokens(&[5, 6])]).await.unwrap();

    // Not expired yet: nothing is reclaimed, and renewing keeps it.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(queue.reclaim_expired("d").await.unwrap(), 0);
    assert_eq!(queue.renew(std::slice::from_ref(&first.lease), TTL).await.unwrap(), [true]);
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(queue.reclaim_expired("d").await.unwrap(), 0);

    // The owner stops renewing: reclaimed after the TTL with a bumped epoch.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(queue.reclaim_expired("d").await.unwrap(), 1);
    let second = queue.lease("d", "w2", 1, TTL, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(second.lease.epoch, first.lease.epoch + 1);
    assert_eq!(second.deliveries, 2);
    assert_eq!(second.resume_tokens, [5, 6]);
    assert_eq!(second.resume_after_seq, 1);

    // The old owner wakes up: every write is rejected.
    assert_eq!(
        queue.append_output(&first.lease, 1, vec![tokens(&[9])]).await.unwrap(),
        AppendOutcome::Fenced
    );
    assert!(!queue.ack(&first.lease).await.unwrap());
    assert_eq!(queue.renew(std::slice::from_ref(&first.lease), TTL).await.unwrap(), [false]);

    // The new owner continues the same stream.
    queue.append_output(&second.lease, second.resume_after_seq, vec![tokens(&[7]), finished()]).await.unwrap();
    assert!(queue.ack(&second.lease).await.unwrap());
    let events = queue.read_output("a", 0, Duration::ZERO).await.unwrap();
    assert_eq!(events.iter().map(|e| (e.seq, e.epoch)).collect::<Vec<_>>(), [(1, 1), (2, 2), (3, 2)]);
}

#[tokio::test(start_paused = true)]
async fn a_job_whose_consumers_keep_dying_is_failed_after_max_deliveries() {
    let queue = InMemoryQueue::new(InMemoryQueueConfig { max_deliveries: 2, ..Default::default() });
    queue.enqueue(job("a"), LIMITS).await.unwrap();
    for _ in 0..2 {
        queue.lease("d", "w", 1, TTL, Duration::ZERO).await.unwrap();
        tokio::time::advance(TTL + Duration::from_secs(1)).await;
        queue.reclaim_expired("d").await.unwrap();
    }
    let events = queue.read_output("a", 0, Duration::ZERO).await.unwrap();
    assert!(matches!(&events.last().unwrap().event, OutputEvent::Failed { code, .. } if code == "delivery_limit"));
    assert!(queue.lease("d", "w", 1, TTL, Duration::ZERO).await.unwrap().is_empty());
}

#[tokio::test]
async fn release_hands_a_job_back_to_the_head_without_counting_a_delivery() {
    let queue = InMemoryQueue::default();
    queue.enqueue(job("a"), LIMITS).await.unwrap();
    queue.enqueue(job("b"), LIMITS).await.unwrap();
    let first = queue.lease("d", "w1", 1, TTL, Duration::ZERO).await.unwrap().remove(0);
    assert!(queue.release(&first.lease).await.unwrap());
    assert_eq!(queue.position("d", "a").await.unwrap(), Some(1));
    let again = queue.lease("d", "w2", 1, TTL, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(again.job.id, "a");
    assert_eq!(again.deliveries, 1);
    assert_eq!(
        queue.append_output(&first.lease, 0, vec![tokens(&[1])]).await.unwrap(),
        AppendOutcome::Fenced
    );
}

#[tokio::test]
async fn cancelling_a_waiting_job_removes_it_and_ends_its_stream() {
    let queue = InMemoryQueue::default();
    queue.enqueue(job("a"), LIMITS).await.unwrap();
    queue.cancel("a").await.unwrap();
    assert_eq!(queue.depth("d").await.unwrap().waiting, 0);
    let events = queue.read_output("a", 0, Duration::ZERO).await.unwrap();
    assert!(matches!(&events[0].event, OutputEvent::Failed { code, .. } if code == "cancelled"));
    queue.cancel("a").await.unwrap();
    queue.cancel("unknown").await.unwrap();
}

#[tokio::test]
async fn cancelling_a_leased_job_stops_its_writer_at_the_next_append() {
    let queue = InMemoryQueue::default();
    queue.enqueue(job("a"), LIMITS).await.unwrap();
    let lease = queue.lease("d", "w1", 1, TTL, Duration::ZERO).await.unwrap().remove(0);
    queue.cancel("a").await.unwrap();
    assert_eq!(
        queue.append_output(&lease.lease, 0, vec![tokens(&[1])]).await.unwrap(),
        AppendOutcome::Cancelled
    );
    assert_eq!(queue.depth("d").await.unwrap().leased, 0);
    let events = queue.read_output("a", 0, Duration::ZERO).await.unwrap();
    assert_eq!(events.len(), 1, "the cancelled write was not stored");
    assert!(events[0].event.is_terminal());
}

#[tokio::test]
async fn a_job_past_its_deadline_is_failed_instead_of_leased() {
    let queue = InMemoryQueue::default();
    let mut late = job("a");
    late.deadline_ms = Some(unix_millis() - 1);
    queue.enqueue(late, LIMITS).await.unwrap();
    queue.enqueue(job("b"), LIMITS).await.unwrap();
    let leases = queue.lease("d", "w1", 2, TTL, Duration::ZERO).await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].job.id, "b");
    let events = queue.read_output("a", 0, Duration::ZERO).await.unwrap();
    assert!(matches!(&events[0].event, OutputEvent::Failed { code, .. } if code == "deadline_exceeded"));
}

/// A queue keeping output 5 s, holding job `a`, finished 6 s ago.
async fn queue_with_output_past_retention() -> InMemoryQueue {
    let queue = InMemoryQueue::new(InMemoryQueueConfig {
        output_retention: Duration::from_secs(5),
        ..Default::default()
    });
    queue.enqueue(job("a"), LIMITS).await.unwrap();
    let lease = queue.lease("d", "w1", 1, TTL, Duration::ZERO).await.unwrap().remove(0);
    queue.append_output(&lease.lease, 0, vec![finished()]).await.unwrap();
    queue.ack(&lease.lease).await.unwrap();
    tokio::time::advance(Duration::from_secs(6)).await;
    queue
}

#[tokio::test(start_paused = true)]
async fn finished_output_is_dropped_after_the_retention_period() {
    let queue = queue_with_output_past_retention().await;
    queue.enqueue(job("b"), LIMITS).await.unwrap(); // sweeps
    assert!(queue.read_output("a", 0, Duration::ZERO).await.is_err());
}

/// After load ends no request arrives to sweep on enqueue; the supervisors' depth
/// samples (every tick) drop finished outputs on time, so memory returns.
#[tokio::test(start_paused = true)]
async fn an_idle_queue_drops_finished_output_when_its_depth_is_sampled() {
    let queue = queue_with_output_past_retention().await;
    queue.depth("d").await.unwrap();
    assert!(queue.read_output("a", 0, Duration::ZERO).await.is_err(), "its output is gone");
    // And the job itself: its id can be enqueued again.
    queue.enqueue(job("a"), LIMITS).await.unwrap();
}
