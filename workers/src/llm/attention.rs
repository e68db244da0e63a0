//! Causal attention of one token over its sequence's paged KV cache, one KV head's group
//! of query heads at a time ([`attend`]): the unit of work the forward pass hands to its
//! threads, so a single decoding sequence still spreads its heads across cores.
//!
//! Each token's attention is computed by the same loops in the same order whatever else
//! is in the batch, and the matrix kernels compute each (row, token) product
//! independently too, so outputs are **batch-invariant**: a sequence gets bit-identical
//! logits whether it runs alone, batched with others, prefilled in chunks or recomputed
//! after a preemption. (Matrix-product attention for long prefill chunks, through
//! candle, was tried: its summation order depends on the chunk shape, so greedy outputs
//! changed with chunking and preemption, and it was taken out.)
//!
//! Layout: [`attend`] dispatches by [`F32Simd`] to `attend_group` built for each
//! instruction set; `attend64` is the 64-dimension head loop (intrinsics in
//! `attend64_avx512` and `attend64_avx2`), with general loops for other head sizes.

// SIMD loops index several parallel register arrays by the same counter.
#![allow(clippy::needless_range_loop)]

use crate::llm::gguf::LlamaConfig;
use crate::llm::kv_cache::{KvCache, BLOCK_TOKENS};
use crate::llm::ops::{axpy, softmax};
use crate::llm::quant::F32Simd;
use crate::llm::simd;

/// Attention of the token at position `pos` (its sequence's block table `table`) for the
/// query heads of KV head `kvh`: reads `q` (the token's `hidden` query values), writes
/// `out`, that group's `heads / kv_heads * head_dim` output values. `scores` is scratch
/// space, grown as needed.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    c: &LlamaConfig,
    layer: usize,
    cache: &KvCache,
    table: &[u32],
    pos: usize,
    q: &[f32],
    kvh: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
    simd: F32Simd,
) {
    let group = c.heads / c.kv_heads;
    if scores.len() < (pos + 1) * group {
        scores.resize((pos + 1) * group, 0.0);
    }
    #[cfg(target_arch = "x86_64")]
    match simd {
        // SAFETY: the AVX-512 classes need AVX-512F/VL, AVX2 and FMA; every SIMD class
        // needs AVX2 and FMA (Kernel::supported).
        F32Simd::Avx512 => return unsafe { attend_group_avx512(c, layer, cache, table, pos, q, kvh, out, scores) },
        F32Simd::Avx2 => return unsafe { attend_group_avx2(c, layer, cache, table, pos, q, kvh, out, scores) },
        F32Simd::Portable => {}
    }
    let _ = simd;
    attend_group::<0>(c, layer, cache, table, pos, q, kvh, out, scores)
}

/// [`attend_group`] compiled for an instruction set: the crate is built for baseline
/// x86-64 (SSE2) and `attend_group` is `#[inline(always)]`, so each wrapper holds its own
/// build of it. `$level` picks the intrinsics inside (2: AVX-512, 1: AVX2 softmax).
macro_rules! attend_group_for {
    ($(#[$doc:meta])* $name:ident, $features:literal, $level:literal) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            c: &LlamaConfig,
            layer: usize,
            cache: &KvCache,
            table: &[u32],
            pos: usize,
            q: &[f32],
            kvh: usize,
            out: &mut [f32],
            scores: &mut [f32],
        ) {
            attend_group::<$level>(c, layer, cache, table, pos, q, kvh, out, scores)
        }
    };
}

attend_group_for!(
    /// AVX-512: 16-wide vectors, one per key block of 16 slots.
    attend_group_avx512, "avx2,fma,avx512f,avx512vl", 2
);
attend_group_for!(
    /// AVX2 + FMA.
    attend_group_avx2, "avx2,fma", 1
);

/// One token's attention for one KV head's query heads.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_group<const LEVEL: u8>(
    c: &LlamaConfig,
    layer: usize,
    cache: &KvCache,
    table: &[u32],
    pos: usize,
    q_all: &[f32],
    kvh: usize,
    out: &mut [f32],
    scores: &mut [f32],
) {
    let hd = c.head_dim;
    let group = c.heads / c.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let len = pos + 1;
    let q = &q_all[kvh * group * hd..(kvh + 1) * group * hd];
    let o = &mut out[..group * hd];
    let done = hd == 64
        && match group {
            1 => attend64::<1, LEVEL>(q, cache, layer, table, kvh, len, scale, scores, o),
            2 => attend64::<2, LEVEL>(q, cache, layer, table, kvh, len, scale, scores, o),
            3 => attend64::<3, LEVEL>(q, cache, layer, table, kvh, len, scale, scores, o),
            4 => attend64::<4, LEVEL>(q, cache, layer, table, kvh, len, scale, scores, o),
            _ => false,
        };
    if done {
        return;
    }
    // Any head size or group: the general loops.
    for (b, &block) in table.iter().enumerate().take(len.div_ceil(BLOCK_TOKENS)) {
        let (kb, _) = cache.block(layer, block, kvh);
        let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
        for s in 0..slots {
            for g in 0..group {
                let qg = &q[g * hd..(g + 1) * hd];
                let dot: f32 = (0..hd).map(|d| qg[d] * kb[d * BLOCK_TOKENS + s]).sum();
                scores[g * len + b * BLOCK_TOKENS + s] = dot * scale;
            }
        }
    }
    for g in 0..group {
        softmax(&mut scores[g * len..(g + 1) * len]);
        o[g * hd..(g + 1) * hd].fill(0.0);
    }
    for (b, &block) in table.iter().enumerate().take(len.div_ceil(BLOCK_TOKENS)) {
        let (_, vb) = cache.block(layer, block, kvh);
        let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
        for s in 0..slots {
            let value = &vb[s * hd..(s + 1) * hd];
            for g in 0..group {
                axpy(scores[g * len + b * BLOCK_TOKENS + s], value, &mut o[g * hd..(g + 1) * hd]);
            }
        }
    }
}

/// Attention of `G` query heads (64 values each, back to back in `q`) that share one
/// key/value head, over positions `0..len`; writes their outputs to `out`. Keys are
/// stored dimension-major per block ([`KvCache::block`]), so a block's 16 scores per
/// head are 64 multiply-adds of 16-wide vectors, in 4 independent partial sums per head
/// (12 chains for 3 heads: bound by throughput, not latency). Each key and value is
/// loaded once for all `G` heads, and the weighted sums of values stay in local
/// accumulators for the whole pass. Returns true (it handled the case).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend64<const G: usize, const LEVEL: u8>(
    q: &[f32],
    cache: &KvCache,
    layer: usize,
    table: &[u32],
    kvh: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) -> bool {
    let mut qs = [[0f32; 64]; G];
    for (g, qg) in qs.iter_mut().enumerate() {
        for (d, v) in qg.iter_mut().zip(&q[g * 64..(g + 1) * 64]) {
            *d = v * scale;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if LEVEL == 2 {
        // SAFETY: LEVEL is 2 only in `attend_group_avx512`, whose CPU check covers these.
        unsafe { attend64_avx512::<G>(&qs, cache, layer, table, kvh, len, scores, out) };
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    if LEVEL == 1 {
        // SAFETY: LEVEL is 1 only in `attend_group_avx2` (AVX2 + FMA checked).
        unsafe { attend64_avx2::<G>(&qs, cache, layer, table, kvh, len, scores, out) };
        return true;
    }
    let blocks = len.div_ceil(BLOCK_TOKENS);
    for (b, &block) in table.iter().enumerate().take(blocks) {
        let (kb, _) = cache.block(layer, block, kvh);
        let kt: &[f32; 64 * BLOCK_TOKENS] = kb.try_into().expect("a block of 64-value keys");
        let mut part = [[[0f32; BLOCK_TOKENS]; 4]; G];
        for d4 in 0..16 {
            for p in 0..4 {
                let d = d4 * 4 + p;
                let row: &[f32; BLOCK_TOKENS] = kt[d * BLOCK_TOKENS..(d + 1) * BLOCK_TOKENS].try_into().expect("16 slots");
                for g in 0..G {
                    let qd = qs[g][d];
                    for s in 0..BLOCK_TOKENS {
                        part[g][p][s] += qd * row[s];
                    }
                }
            }
        }
        // Only the block's filled slots count (the rest hold other data).
        let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
        for g in 0..G {
            let dst = &mut scores[g * len + b * BLOCK_TOKENS..g * len + b * BLOCK_TOKENS + slots];
            for (s, v) in dst.iter_mut().enumerate() {
                *v = (part[g][0][s] + part[g][1][s]) + (part[g][2][s] + part[g][3][s]);
            }
        }
    }
    for g in 0..G {
        softmax(&mut scores[g * len..(g + 1) * len]);
    }
    let mut acc = [[0f32; 64]; G];
    for (b, &block) in table.iter().enumerate().take(blocks) {
        let (_, vb) = cache.block(layer, block, kvh);
        let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
        for s in 0..slots {
            let value: &[f32; 64] = vb[s * 64..(s + 1) * 64].try_into().expect("64 values");
            for g in 0..G {
                let p = scores[g * len + b * BLOCK_TOKENS + s];
                for d in 0..64 {
                    acc[g][d] += p * value[d];
                }
            }
        }
    }
    for (g, a) in acc.iter().enumerate() {
        out[g * 64..(g + 1) * 64].copy_from_slice(a);
    }
    true
}

/// The next block's keys (or values) of this head, for prefetching while the current
/// block is computed: at long contexts of many sequences attention reads more KV bytes
/// per step than weights, from blocks scattered across the cache, and the hardware
/// prefetcher only finds a block's lines once the block is being read.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn next_block<'a>(cache: &'a KvCache, layer: usize, table: &[u32], b: usize, blocks: usize, kvh: usize) -> Option<(&'a [f32], &'a [f32])> {
    (b + 1 < blocks).then(|| cache.block(layer, table[b + 1], kvh))
}

/// Ask for the 64-byte line at `p` to be brought into cache (never faults).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch(p: *const f32) {
    // SAFETY: a prefetch has no architectural effect and never faults.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8) };
}

/// [`attend64`] with AVX-512 intrinsics: a block's 16 scores per head are 64 FMAs of
/// 16-wide vectors (keys dimension-major) in 4 independent chains per head, and the
/// value pass keeps each head's 64 output values in 4 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn attend64_avx512<const G: usize>(
    qs: &[[f32; 64]; G],
    cache: &KvCache,
    layer: usize,
    table: &[u32],
    kvh: usize,
    len: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(scores.len() >= G * len && out.len() >= G * 64);
    let blocks = len.div_ceil(BLOCK_TOKENS);
    assert!(table.len() >= blocks);
    for (b, &block) in table.iter().enumerate().take(blocks) {
        let (kb, _) = cache.block(layer, block, kvh);
        assert!(kb.len() >= 64 * BLOCK_TOKENS);
        let kp = kb.as_ptr();
        let next = next_block(cache, layer, table, b, blocks, kvh).map_or(kp, |(k, _)| k.as_ptr());
        let mut part = [[_mm512_setzero_ps(); 4]; G];
        for d4 in 0..16 {
            for p in 0..4 {
                let d = d4 * 4 + p;
                // One line per dimension: the next block's 64 key lines over this one.
                prefetch(next.add(d * BLOCK_TOKENS));
                let row = _mm512_loadu_ps(kp.add(d * BLOCK_TOKENS));
                for g in 0..G {
                    part[g][p] = _mm512_fmadd_ps(_mm512_set1_ps(qs[g][d]), row, part[g][p]);
                }
            }
        }
        let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
        let k: __mmask16 = if slots == 16 { 0xFFFF } else { (1u16 << slots) - 1 };
        for (g, part) in part.iter().enumerate() {
            let sum = _mm512_add_ps(_mm512_add_ps(part[0], part[1]), _mm512_add_ps(part[2], part[3]));
            _mm512_mask_storeu_ps(scores.as_mut_ptr().add(g * len + b * BLOCK_TOKENS), k, sum);
        }
    }
    for g in 0..G {
        simd::x86::softmax_avx512(&mut scores[g * len..(g + 1) * len]);
    }
    let mut acc = [[_mm512_setzero_ps(); 4]; G];
    for (b, &block) in table.iter().enumerate().take(blocks) {
        let (_, vb) = cache.block(layer, block, kvh);
        assert!(vb.len() >= 64 * BLOCK_TOKENS);
        let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
        let next = next_block(cache, layer, table, b, blocks, kvh).map_or(vb.as_ptr(), |(_, v)| v.as_ptr());
        for s in 0..slots {
            let vp = vb.as_ptr().add(s * 64);
            for line in 0..4 {
                prefetch(next.add(s * 64 + line * 16));
            }
            let v = [_mm512_loadu_ps(vp), _mm512_loadu_ps(vp.add(16)), _mm512_loadu_ps(vp.add(32)), _mm512_loadu_ps(vp.add(48))];
            for g in 0..G {
                let p = _mm512_set1_ps(*scores.get_unchecked(g * len + b * BLOCK_TOKENS + s));
                for c in 0..4 {
                    acc[g][c] = _mm512_fmadd_ps(p, v[c], acc[g][c]);
                }
            }
        }
    }
    for (g, a) in acc.iter().enumerate() {
        for (c, v) in a.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(g * 64 + c * 16), *v);
        }
    }
}

/// [`attend64`] with AVX2 + FMA intrinsics: a block's 16 scores per head are 64 FMAs of
/// two 8-wide vectors (keys dimension-major), in 2 chains per head; the value pass runs
/// twice, 32 output dimensions at a time, so each head's accumulators fit in 4 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn attend64_avx2<const G: usize>(
    qs: &[[f32; 64]; G],
    cache: &KvCache,
    layer: usize,
    table: &[u32],
    kvh: usize,
    len: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(scores.len() >= G * len && out.len() >= G * 64);
    let blocks = len.div_ceil(BLOCK_TOKENS);
    assert!(table.len() >= blocks);
    let mut tail = [0f32; BLOCK_TOKENS];
    for (b, &block) in table.iter().enumerate().take(blocks) {
        let (kb, _) = cache.block(layer, block, kvh);
        assert!(kb.len() >= 64 * BLOCK_TOKENS);
        let kp = kb.as_ptr();
        let next = next_block(cache, layer, table, b, blocks, kvh).map_or(kp, |(k, _)| k.as_ptr());
        // part[g][chain][half]: slots 0..8 and 8..16.
        let mut part = [[[_mm256_setzero_ps(); 2]; 2]; G];
        for d2 in 0..32 {
            for p in 0..2 {
                let d = d2 * 2 + p;
                prefetch(next.add(d * BLOCK_TOKENS));
                let lo = _mm256_loadu_ps(kp.add(d * BLOCK_TOKENS));
                let hi = _mm256_loadu_ps(kp.add(d * BLOCK_TOKENS + 8));
                for g in 0..G {
                    let qd = _mm256_set1_ps(qs[g][d]);
                    part[g][p][0] = _mm256_fmadd_ps(qd, lo, part[g][p][0]);
                    part[g][p][1] = _mm256_fmadd_ps(qd, hi, part[g][p][1]);
                }
            }
        }
        let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
        for (g, part) in part.iter().enumerate() {
            let dst = scores.as_mut_ptr().add(g * len + b * BLOCK_TOKENS);
            let lo = _mm256_add_ps(part[0][0], part[1][0]);
            let hi = _mm256_add_ps(part[0][1], part[1][1]);
            if slots == BLOCK_TOKENS {
                _mm256_storeu_ps(dst, lo);
                _mm256_storeu_ps(dst.add(8), hi);
            } else {
                _mm256_storeu_ps(tail.as_mut_ptr(), lo);
                _mm256_storeu_ps(tail.as_mut_ptr().add(8), hi);
                std::ptr::copy_nonoverlapping(tail.as_ptr(), dst, slots);
            }
        }
    }
    for g in 0..G {
        simd::x86::softmax_avx2(&mut scores[g * len..(g + 1) * len]);
    }
    for half in 0..2 {
        let mut acc = [[_mm256_setzero_ps(); 4]; G];
        for (b, &block) in table.iter().enumerate().take(blocks) {
            let (_, vb) = cache.block(layer, block, kvh);
            assert!(vb.len() >= 64 * BLOCK_TOKENS);
            let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
            let next = next_block(cache, layer, table, b, blocks, kvh).map_or(vb.as_ptr(), |(_, v)| v.as_ptr());
            for s in 0..slots {
                let vp = vb.as_ptr().add(s * 64 + half * 32);
                prefetch(next.add(s * 64 + half * 32));
                prefetch(next.add(s * 64 + half * 32 + 16));
                let v = [_mm256_loadu_ps(vp), _mm256_loadu_ps(vp.add(8)), _mm256_loadu_ps(vp.add(16)), _mm256_loadu_ps(vp.add(24))];
                for g in 0..G {
                    let p = _mm256_set1_ps(*scores.get_unchecked(g * len + b * BLOCK_TOKENS + s));
                    for c in 0..4 {
                        acc[g][c] = _mm256_fmadd_ps(p, v[c], acc[g][c]);
                    }
                }
            }
        }
        for (g, a) in acc.iter().enumerate() {
            for (c, v) in a.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(g * 64 + half * 32 + c * 8), *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::quant::Kernel;

    /// The AVX-512 and AVX2 attention agree with the portable loops (what other CPUs
    /// run), for full and partial blocks and every group size the model may have.
    #[test]
    fn simd_attention_matches_the_portable_loops() {
        let mut seed = 17u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let (kv_heads, hd) = (2, 64);
        let mut cache = KvCache::new(1, 6, kv_heads, hd).unwrap();
        let table: Vec<u32> = vec![4, 0, 5, 2];
        for pos in 0..table.len() * BLOCK_TOKENS {
            let k: Vec<f32> = (0..kv_heads * hd).map(|_| next()).collect();
            let v: Vec<f32> = (0..kv_heads * hd).map(|_| next()).collect();
            cache.store(0, &table, pos, &k, &v);
        }
        fn run<const G: usize>(q: &[f32], cache: &KvCache, table: &[u32], len: usize, simd: F32Simd) -> Vec<f32> {
            let mut scores = vec![0f32; G * len];
            let mut out = vec![0f32; G * 64];
            // SAFETY: only the classes this CPU runs are passed in.
            match simd {
                F32Simd::Avx512 => unsafe { run_avx512::<G>(q, cache, table, len, &mut scores, &mut out) },
                F32Simd::Avx2 => unsafe { run_avx2::<G>(q, cache, table, len, &mut scores, &mut out) },
                F32Simd::Portable => attend64::<G, 0>(q, cache, 0, table, 1, len, 0.125, &mut scores, &mut out),
            };
            out
        }
        #[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
        unsafe fn run_avx512<const G: usize>(q: &[f32], cache: &KvCache, table: &[u32], len: usize, scores: &mut [f32], out: &mut [f32]) -> bool {
            attend64::<G, 2>(q, cache, 0, table, 1, len, 0.125, scores, out)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run_avx2<const G: usize>(q: &[f32], cache: &KvCache, table: &[u32], len: usize, scores: &mut [f32], out: &mut [f32]) -> bool {
            attend64::<G, 1>(q, cache, 0, table, 1, len, 0.125, scores, out)
        }
        fn check<const G: usize>(q: &[f32], cache: &KvCache, table: &[u32]) {
            let mut classes: Vec<F32Simd> = Kernel::available().into_iter().map(Kernel::f32_simd).collect();
            classes.dedup();
            for len in [1, 5, 16, 17, 40, 64] {
                let a = run::<G>(q, cache, table, len, F32Simd::Portable);
                assert!(a.iter().any(|&x| x != 0.0));
                for &simd in classes.iter().filter(|&&s| s != F32Simd::Portable) {
                    let b = run::<G>(q, cache, table, len, simd);
                    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                        assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{simd:?} G={G} len={len} at {i}: {x} vs {y}");
                    }
                }
            }
        }
        let q: Vec<f32> = (0..4 * hd).map(|_| next() * 4.0).collect();
        check::<1>(&q, &cache, &table);
        check::<2>(&q, &cache, &table);
        check::<3>(&q, &cache, &table);
        check::<4>(&q, &cache, &table);
    }
}
