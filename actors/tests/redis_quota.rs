//! Quotas shared by several nodes through a real `redis-server` (each test starts its
//! own on a free port, and may kill and restart it): the limits hold across nodes, a
//! dead node's slots come back, unused reservations are refunded, rates burst then
//! sustain, each failure policy and the circuit breaker do what they say while Redis
//! is down, and a busy node admits from its reserve and gives back what it left.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use swell_actors::quota::{
    Acquire, LimitKind, ObserveQuota, QuotaActor, QuotaBackend, QuotaGrant, QuotaRejection, RateLimitSnapshot,
    Settle, TenantLimits,
};
use swell_actors::quota_failure::{BreakerState, FailurePolicy, QuotaFailurePolicy};
use swell_actors::redis_quota::{RedisQuotaConfig, RedisQuotaStore};
use support::RedisServer;
use swell_cluster::redis_queue::testing::{command_calls, reset_command_calls};
use tokio::time::{sleep, Instant};

const TENANT: &str = "acme";

/// Short leases and a patient timeout: this machine is shared and small.
fn test_config() -> RedisQuotaConfig {
    RedisQuotaConfig {
        redis_timeout: Duration::from_millis(250),
        lease_ttl: Duration::from_millis(600),
        lease_renew_interval: Duration::from_millis(150),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_millis(500),
        reserve_ttl: Duration::from_millis(200),
        ..RedisQuotaConfig::default()
    }
}

/// One "node": its own store (connection, node id, breaker) and its own quota actor.
struct Node {
    store: RedisQuotaStore,
    quota: Addr<QuotaActor>,
}

impl Node {
    fn start(redis: &RedisServer, limits: &TenantLimits, config: RedisQuotaConfig) -> Node {
        let store = RedisQuotaStore::open(&redis.url(), config).unwrap();
        let backend = QuotaBackend::Redis(store.clone());
        let quota = QuotaActor::with_backend(TENANT, limits.clone(), backend).start();
        Node { store, quota }
    }

    async fn acquire(&self, prompt_tokens: u64, max_output_tokens: u64) -> Result<(QuotaGrant, RateLimitSnapshot), QuotaRejection> {
        self.quota.send(Acquire { prompt_tokens, max_output_tokens }).await.unwrap()
    }

    fn settle(&self, grant: &QuotaGrant, generated_tokens: u64) {
        self.quota.do_send(Settle { grant_id: grant.grant_id, generated_tokens });
    }

    fn redis_calls(&self) -> u64 {
        self.store.status().redis_calls
    }
}

#[actix_rt::test]
async fn three_nodes_never_hold_more_concurrency_slots_than_the_limit() {
    let redis = RedisServer::start();
    let limits = TenantLimits { max_concurrent_requests: Some(4), ..Default::default() };
    let nodes: Vec<_> = (0..3).map(|_| Arc::new(Node::start(&redis, &limits, test_config()))).collect();
    let holding = Arc::new(AtomicU64::new(0));
    let most_held = Arc::new(AtomicU64::new(0));
    let granted = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..8 {
            let (node, holding, most_held, granted) = (node.clone(), holding.clone(), most_held.clone(), granted.clone());
            tasks.push(actix_rt::spawn(async move {
                while Instant::now() < deadline {
                    match node.acquire(10, 10).await {
                        Ok((grant, _)) => {
                            // Counted after Redis granted and before the settle is sent, so
                            // the count is never more than Redis's.
                            let now_holding = holding.fetch_add(1, Ordering::SeqCst) + 1;
                            most_held.fetch_max(now_holding, Ordering::SeqCst);
                            granted.fetch_add(1, Ordering::SeqCst);
                            sleep(Duration::from_millis(15)).await;
                            holding.fetch_sub(1, Ordering::SeqCst);
                            node.settle(&grant, 5);
                        }
                        Err(rejection) => {
                            assert_eq!(rejection.limit, LimitKind::ConcurrentRequests);
                            sleep(Duration::from_millis(2)).await;
                        }
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (most_held, granted) = (most_held.load(Ordering::SeqCst), granted.load(Ordering::SeqCst));
    assert!(most_held <= 4, "{most_held} slots were held at once; the limit is 4");
    assert_eq!(most_held, 4, "the nodes together should fill the 4 slots");
    assert!(granted > 12, "slots are reused after settle ({granted} grants)");
}

#[actix_rt::test]
async fn three_nodes_admit_no_more_than_the_rate_allows() {
    let redis = RedisServer::start();
    // 60 requests of 50 prompt tokens per 3000 tokens/min: a burst of 60, then 1 per second.
    let limits = TenantLimits {
        requests_per_minute: Some(1000),
        prompt_tokens_per_minute: Some(3000),
        ..Default::default()
    };
    let nodes: Vec<_> = (0..3).map(|_| Arc::new(Node::start(&redis, &limits, test_config()))).collect();
    let granted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_millis(2000);
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..6 {
            let (node, granted) = (node.clone(), granted.clone());
            tasks.push(actix_rt::spawn(async move {
                while Instant::now() < deadline {
                    match node.acquire(50, 1).await {
                        Ok((grant, _)) => {
                            granted.fetch_add(1, Ordering::SeqCst);
                            node.settle(&grant, 1);
                        }
                        Err(rejection) => {
                            assert_eq!(rejection.limit, LimitKind::PromptTokens);
                            assert!(rejection.retry_after.is_some());
                            sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let granted = granted.load(Ordering::SeqCst);
    // The burst, plus what refilled while the test ran (1 per second), plus one for rounding.
    let allowed = 60 + elapsed.ceil() as u64 + 1;
    assert!(granted <= allowed, "{granted} admitted in {elapsed:.2}s; at most {allowed} allowed");
    assert!(granted >= 60, "the whole burst is admitted ({granted})");
}

#[actix_rt::test]
async fn a_dead_nodes_slots_come_back_when_its_leases_expire() {
    let redis = RedisServer::start();
    let limits = TenantLimits { max_concurrent_requests: Some(2), ..Default::default() };
    let config = test_config();

    // The node that will die runs on its own arbiter.
    let doomed_arbiter = Arbiter::new();
    let doomed_store = RedisQuotaStore::open(&redis.url(), config.clone()).unwrap();
    let doomed = {
        let (limits, store) = (limits.clone(), doomed_store.clone());
        QuotaActor::start_in_arbiter(&doomed_arbiter.handle(), move |_| {
            QuotaActor::with_backend(TENANT, limits, QuotaBackend::Redis(store))
        })
    };
    drop(doomed_store);
    for _ in 0..2 {
        doomed.send(Acquire { prompt_tokens: 1, max_output_tokens: 1 }).await.unwrap().unwrap();
    }
    let survivor = Node::start(&redis, &limits, config.clone());
    let rejection = survivor.acquire(1, 1).await.unwrap_err();
    assert_eq!(rejection.limit, LimitKind::ConcurrentRequests);
    assert!(rejection.retry_after.unwrap() <= config.lease_ttl, "{rejection:?}");

    // While its holder lives, a lease is renewed: still full after twice the TTL.
    sleep(config.lease_ttl * 2).await;
    assert_eq!(survivor.acquire(1, 1).await.unwrap_err().limit, LimitKind::ConcurrentRequests);

    // The node dies without settling: after the TTL its slots are free again.
    doomed_arbiter.stop();
    let died = Instant::now();
    let mut regained = Vec::new();
    while regained.len() < 2 {
        assert!(died.elapsed() < config.lease_ttl * 3, "the dead node's slots did not come back");
        match survivor.acquire(1, 1).await {
            Ok((grant, _)) => regained.push(grant),
            Err(rejection) => {
                assert_eq!(rejection.limit, LimitKind::ConcurrentRequests);
                sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(died.elapsed() >= config.lease_ttl - config.lease_renew_interval, "slots came back before the lease ran out");
    // Nothing leaked: exactly the limit is held again.
    assert_eq!(survivor.acquire(1, 1).await.unwrap_err().limit, LimitKind::ConcurrentRequests);
    assert_eq!(redis.command(&["ZCARD", "swell:quota:{t:acme}:leases"]), ":2");
}

#[actix_rt::test]
async fn unused_reserved_output_tokens_are_refunded() {
    let redis = RedisServer::start();
    let limits = TenantLimits { output_tokens_per_minute: Some(1000), ..Default::default() };
    let node = Node::start(&redis, &limits, test_config());
    let other = Node::start(&redis, &limits, test_config());

    let (grant, snapshot) = node.acquire(5, 600).await.unwrap();
    assert_eq!(snapshot.output_tokens.unwrap().remaining, 400);
    let rejection = other.acquire(5, 600).await.unwrap_err();
    assert_eq!(rejection.limit, LimitKind::OutputTokens);
    // 200 missing at 1000/min: about 12 s.
    let wait = rejection.retry_after.unwrap();
    assert!((11.5..=12.1).contains(&wait.as_secs_f64()), "{wait:?}");

    // Only 100 of 600 were generated: 500 come back, for every node.
    node.settle(&grant, 100);
    node.settle(&grant, 100);
    let settled = Instant::now();
    let snapshot = loop {
        match node.acquire(5, 600).await {
            Ok((_, snapshot)) => break snapshot,
            Err(rejection) => {
                assert!(settled.elapsed() < Duration::from_secs(1), "the refund did not arrive: {rejection:?}");
                sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // 900 after the refund (plus what refilled meanwhile), then 600 taken; settling twice
    // refunded once.
    let remaining = snapshot.output_tokens.unwrap().remaining;
    assert!((300..=320).contains(&remaining), "{remaining}");
    let seen_by_other = other.acquire(5, 100).await.unwrap().1.output_tokens.unwrap().remaining;
    assert!((200..=220).contains(&seen_by_other), "{seen_by_other}");
}

#[actix_rt::test]
async fn rates_burst_then_sustain_with_accurate_retry_after() {
    let redis = RedisServer::start();
    // 120 per minute: a burst of 120, then one every 500 ms.
    let limits = TenantLimits { requests_per_minute: Some(120), ..Default::default() };
    let node = Node::start(&redis, &limits, test_config());
    let started = Instant::now();
    let mut granted = 0u64;
    let rejection = loop {
        match node.acquire(1, 1).await {
            Ok((_, snapshot)) => {
                granted += 1;
                let state = snapshot.requests.unwrap();
                assert_eq!(state.limit, 120);
                assert!(state.remaining + granted <= 121, "after {granted}: {state:?}");
            }
            Err(rejection) => break rejection,
        }
    };
    // The burst, plus what refilled while it ran (on a busy machine).
    let refilled = (started.elapsed().as_secs_f64() * 2.0).ceil() as u64;
    assert!((120..=120 + refilled).contains(&granted), "{granted} admitted in the burst");
    assert_eq!(rejection.limit, LimitKind::Requests);
    let retry_after = rejection.retry_after.unwrap();
    assert!(
        retry_after <= Duration::from_millis(500) && !retry_after.is_zero(),
        "retry_after {retry_after:?}"
    );
    let state = rejection.snapshot.requests.unwrap();
    assert_eq!(state.remaining, 0);
    assert!(state.reset > Duration::from_millis(59_500) && state.reset <= Duration::from_secs(60), "{state:?}");

    // The fast path: until retry_after, rejected locally without asking Redis.
    let calls = node.redis_calls();
    let local = node.acquire(1, 1).await.unwrap_err();
    assert_eq!(local.limit, LimitKind::Requests);
    assert!(local.retry_after.unwrap() <= retry_after, "{local:?}");
    assert_eq!(node.redis_calls(), calls, "rejected on the node");

    // Waiting retry_after is enough; then the next one waits a whole interval again.
    sleep(retry_after + Duration::from_millis(10)).await;
    node.acquire(1, 1).await.unwrap();
    let again = node.acquire(1, 1).await.unwrap_err().retry_after.unwrap();
    assert!(again > Duration::from_millis(400) && again <= Duration::from_millis(500), "{again:?}");

    // Sustained: for 2 s, 2 per second (4, give or take one at each end).
    let started = Instant::now();
    let mut sustained = 0;
    while started.elapsed() < Duration::from_secs(2) {
        match node.acquire(1, 1).await {
            Ok(_) => sustained += 1,
            Err(rejection) => sleep(rejection.retry_after.unwrap().min(Duration::from_millis(50))).await,
        }
    }
    assert!((3..=5).contains(&sustained), "{sustained} admitted in 2 s at 2 per second");
}

/// Three nodes with different failure policies; Redis dies.
#[actix_rt::test]
async fn each_failure_policy_applies_while_redis_is_down_and_the_breaker_recovers() {
    let mut redis = RedisServer::start();
    let limits = TenantLimits {
        requests_per_minute: Some(30),
        max_concurrent_requests: Some(100),
        ..Default::default()
    };
    let with_policy = |failure_policy: QuotaFailurePolicy| RedisQuotaConfig {
        failure_policy,
        node_count: 3,
        ..test_config()
    };
    let open = Node::start(&redis, &limits, with_policy(QuotaFailurePolicy::all(FailurePolicy::FailOpen)));
    let share = Node::start(&redis, &limits, with_policy(QuotaFailurePolicy::all(FailurePolicy::LocalShare)));
    let closed = Node::start(
        &redis,
        &limits,
        with_policy(QuotaFailurePolicy {
            concurrent_requests: Some(FailurePolicy::FailClosed),
            ..QuotaFailurePolicy::all(FailurePolicy::FailOpen)
        }),
    );
    for node in [&open, &share, &closed] {
        node.acquire(1, 1).await.unwrap();
    }

    redis.stop();
    let timeout = test_config().redis_timeout;
    // fail_closed: every request is refused, within the timeout.
    for _ in 0..3 {
        let asked = Instant::now();
        let rejection = closed.acquire(1, 1).await.unwrap_err();
        assert!(asked.elapsed() < timeout + Duration::from_millis(100), "{:?}", asked.elapsed());
        assert_eq!(rejection.limit, LimitKind::ConcurrentRequests);
        assert!(rejection.retry_after.unwrap() >= Duration::from_secs(1));
    }
    // fail_open: everything is admitted, even past the limit.
    for n in 0..40 {
        open.acquire(1, 1).await.unwrap_or_else(|r| panic!("request {n}: {r:?}"));
    }
    // local_share: this node enforces 30 / 3 = 10 requests per minute on its own.
    let mut admitted = 0;
    let rejection = loop {
        match share.acquire(1, 1).await {
            Ok((_, snapshot)) => {
                admitted += 1;
                assert_eq!(snapshot.requests.unwrap().limit, 10);
            }
            Err(rejection) => break rejection,
        }
    };
    assert_eq!(admitted, 10);
    assert_eq!(rejection.limit, LimitKind::Requests);

    // The breaker is open: no more calls to Redis, and decisions take no time.
    for node in [&open, &share, &closed] {
        assert_eq!(node.store.status().breaker, BreakerState::Open);
    }
    let calls = open.redis_calls();
    let asked = Instant::now();
    for _ in 0..20 {
        open.acquire(1, 1).await.unwrap();
    }
    assert!(asked.elapsed() < Duration::from_millis(100), "{:?}", asked.elapsed());
    assert_eq!(open.redis_calls(), calls);

    // Redis is back (empty): after the cool-down a probe closes the breaker and Redis
    // decides again (a fresh bucket of 30, shared).
    redis.restart();
    sleep(test_config().breaker_cooldown).await;
    let back = Instant::now();
    let snapshot = loop {
        match open.acquire(1, 1).await {
            Ok((_, snapshot)) if snapshot.requests.is_some_and(|s| s.limit == 30) => break snapshot,
            _ => {
                assert!(back.elapsed() < Duration::from_secs(5), "the breaker did not close: {:?}", open.store.status());
                sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(open.store.status().breaker, BreakerState::Closed);
    // Decided by Redis (limit 30, not the local share of 10), from a fresh bucket.
    assert_eq!(snapshot.requests.unwrap().remaining, 29);
    let status = open.quota.send(ObserveQuota).await.unwrap();
    assert_eq!(status.backend, "redis");
}

/// An admission and its settle, counted from `INFO commandstats`: with rate limits only,
/// an admission is one script call (`TIME`, `HMGET` and `HSET` + `PEXPIRE` of the
/// buckets) and there is nothing to settle; under every limit, the admission adds the
/// concurrency lease (`ZCARD`, `ZADD`, `PEXPIRE`) and the settle frees it and refunds
/// (`TIME`, `ZSCORE`, `ZREM`, `HGET` + `HSET` of the output bucket).
#[actix_rt::test]
async fn an_admission_and_its_settle_cost_a_bounded_number_of_commands() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    // No renewal during the test.
    let config = RedisQuotaConfig { lease_ttl: Duration::from_secs(60), lease_renew_interval: Duration::from_secs(30), ..test_config() };
    let total = |counted: &std::collections::BTreeMap<String, u64>| counted.values().sum::<u64>();
    let reset = |raw: &mut redis::aio::MultiplexedConnection| {
        let mut raw = raw.clone();
        async move { reset_command_calls(&mut raw).await }
    };
    // Waits until `n` script calls ran (a settle is sent without waiting for it).
    let settled = |raw: &mut redis::aio::MultiplexedConnection, n: u64| {
        let mut raw = raw.clone();
        async move {
            let started = Instant::now();
            loop {
                let counted = command_calls(&mut raw).await;
                if counted.get("evalsha").copied().unwrap_or(0) >= n || started.elapsed() > Duration::from_secs(2) {
                    return counted;
                }
                sleep(Duration::from_millis(10)).await;
            }
        }
    };

    let rates = TenantLimits { requests_per_minute: Some(1000), prompt_tokens_per_minute: Some(100_000), ..Default::default() };
    let node = Node::start(&redis, &rates, config.clone());
    // The first call loads the script.
    let (warm, _) = node.acquire(10, 10).await.unwrap();
    node.settle(&warm, 1);
    reset(&mut raw).await;
    let (grant, _) = node.acquire(10, 10).await.unwrap();
    let admission = command_calls(&mut raw).await;
    assert_eq!(total(&admission), 1 + 4, "{admission:?}");
    node.settle(&grant, 1);
    // A settle would be a second script call; none comes.
    sleep(Duration::from_millis(200)).await;
    assert_eq!(total(&command_calls(&mut raw).await), 1 + 4, "nothing to settle without a concurrency or output limit");

    let every = TenantLimits {
        requests_per_minute: Some(1000),
        prompt_tokens_per_minute: Some(100_000),
        output_tokens_per_minute: Some(100_000),
        max_concurrent_requests: Some(100),
    };
    let node = Node::start(&redis, &every, config);
    let (warm, _) = node.acquire(10, 10).await.unwrap();
    node.settle(&warm, 1);
    settled(&mut raw, 4).await;
    reset(&mut raw).await;
    let (grant, _) = node.acquire(10, 10).await.unwrap();
    let admission = command_calls(&mut raw).await;
    assert_eq!(total(&admission), 1 + 7, "{admission:?}");
    reset(&mut raw).await;
    node.settle(&grant, 1);
    let settle = settled(&mut raw, 1).await;
    assert_eq!(total(&settle), 1 + 5, "{settle:?}");
}

/// A busy tenant far from its limits: the node reserves quota for its next requests in
/// the call of one, admits and settles them without Redis, and gives back what it did
/// not use when the reserve expires, so the buckets and slots end where one call per
/// request would have left them.
#[actix_rt::test]
async fn a_busy_node_admits_from_its_reserve_and_gives_back_what_is_left() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    // 6,000 requests per minute: each takes 10 ms of the bucket, and a reserve of 32
    // requests is far below a 64th of the 6,000 left.
    let limits = TenantLimits {
        requests_per_minute: Some(6_000),
        prompt_tokens_per_minute: Some(100_000_000),
        output_tokens_per_minute: Some(100_000_000),
        max_concurrent_requests: Some(10_000),
    };
    let node = Node::start(&redis, &limits, test_config());
    let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut raw).await.unwrap();
    let started_us = seconds * 1_000_000 + micros;
    reset_command_calls(&mut raw).await;
    for _ in 0..200 {
        let (grant, snapshot) = node.acquire(10, 20).await.unwrap();
        assert_eq!(snapshot.requests.unwrap().limit, 6_000);
        node.settle(&grant, 5);
    }
    let calls = command_calls(&mut raw).await.get("evalsha").copied().unwrap_or(0);
    // One call per request would be 200 admissions and 200 settles.
    assert!(calls <= 40, "{calls} script calls for 200 requests");

    // After the reserve's ttl, what it held is given back: no slot is held, and the
    // requests bucket is 200 requests (2 s) past the start, not more.
    let buckets = "swell:quota:{t:acme}:buckets";
    let given_back = Instant::now();
    loop {
        let held: u64 = redis::cmd("ZCARD").arg("swell:quota:{t:acme}:leases").query_async(&mut raw).await.unwrap();
        if held == 0 {
            break;
        }
        assert!(given_back.elapsed() < Duration::from_secs(2), "{held} slots still held");
        sleep(Duration::from_millis(50)).await;
    }
    sleep(Duration::from_millis(100)).await;
    let tat: Option<String> = redis::cmd("HGET").arg(buckets).arg("r").query_async(&mut raw).await.unwrap();
    let owed_ms = (tat.unwrap().parse::<i64>().unwrap() - started_us) / 1000;
    assert!((2_000..=2_100).contains(&owed_ms), "the requests bucket is {owed_ms} ms past the start");
}
