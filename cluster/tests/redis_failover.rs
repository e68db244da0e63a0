//! What a Redis failover can lose, and what the queue makes of it (docs/distributed.md,
//! "Redis Cluster and failover"): a write the master acknowledged but its replica never
//! got is gone after the replica takes over.
//!
//! - Output a replica had stored and a reader may have read, gone: the job ends with an
//!   explicit `output_lost` event numbered past anything a reader can have seen, never
//!   a silent stall and never a token in the place of another.
//! - With `wait_replicas`, admissions and terminal events wait (`WAIT`) for a replica
//!   of the master that took them, on that master (a Redis Cluster routes the `WAIT` to
//!   the key's shard); a replica that does not answer delays the call by `wait_timeout`,
//!   and the call goes on.
//!
//! Needs `redis-server` and `redis-cli` installed (each test starts its own).

mod common;

use std::time::Duration;

use common::backend::{redis_config, redis_config_at};
use common::{finished, job, tokens};
use swell_cluster::redis_queue::testing::{RedisCluster, RedisServer, RedisServerOptions};
use swell_cluster::{AdmissionLimits, AppendOutcome, OutputEvent, Queue, RedisQueue, RedisQueueConfig};

const LIMITS: AdmissionLimits = AdmissionLimits { max_queue_depth: 100 };
const TTL: Duration = Duration::from_secs(30);

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// `WAIT` calls a node executed since it started.
async fn waits(url: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut raw(url).await).await.unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_wait:"))
        .and_then(|rest| rest.split(',').find_map(|field| field.strip_prefix("calls=")))
        .map_or(0, |calls| calls.parse().unwrap())
}

/// The failover is simulated on one server: the last two events vanish from the
/// output stream and the job's state, as they would had the master died before its
/// replica got them.
#[tokio::test]
async fn output_a_failover_lost_ends_the_job_with_output_lost_past_what_readers_saw() {
    let server = RedisServer::start(RedisServerOptions::default());
    let queue = RedisQueue::connect(redis_config(&server, 3)).await.unwrap();
    queue.enqueue(job("a"), LIMITS).await.unwrap();
    let lease = queue.lease("d", "w1", 1, TTL, Duration::ZERO).await.unwrap().remove(0);
    let started = OutputEvent::Started { replica: "w1".into() };
    assert_eq!(queue.append_output(&lease.lease, 0, vec![started, tokens(&[1])]).await.unwrap(), AppendOutcome::Accepted(2));
    assert_eq!(queue.append_output(&lease.lease, 2, vec![tokens(&[2]), tokens(&[3])]).await.unwrap(), AppendOutcome::Accepted(4));
    // A reader got all four.
    let seen = queue.read_output("a", 0, Duration::from_secs(1)).await.unwrap();
    assert_eq!(seen.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);

    let mut redis = raw(&server.url()).await;
    // (The second append stored 3 and 4 in one entry, `0-4`.)
    let _: () = redis::cmd("XDEL").arg("test:{dep:d}:out:a").arg("0-4").query_async(&mut redis).await.unwrap();
    let _: () = redis::cmd("HSET").arg("test:{dep:d}:state:a").arg("last_seq").arg(2).query_async(&mut redis).await.unwrap();

    // The writer carries on after 4: nothing it sends is stored in place of 3 and 4.
    let next = queue.append_output(&lease.lease, 4, vec![tokens(&[4]), finished()]).await.unwrap();
    assert_eq!(next, AppendOutcome::Cancelled, "the writer is told to stop");
    // The reader, at 4, gets the explicit end (numbered past this append's events).
    let end = queue.read_output("a", 4, Duration::from_secs(1)).await.unwrap();
    assert_eq!(end.len(), 1, "{end:?}");
    assert_eq!(end[0].seq, 7);
    assert!(matches!(&end[0].event, OutputEvent::Failed { code, .. } if code == "output_lost"), "{end:?}");
    // A reader that had stopped at 2 sees the same end, and nothing else.
    let from_two = queue.read_output("a", 2, Duration::from_secs(1)).await.unwrap();
    assert_eq!(from_two.iter().map(|e| e.seq).collect::<Vec<_>>(), [7]);
    // The job is over on both sides: nothing is leased, nothing waits, its keys expire.
    let depth = queue.depth("d").await.unwrap();
    assert_eq!((depth.waiting, depth.leased), (0, 0));
    assert_eq!(queue.append_output(&lease.lease, 7, vec![tokens(&[5])]).await.unwrap(), AppendOutcome::Fenced);
    let ttl: i64 = redis::cmd("PTTL").arg("test:{dep:d}:out:a").query_async(&mut redis).await.unwrap();
    assert!(ttl > 0, "the output expires ({ttl})");
}

/// On a Redis Cluster of 3 masters with a replica each: the `WAIT`s run on the shards
/// that took the writes; with one of those replicas gone, the calls still succeed.
#[tokio::test]
async fn with_wait_replicas_admissions_and_terminal_events_wait_on_their_own_shard() {
    let mut cluster = RedisCluster::start(3, 1);
    let config =
        RedisQueueConfig { wait_replicas: 1, wait_timeout: Duration::from_millis(200), ..redis_config_at(cluster.url(), 3) };
    let queue = RedisQueue::connect(config).await.unwrap();
    // A job whose pointer key is on another shard than the deployment's queue (where
    // its state and output are).
    let deployment_shard = cluster.master_of("test:{dep:d}:jobs");
    let shard_of = |id: &str| cluster.master_of(&format!("test:{{job:{id}}}:at"));
    let id = (0..100).map(|i| format!("job-{i}")).find(|id| shard_of(id) != deployment_shard).unwrap();
    let job_shard = shard_of(&id);
    let again = (0..100).map(|i| format!("again-{i}")).find(|id| shard_of(id) == job_shard).unwrap();
    let before = [waits(&cluster.node_url(job_shard)).await, waits(&cluster.node_url(deployment_shard)).await];

    queue.enqueue(job(&id), LIMITS).await.unwrap();
    let after_enqueue = [waits(&cluster.node_url(job_shard)).await, waits(&cluster.node_url(deployment_shard)).await];
    assert_eq!([after_enqueue[0] - before[0], after_enqueue[1] - before[1]], [1, 1], "one WAIT on each shard");
    let lease = queue.lease("d", "w1", 1, TTL, Duration::ZERO).await.unwrap().remove(0);
    queue.append_output(&lease.lease, 0, vec![tokens(&[1])]).await.unwrap();
    assert_eq!(waits(&cluster.node_url(deployment_shard)).await, after_enqueue[1], "no WAIT for output that is not the end");
    queue.append_output(&lease.lease, 1, vec![finished()]).await.unwrap();
    assert_eq!(waits(&cluster.node_url(deployment_shard)).await, after_enqueue[1] + 1, "the terminal event waits");
    assert_eq!(waits(&cluster.node_url(job_shard)).await, after_enqueue[0], "nothing waits on the pointer's shard");
    assert!(queue.ack(&lease.lease).await.unwrap());

    // The pointer shard's replica dies: the WAIT times out, the calls succeed anyway.
    let replica = (0..cluster.node_count())
        .find(|&node| node != job_shard && cluster.replica_of(node) == Some(job_shard))
        .expect("the job shard's replica");
    cluster.kill(replica);
    queue.enqueue(job(&again), LIMITS).await.unwrap();
    let lease = queue.lease("d", "w1", 1, TTL, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(queue.append_output(&lease.lease, 0, vec![finished()]).await.unwrap(), AppendOutcome::Accepted(1));
    assert!(queue.ack(&lease.lease).await.unwrap());
}
