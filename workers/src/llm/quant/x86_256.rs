//! The 256-bit loads and scale vectors the tiles share: a row's block pair or lone block
//! (4- or 8-bit), and pair scales from f16 or f32. The tiles are in
//! `x86_ymm16` (256-bit vectors) and `x86_512` (512-bit).

use std::arch::x86_64::*;

use half::f16;

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
