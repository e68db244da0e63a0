//! Vectorized f32 building blocks for the AVX2 and AVX-512 kernel classes: `exp` (a
//! Cephes-style range reduction and degree-6 polynomial, within 2 ulp of libm over the
//! range the model uses), softmax and SwiGLU over rows.
//!
//! The portable class keeps [`crate::llm::ops`]'s loops (libm `exp`). Within a class, a
//! value depends only on its inputs, never on its neighbours or the batch, so outputs
//! stay batch-invariant. Callers dispatch by [`F32Simd`] through [`softmax`] and
//! [`swiglu`].

#![cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]

use crate::llm::ops;
use crate::llm::quant::F32Simd;

/// In-place softmax of one row with the loops of `simd`.
#[inline]
pub fn softmax(simd: F32Simd, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match simd {
        // SAFETY: the classes that select these need AVX-512F (resp. AVX2 + FMA):
        // Kernel::supported.
        F32Simd::Avx512 => return unsafe { x86::softmax_avx512(x) },
        F32Simd::Avx2 => return unsafe { x86::softmax_avx2(x) },
        F32Simd::Portable => {}
    }
    let _ = simd;
    ops::softmax(x)
}

/// `out[i] = silu(gate[i]) * up[i]` for one row (gate and up halves adjacent).
#[inline]
pub fn swiglu(simd: F32Simd, gate_up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match simd {
        // SAFETY: as in `softmax`.
        F32Simd::Avx512 => return unsafe { x86::swiglu_avx512(gate_up, out) },
        F32Simd::Avx2 => return unsafe { x86::swiglu_avx2(gate_up, out) },
        F32Simd::Portable => {}
    }
    let _ = simd;
    ops::swiglu(gate_up, out)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    // Cephes expf: exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 (in two
    // parts), exp(r) by a degree-6 polynomial on |r| <= ln 2 / 2.
    const HI: f32 = 88.0;
    const LO: f32 = -87.0;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];

    #[inline(always)]
    pub(crate) unsafe fn exp256(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(LO)), _mm256_set1_ps(HI));
        let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(C1), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(C2), r);
        let mut y = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        y = _mm256_fmadd_ps(y, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(y, _mm256_castsi256_ps(scale))
    }

    #[inline(always)]
    pub(crate) unsafe fn exp512(x: __m512) -> __m512 {
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(LO)), _mm512_set1_ps(HI));
        let n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(C1), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(C2), r);
        let mut y = _mm512_set1_ps(P[0]);
        for &c in &P[1..] {
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        y = _mm512_fmadd_ps(y, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        let scale = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
        _mm512_mul_ps(y, _mm512_castsi512_ps(scale))
    }

    /// The scalar lanes of a row's tail go through the same vector code (one lane used),
    /// so every element is computed alike wherever it sits in the row.
    #[inline(always)]
    pub(crate) unsafe fn exp1(x: f32) -> f32 {
        _mm256_cvtss_f32(exp256(_mm256_set1_ps(x)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn softmax_avx2(x: &mut [f32]) {
        let n = x.len();
        let p = x.as_mut_ptr();
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i + 8 <= n {
            m = _mm256_max_ps(m, _mm256_loadu_ps(p.add(i)));
            i += 8;
        }
        let mut max = hmax256(m);
        for &v in &x[i..] {
            max = max.max(v);
        }
        let mv = _mm256_set1_ps(max);
        let mut s = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
            _mm256_storeu_ps(p.add(i), e);
            s = _mm256_add_ps(s, e);
            i += 8;
        }
        let mut sum = hsum256(s);
        for v in &mut x[i..] {
            *v = exp1(*v - max);
            sum += *v;
        }
        let inv = _mm256_set1_ps(1.0 / sum);
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv));
            i += 8;
        }
        let inv = 1.0 / sum;
        for v in &mut x[i..] {
            *v *= inv;
        }
    }

    #[target_feature(enable = "avx2,fma,avx512f")]
    pub(crate) unsafe fn softmax_avx512(x: &mut [f32]) {
        let n = x.len();
        let p = x.as_mut_ptr();
        let tail = |i: usize| -> __mmask16 { if n - i >= 16 { 0xFFFF } else { (1u16 << (n - i)) - 1 } };
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i < n {
            m = _mm512_mask_max_ps(m, tail(i), m, _mm512_maskz_loadu_ps(tail(i), p.add(i)));
            i += 16;
        }
        let mv = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        let mut s = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            let k = tail(i);
            let e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), mv));
            _mm512_mask_storeu_ps(p.add(i), k, e);
            s = _mm512_mask_add_ps(s, k, s, e);
            i += 16;
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(s));
        let mut i = 0;
        while i < n {
            let k = tail(i);
            _mm512_mask_storeu_ps(p.add(i), k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p.add(i)), inv));
            i += 16;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn swiglu_avx2(gate_up: &[f32], out: &mut [f32]) {
        let n = out.len();
        assert!(gate_up.len() >= 2 * n);
        let (g, u, o) = (gate_up.as_ptr(), gate_up.as_ptr().add(n), out.as_mut_ptr());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i + 8 <= n {
            let gv = _mm256_loadu_ps(g.add(i));
            let silu = _mm256_div_ps(gv, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
            _mm256_storeu_ps(o.add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(u.add(i))));
            i += 8;
        }
        while i < n {
            let gv = *g.add(i);
            *o.add(i) = gv / (1.0 + exp1(-gv)) * *u.add(i);
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma,avx512f")]
    pub(crate) unsafe fn swiglu_avx512(gate_up: &[f32], out: &mut [f32]) {
        let n = out.len();
        assert!(gate_up.len() >= 2 * n);
        let (g, u, o) = (gate_up.as_ptr(), gate_up.as_ptr().add(n), out.as_mut_ptr());
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < n {
            let k: __mmask16 = if n - i >= 16 { 0xFFFF } else { (1u16 << (n - i)) - 1 };
            let gv = _mm512_maskz_loadu_ps(k, g.add(i));
            let silu = _mm512_div_ps(gv, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
            _mm512_mask_storeu_ps(o.add(i), k, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(k, u.add(i))));
            i += 16;
        }
    }

    #[inline(always)]
    pub(crate) unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    #[inline(always)]
    unsafe fn hmax256(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps(s, s, 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::quant::Kernel;

    fn classes() -> Vec<F32Simd> {
        let mut all: Vec<F32Simd> = Kernel::available().into_iter().map(Kernel::f32_simd).collect();
        all.dedup();
        all
    }

    #[test]
    fn vector_exp_is_within_2_ulp_of_libm() {
        if !Kernel::Avx2.supported() {
            return;
        }
        let mut x = -87.0f32;
        let mut worst = 0u32;
        while x < 88.0 {
            let want = x.exp();
            // SAFETY: AVX2 checked above.
            let got = unsafe { x86::exp1(x) };
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() as u32;
            worst = worst.max(ulp);
            x += 0.01234;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
    }

    #[test]
    fn softmax_and_swiglu_agree_with_the_portable_loops_on_every_class() {
        for simd in classes() {
            for n in [1, 7, 8, 15, 16, 17, 100, 1536] {
                let row: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37).collect();
                let (mut a, mut b) = (row.clone(), row.clone());
                ops::softmax(&mut a);
                softmax(simd, &mut b);
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= 1e-6 + 1e-5 * x.abs(), "{simd:?} softmax n={n}: {x} vs {y}");
                }
                let gate_up: Vec<f32> = row.iter().chain(row.iter().rev()).map(|v| v * 0.5).collect();
                let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
                ops::swiglu(&gate_up, &mut a);
                swiglu(simd, &gate_up, &mut b);
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{simd:?} swiglu n={n}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn an_element_does_not_depend_on_where_it_sits_in_the_row() {
        // Batch invariance: the tail lanes use the vector code too.
        for simd in classes() {
            let row: Vec<f32> = (0..19).map(|i| i as f32 * 0.21 - 2.0).collect();
            let gate_up: Vec<f32> = row.iter().chain(row.iter()).copied().collect();
            let mut full = vec![0f32; 19];
            swiglu(simd, &gate_up, &mut full);
            for (i, &v) in row.iter().enumerate() {
                let mut one = [0f32; 1];
                swiglu(simd, &[v, v], &mut one);
                assert_eq!(one[0].to_bits(), full[i].to_bits(), "{simd:?} at {i}");
            }
        }
    }
}
