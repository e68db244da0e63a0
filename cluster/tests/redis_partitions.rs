//! A deployment's queue split into partitions on a Redis Cluster of 3 masters
//! (`RedisQueueConfig::queue_partitions`, `[cluster] queue_partitions`): one busy deployment's queue spreads over the
//! masters, every job is leased once, a consumer waiting for work wakes for a job in
//! any partition, and admission, depth, reclaim and cancel work across partitions.
//!
//! Needs `redis-server` and `redis-cli` installed.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::backend::redis_config_at;
use common::{finished, job, tokens};
use swell_cluster::redis_queue::testing::RedisCluster;
use swell_cluster::{AdmissionLimits, AppendOutcome, Queue, QueueError, RedisQueue, RedisQueueConfig};

const LIMITS: AdmissionLimits = AdmissionLimits { max_queue_depth: 1000 };
const TTL: Duration = Duration::from_secs(30);
const PARTITIONS: u32 = 4;

async fn partitioned(cluster: &RedisCluster) -> RedisQueue {
    let config = RedisQueueConfig { queue_partitions: PARTITIONS, ..redis_config_at(cluster.url(), 3) };
    RedisQueue::connect(config).await.unwrap()
}

/// The work stream of partition `k` of deployment `d`.
fn stream_of(partition: u32) -> String {
    if partition == 0 {
        "test:{dep:d}:jobs".to_string()
    } else {
        format!("test:{{dep:d#{partition}}}:jobs")
    }
}

/// Job ids, one or more in every partition.
fn ids_in_every_partition(queue: &RedisQueue, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("job-{i}")).collect();
    let covered: BTreeSet<u32> = ids.iter().map(|id| queue.partition_of(id)).collect();
    assert_eq!(covered.len(), PARTITIONS as usize, "the ids cover every partition");
    ids
}

#[tokio::test]
async fn one_deployments_queue_spreads_over_the_masters_and_each_job_is_leased_once() {
    let cluster = RedisCluster::start(3, 0);
    let queue = Arc::new(partitioned(&cluster).await);
    let masters: BTreeSet<usize> = (0..PARTITIONS).map(|k| cluster.master_of(&stream_of(k))).collect();
    assert!(masters.len() >= 2, "the partitions' slots are on several masters: {masters:?}");

    let ids = ids_in_every_partition(&queue, 40);
    for id in &ids {
        queue.enqueue(job(id), LIMITS).await.unwrap();
    }
    assert_eq!(queue.depth("d").await.unwrap().waiting, 40);
    // Two consumers take at once, in batches, until nothing is left.
    let consumers = ["w1", "w2"].map(|consumer| {
        let queue = queue.clone();
        tokio::spawn(async move {
            let mut taken = Vec::new();
            loop {
                let leases = queue.lease("d", consumer, 7, TTL, Duration::ZERO).await.unwrap();
                if leases.is_empty() {
                    return taken;
                }
                for lease in leases {
                    let events = vec![tokens(&[1]), finished()];
                    assert_eq!(queue.append_output(&lease.lease, 0, events).await.unwrap(), AppendOutcome::Accepted(2));
                    assert!(queue.ack(&lease.lease).await.unwrap());
                    taken.push(lease.job.id);
                }
            }
        })
    });
    let mut all = Vec::new();
    for consumer in consumers {
        all.extend(consumer.await.unwrap());
    }
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (40, 40), "every job leased exactly once");
    let depth = queue.depth("d").await.unwrap();
    assert_eq!((depth.waiting, depth.leased), (0, 0));
    for id in &ids {
        let events = queue.read_output(id, 0, Duration::ZERO).await.unwrap();
        assert_eq!(events.len(), 2, "{id}: {events:?}");
    }
}

#[tokio::test]
async fn a_waiting_consumer_wakes_for_a_job_in_any_partition() {
    let cluster = RedisCluster::start(3, 0);
    let queue = Arc::new(partitioned(&cluster).await);
    for id in ids_in_every_partition(&queue, 12) {
        if queue.partition_of(&id) == 0 && id != "job-0" {
            continue;
        }
        // The consumer looks, finds nothing and waits far longer than the test takes:
        // only a wake-up ends its wait with the job.
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.lease("d", "w1", 1, TTL, Duration::from_secs(60)).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        queue.enqueue(job(&id), LIMITS).await.unwrap();
        let leases = tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("the waiting consumer was woken").unwrap();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].job.id, id, "partition {}", queue.partition_of(&id));
        assert!(queue.ack(&leases[0].lease).await.unwrap());
    }
    // Only partition 0's wake-up stream is ever written (the one consumers wait on).
    for partition in 1..PARTITIONS {
        let key = format!("test:{{dep:d#{partition}}}:wake");
        let url = cluster.node_url(cluster.master_of(&key));
        let mut connection = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
        let exists: u32 = redis::cmd("EXISTS").arg(&key).query_async(&mut connection).await.unwrap();
        assert_eq!(exists, 0, "{key}");
    }
}

#[tokio::test]
async fn admission_depth_reclaim_and_cancel_work_across_partitions() {
    let cluster = RedisCluster::start(3, 0);
    let queue = partitioned(&cluster).await;
    // Each partition admits its share of the limit: 8 over 4 partitions, 2 each.
    let limits = AdmissionLimits { max_queue_depth: 8 };
    let mut admitted = Vec::new();
    let mut per_partition = [0u32; PARTITIONS as usize];
    for i in 0..40 {
        let id = format!("job-{i}");
        let partition = queue.partition_of(&id) as usize;
        match queue.enqueue(job(&id), limits).await {
            Ok(enqueued) => {
                per_partition[partition] += 1;
                assert!(enqueued.position >= 1);
                admitted.push(id);
            }
            Err(QueueError::Full { depth, .. }) => {
                assert_eq!(per_partition[partition], 2, "refused only when its partition is full");
                assert_eq!(depth, 2 * u64::from(PARTITIONS), "the refusal's depth is the partition's, scaled");
            }
            Err(error) => panic!("{error}"),
        }
    }
    assert_eq!(per_partition, [2; PARTITIONS as usize]);
    assert_eq!(queue.depth("d").await.unwrap().waiting, 8);

    // A waiting job is cancelled in its partition.
    let cancelled = admitted.pop().unwrap();
    queue.cancel(&cancelled).await.unwrap();
    assert_eq!(queue.depth("d").await.unwrap().waiting, 7);

    // Leases that run out are reclaimed in every partition, and delivered again.
    let short = Duration::from_millis(300);
    let leases = queue.lease("d", "w1", 10, short, Duration::ZERO).await.unwrap();
    assert_eq!(leases.len(), 7);
    assert_eq!(queue.depth("d").await.unwrap().leased, 7);
    tokio::time::sleep(short + Duration::from_millis(200)).await;
    assert_eq!(queue.reclaim_expired("d").await.unwrap(), 7);
    let again = queue.lease("d", "w2", 10, TTL, Duration::ZERO).await.unwrap();
    let mut ids: Vec<String> = again.iter().map(|lease| lease.job.id.clone()).collect();
    ids.sort();
    admitted.sort();
    assert_eq!(ids, admitted);
    assert!(again.iter().all(|lease| lease.lease.epoch == 2 && lease.deliveries == 2));
    assert_eq!(queue.renew(&again.iter().map(|l| l.lease.clone()).collect::<Vec<_>>(), TTL).await.unwrap(), [true; 7]);
}
