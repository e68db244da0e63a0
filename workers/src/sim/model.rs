//! [`PerformanceModel`]: the pure step-time arithmetic of a profile (no clock, no sleep).
//!
//! ```text
//! step = prefill_tokens / prefill_tokens_per_second
//!      + if decode_sequences > 0 {
//!            decode_step_base
//!          + (decode_sequences - 1) * decode_step_per_sequence
//!          + kv_tokens_in_batch     * decode_step_per_kv_token
//!        } else { 0 }
//! ```
//!
//! A `prefill_tokens_per_second` of 0 means prefill costs nothing. All arithmetic is in
//! integer nanoseconds (the prefill term rounded to the nearest nanosecond) and saturates
//! instead of overflowing.

use std::time::Duration;

use crate::sim::profile::SimProfile;

/// The step-time model of one replica, built from a [`SimProfile`].
#[derive(Debug, Clone, PartialEq)]
pub struct PerformanceModel {
    prefill_tokens_per_second: f64,
    decode_step_base: Duration,
    decode_step_per_sequence: Duration,
    decode_step_per_kv_token: Duration,
    max_batch_size: u64,
    kv_capacity_tokens: u64,
    max_prefill_tokens_per_step: u64,
}

fn nanos(d: Duration) -> u128 {
    d.as_nanos()
}

fn to_duration(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

impl PerformanceModel {
    pub fn new(profile: &SimProfile) -> Self {
        Self {
            prefill_tokens_per_second: profile.prefill_tokens_per_second,
            decode_step_base: profile.decode_step_base,
            decode_step_per_sequence: profile.decode_step_per_sequence,
            decode_step_per_kv_token: profile.decode_step_per_kv_token,
            max_batch_size: u64::from(profile.max_batch_size.max(1)),
            kv_capacity_tokens: profile.kv_capacity_tokens,
            max_prefill_tokens_per_step: profile.max_prefill_tokens_per_step.max(1),
        }
    }

    /// Time to prefill `tokens` prompt tokens: `tokens / prefill_tokens_per_second`.
    pub fn prefill_duration(&self, tokens: u64) -> Duration {
        let rate = self.prefill_tokens_per_second;
        if tokens == 0 || !rate.is_finite() || rate <= 0.0 {
            return Duration::ZERO;
        }
        let ns = (tokens as f64) * 1e9 / rate;
        if ns >= u64::MAX as f64 {
            Duration::from_nanos(u64::MAX)
        } else {
            Duration::from_nanos(ns.round() as u64)
        }
    }

    /// The decode part of a step: `base + (sequences - 1) * per_sequence + kv * per_kv`,
    /// zero without sequences.
    pub fn decode_duration(&self, decode_sequences: u64, kv_tokens_in_batch: u64) -> Duration {
        if decode_sequences == 0 {
            return Duration::ZERO;
        }
        let ns = nanos(self.decode_step_base)
            .saturating_add(
                u128::from(decode_sequences - 1)
                    .saturating_mul(nanos(self.decode_step_per_sequence)),
            )
            .saturating_add(
                u128::from(kv_tokens_in_batch).saturating_mul(nanos(self.decode_step_per_kv_token)),
            );
        to_duration(ns)
    }

    /// Modelled duration of one engine step (see the module docs for the formula).
    pub fn step_duration(
        &self,
        prefill_tokens: u64,
        decode_sequences: u64,
        kv_tokens_in_batch: u64,
    ) -> Duration {
        self.prefill_duration(prefill_tokens)
            .saturating_add(self.decode_duration(decode_sequences, kv_tokens_in_batch))
    }

    /// Time to first token of a `prompt_tokens` prompt admitted alone (no other prefill
    /// competing) next to `batch` sequences that keep decoding meanwhile. The prompt is
    /// prefilled in chunks of `max_prefill_tokens_per_step`; the step of the last chunk
    /// also yields the first token. The KV term of the other sequences is left out (use
    /// [`step_duration`](Self::step_duration) when their contexts are known).
    pub fn time_to_first_token(&self, prompt_tokens: u64, batch: u64) -> Duration {
        let chunk = self.max_prefill_tokens_per_step;
        let full_chunks_before_last = prompt_tokens.saturating_sub(1) / chunk;
        let last_chunk = prompt_tokens - full_chunks_before_last * chunk;
        let earlier = self.step_duration(chunk, batch, 0);
        let earlier_total =
            to_duration(nanos(earlier).saturating_mul(u128::from(full_chunks_before_last)));
        earlier_total.saturating_add(self.step_duration(last_chunk, batch.saturating_add(1), 0))
    }

    /// Output tokens per second of a batch of `batch` sequences that only decode, each
    /// with `avg_context` tokens of context. Infinite when steps cost nothing.
    pub fn steady_decode_tokens_per_second(&self, batch: u64, avg_context: u64) -> f64 {
        if batch == 0 {
            return 0.0;
        }
        let step = self.step_duration(0, batch, batch.saturating_mul(avg_context));
        if step.is_zero() {
            return f64::INFINITY;
        }
        batch as f64 / step.as_secs_f64()
    }

    /// The largest decode batch that fits both `max_batch_size` and the KV cache when every
    /// sequence holds `avg_context` tokens.
    pub fn max_batch_for_context(&self, avg_context: u64) -> u64 {
        let by_kv = self
            .kv_capacity_tokens
            .checked_div(avg_context)
            .unwrap_or(u64::MAX);
        self.max_batch_size.min(by_kv)
    }

    /// Maximum decode throughput (output tokens per second) of the replica with sequences
    /// of `avg_context` tokens: the steady decode rate at
    /// [`max_batch_for_context`](Self::max_batch_for_context).
    pub fn max_throughput(&self, avg_context: u64) -> f64 {
        self.steady_decode_tokens_per_second(self.max_batch_for_context(avg_context), avg_context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::profile::builtin;

    fn test_profile() -> SimProfile {
        SimProfile {
            name: "t".into(),
            model: "t".into(),
            model_params_billions: 1.0,
            gpu: "none".into(),
            gpus_per_replica: 0,
            prefill_tokens_per_second: 10_000.0,
            decode_step_base: Duration::from_millis(10),
            decode_step_per_sequence: Duration::from_millis(1),
            decode_step_per_kv_token: Duration::from_micros(1),
            max_batch_size: 8,
            kv_capacity_tokens: 4_000,
            context_length: 2_000,
            cold_start: Duration::from_secs(1),
            max_prefill_tokens_per_step: 512,
        }
    }

    #[test]
    fn step_duration_arithmetic() {
        let m = PerformanceModel::new(&test_profile());
        // 1000 / 10000 s = 100 ms; + 10 ms base + 3 * 1 ms + 2000 * 1 us = 115 ms.
        assert_eq!(m.step_duration(1000, 4, 2000), Duration::from_millis(115));
        // Pure prefill: no decode base.
        assert_eq!(m.step_duration(500, 0, 0), Duration::from_millis(50));
        // Pure decode at batch 1 with 100 tokens of context: 10 ms + 0.1 ms.
        assert_eq!(m.step_duration(0, 1, 100), Duration::from_micros(10_100));
        // Nothing to do.
        assert_eq!(m.step_duration(0, 0, 0), Duration::ZERO);
        // The KV term only counts with decoding sequences.
        assert_eq!(m.step_duration(0, 0, 5_000), Duration::ZERO);
    }

    #[test]
    fn prefill_rounds_to_nanoseconds_and_zero_rate_is_free() {
        let mut p = test_profile();
        p.prefill_tokens_per_second = 3.0;
        let m = PerformanceModel::new(&p);
        assert_eq!(m.prefill_duration(1), Duration::from_nanos(333_333_333));
        p.prefill_tokens_per_second = 0.0;
        assert_eq!(
            PerformanceModel::new(&p).prefill_duration(1_000_000),
            Duration::ZERO
        );
    }

    #[test]
    fn huge_inputs_saturate_instead_of_panicking() {
        let m = PerformanceModel::new(&test_profile());
        let d = m.step_duration(u64::MAX, u64::MAX, u64::MAX);
        assert_eq!(
            d,
            Duration::from_nanos(u64::MAX).saturating_add(Duration::from_nanos(u64::MAX))
        );
        let _ = m.time_to_first_token(u64::MAX, u64::MAX);
        let _ = m.max_throughput(u64::MAX);
    }

    #[test]
    fn time_to_first_token_counts_chunks() {
        let m = PerformanceModel::new(&test_profile());
        // 100 tokens in one chunk: 10 ms prefill + 10 ms base = 20 ms. (The prompt's own
        // attention is part of the prefill rate: no KV term for the completing sequence.)
        assert_eq!(m.time_to_first_token(100, 0), Duration::from_millis(20));
        // 1200 tokens = chunks of 512 + 512 + 176. The first two: 51.2 ms each (no decode);
        // the last: 17.6 ms + 10 ms = 27.6 ms. Total 130 ms.
        assert_eq!(m.time_to_first_token(1200, 0), Duration::from_millis(130));
        // Next to 3 decoding sequences, every step pays the decode base + per-sequence.
        // 2 * (51.2 + 10 + 2) + (17.6 + 10 + 3) = 126.4 + 30.6 = 157 ms.
        assert_eq!(m.time_to_first_token(1200, 3), Duration::from_millis(157));
        // An empty prompt still takes one forward pass.
        assert_eq!(m.time_to_first_token(0, 0), Duration::from_millis(10));
    }

    #[test]
    fn steady_decode_and_max_throughput() {
        let m = PerformanceModel::new(&test_profile());
        // batch 4, 500 tokens each: 10 + 3 + 2000 * 0.001 = 15 ms -> 4 / 0.015 = 266.67/s.
        let r = m.steady_decode_tokens_per_second(4, 500);
        assert!((r - 266.666_666).abs() < 1e-3, "{r}");
        assert_eq!(m.steady_decode_tokens_per_second(0, 500), 0.0);
        // KV 4000 / 1000 = 4 sequences (max batch 8): 10 + 3 + 4 = 17 ms -> 235.29/s.
        assert_eq!(m.max_batch_for_context(1000), 4);
        let t = m.max_throughput(1000);
        assert!((t - 4.0 / 0.017).abs() < 1e-6, "{t}");
        // Short contexts: limited by max_batch_size 8: 10 + 7 + 8 * 10 * 0.001 = 17.08 ms.
        assert_eq!(m.max_batch_for_context(10), 8);
        let t = m.max_throughput(10);
        assert!((t - 8.0 / 0.01708).abs() < 1e-6, "{t}");
    }

    #[test]
    fn builtin_8b_figures_look_like_the_benchmarks() {
        let m = PerformanceModel::new(&builtin("llama-3.1-8b-h100").unwrap());
        // Batch 1, 1k context: 6.5 ms + 50 us = 6.55 ms per token (~153 tok/s).
        assert_eq!(m.step_duration(0, 1, 1000), Duration::from_micros(6_550));
        // 1000-token prompt alone: 33.33 ms prefill + 6.5 ms.
        assert_eq!(
            m.time_to_first_token(1000, 0),
            Duration::from_nanos(39_833_333)
        );
        // Batch 256 at 1k context: 6.5 + 255 * 0.015 + 256000 * 50ns = 23.125 ms,
        // ~11k output tok/s (NIM reads ~12-13k tok/s at concurrency 100-200 with FP8).
        assert_eq!(
            m.step_duration(0, 256, 256_000),
            Duration::from_micros(23_125)
        );
        let zero = PerformanceModel::new(&builtin("zero").unwrap());
        assert_eq!(
            zero.step_duration(1 << 30, 1 << 16, 1 << 40),
            Duration::ZERO
        );
        assert_eq!(zero.steady_decode_tokens_per_second(1, 1), f64::INFINITY);
    }
}
