//! What one request costs Redis, counted from `INFO commandstats` (commands run inside
//! scripts included), and the waiting counts the deployment scripts keep instead of
//! walking the streams. Command counts are deterministic, so the budgets are exact:
//! a change that adds a command to a request's path fails here.
//!
//! Needs `redis-server` installed (each test starts its own on a free port).

mod common;

use std::time::Duration;

use swell_cluster::redis_queue::testing::{command_calls, reset_command_calls, RedisServer, RedisServerOptions};
use swell_cluster::{AdmissionLimits, AppendOutcome, OutputEvent, Queue, QueueError, RedisQueue};
use common::backend::redis_config;
use common::{finished, job, tokens};

const LIMITS: AdmissionLimits = AdmissionLimits { max_queue_depth: 100 };
const TTL: Duration = Duration::from_secs(30);

/// One request's whole path, as the gateway and a replica run it: enqueue (the job's
/// state, admission and its pointer key), lease (take), one append with `Started` and
/// the first tokens, one with more tokens and the terminal event (which acknowledges
/// the job), the ack (nothing left to do), and the gateway's two reads.
#[tokio::test]
async fn redis_a_request_costs_a_bounded_number_of_commands() {
    let server = RedisServer::start(RedisServerOptions::default());
    let queue = RedisQueue::connect(redis_config(&server, 3)).await.unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    // The first request of a deployment creates its stream, group and counts.
    queue.enqueue(job("warm"), LIMITS).await.unwrap();
    let warm = queue.lease("d", "w1", 1, TTL, Duration::ZERO).await.unwrap().remove(0);
    queue.append_output(&warm.lease, 0, vec![tokens(&[1]), finished()]).await.unwrap();
    assert!(queue.ack(&warm.lease).await.unwrap());
    // And the gateway's first blocking read opens its pooled connection.
    assert_eq!(queue.read_output("warm", 0, Duration::from_secs(1)).await.unwrap().len(), 2);

    reset_command_calls(&mut raw).await;
    queue.enqueue(job("a"), LIMITS).await.unwrap();
    let enqueue = command_calls(&mut raw).await.values().sum::<u64>();
    reset_command_calls(&mut raw).await;
    let lease = queue.lease("d", "w1", 1, TTL, Duration::ZERO).await.unwrap().remove(0);
    let take = command_calls(&mut raw).await.values().sum::<u64>();
    reset_command_calls(&mut raw).await;
    let started = OutputEvent::Started { replica: "w1".into() };
    let first = queue.append_output(&lease.lease, lease.resume_after_seq, vec![started, tokens(&[1])]).await.unwrap();
    assert_eq!(first, AppendOutcome::Accepted(2));
    let first_append = command_calls(&mut raw).await.values().sum::<u64>();
    reset_command_calls(&mut raw).await;
    let read = queue.read_output("a", 0, Duration::from_secs(1)).await.unwrap();
    assert_eq!(read.len(), 2);
    let first_read = command_calls(&mut raw).await.values().sum::<u64>();
    reset_command_calls(&mut raw).await;
    let more = vec![tokens(&[2]), tokens(&[3]), finished()];
    assert_eq!(queue.append_output(&lease.lease, 2, more).await.unwrap(), AppendOutcome::Accepted(5));
    let last_append = command_calls(&mut raw).await.values().sum::<u64>();
    reset_command_calls(&mut raw).await;
    assert_eq!(queue.read_output("a", 2, Duration::from_secs(1)).await.unwrap().len(), 3);
    let last_read = command_calls(&mut raw).await.values().sum::<u64>();
    // The read that returned the end forgot where the job is: one more read finds it by
    // its pointer key (`GET`), then finds nothing new (`XRANGE`, `EXISTS`).
    reset_command_calls(&mut raw).await;
    assert!(queue.read_output("a", 5, Duration::ZERO).await.unwrap().is_empty());
    let again = command_calls(&mut raw).await;
    assert_eq!(again.get("get"), Some(&1), "{again:?}");
    reset_command_calls(&mut raw).await;
    assert!(queue.ack(&lease.lease).await.unwrap());
    let ack = command_calls(&mut raw).await;

    // Each step: its script call (or plain command) plus what runs inside it.
    // enqueue: one script (HSETNX + PEXPIRE of the job's state, then EXISTS of its lease
    // hash, HMGET counts (with the requeued count, and whether the stream's group
    // exists), XADD, HSET, HINCRBY count; no XADD to the wake-up stream: no consumer is
    // waiting on it), and beside it the SET of the job's pointer key.
    assert_eq!(enqueue, 1 + 7 + 1, "enqueue");
    // take (TIME, HMGET counts (which say nothing is requeued or parked, so no LPOP and
    // no EXISTS of the parked sets), XREADGROUP, HSET + ZADD per new job, HINCRBY
    // count; no HSET of `seen`, marked by the take just before); no job_start: a first
    // delivery starts with its first append.
    assert_eq!(take, 1 + 6, "lease");
    // HMGET, one XADD for both events, HSET (with the consumer: the delivery starts
    // here); PTTL and a PEXPIRE for the output stream it created.
    assert_eq!(first_append, 1 + 1 + 1 + 1 + 2, "first append");
    assert_eq!(first_read, 1, "a read that finds output is one XREAD");
    // HMGET, one XADD for the 3 events, HSET, a PEXPIRE for the state and the output;
    // then the ack: HMGET of the lease hash, XACK, XDEL, ZREM, DEL.
    assert_eq!(last_append, 1 + 1 + 1 + 1 + 2 + 5, "terminal append");
    assert_eq!(last_read, 1);
    // The terminal append acknowledged the job: nothing left.
    assert_eq!(ack.values().sum::<u64>(), 0, "ack: {ack:?}");

    // A consumer that found nothing and waits: the next enqueue wakes it (an XADD to
    // the wake-up stream and an HDEL of `asleep`), the one after does not.
    assert!(queue.lease("d", "w1", 1, TTL, Duration::from_millis(50)).await.unwrap().is_empty());
    reset_command_calls(&mut raw).await;
    queue.enqueue(job("b"), LIMITS).await.unwrap();
    let waking = command_calls(&mut raw).await;
    assert_eq!(waking.values().sum::<u64>(), 1 + 7 + 1 + 2, "{waking:?}");
    assert_eq!(waking.get("xadd"), Some(&2), "the job's entry and the wake-up");
    reset_command_calls(&mut raw).await;
    queue.enqueue(job("c"), LIMITS).await.unwrap();
    assert_eq!(command_calls(&mut raw).await.values().sum::<u64>(), 1 + 7 + 1);
}

/// The waiting counts follow every move (enqueue, take, release, reclaim, cancel), so
/// admission and positions agree with `depth`, which walks the streams; counts moved
/// wrongly are set right by the next `depth`.
#[tokio::test]
async fn redis_waiting_counts_follow_every_move_and_depth_repairs_them() {
    let server = RedisServer::start(RedisServerOptions::default());
    let queue = RedisQueue::connect(redis_config(&server, 3)).await.unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let counts = |raw: &mut redis::aio::MultiplexedConnection| {
        let mut raw = raw.clone();
        async move {
            let kept: Vec<Option<u64>> = redis::cmd("HMGET")
                .arg("test:{dep:d}:count")
                .arg("high")
                .arg("normal")
                .arg("low")
                .query_async(&mut raw)
                .await
                .unwrap();
            kept.into_iter().map(Option::unwrap_or_default).collect::<Vec<_>>()
        }
    };
    for id in ["a", "b", "c", "d"] {
        queue.enqueue(job(id), LIMITS).await.unwrap();
    }
    assert_eq!(counts(&mut raw).await, [0, 4, 0]);
    let short = Duration::from_millis(200);
    let leases = queue.lease("d", "w1", 2, short, Duration::ZERO).await.unwrap();
    assert_eq!(counts(&mut raw).await, [0, 2, 0]);
    queue.cancel("c").await.unwrap();
    assert_eq!(counts(&mut raw).await, [0, 1, 0]);
    // Handed back and reclaimed jobs wait in the requeued list, not in the counts.
    assert!(queue.release(&leases[0].lease).await.unwrap());
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    assert_eq!(queue.reclaim_expired("d").await.unwrap(), 1);
    assert_eq!(counts(&mut raw).await, [0, 1, 0]);
    let depth = queue.depth("d").await.unwrap();
    assert_eq!((depth.waiting, depth.leased), (3, 0));
    assert_eq!(queue.enqueue(job("e"), LIMITS).await.unwrap().position, 4);

    // Moved wrongly (as by a bug): admission believes it, `depth` sets it right.
    let _: () = redis::cmd("HSET").arg("test:{dep:d}:count").arg("normal").arg(99).query_async(&mut raw).await.unwrap();
    let full = queue.enqueue(job("f"), LIMITS).await.unwrap_err();
    assert!(matches!(full, QueueError::Full { depth: 101, .. }), "{full:?}");
    assert_eq!(queue.depth("d").await.unwrap().waiting, 4);
    assert_eq!(counts(&mut raw).await, [0, 2, 0]);
    assert_eq!(queue.enqueue(job("f"), LIMITS).await.unwrap().position, 5);
    // Everything taken: nothing left to count.
    let all = queue.lease("d", "w2", 10, TTL, Duration::ZERO).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(counts(&mut raw).await, [0, 0, 0]);
}
