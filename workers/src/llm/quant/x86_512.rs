//! `tile_vnni512`: the AVX-512 VNNI tile on 512-bit vectors, four blocks per step, with
//! its loads and horizontal sums (the pair and lone block after the quads reuse the
//! 256-bit loads of `x86_256`).

use std::arch::x86_64::*;

use half::f16;

use super::matmul::Tile;
use super::x86_256::{f16_scalar, load_pair, load_single, pair_scales, pair_scales_f16};
use super::*;

/// `[v[0] x 4, v[1] x 4, v[2] x 4, v[3] x 4]` from four f16 values: the per-lane
/// scale of a block quad.
#[inline(always)]
unsafe fn quad_scales_f16(v: *const f16) -> __m512 {
    let four = _mm_cvtph_ps(_mm_loadl_epi64(v as *const __m128i));
    _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), _mm512_castps128_ps512(four))
}

/// [`quad_scales_f16`] from four f32 values.
#[inline(always)]
unsafe fn quad_scales(v: *const f32) -> __m512 {
    let four = _mm_loadu_ps(v);
    _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), _mm512_castps128_ps512(four))
}

/// Sums of four 512-bit accumulators, as `[sum(a), sum(b), sum(c), sum(d)]`.
#[inline(always)]
unsafe fn hsum4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
    let half = |v: __m512| _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    let ab = _mm256_hadd_ps(half(a), half(b));
    let cd = _mm256_hadd_ps(half(c), half(d));
    let abcd = _mm256_hadd_ps(ab, cd);
    _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1))
}

/// The VNNI kernel on 512-bit vectors: four blocks per step (two `vpdpbusd` per
/// row and token), then the 256-bit pair step and the lone block for what is left.
/// The `m * s` offsets are added to the accumulators lane-wise (16 blocks per FMA)
/// before the horizontal sums, four rows at a time.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn tile_vnni512<const R: usize, const C: usize, const NIBBLES: bool>(
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
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mask = _mm512_set1_epi8(0x0F);
    let quads = nb / 4;
    for q in 0..quads {
        let b = 4 * q;
        let mut wa = [_mm512_setzero_si512(); R];
        let mut wb = [_mm512_setzero_si512(); R];
        let mut wd = [_mm512_setzero_ps(); R];
        for i in 0..R {
            if NIBBLES {
                let bytes = _mm512_loadu_si512(w.qs.as_ptr().add((row(i) * nb + b) * 16) as *const __m512i);
                wa[i] = _mm512_and_si512(bytes, mask);
                wb[i] = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), mask);
            } else {
                let p = w.qs.as_ptr().add(row(i) * cols + b * BLOCK);
                wa[i] = _mm512_loadu_si512(p as *const __m512i);
                wb[i] = _mm512_loadu_si512(p.add(64) as *const __m512i);
            }
            wd[i] = quad_scales_f16(w.d.as_ptr().add(row(i) * nb + b));
        }
        for j in 0..C {
            let xp = x.qs.as_ptr().add((t0 + j) * cols + b * BLOCK);
            let xa = _mm512_loadu_si512(xp as *const __m512i);
            let xb = _mm512_loadu_si512(xp.add(64) as *const __m512i);
            let xd = quad_scales(x.d.as_ptr().add((t0 + j) * nb + b));
            for i in 0..R {
                let dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wa[i], xa), wb[i], xb);
                acc[i][j] = _mm512_fmadd_ps(_mm512_mul_ps(wd[i], xd), _mm512_cvtepi32_ps(dot), acc[i][j]);
            }
        }
    }
    // A pair and/or a lone block after the quads: the 256-bit step, widened.
    let mut b = quads * 4;
    if nb - b >= 2 {
        let mut wa = [_mm256_setzero_si256(); R];
        let mut wb = [_mm256_setzero_si256(); R];
        let mut wd = [_mm256_setzero_ps(); R];
        for i in 0..R {
            let (a, bb) = load_pair::<NIBBLES>(w, row(i), b);
            wa[i] = a;
            wb[i] = bb;
            wd[i] = pair_scales_f16(w.d.as_ptr().add(row(i) * nb + b));
        }
        let (lo, hi) = pair_offsets(nb, b);
        for j in 0..C {
            let xp = x.qs.as_ptr().add((t0 + j) * cols);
            let xa = _mm256_loadu_si256(xp.add(lo) as *const __m256i);
            let xb = _mm256_loadu_si256(xp.add(hi) as *const __m256i);
            let xd = pair_scales(x.d.as_ptr().add((t0 + j) * nb + b));
            for i in 0..R {
                let dot = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), wa[i], xa), wb[i], xb);
                let v = _mm256_fmadd_ps(_mm256_mul_ps(wd[i], xd), _mm256_cvtepi32_ps(dot), _mm256_setzero_ps());
                acc[i][j] = _mm512_add_ps(acc[i][j], _mm512_castps256_ps512(v));
            }
        }
        b += 2;
    }
    if b < nb {
        for i in 0..R {
            let wq = load_single::<NIBBLES>(w, row(i), b);
            let wd = _mm256_set1_ps(f16_scalar(w.d.as_ptr().add(row(i) * nb + b)));
            for j in 0..C {
                let xq = _mm256_loadu_si256(x.qs.as_ptr().add((t0 + j) * cols + b * BLOCK) as *const __m256i);
                let xd = _mm256_set1_ps(*x.d.get_unchecked((t0 + j) * nb + b));
                let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wq, xq);
                let v = _mm256_mul_ps(_mm256_mul_ps(wd, xd), _mm256_cvtepi32_ps(dot));
                acc[i][j] = _mm512_add_ps(acc[i][j], _mm512_castps256_ps512(v));
            }
        }
    }
    // Offsets: sum over blocks of m[r][b] * s[t][b], 16 blocks per FMA, lane-wise
    // into the accumulators (the horizontal sum below adds every lane).
    let mut c = 0;
    while c < nb {
        let n = (nb - c).min(16);
        let k: __mmask16 = if n == 16 { 0xFFFF } else { (1u16 << n) - 1 };
        let mut wm = [_mm512_setzero_ps(); R];
        for i in 0..R {
            wm[i] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, w.m.as_ptr().add(row(i) * nb + c) as *const i16));
        }
        for j in 0..C {
            let s = _mm512_maskz_loadu_ps(k, x.s.as_ptr().add((t0 + j) * nb + c));
            for i in 0..R {
                acc[i][j] = _mm512_fmadd_ps(wm[i], s, acc[i][j]);
            }
        }
        c += 16;
    }
    for j in 0..C {
        let o = out.add((t0 + j) * ldo + tile.r0 + i0);
        if R == 4 {
            _mm_storeu_ps(o, hsum4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]));
        } else {
            for i in 0..R {
                *o.add(i) = _mm512_reduce_add_ps(acc[i][j]);
            }
        }
    }
}
