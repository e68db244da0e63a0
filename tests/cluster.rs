//! Distributed mode, process by process: real `swell serve --redis ... --role ...` nodes
//! (the binary, as separate processes) on a `redis-server` of the test's own, which the
//! test can `kill -9` and restart, as it can any node. The scenarios marked (*) run
//! twice: on one Redis (`…_one_redis`) and on a Redis Cluster of 3 masters
//! (`…_redis_cluster`, `redis-cluster://` seed nodes); the nodes' helpers are in
//! `tests/common/nodes.rs`, a master failing over mid-stream in `tests/redis_failover.rs`.
//!
//! - (*) a worker node killed mid-generation: the stream completes from the other worker,
//!   token for token what an undisturbed run gives (no repeat, no gap), usage right;
//! - Redis killed and restarted (AOF, `appendfsync always`) while requests stream and
//!   wait: every one of them ends, completed (with the reference text) or with an
//!   explicit error event, within a bounded time;
//! - (*) three gateways, one tenant limit of 3 concurrent requests: at most 3 admitted
//!   across the nodes, and a gateway killed mid-request leaks no slot (its lease expires).
//! - a worker stopped with SIGTERM hands its unfinished stream back when its shutdown
//!   timeout ends: another worker resumes it at once, not after the lease expires;
//! - a client that leaves a stream at one gateway resumes it at another
//!   (`GET /v1/streams/{id}`, `Last-Event-ID`) with exactly the tokens it missed;
//! - two worker nodes: the leader's autoscaler places replicas on both under load;
//!   killing one re-places its replicas on the other, which finishes its jobs; idle, the
//!   cluster goes back to zero.
//!
//! - (*) ingress: a job pushed into Redis is served; a gateway killed mid-relay is
//!   taken over by another, which resumes the replies with no gap or repeat.
//!
//! Every node runs the `sim` engine with a per-step delay, so a generation lasts long
//! enough to be interrupted, and its output depends only on the seed.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use swell_cluster::redis_queue::testing::{RedisServer, RedisServerOptions};

mod common;
use common::nodes::*;
use common::{client, wait_for};

/// The ingress tests' reply stream: under the reply prefix of the open mode's tenant
/// `anonymous` (docs/ingress.md).
const REPLY_TO: &str = "swell-replies:9:anonymous:{producer}";


async fn a_worker_killed_mid_generation_is_replaced_and_the_stream_has_no_gap_and_no_repeat(redis: TestRedis, partitions: u32) {
    let started = Instant::now();
    let dir = TempDir::new(&format!("worker-killed-{}-{partitions}", redis.kind()));
    let text = config("10ms", 8, 2, "").replace("[cluster]\n", &format!("[cluster]\nqueue_partitions = {partitions}\n"));
    let config = dir.write_config(&text);
    let (gateway, mut workers) = gateway_and_two_workers(&dir, &config, &redis, true).await;
    let (max_tokens, seed) = (200, 42);
    let expected = reference(&gateway, max_tokens, seed).await;

    let mut stream = SseStream::open(&gateway.url, None, &completion(max_tokens, seed)).await.expect("admitted");
    assert!(stream.read_until(20, Duration::from_secs(20)).await, "the stream ended early: {:?}", stream.result);
    // The worker whose replica holds the job.
    let mut holder = None;
    for (index, worker) in workers.iter().enumerate() {
        if active_sequences(worker).await > 0 {
            holder = Some(index);
        }
    }
    let holder = holder.expect("one worker holds the job");
    let survivor = 1 - holder;
    let survivor_tokens_before = generated_tokens(&workers[survivor]).await;
    workers[holder].kill();
    let received_at_kill = stream.result.chunks;

    let result = stream.finish(Duration::from_secs(30)).await;
    assert!(result.error.is_none(), "the stream failed: {result:?}");
    assert!(result.done, "the stream did not finish: {result:?}");
    assert!(received_at_kill < max_tokens as usize, "the job finished before the kill");
    assert_eq!(result.text, expected, "the resumed stream differs from an undisturbed run");
    let usage = result.usage.expect("usage");
    assert_eq!(usage["completion_tokens"], max_tokens, "{usage}");
    assert_eq!(usage["total_tokens"].as_u64(), Some(usage["prompt_tokens"].as_u64().unwrap() + max_tokens as u64));
    assert!(
        generated_tokens(&workers[survivor]).await > survivor_tokens_before,
        "the surviving worker generated the rest"
    );
    eprintln!("worker killed after {received_at_kill} chunks; test took {:?}", started.elapsed());
}

#[actix_rt::test]
async fn a_worker_killed_mid_generation_is_replaced_and_the_stream_has_no_gap_and_no_repeat_one_redis() {
    a_worker_killed_mid_generation_is_replaced_and_the_stream_has_no_gap_and_no_repeat(TestRedis::server(), 1).await;
}

#[actix_rt::test]
async fn a_worker_killed_mid_generation_is_replaced_and_the_stream_has_no_gap_and_no_repeat_redis_cluster() {
    a_worker_killed_mid_generation_is_replaced_and_the_stream_has_no_gap_and_no_repeat(TestRedis::cluster(), 1).await;
}

/// The deployment's queue in 8 partitions (the job's is one of them; the workers look
/// in all).
#[actix_rt::test]
async fn a_worker_killed_mid_generation_is_replaced_and_the_stream_has_no_gap_and_no_repeat_partitioned_queue() {
    a_worker_killed_mid_generation_is_replaced_and_the_stream_has_no_gap_and_no_repeat(TestRedis::cluster(), 8).await;
}

#[actix_rt::test]
async fn a_stream_left_at_one_gateway_is_resumed_at_another_with_exactly_the_missing_tokens() {
    let dir = TempDir::new("resume-elsewhere");
    let redis = TestRedis::server();
    let config = dir.write_config(&config("20ms", 8, 1, ""));
    let first = Node::start(&dir.0, &config, &redis.url(), "gateway", "gw1");
    let second = Node::start(&dir.0, &config, &redis.url(), "gateway", "gw2");
    let worker = Node::start(&dir.0, &config, &redis.url(), "worker", "w1");
    wait_ready(&first, false).await;
    wait_ready(&second, false).await;
    wait_ready(&worker, true).await;
    let (max_tokens, seed) = (120, 5);
    let expected = reference(&first, max_tokens, seed).await;

    let mut left = SseStream::open(&first.url, None, &completion(max_tokens, seed)).await.expect("admitted");
    assert!(left.read_until(10, Duration::from_secs(20)).await, "the stream ended early: {:?}", left.result);
    let had = std::mem::take(&mut left.result);
    drop(left);
    let last_event_id = had.last_event_id.expect("numbered events");
    assert!(last_event_id >= 10 && last_event_id < max_tokens as u64, "{had:?}");
    let stream_id = had.response_id.clone().expect("a response id");

    let rest = SseStream::resume(&second.url, &stream_id, last_event_id).await.expect("resumed at the other gateway");
    let rest = rest.finish(Duration::from_secs(30)).await;
    assert!(rest.done && rest.error.is_none(), "{rest:?}");
    assert_eq!(format!("{}{}", had.text, rest.text), expected, "no gap, no repeat");
    assert_eq!(rest.last_event_id, Some(max_tokens as u64));
    assert_eq!(rest.usage.expect("usage")["completion_tokens"], max_tokens);
    // An unknown stream is 404 at any gateway.
    let (status, body) = SseStream::resume(&second.url, "cmpl-0123456789abcdef", 0).await.err().expect("refused");
    assert_eq!(status, 404, "{body}");
}

#[actix_rt::test]
async fn redis_killed_and_restarted_with_aof_loses_no_accepted_request() {
    let started = Instant::now();
    let dir = TempDir::new("redis-restart");
    let mut redis = RedisServer::start(RedisServerOptions { append_only: true, append_fsync: "always" });
    // Two sequences at a time on the one worker: of six requests, four wait in the queue.
    let config = dir.write_config(&config("15ms", 2, 1, ""));
    let gateway = Node::start(&dir.0, &config, &redis.url(), "gateway", "gw");
    let worker = Node::start(&dir.0, &config, &redis.url(), "worker", "w1");
    wait_ready(&gateway, false).await;
    wait_ready(&worker, true).await;
    let (max_tokens, seed) = (60, 7);
    let expected = reference(&gateway, max_tokens, seed).await;

    let mut streams = Vec::new();
    for _ in 0..6 {
        streams.push(SseStream::open(&gateway.url, None, &completion(max_tokens, seed)).await.expect("admitted"));
    }
    // Two stream, four wait; then Redis dies and comes back (from its AOF).
    assert!(streams[0].read_until(10, Duration::from_secs(20)).await);
    redis.kill();
    // While it is down, new requests are refused at once with 503 and retry-after.
    let refused = wait_for("the gateway to notice", Duration::from_secs(5), || async {
        let (code, body) = get_json(&format!("{}/readyz", gateway.url)).await?;
        (code == 503).then_some(body)
    })
    .await;
    assert_eq!(refused["status"], "redis_unavailable");
    let before = Instant::now();
    let mut response = client()
        .post(format!("{}/v1/completions", gateway.url))
        .send_json(&completion(4, 1))
        .await
        .expect("an answer");
    assert!(before.elapsed() < Duration::from_secs(3), "a refusal, not a hang");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.expect("a json error");
    assert_eq!(body["error"]["code"], "queue_unavailable", "{body}");
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    redis.restart();

    let mut completed = 0;
    let mut failed = Vec::new();
    for (index, stream) in streams.into_iter().enumerate() {
        let result = stream.finish(Duration::from_secs(40)).await;
        match (&result.error, result.done) {
            (None, true) => {
                assert_eq!(result.text, expected, "request {index}: the stream differs from an undisturbed run");
                assert_eq!(result.usage.as_ref().expect("usage")["completion_tokens"], max_tokens);
                completed += 1;
            }
            (Some(error), _) => failed.push(error.clone()),
            (None, false) => panic!("request {index} ended without a terminal event: {result:?}"),
        }
    }
    eprintln!("completed {completed}, failed with an explicit error {}: {failed:?}", failed.len());
    // With `appendfsync always` nothing acknowledged is lost: everything completes.
    assert_eq!(completed, 6, "failed: {failed:?}");
    // And the cluster serves again.
    wait_for("the gateway to be ready again", Duration::from_secs(10), || async {
        let (code, _) = get_json(&format!("{}/readyz", gateway.url)).await?;
        (code == 200).then_some(())
    })
    .await;
    let after = reference(&gateway, 8, 3).await;
    assert!(!after.is_empty());
    eprintln!("test took {:?}", started.elapsed());
}


async fn three_gateways_share_one_concurrency_limit_and_a_killed_gateway_leaks_no_slot(redis: TestRedis) {
    let started = Instant::now();
    let dir = TempDir::new(&format!("shared-quota-{}", redis.kind()));
    let key = swell::tenants::generate_api_key();
    let tenant = format!(
        r#"
[tenants.acme]
limits = {{ max_concurrent_requests = 3 }}
api_key_hashes = ["{}"]
[quota]
lease_ttl = "2s"
lease_renew_interval = "500ms"
# The exact limit holds while Redis answers; on a loaded CI machine a call can take
# longer than the default 75 ms, and a timeout is the store not answering (each node then
# enforces its local share), which is not what this test is about.
redis_timeout = "1s"
"#,
        key.hash
    );
    // Clients that go away here are gone for good: no grace for a resume.
    let config = config("20ms", 16, 1, &tenant).replace("[queue]\n", "[queue]\nresume_grace = \"0s\"\n");
    let config = dir.write_config(&config);
    let mut gateways =
        vec![Node::start(&dir.0, &config, &redis.url(), "gateway", "gw1"), Node::start(&dir.0, &config, &redis.url(), "gateway", "gw2"), Node::start(&dir.0, &config, &redis.url(), "gateway", "gw3")];
    let worker = Node::start(&dir.0, &config, &redis.url(), "worker", "w1");
    for gateway in &gateways {
        wait_ready(gateway, false).await;
    }
    wait_ready(&worker, true).await;

    // 12 requests at once, 4 per gateway, each long enough (400 × 20 ms) to be in flight
    // together: the limit holds across the nodes, exactly (every admission is one
    // atomic script in Redis; no tolerance while Redis answers).
    let (admitted, refused) = hammer(&gateways.iter().collect::<Vec<_>>(), &key.api_key, 4, 400).await;
    eprintln!("admitted {}, refused {refused}", admitted.len());
    assert_eq!(admitted.len() + refused, 12);
    assert!(admitted.len() <= 3, "{} admitted across three gateways with a limit of 3", admitted.len());
    assert!(!admitted.is_empty());
    drop(admitted); // the clients go away: their slots are settled

    // A request in flight on gw3; gw3 dies with the slot held.
    let mut held = wait_for("a slot on gw3", Duration::from_secs(10), || async {
        SseStream::open(&gateways[2].url, Some(&key.api_key), &completion(400, 2)).await.ok()
    })
    .await;
    assert!(held.read_until(2, Duration::from_secs(10)).await);
    gateways[2].kill();
    let killed_at = Instant::now();
    // The dead node's slot is still leased: only two more fit now.
    let (admitted, refused) = hammer(&[&gateways[0], &gateways[1]], &key.api_key, 2, 400).await;
    let held_still = killed_at.elapsed() < Duration::from_millis(1500);
    eprintln!("right after the kill: admitted {}, refused {refused}", admitted.len());
    if held_still {
        assert!(admitted.len() <= 2, "the dead gateway's slot was given out before its lease expired");
    }
    drop(admitted);
    drop(held);

    // After the lease TTL the tenant has all three slots again.
    let all_three = wait_for("all three slots back", Duration::from_secs(15), || async {
        let (admitted, _) = hammer(&[&gateways[0], &gateways[1]], &key.api_key, 2, 400).await;
        if admitted.len() >= 3 {
            Some(admitted.len())
        } else {
            actix_rt::time::sleep(Duration::from_millis(200)).await;
            None
        }
    })
    .await;
    assert_eq!(all_three, 3, "never more than the limit");
    eprintln!("slots back {:?} after the kill; test took {:?}", killed_at.elapsed(), started.elapsed());
}

#[actix_rt::test]
async fn three_gateways_share_one_concurrency_limit_and_a_killed_gateway_leaks_no_slot_one_redis() {
    three_gateways_share_one_concurrency_limit_and_a_killed_gateway_leaks_no_slot(TestRedis::server()).await;
}

#[actix_rt::test]
async fn three_gateways_share_one_concurrency_limit_and_a_killed_gateway_leaks_no_slot_redis_cluster() {
    three_gateways_share_one_concurrency_limit_and_a_killed_gateway_leaks_no_slot(TestRedis::cluster()).await;
}

#[actix_rt::test]
async fn a_worker_shut_down_gracefully_hands_its_unfinished_stream_back_at_once() {
    let started = Instant::now();
    let dir = TempDir::new("worker-shutdown");
    let redis = TestRedis::server();
    // Leases far longer than the shutdown timeout: the stream can only move on in time
    // if the stopping worker hands it back.
    let text = config("10ms", 8, 2, "")
        .replace("lease_ttl = \"2s\"", "lease_ttl = \"20s\"")
        .replace("shutdown_timeout = \"2s\"", "shutdown_timeout = \"1s\"");
    let config = dir.write_config(&text);
    let (gateway, workers) = gateway_and_two_workers(&dir, &config, &redis, true).await;
    let (max_tokens, seed) = (300, 9);
    let expected = reference(&gateway, max_tokens, seed).await;

    let mut stream = SseStream::open(&gateway.url, None, &completion(max_tokens, seed)).await.expect("admitted");
    assert!(stream.read_until(20, Duration::from_secs(20)).await);
    let mut holder = None;
    for (index, worker) in workers.iter().enumerate() {
        if active_sequences(worker).await > 0 {
            holder = Some(index);
        }
    }
    let holder = &workers[holder.expect("one worker holds the job")];
    let pid = holder.child.as_ref().expect("running").id();
    let term = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill -TERM");
    assert!(term.success());
    let terminated_at = Instant::now();
    let result = stream.finish(Duration::from_secs(30)).await;
    let took = terminated_at.elapsed();
    assert!(result.done && result.error.is_none(), "{result:?}");
    assert_eq!(result.text, expected, "the handed-back stream differs from an undisturbed run");
    // 300 tokens × 10 ms is 3 s of generation in all; the lease (20 s) never expired.
    assert!(took < Duration::from_secs(10), "the stream waited {took:?}: it was not handed back");
    eprintln!("finished {took:?} after SIGTERM; test took {:?}", started.elapsed());
}

/// This node's view of the cluster (`GET /admin/v1/cluster`).
async fn cluster(node: &Node) -> Option<Value> {
    match get_json(&format!("{}/admin/v1/cluster", node.url)).await {
        Some((200, body)) => Some(body),
        _ => None,
    }
}

/// Replicas of `chat` the stored placement puts on each node (node → count).
async fn placement(node: &Node) -> Option<std::collections::BTreeMap<String, u64>> {
    let view = cluster(node).await?;
    let nodes = view["placement"].as_object()?;
    Some(
        nodes
            .iter()
            .filter_map(|(node, deployments)| Some((node.clone(), deployments["chat"].as_u64()?)))
            .filter(|(_, replicas)| *replicas > 0)
            .collect(),
    )
}

async fn ready_replicas(node: &Node) -> u64 {
    status(node).await.and_then(|status| status["replicas"]["ready"].as_u64()).unwrap_or(0)
}

/// The leader runs the deployment's autoscaler over the whole cluster's load and places
/// replicas on the worker nodes; killing one re-places its replicas on the other, whose
/// replicas finish its jobs; when the load is gone the cluster scales to zero.
#[actix_rt::test]
async fn load_places_replicas_on_both_workers_and_a_killed_worker_is_replaced_by_the_other() {
    let started = Instant::now();
    let dir = TempDir::new("placement");
    let redis = TestRedis::server();
    // From zero, up to 4 replicas of 2 sequences each, 2 concurrent requests per replica
    // wanted, no up-window, quick scale-down and scale to zero.
    let extra = r#"scale_up_window = "0s"
scale_down_window = "1s"
scale_to_zero_window = "2s"
metrics_window = "1s"
[deployments.chat.autoscaling.load_targets]
concurrent_requests = 2
[deployments.chat.autoscaling.velocity.scale_down]
percent = 100
period = "1s"
"#;
    let text = config("20ms", 2, 0, extra).replace("max_replicas = 0", "max_replicas = 4");
    let config = dir.write_config(&text);
    let (gateway, mut workers) = gateway_and_two_workers(&dir, &config, &redis, false).await;
    // Idle: nothing placed, no replica anywhere.
    assert_eq!(ready_replicas(&workers[0]).await + ready_replicas(&workers[1]).await, 0);

    // 8 requests of 400 tokens × 20 ms (8 s each): 8 concurrent → 4 replicas.
    let (max_tokens, requests) = (400u32, 8u64);
    let mut streams = Vec::new();
    for seed in 0..requests {
        streams.push(SseStream::open(&gateway.url, None, &completion(max_tokens, seed)).await.expect("admitted"));
    }
    let spread = wait_for("replicas placed on both workers", Duration::from_secs(30), || async {
        let placement = placement(&gateway).await?;
        let on = |node: &str| placement.get(node).copied().unwrap_or(0);
        (on("w1") >= 1 && on("w2") >= 1 && on("w1") + on("w2") == 4).then_some(placement)
    })
    .await;
    eprintln!("placement under load: {spread:?} after {:?}", started.elapsed());
    wait_for("both workers serving", Duration::from_secs(30), || async {
        (ready_replicas(&workers[0]).await >= 1 && ready_replicas(&workers[1]).await >= 1).then_some(())
    })
    .await;
    // Both hold jobs.
    wait_for("both workers generating", Duration::from_secs(30), || async {
        (active_sequences(&workers[0]).await > 0 && active_sequences(&workers[1]).await > 0).then_some(())
    })
    .await;
    for stream in &mut streams {
        assert!(stream.read_until(5, Duration::from_secs(20)).await, "a stream ended early: {:?}", stream.result);
    }

    // kill -9 w1: its replicas go to w2, and w2 finishes w1's jobs.
    let survivor_tokens_before = generated_tokens(&workers[1]).await;
    workers[0].kill();
    let killed_at = Instant::now();
    let moved = wait_for("w1's replicas re-placed on w2", Duration::from_secs(30), || async {
        let placement = placement(&gateway).await?;
        (placement.keys().all(|node| node == "w2") && placement.get("w2").copied().unwrap_or(0) >= 3)
            .then_some(placement)
    })
    .await;
    eprintln!("re-placed {:?} after the kill: {moved:?}", killed_at.elapsed());
    wait_for("w2 generating after the kill", Duration::from_secs(20), || async {
        (generated_tokens(&workers[1]).await > survivor_tokens_before).then_some(())
    })
    .await;
    let mut results = Vec::new();
    for stream in streams {
        results.push(stream.finish(Duration::from_secs(40)).await);
    }
    for (seed, result) in results.iter().enumerate() {
        assert!(result.done && result.error.is_none(), "request {seed}: {result:?}");
        let usage = result.usage.as_ref().expect("usage");
        assert_eq!(usage["completion_tokens"], max_tokens, "request {seed}: {usage}");
    }
    // Every request ended while w1 was dead: those it held were finished by w2. Each text is what an undisturbed run gives (no token missing or repeated where a
    // job moved from w1 to w2).
    let references: Vec<String> = futures_util::future::join_all(
        (0..requests).map(|seed| reference(&gateway, max_tokens, seed)),
    )
    .await;
    for (seed, result) in results.iter().enumerate() {
        assert_eq!(result.text, references[seed], "request {seed} differs from an undisturbed run");
    }

    // Load gone: the cluster scales to zero.
    wait_for("the cluster at zero replicas", Duration::from_secs(40), || async {
        let placement = placement(&gateway).await?;
        (placement.is_empty() && ready_replicas(&workers[1]).await == 0).then_some(())
    })
    .await;
    let view = cluster(&gateway).await.expect("cluster view");
    assert_eq!(view["distributed"], true);
    eprintln!("test took {:?}", started.elapsed());
}

/// `swell serve --redis` on a gateway node reads the ingress stream: a job pushed into
/// Redis by a program that is not Swell is validated by the gateway, generated by a
/// worker node and answered on `reply_to`, with the same text as over HTTP.
#[actix_rt::test]
async fn an_ingress_job_pushed_into_redis_is_served_by_the_cluster() {
    use swell_cluster::ingress_wire::{Encoding, IngressRequest, Producer, ReplyKind, RequestKind};
    let dir = TempDir::new("ingress");
    let redis = TestRedis::server();
    let config = dir.write_config(&config("1ms", 8, 1, ""));
    let gateway = Node::start(&dir.0, &config, &redis.url(), "gateway", "gw");
    let worker = Node::start(&dir.0, &config, &redis.url(), "worker", "w1");
    wait_ready(&gateway, false).await;
    wait_ready(&worker, true).await;
    let (max_tokens, seed) = (12, 7);
    let expected = reference(&gateway, max_tokens, seed).await;

    let producer = Producer::connect(&redis.url(), "swell").await.expect("producer connects");
    let mut body = completion(max_tokens, seed);
    body["stream"] = json!(false);
    body.as_object_mut().unwrap().remove("stream_options");
    let job = IngressRequest {
        id: "job-1".into(),
        api_key: None,
        deployment: "chat".into(),
        kind: RequestKind::Completion,
        request: body.to_string(),
        reply_to: REPLY_TO.into(),
        deadline_ms: None,
    };
    producer.submit(&job, Encoding::Json).await.expect("submitted");
    let replies = producer.wait_for(REPLY_TO, "job-1", Duration::from_secs(20)).await.expect("replies");
    let last = replies.last().expect("a reply");
    assert_eq!(last.kind, ReplyKind::Completion, "{replies:?}");
    assert_eq!(last.data["choices"][0]["text"].as_str(), Some(expected.as_str()), "{:?}", last.data);
    assert_eq!(last.data["usage"]["completion_tokens"], max_tokens);
}

/// A gateway killed (`kill -9`) while it relays an ingress request's streamed replies:
/// another gateway takes the entry over and resumes the replies after the ones already
/// written, so the producer reads one coherent reply stream (seq 0, 1, 2, ... with no
/// gap or repeat, the text of an undisturbed run, one terminal `done`).
async fn an_ingress_request_whose_gateway_dies_mid_relay_is_answered_by_another_gateway(redis: TestRedis) {
    use swell_cluster::ingress_wire::{Encoding, IngressRequest, Producer, ReplyKind, RequestKind};
    let started = Instant::now();
    let dir = TempDir::new(&format!("ingress-takeover-{}", redis.kind()));
    // One consumer name per gateway (to tell which one relays); entries idle for 1 s
    // are taken over.
    let base = config("20ms", 8, 1, "");
    let ingress = |name: &str| {
        format!("{base}\n[ingress]\nconsumer = \"{name}\"\nclaim_idle = \"1s\"\nclaim_interval = \"200ms\"\nblock = \"200ms\"\n")
    };
    let config_1 = dir.0.join("gw1.toml");
    let config_2 = dir.0.join("gw2.toml");
    std::fs::write(&config_1, ingress("gw1")).unwrap();
    std::fs::write(&config_2, ingress("gw2")).unwrap();
    let mut gateways =
        vec![Node::start(&dir.0, &config_1, &redis.url(), "gateway", "gw1"), Node::start(&dir.0, &config_2, &redis.url(), "gateway", "gw2")];
    let worker = Node::start(&dir.0, &config_1, &redis.url(), "worker", "w1");
    for gateway in &gateways {
        wait_ready(gateway, false).await;
    }
    wait_ready(&worker, true).await;
    let (max_tokens, seed) = (200, 11);
    let expected = reference(&gateways[0], max_tokens, seed).await;

    let producer = Producer::connect(&redis.url(), "swell").await.expect("producer connects");
    let job = IngressRequest {
        id: "long-1".into(),
        api_key: None,
        deployment: "chat".into(),
        kind: RequestKind::Completion,
        request: completion(max_tokens, seed).to_string(),
        reply_to: REPLY_TO.into(),
        deadline_ms: None,
    };
    producer.submit(&job, Encoding::Json).await.expect("submitted");
    // Wait for some chunks, then find the relaying gateway: the entry stays pending with
    // its consumer until the terminal reply.
    let mut connection =
        swell_cluster::redis_conn::connect_shared(&redis.url(), Duration::from_secs(1), Duration::from_secs(2)).await.unwrap().1;
    wait_for("20 chunk replies", Duration::from_secs(20), || {
        let producer = &producer;
        async move {
            let replies = producer.read_replies(REPLY_TO, "0", None).await.ok()?;
            let chunks = replies.iter().filter(|(_, reply)| reply.kind == ReplyKind::Chunk).count();
            (chunks >= 20).then_some(())
        }
    })
    .await;
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(producer.stream())
        .arg("gateways")
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut connection)
        .await
        .unwrap();
    let relaying = format!("{pending:?}");
    let holder = if relaying.contains("gw1") { 0 } else { 1 };
    assert!(relaying.contains(&format!("gw{}", holder + 1)), "the entry is pending with its gateway: {relaying}");
    gateways[holder].kill();
    let killed_at = Instant::now();

    let replies = producer
        .wait_for(REPLY_TO, "long-1", Duration::from_secs(30))
        .await
        .expect("a terminal reply after the takeover");
    eprintln!("answered {:?} after the kill ({} replies)", killed_at.elapsed(), replies.len());
    for (index, reply) in replies.iter().enumerate() {
        assert_eq!(reply.seq, index as u64, "replies numbered 0, 1, 2, ... without gap or repeat: {replies:?}");
    }
    let terminal: Vec<_> = replies.iter().filter(|reply| reply.kind.is_terminal()).collect();
    assert_eq!(terminal.len(), 1, "one terminal reply");
    assert_eq!(terminal[0].kind, ReplyKind::Done, "{:?}", terminal[0]);
    let text: String = replies
        .iter()
        .filter(|reply| reply.kind == ReplyKind::Chunk)
        .filter_map(|reply| reply.data["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, expected, "the producer's text differs from an undisturbed run");
    assert_eq!(terminal[0].data["usage"]["completion_tokens"], max_tokens);
    eprintln!("test took {:?}", started.elapsed());
}

#[actix_rt::test]
async fn an_ingress_request_whose_gateway_dies_mid_relay_is_answered_by_another_gateway_one_redis() {
    an_ingress_request_whose_gateway_dies_mid_relay_is_answered_by_another_gateway(TestRedis::server()).await;
}

#[actix_rt::test]
async fn an_ingress_request_whose_gateway_dies_mid_relay_is_answered_by_another_gateway_redis_cluster() {
    an_ingress_request_whose_gateway_dies_mid_relay_is_answered_by_another_gateway(TestRedis::cluster()).await;
}
