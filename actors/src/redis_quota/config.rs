//! `[quota]`: how tenant quotas are shared by many nodes through Redis.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::quota_failure::QuotaFailurePolicy;

/// `[quota]`: how quotas are shared through Redis (used only with a Redis backend).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisQuotaConfig {
    /// What each limit kind does while Redis cannot answer.
    pub failure_policy: QuotaFailurePolicy,
    /// How many nodes share the limits: `local_share` enforces `limit / node_count`.
    pub node_count: u64,
    /// How long a quota call may take before Redis counts as unreachable.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// A grant's concurrency slot and reservation last this long unless renewed.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often a node renews the leases of its in-flight grants.
    #[serde(with = "humantime_serde")]
    pub lease_renew_interval: Duration,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker stops calling Redis before it probes.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Prefix of every quota key.
    pub key_prefix: String,
    /// The most requests a node reserves quota for in one call (1: none; see
    /// `redis_quota/reserve.rs`).
    pub reserve_max_requests: u64,
    /// How long a node uses a reserve before it gives back what is left.
    #[serde(with = "humantime_serde")]
    pub reserve_ttl: Duration,
}

impl Default for RedisQuotaConfig {
    fn default() -> Self {
        Self {
            failure_policy: QuotaFailurePolicy::default(),
            node_count: 1,
            redis_timeout: Duration::from_millis(75),
            lease_ttl: Duration::from_secs(30),
            lease_renew_interval: Duration::from_secs(10),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(5),
            key_prefix: "swell:quota".into(),
            reserve_max_requests: 32,
            reserve_ttl: Duration::from_secs(1),
        }
    }
}

impl RedisQuotaConfig {
    /// Checks the config; each error names its key under `prefix` (e.g. `quota`).
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.node_count == 0 {
            errors.push(format!("{prefix}.node_count must be at least 1"));
        }
        if self.redis_timeout.is_zero() || self.redis_timeout > Duration::from_secs(10) {
            errors.push(format!("{prefix}.redis_timeout must be more than 0s and at most 10s"));
        }
        if self.lease_ttl < Duration::from_millis(100) {
            errors.push(format!("{prefix}.lease_ttl must be at least 100ms"));
        }
        if self.lease_renew_interval.is_zero() || self.lease_renew_interval * 2 > self.lease_ttl {
            errors.push(format!(
                "{prefix}.lease_renew_interval must be more than 0s and at most half of {prefix}.lease_ttl"
            ));
        }
        if self.breaker_failures == 0 {
            errors.push(format!("{prefix}.breaker_failures must be at least 1"));
        }
        if self.breaker_cooldown.is_zero() {
            errors.push(format!("{prefix}.breaker_cooldown must be more than 0s"));
        }
        if !(1..=1000).contains(&self.reserve_max_requests) {
            errors.push(format!("{prefix}.reserve_max_requests must be from 1 to 1000"));
        }
        if self.reserve_ttl < Duration::from_millis(10) || self.reserve_ttl >= self.lease_ttl {
            errors.push(format!("{prefix}.reserve_ttl must be at least 10ms and less than {prefix}.lease_ttl"));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            errors.push(format!("{prefix}.key_prefix must be non-empty and contain no `{{` or `}}`"));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated_naming_the_key() {
        assert!(RedisQuotaConfig::default().validate("quota").is_empty());
        let config = RedisQuotaConfig {
            node_count: 0,
            lease_ttl: Duration::from_secs(10),
            lease_renew_interval: Duration::from_secs(6),
            key_prefix: "a{b".into(),
            ..RedisQuotaConfig::default()
        };
        let errors = config.validate("quota").join("\n");
        assert!(errors.contains("quota.node_count"), "{errors}");
        assert!(errors.contains("quota.lease_renew_interval"), "{errors}");
        assert!(errors.contains("quota.key_prefix"), "{errors}");
    }
}
