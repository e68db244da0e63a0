//! Causal attention over the 8-bit KV cache ([`crate::llm::kv_cache_q8`]), for the same
//! units of work as [`crate::llm::attention::attend`]: a tile of consecutive tokens of
//! one sequence and one KV head's group of query heads.
//!
//! Per token and head: the query is quantized to 8 bits (one scale per group of 32
//! values, as the keys), and the query-key products are integer dot products per group
//! (`vpdpbusd` on AVX-512 VNNI: 64 multiply-adds per instruction), scaled back by the
//! two scales and summed over the groups. The softmax's exponentials are f32, left
//! unnormalized until the end (the output is divided by their sum once). For the values,
//! each [`SPAN`] of 32 positions' exponentials times their values' scales are quantized
//! to 8 bits against the span's largest (so a span that holds an attention sink does not
//! flatten the rest of the history), multiplied with the 8-bit values as integers, and
//! added to the f32 output with the span's scale.
//!
//! Quantization, integer sums and the per-key scaling are the same in every kernel class,
//! so classes differ only in the softmax's `exp` and the output's fused multiply-add.
//! Each token is computed by the same operations in the same order whatever tile it is
//! in (tokens are independent here), so outputs are batch-invariant as with the f32
//! cache.
//!
//! Layout: [`attend_q8`] quantizes the queries and dispatches token by token to
//! `token_vnni512` (the AVX-512 VNNI classes, 64-value heads) or `token_portable` (any
//! head size: the reference the tests hold the SIMD kernel to, 20 times slower than f32
//! attention, so the factory refuses `q8` on classes without the SIMD kernel).

// SIMD loops index several parallel register arrays by the same counter.
#![allow(clippy::needless_range_loop)]

use crate::llm::attention::TileQuery;
use crate::llm::gguf::LlamaConfig;
use crate::llm::kv_cache::{KvCache, BLOCK_TOKENS};
use crate::llm::kv_cache_q8::{quantize, round_even, Q8Block, GROUP};
use crate::llm::quant::Kernel;

/// Whether `kernel` runs this attention in SIMD for heads of `head_dim` values in groups
/// of `group` query heads per KV head (the AVX-512 VNNI classes, 64-value heads, groups
/// of 1 to 4); elsewhere only the portable loops, 20 times slower than f32 attention.
pub fn runs_fast(kernel: Kernel, head_dim: usize, group: usize) -> bool {
    kernel.has_q8_attention() && head_dim == 64 && (1..=4).contains(&group)
}

/// Attention of `tq`'s tokens over an 8-bit cache: the arguments of
/// [`crate::llm::attention::attend`], with the kernel class in place of the f32 class.
pub fn attend_q8(c: &LlamaConfig, layer: usize, cache: &KvCache, tq: &TileQuery, out: &mut [f32], scores: &mut Vec<f32>, kernel: Kernel) {
    let &TileQuery { table, first_pos, n, q, q_stride, kvh } = tq;
    let (group, hd) = (c.heads / c.kv_heads, c.head_dim);
    let scale = 1.0 / (hd as f32).sqrt();
    assert!(n >= 1 && q.len() >= (n - 1) * q_stride + c.heads * hd && out.len() >= n * group * hd);
    let need = group * (first_pos + n);
    if scores.len() < need {
        scores.resize(need, 0.0);
    }
    let groups = hd / GROUP;
    let mut queries = vec![0u8; group * hd];
    let mut query_scales = vec![0f32; group * groups];
    let mut signed = [0i8; GROUP];
    let mut weights: Vec<([u8; SPAN], f32)> = Vec::new();
    // The tile's block views, once for all its tokens.
    let views: Vec<Q8Block> = table[..(first_pos + n).div_ceil(BLOCK_TOKENS)].iter().map(|&b| cache.block_q8(layer, b, kvh)).collect();
    for i in 0..n {
        let len = first_pos + 1 + i;
        let qi = &q[i * q_stride + kvh * group * hd..i * q_stride + (kvh + 1) * group * hd];
        for (at, chunk) in qi.chunks_exact(GROUP).enumerate() {
            let bytes = &mut queries[at * GROUP..(at + 1) * GROUP];
            query_scales[at] = quantize(chunk, &mut signed) * scale;
            for (u, &s) in bytes.iter_mut().zip(&signed) {
                // Unsigned, as `vpdpbusd` multiplies; the keys' biases take the 128 out.
                *u = (i16::from(s) + 128) as u8;
            }
        }
        let o = &mut out[i * group * hd..(i + 1) * group * hd];
        let spans = len.div_ceil(SPAN);
        if weights.len() < spans * group {
            weights.resize(spans * group, ([0; SPAN], 0.0));
        }
        let token = Token { views: &views, len, queries: &queries, query_scales: &query_scales };
        #[cfg(target_arch = "x86_64")]
        if kernel.has_q8_attention() && hd == 64 {
            // SAFETY: the AVX-512 VNNI classes run only where their CPU check passed
            // (AVX-512 F/VL/VNNI, AVX2, FMA).
            let done = unsafe {
                match group {
                    1 => token_vnni512::<1>(&token, scores, &mut weights, o),
                    2 => token_vnni512::<2>(&token, scores, &mut weights, o),
                    3 => token_vnni512::<3>(&token, scores, &mut weights, o),
                    4 => token_vnni512::<4>(&token, scores, &mut weights, o),
                    _ => false,
                }
            };
            if done {
                continue;
            }
        }
        let _ = kernel;
        token_portable(&token, group, hd, scores, o);
    }
}

/// One token's inputs.
struct Token<'a> {
    /// The tile's blocks of this layer and KV head (at least this token's).
    views: &'a [Q8Block<'a>],
    /// Positions it attends over.
    len: usize,
    /// `group * hd` bytes: each head's quantized query plus 128.
    queries: &'a [u8],
    /// Each head's query scales (one per group) times the softmax scale.
    query_scales: &'a [f32],
}

impl Token<'_> {
    fn blocks(&self) -> usize {
        self.len.div_ceil(BLOCK_TOKENS)
    }

    #[inline(always)]
    fn block(&self, b: usize) -> Q8Block<'_> {
        self.views[b]
    }

    /// Filled slots of block `b`.
    fn slots(&self, b: usize) -> usize {
        (self.len - b * BLOCK_TOKENS).min(BLOCK_TOKENS)
    }
}

/// The power of two a block's weights are quantized against, from their largest `most`:
/// `(1 / scale, scale)` with `most / scale` in `[128, 256)`, so the largest weight takes
/// 8 bits and a weight becomes bytes with one exact multiplication (no division per
/// block: twelve of them were a third of this kernel's time). `None` when `most` is 0
/// or too small to scale (its weights count as 0).
#[inline(always)]
fn weight_scale(most: f32) -> Option<(f32, f32)> {
    let exponent = (most.to_bits() >> 23) & 0xFF;
    // Normal, positive and within range: 2^(exponent - 134) is the step.
    (most > 0.0 && (8..=250).contains(&exponent)).then(|| (f32::from_bits((261 - exponent) << 23), f32::from_bits((exponent - 7) << 23)))
}

/// Positions whose attention weights share one scale: two blocks.
pub const SPAN: usize = 2 * BLOCK_TOKENS;

/// A span's exponentials times their values' scales (both 0 past the filled slots),
/// quantized to `[0, 255]` against a power of two ([`weight_scale`]); returns the scale
/// (0 when all are 0).
fn quantize_weights(e: &[f32; SPAN], value_scales: &[f32; SPAN], u: &mut [u8; SPAN]) -> f32 {
    let mut w = [0f32; SPAN];
    for s in 0..SPAN {
        w[s] = e[s] * value_scales[s];
    }
    let most = w.iter().fold(0f32, |m, &v| m.max(v));
    let Some((inv, scale)) = weight_scale(most) else {
        u.fill(0);
        return 0.0;
    };
    for (u, &w) in u.iter_mut().zip(&w) {
        *u = round_even((w * inv).min(255.0)) as u8;
    }
    scale
}

/// The score of a slot from its groups' integer dot products: the groups' scaled
/// products summed in order (the SIMD kernels do the same operations).
#[inline(always)]
fn score(dots: impl Iterator<Item = (i32, f32, f32)>) -> f32 {
    let mut sum = 0f32;
    for (i, (dot, key_scale, query_scale)) in dots.enumerate() {
        let term = dot as f32 * key_scale * query_scale;
        sum = if i == 0 { term } else { sum + term };
    }
    sum
}

/// One token's attention in plain Rust, any head size divisible by [`GROUP`].
fn token_portable(t: &Token, group: usize, hd: usize, scores: &mut [f32], out: &mut [f32]) {
    let len = t.len;
    let groups = hd / GROUP;
    let mut dots = vec![[0i32; BLOCK_TOKENS]; groups];
    for b in 0..t.blocks() {
        let blk = t.block(b);
        let slots = t.slots(b);
        for g in 0..group {
            let qg = &t.queries[g * hd..(g + 1) * hd];
            for (grp, dot) in dots.iter_mut().enumerate() {
                *dot = blk.key_biases[grp];
                for j in grp * GROUP / 4..(grp + 1) * GROUP / 4 {
                    let row = &blk.keys[j * 4 * BLOCK_TOKENS..(j + 1) * 4 * BLOCK_TOKENS];
                    let qj = &qg[j * 4..j * 4 + 4];
                    for (s, dot) in dot.iter_mut().enumerate() {
                        for k in 0..4 {
                            *dot += i32::from(qj[k]) * i32::from(row[s * 4 + k]);
                        }
                    }
                }
            }
            for s in 0..slots {
                let terms = (0..groups).map(|grp| (dots[grp][s], blk.key_scales[grp][s], t.query_scales[g * groups + grp]));
                scores[g * len + b * BLOCK_TOKENS + s] = score(terms);
            }
        }
    }
    let mut max = vec![f32::NEG_INFINITY; group];
    for (g, max) in max.iter_mut().enumerate() {
        *max = scores[g * len..(g + 1) * len].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    }
    let mut sums = vec![0f32; group];
    out[..group * hd].fill(0.0);
    let mut acc = vec![0i32; hd];
    let mut u = [0u8; SPAN];
    let per_span = SPAN / BLOCK_TOKENS;
    for first in (0..t.blocks()).step_by(per_span) {
        let span = first..t.blocks().min(first + per_span);
        let mut value_scales = [0f32; SPAN];
        for b in span.clone() {
            let at = (b - first) * BLOCK_TOKENS;
            value_scales[at..at + t.slots(b)].copy_from_slice(&t.block(b).value_scales[..t.slots(b)]);
        }
        for g in 0..group {
            let mut e = [0f32; SPAN];
            for b in span.clone() {
                for s in 0..t.slots(b) {
                    let x = (scores[g * len + b * BLOCK_TOKENS + s] - max[g]).exp();
                    e[(b - first) * BLOCK_TOKENS + s] = x;
                    sums[g] += x;
                }
            }
            let scale = quantize_weights(&e, &value_scales, &mut u);
            acc.fill(0);
            for b in span.clone() {
                let values = t.block(b).values;
                for sg in 0..BLOCK_TOKENS / 4 {
                    let row = &values[sg * hd * 4..(sg + 1) * hd * 4];
                    let at = (b - first) * BLOCK_TOKENS + sg * 4;
                    let us = &u[at..at + 4];
                    for (d, acc) in acc.iter_mut().enumerate() {
                        for k in 0..4 {
                            *acc += i32::from(us[k]) * i32::from(row[d * 4 + k]);
                        }
                    }
                }
            }
            for (o, &a) in out[g * hd..(g + 1) * hd].iter_mut().zip(&acc) {
                *o += a as f32 * scale;
            }
        }
    }
    for (g, &sum) in sums.iter().enumerate() {
        let inv = 1.0 / sum;
        for o in &mut out[g * hd..(g + 1) * hd] {
            *o *= inv;
        }
    }
}

/// One token's attention for `G` heads of 64 values (2 groups) with AVX-512 VNNI: a
/// block's 16 scores per head are 16 `vpdpbusd` (4 query bytes broadcast against a row
/// of 4 dimensions of the 16 keys, [`scores_vnni512`]); a block's
/// values are 16 more (4 probability bytes against a row of 4 slots of 16 dimensions),
/// the output kept in 4 registers per head. Returns true (it handled the case).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
unsafe fn token_vnni512<const G: usize>(t: &Token, scores: &mut [f32], weights: &mut [([u8; SPAN], f32)], out: &mut [f32]) -> bool {
    use std::arch::x86_64::*;
    let len = t.len;
    assert!(t.queries.len() >= G * 64 && t.query_scales.len() >= G * 2 && scores.len() >= G * len && out.len() >= G * 64);
    let mask = |slots: usize| -> __mmask16 { if slots == BLOCK_TOKENS { 0xFFFF } else { (1u16 << slots) - 1 } };
    let blocks = t.blocks();
    let mut b = 0;
    while b < blocks {
        if b + 1 < blocks {
            scores_vnni512::<G, 2>(t, b, scores);
            b += 2;
        } else {
            scores_vnni512::<G, 1>(t, b, scores);
            b += 1;
        }
    }
    let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); G];
    for b in 0..blocks {
        let k = mask(t.slots(b));
        for (g, max) in max.iter_mut().enumerate() {
            *max = _mm512_mask_max_ps(*max, k, *max, _mm512_maskz_loadu_ps(k, scores.as_ptr().add(g * len + b * BLOCK_TOKENS)));
        }
    }
    let max = max.map(|m| _mm512_set1_ps(_mm512_reduce_max_ps(m)));
    // The exponentials, in place (a short loop of independent iterations, so their long
    // dependency chains overlap).
    let mut sums = [_mm512_setzero_ps(); G];
    for b in 0..blocks {
        let k = mask(t.slots(b));
        for g in 0..G {
            let at = scores.as_mut_ptr().add(g * len + b * BLOCK_TOKENS);
            let e = _mm512_maskz_mov_ps(k, crate::llm::simd::x86::exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, at), max[g])));
            sums[g] = _mm512_add_ps(sums[g], e);
            _mm512_mask_storeu_ps(at, k, e);
        }
    }
    // Exponentials times value scales to bytes, span by span (two blocks); then the
    // integer products, one float step per span.
    let spans = blocks.div_ceil(2);
    assert!(weights.len() >= spans * G);
    let top = _mm512_set1_ps(255.0);
    for sp in 0..spans {
        let (b0, b1) = (2 * sp, 2 * sp + 1);
        let k0 = mask(t.slots(b0));
        let k1 = if b1 < blocks { mask(t.slots(b1)) } else { 0 };
        let vs0 = _mm512_maskz_loadu_ps(k0, t.block(b0).value_scales.as_ptr());
        let vs1 = if b1 < blocks { _mm512_maskz_loadu_ps(k1, t.block(b1).value_scales.as_ptr()) } else { _mm512_setzero_ps() };
        for g in 0..G {
            let w0 = _mm512_mul_ps(_mm512_maskz_loadu_ps(k0, scores.as_ptr().add(g * len + b0 * BLOCK_TOKENS)), vs0);
            let w1 = if b1 < blocks { _mm512_mul_ps(_mm512_maskz_loadu_ps(k1, scores.as_ptr().add(g * len + b1 * BLOCK_TOKENS)), vs1) } else { _mm512_setzero_ps() };
            let (u, scale) = &mut weights[sp * G + g];
            if let Some((inv, step)) = weight_scale(_mm512_reduce_max_ps(_mm512_max_ps(w0, w1))) {
                // The same steps as `quantize_weights` (cvtps rounds ties to even).
                let inv = _mm512_set1_ps(inv);
                for (h, w) in [w0, w1].into_iter().enumerate() {
                    let q = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_mul_ps(w, inv), top));
                    _mm_storeu_si128(u.as_mut_ptr().add(h * 16) as *mut __m128i, _mm512_cvtepi32_epi8(q));
                }
                *scale = step;
            } else {
                *u = [0; SPAN];
                *scale = 0.0;
            }
        }
    }
    let mut o = [[_mm512_setzero_ps(); 4]; G];
    for sp in 0..spans {
        let w = &weights[sp * G..(sp + 1) * G];
        // acc[g][quarter]: 4 * G independent chains, over the span's blocks.
        let mut acc = [[_mm512_setzero_si512(); 4]; G];
        for b in 2 * sp..blocks.min(2 * sp + 2) {
            let blk = t.block(b);
            assert!(blk.values.len() >= 64 * BLOCK_TOKENS);
            let vp = blk.values.as_ptr();
            let at = (b - 2 * sp) * BLOCK_TOKENS;
            for sg in 0..4 {
                let rows = [0, 1, 2, 3].map(|c| _mm512_loadu_si512(vp.add(sg * 256 + c * 64) as *const _));
                for g in 0..G {
                    let pw = _mm512_set1_epi32(std::ptr::read_unaligned(w[g].0.as_ptr().add(at + sg * 4) as *const i32));
                    for c in 0..4 {
                        acc[g][c] = _mm512_dpbusd_epi32(acc[g][c], pw, rows[c]);
                    }
                }
            }
        }
        for g in 0..G {
            let scale = _mm512_set1_ps(w[g].1);
            for c in 0..4 {
                o[g][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[g][c]), scale, o[g][c]);
            }
        }
    }
    for g in 0..G {
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sums[g]));
        for o in o[g].iter_mut() {
            *o = _mm512_mul_ps(*o, inv);
        }
    }
    for (g, o) in o.iter().enumerate() {
        for (c, v) in o.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(g * 64 + c * 16), *v);
        }
    }
    true
}

/// The scores of blocks `first..first + B` for [`token_vnni512`]: per group of 32
/// dimensions, each broadcast of 4 query bytes serves the `B` blocks' key rows (half the
/// broadcasts with `B = 2`), in 2 chains per head and block, all in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
#[inline]
unsafe fn scores_vnni512<const G: usize, const B: usize>(t: &Token, first: usize, scores: &mut [f32]) {
    use std::arch::x86_64::*;
    let len = t.len;
    let blk: [Q8Block; B] = std::array::from_fn(|i| t.block(first + i));
    for blk in &blk {
        assert!(blk.keys.len() >= 64 * BLOCK_TOKENS && blk.key_biases.len() >= 2 && blk.key_scales.len() >= 2);
    }
    assert!(scores.len() >= (G - 1) * len + (first + B - 1) * BLOCK_TOKENS + t.slots(first + B - 1));
    let query_dword = |g: usize, j: usize| _mm512_set1_epi32(std::ptr::read_unaligned(t.queries.as_ptr().add(g * 64 + j * 4) as *const i32));
    let mut sum = [[_mm512_setzero_ps(); G]; B];
    for grp in 0..2 {
        // acc[block][head][chain]
        let mut acc = [[[_mm512_setzero_si512(); 2]; G]; B];
        for (i, acc) in acc.iter_mut().enumerate() {
            for a in acc.iter_mut() {
                a[0] = _mm512_loadu_si512(blk[i].key_biases[grp].as_ptr() as *const _);
            }
        }
        for jj in 0..4 {
            for p in 0..2 {
                let j = grp * 8 + jj * 2 + p;
                let rows: [__m512i; B] = std::array::from_fn(|i| _mm512_loadu_si512(blk[i].keys.as_ptr().add(j * 64) as *const _));
                for g in 0..G {
                    let q = query_dword(g, j);
                    for i in 0..B {
                        acc[i][g][p] = _mm512_dpbusd_epi32(acc[i][g][p], q, rows[i]);
                    }
                }
            }
        }
        for i in 0..B {
            let key_scales = _mm512_loadu_ps(blk[i].key_scales[grp].as_ptr());
            for g in 0..G {
                let dot = _mm512_add_epi32(acc[i][g][0], acc[i][g][1]);
                let term = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), key_scales), _mm512_set1_ps(t.query_scales[g * 2 + grp]));
                sum[i][g] = if grp == 0 { term } else { _mm512_add_ps(sum[i][g], term) };
            }
        }
    }
    for i in 0..B {
        let b = first + i;
        let slots = t.slots(b);
        let k: __mmask16 = if slots == BLOCK_TOKENS { 0xFFFF } else { (1u16 << slots) - 1 };
        for (g, sum) in sum[i].iter().enumerate() {
            _mm512_mask_storeu_ps(scores.as_mut_ptr().add(g * len + b * BLOCK_TOKENS), k, *sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::attention::attend;
    use crate::llm::kv_cache::KvCacheType;

    fn config(group: usize, hd: usize) -> LlamaConfig {
        LlamaConfig {
            architecture: "llama".into(),
            name: "test".into(),
            layers: 1,
            hidden: 2 * group * hd,
            ffn: 256,
            heads: 2 * group,
            kv_heads: 2,
            head_dim: hd,
            vocab: 16,
            context_length: 4 * BLOCK_TOKENS,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            tied_embeddings: true,
        }
    }

    /// The same random keys and values in an f32 and an 8-bit cache (position 0's keys
    /// large, as an attention sink).
    fn caches(hd: usize) -> (KvCache, KvCache, Vec<u32>) {
        let mut seed = 29u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let kv_heads = 2;
        let mut f32_cache = KvCache::new(1, 6, kv_heads, hd).unwrap();
        let mut q8_cache = KvCache::with_type(1, 6, kv_heads, hd, KvCacheType::Q8).unwrap();
        let table: Vec<u32> = vec![4, 0, 5, 2];
        for pos in 0..table.len() * BLOCK_TOKENS {
            let boost = if pos == 0 { 4.0 } else { 1.0 };
            let k: Vec<f32> = (0..kv_heads * hd).map(|_| next() * boost).collect();
            let v: Vec<f32> = (0..kv_heads * hd).map(|_| next()).collect();
            f32_cache.store(0, &table, pos, &k, &v);
            q8_cache.store(0, &table, pos, &k, &v);
        }
        (f32_cache, q8_cache, table)
    }

    fn queries(group: usize, hd: usize, tokens: usize) -> Vec<f32> {
        (0..tokens * 2 * group * hd).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 4.0).collect()
    }

    fn classes() -> Vec<Kernel> {
        let mut classes = Kernel::available();
        if !classes.contains(&Kernel::Scalar) {
            classes.push(Kernel::Scalar);
        }
        classes
    }

    /// Outputs of `n` tokens from `first_pos` for KV head 1.
    #[allow(clippy::too_many_arguments)]
    fn run_q8(cache: &KvCache, table: &[u32], group: usize, hd: usize, first_pos: usize, n: usize, q: &[f32], kernel: Kernel) -> Vec<f32> {
        let c = config(group, hd);
        let mut out = vec![f32::NAN; n * group * hd];
        let tq = TileQuery { table, first_pos, n, q, q_stride: c.heads * hd, kvh: 1 };
        attend_q8(&c, 0, cache, &tq, &mut out, &mut Vec::new(), kernel);
        out
    }

    /// 8-bit attention stays close to the f32 attention over the same keys and values:
    /// each head's output within 3% of the f32 output's size.
    #[test]
    fn eight_bit_attention_is_close_to_f32() {
        for hd in [64, 32, 128] {
            let (f32_cache, q8_cache, table) = caches(hd);
            for group in [1, 3] {
                let c = config(group, hd);
                for first_pos in [0, 15, 40, 56] {
                    let n = 4.min(table.len() * BLOCK_TOKENS - first_pos);
                    let q = queries(group, hd, n);
                    let mut exact = vec![0f32; n * group * hd];
                    let simd = crate::llm::quant::F32Simd::Portable;
                    let tq = TileQuery { table: &table, first_pos, n, q: &q, q_stride: c.heads * hd, kvh: 1 };
                    attend(&c, 0, &f32_cache, &tq, &mut exact, &mut Vec::new(), simd);
                    for kernel in classes() {
                        let got = run_q8(&q8_cache, &table, group, hd, first_pos, n, &q, kernel);
                        for (h, (e, g)) in exact.chunks(hd).zip(got.chunks(hd)).enumerate() {
                            let size = e.iter().map(|x| x * x).sum::<f32>().sqrt();
                            let error = e.iter().zip(g).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
                            assert!(error <= 0.03 * size, "{kernel:?} hd={hd} group={group} from {first_pos}, head {h}: error {error} of {size}");
                        }
                    }
                }
            }
        }
    }

    /// Every class computes what the portable loops compute (they differ only in `exp`
    /// and fused multiply-adds), and a token's bits are the same alone or in a tile.
    #[test]
    fn classes_agree_and_tokens_are_batch_invariant() {
        let hd = 64;
        let (_, cache, table) = caches(hd);
        for group in 1..=4 {
            for first_pos in [0, 9, 16, 30] {
                let n = 8.min(table.len() * BLOCK_TOKENS - first_pos);
                let q = queries(group, hd, n);
                let portable = run_q8(&cache, &table, group, hd, first_pos, n, &q, Kernel::Scalar);
                assert!(portable.iter().all(|x| x.is_finite()) && portable.iter().any(|&x| x != 0.0));
                for kernel in classes() {
                    let tile = run_q8(&cache, &table, group, hd, first_pos, n, &q, kernel);
                    for (i, (x, y)) in portable.iter().zip(&tile).enumerate() {
                        assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{kernel:?} group={group} from {first_pos} at {i}: {x} vs {y}");
                    }
                    let w = group * hd;
                    let stride = 2 * group * hd;
                    for i in 0..n {
                        let alone = run_q8(&cache, &table, group, hd, first_pos + i, 1, &q[i * stride..], kernel);
                        let same = tile[i * w..(i + 1) * w].iter().zip(&alone).all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same, "{kernel:?} group={group}: token {i} of the tile from {first_pos} differs from it alone");
                    }
                }
            }
        }
    }

    #[test]
    fn weights_are_quantized_against_a_power_of_two_above_the_span_maximum() {
        let mut e = [0f32; SPAN];
        e[..4].copy_from_slice(&[0.5, 0.25, 0.0, 0.0]);
        let mut scales = [0f32; SPAN];
        scales[..3].fill(2.0);
        let mut u = [7u8; SPAN];
        // Weights 1, 0.5, 0: the largest, 1, becomes 128 steps of 1/128.
        let scale = quantize_weights(&e, &scales, &mut u);
        assert_eq!(scale, 1.0 / 128.0);
        assert_eq!(&u[..5], &[128, 64, 0, 0, 0]);
        assert!(u.iter().skip(2).all(|&x| x == 0));
        // Just under the next power of two: 255.9 steps round to the top byte.
        e[0] = 0.99975;
        assert_eq!(quantize_weights(&e, &scales, &mut u), 1.0 / 128.0);
        assert_eq!(u[0], 255);
        for most in [1e-30f32, 0.003, 0.7, 1.0, 5.5] {
            let (inv, scale) = weight_scale(most).unwrap();
            assert_eq!(inv * scale, 1.0);
            assert!((128.0..256.0).contains(&(most * inv)), "{most}");
        }
        assert_eq!(weight_scale(0.0), None);
        assert_eq!(quantize_weights(&[0.0; SPAN], &scales, &mut u), 0.0);
    }
}
