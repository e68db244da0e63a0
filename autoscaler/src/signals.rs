//! The policy's input: a [`LoadSample`] per tick, [`LoadAverages`] over a window, and
//! the load signals by name that load targets, custom rules, decision records and
//! metrics all refer to.
//!
//! Each signal has a per-sample value (what a custom rule tests, sample by sample) and a
//! windowed value (what a load target divides, averaged over a window; see
//! [`LoadAverages`]):
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

/// One observation of a deployment's load, taken every tick (e.g. once a second).
/// Build it with `..LoadSample::default()` for the fields a caller does not know.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadSample {
    pub at: Duration,
    /// Jobs waiting in the queue.
    pub queued: u64,
    /// Sequences running on replicas.
    pub running: u64,
    /// Requests that arrived since the previous sample.
    pub arrivals: u64,
    /// Prompt tokens of those arrivals.
    pub prompt_tokens: u64,
    /// Tokens generated since the previous sample.
    pub generated_tokens: u64,
    /// How long the oldest waiting request has waited (zero when none waits).
    pub oldest_wait: Duration,
    /// Requests that left the queue for a replica since the previous sample.
    pub started: u64,
    /// The sum of those requests' waits in the queue.
    pub started_wait: Duration,
    /// KV-cache tokens in use on the ready replicas.
    pub kv_tokens_used: u64,
    /// One replica's KV-cache capacity, in tokens (0: unknown, no KV signal).
    pub kv_capacity_tokens: u64,
    /// Ready replicas when the sample was taken (KV utilisation divides by them).
    pub ready_replicas: u32,
    /// The wall clock when the sample was taken, Unix milliseconds (schedules need it;
    /// `None`: unknown, schedules are not applied).
    pub unix_ms: Option<u64>,
}

impl LoadSample {
    /// Whether this sample shows any activity (which keeps the deployment from idling).
    pub fn is_active(&self) -> bool {
        self.queued > 0
            || self.running > 0
            || self.arrivals > 0
            || self.prompt_tokens > 0
            || self.generated_tokens > 0
    }

    /// Whether work is waiting or running (what brings a deployment up from zero).
    pub fn has_work(&self) -> bool {
        self.queued > 0 || self.running > 0
    }

    /// The queue delay: the larger of the oldest wait and the mean wait of the requests
    /// that started since the previous sample.
    pub fn queue_delay(&self) -> Duration {
        let mean_started = if self.started == 0 {
            Duration::ZERO
        } else {
            self.started_wait / u32::try_from(self.started).unwrap_or(u32::MAX)
        };
        self.oldest_wait.max(mean_started)
    }

    /// KV tokens in use over the ready replicas' capacity; `None` without a ready
    /// replica or a known capacity.
    pub fn kv_cache_utilization(&self) -> Option<f64> {
        if self.ready_replicas == 0 || self.kv_capacity_tokens == 0 {
            return None;
        }
        Some(self.kv_tokens_used as f64 / (self.kv_capacity_tokens as f64 * f64::from(self.ready_replicas)))
    }

    /// KV tokens in use, in replicas' worth of KV capacity; `None` when unknown.
    pub(crate) fn kv_replicas_in_use(&self) -> Option<f64> {
        (self.kv_capacity_tokens > 0).then(|| self.kv_tokens_used as f64 / self.kv_capacity_tokens as f64)
    }
}

/// Load averaged over a window, for decisions and the status API.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LoadAverages {
    /// Mean of queued + running requests over the samples in the window.
    pub concurrent_requests: f64,
    pub requests_per_second: f64,
    pub tokens_generated_per_second: f64,
    pub prompt_tokens_per_second: f64,
    /// Mean of waiting requests.
    pub queue_depth: f64,
    /// Mean queue delay, seconds.
    pub queue_delay_seconds: f64,
    /// Mean fraction of the ready replicas' KV cache in use (samples with a ready
    /// replica and a known capacity).
    pub kv_cache_utilization: f64,
    /// Mean KV tokens in use, in replicas' worth of KV capacity.
    pub kv_cache_replicas_in_use: f64,
    /// The window, in seconds.
    pub window_seconds: f64,
}

impl LoadAverages {
    /// The value of `signal`.
    pub fn get(&self, signal: Signal) -> f64 {
        match signal {
            Signal::ConcurrentRequests => self.concurrent_requests,
            Signal::RequestsPerSecond => self.requests_per_second,
            Signal::TokensGeneratedPerSecond => self.tokens_generated_per_second,
            Signal::PromptTokensPerSecond => self.prompt_tokens_per_second,
            Signal::QueueDepth => self.queue_depth,
            Signal::QueueDelaySeconds => self.queue_delay_seconds,
            Signal::KvCacheUtilization => self.kv_cache_utilization,
        }
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
