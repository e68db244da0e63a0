//! Causal attention over a sequence's paged KV cache for a **tile** of up to
//! [`TILE_TOKENS`] consecutive tokens of one sequence and one KV head's group of query
//! heads ([`attend`]): the unit of work the forward pass hands to its threads. A decoding
//! sequence is a tile of one token (its heads still spread across cores); a prefill chunk
//! is cut into tiles, and each key and value block is read once per tile instead of once
//! per token, so a chunk that extends a long cached history runs from the L1 cache
//! instead of streaming the history from L3 for every token.
//!
//! Each token's attention is computed by the same operations in the same order whatever
//! tile it is in and whatever else is in the batch (a tile only interleaves the tokens'
//! independent accumulators), and the matrix kernels compute each (row, token) product
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

/// Most tokens in one tile: 8 tokens' scores for a context of 1,000 and 3 heads are 96 KB
/// (they stay in L2), and a key block is reused 8 times from L1.
pub const TILE_TOKENS: usize = 8;

/// What one attention call computes: the `n` tokens at positions `first_pos..first_pos + n`
/// of one sequence (block table `table`), for the query heads of KV head `kvh`. Token
/// `i`'s query values are `q[i * q_stride..]` (the token's `hidden` query values, all
/// heads). `n` is 1 to [`TILE_TOKENS`].
#[derive(Debug, Clone, Copy)]
pub struct TileQuery<'a> {
    pub table: &'a [u32],
    pub first_pos: usize,
    pub n: usize,
    pub q: &'a [f32],
    pub q_stride: usize,
    pub kvh: usize,
}

/// Attention of `tq`'s tokens over an f32 cache. Token `i`'s output is
/// `out[i * width..(i + 1) * width]`, `width = heads / kv_heads * head_dim` (that
/// group's heads). `scores` is scratch space, grown as needed.
pub fn attend(c: &LlamaConfig, layer: usize, cache: &KvCache, tq: &TileQuery, out: &mut [f32], scores: &mut Vec<f32>, simd: F32Simd) {
    let &TileQuery { table, first_pos, n, q, q_stride, kvh } = tq;
    assert!((1..=TILE_TOKENS).contains(&n), "a tile of {n} tokens");
    let group = c.heads / c.kv_heads;
    let tile = Tile { first_len: first_pos + 1, n };
    let need = n * group * tile.max_len();
    if scores.len() < need {
        scores.resize(need, 0.0);
    }
    assert!(q.len() >= (n - 1) * q_stride + c.heads * c.head_dim && out.len() >= n * group * c.head_dim);
    #[cfg(target_arch = "x86_64")]
    match simd {
        // SAFETY: the AVX-512 classes need AVX-512F/VL, AVX2 and FMA; every SIMD class
        // needs AVX2 and FMA (Kernel::supported).
        F32Simd::Avx512 => return unsafe { attend_group_avx512(c, layer, cache, table, tile, q, q_stride, kvh, out, scores) },
        F32Simd::Avx2 => return unsafe { attend_group_avx2(c, layer, cache, table, tile, q, q_stride, kvh, out, scores) },
        F32Simd::Portable => {}
    }
    let _ = simd;
    attend_group::<0>(c, layer, cache, table, tile, q, q_stride, kvh, out, scores)
}

/// The tokens of a tile: token `i` attends over positions `0..first_len + i`.
#[derive(Clone, Copy, Debug)]
struct Tile {
    first_len: usize,
    n: usize,
}

impl Tile {
    /// The last token's context length: the row stride of the scores.
    fn max_len(self) -> usize {
        self.first_len + self.n - 1
    }

    fn len(self, i: usize) -> usize {
        self.first_len + i
    }

    /// Where token `i`'s scores for head `g` (of `group`) start.
    fn scores_at(self, i: usize, g: usize, group: usize) -> usize {
        (i * group + g) * self.max_len()
    }
}

/// [`attend_group`] compiled for an instruction set: the crate is built for baseline
/// x86-64 (SSE2) and `attend_group` is `#[inline(always)]`, so each wrapper holds its own
/// build of it. `$level` picks the intrinsics inside (2: AVX-512, 1: AVX2).
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
            tile: Tile,
            q: &[f32],
            q_stride: usize,
            kvh: usize,
            out: &mut [f32],
            scores: &mut [f32],
        ) {
            attend_group::<$level>(c, layer, cache, table, tile, q, q_stride, kvh, out, scores)
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

/// One tile's attention for one KV head's query heads.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_group<const LEVEL: u8>(
    c: &LlamaConfig,
    layer: usize,
    cache: &KvCache,
    table: &[u32],
    tile: Tile,
    q_all: &[f32],
    q_stride: usize,
    kvh: usize,
    out: &mut [f32],
    scores: &mut [f32],
) {
    let hd = c.head_dim;
    let group = c.heads / c.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let q_at = |i: usize| &q_all[i * q_stride + kvh * group * hd..i * q_stride + (kvh + 1) * group * hd];
    let done = hd == 64
        && match group {
            1 => attend64::<1, LEVEL>(q_at, tile, cache, layer, table, kvh, scale, scores, out),
            2 => attend64::<2, LEVEL>(q_at, tile, cache, layer, table, kvh, scale, scores, out),
            3 => attend64::<3, LEVEL>(q_at, tile, cache, layer, table, kvh, scale, scores, out),
            4 => attend64::<4, LEVEL>(q_at, tile, cache, layer, table, kvh, scale, scores, out),
            _ => false,
        };
    if done {
        return;
    }
    // Any head size or group: the general loops, token by token.
    for i in 0..tile.n {
        let (q, len) = (q_at(i), tile.len(i));
        let o = &mut out[i * group * hd..(i + 1) * group * hd];
        let scores = &mut scores[tile.scores_at(i, 0, group)..];
        for (b, &block) in table.iter().enumerate().take(len.div_ceil(BLOCK_TOKENS)) {
            let (kb, _) = cache.block(layer, block, kvh);
            let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
            for s in 0..slots {
                for g in 0..group {
                    let qg = &q[g * hd..(g + 1) * hd];
                    let dot: f32 = (0..hd).map(|d| qg[d] * kb[d * BLOCK_TOKENS + s]).sum();
                    scores[g * tile.max_len() + b * BLOCK_TOKENS + s] = dot * scale;
                }
            }
        }
        for g in 0..group {
            softmax(&mut scores[g * tile.max_len()..g * tile.max_len() + len]);
            o[g * hd..(g + 1) * hd].fill(0.0);
        }
        for (b, &block) in table.iter().enumerate().take(len.div_ceil(BLOCK_TOKENS)) {
            let (_, vb) = cache.block(layer, block, kvh);
            let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
            for s in 0..slots {
                let value = &vb[s * hd..(s + 1) * hd];
                for g in 0..group {
                    axpy(scores[g * tile.max_len() + b * BLOCK_TOKENS + s], value, &mut o[g * hd..(g + 1) * hd]);
                }
            }
        }
    }
}

/// Attention of a tile's tokens for `G` query heads of 64 values each that share one
/// key/value head; writes token `i`'s outputs to `out[i * G * 64..]`. Keys are stored
/// dimension-major per block ([`KvCache::block`]), so a block's 16 scores per head are 64
/// multiply-adds of 16-wide vectors, in independent partial sums (bound by throughput,
/// not latency). Each key and value block is loaded once per tile for all its tokens and
/// heads. Returns true (it handled the case).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend64<'q, const G: usize, const LEVEL: u8>(
    q_at: impl Fn(usize) -> &'q [f32],
    tile: Tile,
    cache: &KvCache,
    layer: usize,
    table: &[u32],
    kvh: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) -> bool {
    if tile.n == 1 {
        // A decoding token: no tile-sized array to clear on every call.
        let mut qs = [[[0f32; 64]; G]; 1];
        scaled_queries(&q_at, tile, scale, &mut qs);
        return attend64_scaled::<G, LEVEL>(&qs, tile, cache, layer, table, kvh, scores, out);
    }
    let mut qs = [[[0f32; 64]; G]; TILE_TOKENS];
    scaled_queries(&q_at, tile, scale, &mut qs);
    attend64_scaled::<G, LEVEL>(&qs[..tile.n], tile, cache, layer, table, kvh, scores, out)
}

/// The tile's query values times `scale`, token by token, into `qs`.
#[inline(always)]
fn scaled_queries<'q, const G: usize>(q_at: &impl Fn(usize) -> &'q [f32], tile: Tile, scale: f32, qs: &mut [[[f32; 64]; G]]) {
    for (i, qi) in qs.iter_mut().enumerate().take(tile.n) {
        let q = q_at(i);
        for (g, qg) in qi.iter_mut().enumerate() {
            for (d, v) in qg.iter_mut().zip(&q[g * 64..(g + 1) * 64]) {
                *d = v * scale;
            }
        }
    }
}

/// [`attend64`] once the tile's `qs` are scaled.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend64_scaled<const G: usize, const LEVEL: u8>(
    qs: &[[[f32; 64]; G]],
    tile: Tile,
    cache: &KvCache,
    layer: usize,
    table: &[u32],
    kvh: usize,
    scores: &mut [f32],
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if LEVEL == 2 {
        // SAFETY: LEVEL is 2 only in `attend_group_avx512`, whose CPU check covers these.
        unsafe { attend64_avx512::<G>(qs, tile, cache, layer, table, kvh, scores, out) };
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    if LEVEL == 1 {
        // SAFETY: LEVEL is 1 only in `attend_group_avx2` (AVX2 + FMA checked).
        unsafe { attend64_avx2::<G>(qs, tile, cache, layer, table, kvh, scores, out) };
        return true;
    }
    for (i, qs) in qs.iter().enumerate() {
        let len = tile.len(i);
        let scores = &mut scores[tile.scores_at(i, 0, G)..];
        let row = tile.max_len();
        let blocks = len.div_ceil(BLOCK_TOKENS);
        for (b, &block) in table.iter().enumerate().take(blocks) {
            let (kb, _) = cache.block(layer, block, kvh);
            let kt: &[f32; 64 * BLOCK_TOKENS] = kb.try_into().expect("a block of 64-value keys");
            let mut part = [[[0f32; BLOCK_TOKENS]; 4]; G];
            for d4 in 0..16 {
                for p in 0..4 {
                    let d = d4 * 4 + p;
                    let keys: &[f32; BLOCK_TOKENS] = kt[d * BLOCK_TOKENS..(d + 1) * BLOCK_TOKENS].try_into().expect("16 slots");
                    for g in 0..G {
                        let qd = qs[g][d];
                        for s in 0..BLOCK_TOKENS {
                            part[g][p][s] += qd * keys[s];
                        }
                    }
                }
            }
            // Only the block's filled slots count (the rest hold other data).
            let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
            for g in 0..G {
                let dst = &mut scores[g * row + b * BLOCK_TOKENS..g * row + b * BLOCK_TOKENS + slots];
                for (s, v) in dst.iter_mut().enumerate() {
                    *v = (part[g][0][s] + part[g][1][s]) + (part[g][2][s] + part[g][3][s]);
                }
            }
        }
        for g in 0..G {
            softmax(&mut scores[g * row..g * row + len]);
        }
        let mut acc = [[0f32; 64]; G];
        for (b, &block) in table.iter().enumerate().take(blocks) {
            let (_, vb) = cache.block(layer, block, kvh);
            let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
            for s in 0..slots {
                let value: &[f32; 64] = vb[s * 64..(s + 1) * 64].try_into().expect("64 values");
                for g in 0..G {
                    let p = scores[g * row + b * BLOCK_TOKENS + s];
                    for d in 0..64 {
                        acc[g][d] += p * value[d];
                    }
                }
            }
        }
        for (g, a) in acc.iter().enumerate() {
            out[(i * G + g) * 64..(i * G + g + 1) * 64].copy_from_slice(a);
        }
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

/// The value pass of a SIMD class, block by block while the block is in L1, with the
/// next block prefetched: two tokens' heads at a time through `$block::<G, 2>` (one
/// through `$block::<G, 1>` when 4 heads would overflow the registers), the sums kept in
/// `out` between blocks.
macro_rules! value_pass {
    ($block:ident, $g:ident, $tile:ident, $cache:ident, $layer:ident, $table:ident, $kvh:ident, $blocks:ident, $scores:ident, $out:ident) => {
        $out[..$tile.n * $g * 64].fill(0.0);
        for (b, &block) in $table.iter().enumerate().take($blocks) {
            let (_, vb) = $cache.block($layer, block, $kvh);
            assert!(vb.len() >= 64 * BLOCK_TOKENS);
            let next = next_block($cache, $layer, $table, b, $blocks, $kvh).map_or(vb.as_ptr(), |(_, v)| v.as_ptr());
            for s in 0..BLOCK_TOKENS {
                for line in 0..4 {
                    prefetch(next.add(s * 64 + line * 16));
                }
            }
            let mut i = 0;
            while i < $tile.n {
                if $g <= 3 && i + 1 < $tile.n {
                    $block::<$g, 2>($tile, i, b, vb, $scores, $out);
                    i += 2;
                } else {
                    $block::<$g, 1>($tile, i, b, vb, $scores, $out);
                    i += 1;
                }
            }
        }
    };
}

/// The slots of block `b` that the `T` tokens `first..` of a tile see in a value pass:
/// the block's first position, the slots all of them see (the first token's), and each
/// token's count; `None` when none sees any. Checks the buffers' sizes.
#[inline(always)]
fn value_slots<const G: usize, const T: usize>(tile: Tile, first: usize, b: usize, vb: &[f32], scores: &[f32], out: &[f32]) -> Option<(usize, usize, [usize; T])> {
    let start = b * BLOCK_TOKENS;
    // The first token's slots, and one more per later token.
    let seen: [usize; T] = std::array::from_fn(|t| tile.len(first + t).saturating_sub(start).min(BLOCK_TOKENS));
    if seen[T - 1] == 0 {
        return None;
    }
    assert!(first + T <= tile.n && out.len() >= (first + T) * G * 64 && vb.len() >= BLOCK_TOKENS * 64);
    assert!(scores.len() >= tile.scores_at(first + T - 1, G - 1, G) + start + seen[T - 1]);
    Some((start, seen[0], seen))
}

/// [`attend64`] with AVX-512 intrinsics: block by block, each token of the tile in turn
/// while the block's keys are in L1; a block's 16 scores per head are 64 FMAs of 16-wide
/// vectors (keys dimension-major) in 4 independent chains per head. The value pass is
/// [`value_block_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn attend64_avx512<const G: usize>(
    qs: &[[[f32; 64]; G]],
    tile: Tile,
    cache: &KvCache,
    layer: usize,
    table: &[u32],
    kvh: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let row = tile.max_len();
    assert!(qs.len() == tile.n && scores.len() >= tile.n * G * row && out.len() >= tile.n * G * 64);
    let blocks = row.div_ceil(BLOCK_TOKENS);
    assert!(table.len() >= blocks);
    for (b, &block) in table.iter().enumerate().take(blocks) {
        let (kb, _) = cache.block(layer, block, kvh);
        assert!(kb.len() >= 64 * BLOCK_TOKENS);
        let kp = kb.as_ptr();
        let next = next_block(cache, layer, table, b, blocks, kvh).map_or(kp, |(k, _)| k.as_ptr());
        for (i, qs) in qs.iter().enumerate() {
            let len = tile.len(i);
            if b * BLOCK_TOKENS >= len {
                continue;
            }
            let mut part = [[_mm512_setzero_ps(); 4]; G];
            for d4 in 0..16 {
                for p in 0..4 {
                    let d = d4 * 4 + p;
                    if i == 0 {
                        // One line per dimension: the next block's 64 key lines over this one.
                        prefetch(next.add(d * BLOCK_TOKENS));
                    }
                    let keys = _mm512_loadu_ps(kp.add(d * BLOCK_TOKENS));
                    for g in 0..G {
                        part[g][p] = _mm512_fmadd_ps(_mm512_set1_ps(qs[g][d]), keys, part[g][p]);
                    }
                }
            }
            let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
            let k: __mmask16 = if slots == 16 { 0xFFFF } else { (1u16 << slots) - 1 };
            for (g, part) in part.iter().enumerate() {
                let sum = _mm512_add_ps(_mm512_add_ps(part[0], part[1]), _mm512_add_ps(part[2], part[3]));
                _mm512_mask_storeu_ps(scores.as_mut_ptr().add(tile.scores_at(i, g, G) + b * BLOCK_TOKENS), k, sum);
            }
        }
    }
    for i in 0..tile.n {
        for g in 0..G {
            let at = tile.scores_at(i, g, G);
            simd::x86::softmax_avx512(&mut scores[at..at + tile.len(i)]);
        }
    }
    // Values, block by block while the block is in L1: two tokens' heads at a time (one
    // token when 4 heads would overflow the 32 registers), all 64 output dimensions per
    // pass, the sums kept in `out` between blocks.
    value_pass!(value_block_avx512, G, tile, cache, layer, table, kvh, blocks, scores, out);
}

/// The value pass of [`attend64_avx512`] over block `b` (values `vb`) for the `T` tokens
/// `first..first + T` of a tile: adds `p[token][g][s] * v[s][d]` for the block's slots
/// `s` that each token sees to `out[(token * G + g) * 64 + d]`, slot by slot in order, so
/// a token's bits do not depend on which token it is paired with. `T * G * 4`
/// accumulators stay in registers over the block's slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
#[inline]
unsafe fn value_block_avx512<const G: usize, const T: usize>(tile: Tile, first: usize, b: usize, vb: &[f32], scores: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let Some((start, shared, seen)) = value_slots::<G, T>(tile, first, b, vb, scores, out) else { return };
    macro_rules! weight {
        ($t:expr, $g:expr, $s:expr) => {
            _mm512_set1_ps(*scores.get_unchecked(tile.scores_at(first + $t, $g, G) + start + $s))
        };
    }
    let o = out.as_mut_ptr().add(first * G * 64);
    let mut acc = [[[_mm512_setzero_ps(); 4]; G]; T];
    for t in 0..T {
        for g in 0..G {
            for c in 0..4 {
                acc[t][g][c] = _mm512_loadu_ps(o.add((t * G + g) * 64 + c * 16));
            }
        }
    }
    let values = |s: usize| {
        let vp = vb.as_ptr().add(s * 64);
        [_mm512_loadu_ps(vp), _mm512_loadu_ps(vp.add(16)), _mm512_loadu_ps(vp.add(32)), _mm512_loadu_ps(vp.add(48))]
    };
    for s in 0..shared {
        let v = values(s);
        for t in 0..T {
            for g in 0..G {
                let w = weight!(t, g, s);
                for c in 0..4 {
                    acc[t][g][c] = _mm512_fmadd_ps(w, v[c], acc[t][g][c]);
                }
            }
        }
    }
    // Later tokens' extra slots, in order.
    for t in 1..T {
        for s in shared..seen[t] {
            let v = values(s);
            for g in 0..G {
                let w = weight!(t, g, s);
                for c in 0..4 {
                    acc[t][g][c] = _mm512_fmadd_ps(w, v[c], acc[t][g][c]);
                }
            }
        }
    }
    for t in 0..T {
        for g in 0..G {
            for c in 0..4 {
                _mm512_storeu_ps(o.add((t * G + g) * 64 + c * 16), acc[t][g][c]);
            }
        }
    }
}

/// [`attend64`] with AVX2 + FMA intrinsics: a block's 16 scores per head are 64 FMAs of
/// two 8-wide vectors (keys dimension-major), in 2 chains per head, for each token of the
/// tile in turn while the block's keys are in L1; the value pass is [`value_rows_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn attend64_avx2<const G: usize>(
    qs: &[[[f32; 64]; G]],
    tile: Tile,
    cache: &KvCache,
    layer: usize,
    table: &[u32],
    kvh: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let row = tile.max_len();
    assert!(qs.len() == tile.n && scores.len() >= tile.n * G * row && out.len() >= tile.n * G * 64);
    let blocks = row.div_ceil(BLOCK_TOKENS);
    assert!(table.len() >= blocks);
    let mut tail = [0f32; BLOCK_TOKENS];
    for (b, &block) in table.iter().enumerate().take(blocks) {
        let (kb, _) = cache.block(layer, block, kvh);
        assert!(kb.len() >= 64 * BLOCK_TOKENS);
        let kp = kb.as_ptr();
        let next = next_block(cache, layer, table, b, blocks, kvh).map_or(kp, |(k, _)| k.as_ptr());
        for (i, qs) in qs.iter().enumerate() {
            let len = tile.len(i);
            if b * BLOCK_TOKENS >= len {
                continue;
            }
            // part[g][chain][half]: slots 0..8 and 8..16.
            let mut part = [[[_mm256_setzero_ps(); 2]; 2]; G];
            for d2 in 0..32 {
                for p in 0..2 {
                    let d = d2 * 2 + p;
                    if i == 0 {
                        prefetch(next.add(d * BLOCK_TOKENS));
                    }
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
                let dst = scores.as_mut_ptr().add(tile.scores_at(i, g, G) + b * BLOCK_TOKENS);
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
    }
    for i in 0..tile.n {
        for g in 0..G {
            let at = tile.scores_at(i, g, G);
            simd::x86::softmax_avx2(&mut scores[at..at + tile.len(i)]);
        }
    }
    // Values, block by block while the block is in L1: two tokens' heads at a time (one
    // token when 4 heads would overflow the 16 registers), 16 output dimensions per
    // pass, the sums kept in `out` between blocks.
    value_pass!(value_block_avx2, G, tile, cache, layer, table, kvh, blocks, scores, out);
}

/// The value pass of [`attend64_avx2`] over block `b` (values `vb`) for the `T` tokens
/// `first..first + T` of a tile: adds `p[token][g][s] * v[s][d]` for the block's slots
/// `s` that each token sees to `out[(token * G + g) * 64 + d]`, slot by slot in order, so
/// a token's bits do not depend on which token it is paired with. Per pass of 16
/// dimensions, `T * G * 2` accumulators stay in registers over the block's slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn value_block_avx2<const G: usize, const T: usize>(tile: Tile, first: usize, b: usize, vb: &[f32], scores: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let Some((start, shared, seen)) = value_slots::<G, T>(tile, first, b, vb, scores, out) else { return };
    macro_rules! weight {
        ($t:expr, $g:expr, $s:expr) => {
            _mm256_set1_ps(*scores.get_unchecked(tile.scores_at(first + $t, $g, G) + start + $s))
        };
    }
    for quarter in 0..4 {
        let o = out.as_mut_ptr().add(first * G * 64 + quarter * 16);
        let mut acc = [[[_mm256_setzero_ps(); 2]; G]; T];
        for t in 0..T {
            for g in 0..G {
                acc[t][g] = [_mm256_loadu_ps(o.add((t * G + g) * 64)), _mm256_loadu_ps(o.add((t * G + g) * 64 + 8))];
            }
        }
        for s in 0..shared {
            let vp = vb.as_ptr().add(s * 64 + quarter * 16);
            let v = [_mm256_loadu_ps(vp), _mm256_loadu_ps(vp.add(8))];
            for t in 0..T {
                for g in 0..G {
                    let w = weight!(t, g, s);
                    acc[t][g][0] = _mm256_fmadd_ps(w, v[0], acc[t][g][0]);
                    acc[t][g][1] = _mm256_fmadd_ps(w, v[1], acc[t][g][1]);
                }
            }
        }
        // Later tokens' extra slots, in order.
        for t in 1..T {
            for s in shared..seen[t] {
                let vp = vb.as_ptr().add(s * 64 + quarter * 16);
                let v = [_mm256_loadu_ps(vp), _mm256_loadu_ps(vp.add(8))];
                for g in 0..G {
                    let w = weight!(t, g, s);
                    acc[t][g][0] = _mm256_fmadd_ps(w, v[0], acc[t][g][0]);
                    acc[t][g][1] = _mm256_fmadd_ps(w, v[1], acc[t][g][1]);
                }
            }
        }
        for t in 0..T {
            for g in 0..G {
                _mm256_storeu_ps(o.add((t * G + g) * 64), acc[t][g][0]);
                _mm256_storeu_ps(o.add((t * G + g) * 64 + 8), acc[t][g][1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::quant::Kernel;

    fn cache_and_table() -> (KvCache, Vec<u32>) {
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
        (cache, table)
    }

    /// Queries for `TILE_TOKENS + 1` tokens of a model with 2 KV heads of `group` query heads.
    fn queries(group: usize) -> Vec<f32> {
        (0..(TILE_TOKENS + 1) * 2 * group * 64).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 8.0).collect()
    }

    fn config(group: usize) -> LlamaConfig {
        LlamaConfig {
            architecture: "llama".into(),
            name: "test".into(),
            layers: 1,
            hidden: 2 * group * 64,
            ffn: 256,
            heads: 2 * group,
            kv_heads: 2,
            head_dim: 64,
            vocab: 16,
            context_length: 4 * BLOCK_TOKENS,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            tied_embeddings: true,
        }
    }

    /// The tile's outputs (`n` tokens from `first_pos`, KV head 1) with the loops of `simd`.
    fn run(group: usize, cache: &KvCache, table: &[u32], first_pos: usize, n: usize, simd: F32Simd) -> Vec<f32> {
        let c = config(group);
        let q = queries(group);
        let stride = c.heads * 64;
        let mut out = vec![f32::NAN; n * group * 64];
        let tq = TileQuery { table, first_pos, n, q: &q[first_pos % 2 * stride..], q_stride: stride, kvh: 1 };
        attend(&c, 0, cache, &tq, &mut out, &mut Vec::new(), simd);
        out
    }

    fn classes() -> Vec<F32Simd> {
        let mut classes: Vec<F32Simd> = Kernel::available().into_iter().map(Kernel::f32_simd).collect();
        classes.push(F32Simd::Portable);
        classes.sort_by_key(|c| format!("{c:?}"));
        classes.dedup();
        classes
    }

    /// The AVX-512 and AVX2 attention agree with the portable loops (what other CPUs
    /// run), for full and partial blocks and every group size the model may have.
    #[test]
    fn simd_attention_matches_the_portable_loops() {
        let (cache, table) = cache_and_table();
        for group in 1..=4 {
            for first_pos in [0, 4, 15, 16, 39, 56] {
                let n = TILE_TOKENS.min(table.len() * BLOCK_TOKENS - first_pos);
                let a = run(group, &cache, &table, first_pos, n, F32Simd::Portable);
                assert!(a.iter().all(|x| x.is_finite()) && a.iter().any(|&x| x != 0.0));
                for simd in classes() {
                    let b = run(group, &cache, &table, first_pos, n, simd);
                    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                        assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{simd:?} group={group} from {first_pos} at {i}: {x} vs {y}");
                    }
                }
            }
        }
    }

    /// A token's output is bit-identical whether it is alone or anywhere in a tile, with
    /// every instruction set: what keeps chunked prefill and decode batch-invariant.
    #[test]
    fn a_token_gets_the_same_bits_in_any_tile() {
        let (cache, table) = cache_and_table();
        for simd in classes() {
            for group in [1, 3, 4] {
                for first_pos in [0, 9, 16, 30] {
                    let tile = run(group, &cache, &table, first_pos, TILE_TOKENS, simd);
                    for i in 0..TILE_TOKENS {
                        let pos = first_pos + i;
                        // The same query values, alone at `pos`.
                        let c = config(group);
                        let q = queries(group);
                        let stride = c.heads * 64;
                        let mut alone = vec![f32::NAN; group * 64];
                        let tq = TileQuery { table: &table, first_pos: pos, n: 1, q: &q[(first_pos % 2 + i) * stride..], q_stride: stride, kvh: 1 };
                        attend(&c, 0, &cache, &tq, &mut alone, &mut Vec::new(), simd);
                        let w = group * 64;
                        let same = tile[i * w..(i + 1) * w].iter().zip(&alone).all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same, "{simd:?} group={group}: token {i} of the tile from {first_pos} differs from it alone");
                    }
                }
            }
        }
    }
}
