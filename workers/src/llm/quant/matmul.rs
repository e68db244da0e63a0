//! The product [`QMatrix::matmul`]: row chunks in parallel, register tiles inside each, and
//! the [`Kernel`] that computes a tile, with the portable tile the SIMD ones are tested
//! against.

use rayon::prelude::*;

use super::activations::QActivations;
use super::layout::layout_pos;
use super::matrix::{Packing, QMatrix};
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{BLOCK, TILE_COLS, TILE_ROWS};

impl QMatrix {
    /// `out[t][r] = sum_k w[r][k] * x[t][k]` for every token `t` of `x`: `out` is
    /// `x.rows` rows of `self.rows` values.
    pub fn matmul(&self, x: &QActivations, out: &mut [f32], kernel: Kernel) {
        assert_eq!(x.cols, self.cols, "activation width must equal the weight width");
        assert!(out.len() >= x.rows * self.rows);
        let tokens = x.rows;
        if tokens == 0 || self.rows == 0 {
            return;
        }
        // Row chunks: enough for every thread to have several, each a multiple of the
        // tile height and big enough that scheduling costs little.
        let threads = rayon::current_num_threads().max(1);
        let work = self.rows * self.cols * tokens;
        let mut chunk = if work < 1 << 16 { self.rows } else { self.rows.div_ceil(threads * 4) };
        chunk = chunk.max(16).div_ceil(TILE_ROWS) * TILE_ROWS;
        let out_ptr = SendPtr(out.as_mut_ptr());
        let ldo = self.rows;
        let chunks = self.rows.div_ceil(chunk);
        let run = |c: usize| {
            let r0 = c * chunk;
            let r1 = (r0 + chunk).min(self.rows);
            // SAFETY: chunks cover disjoint row ranges of `out`; every write below goes to
            // out[t * ldo + r] with r in r0..r1 and t < tokens, inside `out`.
            unsafe { self.matmul_rows(x, r0, r1, out_ptr, ldo, kernel) };
        };
        if chunks == 1 {
            run(0);
        } else {
            (0..chunks).into_par_iter().for_each(run);
        }
    }

    /// Rows `r0..r1` of the product, token tiles inside.
    unsafe fn matmul_rows(&self, x: &QActivations, r0: usize, r1: usize, out: SendPtr, ldo: usize, kernel: Kernel) {
        let tokens = x.rows;
        let mut r = r0;
        while r < r1 {
            let rows = (r1 - r).min(TILE_ROWS);
            let tile = Tile { w: self, r0: r };
            let mut t = 0;
            while t < tokens {
                let cols = (tokens - t).min(TILE_COLS);
                dispatch(kernel, &tile, rows, x, t, cols, out.0, ldo);
                t += cols;
            }
            r += rows;
        }
    }
}

/// A tile of up to [`TILE_ROWS`] weight rows from `r0`.
pub(super) struct Tile<'a> {
    pub(super) w: &'a QMatrix,
    pub(super) r0: usize,
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint row ranges of one output buffer to rayon tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// The kernel family chosen for this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 VNNI on 512-bit vectors: four blocks per `vpdpbusd` pair.
    Vnni512,
    /// AVX-512 VNNI on 256-bit vectors (`vpdpbusd`).
    Vnni,
    /// AVX2 + FMA (`vpmaddubsw`, `vpmaddwd`).
    Avx2,
    /// Portable Rust.
    Scalar,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let vnni = std::is_x86_feature_detected!("avx512vnni")
                && std::is_x86_feature_detected!("f16c")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma");
            if vnni && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512dq") {
                return Kernel::Vnni512;
            }
            if vnni {
                return Kernel::Vnni;
            }
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    /// Kernels this CPU can run, fastest first (tests compare them all).
    pub fn available() -> Vec<Kernel> {
        let best = Kernel::detect();
        let mut all = vec![best];
        if best == Kernel::Vnni512 {
            all.push(Kernel::Vnni);
        }
        if matches!(best, Kernel::Vnni512 | Kernel::Vnni) {
            all.push(Kernel::Avx2);
        }
        if best != Kernel::Scalar {
            all.push(Kernel::Scalar);
        }
        all
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Vnni512 => "avx512-vnni-512",
            Kernel::Vnni => "avx512-vnni",
            Kernel::Avx2 => "avx2",
            Kernel::Scalar => "scalar",
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dispatch(kernel: Kernel, tile: &Tile<'_>, rows: usize, x: &QActivations, t0: usize, cols: usize, out: *mut f32, ldo: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! tiles {
            ($f:ident) => {
                match (rows, cols, tile.w.packing) {
                    (4, 4, Packing::Nibbles) => x86::$f::<4, 4, true>(tile, 0, x, t0, out, ldo),
                    (4, 3, Packing::Nibbles) => x86::$f::<4, 3, true>(tile, 0, x, t0, out, ldo),
                    (4, 2, Packing::Nibbles) => x86::$f::<4, 2, true>(tile, 0, x, t0, out, ldo),
                    (4, 1, Packing::Nibbles) => x86::$f::<4, 1, true>(tile, 0, x, t0, out, ldo),
                    (4, 4, Packing::Bytes) => x86::$f::<4, 4, false>(tile, 0, x, t0, out, ldo),
                    (4, 3, Packing::Bytes) => x86::$f::<4, 3, false>(tile, 0, x, t0, out, ldo),
                    (4, 2, Packing::Bytes) => x86::$f::<4, 2, false>(tile, 0, x, t0, out, ldo),
                    (4, 1, Packing::Bytes) => x86::$f::<4, 1, false>(tile, 0, x, t0, out, ldo),
                    (_, _, Packing::Nibbles) => {
                        for i in 0..rows {
                            for t in t0..t0 + cols {
                                x86::$f::<1, 1, true>(tile, i, x, t, out, ldo)
                            }
                        }
                    }
                    (_, _, Packing::Bytes) => {
                        for i in 0..rows {
                            for t in t0..t0 + cols {
                                x86::$f::<1, 1, false>(tile, i, x, t, out, ldo)
                            }
                        }
                    }
                }
            };
        }
        match kernel {
            Kernel::Vnni512 => return tiles!(tile_vnni512),
            Kernel::Vnni => return tiles!(tile_vnni),
            Kernel::Avx2 => return tiles!(tile_avx2),
            Kernel::Scalar => {}
        }
    }
    tile_scalar(tile, rows, x, t0, cols, out, ldo);
}

/// Portable tile: the definition the SIMD kernels are tested against.
unsafe fn tile_scalar(tile: &Tile<'_>, rows: usize, x: &QActivations, t0: usize, cols: usize, out: *mut f32, ldo: usize) {
    let w = tile.w;
    let nb = w.blocks_per_row();
    for i in 0..rows {
        let r = tile.r0 + i;
        for t in t0..t0 + cols {
            let mut total = 0f32;
            for b in 0..nb {
                let xb = t * nb + b;
                let mut isum = 0i32;
                for j in 0..BLOCK {
                    let q = w.q_at(r, b * BLOCK + j);
                    isum += i32::from(q) * i32::from(x.qs[t * w.cols + layout_pos(nb, b, j)]);
                }
                let wb = r * nb + b;
                total += w.d[wb].to_f32() * x.d[xb] * isum as f32 + w.m[wb].to_f32() * x.s[xb];
            }
            *out.add(t * ldo + r) = total;
        }
    }
}
