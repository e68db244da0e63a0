//! Tenant quotas shared by many nodes, decided in Redis.
//!
//! One node's [`TenantQuota`] only knows the requests that node admitted; with several
//! nodes behind a load balancer each would let a tenant have its whole limit. With this
//! backend every admission decision is made by Redis, for all nodes at once, and each
//! node keeps only what it needs to answer quickly and to survive Redis being away.
//!
//! # The script
//! An admission is **one Lua script call** (`redis_quota/acquire.lua`), atomic on the
//! server: it reaps expired leases (at the concurrency limit), checks every limit (all or nothing, in the same order
//! as the local quota: requests, prompt tokens, output tokens, concurrency), takes from
//! every bucket and records the grant's lease, then answers granted or the limit hit,
//! `retry_after`, and the snapshot the `x-ratelimit-*` headers are made of (limit,
//! remaining, time until full, for each limit). `settle.lua` ends a grant, `renew.lua`
//! extends the leases of a node's in-flight grants, in one call per tenant and period.
//!
//! # Rates: GCRA on the server's clock
//! The three rates (requests, prompt tokens and output tokens per minute) are GCRA,
//! which is the local token bucket stored as one number: a limit of `N` per minute has
//! an emission interval `T = 60 s / N`; the bucket's state is its *theoretical arrival
//! time* `TAT` (when the bucket is full again; never before now). Taking `a` units is
//! allowed when `max(TAT, now) + a·T − 60 s ≤ now` and sets `TAT += a·T`; otherwise the
//! wait is exactly that difference. So a tenant bursts up to `N` and sustains `N` per
//! minute, as locally. A refund moves `TAT` back by `refund·T` (not before now). `now`
//! is always `redis.call('TIME')`: nodes' clocks never enter a decision, and only
//! relative durations (`retry_after`, time until full) travel back to the nodes. A
//! bucket key expires when its bucket is full, so an idle tenant leaves no keys.
//!
//! # Key layout
//! All keys of a tenant share the hash tag `{t:<tenant>}`, so a script touches one slot
//! of a Redis Cluster (`<prefix>` is `quota.key_prefix`, `swell:quota` by default):
//! - `<prefix>:{t:<tenant>}:buckets`: HASH of the buckets' `TAT`s in microseconds of the
//!   Redis clock (`r` requests, `p` prompt tokens, `o` output tokens), expiring when
//!   every bucket is full: one read and one write per admission whatever the limits.
//! - `<prefix>:{t:<tenant>}:leases`: ZSET of live grants, member the grant id
//!   (`<node id>:<n>`), score the lease's expiry in milliseconds; only under a
//!   concurrency limit (without one a grant holds no slot, and its node settles it once,
//!   passing the output tokens it reserved).
//!
//! What a request costs Redis: an admission is `TIME`, `HMGET` and `HSET` + `PEXPIRE` of
//! the buckets, and under a concurrency limit `ZCARD`, `ZADD` and `PEXPIRE` (the expired
//! leases are looked for only at the limit); a settle is a script call only under an
//! output-token or a concurrency limit (`TIME`, `ZSCORE` + `ZREM`, `HGET` + `HSET` of the
//! output bucket for a refund). A busy tenant pays far less: see [Reserves](#reserves).
//!
//! # Leases
//! A grant holds a concurrency slot and an output-token reservation as a **lease** that
//! lasts `quota.lease_ttl`. The node renews the leases of its in-flight grants every
//! `quota.lease_renew_interval`; a node that dies stops renewing, and the next admission
//! that finds the limit reached after the TTL reaps its leases, so its slots come back and nothing leaks (its
//! reservations count as spent, as the tokens may have been generated). Settling frees
//! the slot and refunds `reserved − generated` output tokens (reserve, then refund).
//!
//! # Reserves
//! A tenant far from its limits that keeps a node busy would cost a call per admission
//! and per settle. With each call the node asks also for a *reserve* for its next
//! requests (as many as it admitted in the last `quota.reserve_ttl`, at most
//! `quota.reserve_max_requests`, and at most a 64th, divided by `node_count`, of what
//! remains of any limit), granted all or nothing and never at the cost of the request;
//! the reserve's concurrency slots are leases like any grant's (`<grant id>.<k>`). Until
//! `reserve_ttl` ends the node admits from it without a call, and a request that ends
//! returns its slot and unused output tokens to it (up to the reserve's size and the
//! node's requests in flight when it came; a reserve that replaces another keeps its
//! free slots); what is left goes back with the next call, or with a call of its own
//! when the reserve expires. A new, quiet or
//! nearly-limited tenant is decided one request at a time, as above, so limits hold
//! exactly where they bind; a node holds at most a reserve of a busy tenant's quota
//! unused, for at most `reserve_ttl`. See `redis_quota/reserve.rs`.
//!
//! # Local fast path
//! The node remembers each bucket's last reported state (time until full, when it was
//! asked). A request that the projection of that state says cannot fit yet (the bucket
//! is empty until `T`) is rejected locally before `T`, with the `retry_after` Redis
//! would give, without a round trip; so is a request larger than a limit. A tenant
//! without limits never reaches Redis. The projection can only be pessimistic through
//! refunds by other nodes: a retry may then be told to wait a little longer than needed.
//!
//! # Failure policy
//! Every call to Redis has a tight timeout (`quota.redis_timeout`, 75 ms by default).
//! After `quota.breaker_failures` consecutive failures a [`CircuitBreaker`] stops calling
//! Redis for `quota.breaker_cooldown`, then lets one probe through; its success closes
//! the breaker. While Redis cannot answer (error, timeout or open breaker), each limit
//! kind follows its [`FailurePolicy`] (`quota.failure_policy`): `fail_open` does not
//! enforce it, `fail_closed` refuses the requests it applies to (with `retry_after` the
//! cool-down left, at least 1 s), `local_share` enforces `limit / quota.node_count`
//! with a local [`TenantQuota`] (concurrency counting every grant the node holds).
//! Grants made that way are settled locally. A settle or renewal that fails is not
//! retried: the lease then expires by itself.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::Script;
use serde::Serialize;
use tokio::time::Instant;

use swell_cluster::redis_conn::{RedisClient, RedisEndpoint, SharedConnection};

use crate::metrics as m;
use crate::hold_times::HoldTimes;
use crate::quota::{
    LimitKind, LimitState, QuotaGrant, QuotaRejection, RateLimitSnapshot, TenantLimits, TenantQuota,
};
use crate::quota_failure::{BreakerState, CircuitBreaker, DegradedLimits};

mod config;
mod fast_path;
mod reserve;

pub use self::config::RedisQuotaConfig;
use self::fast_path::FastPath;
pub use self::reserve::{Asked, GiveBack, Reserve, ReserveConfig};

/// The window of every rate limit (they are per minute).
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

const ACQUIRE_SCRIPT: &str = include_str!("redis_quota/acquire.lua");
const SETTLE_SCRIPT: &str = include_str!("redis_quota/settle.lua");
const RENEW_SCRIPT: &str = include_str!("redis_quota/renew.lua");

/// Why a call to the quota store did not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QuotaStoreError {
    #[error("invalid redis url: {0}")]
    InvalidUrl(String),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis error: {0}")]
    Redis(String),
    #[error("the quota circuit breaker is open")]
    CircuitOpen,
    #[error("unexpected reply from the quota script: {0}")]
    BadReply(String),
}

impl QuotaStoreError {
    pub fn code(&self) -> &'static str {
        match self {
            QuotaStoreError::InvalidUrl(_) => "invalid_url",
            QuotaStoreError::Timeout(_) => "timeout",
            QuotaStoreError::Redis(_) => "redis_error",
            QuotaStoreError::CircuitOpen => "circuit_open",
            QuotaStoreError::BadReply(_) => "bad_reply",
        }
    }
}

/// What the acquire script answered.
#[derive(Debug, Clone, PartialEq)]
pub struct AcquireAnswer {
    /// `None`: granted; otherwise the limit that stopped the request.
    pub rejected_by: Option<LimitKind>,
    /// For a rejection: when a retry can succeed (`None`: never).
    pub retry_after: Option<Duration>,
    /// Before the grant for a rejection, after it for a grant.
    pub snapshot: RateLimitSnapshot,
    /// Whether the reserve asked for came with the grant.
    pub reserved: bool,
}

impl AcquireAnswer {
    /// Decodes the script's flat reply: granted, limit kind, retry_after (µs, -1: never),
    /// then (limit, remaining, µs until full) for requests, prompt tokens, output tokens
    /// and concurrency (limit 0: none), then whether the reserve was granted.
    fn decode(reply: &[i64]) -> Result<Self, QuotaStoreError> {
        if reply.len() != 16 {
            return Err(QuotaStoreError::BadReply(format!("expected 16 integers, got {}", reply.len())));
        }
        let state = |at: usize| {
            let limit = reply[at];
            (limit > 0).then(|| LimitState {
                limit: limit as u64,
                remaining: reply[at + 1].max(0) as u64,
                reset: Duration::from_micros(reply[at + 2].max(0) as u64),
            })
        };
        let snapshot = RateLimitSnapshot {
            requests: state(3),
            prompt_tokens: state(6),
            output_tokens: state(9),
            concurrent_requests: state(12),
        };
        let rejected_by = match (reply[0], reply[1]) {
            (1, _) => None,
            (0, 1) => Some(LimitKind::Requests),
            (0, 2) => Some(LimitKind::PromptTokens),
            (0, 3) => Some(LimitKind::OutputTokens),
            (0, 4) => Some(LimitKind::ConcurrentRequests),
            (granted, kind) => {
                return Err(QuotaStoreError::BadReply(format!("granted {granted}, limit kind {kind}")));
            }
        };
        let retry_after = match reply[2] {
            micros if micros < 0 => None,
            micros => Some(Duration::from_micros(micros as u64)),
        };
        Ok(Self { rejected_by, retry_after, snapshot, reserved: reply[15] == 1 })
    }
}

/// The store's state, for tests and the status API.
#[derive(Debug, Clone, Serialize)]
pub struct QuotaStoreStatus {
    pub node_id: String,
    pub breaker: BreakerState,
    /// Calls made to Redis (not counting those the breaker stopped).
    pub redis_calls: u64,
}

/// A node's connection to the shared quota store: the scripts, the circuit breaker and
/// a multiplexed, reconnecting connection. Cheap to clone; every tenant of a node shares
/// one.
#[derive(Clone)]
pub struct RedisQuotaStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    connection: SharedConnection,
    config: RedisQuotaConfig,
    node_id: String,
    breaker: Mutex<CircuitBreaker>,
    redis_calls: AtomicU64,
    acquire: Script,
    settle: Script,
    renew: Script,
}

impl std::fmt::Debug for RedisQuotaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQuotaStore").field("node_id", &self.inner.node_id).finish_non_exhaustive()
    }
}

impl RedisQuotaStore {
    /// A store at `url` (`redis://host:port/db`, or a Redis Cluster's
    /// `redis-cluster://host:port,…`: each tenant's keys share one slot). Connects lazily, so a node starts while
    /// Redis is down (its failure policy applies until Redis answers). Must be called
    /// inside a tokio runtime (an actix `System` is one).
    pub fn open(url: &str, config: RedisQuotaConfig) -> Result<Self, QuotaStoreError> {
        let endpoint = RedisEndpoint::parse(url).map_err(QuotaStoreError::InvalidUrl)?;
        let client = RedisClient::new(&endpoint, config.redis_timeout, config.redis_timeout)
            .map_err(|e| QuotaStoreError::InvalidUrl(e.to_string()))?;
        let connection = client
            .shared_lazy(config.redis_timeout, config.redis_timeout)
            .map_err(|e| QuotaStoreError::Redis(e.to_string()))?;
        let breaker = CircuitBreaker::new(
            config.breaker_failures,
            config.breaker_cooldown,
            // A probe whose caller vanished is forgotten after a few timeouts.
            config.redis_timeout * 4,
        );
        let node_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        Ok(Self {
            inner: Arc::new(StoreInner {
                connection,
                config,
                node_id,
                breaker: Mutex::new(breaker),
                redis_calls: AtomicU64::new(0),
                acquire: Script::new(ACQUIRE_SCRIPT),
                settle: Script::new(SETTLE_SCRIPT),
                renew: Script::new(RENEW_SCRIPT),
            }),
        })
    }

    pub fn config(&self) -> &RedisQuotaConfig {
        &self.inner.config
    }

    /// This node's id: the first part of its grant ids.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub fn status(&self) -> QuotaStoreStatus {
        QuotaStoreStatus {
            node_id: self.inner.node_id.clone(),
            breaker: self.inner.breaker.lock().state(),
            redis_calls: self.inner.redis_calls.load(Ordering::Relaxed),
        }
    }

    /// Time until an open breaker probes again.
    pub fn breaker_retry_in(&self, now: Instant) -> Duration {
        self.inner.breaker.lock().retry_in(now)
    }

    /// `<prefix>:{t:<tenant>}:<name>`.
    pub fn key(&self, tenant: &str, name: &str) -> String {
        format!("{}:{{t:{tenant}}}:{name}", self.inner.config.key_prefix)
    }

    /// Runs one script invocation through the breaker and the timeout.
    async fn call<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<T, QuotaStoreError> {
        let inner = &self.inner;
        if !inner.breaker.lock().allow(Instant::now()) {
            m::quota_redis_error("circuit_open");
            return Err(QuotaStoreError::CircuitOpen);
        }
        inner.redis_calls.fetch_add(1, Ordering::Relaxed);
        let mut invocation = script.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        for arg in &args {
            invocation.arg(arg);
        }
        let mut connection = inner.connection.clone();
        let timeout = inner.config.redis_timeout;
        let result = match tokio::time::timeout(timeout, connection.invoke::<T>(&invocation)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(QuotaStoreError::Redis(error.to_string())),
            Err(_) => Err(QuotaStoreError::Timeout(timeout)),
        };
        let mut breaker = inner.breaker.lock();
        match &result {
            Ok(_) => breaker.record_success(),
            Err(error) => {
                m::quota_redis_error(error.code());
                if breaker.record_failure(Instant::now()) {
                    tracing::warn!(%error, cooldown = ?inner.config.breaker_cooldown, "quota store unreachable; circuit breaker open");
                }
            }
        }
        result
    }

    /// The acquire script: admit one request of `tenant` under `limits` (with the
    /// reserve `call` asks for), and take back what `call` gives back.
    pub async fn acquire(&self, tenant: &str, limits: &TenantLimits, call: &AcquireCall) -> Result<AcquireAnswer, QuotaStoreError> {
        let keys = ["buckets", "leases"].map(|name| self.key(tenant, name)).to_vec();
        let concurrency = limits.max_concurrent_requests.unwrap_or(0);
        #[cfg(feature = "chaos-mutant")]
        let concurrency = if swell_cluster::mutant::active("double-concurrency") { concurrency * 2 } else { concurrency };
        let mut args = vec![
            (RATE_WINDOW.as_micros() as u64).to_string(),
            limits.requests_per_minute.unwrap_or(0).to_string(),
            limits.prompt_tokens_per_minute.unwrap_or(0).to_string(),
            limits.output_tokens_per_minute.unwrap_or(0).to_string(),
            concurrency.to_string(),
            u8::from(call.request).to_string(),
            call.prompt_tokens.to_string(),
            call.max_output_tokens.to_string(),
            call.grant.clone(),
            (self.inner.config.lease_ttl.as_millis() as u64).to_string(),
        ];
        let (asked, back) = (&call.asked, &call.back);
        for amount in [asked.requests, asked.prompt_tokens, asked.output_tokens, asked.slots] {
            args.push(amount.to_string());
        }
        for amount in [back.requests, back.prompt_tokens, back.output_tokens] {
            args.push(amount.to_string());
        }
        args.extend(back.slots.iter().cloned());
        let reply: Vec<i64> = self.call(&self.inner.acquire, keys, args).await?;
        AcquireAnswer::decode(&reply)
    }

    /// The settle script: end `grant`, which reserved `reserved` output tokens and
    /// holds a lease if `leased` (under a concurrency limit); returns whether its lease
    /// was still live (always true without one).
    pub async fn settle(
        &self,
        tenant: &str,
        output_tokens_per_minute: Option<u64>,
        grant: &str,
        generated_tokens: u64,
        reserved: u64,
        leased: bool,
    ) -> Result<bool, QuotaStoreError> {
        let keys = ["buckets", "leases"].map(|name| self.key(tenant, name)).to_vec();
        let args = vec![
            (RATE_WINDOW.as_micros() as u64).to_string(),
            output_tokens_per_minute.unwrap_or(0).to_string(),
            grant.to_string(),
            generated_tokens.to_string(),
            reserved.to_string(),
            u8::from(leased).to_string(),
        ];
        let live: i64 = self.call(&self.inner.settle, keys, args).await?;
        Ok(live == 1)
    }

    /// The renew script: extend the leases of `grants`; returns those already lost.
    pub async fn renew(&self, tenant: &str, grants: Vec<String>) -> Result<Vec<String>, QuotaStoreError> {
        let keys = vec![self.key(tenant, "leases")];
        let mut args = Vec::with_capacity(grants.len() + 1);
        args.push((self.inner.config.lease_ttl.as_millis() as u64).to_string());
        args.extend(grants);
        self.call(&self.inner.renew, keys, args).await
    }
}

/// One call of the acquire script.
#[derive(Debug, Clone, Default)]
pub struct AcquireCall {
    /// Whether it admits a request (`false`: it only gives back).
    pub request: bool,
    pub prompt_tokens: u64,
    pub max_output_tokens: u64,
    /// The grant's id (`<node id>:<n>`); the reserve's slots are `<grant>.<k>`.
    pub grant: String,
    /// The reserve asked for besides the request.
    pub asked: Asked,
    /// What the node's last reserve did not use.
    pub back: GiveBack,
}

/// A grant this node holds.
#[derive(Debug, Clone)]
enum HeldGrant {
    /// Decided by Redis: its lease is renewed until it is settled.
    Redis { id: String, reserved: u64 },
    /// Decided by the local share while Redis was unreachable.
    Local { local_grant_id: u64 },
    /// The tenant had no limits.
    Unlimited,
}

/// What to do about an acquire.
pub enum Admission {
    /// Decided here (no limits, too large, fast path, or Redis unreachable).
    Decided(Result<(QuotaGrant, RateLimitSnapshot), QuotaRejection>),
    /// Ask Redis, then hand the answer to [`RedisTenantQuota::complete`].
    AskRedis(PendingAcquire),
}

/// An acquire waiting for Redis.
#[derive(Debug, Clone)]
pub struct PendingAcquire {
    grant_id: u64,
    limits: TenantLimits,
    call: AcquireCall,
    sent_at: Instant,
    /// `None` when a settle was in flight (see `FastPath::refunds`).
    refunds_before: Option<u64>,
}

impl PendingAcquire {
    /// The Redis call (owns what it needs, so it can run while the actor goes on).
    pub fn call(
        &self,
        store: &RedisQuotaStore,
        tenant: &str,
    ) -> impl Future<Output = Result<AcquireAnswer, QuotaStoreError>> + 'static {
        let (store, tenant, pending) = (store.clone(), tenant.to_string(), self.clone());
        async move { store.acquire(&tenant, &pending.limits, &pending.call).await }
    }
}

/// One tenant's quota on one node of many, decided in Redis: the fast path, the grants
/// the node holds, and the local share used while Redis is unreachable. Synchronous;
/// the `QuotaActor` runs the Redis calls it asks for.
pub struct RedisTenantQuota {
    tenant: String,
    store: RedisQuotaStore,
    limits: TenantLimits,
    degraded: DegradedLimits,
    /// Enforces the `local_share` limits (concurrency is counted over `held` instead).
    local_share: TenantQuota,
    fast_path: FastPath,
    last_snapshot: RateLimitSnapshot,
    held: HashMap<u64, HeldGrant>,
    next_grant: u64,
    /// When this node's grants were taken and how long they are held: the `retry-after`
    /// of a concurrency rejection.
    holds: HoldTimes,
    /// What this node holds of the tenant's quota for its next requests.
    reserve: Reserve,
}

impl RedisTenantQuota {
    pub fn new(tenant: impl Into<String>, limits: TenantLimits, store: RedisQuotaStore, now: Instant) -> Self {
        let config = store.config();
        let reserve = ReserveConfig {
            max_requests: config.reserve_max_requests,
            ttl: config.reserve_ttl,
            node_count: config.node_count,
        };
        let mut quota = Self {
            tenant: tenant.into(),
            store,
            limits: TenantLimits::default(),
            degraded: DegradedLimits::default(),
            local_share: TenantQuota::new(TenantLimits::default(), now),
            fast_path: FastPath::default(),
            last_snapshot: RateLimitSnapshot::default(),
            held: HashMap::new(),
            next_grant: 1,
            holds: HoldTimes::default(),
            reserve: Reserve::new(reserve, now),
        };
        quota.set_limits(limits, now);
        quota
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn store(&self) -> &RedisQuotaStore {
        &self.store
    }

    pub fn limits(&self) -> &TenantLimits {
        &self.limits
    }

    /// Grants this node holds (not settled yet).
    pub fn in_flight(&self) -> u64 {
        self.held.len() as u64
    }

    /// The last state Redis reported, rate buckets projected to `now`.
    pub fn snapshot(&self, now: Instant) -> RateLimitSnapshot {
        self.fast_path.project(&self.last_snapshot, now)
    }

    pub fn set_limits(&mut self, limits: TenantLimits, now: Instant) {
        let config = self.store.config();
        self.degraded = config.failure_policy.degraded_limits(&limits, config.node_count);
        let local = TenantLimits { max_concurrent_requests: None, ..self.degraded.local.clone() };
        self.local_share.set_limits(local, now);
        self.fast_path.clear();
        self.last_snapshot = RateLimitSnapshot::default();
        self.limits = limits;
        // The next call gives it back (or the next `give_back`).
        self.reserve.release();
    }

    fn leased(limits: &TenantLimits) -> bool {
        limits.max_concurrent_requests.is_some_and(|limit| limit > 0)
    }

    fn hold(&mut self, held: HeldGrant, now: Instant) -> u64 {
        let grant_id = self.next_grant;
        self.next_grant += 1;
        self.held.insert(grant_id, held);
        self.holds.taken(grant_id, now);
        grant_id
    }

    /// Decide locally if possible, or say what to ask Redis.
    pub fn admit(&mut self, prompt_tokens: u64, max_output_tokens: u64, now: Instant) -> Admission {
        if self.limits == TenantLimits::default() {
            let grant_id = self.hold(HeldGrant::Unlimited, now);
            let grant = QuotaGrant { grant_id, reserved_output_tokens: max_output_tokens };
            return Admission::Decided(Ok((grant, RateLimitSnapshot::default())));
        }
        if let Some(slot) = self.reserve.take(prompt_tokens, max_output_tokens, now) {
            m::quota_local_decision(&self.tenant, "reserve");
            let grant_id = self.next_grant;
            let id = slot.unwrap_or_else(|| format!("{}:{grant_id}", self.store.node_id()));
            let grant_id = self.hold(HeldGrant::Redis { id, reserved: max_output_tokens }, now);
            let grant = QuotaGrant { grant_id, reserved_output_tokens: max_output_tokens };
            return Admission::Decided(Ok((grant, self.snapshot(now))));
        }
        let rates = [
            (LimitKind::Requests, self.limits.requests_per_minute, 1),
            (LimitKind::PromptTokens, self.limits.prompt_tokens_per_minute, prompt_tokens),
            (LimitKind::OutputTokens, self.limits.output_tokens_per_minute, max_output_tokens),
        ];
        for (index, (limit, per_minute, amount)) in rates.into_iter().enumerate() {
            let Some(per_minute) = per_minute else { continue };
            let retry_after = if amount > per_minute {
                None
            } else {
                let wait = self.fast_path.wait(index, per_minute, amount, now);
                if wait.is_zero() {
                    continue;
                }
                Some(wait)
            };
            m::quota_local_decision(&self.tenant, "fast_path");
            let snapshot = self.snapshot(now);
            return Admission::Decided(Err(QuotaRejection { limit, requested: amount, retry_after, snapshot }));
        }
        let grant_id = self.next_grant;
        self.next_grant += 1;
        let leased = Self::leased(&self.limits);
        let in_flight = self.in_flight();
        let (asked, back) = self.reserve.plan(prompt_tokens, max_output_tokens, leased, in_flight, &self.snapshot(now), now);
        Admission::AskRedis(PendingAcquire {
            grant_id,
            limits: self.limits.clone(),
            call: AcquireCall {
                request: true,
                prompt_tokens,
                max_output_tokens,
                grant: format!("{}:{grant_id}", self.store.node_id()),
                asked,
                back,
            },
            sent_at: now,
            refunds_before: (self.fast_path.settles_in_flight == 0).then_some(self.fast_path.refunds),
        })
    }

    /// Redis answered (or could not): the decision.
    #[allow(clippy::result_large_err)] // `Acquire`'s reply, as `TenantQuota::acquire`
    pub fn complete(
        &mut self,
        pending: PendingAcquire,
        answer: Result<AcquireAnswer, QuotaStoreError>,
        now: Instant,
    ) -> Result<(QuotaGrant, RateLimitSnapshot), QuotaRejection> {
        let leased = Self::leased(&pending.limits);
        let reserved = answer.as_ref().is_ok_and(|answer| answer.rejected_by.is_none() && answer.reserved);
        let in_flight = self.in_flight();
        self.reserve.filled(pending.call.asked, reserved, &pending.call.grant, leased, in_flight, now);
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                if !matches!(error, QuotaStoreError::CircuitOpen) {
                    tracing::debug!(tenant = %self.tenant, %error, "quota store call failed; deciding locally");
                }
                return self.decide_locally(pending.call.prompt_tokens, pending.call.max_output_tokens, now);
            }
        };
        if pending.limits == self.limits && self.fast_path.can_remember(pending.refunds_before) {
            self.fast_path.observe(&answer.snapshot, pending.sent_at);
            self.last_snapshot = answer.snapshot.clone();
        }
        match answer.rejected_by {
            None => {
                let reserved = pending.call.max_output_tokens;
                self.held.insert(pending.grant_id, HeldGrant::Redis { id: pending.call.grant, reserved });
                self.holds.taken(pending.grant_id, now);
                self.reserve.admitted(now);
                let grant = QuotaGrant { grant_id: pending.grant_id, reserved_output_tokens: reserved };
                Ok((grant, answer.snapshot))
            }
            Some(limit) => {
                let requested = match limit {
                    LimitKind::PromptTokens => pending.call.prompt_tokens,
                    LimitKind::OutputTokens => pending.call.max_output_tokens,
                    LimitKind::Requests | LimitKind::ConcurrentRequests => 1,
                };
                // Redis knows when the oldest slot lease expires (leases are renewed
                // while their requests run), not when a request ends: once this node
                // has measured how long requests hold their slot, that says it.
                let retry_after = match limit {
                    LimitKind::ConcurrentRequests if self.holds.hold_time().is_some() => {
                        Some(self.holds.next_slot_frees_in(now))
                    }
                    _ => answer.retry_after,
                };
                Err(QuotaRejection { limit, requested, retry_after, snapshot: answer.snapshot })
            }
        }
    }

    /// The failure policy: refuse (`fail_closed`), enforce the local share, or admit.
    #[allow(clippy::result_large_err)] // `Acquire`'s reply, as `TenantQuota::acquire`
    fn decide_locally(
        &mut self,
        prompt_tokens: u64,
        max_output_tokens: u64,
        now: Instant,
    ) -> Result<(QuotaGrant, RateLimitSnapshot), QuotaRejection> {
        m::quota_local_decision(&self.tenant, "redis_unavailable");
        let mut snapshot = self.local_share.snapshot(now);
        let concurrent_share = self.degraded.local.max_concurrent_requests;
        snapshot.concurrent_requests = concurrent_share.map(|limit| LimitState {
            limit,
            remaining: limit.saturating_sub(self.in_flight()),
            reset: Duration::ZERO,
        });
        if let Some(&limit) = self.degraded.closed.first() {
            let requested = match limit {
                LimitKind::PromptTokens => prompt_tokens,
                LimitKind::OutputTokens => max_output_tokens,
                LimitKind::Requests | LimitKind::ConcurrentRequests => 1,
            };
            let retry_after = self.store.breaker_retry_in(now).max(Duration::from_secs(1));
            return Err(QuotaRejection { limit, requested, retry_after: Some(retry_after), snapshot });
        }
        if let Some(share) = concurrent_share {
            if self.in_flight() >= share {
                return Err(QuotaRejection {
                    limit: LimitKind::ConcurrentRequests,
                    requested: 1,
                    retry_after: Some(self.holds.next_slot_frees_in(now)),
                    snapshot,
                });
            }
        }
        let (local, mut snapshot) = self.local_share.acquire(prompt_tokens, max_output_tokens, now)?;
        let grant_id = self.hold(HeldGrant::Local { local_grant_id: local.grant_id }, now);
        snapshot.concurrent_requests = concurrent_share.map(|limit| LimitState {
            limit,
            remaining: limit.saturating_sub(self.in_flight()),
            reset: Duration::ZERO,
        });
        Ok((QuotaGrant { grant_id, reserved_output_tokens: max_output_tokens }, snapshot))
    }

    /// End a grant. Returns the Redis call to make, if it was decided by Redis.
    pub fn settle(
        &mut self,
        grant_id: u64,
        generated_tokens: u64,
        now: Instant,
    ) -> Option<impl Future<Output = Result<bool, QuotaStoreError>> + 'static> {
        let held = self.held.remove(&grant_id)?;
        self.holds.ended(grant_id, now);
        match held {
            HeldGrant::Unlimited => None,
            HeldGrant::Local { local_grant_id } => {
                self.local_share.settle(local_grant_id, generated_tokens, now);
                None
            }
            HeldGrant::Redis { id, reserved } => {
                let output_limit = self.limits.output_tokens_per_minute;
                let leased = Self::leased(&self.limits);
                if output_limit.is_none_or(|limit| limit == 0) && !leased {
                    // Nothing to free and nothing to refund.
                    return None;
                }
                let unused = reserved.saturating_sub(generated_tokens);
                if self.reserve.returned(leased.then_some(id.as_str()), unused, now) {
                    // Kept by the live reserve, for the next request.
                    return None;
                }
                self.fast_path.refund(2, reserved.saturating_sub(generated_tokens));
                let (store, tenant) = (self.store.clone(), self.tenant.clone());
                Some(async move { store.settle(&tenant, output_limit, &id, generated_tokens, reserved, leased).await })
            }
        }
    }

    /// The call that gives back an expired reserve, or one the limits' change released
    /// (`None`: nothing to give back). A give-back that fails is not retried: its slots
    /// expire with their leases, and the rates' unused part is lost for the window.
    pub fn give_back(&mut self, now: Instant) -> Option<impl Future<Output = Result<AcquireAnswer, QuotaStoreError>> + 'static> {
        let back = self.reserve.expire(now)?;
        let call = AcquireCall { request: false, back, ..AcquireCall::default() };
        let (store, tenant, limits) = (self.store.clone(), self.tenant.clone(), self.limits.clone());
        Some(async move { store.acquire(&tenant, &limits, &call).await })
    }

    /// A settle call [`settle`](Self::settle) asked for has ended (either way).
    pub fn settled(&mut self) {
        self.fast_path.settles_in_flight = self.fast_path.settles_in_flight.saturating_sub(1);
    }

    /// The renewal of every lease this node holds for the tenant, in one call (`None`
    /// when it holds none).
    pub fn renew(&self) -> Option<impl Future<Output = Result<Vec<String>, QuotaStoreError>> + 'static> {
        if self.limits.max_concurrent_requests.is_none_or(|limit| limit == 0) {
            // Grants hold leases only under a concurrency limit.
            return None;
        }
        let grants: Vec<String> = self
            .held
            .values()
            .filter_map(|held| match held {
                HeldGrant::Redis { id, .. } => Some(id.clone()),
                _ => None,
            })
            .chain(self.reserve.free_slots().cloned())
            .collect();
        if grants.is_empty() {
            return None;
        }
        let (store, tenant) = (self.store.clone(), self.tenant.clone());
        Some(async move { store.renew(&tenant, grants).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_replies_decode() {
        let reply = [0, 1, 30_000_000, 2, 0, 60_000_000, 0, 0, 0, 100, 40, 36_000_000, 3, 1, 0, 0];
        let answer = AcquireAnswer::decode(&reply).unwrap();
        assert_eq!(answer.rejected_by, Some(LimitKind::Requests));
        assert_eq!(answer.retry_after, Some(Duration::from_secs(30)));
        assert_eq!(
            answer.snapshot.requests,
            Some(LimitState { limit: 2, remaining: 0, reset: Duration::from_secs(60) })
        );
        assert_eq!(answer.snapshot.prompt_tokens, None);
        assert_eq!(answer.snapshot.output_tokens.unwrap().remaining, 40);
        assert_eq!(answer.snapshot.concurrent_requests.unwrap().remaining, 1);
        let never = [0, 2, -1, 0, 0, 0, 10, 10, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(AcquireAnswer::decode(&never).unwrap().retry_after, None);
        assert!(AcquireAnswer::decode(&[1, 0]).is_err());
    }

}
