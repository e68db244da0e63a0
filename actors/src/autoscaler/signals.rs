//! The load signals the policy reads, by name: what load targets, custom rules, decision
//! records and metrics all refer to.
//!
//! Each signal has a per-sample value (what a custom rule tests, sample by sample) and a
//! windowed value (what a load target divides, averaged over a window; see
//! [`LoadAverages`](super::LoadAverages)):
//!
//! | signal | per sample | over a window |
//! | --- | --- | --- |
//! | `concurrent_requests` | queued + running | mean |
//! | `requests_per_second` | arrivals / seconds since the previous sample | sum / span |
//! | `tokens_generated_per_second` | generated tokens / seconds since the previous sample | sum / span |
//! | `prompt_tokens_per_second` | prompt tokens / seconds since the previous sample | sum / span |
//! | `queue_depth` | queued | mean |
//! | `queue_delay_seconds` | max(oldest wait, mean wait of requests started since the previous sample) | mean |
//! | `kv_cache_utilization` | KV tokens in use on ready replicas / (their count × one replica's KV capacity) | mean over samples with a ready replica |

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::LoadSample;

/// A load signal, by its config / metric name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    ConcurrentRequests,
    RequestsPerSecond,
    TokensGeneratedPerSecond,
    PromptTokensPerSecond,
    QueueDepth,
    QueueDelaySeconds,
    KvCacheUtilization,
}

impl Signal {
    /// Every signal, in the order recommendation ties are broken.
    pub const ALL: [Signal; 7] = [
        Signal::ConcurrentRequests,
        Signal::RequestsPerSecond,
        Signal::TokensGeneratedPerSecond,
        Signal::PromptTokensPerSecond,
        Signal::QueueDepth,
        Signal::QueueDelaySeconds,
        Signal::KvCacheUtilization,
    ];

    /// The snake-case name (config keys, metric labels).
    pub fn key(self) -> &'static str {
        match self {
            Signal::ConcurrentRequests => "concurrent_requests",
            Signal::RequestsPerSecond => "requests_per_second",
            Signal::TokensGeneratedPerSecond => "tokens_generated_per_second",
            Signal::PromptTokensPerSecond => "prompt_tokens_per_second",
            Signal::QueueDepth => "queue_depth",
            Signal::QueueDelaySeconds => "queue_delay_seconds",
            Signal::KvCacheUtilization => "kv_cache_utilization",
        }
    }

    /// The names, comma separated, for error messages.
    pub fn names() -> String {
        Signal::ALL.map(Signal::key).join(", ")
    }

    /// Queue signals cannot fall until replicas that are still starting serve: while a
    /// scale-up is in progress they do not add more (see the module docs of
    /// [`super`]).
    pub fn is_queue_signal(self) -> bool {
        matches!(self, Signal::QueueDepth | Signal::QueueDelaySeconds)
    }

    /// Whether it is a rate (sum over a span) rather than a level (mean of samples).
    pub fn is_rate(self) -> bool {
        matches!(
            self,
            Signal::RequestsPerSecond | Signal::TokensGeneratedPerSecond | Signal::PromptTokensPerSecond
        )
    }

    /// The value in one sample; `interval` is the time since the previous sample (rates
    /// divide by it, at least 1 s). `None` when the sample cannot tell (KV use with no
    /// ready replica or unknown capacity).
    pub fn sample_value(self, sample: &LoadSample, interval: Duration) -> Option<f64> {
        let seconds = interval.as_secs_f64().max(1.0);
        Some(match self {
            Signal::ConcurrentRequests => sample.queued as f64 + sample.running as f64,
            Signal::RequestsPerSecond => sample.arrivals as f64 / seconds,
            Signal::TokensGeneratedPerSecond => sample.generated_tokens as f64 / seconds,
            Signal::PromptTokensPerSecond => sample.prompt_tokens as f64 / seconds,
            Signal::QueueDepth => sample.queued as f64,
            Signal::QueueDelaySeconds => sample.queue_delay().as_secs_f64(),
            Signal::KvCacheUtilization => return sample.kv_cache_utilization(),
        })
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_sample_values() {
        let sample = LoadSample {
            queued: 3,
            running: 5,
            arrivals: 8,
            prompt_tokens: 800,
            generated_tokens: 120,
            oldest_wait: Duration::from_millis(1500),
            started: 2,
            started_wait: Duration::from_secs(5),
            kv_tokens_used: 3000,
            kv_capacity_tokens: 2000,
            ready_replicas: 2,
            ..LoadSample::default()
        };
        let two_seconds = Duration::from_secs(2);
        let value = |signal: Signal| signal.sample_value(&sample, two_seconds).unwrap();
        assert_eq!(value(Signal::ConcurrentRequests), 8.0);
        assert_eq!(value(Signal::RequestsPerSecond), 4.0);
        assert_eq!(value(Signal::TokensGeneratedPerSecond), 60.0);
        assert_eq!(value(Signal::PromptTokensPerSecond), 400.0);
        assert_eq!(value(Signal::QueueDepth), 3.0);
        // max(1.5 s oldest, 5 s / 2 started = 2.5 s)
        assert_eq!(value(Signal::QueueDelaySeconds), 2.5);
        assert_eq!(value(Signal::KvCacheUtilization), 0.75);
        // Rates divide by at least a second.
        assert_eq!(Signal::RequestsPerSecond.sample_value(&sample, Duration::ZERO), Some(8.0));
        // No ready replica: KV use is unknown, not 0.
        let cold = LoadSample { ready_replicas: 0, ..sample };
        assert_eq!(Signal::KvCacheUtilization.sample_value(&cold, two_seconds), None);
        assert_eq!(
            serde_json::to_value(Signal::QueueDelaySeconds).unwrap(),
            Signal::QueueDelaySeconds.key()
        );
        assert!(Signal::names().starts_with("concurrent_requests, requests_per_second"));
    }
}
