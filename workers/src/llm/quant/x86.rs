//! The x86-64 kernels: `tile_vnni512` (AVX-512 VNNI on 512-bit vectors), `tile_vnni`
//! (AVX-512 VNNI on 256-bit vectors), `tile_avxvnni` (AVX-VNNI) and `tile_avx2` (AVX2 +
//! FMA), with their loads and horizontal sums.

use std::arch::x86_64::*;

use half::f16;

use super::matmul::Tile;
use super::*;

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let hi = _mm256_extractf128_ps(v, 1);
    let lo = _mm256_castps256_ps128(v);
    let s = _mm_add_ps(hi, lo);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// The 64 unsigned `q` of blocks `block` and `block + 1` as two 256-bit halves in
/// the interleaved order: (values 0..16 of both, values 16..32 of both).
#[inline(always)]
unsafe fn load_pair<const NIBBLES: bool>(w: &QMatrix, row: usize, block: usize) -> (__m256i, __m256i) {
    if NIBBLES {
        let bytes = _mm256_loadu_si256(w.qs.as_ptr().add((row * w.blocks_per_row() + block) * 16) as *const __m256i);
        let mask = _mm256_set1_epi8(0x0F);
        (_mm256_and_si256(bytes, mask), _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask))
    } else {
        let (lo, hi) = pair_offsets(w.blocks_per_row(), block);
        let p = w.qs.as_ptr().add(row * w.cols);
        (_mm256_loadu_si256(p.add(lo) as *const __m256i), _mm256_loadu_si256(p.add(hi) as *const __m256i))
    }
}

/// The 32 unsigned `q` of a lone last block, in value order.
#[inline(always)]
unsafe fn load_single<const NIBBLES: bool>(w: &QMatrix, row: usize, block: usize) -> __m256i {
    if NIBBLES {
        let bytes = _mm_loadu_si128(w.qs.as_ptr().add((row * w.blocks_per_row() + block) * 16) as *const __m128i);
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(bytes, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
        _mm256_set_m128i(hi, lo)
    } else {
        _mm256_loadu_si256(w.qs.as_ptr().add(row * w.cols + block * BLOCK) as *const __m256i)
    }
}

/// [`pair_scales`] from two f16 values (F16C).
#[inline(always)]
unsafe fn pair_scales_f16(v: *const f16) -> __m256 {
    let two = _mm_cvtph_ps(_mm_cvtsi32_si128((v as *const i32).read_unaligned()));
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))
}

/// One f16 as f32 (F16C).
#[inline(always)]
unsafe fn f16_scalar(v: *const f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from((v as *const u16).read_unaligned()))))
}

/// `sum m[b] * s[b]` with `m` in f16 (F16C, 8 at a time).
#[inline(always)]
unsafe fn offset_dot_f16(m: &[f16], s: &[f32]) -> f32 {
    let n = m.len().min(s.len());
    let mut acc = _mm256_setzero_ps();
    let mut b = 0;
    while b + 8 <= n {
        let mv = _mm256_cvtph_ps(_mm_loadu_si128(m.as_ptr().add(b) as *const __m128i));
        acc = _mm256_fmadd_ps(mv, _mm256_loadu_ps(s.as_ptr().add(b)), acc);
        b += 8;
    }
    let mut total = hsum(acc);
    while b < n {
        total += f16_scalar(m.as_ptr().add(b)) * s[b];
        b += 1;
    }
    total
}

/// `[v[b], v[b], v[b], v[b], v[b+1] x 4]`: the per-lane scale of a block pair.
#[inline(always)]
unsafe fn pair_scales(v: *const f32) -> __m256 {
    let two = _mm_castpd_ps(_mm_load_sd(v as *const f64));
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))
}

/// Rows `i0..i0 + R` of the tile, tokens `t0..t0 + C`: horizontal sums plus the
/// offset terms (when `OFFSET`), stored.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn finish<const R: usize, const C: usize, const OFFSET: bool>(
    acc: &[[__m256; C]; R],
    tile: &Tile<'_>,
    i0: usize,
    x: &QActivations,
    t0: usize,
    out: *mut f32,
    ldo: usize,
) {
    let nb = tile.w.blocks_per_row();
    for i in 0..R {
        let r = tile.r0 + i0 + i;
        let m = &tile.w.m[r * nb..(r + 1) * nb];
        for j in 0..C {
            let s = &x.s[(t0 + j) * nb..(t0 + j + 1) * nb];
            let offset = if OFFSET { offset_dot_f16(m, s) } else { 0.0 };
            *out.add((t0 + j) * ldo + tile.r0 + i0 + i) = hsum(acc[i][j]) + offset;
        }
    }
}

/// One kernel body for both instruction sets: `$dot(w, x)` gives 8 i32 lanes, each
/// the sum of 4 adjacent byte products; `$offset` says whether the `m * s` term is
/// added (the AVX2 8-bit path folds it into signed products instead).
macro_rules! tile_body {
    ($tile:ident, $i0:ident, $x:ident, $t0:ident, $out:ident, $ldo:ident, $R:ident, $C:ident, $NIBBLES:ident, $offset:expr, $dot:expr) => {{
        let w = $tile.w;
        let nb = w.blocks_per_row();
        let mut acc = [[_mm256_setzero_ps(); $C]; $R];
        let pairs = nb / 2;
        for p in 0..pairs {
            let b = 2 * p;
            let mut wa = [_mm256_setzero_si256(); $R];
            let mut wb = [_mm256_setzero_si256(); $R];
            let mut wd = [_mm256_setzero_ps(); $R];
            for i in 0..$R {
                let (a, bb) = load_pair::<$NIBBLES>(w, $tile.r0 + $i0 + i, b);
                wa[i] = a;
                wb[i] = bb;
                wd[i] = pair_scales_f16(w.d.as_ptr().add(($tile.r0 + $i0 + i) * nb + b));
            }
            let (lo, hi) = pair_offsets(nb, b);
            for j in 0..$C {
                let xp = $x.qs.as_ptr().add(($t0 + j) * w.cols);
                let xa = _mm256_loadu_si256(xp.add(lo) as *const __m256i);
                let xb = _mm256_loadu_si256(xp.add(hi) as *const __m256i);
                let xd = pair_scales($x.d.as_ptr().add(($t0 + j) * nb + b));
                for i in 0..$R {
                    let dot = _mm256_add_epi32($dot(wa[i], xa), $dot(wb[i], xb));
                    acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(wd[i], xd), _mm256_cvtepi32_ps(dot), acc[i][j]);
                }
            }
        }
        if nb % 2 == 1 {
            let b = nb - 1;
            for i in 0..$R {
                let wq = load_single::<$NIBBLES>(w, $tile.r0 + $i0 + i, b);
                let wd = _mm256_set1_ps(f16_scalar(w.d.as_ptr().add(($tile.r0 + $i0 + i) * nb + b)));
                for j in 0..$C {
                    let xb = ($t0 + j) * nb + b;
                    let xq = _mm256_loadu_si256($x.qs.as_ptr().add(($t0 + j) * w.cols + b * BLOCK) as *const __m256i);
                    let xd = _mm256_set1_ps(*$x.d.get_unchecked(xb));
                    acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(wd, xd), _mm256_cvtepi32_ps($dot(wq, xq)), acc[i][j]);
                }
            }
        }
        finish::<$R, $C, { $offset }>(&acc, $tile, $i0, $x, $t0, $out, $ldo);
    }};
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn tile_vnni<const R: usize, const C: usize, const NIBBLES: bool>(
    tile: &Tile<'_>,
    i0: usize,
    x: &QActivations,
    t0: usize,
    out: *mut f32,
    ldo: usize,
) {
    #[inline(always)]
    unsafe fn dot(w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x)
    }
    tile_body!(tile, i0, x, t0, out, ldo, R, C, NIBBLES, true, dot)
}

/// The same body with AVX-VNNI's VEX-encoded `vpdpbusd` (no AVX-512 needed).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(super) unsafe fn tile_avxvnni<const R: usize, const C: usize, const NIBBLES: bool>(
    tile: &Tile<'_>,
    i0: usize,
    x: &QActivations,
    t0: usize,
    out: *mut f32,
    ldo: usize,
) {
    #[inline(always)]
    unsafe fn dot(w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x)
    }
    tile_body!(tile, i0, x, t0, out, ldo, R, C, NIBBLES, true, dot)
}

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

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_avx2<const R: usize, const C: usize, const NIBBLES: bool>(
    tile: &Tile<'_>,
    i0: usize,
    x: &QActivations,
    t0: usize,
    out: *mut f32,
    ldo: usize,
) {
    #[inline(always)]
    unsafe fn dot_nibbles(w: __m256i, x: __m256i) -> __m256i {
        // q < 16 and |qa| <= 127: pair sums fit in i16.
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
    }
    #[inline(always)]
    unsafe fn dot_bytes(w: __m256i, x: __m256i) -> __m256i {
        // q - 128 as i8; |q - 128| * sign-adjusted qa stays within i16 pair sums.
        let ws = _mm256_xor_si256(w, _mm256_set1_epi8(-128));
        _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(ws), _mm256_sign_epi8(x, ws)), _mm256_set1_epi16(1))
    }
    if NIBBLES {
        tile_body!(tile, i0, x, t0, out, ldo, R, C, NIBBLES, true, dot_nibbles)
    } else {
        // Sum of (q - 128) * qa: the `m = -128 d` term is already in it.
        tile_body!(tile, i0, x, t0, out, ldo, R, C, NIBBLES, false, dot_bytes)
    }
}
