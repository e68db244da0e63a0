//! The 8-bit KV cache (`llm.kv_cache_type = "q8"`): each token's key and value of each
//! KV head quantized to 8 bits with one f32 scale, laid out for integer dot products
//! ([`crate::llm::attention_q8`]); a quarter of the f32 cache's bytes, and attention runs
//! on `vpdpbusd` (64 multiply-adds per instruction) instead of f32 FMAs (16).
//!
//! Per (layer, block, KV head), for a head of `hd` values (a multiple of [`GROUP`]) and
//! the block's 16 slots:
//! - keys: `[hd / 4][slot][4]` i8: one 64-byte row holds 4 dimensions of all 16 slots,
//!   what one `vpdpbusd` multiplies by 4 query bytes broadcast to every slot;
//! - per group of 32 dimensions, `[group][slot]`: key scales (f32) and key biases (i32,
//!   `-128 * sum of the key's bytes`: the query is stored unsigned, `q + 128`, as
//!   `vpdpbusd` wants, and the bias takes the 128s back out exactly);
//! - values: `[slot / 4][hd][4]` i8: one 64-byte row holds 4 slots of 16 dimensions,
//!   what one `vpdpbusd` multiplies by 4 attention-weight bytes;
//! - value scales (f32), one per slot: attention folds them into the weights, which are
//!   quantized once per block and head for all dimensions.
//!
//! Quantization is symmetric, `round(x / scale)` with `scale = max |x| / 127`, ties to
//! even, per group of 32 values for keys (as llama.cpp's `q8_0`) and per head for
//! values, in plain Rust whatever the kernel class, so every class reads the same bytes.

use crate::llm::kv_cache::{zeroed, BLOCK_TOKENS};

/// Key values per quantization group (one scale each).
pub const GROUP: usize = 32;

/// The largest head an 8-bit cache takes.
pub const MAX_HEAD: usize = 512;

/// One (layer, block, KV head)'s slots, as attention reads them.
#[derive(Debug, Clone, Copy)]
pub struct Q8Block<'a> {
    /// `[hd / 4][slot][4]`.
    pub keys: &'a [i8],
    /// `[hd / GROUP]`, each by slot.
    pub key_scales: &'a [[f32; BLOCK_TOKENS]],
    pub key_biases: &'a [[i32; BLOCK_TOKENS]],
    /// `[slot / 4][hd][4]`.
    pub values: &'a [i8],
    pub value_scales: &'a [f32; BLOCK_TOKENS],
}

/// The 8-bit storage of a whole cache: `units = layers * blocks * kv_heads`.
#[derive(Debug)]
pub struct Q8Store {
    head_dim: usize,
    keys: Vec<i8>,
    key_scales: Vec<[f32; BLOCK_TOKENS]>,
    key_biases: Vec<[i32; BLOCK_TOKENS]>,
    values: Vec<i8>,
    value_scales: Vec<[f32; BLOCK_TOKENS]>,
}

/// Bytes per token slot per KV head: keys and values (`hd` each), a key scale and bias
/// per group, a value scale.
pub fn bytes_per_slot(head_dim: usize) -> usize {
    2 * head_dim + 2 * 4 * head_dim.div_ceil(GROUP) + 4
}

/// `x` rounded to the nearest integer, ties to even, for `|x| < 2^22`: adding and taking
/// back 1.5 * 2^23 leaves no fraction bits (what `cvtps2dq` does under the default
/// rounding mode). `f32::round_ties_even` is a libm call on baseline x86-64, and was 6% of
/// a prefill's time.
#[inline(always)]
pub fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// `x` quantized to `[-127, 127]` (`q`) with its scale; an all-zero `x` has scale 0.
/// With AVX-512 where the CPU has it and `x` is whole vectors (the same operations, so
/// the same bytes: the cache's contents never depend on the kernel class).
pub fn quantize(x: &[f32], q: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x.len().is_multiple_of(16) && q.len() >= x.len() && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F checked just above.
        return unsafe { quantize_avx512(x, q) };
    }
    quantize_portable(x, q)
}

/// [`quantize`] in plain Rust.
pub fn quantize_portable(x: &[f32], q: &mut [i8]) -> f32 {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max == 0.0 || !max.is_finite() {
        q.fill(0);
        return if max == 0.0 { 0.0 } else { f32::NAN };
    }
    let inv = 127.0 / max;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round_even((v * inv).clamp(-127.0, 127.0)) as i8;
    }
    max / 127.0
}

/// [`quantize`] with AVX-512, for `x` of whole 16-value vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
unsafe fn quantize_avx512(x: &[f32], q: &mut [i8]) -> f32 {
    use std::arch::x86_64::*;
    assert!(x.len().is_multiple_of(16) && q.len() >= x.len());
    let mut most = _mm512_setzero_ps();
    for v in x.chunks_exact(16) {
        most = _mm512_max_ps(most, _mm512_abs_ps(_mm512_loadu_ps(v.as_ptr())));
    }
    let max = _mm512_reduce_max_ps(most);
    if max == 0.0 || !max.is_finite() {
        q[..x.len()].fill(0);
        return if max == 0.0 { 0.0 } else { f32::NAN };
    }
    let inv = _mm512_set1_ps(127.0 / max);
    let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    for (i, v) in x.chunks_exact(16).enumerate() {
        // Clamped, then rounded to nearest even (cvtps2dq), as `round_even` does.
        let r = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_loadu_ps(v.as_ptr()), inv), lo), hi));
        _mm_storeu_si128(q.as_mut_ptr().add(i * 16) as *mut __m128i, _mm512_cvtepi32_epi8(r));
    }
    max / 127.0
}

impl Q8Store {
    /// Storage for `units` (layer, block, KV head) triples, or `None` when the system
    /// cannot give it. Zeroed, so untouched pages cost address space only.
    pub fn new(units: usize, head_dim: usize) -> Option<Self> {
        assert!(head_dim.is_multiple_of(GROUP) && head_dim <= MAX_HEAD, "an 8-bit KV cache needs a head size divisible by {GROUP}, at most {MAX_HEAD}");
        let bytes = units.checked_mul(BLOCK_TOKENS * head_dim)?;
        let groups = units.checked_mul(head_dim / GROUP)?;
        Some(Self {
            head_dim,
            keys: zeroed(bytes)?,
            key_scales: zeroed(groups)?,
            key_biases: zeroed(groups)?,
            values: zeroed(bytes)?,
            value_scales: zeroed(units)?,
        })
    }

    pub fn size_bytes(&self) -> usize {
        self.keys.len() + self.values.len() + self.key_scales.len() * 3 * std::mem::size_of::<[f32; BLOCK_TOKENS]>()
    }

    /// Quantize and store one head's key and value (`hd` values each) at `slot` of `unit`.
    pub fn store(&mut self, unit: usize, slot: usize, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        let base = unit * BLOCK_TOKENS * hd;
        let groups = hd / GROUP;
        let mut q = [0i8; MAX_HEAD];
        for grp in 0..groups {
            let dims = grp * GROUP..(grp + 1) * GROUP;
            let at = unit * groups + grp;
            self.key_scales[at][slot] = quantize(&k[dims.clone()], &mut q[..GROUP]);
            self.key_biases[at][slot] = -128 * q[..GROUP].iter().map(|&x| i32::from(x)).sum::<i32>();
            for (d, &x) in dims.zip(&q) {
                self.keys[base + (d / 4) * BLOCK_TOKENS * 4 + slot * 4 + d % 4] = x;
            }
        }
        self.value_scales[unit][slot] = quantize(v, &mut q[..hd]);
        for (d, &x) in q[..hd].iter().enumerate() {
            self.values[base + (slot / 4) * hd * 4 + d * 4 + slot % 4] = x;
        }
    }

    #[inline]
    pub fn block(&self, unit: usize) -> Q8Block<'_> {
        let len = BLOCK_TOKENS * self.head_dim;
        let at = unit * len;
        let groups = self.head_dim / GROUP;
        let g = unit * groups..(unit + 1) * groups;
        Q8Block {
            keys: &self.keys[at..at + len],
            key_scales: &self.key_scales[g.clone()],
            key_biases: &self.key_biases[g],
            values: &self.values[at..at + len],
            value_scales: &self.value_scales[unit],
        }
    }
}

impl Q8Block<'_> {
    /// Dimension `d` of the key in `slot`, as stored.
    pub fn key(&self, slot: usize, d: usize) -> i8 {
        self.keys[(d / 4) * BLOCK_TOKENS * 4 + slot * 4 + d % 4]
    }

    /// Dimension `d` of the value in `slot`, as stored (`hd`: the head size).
    pub fn value(&self, slot: usize, d: usize, hd: usize) -> i8 {
        self.values[(slot / 4) * hd * 4 + d * 4 + slot % 4]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_is_symmetric_and_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 61) as f32 - 30.0) / 7.0).collect();
        let mut q = [0i8; 64];
        let scale = quantize(&x, &mut q);
        assert_eq!(q.iter().map(|v| v.unsigned_abs()).max(), Some(127));
        for (&v, &q) in x.iter().zip(&q) {
            assert!((v - f32::from(q) * scale).abs() <= scale / 2.0 + 1e-6, "{v} vs {q} * {scale}");
        }
        assert_eq!(quantize(&[0.0; 8], &mut q[..8]), 0.0);
        for x in [0.5f32, 1.5, 2.5, -0.5, -1.5, 126.5, -126.49, 3.7, -3.7, 0.0] {
            assert_eq!(round_even(x), x.round_ties_even(), "{x}");
        }
        assert!(q[..8].iter().all(|&v| v == 0));
    }

    /// The AVX-512 quantization gives the portable loop's bytes and scale.
    #[test]
    fn simd_quantization_matches_the_portable_loop() {
        for seed in 0..50u32 {
            let x: Vec<f32> = (0..64u32).map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 97.0 - 10.0).collect();
            let (mut a, mut b) = ([0i8; 64], [0i8; 64]);
            assert_eq!(quantize(&x, &mut a), quantize_portable(&x, &mut b));
            assert_eq!(a, b, "seed {seed}");
        }
    }

    #[test]
    fn store_lays_keys_and_values_out_for_the_dot_products() {
        let hd = 64;
        let mut store = Q8Store::new(3, hd).unwrap();
        let k: Vec<f32> = (0..hd).map(|d| d as f32 - 3.0).collect();
        let v: Vec<f32> = (0..hd).map(|d| 10.0 * (d % 7) as f32 - 20.0).collect();
        store.store(2, 5, &k, &v);
        let b = store.block(2);
        let mut q = [0i8; GROUP];
        for grp in 0..2 {
            let dims = grp * GROUP..(grp + 1) * GROUP;
            let ks = quantize(&k[dims.clone()], &mut q);
            assert_eq!(b.key_scales[grp][5], ks);
            for (d, &q) in dims.clone().zip(&q) {
                assert_eq!(b.key(5, d), q, "key dimension {d}");
            }
            assert_eq!(b.key_biases[grp][5], -128 * q.iter().map(|&x| i32::from(x)).sum::<i32>());
        }
        let mut q = [0i8; 64];
        assert_eq!(b.value_scales[5], quantize(&v, &mut q));
        for (d, &q) in q.iter().enumerate() {
            assert_eq!(b.value(5, d, hd), q, "value dimension {d}");
        }
        // Key row d/4 holds 4 dimensions of all 16 slots; value row slot/4 holds 4 slots.
        assert_eq!(b.keys[BLOCK_TOKENS * 4 + 5 * 4 + 1], q_of(&k[..GROUP], 5));
        assert_eq!(b.values[hd * 4 + 3 * 4 + 1], q_of(&v, 3));
        assert!(store.block(1).keys.iter().all(|&x| x == 0), "other units untouched");
    }

    /// Dimension `d` of `x` quantized.
    fn q_of(x: &[f32], d: usize) -> i8 {
        let mut q = vec![0i8; x.len()];
        quantize(x, &mut q);
        q[d]
    }
}
