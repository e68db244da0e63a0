//! Per-tenant quotas: the arithmetic (`TenantQuota`, a plain struct) and the
//! `QuotaActor` that owns one tenant's state.
//!
//! Rates are token buckets, not fixed windows: a limit of `N per minute` is a bucket of
//! `N` that refills continuously at `N / 60` per second, so a tenant may burst up to `N`
//! and then sustains `N` per minute. At admission a request takes 1 from the request
//! bucket, its prompt tokens from the prompt bucket and its `max_tokens` from the output
//! bucket (a reservation), and one concurrency slot; when it ends, the output tokens it
//! did not generate are refunded and the slot is returned.
//!
//! The `QuotaActor` decides with a [`QuotaBackend`]: `Local` (this struct, the embedded
//! default) or `Redis`, where every node shares the tenant's limits (see
//! [`crate::redis_quota`] and, for when Redis is away, [`crate::quota_failure`]).

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::metrics as m;
use crate::hold_times::HoldTimes;
use crate::redis_quota::{
    Admission, QuotaStoreError, QuotaStoreStatus, RedisQuotaConfig, RedisQuotaStore, RedisTenantQuota,
};

/// The largest limit (10^12): beyond it a limit means nothing, and counts stay exact in
/// the quota arithmetic (and in Redis' Lua numbers, which are doubles).
pub const MAX_LIMIT: u64 = 1_000_000_000_000;

/// A tenant's limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    pub requests_per_minute: Option<u64>,
    pub prompt_tokens_per_minute: Option<u64>,
    pub output_tokens_per_minute: Option<u64>,
    pub max_concurrent_requests: Option<u64>,
}

impl TenantLimits {
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        for (key, value) in [
            ("requests_per_minute", self.requests_per_minute),
            ("prompt_tokens_per_minute", self.prompt_tokens_per_minute),
            ("output_tokens_per_minute", self.output_tokens_per_minute),
            ("max_concurrent_requests", self.max_concurrent_requests),
        ] {
            if value == Some(0) {
                return Err(format!("{prefix}.{key} must be at least 1 (omit it for no limit)"));
            }
            if value.is_some_and(|value| value > MAX_LIMIT) {
                return Err(format!("{prefix}.{key} must be at most {MAX_LIMIT} (omit it for no limit)"));
            }
        }
        Ok(())
    }
}

/// Which limit a rejection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    Requests,
    PromptTokens,
    OutputTokens,
    ConcurrentRequests,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::PromptTokens => "prompt_tokens",
            LimitKind::OutputTokens => "output_tokens",
            LimitKind::ConcurrentRequests => "concurrent_requests",
        }
    }
}

/// The state of one limit, for OpenAI's `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LimitState {
    pub limit: u64,
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// Rate-limit state reported with every admission decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RateLimitSnapshot {
    pub requests: Option<LimitState>,
    pub prompt_tokens: Option<LimitState>,
    pub output_tokens: Option<LimitState>,
    pub concurrent_requests: Option<LimitState>,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuotaRejection {
    pub limit: LimitKind,
    /// What the request asked for.
    pub requested: u64,
    /// When retrying can succeed; `None` when it never can (the request alone exceeds
    /// the limit).
    pub retry_after: Option<Duration>,
    pub snapshot: RateLimitSnapshot,
}

impl QuotaRejection {
    pub fn message(&self) -> String {
        let limit = match self.limit {
            LimitKind::Requests => self.snapshot.requests,
            LimitKind::PromptTokens => self.snapshot.prompt_tokens,
            LimitKind::OutputTokens => self.snapshot.output_tokens,
            LimitKind::ConcurrentRequests => self.snapshot.concurrent_requests,
        }
        .map(|s| s.limit)
        .unwrap_or(0);
        let unit = match self.limit {
            LimitKind::Requests => "requests per minute",
            LimitKind::PromptTokens => "prompt tokens per minute",
            LimitKind::OutputTokens => "output tokens per minute",
            LimitKind::ConcurrentRequests => "concurrent requests",
        };
        match self.retry_after {
            Some(wait) => format!(
                "rate limit reached: limit {limit} {unit}, requested {}; retry in {:.1}s",
                self.requested,
                wait.as_secs_f64()
            ),
            None => format!(
                "request too large: limit {limit} {unit}, requested {}; it can never be admitted",
                self.requested
            ),
        }
    }
}

/// A continuously refilling token bucket.
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    per_second: f64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    fn per_minute(limit: u64, now: Instant) -> Self {
        let capacity = limit as f64;
        Self { capacity, per_second: capacity / 60.0, level: capacity, updated: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
    }

    /// Time until `amount` is available (zero if it is now).
    fn wait_for(&self, amount: f64) -> Option<Duration> {
        if amount > self.capacity {
            return None;
        }
        let missing = (amount - self.level).max(0.0);
        Some(Duration::from_secs_f64(missing / self.per_second))
    }

    fn state(&self) -> LimitState {
        let missing = (self.capacity - self.level).max(0.0);
        LimitState {
            limit: self.capacity as u64,
            remaining: self.level.floor().max(0.0) as u64,
            reset: Duration::from_secs_f64(missing / self.per_second),
        }
    }
}

/// An admitted request's hold on its tenant's quota, returned with `settle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaGrant {
    pub grant_id: u64,
    pub reserved_output_tokens: u64,
}

/// One tenant's quota arithmetic. Plain and synchronous: time is passed in.
#[derive(Debug, Clone)]
pub struct TenantQuota {
    limits: TenantLimits,
    requests: Option<Bucket>,
    prompt_tokens: Option<Bucket>,
    output_tokens: Option<Bucket>,
    /// Grants held: the output tokens each reserved.
    in_flight: HashMap<u64, u64>,
    next_grant: u64,
    /// When the held grants were taken, and how long grants are held: when the next
    /// concurrency slot frees.
    holds: HoldTimes,
}

impl TenantQuota {
    pub fn new(limits: TenantLimits, now: Instant) -> Self {
        let mut quota = Self {
            limits: TenantLimits::default(),
            requests: None,
            prompt_tokens: None,
            output_tokens: None,
            in_flight: HashMap::new(),
            next_grant: 1,
            holds: HoldTimes::default(),
        };
        quota.set_limits(limits, now);
        quota
    }

    pub fn limits(&self) -> &TenantLimits {
        &self.limits
    }

    /// Change the limits; a bucket whose limit is unchanged keeps its level.
    pub fn set_limits(&mut self, limits: TenantLimits, now: Instant) {
        fn rebuild(old: Option<Bucket>, limit: Option<u64>, now: Instant) -> Option<Bucket> {
            let limit = limit?;
            match old {
                Some(bucket) if bucket.capacity == limit as f64 => Some(bucket),
                _ => Some(Bucket::per_minute(limit, now)),
            }
        }
        self.requests = rebuild(self.requests.take(), limits.requests_per_minute, now);
        self.prompt_tokens = rebuild(self.prompt_tokens.take(), limits.prompt_tokens_per_minute, now);
        self.output_tokens = rebuild(self.output_tokens.take(), limits.output_tokens_per_minute, now);
        self.limits = limits;
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.len() as u64
    }

    pub fn snapshot(&mut self, now: Instant) -> RateLimitSnapshot {
        for bucket in [&mut self.requests, &mut self.prompt_tokens, &mut self.output_tokens]
            .into_iter()
            .flatten()
        {
            bucket.refill(now);
        }
        RateLimitSnapshot {
            requests: self.requests.as_ref().map(Bucket::state),
            prompt_tokens: self.prompt_tokens.as_ref().map(Bucket::state),
            output_tokens: self.output_tokens.as_ref().map(Bucket::state),
            concurrent_requests: self.limits.max_concurrent_requests.map(|limit| LimitState {
                limit,
                remaining: limit.saturating_sub(self.in_flight()),
                reset: Duration::ZERO,
            }),
        }
    }

    /// Admit a request or say which limit stops it. All or nothing: a rejected request
    /// takes nothing from any bucket.
    #[allow(clippy::result_large_err)] // the rejection is the 429's whole answer
    pub fn acquire(
        &mut self,
        prompt_tokens: u64,
        max_output_tokens: u64,
        now: Instant,
    ) -> Result<(QuotaGrant, RateLimitSnapshot), QuotaRejection> {
        let snapshot = self.snapshot(now);
        let checks = [
            (LimitKind::Requests, &self.requests, 1),
            (LimitKind::PromptTokens, &self.prompt_tokens, prompt_tokens),
            (LimitKind::OutputTokens, &self.output_tokens, max_output_tokens),
        ];
        for (limit, bucket, amount) in checks {
            let Some(bucket) = bucket else { continue };
            match bucket.wait_for(amount as f64) {
                Some(wait) if wait.is_zero() => {}
                retry_after => {
                    return Err(QuotaRejection { limit, requested: amount, retry_after, snapshot });
                }
            }
        }
        if let Some(max) = self.limits.max_concurrent_requests {
            if self.in_flight() >= max {
                return Err(QuotaRejection {
                    limit: LimitKind::ConcurrentRequests,
                    requested: 1,
                    retry_after: Some(self.holds.next_slot_frees_in(now)),
                    snapshot,
                });
            }
        }
        for (bucket, amount) in [
            (&mut self.requests, 1),
            (&mut self.prompt_tokens, prompt_tokens),
            (&mut self.output_tokens, max_output_tokens),
        ] {
            if let Some(bucket) = bucket {
                bucket.level -= amount as f64;
            }
        }
        let grant_id = self.next_grant;
        self.next_grant += 1;
        self.in_flight.insert(grant_id, max_output_tokens);
        self.holds.taken(grant_id, now);
        let snapshot = self.snapshot(now);
        Ok((QuotaGrant { grant_id, reserved_output_tokens: max_output_tokens }, snapshot))
    }

    /// End a grant: return its concurrency slot and refund the output tokens it
    /// reserved but did not generate. Settling twice is harmless.
    pub fn settle(&mut self, grant_id: u64, generated_tokens: u64, now: Instant) {
        let Some(reserved) = self.in_flight.remove(&grant_id) else { return };
        self.holds.ended(grant_id, now);
        if let Some(bucket) = &mut self.output_tokens {
            bucket.refill(now);
            let refund = reserved.saturating_sub(generated_tokens) as f64;
            bucket.level = (bucket.level + refund).min(bucket.capacity);
        }
    }
}

/// Where a tenant's quota is decided.
#[derive(Debug, Clone, Default)]
pub enum QuotaBackend {
    /// In this process (`TenantQuota`): the embedded default, for one node.
    #[default]
    Local,
    /// In Redis, shared by every node using the same store (see [`crate::redis_quota`]).
    Redis(RedisQuotaStore),
}

impl QuotaBackend {
    /// The Redis backend at `url` with the `[quota]` config. Connects lazily; call it
    /// inside a tokio runtime.
    pub fn redis(url: &str, config: RedisQuotaConfig) -> Result<Self, QuotaStoreError> {
        Ok(QuotaBackend::Redis(RedisQuotaStore::open(url, config)?))
    }
}

// One per tenant: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum TenantState {
    Local(TenantQuota),
    Redis(RedisTenantQuota),
}

/// One tenant's quota, as an actor. Every admission of the tenant on this node goes
/// through it; with the Redis backend the decisions are shared with the other nodes.
pub struct QuotaActor {
    tenant: String,
    state: TenantState,
}

type AcquireResult = Result<(QuotaGrant, RateLimitSnapshot), QuotaRejection>;

impl QuotaActor {
    /// A local quota.
    pub fn new(tenant: impl Into<String>, limits: TenantLimits) -> Self {
        Self::with_backend(tenant, limits, QuotaBackend::Local)
    }

    pub fn with_backend(tenant: impl Into<String>, limits: TenantLimits, backend: QuotaBackend) -> Self {
        let tenant = tenant.into();
        let state = match backend {
            QuotaBackend::Local => TenantState::Local(TenantQuota::new(limits, Instant::now())),
            QuotaBackend::Redis(store) => {
                TenantState::Redis(RedisTenantQuota::new(tenant.clone(), limits, store, Instant::now()))
            }
        };
        Self { tenant, state }
    }

    /// One batched renewal of the leases this node holds for the tenant.
    fn renew_leases(&mut self, ctx: &mut Context<Self>) {
        let TenantState::Redis(quota) = &self.state else { return };
        let Some(renewal) = quota.renew() else { return };
        let tenant = self.tenant.clone();
        ctx.spawn(
            async move {
                match renewal.await {
                    Ok(lost) if !lost.is_empty() => {
                        tracing::warn!(%tenant, lost = lost.len(), "quota leases expired before renewal");
                        m::quota_leases_lost(&tenant, lost.len() as u64);
                    }
                    Ok(_) => {}
                    Err(error) => tracing::debug!(%tenant, %error, "quota lease renewal failed"),
                }
            }
            .into_actor(self),
        );
    }

    /// Gives back an expired reserve of the tenant's quota (see `redis_quota/reserve.rs`).
    fn give_back(&mut self, ctx: &mut Context<Self>) {
        let TenantState::Redis(quota) = &mut self.state else { return };
        let Some(call) = quota.give_back(Instant::now()) else { return };
        let tenant = self.tenant.clone();
        ctx.spawn(
            async move {
                if let Err(error) = call.await {
                    tracing::debug!(%tenant, %error, "giving back a quota reserve failed; its slots will expire");
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for QuotaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let TenantState::Redis(quota) = &self.state {
            let config = quota.store().config();
            ctx.run_interval(config.lease_renew_interval, |actor, ctx| actor.renew_leases(ctx));
            ctx.run_interval(config.reserve_ttl, |actor, ctx| actor.give_back(ctx));
        }
    }
}

/// Admit one request: `Ok` holds the grant to settle when the request ends.
#[derive(Message)]
#[rtype(result = "Result<(QuotaGrant, RateLimitSnapshot), QuotaRejection>")]
pub struct Acquire {
    pub prompt_tokens: u64,
    pub max_output_tokens: u64,
}

impl Handler<Acquire> for QuotaActor {
    type Result = ResponseActFuture<Self, AcquireResult>;

    // The reply type is `Acquire`'s (as `TenantQuota::acquire`'s).
    #[allow(clippy::result_large_err)]
    fn handle(&mut self, msg: Acquire, _: &mut Context<Self>) -> Self::Result {
        fn count_rejection(tenant: &str, result: &AcquireResult) {
            if let Err(rejection) = result {
                m::quota_rejected(tenant, rejection.limit.as_str());
            }
        }
        let quota = match &mut self.state {
            TenantState::Local(quota) => {
                let result = quota.acquire(msg.prompt_tokens, msg.max_output_tokens, Instant::now());
                count_rejection(&self.tenant, &result);
                return Box::pin(actix::fut::ready(result));
            }
            TenantState::Redis(quota) => quota,
        };
        match quota.admit(msg.prompt_tokens, msg.max_output_tokens, Instant::now()) {
            Admission::Decided(result) => {
                count_rejection(&self.tenant, &result);
                Box::pin(actix::fut::ready(result))
            }
            Admission::AskRedis(pending) => {
                let call = pending.call(quota.store(), &self.tenant);
                Box::pin(call.into_actor(self).map(move |answer, actor, _| {
                    let TenantState::Redis(quota) = &mut actor.state else {
                        unreachable!("a quota actor keeps its backend")
                    };
                    let result = quota.complete(pending, answer, Instant::now());
                    count_rejection(&actor.tenant, &result);
                    result
                }))
            }
        }
    }
}

/// A request ended: return its slot and refund what it did not generate.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Settle {
    pub grant_id: u64,
    pub generated_tokens: u64,
}

impl Handler<Settle> for QuotaActor {
    type Result = ();

    fn handle(&mut self, msg: Settle, ctx: &mut Context<Self>) {
        match &mut self.state {
            TenantState::Local(quota) => quota.settle(msg.grant_id, msg.generated_tokens, Instant::now()),
            TenantState::Redis(quota) => {
                let Some(call) = quota.settle(msg.grant_id, msg.generated_tokens, Instant::now()) else { return };
                ctx.spawn(call.into_actor(self).map(|result, actor, _| {
                    // A settle that fails is not retried: the lease expires by itself.
                    if let Err(error) = result {
                        tracing::debug!(tenant = %actor.tenant, %error, "quota settle failed; the lease will expire");
                    }
                    if let TenantState::Redis(quota) = &mut actor.state {
                        quota.settled();
                    }
                }));
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SetLimits(pub TenantLimits);

impl Handler<SetLimits> for QuotaActor {
    type Result = ();

    fn handle(&mut self, msg: SetLimits, _: &mut Context<Self>) {
        match &mut self.state {
            TenantState::Local(quota) => quota.set_limits(msg.0, Instant::now()),
            TenantState::Redis(quota) => quota.set_limits(msg.0, Instant::now()),
        }
    }
}

/// A snapshot of the tenant's quota state. With the Redis backend, `in_flight` counts
/// this node's grants and `state` is the last state Redis reported (rates projected).
#[derive(Debug, Clone, Serialize)]
pub struct QuotaStatus {
    pub tenant: String,
    pub limits: TenantLimits,
    pub in_flight: u64,
    pub state: RateLimitSnapshot,
    /// `local` or `redis`.
    pub backend: &'static str,
    /// The Redis store's node id, breaker state and call count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<QuotaStoreStatus>,
}

#[derive(Message)]
#[rtype(result = "QuotaStatus")]
pub struct ObserveQuota;

impl Handler<ObserveQuota> for QuotaActor {
    type Result = MessageResult<ObserveQuota>;

    fn handle(&mut self, _: ObserveQuota, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        let tenant = self.tenant.clone();
        MessageResult(match &mut self.state {
            TenantState::Local(quota) => QuotaStatus {
                tenant,
                limits: quota.limits().clone(),
                in_flight: quota.in_flight(),
                state: quota.snapshot(now),
                backend: "local",
                store: None,
            },
            TenantState::Redis(quota) => QuotaStatus {
                tenant,
                limits: quota.limits().clone(),
                in_flight: quota.in_flight(),
                state: quota.snapshot(now),
                backend: "redis",
                store: Some(quota.store().status()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: u64) -> TenantLimits {
        TenantLimits { requests_per_minute: Some(rpm), ..Default::default() }
    }

    #[test]
    fn requests_per_minute_is_a_refilling_bucket() {
        let t0 = Instant::now();
        let mut quota = TenantQuota::new(limits(2), t0);
        assert!(quota.acquire(10, 10, t0).is_ok());
        assert!(quota.acquire(10, 10, t0).is_ok());
        let rejection = quota.acquire(10, 10, t0).unwrap_err();
        assert_eq!(rejection.limit, LimitKind::Requests);
        assert_eq!(rejection.retry_after, Some(Duration::from_secs(30)));
        let state = rejection.snapshot.requests.unwrap();
        assert_eq!((state.limit, state.remaining), (2, 0));
        assert_eq!(state.reset, Duration::from_secs(60));
        // Half a minute later one request has refilled (2 per minute).
        assert!(quota.acquire(10, 10, t0 + Duration::from_secs(29)).is_err());
        assert!(quota.acquire(10, 10, t0 + Duration::from_secs(30)).is_ok());
    }

    #[test]
    fn a_rejection_takes_nothing_from_any_bucket() {
        let t0 = Instant::now();
        let mut quota = TenantQuota::new(
            TenantLimits {
                requests_per_minute: Some(10),
                prompt_tokens_per_minute: Some(100),
                ..Default::default()
            },
            t0,
        );
        let rejection = quota.acquire(150, 1, t0).unwrap_err();
        assert_eq!(rejection.limit, LimitKind::PromptTokens);
        assert_eq!(rejection.retry_after, None, "150 > 100 can never fit");
        assert!(rejection.message().contains("can never be admitted"));
        let snapshot = quota.snapshot(t0);
        assert_eq!(snapshot.requests.unwrap().remaining, 10);
        assert_eq!(snapshot.prompt_tokens.unwrap().remaining, 100);
    }

    #[test]
    fn output_tokens_are_reserved_then_refunded() {
        let t0 = Instant::now();
        let mut quota = TenantQuota::new(
            TenantLimits { output_tokens_per_minute: Some(1000), ..Default::default() },
            t0,
        );
        let (grant, snapshot) = quota.acquire(5, 600, t0).unwrap();
        assert_eq!(snapshot.output_tokens.unwrap().remaining, 400);
        let rejection = quota.acquire(5, 600, t0).unwrap_err();
        assert_eq!(rejection.limit, LimitKind::OutputTokens);
        // Only 100 of 600 were generated: 500 come back.
        quota.settle(grant.grant_id, 100, t0);
        assert_eq!(quota.snapshot(t0).output_tokens.unwrap().remaining, 900);
        quota.settle(grant.grant_id, 100, t0);
        assert_eq!(quota.snapshot(t0).output_tokens.unwrap().remaining, 900, "settling twice is harmless");
    }

    #[test]
    fn concurrency_slots_are_returned_on_settle() {
        let t0 = Instant::now();
        let mut quota = TenantQuota::new(
            TenantLimits { max_concurrent_requests: Some(1), ..Default::default() },
            t0,
        );
        let (grant, _) = quota.acquire(1, 1, t0).unwrap();
        assert_eq!(quota.acquire(1, 1, t0).unwrap_err().limit, LimitKind::ConcurrentRequests);
        quota.settle(grant.grant_id, 1, t0);
        assert!(quota.acquire(1, 1, t0).is_ok());
    }

    #[test]
    fn a_concurrency_rejection_retries_when_the_oldest_grant_is_expected_to_end() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut quota = TenantQuota::new(TenantLimits { max_concurrent_requests: Some(2), ..Default::default() }, t0);
        let (first, _) = quota.acquire(1, 1, t0).unwrap();
        quota.acquire(1, 1, t0).unwrap();
        let rejection = quota.acquire(1, 1, t0).unwrap_err();
        assert_eq!(rejection.retry_after, Some(secs(1)), "nothing measured yet: the floor");
        // Requests are measured to hold their slot 20 s: the one taken at 0 s ends at
        // about 20 s, and one taken at 15 s at about 35 s.
        quota.settle(first.grant_id, 1, t0 + secs(20));
        quota.acquire(1, 1, t0 + secs(20)).unwrap();
        let rejection = quota.acquire(1, 1, t0 + secs(20)).unwrap_err();
        assert_eq!(rejection.retry_after, Some(secs(1)), "the grant taken at 0 s is due: the floor");
        let mut quota = TenantQuota::new(TenantLimits { max_concurrent_requests: Some(1), ..Default::default() }, t0);
        let (grant, _) = quota.acquire(1, 1, t0).unwrap();
        quota.settle(grant.grant_id, 1, t0 + secs(20));
        quota.acquire(1, 1, t0 + secs(30)).unwrap();
        let rejection = quota.acquire(1, 1, t0 + secs(35)).unwrap_err();
        assert_eq!(rejection.retry_after, Some(secs(15)), "taken 5 s ago, held 20 s");
    }

    #[test]
    fn changing_limits_keeps_unchanged_buckets() {
        let t0 = Instant::now();
        let mut quota = TenantQuota::new(limits(5), t0);
        quota.acquire(1, 1, t0).unwrap();
        quota.set_limits(
            TenantLimits { requests_per_minute: Some(5), max_concurrent_requests: Some(3), ..Default::default() },
            t0,
        );
        assert_eq!(quota.snapshot(t0).requests.unwrap().remaining, 4);
        quota.set_limits(limits(50), t0);
        assert_eq!(quota.snapshot(t0).requests.unwrap().remaining, 50);
    }

    #[test]
    fn zero_limits_are_rejected_by_validation_naming_the_key() {
        let limits = TenantLimits { output_tokens_per_minute: Some(0), ..Default::default() };
        let err = limits.validate("tenants.acme.limits").unwrap_err();
        assert!(err.contains("tenants.acme.limits.output_tokens_per_minute"), "{err}");
    }

    #[test]
    fn limits_beyond_the_bound_are_rejected_naming_the_key() {
        let limits = TenantLimits { max_concurrent_requests: Some(u64::MAX), ..Default::default() };
        let err = limits.validate("tenants.acme.limits").unwrap_err();
        assert_eq!(err, "tenants.acme.limits.max_concurrent_requests must be at most 1000000000000 (omit it for no limit)");
        let limits = TenantLimits { requests_per_minute: Some(MAX_LIMIT), ..Default::default() };
        assert!(limits.validate("tenants.acme.limits").is_ok());
    }
}
