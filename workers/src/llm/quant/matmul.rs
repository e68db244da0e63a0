//! The product [`QMatrix::matmul`]: row chunks in parallel, register tiles inside each,
//! dispatched to the [`Kernel`] that computes a tile, with the portable tile the SIMD ones
//! are tested against.

use rayon::prelude::*;

use super::activations::QActivations;
use super::kernel::Kernel;
use super::layout::layout_pos;
use super::matrix::{Packing, QMatrix};
#[cfg(target_arch = "x86_64")]
use super::{x86_512, x86_ymm16};
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
            let out = out_ptr;
            unsafe { self.matmul_rows(x, r0, r1, out.0, ldo, kernel) };
        };
        if chunks == 1 {
            run(0);
        } else {
            (0..chunks).into_par_iter().for_each(run);
        }
    }

    /// Rows `r0..r1` of the product (every token of `x`), token tiles inside: what one
    /// thread computes of [`QMatrix::matmul`].
    ///
    /// # Safety
    /// `out` must be valid for writes at `t * ldo + r` for every token `t < x.rows` and
    /// row `r` in `r0..r1`, with `r1 <= self.rows`, `ldo >= self.rows` and
    /// `x.cols == self.cols`; nothing else may access those elements meanwhile.
    pub unsafe fn matmul_rows(&self, x: &QActivations, r0: usize, r1: usize, out: *mut f32, ldo: usize, kernel: Kernel) {
        debug_assert!(r1 <= self.rows && ldo >= self.rows && x.cols == self.cols);
        let tokens = x.rows;
        let mut r = r0;
        while r < r1 {
            let rows = (r1 - r).min(TILE_ROWS);
            if tokens <= PREFETCH_MAX_TOKENS {
                self.prefetch_rows(r + PREFETCH_TILES * TILE_ROWS, r1);
            }
            let tile = Tile { w: self, r0: r };
            let mut t = 0;
            while t < tokens {
                let cols = (tokens - t).min(TILE_COLS);
                dispatch(kernel, &tile, rows, x, t, cols, out, ldo);
                t += cols;
            }
            r += rows;
        }
    }
}

/// How far ahead of the tile being computed its weights are fetched into cache, in
/// tiles, when a step has at most [`PREFETCH_MAX_TOKENS`] tokens: at small batches the
/// product streams the weights once and each tile's compute is too short for the
/// hardware prefetcher alone to keep enough reads in flight; at large batches each tile
/// is reused across many tokens and the prefetch would only add instructions.
const PREFETCH_TILES: usize = 4;
const PREFETCH_MAX_TOKENS: usize = 8;

impl QMatrix {
    /// Ask for tile row `r`'s weights (packed values, scales, offsets) to be brought into
    /// cache, if `r < end`.
    #[inline(always)]
    fn prefetch_rows(&self, r: usize, end: usize) {
        #[cfg(target_arch = "x86_64")]
        if r < end {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let rows = (end - r).min(TILE_ROWS);
            let row_bytes = self.cols / BLOCK * self.packing.bytes_per_block();
            let nb = self.blocks_per_row();
            let lines = |ptr: *const u8, len: usize| {
                let mut at = 0;
                while at < len {
                    // SAFETY: a prefetch never faults; the address is inside the vector.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(ptr.add(at) as *const i8) };
                    at += 64;
                }
            };
            lines(self.qs[r * row_bytes..].as_ptr(), rows * row_bytes);
            lines(self.d[r * nb..].as_ptr() as *const u8, rows * nb * 2);
            lines(self.m[r * nb..].as_ptr() as *const u8, rows * nb * 2);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (r, end);
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

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dispatch(kernel: Kernel, tile: &Tile<'_>, rows: usize, x: &QActivations, t0: usize, cols: usize, out: *mut f32, ldo: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! tiles {
            ($($f:ident)::+, $t0:expr, $cols:expr) => {{
                let (t0, cols) = ($t0, $cols);
                match (rows, cols, tile.w.packing) {
                    (4, 4, Packing::Nibbles) => $($f)::+::<4, 4, true>(tile, 0, x, t0, out, ldo),
                    (4, 3, Packing::Nibbles) => $($f)::+::<4, 3, true>(tile, 0, x, t0, out, ldo),
                    (4, 2, Packing::Nibbles) => $($f)::+::<4, 2, true>(tile, 0, x, t0, out, ldo),
                    (4, 1, Packing::Nibbles) => $($f)::+::<4, 1, true>(tile, 0, x, t0, out, ldo),
                    (4, 4, Packing::Bytes) => $($f)::+::<4, 4, false>(tile, 0, x, t0, out, ldo),
                    (4, 3, Packing::Bytes) => $($f)::+::<4, 3, false>(tile, 0, x, t0, out, ldo),
                    (4, 2, Packing::Bytes) => $($f)::+::<4, 2, false>(tile, 0, x, t0, out, ldo),
                    (4, 1, Packing::Bytes) => $($f)::+::<4, 1, false>(tile, 0, x, t0, out, ldo),
                    (_, _, Packing::Nibbles) => {
                        for i in 0..rows {
                            for t in t0..t0 + cols {
                                $($f)::+::<1, 1, true>(tile, i, x, t, out, ldo)
                            }
                        }
                    }
                    (_, _, Packing::Bytes) => {
                        for i in 0..rows {
                            for t in t0..t0 + cols {
                                $($f)::+::<1, 1, false>(tile, i, x, t, out, ldo)
                            }
                        }
                    }
                }
            }};
        }
        match kernel {
            Kernel::Vnni512 => return tiles!(x86_512::tile_vnni512, t0, cols),
            Kernel::Vnni => return tiles!(x86_ymm16::tile_vnni, t0, cols),
            Kernel::AvxVnni => return tiles!(x86_ymm16::tile_avxvnni, t0, cols),
            Kernel::Avx2 => return tiles!(x86_ymm16::tile_avx2, t0, cols),
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
