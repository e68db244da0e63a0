//! The engine's own load, read from its Prometheus `/metrics` once a second on a thread
//! of its own: the share of its KV cache in use and the requests waiting inside it (see
//! [`super::presets::MetricNames`]). The replica's load (and so the autoscaler's KV and
//! queue signals) takes the larger of these and what Swell counts itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::client::EngineClient;
use super::presets::MetricNames;

/// The last values read; `NaN` bits until one was.
#[derive(Debug)]
pub struct Scraped {
    kv_usage: AtomicU64,
    waiting: AtomicU64,
    stop: AtomicBool,
}

impl Default for Scraped {
    fn default() -> Self {
        Self { kv_usage: AtomicU64::new(f64::NAN.to_bits()), waiting: AtomicU64::new(f64::NAN.to_bits()), stop: AtomicBool::new(false) }
    }
}

impl Scraped {
    /// The engine's KV cache in use, 0..1, when it reports one.
    pub fn kv_usage(&self) -> Option<f64> {
        Some(f64::from_bits(self.kv_usage.load(Ordering::Relaxed))).filter(|v| v.is_finite())
    }

    /// Requests waiting inside the engine, when it reports them.
    pub fn waiting(&self) -> Option<u64> {
        Some(f64::from_bits(self.waiting.load(Ordering::Relaxed))).filter(|v| v.is_finite()).map(|v| v.max(0.0) as u64)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The sum of every sample of the first of `names` the text has (labels summed over).
pub fn metric(text: &str, names: &[&str]) -> Option<f64> {
    for name in names {
        let mut found = None;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else { continue };
            let value = if let Some(labelled) = rest.strip_prefix('{') {
                labelled.rsplit_once('}').map(|(_, v)| v)
            } else if rest.starts_with([' ', '\t']) {
                Some(rest)
            } else {
                None
            };
            if let Some(v) = value.and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse::<f64>().ok()) {
                found = Some(found.unwrap_or(0.0) + v);
            }
        }
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Read `/metrics` every `period` until [`Scraped::stop`]. Does nothing when the preset
/// names no metrics.
pub fn spawn(client: EngineClient, names: MetricNames, period: Duration) -> Arc<Scraped> {
    let scraped = Arc::new(Scraped::default());
    if names.kv_usage.is_empty() && names.waiting.is_empty() {
        return scraped;
    }
    let state = scraped.clone();
    let spawned = std::thread::Builder::new().name("engine-metrics".into()).spawn(move || {
        while !state.stop.load(Ordering::Relaxed) {
            if let Ok((200, text)) = client.get("/metrics", Duration::from_secs(2)) {
                if let Some(v) = metric(&text, names.kv_usage) {
                    state.kv_usage.store(v.to_bits(), Ordering::Relaxed);
                }
                if let Some(v) = metric(&text, names.waiting) {
                    state.waiting.store(v.to_bits(), Ordering::Relaxed);
                }
            }
            std::thread::sleep(period);
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start the engine-metrics thread; the engine's own load is not read");
    }
    scraped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_the_first_name_present_and_summed_over_labels() {
        let text = "# HELP vllm:num_requests_waiting Waiting.\n# TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 3.0\n\
            vllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} 2.0\n\
            vllm:num_requests_waiting_total 99\n\
            vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.25\n\
            llamacpp:requests_deferred 4\n";
        assert_eq!(metric(text, &["vllm:num_requests_waiting"]), Some(5.0));
        assert_eq!(metric(text, &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]), Some(0.25));
        assert_eq!(metric(text, &["llamacpp:requests_deferred"]), Some(4.0));
        assert_eq!(metric(text, &["sglang:token_usage"]), None);
        let scraped = Scraped::default();
        assert_eq!((scraped.kv_usage(), scraped.waiting()), (None, None));
    }
}
