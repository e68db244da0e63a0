//! A Redis Cluster master fails over (`kill -9`) while requests stream through real
//! `swell serve` nodes: a gateway and two workers on a Redis Cluster of 3 masters with a
//! replica each (`redis-cluster://` seed nodes, `wait_replicas = 1`).
//!
//! The master killed holds the output streams and states of some of the requests in
//! flight, and none of the deployment's queue or the cluster's coordination (those
//! share one slot each, on another master). Every request must end within a bounded
//! time, completed with the text of an undisturbed run or with an explicit error event
//! after a prefix of it (no token missing, none repeated); the requests whose keys are
//! on the other masters complete undisturbed.

mod common;

use std::time::{Duration, Instant};

use common::nodes::*;
use swell_cluster::redis_queue::testing::RedisCluster;

const REQUESTS: u64 = 16;
const MAX_TOKENS: u32 = 150;

/// The deployment's queue is split this way, so that its requests' keys are on every
/// master.
const PARTITIONS: u32 = 8;

/// The job id of a streamed response (`cmpl-X` is job `req-X`), and its state's key
/// (in its queue partition's slot).
fn job_state_key(response_id: &str) -> String {
    let suffix = response_id.strip_prefix("cmpl-").expect("a completion id");
    swell_cluster::redis_queue::testing::job_state_key("swell", "chat", PARTITIONS, &format!("req-{suffix}"))
}

#[actix_rt::test]
async fn a_master_failing_over_mid_stream_ends_every_request_and_disturbs_no_other_shard() {
    let started = Instant::now();
    let dir = TempDir::new("redis-failover");
    let redis = TestRedis::Cluster(RedisCluster::start(3, 1));
    // Redis calls fail fast while a shard is down; the nodes retry them.
    let text = config("20ms", 16, 2, "")
        .replace("[cluster]\n", &format!("[cluster]\nwait_replicas = 1\nqueue_partitions = {PARTITIONS}\n"));
    let config = dir.write_config(&text);
    let (gateway, _workers) = gateway_and_two_workers(&dir, &config, &redis, true).await;
    let TestRedis::Cluster(mut cluster) = redis else { unreachable!() };

    // The undisturbed texts, all at once.
    let references = futures_util::future::join_all((0..REQUESTS).map(|seed| reference(&gateway, MAX_TOKENS, seed))).await;

    let opened = futures_util::future::join_all(
        (0..REQUESTS).map(|seed| {
            let (url, body) = (gateway.url.clone(), completion(MAX_TOKENS, seed));
            async move { SseStream::open(&url, None, &body).await }
        }),
    )
    .await;
    let mut streams: Vec<SseStream> = opened.into_iter().map(|s| s.expect("admitted")).collect();
    for stream in &mut streams {
        assert!(stream.read_until(10, Duration::from_secs(20)).await, "ended early: {:?}", stream.result);
    }
    // Which master holds each request's keys (its queue partition's); the victim holds
    // the most of them and neither the deployment's first partition (which the
    // consumers wait on) nor the coordination.
    let shards: Vec<usize> = streams
        .iter()
        .map(|s| cluster.master_of(&job_state_key(s.result.response_id.as_deref().expect("an id"))))
        .collect();
    let spared = [cluster.master_of("swell:{dep:chat}:jobs"), cluster.master_of("swell:{cluster}:leader")];
    let victim = (0..cluster.node_count())
        .filter(|node| !spared.contains(node) && cluster.replica_of(*node).is_none())
        .max_by_key(|node| shards.iter().filter(|s| *s == node).count())
        .expect("a master without the deployment's queue or the coordination");
    let on_victim = shards.iter().filter(|s| **s == victim).count();
    assert!(on_victim > 0, "no request has its keys on the master to kill: {shards:?}");

    let failover = Instant::now();
    let promoted = cluster.fail_over(victim);
    eprintln!("master {victim} ({on_victim} of {REQUESTS} requests) failed over to {promoted} in {:?}", failover.elapsed());

    let (mut completed, mut failed) = (0, 0);
    for ((stream, shard), expected) in streams.into_iter().zip(&shards).zip(&references) {
        let result = stream.finish(Duration::from_secs(60)).await;
        assert!(expected.starts_with(&result.text), "a token missing or repeated: {:?} vs {expected:?}", result.text);
        match &result.error {
            None => {
                assert!(result.done, "{result:?}");
                assert_eq!(&result.text, expected);
                completed += 1;
            }
            Some(error) => {
                assert_eq!(*shard, victim, "a request on an undisturbed shard failed: {error}");
                assert!(error["error"]["code"].is_string(), "an explicit error: {error}");
                failed += 1;
            }
        }
    }
    eprintln!("{completed} completed, {failed} ended with an explicit error; test took {:?}", started.elapsed());
}

/// A waiting request whose queue entry Redis lost (here: the deployment's keys deleted,
/// as a failover of their master before its replica had them would) ends with an
/// explicit `job_lost` error instead of waiting forever.
#[actix_rt::test]
async fn a_waiting_request_whose_queue_entry_was_lost_ends_with_job_lost() {
    let dir = TempDir::new("job-lost");
    let redis = TestRedis::server();
    let config = dir.write_config(&config("20ms", 8, 1, ""));
    // A gateway and no worker: the request waits in the queue.
    let gateway = Node::start(&dir.0, &config, &redis.url(), "gateway", "gw");
    wait_ready(&gateway, false).await;
    let mut stream = SseStream::open(&gateway.url, None, &completion(20, 1)).await.expect("admitted");
    let mut connection =
        swell_cluster::redis_conn::connect_shared(&redis.url(), Duration::from_secs(1), Duration::from_secs(2)).await.unwrap().1;
    let queued: Vec<String> = redis::cmd("KEYS").arg("swell:{dep:chat}:*").query_async(&mut connection).await.unwrap();
    assert!(queued.iter().any(|key| key.contains(":job:req-")), "the request is queued: {queued:?}");
    let _: () = redis::cmd("DEL").arg(&queued).query_async(&mut connection).await.unwrap();

    assert!(!stream.read_until(1, Duration::from_secs(20)).await, "the stream ends");
    let error = stream.result.error.clone().expect("an explicit error");
    assert_eq!(error["error"]["code"], "job_lost", "{error}");
}
