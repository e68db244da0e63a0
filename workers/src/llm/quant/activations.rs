//! [`QActivations`]: inputs quantized to 8 bits per block of 32, one row per token, by a
//! portable and an AVX2 row quantizer that give the same bytes.

use rayon::prelude::*;

use super::kernel::F32Simd;
use super::layout::{layout_pos, scatter_block};
use super::BLOCK;

/// Activations quantized per block of 32: `rows` tokens by `cols` values.
#[derive(Debug, Clone, Default)]
pub struct QActivations {
    pub rows: usize,
    pub cols: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    /// `d * sum(qs)` per block.
    pub s: Vec<f32>,
}

impl QActivations {
    /// Size the buffers for `rows` tokens of `cols` values; each row holds whatever it
    /// held until it is quantized ([`QRows::quantize_row`]).
    pub fn prepare(&mut self, rows: usize, cols: usize) {
        assert_eq!(cols % BLOCK, 0);
        self.rows = rows;
        self.cols = cols;
        let blocks = rows * cols / BLOCK;
        self.qs.resize(rows * cols, 0);
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
    }

    /// Row-wise write access for threads that quantize disjoint rows (after
    /// [`QActivations::prepare`]).
    pub fn rows_mut(&mut self) -> QRows {
        QRows { qs: self.qs.as_mut_ptr(), d: self.d.as_mut_ptr(), s: self.s.as_mut_ptr(), rows: self.rows, cols: self.cols }
    }

    /// Quantize `x` (`rows` by `cols`, row-major), reusing this buffer, with the loops of
    /// `simd` (every choice gives the same bytes).
    pub fn quantize_from(&mut self, x: &[f32], rows: usize, cols: usize, simd: F32Simd) {
        assert!(x.len() >= rows * cols);
        self.prepare(rows, cols);
        let blocks = rows * cols / BLOCK;
        let nb = cols / BLOCK;
        let quantize_row =
            |((src, q), (d, s)): ((&[f32], &mut [i8]), (&mut [f32], &mut [f32]))| quantize_row(simd, src, q, d, s, nb);
        let x = &x[..rows * cols];
        if blocks >= 4096 {
            x.par_chunks(cols)
                .zip(self.qs.par_chunks_mut(cols))
                .zip(self.d.par_chunks_mut(nb).zip(self.s.par_chunks_mut(nb)))
                .for_each(quantize_row);
        } else {
            x.chunks(cols)
                .zip(self.qs.chunks_mut(cols))
                .zip(self.d.chunks_mut(nb).zip(self.s.chunks_mut(nb)))
                .for_each(quantize_row);
        }
    }
}

/// Raw row access to a prepared [`QActivations`], shared by the threads of a step, each
/// writing its own rows.
#[derive(Clone, Copy)]
pub struct QRows {
    qs: *mut i8,
    d: *mut f32,
    s: *mut f32,
    rows: usize,
    cols: usize,
}

// SAFETY: the pointers are only written through `quantize_row`, whose contract gives each
// row to one thread at a time.
unsafe impl Send for QRows {}
unsafe impl Sync for QRows {}

impl QRows {
    /// Quantize `src` (`cols` values) into row `r`.
    ///
    /// # Safety
    /// The [`QActivations`] these rows came from must outlive the call and not move or
    /// be resized, and no other thread may read or write row `r` meanwhile.
    pub unsafe fn quantize_row(&self, r: usize, src: &[f32], simd: F32Simd) {
        assert!(r < self.rows && src.len() >= self.cols);
        let nb = self.cols / BLOCK;
        let q = std::slice::from_raw_parts_mut(self.qs.add(r * self.cols), self.cols);
        let d = std::slice::from_raw_parts_mut(self.d.add(r * nb), nb);
        let s = std::slice::from_raw_parts_mut(self.s.add(r * nb), nb);
        quantize_row(simd, src, q, d, s, nb)
    }
}

/// One token row with the loops of `simd`.
#[inline(always)]
fn quantize_row(simd: F32Simd, src: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32], nb: usize) {
    #[cfg(target_arch = "x86_64")]
    if simd != F32Simd::Portable {
        // SAFETY: every SIMD class needs AVX2 and FMA (Kernel::supported).
        return unsafe { quantize_row_avx2(src, q, d, s, nb) };
    }
    let _ = simd;
    quantize_row_body(src, q, d, s, nb)
}

/// One token row to 8 bits per block (round half to even, as `vroundps` does, so the
/// loop vectorizes), in the interleaved layout.
#[inline(always)]
pub(super) fn quantize_row_body(src: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32], nb: usize) {
    let mut block = [0i8; BLOCK];
    for b in 0..nb {
        let src = &src[b * BLOCK..(b + 1) * BLOCK];
        let amax = src.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in block.iter_mut().zip(src) {
            let v = (v * inv).round_ties_even() as i32;
            *q = v as i8;
            sum += v;
        }
        scatter_block(q, nb, b, &block);
        d[b] = scale;
        s[b] = scale * sum as f32;
    }
}

/// [`quantize_row_body`] with AVX2 intrinsics: the same arithmetic (max |x|, scale
/// `amax / 127`, multiply by its inverse, round half to even), so both give identical
/// bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_row_avx2(src: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32], nb: usize) {
    use std::arch::x86_64::*;
    assert!(src.len() >= nb * BLOCK && q.len() >= nb * BLOCK && d.len() >= nb && s.len() >= nb);
    let sign = _mm256_set1_ps(-0.0);
    for b in 0..nb {
        let p = src.as_ptr().add(b * BLOCK);
        let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
        let a = v.map(|x| _mm256_andnot_ps(sign, x));
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
        let scale = amax / 127.0;
        let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        let r = v.map(|x| _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(x, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
        let sum = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
        let total = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0b10_11_00_01)));
        // i32 -> i16 -> i8 with packs (which interleave 128-bit lanes): fix the order.
        let w = _mm256_packs_epi32(r[0], r[1]);
        let w2 = _mm256_packs_epi32(r[2], r[3]);
        let bytes = _mm256_packs_epi16(w, w2);
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let lo = layout_pos(nb, b, 0);
        let hi = layout_pos(nb, b, 16);
        _mm_storeu_si128(q.as_mut_ptr().add(lo) as *mut __m128i, _mm256_castsi256_si128(bytes));
        _mm_storeu_si128(q.as_mut_ptr().add(hi) as *mut __m128i, _mm256_extracti128_si256(bytes, 1));
        d[b] = scale;
        s[b] = scale * total as f32;
    }
}
