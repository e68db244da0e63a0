//! `tile_vnni`: AVX-512 VNNI's EVEX `vpdpbusd` on 256-bit vectors (32 registers, room
//! for a 4 x 4 tile of accumulators), and the 256-bit loads and scale vectors the other
//! tiles share. The tiles for 16 registers are in `x86_ymm16`.
//!
//! The body goes two blocks per step, one weight row at a time: a row's block pair is
//! unpacked once into registers and met by each token's activations, with the tokens'
//! scales held in registers.
//!
//! The `m * s` offsets of a row are added lane-wise to its accumulators, eight blocks per
//! FMA, and the horizontal sums of four rows are one shuffle tree and one 128-bit store.

use std::arch::x86_64::*;

use half::f16;

use super::matmul::Tile;
use super::*;

/// `[v[b] x 4, v[b+1] x 4]`: the per-lane scale of a block pair, from two f16 (F16C).
#[inline(always)]
pub(super) unsafe fn pair_scales_f16(v: *const f16) -> __m256 {
    let two = _mm_cvtph_ps(_mm_cvtsi32_si128((v as *const i32).read_unaligned()));
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))
}

/// The same from two f32.
#[inline(always)]
pub(super) unsafe fn pair_scales(v: *const f32) -> __m256 {
    let two = _mm_castpd_ps(_mm_load_sd(v as *const f64));
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))
}

/// One f16 as f32 (F16C).
#[inline(always)]
pub(super) unsafe fn f16_scalar(v: *const f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from((v as *const u16).read_unaligned()))))
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// `[sum(a), sum(b), sum(c), sum(d)]`.
#[inline(always)]
unsafe fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    let abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1))
}

/// The 64 unsigned `q` of blocks `b`, `b + 1` of a row as (values 0..16 of both, values
/// 16..32 of both), the order of the activations' pair layout.
#[inline(always)]
pub(super) unsafe fn load_pair<const NIBBLES: bool>(w: &QMatrix, row: usize, b: usize) -> (__m256i, __m256i) {
    if NIBBLES {
        let bytes = _mm256_loadu_si256(w.qs.as_ptr().add((row * w.blocks_per_row() + b) * 16) as *const __m256i);
        let mask = _mm256_set1_epi8(0x0F);
        (_mm256_and_si256(bytes, mask), _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask))
    } else {
        let (lo, hi) = pair_offsets(w.blocks_per_row(), b);
        let p = w.qs.as_ptr().add(row * w.cols);
        (_mm256_loadu_si256(p.add(lo) as *const __m256i), _mm256_loadu_si256(p.add(hi) as *const __m256i))
    }
}

/// The 32 unsigned `q` of a lone last block, in value order.
#[inline(always)]
pub(super) unsafe fn load_single<const NIBBLES: bool>(w: &QMatrix, row: usize, b: usize) -> __m256i {
    if NIBBLES {
        let bytes = _mm_loadu_si128(w.qs.as_ptr().add((row * w.blocks_per_row() + b) * 16) as *const __m128i);
        let mask = _mm_set1_epi8(0x0F);
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask), _mm_and_si128(bytes, mask))
    } else {
        _mm256_loadu_si256(w.qs.as_ptr().add(row * w.cols + b * BLOCK) as *const __m256i)
    }
}

/// How a class turns 32 bytes of weights and 32 of activations into 8 lanes of 4-product
/// sums. `prep` runs once per weight row and block (or half pair), `dot` once per token.
trait Dot {
    type W: Copy;
    /// Whether the class's sums leave out the `m * s` term (added after).
    const OFFSET: bool;
    unsafe fn prep(q: __m256i) -> Self::W;
    /// `dot(a, xa) + dot(b, xb)`.
    unsafe fn dot2(a: Self::W, xa: __m256i, b: Self::W, xb: __m256i) -> __m256i;
    unsafe fn dot1(a: Self::W, xa: __m256i) -> __m256i;
}

/// AVX-512 VNNI on 256-bit vectors (EVEX `vpdpbusd`, 32 registers).
struct Vnni256;
impl Dot for Vnni256 {
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

/// Rows `i0..i0 + R` by tokens `t0..t0 + C`, one weight row at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<D: Dot, const R: usize, const C: usize, const NIBBLES: bool>(
    tile: &Tile<'_>,
    i0: usize,
    x: &QActivations,
    t0: usize,
    out: *mut f32,
    ldo: usize,
) {
    let w = tile.w;
    let nb = w.blocks_per_row();
    let cols = w.cols;
    let row = |i: usize| tile.r0 + i0 + i;
    let xrow = |j: usize| x.qs.as_ptr().add((t0 + j) * cols);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut b = 0;
    while b + 2 <= nb {
        let (lo, hi) = pair_offsets(nb, b);
        let mut xd = [_mm256_setzero_ps(); C];
        for j in 0..C {
            xd[j] = pair_scales(x.d.as_ptr().add((t0 + j) * nb + b));
        }
        for i in 0..R {
            let (qa, qb) = load_pair::<NIBBLES>(w, row(i), b);
            let (wa, wb) = (D::prep(qa), D::prep(qb));
            let wd = pair_scales_f16(w.d.as_ptr().add(row(i) * nb + b));
            for j in 0..C {
                let xa = _mm256_loadu_si256(xrow(j).add(lo) as *const __m256i);
                let xb = _mm256_loadu_si256(xrow(j).add(hi) as *const __m256i);
                let dot = D::dot2(wa, xa, wb, xb);
                acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(wd, xd[j]), _mm256_cvtepi32_ps(dot), acc[i][j]);
            }
        }
        b += 2;
    }
    if b < nb {
        for i in 0..R {
            let wq = D::prep(load_single::<NIBBLES>(w, row(i), b));
            let wd = _mm256_set1_ps(f16_scalar(w.d.as_ptr().add(row(i) * nb + b)));
            for j in 0..C {
                let xq = _mm256_loadu_si256(xrow(j).add(b * BLOCK) as *const __m256i);
                let xd = _mm256_set1_ps(*x.d.get_unchecked((t0 + j) * nb + b));
                acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(wd, xd), _mm256_cvtepi32_ps(D::dot1(wq, xq)), acc[i][j]);
            }
        }
    }
    // Offsets, eight blocks per FMA into the accumulators; the last `nb % 8` in scalars.
    let whole = nb / 8 * 8;
    let mut tail = [[0f32; C]; R];
    if D::OFFSET {
        let mut c = 0;
        while c < whole {
            for i in 0..R {
                let m = _mm256_cvtph_ps(_mm_loadu_si128(w.m.as_ptr().add(row(i) * nb + c) as *const __m128i));
                for j in 0..C {
                    let s = _mm256_loadu_ps(x.s.as_ptr().add((t0 + j) * nb + c));
                    acc[i][j] = _mm256_fmadd_ps(m, s, acc[i][j]);
                }
            }
            c += 8;
        }
        for i in 0..R {
            for c in whole..nb {
                let m = f16_scalar(w.m.as_ptr().add(row(i) * nb + c));
                for j in 0..C {
                    tail[i][j] += m * *x.s.get_unchecked((t0 + j) * nb + c);
                }
            }
        }
    }
    for j in 0..C {
        let o = out.add((t0 + j) * ldo + tile.r0 + i0);
        if R == 4 {
            let t = _mm_setr_ps(tail[0][j], tail[1][j], tail[2][j], tail[3][j]);
            _mm_storeu_ps(o, _mm_add_ps(hsum4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]), t));
        } else {
            for i in 0..R {
                *o.add(i) = hsum(acc[i][j]) + tail[i][j];
            }
        }
    }
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
    tile::<Vnni256, R, C, NIBBLES>(t, i0, x, t0, out, ldo)
}
