//! How to reach Redis and how long things live there.

use std::time::Duration;

use serde::Deserialize;

/// Configuration of a [`RedisQueue`](super::RedisQueue).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisQueueConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// First part of every key (`<prefix>:{dep:<name>}:...`). Must not contain `{` or `}`
    /// (it would change the hash tag).
    pub key_prefix: String,
    /// A job delivered this many times (its consumers kept dying) is dead-lettered and
    /// failed with `delivery_limit` instead of being delivered again.
    pub max_deliveries: u32,
    /// How long a finished job's output stream stays readable after it ended.
    #[serde(with = "humantime_serde")]
    pub output_ttl: Duration,
    /// Upper bound on the life of a job's keys, finished or not: collects the state of
    /// jobs abandoned half-way (a gateway that died between two steps of an enqueue).
    #[serde(with = "humantime_serde")]
    pub job_max_age: Duration,
    /// How long opening a connection may take before the call fails `Unavailable`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a (non-blocking) command may take before the call fails `Unavailable`.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Idle dedicated connections kept for blocking reads (`XREAD BLOCK`); more are
    /// opened while more calls block at once.
    pub max_idle_blocking_connections: usize,
    /// The dead-letter stream of a deployment is capped near this many entries.
    pub dead_letter_max_len: u64,
    /// A replica that has not leased or renewed for this long no longer holds the jobs
    /// routed to it (see `routing` in [`super`]).
    #[serde(with = "humantime_serde")]
    pub route_liveness: Duration,
    /// After an admission (the job's state and its queue entry) and after a job's
    /// terminal event, wait until this many replicas of the master that took the write
    /// have it (`WAIT`), so a failover cannot lose them. 0 (the default): no wait, for
    /// a Redis without replicas. See docs/distributed.md for what a failover can lose.
    pub wait_replicas: u32,
    /// The longest such a wait lasts; a replica that does not answer in time is logged
    /// and the call goes on (set `min-replicas-to-write` on Redis to refuse writes
    /// instead while replicas are missing).
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// How many partitions (hash slots) every deployment's queue is split into (1, the
    /// default: one). On a Redis Cluster, more let one busy deployment use several
    /// masters; order, admission and positions then hold per partition (see
    /// `partitions` in [`super`]). Every node must use the same number.
    pub queue_partitions: u32,
}

fn default_route_liveness() -> Duration {
    Duration::from_secs(2)
}

impl Default for RedisQueueConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "swell".into(),
            max_deliveries: 3,
            output_ttl: Duration::from_secs(60),
            job_max_age: Duration::from_secs(24 * 3600),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            max_idle_blocking_connections: 16,
            dead_letter_max_len: 10_000,
            route_liveness: default_route_liveness(),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(100),
            queue_partitions: 1,
        }
    }
}

impl RedisQueueConfig {
    /// Errors name the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.key_prefix.contains(['{', '}']) {
            return Err(format!("key_prefix: must not contain braces, got {:?}", self.key_prefix));
        }
        if !(1..=256).contains(&self.queue_partitions) {
            return Err(format!("queue_partitions: must be 1 to 256, got {}", self.queue_partitions));
        }
        if self.max_deliveries == 0 {
            return Err("max_deliveries: must be at least 1".into());
        }
        for (key, value) in [
            ("output_ttl", self.output_ttl),
            ("job_max_age", self.job_max_age),
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("wait_timeout", self.wait_timeout),
        ] {
            if value.as_millis() == 0 {
                return Err(format!("{key}: must be at least 1ms"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_braces_in_the_prefix_are_refused() {
        assert_eq!(RedisQueueConfig::default().validate(), Ok(()));
        let bad = RedisQueueConfig { key_prefix: "a{b}".into(), ..Default::default() };
        assert!(bad.validate().unwrap_err().starts_with("key_prefix"));
    }

    #[test]
    fn durations_parse_from_human_strings() {
        let config: RedisQueueConfig =
            serde_json::from_str(r#"{"output_ttl": "90s", "connect_timeout": "250ms"}"#).unwrap();
        assert_eq!(config.output_ttl, Duration::from_secs(90));
        assert_eq!(config.connect_timeout, Duration::from_millis(250));
        assert!(serde_json::from_str::<RedisQueueConfig>(r#"{"output_ttl": "soon"}"#).is_err());
        assert!(serde_json::from_str::<RedisQueueConfig>(r#"{"nope": 1}"#).is_err());
    }
}
