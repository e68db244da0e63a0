//! The 256-bit tiles, built for 16 vector registers: `tile_avx2` (AVX2 + FMA,
//! `vpmaddubsw` + `vpmaddwd`), `tile_avxvnni` (AVX-VNNI's VEX `vpdpbusd`) and `tile_vnni`
//! (AVX-512 VNNI's EVEX `vpdpbusd` on 256-bit vectors, which has 32 registers but runs
//! the same tile).
//!
//! # Two tokens per accumulator
//! A block pair's products for one token come out as 8 i32 lanes, 4 per block. Adjacent
//! lanes are added in integers (`vphaddd`, exact) so that two tokens share one register:
//! `[t0 b, t0 b, t1 b, t1 b | t0 b', t0 b', t1 b', t1 b']` (`b'` = the pair's second
//! block). One convert, one scale product and one FMA then serve two tokens, and a tile
//! of 4 weight rows by 2 tokens needs 4 accumulators instead of 8: with the weights,
//! scales and constants it fits the 16 registers without spilling. A lone token runs
//! through the same integer sums (its lanes hold the same values), so its result does
//! not depend on whether it shared its tile: batch invariance.
//!
//! Per token, the sum is `(l0 + l4) + (l1 + l5)` over its four lanes, in that order on
//! every path, and the `m * s` offsets are a separate sum added after, also one order for
//! every path. Weights and activations are read through raw pointers taken once per tile.

use std::arch::x86_64::*;

use super::matmul::Tile;
use super::x86_256::{f16_scalar, pair_scales, pair_scales_f16};
use super::*;

/// How a class turns 32 bytes of weights and 32 of activations into 8 lanes, each the sum
/// of 4 adjacent products. `prep` runs once per weight row and half pair.
trait Dot16 {
    type W: Copy;
    /// Whether the sums leave out the `m * s` term (added after).
    const OFFSET: bool;
    unsafe fn prep(q: __m256i) -> Self::W;
    /// `dot(a, xa) + dot(b, xb)`: `[4 sums of block b | 4 of block b']`.
    unsafe fn dot2(a: Self::W, xa: __m256i, b: Self::W, xb: __m256i) -> __m256i;
    unsafe fn dot1(a: Self::W, xa: __m256i) -> __m256i;
    /// Two `dot2`s (two tokens against one weight row, or two rows against one token)
    /// with adjacent lanes added: `[first b, first b, second b, second b | .. b']`.
    #[inline(always)]
    unsafe fn two(w0: (Self::W, Self::W), x0: (__m256i, __m256i), w1: (Self::W, Self::W), x1: (__m256i, __m256i)) -> __m256i {
        _mm256_hadd_epi32(Self::dot2(w0.0, x0.0, w0.1, x0.1), Self::dot2(w1.0, x1.0, w1.1, x1.1))
    }
}

/// AVX2 on 4-bit weights: `q < 16` and `|qa| <= 127`, so a `vpmaddubsw` lane is at most
/// 3,810 and the two halves add in 16 bits before the one `vpmaddwd`.
struct Avx2Nibbles;
impl Dot16 for Avx2Nibbles {
    type W = __m256i;
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn prep(q: __m256i) -> __m256i {
        q
    }
    #[inline(always)]
    unsafe fn dot2(a: __m256i, xa: __m256i, b: __m256i, xb: __m256i) -> __m256i {
        let s = _mm256_add_epi16(_mm256_maddubs_epi16(a, xa), _mm256_maddubs_epi16(b, xb));
        _mm256_madd_epi16(s, _mm256_set1_epi16(1))
    }
    #[inline(always)]
    unsafe fn dot1(a: __m256i, xa: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(a, xa), _mm256_set1_epi16(1))
    }
    /// The 16-bit sums of the two tokens are added pairwise (`vphaddw`, at most 15,240)
    /// before one `vpmaddwd`: the same integers as the default, one instruction fewer.
    #[inline(always)]
    unsafe fn two(w0: (__m256i, __m256i), x0: (__m256i, __m256i), w1: (__m256i, __m256i), x1: (__m256i, __m256i)) -> __m256i {
        let s0 = _mm256_add_epi16(_mm256_maddubs_epi16(w0.0, x0.0), _mm256_maddubs_epi16(w0.1, x0.1));
        let s1 = _mm256_add_epi16(_mm256_maddubs_epi16(w1.0, x1.0), _mm256_maddubs_epi16(w1.1, x1.1));
        _mm256_madd_epi16(_mm256_hadd_epi16(s0, s1), _mm256_set1_epi16(1))
    }
}

/// AVX2 on 8-bit weights: `q - 128` as i8 is split once per row into `|q - 128|`
/// (unsigned) and its sign, which goes onto each token's activations (`vpsignb`); the
/// products are `(q - 128) * qa`, so the `m = -128 d` term is already in them.
struct Avx2Bytes;
impl Dot16 for Avx2Bytes {
    type W = (__m256i, __m256i);
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn prep(q: __m256i) -> (__m256i, __m256i) {
        let s = _mm256_xor_si256(q, _mm256_set1_epi8(-128));
        (_mm256_abs_epi8(s), s)
    }
    #[inline(always)]
    unsafe fn dot2(a: Self::W, xa: __m256i, b: Self::W, xb: __m256i) -> __m256i {
        // |(q - 128) * qa| pairs reach 32,512: each half gets its own vpmaddwd.
        _mm256_add_epi32(Self::dot1(a, xa), Self::dot1(b, xb))
    }
    #[inline(always)]
    unsafe fn dot1(a: Self::W, xa: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(a.0, _mm256_sign_epi8(xa, a.1)), _mm256_set1_epi16(1))
    }
}

/// AVX-VNNI: `vpdpbusd` takes unsigned weights and signed activations as they are.
struct AvxVnni;
impl Dot16 for AvxVnni {
    type W = __m256i;
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn prep(q: __m256i) -> __m256i {
        q
    }
    #[inline(always)]
    unsafe fn dot2(a: __m256i, xa: __m256i, b: __m256i, xb: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), a, xa), b, xb)
    }
    #[inline(always)]
    unsafe fn dot1(a: __m256i, xa: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), a, xa)
    }
}

/// AVX-512 VNNI on 256-bit vectors: the EVEX form of the same instruction.
struct Vnni256;
impl Dot16 for Vnni256 {
    type W = __m256i;
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn prep(q: __m256i) -> __m256i {
        q
    }
    #[inline(always)]
    unsafe fn dot2(a: __m256i, xa: __m256i, b: __m256i, xb: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), a, xa), b, xb)
    }
    #[inline(always)]
    unsafe fn dot1(a: __m256i, xa: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, xa)
    }
}

/// `[x0[0], x0[0], x1[0], x1[0], x0[1], x0[1], x1[1], x1[1]]`: the activation scales of a
/// block pair for two tokens, in the accumulators' lane order.
#[inline(always)]
unsafe fn mixed_scales(x0: *const f32, x1: *const f32) -> __m256 {
    let a = _mm_castpd_ps(_mm_load_sd(x0 as *const f64));
    let b = _mm_castpd_ps(_mm_load_sd(x1 as *const f64));
    let ab = _mm_unpacklo_ps(a, b);
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(ab), _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3))
}

/// `[w0[0], w0[0], w1[0], w1[0], w0[1], w0[1], w1[1], w1[1]]` from two rows' f16 pairs:
/// the weight scales of a block pair for two rows, in the accumulators' lane order.
#[inline(always)]
unsafe fn mixed_scales_f16(w0: *const half::f16, w1: *const half::f16) -> __m256 {
    let a = _mm_cvtsi32_si128((w0 as *const i32).read_unaligned());
    let b = _mm_cvtsi32_si128((w1 as *const i32).read_unaligned());
    let ab = _mm_cvtph_ps(_mm_unpacklo_epi16(a, b));
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(ab), _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3))
}

/// The same for a lone block: `[x0 x 2, x1 x 2, x0 x 2, x1 x 2]`.
#[inline(always)]
unsafe fn mixed_scales_single(x0: f32, x1: f32) -> __m256 {
    _mm256_setr_ps(x0, x0, x1, x1, x0, x0, x1, x1)
}

/// Per accumulator, `[(l0 + l4) + (l1 + l5), (l2 + l6) + (l3 + l7)]`: the two tokens'
/// sums, in lanes 0 and 1 of the pairs `hadd(half(a), half(b))` makes.
#[inline(always)]
unsafe fn half(v: __m256) -> __m128 {
    _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1))
}

/// Sums of four 8-lane vectors: `[sum(a), sum(b), sum(c), sum(d)]`.
#[inline(always)]
unsafe fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    let abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1))
}

/// Rows `i0..i0 + R` (R at most 4) by tokens `t0..t0 + T` (T = 1, 2 or 4): one
/// accumulator per row and token pair (a lone token fills a pair's first half).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<D: Dot16, const R: usize, const T: usize, const NIBBLES: bool>(
    tile: &Tile<'_>,
    i0: usize,
    x: &QActivations,
    t0: usize,
    out: *mut f32,
    ldo: usize,
) {
    const MAX_PAIRS: usize = 2;
    let pairs = T.div_ceil(2);
    debug_assert!(T == 1 || T == 2 || T == 4);
    let w = tile.w;
    let nb = w.blocks_per_row();
    let cols = w.cols;
    let r0 = tile.r0 + i0;
    // Raw pointers, once: the arrays may be owned or mapped.
    let (wq, wd, wm) = (w.qs.as_ptr(), w.d.as_ptr(), w.m.as_ptr());
    // Token k of the tile; a lone token stands in for its missing partner.
    let token = |k: usize| t0 + k.min(T - 1);
    let xq = |k: usize| x.qs.as_ptr().add(token(k) * cols) as *const u8;
    let xd = |k: usize| x.d.as_ptr().add(token(k) * nb);
    let row_bytes = if NIBBLES { nb * 16 } else { cols };
    let wq_row = |i: usize| wq.add((r0 + i) * row_bytes);
    let wd_row = |i: usize| wd.add((r0 + i) * nb);
    let mask = _mm256_set1_epi8(0x0F);
    let load = |p: *const u8| _mm256_loadu_si256(p as *const __m256i);

    let mut acc = [[_mm256_setzero_ps(); MAX_PAIRS]; R];
    // Row i's block pair from block b: 32 bytes at `b * 16` (4-bit), else two halves at
    // the interleaved offsets `lo`, `hi`.
    let unpack_pair = |i: usize, b: usize, lo: usize, hi: usize| {
        let (qa, qb) = if NIBBLES {
            let bytes = load(wq_row(i).add(b * 16));
            (_mm256_and_si256(bytes, mask), _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask))
        } else {
            (load(wq_row(i).add(lo)), load(wq_row(i).add(hi)))
        };
        (D::prep(qa), D::prep(qb))
    };
    let unpack_single = |i: usize, b: usize| {
        D::prep(if NIBBLES {
            let bytes = _mm_loadu_si128(wq_row(i).add(b * 16) as *const __m128i);
            let m = _mm_set1_epi8(0x0F);
            _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), m), _mm_and_si128(bytes, m))
        } else {
            load(wq_row(i).add(b * BLOCK))
        })
    };
    // With one token, rows go in pairs: accumulator q holds rows 2q and 2q + 1 (an odd
    // last row twice), with the same integers and products as a token pair's.
    let row_pairs = R.div_ceil(2);
    let partner = |q: usize| (2 * q + 1).min(R - 1);
    let mut b = 0;
    while b + 2 <= nb {
        let (lo, hi) = pair_offsets(nb, b);
        if T == 1 {
            let x = (load(xq(0).add(lo)), load(xq(0).add(hi)));
            let xs = pair_scales(xd(0).add(b));
            for q in 0..row_pairs {
                let (i, k) = (2 * q, partner(q));
                let sums = D::two(unpack_pair(i, b, lo, hi), x, unpack_pair(k, b, lo, hi), x);
                let wscale = mixed_scales_f16(wd_row(i).add(b), wd_row(k).add(b));
                acc[q][0] = _mm256_fmadd_ps(_mm256_mul_ps(wscale, xs), _mm256_cvtepi32_ps(sums), acc[q][0]);
            }
        } else {
            let mut xs = [_mm256_setzero_ps(); MAX_PAIRS];
            for p in 0..pairs {
                xs[p] = mixed_scales(xd(2 * p).add(b), xd(2 * p + 1).add(b));
            }
            for i in 0..R {
                let wrow = unpack_pair(i, b, lo, hi);
                let wscale = pair_scales_f16(wd_row(i).add(b));
                for p in 0..pairs {
                    let (x0, x1) = (xq(2 * p), xq(2 * p + 1));
                    let sums = D::two(wrow, (load(x0.add(lo)), load(x0.add(hi))), wrow, (load(x1.add(lo)), load(x1.add(hi))));
                    acc[i][p] = _mm256_fmadd_ps(_mm256_mul_ps(wscale, xs[p]), _mm256_cvtepi32_ps(sums), acc[i][p]);
                }
            }
        }
        b += 2;
    }
    if b < nb {
        // A lone last block, in value order: lanes 0..4 values 0..16, 4..8 values 16..32.
        let ws = |i: usize| f16_scalar(wd_row(i).add(b));
        if T == 1 {
            let x = load(xq(0).add(b * BLOCK));
            let xs = _mm256_set1_ps(*xd(0).add(b));
            for q in 0..row_pairs {
                let (i, k) = (2 * q, partner(q));
                let sums = _mm256_hadd_epi32(D::dot1(unpack_single(i, b), x), D::dot1(unpack_single(k, b), x));
                let wscale = mixed_scales_single(ws(i), ws(k));
                acc[q][0] = _mm256_fmadd_ps(_mm256_mul_ps(wscale, xs), _mm256_cvtepi32_ps(sums), acc[q][0]);
            }
        } else {
            for i in 0..R {
                let wq1 = unpack_single(i, b);
                let wscale = _mm256_set1_ps(ws(i));
                for p in 0..pairs {
                    let (k0, k1) = (2 * p, 2 * p + 1);
                    let sums = _mm256_hadd_epi32(D::dot1(wq1, load(xq(k0).add(b * BLOCK))), D::dot1(wq1, load(xq(k1).add(b * BLOCK))));
                    let xs = mixed_scales_single(*xd(k0).add(b), *xd(k1).add(b));
                    acc[i][p] = _mm256_fmadd_ps(_mm256_mul_ps(wscale, xs), _mm256_cvtepi32_ps(sums), acc[i][p]);
                }
            }
        }
    }
    // Sums: per accumulator, half() = [first, first, second, second] partial sums; hadd
    // adds each pair: the first (token 2p, or row 2q) in lane 0, the second in lane 1.
    let mut sums = [[0f32; 4]; 4];
    let firsts = |v: __m256| {
        let h = half(v);
        let two = _mm_hadd_ps(h, h);
        (_mm_cvtss_f32(two), _mm_cvtss_f32(_mm_shuffle_ps(two, two, 1)))
    };
    if T == 1 {
        for q in 0..row_pairs {
            let (first, second) = firsts(acc[q][0]);
            sums[0][2 * q] = first;
            sums[0][partner(q)] = if partner(q) == 2 * q { first } else { second };
        }
    } else {
        for i in 0..R {
            for p in 0..pairs {
                (sums[2 * p][i], sums[2 * p + 1][i]) = firsts(acc[i][p]);
            }
        }
    }
    for k in 0..T {
        let mut v = sums[k];
        if D::OFFSET {
            let off = offsets::<R>(w.m.len(), wm, r0, nb, x.s.as_ptr().add(token(k) * nb));
            for i in 0..R {
                v[i] += off[i];
            }
        }
        let o = out.add(token(k) * ldo + r0);
        for i in 0..R {
            *o.add(i) = v[i];
        }
    }
}

/// `sum_b m[r][b] * s[b]` for rows `r0..r0 + R`: eight blocks per FMA, lane-wise, then
/// the horizontal sums, then the last `nb % 8` blocks in scalars. One order for every
/// path, so a token's result does not depend on its tile.
#[inline(always)]
unsafe fn offsets<const R: usize>(m_len: usize, wm: *const half::f16, r0: usize, nb: usize, s: *const f32) -> [f32; 4] {
    debug_assert!((r0 + R) * nb <= m_len);
    let whole = nb / 8 * 8;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut c = 0;
    while c < whole {
        let sv = _mm256_loadu_ps(s.add(c));
        for i in 0..R {
            let m = _mm256_cvtph_ps(_mm_loadu_si128(wm.add((r0 + i) * nb + c) as *const __m128i));
            acc[i] = _mm256_fmadd_ps(m, sv, acc[i]);
        }
        c += 8;
    }
    let mut out = [0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), hsum4(acc[0], acc[1], acc[2], acc[3]));
    for i in 0..R {
        for c in whole..nb {
            out[i] += f16_scalar(wm.add((r0 + i) * nb + c)) * *s.add(c);
        }
    }
    out
}

/// A dispatcher tile of 4 rows by `C` tokens (at most 4): four tokens as two halves of
/// 2 rows (4 tokens share each unpacked weight pair, 4 accumulators), else tiles of two
/// tokens and one.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn split<D: Dot16, const R: usize, const C: usize, const NIBBLES: bool>(
    t: &Tile<'_>,
    i0: usize,
    x: &QActivations,
    t0: usize,
    out: *mut f32,
    ldo: usize,
) {
    match (R, C) {
        (4, 4) => {
            tile::<D, 2, 4, NIBBLES>(t, i0, x, t0, out, ldo);
            tile::<D, 2, 4, NIBBLES>(t, i0 + 2, x, t0, out, ldo);
        }
        (_, 3) => {
            tile::<D, R, 2, NIBBLES>(t, i0, x, t0, out, ldo);
            tile::<D, R, 1, NIBBLES>(t, i0, x, t0 + 2, out, ldo);
        }
        (_, 2) | (_, 4) => {
            let mut j = 0;
            while j < C {
                tile::<D, R, 2, NIBBLES>(t, i0, x, t0 + j, out, ldo);
                j += 2;
            }
        }
        _ => tile::<D, R, 1, NIBBLES>(t, i0, x, t0, out, ldo),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_avx2<const R: usize, const C: usize, const NIBBLES: bool>(
    t: &Tile<'_>,
    i0: usize,
    x: &QActivations,
    t0: usize,
    out: *mut f32,
    ldo: usize,
) {
    if NIBBLES {
        split::<Avx2Nibbles, R, C, NIBBLES>(t, i0, x, t0, out, ldo)
    } else {
        split::<Avx2Bytes, R, C, NIBBLES>(t, i0, x, t0, out, ldo)
    }
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(super) unsafe fn tile_avxvnni<const R: usize, const C: usize, const NIBBLES: bool>(
    t: &Tile<'_>,
    i0: usize,
    x: &QActivations,
    t0: usize,
    out: *mut f32,
    ldo: usize,
) {
    split::<AvxVnni, R, C, NIBBLES>(t, i0, x, t0, out, ldo)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn tile_vnni<const R: usize, const C: usize, const NIBBLES: bool>(
    t: &Tile<'_>,
    i0: usize,
    x: &QActivations,
    t0: usize,
    out: *mut f32,
    ldo: usize,
) {
    split::<Vnni256, R, C, NIBBLES>(t, i0, x, t0, out, ldo)
}
