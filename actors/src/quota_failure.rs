//! What a node does about quotas while the shared quota store (Redis) cannot answer:
//! the per-limit [`FailurePolicy`], the limits a node enforces alone
//! ([`QuotaFailurePolicy::degraded_limits`]) and the [`CircuitBreaker`] that stops a node
//! from waiting on a store that is down.
//!
//! Plain, synchronous types: time is passed in. The Redis backend
//! ([`crate::redis_quota`]) is the only user.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::quota::{LimitKind, TenantLimits};

/// What to do about one kind of limit while the quota store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Do not enforce the limit: availability over accuracy.
    FailOpen,
    /// Refuse every request the limit applies to (429 with `retry-after`).
    FailClosed,
    /// Enforce `limit / node_count` (at least 1) with this node's own local quota, so the
    /// nodes together stay near the limit.
    LocalShare,
}

impl FailurePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::FailOpen => "fail_open",
            FailurePolicy::FailClosed => "fail_closed",
            FailurePolicy::LocalShare => "local_share",
        }
    }
}

/// `[quota.failure_policy]`: a policy for every limit kind, `default` for those not named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaFailurePolicy {
    #[serde(default = "default_failure_policy")]
    pub default: FailurePolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<FailurePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<FailurePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<FailurePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_requests: Option<FailurePolicy>,
}

fn default_failure_policy() -> FailurePolicy {
    FailurePolicy::LocalShare
}

impl Default for QuotaFailurePolicy {
    fn default() -> Self {
        Self::all(default_failure_policy())
    }
}

/// What a node enforces alone while the store is unreachable.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DegradedLimits {
    /// Limits enforced by the node's local quota (`local_share` kinds, divided).
    pub local: TenantLimits,
    /// Limit kinds the tenant has that refuse every request (`fail_closed`).
    pub closed: Vec<LimitKind>,
}

impl QuotaFailurePolicy {
    /// The same policy for every limit kind.
    pub fn all(policy: FailurePolicy) -> Self {
        Self {
            default: policy,
            requests: None,
            prompt_tokens: None,
            output_tokens: None,
            concurrent_requests: None,
        }
    }

    pub fn for_kind(&self, kind: LimitKind) -> FailurePolicy {
        match kind {
            LimitKind::Requests => self.requests,
            LimitKind::PromptTokens => self.prompt_tokens,
            LimitKind::OutputTokens => self.output_tokens,
            LimitKind::ConcurrentRequests => self.concurrent_requests,
        }
        .unwrap_or(self.default)
    }

    /// The limits a node enforces alone for a tenant with `limits`, one of `node_count`.
    pub fn degraded_limits(&self, limits: &TenantLimits, node_count: u64) -> DegradedLimits {
        let mut degraded = DegradedLimits::default();
        let node_count = node_count.max(1);
        let kinds = [
            (LimitKind::Requests, limits.requests_per_minute, &mut degraded.local.requests_per_minute),
            (LimitKind::PromptTokens, limits.prompt_tokens_per_minute, &mut degraded.local.prompt_tokens_per_minute),
            (LimitKind::OutputTokens, limits.output_tokens_per_minute, &mut degraded.local.output_tokens_per_minute),
            (
                LimitKind::ConcurrentRequests,
                limits.max_concurrent_requests,
                &mut degraded.local.max_concurrent_requests,
            ),
        ];
        for (kind, limit, local) in kinds {
            let Some(limit) = limit else { continue };
            match self.for_kind(kind) {
                FailurePolicy::FailOpen => {}
                FailurePolicy::FailClosed => degraded.closed.push(kind),
                FailurePolicy::LocalShare => *local = Some((limit / node_count).max(1)),
            }
        }
        degraded
    }
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go to the store.
    Closed,
    /// Calls are not made until the cool-down ends.
    Open,
    /// One probe call is in flight; the others are decided locally until it answers.
    HalfOpen,
}

/// Stops calling a failing store: after `failures_to_open` consecutive failures it opens
/// for `cooldown`, then lets one probe through; the probe's success closes it, its
/// failure opens it again.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    failures_to_open: u32,
    cooldown: Duration,
    /// A probe that never reports back (its caller gave up) is forgotten after this.
    probe_timeout: Duration,
    consecutive_failures: u32,
    state: Breaker,
}

#[derive(Debug, Clone, Copy)]
enum Breaker {
    Closed,
    Open { until: Instant },
    HalfOpen { since: Instant },
}

impl CircuitBreaker {
    pub fn new(failures_to_open: u32, cooldown: Duration, probe_timeout: Duration) -> Self {
        Self {
            failures_to_open: failures_to_open.max(1),
            cooldown,
            probe_timeout,
            consecutive_failures: 0,
            state: Breaker::Closed,
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state {
            Breaker::Closed => BreakerState::Closed,
            Breaker::Open { .. } => BreakerState::Open,
            Breaker::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may be made now (an open breaker past its cool-down lets this one
    /// call through as the probe).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            Breaker::Closed => true,
            Breaker::Open { until } if now >= until => {
                self.state = Breaker::HalfOpen { since: now };
                true
            }
            Breaker::Open { .. } => false,
            Breaker::HalfOpen { since } if now.saturating_duration_since(since) >= self.probe_timeout => {
                self.state = Breaker::HalfOpen { since: now };
                true
            }
            Breaker::HalfOpen { .. } => false,
        }
    }

    /// Time until the breaker lets a probe through (zero when closed or probing is due).
    pub fn retry_in(&self, now: Instant) -> Duration {
        match self.state {
            Breaker::Open { until } => until.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
        self.state = Breaker::Closed;
    }

    /// Returns whether this failure opened the breaker.
    pub fn record_failure(&mut self, now: Instant) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let open = match self.state {
            Breaker::HalfOpen { .. } => true,
            Breaker::Closed => self.consecutive_failures >= self.failures_to_open,
            // A call let through before the breaker opened failed late: stay open.
            Breaker::Open { .. } => false,
        };
        if open {
            self.state = Breaker::Open { until: now + self.cooldown };
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_limits_follow_each_kinds_policy() {
        let limits = TenantLimits {
            requests_per_minute: Some(100),
            prompt_tokens_per_minute: Some(1000),
            output_tokens_per_minute: Some(2),
            max_concurrent_requests: Some(10),
        };
        let policy = QuotaFailurePolicy {
            default: FailurePolicy::LocalShare,
            prompt_tokens: Some(FailurePolicy::FailOpen),
            concurrent_requests: Some(FailurePolicy::FailClosed),
            ..QuotaFailurePolicy::default()
        };
        let degraded = policy.degraded_limits(&limits, 3);
        assert_eq!(degraded.local.requests_per_minute, Some(33));
        assert_eq!(degraded.local.prompt_tokens_per_minute, None, "fail_open is not enforced");
        assert_eq!(degraded.local.output_tokens_per_minute, Some(1), "a share is at least 1");
        assert_eq!(degraded.local.max_concurrent_requests, None);
        assert_eq!(degraded.closed, vec![LimitKind::ConcurrentRequests]);
        // A kind the tenant has no limit for is never closed.
        let degraded = QuotaFailurePolicy::all(FailurePolicy::FailClosed).degraded_limits(&TenantLimits::default(), 3);
        assert!(degraded.closed.is_empty());
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_then_probes() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(3, Duration::from_secs(5), Duration::from_secs(1));
        assert!(breaker.allow(t0));
        assert!(!breaker.record_failure(t0));
        breaker.record_success();
        assert!(!breaker.record_failure(t0));
        assert!(!breaker.record_failure(t0));
        assert!(breaker.record_failure(t0), "the third consecutive failure opens it");
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allow(t0 + Duration::from_secs(4)));
        assert_eq!(breaker.retry_in(t0 + Duration::from_secs(4)), Duration::from_secs(1));
        // The cool-down is over: one probe goes through, the others wait for it.
        let t5 = t0 + Duration::from_secs(5);
        assert!(breaker.allow(t5));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(!breaker.allow(t5));
        // The probe failed: open again for a whole cool-down.
        assert!(breaker.record_failure(t5));
        assert!(!breaker.allow(t5 + Duration::from_secs(4)));
        let t10 = t5 + Duration::from_secs(5);
        assert!(breaker.allow(t10));
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow(t10));
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(1, Duration::from_secs(1), Duration::from_millis(200));
        breaker.record_failure(t0);
        assert!(breaker.allow(t0 + Duration::from_secs(1)));
        assert!(!breaker.allow(t0 + Duration::from_millis(1100)));
        assert!(breaker.allow(t0 + Duration::from_millis(1200)));
    }
}
