//! Turning logits into the next token: penalties, temperature, top-k, top-p, a seeded
//! draw, and the log-probabilities reported to clients.
//!
//! - Penalties follow OpenAI's definition over the tokens generated so far:
//!   `logit -= frequency_penalty * count + presence_penalty * (count > 0)`.
//! - Temperature 0 is greedy (argmax after penalties; the lowest id wins a tie).
//! - Otherwise logits are divided by the temperature, cut to the `top_k` most likely,
//!   then to the smallest set whose probability reaches `top_p`, and one token is drawn.
//! - The draw for output position `i` uses a uniform number that is a pure function of
//!   `(seed, i)`, so a sequence that is preempted and recomputed, or resumed after a
//!   redelivery with the same seed, continues exactly as it would have.
//! - Reported log-probabilities are those of the model's raw distribution (log-softmax of
//!   the logits before penalties and temperature), as vLLM reports them by default and as
//!   evaluation harnesses expect.

use std::collections::HashMap;

use swell_protocol::SamplingParams;

/// splitmix64 (Steele, Lea, Flood 2014).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform number in `[0, 1)` for `(seed, position)`.
pub fn uniform(seed: u64, position: u64) -> f64 {
    let bits = splitmix64(splitmix64(seed) ^ position.wrapping_mul(0xd1b5_4a32_d192_ed03));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best
}

/// One sequence's sampling state.
#[derive(Debug, Clone)]
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    top_k: usize,
    presence_penalty: f32,
    frequency_penalty: f32,
    pub seed: u64,
    /// Generated token counts (for the penalties).
    counts: HashMap<u32, u32>,
}

/// Reused buffers, one per engine.
#[derive(Debug, Default)]
pub struct SamplerScratch {
    logits: Vec<f32>,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: &SamplingParams, seed: u64) -> Self {
        Self {
            temperature: params.temperature.max(0.0),
            top_p: if params.top_p > 0.0 && params.top_p < 1.0 { params.top_p } else { 1.0 },
            top_k: params.top_k as usize,
            presence_penalty: params.presence_penalty,
            frequency_penalty: params.frequency_penalty,
            seed,
            counts: HashMap::new(),
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    fn has_penalties(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }

    /// Count a generated token (sampled, or resumed from an earlier attempt).
    pub fn observe(&mut self, token: u32) {
        if self.has_penalties() {
            *self.counts.entry(token).or_insert(0) += 1;
        }
    }

    /// Forget the counts (the sequence is recomputed from its prompt).
    pub fn reset(&mut self) {
        self.counts.clear();
    }

    /// The token at output position `position`.
    pub fn sample(&self, raw: &[f32], position: u64, scratch: &mut SamplerScratch) -> u32 {
        let logits: &[f32] = if self.has_penalties() {
            scratch.logits.clear();
            scratch.logits.extend_from_slice(raw);
            for (&token, &count) in &self.counts {
                if let Some(l) = scratch.logits.get_mut(token as usize) {
                    *l -= self.frequency_penalty * count as f32 + self.presence_penalty;
                }
            }
            &scratch.logits
        } else {
            raw
        };
        if self.is_greedy() {
            return argmax(logits) as u32;
        }
        let inv_t = 1.0 / self.temperature;
        let candidates = &mut scratch.candidates;
        candidates.clear();
        candidates.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l * inv_t)));
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.top_k > 0 && self.top_k < candidates.len() {
            candidates.select_nth_unstable_by(self.top_k - 1, by_logit_desc);
            candidates.truncate(self.top_k);
        }
        // Probabilities over the candidates.
        let max = candidates.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0f64;
        for c in candidates.iter_mut() {
            c.1 = (c.1 - max).exp();
            total += f64::from(c.1);
        }
        if self.top_p < 1.0 {
            // The nucleus: sort a growing prefix until it holds top_p of the mass.
            let need = f64::from(self.top_p) * total;
            let by_prob_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
            let mut prefix = 64.min(candidates.len());
            loop {
                if prefix < candidates.len() {
                    candidates.select_nth_unstable_by(prefix - 1, by_prob_desc);
                }
                candidates[..prefix].sort_unstable_by(by_prob_desc);
                let mut mass = 0f64;
                let mut cut = None;
                for (i, c) in candidates[..prefix].iter().enumerate() {
                    mass += f64::from(c.1);
                    if mass >= need {
                        cut = Some(i + 1);
                        break;
                    }
                }
                match cut {
                    Some(n) => {
                        candidates.truncate(n);
                        total = mass;
                        break;
                    }
                    None if prefix == candidates.len() => break,
                    None => prefix = (prefix * 4).min(candidates.len()),
                }
            }
        }
        let mut target = uniform(self.seed, position) * total;
        for c in candidates.iter() {
            target -= f64::from(c.1);
            if target < 0.0 {
                return c.0;
            }
        }
        candidates.last().map_or(0, |c| c.0)
    }
}

/// The `n` most likely `(id, logprob)` of a log-softmax row, most likely first.
pub fn top_logprobs(logprobs: &[f32], n: usize) -> Vec<(u32, f32)> {
    if n == 0 {
        return Vec::new();
    }
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (i, &lp) in logprobs.iter().enumerate() {
        if best.len() < n || lp > best[best.len() - 1].1 {
            let at = best.partition_point(|b| b.1 >= lp);
            best.insert(at, (i as u32, lp));
            best.truncate(n);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: u32) -> SamplingParams {
        SamplingParams { temperature, top_p, top_k, ..SamplingParams::default() }
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let s = Sampler::new(&params(0.0, 1.0, 0), 1);
        let mut scratch = SamplerScratch::default();
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], 0, &mut scratch), 1);
    }

    #[test]
    fn same_seed_same_draws_and_top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
        let mut scratch = SamplerScratch::default();
        let a = Sampler::new(&params(1.0, 1.0, 0), 42);
        let b = Sampler::new(&params(1.0, 1.0, 0), 42);
        let c = Sampler::new(&params(1.0, 1.0, 0), 43);
        let draws = |s: &Sampler, scratch: &mut SamplerScratch| (0..50).map(|p| s.sample(&logits, p, scratch)).collect::<Vec<_>>();
        let da = draws(&a, &mut scratch);
        assert_eq!(da, draws(&b, &mut scratch));
        assert_ne!(da, draws(&c, &mut scratch));
        let k1 = Sampler::new(&params(1.0, 1.0, 1), 42);
        assert!(draws(&k1, &mut scratch).iter().all(|&t| t as usize == argmax(&logits)));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ~ [0.5, 0.3, 0.15, 0.05]: top_p 0.7 keeps the first two.
        let probs = [0.5f32, 0.3, 0.15, 0.05];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let s = Sampler::new(&params(1.0, 0.7, 0), 9);
        let mut scratch = SamplerScratch::default();
        let mut seen = [0u32; 4];
        for p in 0..2000 {
            seen[s.sample(&logits, p, &mut scratch) as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
        let share = f64::from(seen[0]) / 2000.0;
        assert!((share - 0.625).abs() < 0.05, "{seen:?}");
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let probs = [0.6f32, 0.3, 0.1];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let s = Sampler::new(&params(1.0, 1.0, 0), 5);
        let mut scratch = SamplerScratch::default();
        let mut seen = [0u32; 3];
        for p in 0..5000 {
            seen[s.sample(&logits, p, &mut scratch) as usize] += 1;
        }
        for (i, p) in probs.iter().enumerate() {
            assert!((f64::from(seen[i]) / 5000.0 - f64::from(*p)).abs() < 0.03, "{seen:?}");
        }
    }

    #[test]
    fn penalties_lower_repeated_tokens() {
        let mut p = params(0.0, 1.0, 0);
        p.frequency_penalty = 1.0;
        p.presence_penalty = 0.5;
        let mut s = Sampler::new(&p, 0);
        let mut scratch = SamplerScratch::default();
        let logits = [2.0f32, 1.0, 0.0];
        assert_eq!(s.sample(&logits, 0, &mut scratch), 0);
        s.observe(0);
        // 2.0 - 1.0 - 0.5 = 0.5 < 1.0.
        assert_eq!(s.sample(&logits, 1, &mut scratch), 1);
        s.reset();
        assert_eq!(s.sample(&logits, 1, &mut scratch), 0);
    }

    #[test]
    fn top_logprobs_are_sorted() {
        let lp = [-3.0f32, -0.1, -2.0, -0.5, -9.0];
        assert_eq!(top_logprobs(&lp, 3), vec![(1, -0.1), (3, -0.5), (2, -2.0)]);
        assert!(top_logprobs(&lp, 0).is_empty());
    }
}
