//! The queue on a Redis Cluster of 3 masters: a deployment's queue, and its requests'
//! state and output, keep to the one slot of `{dep:NAME}` (a hot deployment spreads
//! over several with `queue_partitions`: `redis_partitions.rs`), while each request's
//! pointer key (`{job:ID}`, read only by a gateway that resumes another's stream)
//! hashes to its own slot, so pointers land on every master. (The conformance
//! scenarios run on such a cluster too: `redis_queue.rs`, `routing_queue.rs`.)
//!
//! Needs `redis-server` and `redis-cli` installed.

mod common;

use std::time::Duration;

use common::backend::redis_config_at;
use common::{finished, job, tokens};
use swell_cluster::redis_queue::testing::RedisCluster;
use swell_cluster::{AdmissionLimits, AppendOutcome, Queue, RedisQueue};

const LIMITS: AdmissionLimits = AdmissionLimits { max_queue_depth: 100 };

async fn keys_on(url: &str) -> Vec<String> {
    let mut connection = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS").arg("test:*").query_async(&mut connection).await.unwrap()
}

#[tokio::test]
async fn a_deployments_queue_and_requests_keep_to_its_slot_and_pointers_spread() {
    let cluster = RedisCluster::start(3, 0);
    let queue = RedisQueue::connect(redis_config_at(cluster.url(), 3)).await.unwrap();
    for i in 0..30 {
        queue.enqueue(job(&format!("job-{i}")), LIMITS).await.unwrap();
    }
    let leases = queue.lease("d", "w1", 30, Duration::from_secs(30), Duration::ZERO).await.unwrap();
    assert_eq!(leases.len(), 30);
    for lease in &leases {
        let events = vec![tokens(&[1]), finished()];
        assert_eq!(queue.append_output(&lease.lease, 0, events).await.unwrap(), AppendOutcome::Accepted(2));
    }

    let queue_master = cluster.master_of("test:{dep:d}:jobs");
    for node in 0..cluster.node_count() {
        let keys = keys_on(&cluster.node_url(node)).await;
        let pointers = keys.iter().filter(|key| key.starts_with("test:{job:")).count();
        let deployment = keys.iter().filter(|key| key.starts_with("test:{dep:d}")).count();
        assert!(pointers > 0, "master {node} holds no request's pointer key: {keys:?}");
        if node == queue_master {
            // The queue, and each request's state and output, in its slot.
            let states = keys.iter().filter(|key| key.starts_with("test:{dep:d}:state:")).count();
            assert_eq!(states, 30, "{keys:?}");
        } else {
            assert_eq!(deployment, 0, "master {node} holds keys of the deployment's queue: {keys:?}");
        }
    }
    for lease in &leases {
        assert!(queue.ack(&lease.lease).await.unwrap());
    }
    assert_eq!(queue.depth("d").await.unwrap().leased, 0);
}
