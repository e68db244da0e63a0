//! Quantized matrix products: the CPU engine's hot loop.
//!
//! # Why not candle's quantized matmul
//! candle's CPU path for Q4_1 dequantizes block by block without SIMD and computes one
//! (row, column) dot product at a time. This module keeps the weights in 4 or 8 bits and
//! multiplies them with activations quantized to 8 bits per block of 32 (llama.cpp's
//! Q8_1 scheme), so the inner loop is integer multiply-add: `vpdpbusd` (AVX-512 VNNI) or
//! `vpmaddubsw` + `vpmaddwd` (AVX2), with a portable scalar fallback.
//!
//! The product is tiled: a tile of [`TILE_ROWS`] weight rows by up to [`TILE_COLS`]
//! activation rows (tokens) keeps 16 accumulators in registers, so each unpacked weight
//! block is used for 4 tokens and each activation block for 4 weight rows. At batch 1
//! this is a memory-bound matrix-vector product over 4-bit weights; at batch 16+ it is
//! compute-bound and the tiling is what makes it faster than a dot product per pair.
//!
//! # Formats
//! Every supported weight type is stored in one affine form per block of 32 values,
//! `w = d * q + m`, with `q` unsigned:
//! - Q4_1: `q` in 0..16 (nibbles, ggml's order: byte `j` holds values `j` and `j + 16`),
//!   `d` and `m` from the file.
//! - Q4_0: `q` in 0..16, `w = d * (q - 8)`, so `m = -8d`.
//! - Q8_0: `q` stored as `q_file + 128` (0..256), so `m = -128d`.
//!
//! An activation block is `a = da * qa` with `qa` signed 8-bit, and `sa = da * sum(qa)`.
//! A block's dot product is `d * da * sum(q * qa) + m * sa`: the integer sum is what the
//! SIMD instructions compute; the `m * sa` part is one small f32 dot product per pair.
//!
//! # Layout
//! [`QMatrix`] (weights, row-major, `rows` outputs by `cols` inputs), [`QActivations`]
//! (quantized inputs, one row per token), [`QMatrix::matmul`] (parallel over row chunks
//! with rayon, tiled inside each chunk), and the kernels: `tile_vnni`, `tile_avx2` and
//! `tile_scalar`, selected once at run time by [`Kernel::detect`].

// SIMD loops index several parallel register arrays by the same counter.
#![allow(clippy::needless_range_loop)]

use half::f16;
use rayon::prelude::*;

/// Values per quantization block.
pub const BLOCK: usize = 32;
/// Weight rows per register tile.
pub const TILE_ROWS: usize = 4;
/// Activation rows (tokens) per register tile.
pub const TILE_COLS: usize = 4;

/// Byte offset, within a row of `nb` blocks, of value `j` of block `b` in the
/// **interleaved** layout of activations and 8-bit weights. Blocks go in quads: a quad's
/// 128 bytes are `[b0[0..16], b1[0..16], b2[0..16], b3[0..16], b0[16..32], .., b3[16..32]]`,
/// the order in which four 4-bit blocks (64 bytes, one 512-bit load) unpack into low and
/// high nibbles, so two 512-bit multiply-adds cover four blocks and their 16 lanes split
/// 4 per block. Blocks left after the last quad go as one pair (`[b0[0..16], b1[0..16],
/// b0[16..32], b1[16..32]]`, the 256-bit form of the same idea) and an odd last block in
/// order. A pair inside a quad is found by [`pair_offsets`], so the 256-bit kernels read
/// the same layout.
#[inline(always)]
pub fn layout_pos(nb: usize, b: usize, j: usize) -> usize {
    let quads = nb & !3;
    if b < quads {
        (b / 4) * 128 + (j / 16) * 64 + (b % 4) * 16 + (j % 16)
    } else if nb - quads >= 2 && b < quads + 2 {
        quads * BLOCK + (j / 16) * 32 + (b - quads) * 16 + (j % 16)
    } else {
        b * BLOCK + j
    }
}

/// Byte offsets, within a row of `nb` blocks, of the two 32-byte halves of the block pair
/// starting at even block `b`: values 0..16 of both blocks, then values 16..32 of both.
#[inline(always)]
pub fn pair_offsets(nb: usize, b: usize) -> (usize, usize) {
    let quads = nb & !3;
    if b < quads {
        let lo = (b / 4) * 128 + ((b % 4) / 2) * 32;
        (lo, lo + 64)
    } else {
        (b * BLOCK, b * BLOCK + 32)
    }
}

/// Copy one block's 32 values into a row in the interleaved layout.
#[inline(always)]
fn scatter_block<T: Copy>(row: &mut [T], nb: usize, b: usize, values: &[T]) {
    let lo = layout_pos(nb, b, 0);
    let hi = layout_pos(nb, b, 16);
    row[lo..lo + 16].copy_from_slice(&values[..16]);
    row[hi..hi + 16].copy_from_slice(&values[16..32]);
}

/// How the unsigned `q` values of a matrix are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// Two 4-bit values per byte, 16 bytes per block (Q4_0, Q4_1).
    Nibbles,
    /// One byte per value, 32 bytes per block (Q8_0), rows in the interleaved
    /// layout ([`layout_pos`]).
    Bytes,
}

impl Packing {
    pub fn bytes_per_block(self) -> usize {
        match self {
            Packing::Nibbles => BLOCK / 2,
            Packing::Bytes => BLOCK,
        }
    }
}

/// A quantized weight matrix: `rows` outputs by `cols` inputs (`cols` a multiple of 32).
#[derive(Debug, Clone)]
pub struct QMatrix {
    pub rows: usize,
    pub cols: usize,
    pub packing: Packing,
    /// `rows * cols / 32` blocks of packed `q`.
    pub qs: Vec<u8>,
    /// Scale per block (f16, as in the file: half the memory traffic of f32 at batch 1,
    /// where the product is bound by memory bandwidth).
    pub d: Vec<f16>,
    /// Offset per block (f16).
    pub m: Vec<f16>,
}

/// The ggml block types this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlBlockType {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl GgmlBlockType {
    /// Bytes of one block of 32 values in the file.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlBlockType::Q4_0 => 2 + 16,
            GgmlBlockType::Q4_1 => 2 + 2 + 16,
            GgmlBlockType::Q8_0 => 2 + 32,
        }
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f16 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]])
}

impl QMatrix {
    /// Repack ggml blocks (`rows * cols / 32` of them, row-major) into this layout.
    pub fn from_ggml(kind: GgmlBlockType, rows: usize, cols: usize, data: &[u8]) -> Result<Self, String> {
        if cols % BLOCK != 0 {
            return Err(format!("row length {cols} is not a multiple of {BLOCK}"));
        }
        let blocks = rows * cols / BLOCK;
        let need = blocks * kind.block_bytes();
        if data.len() < need {
            return Err(format!("{} bytes of tensor data, {need} needed", data.len()));
        }
        let packing = match kind {
            GgmlBlockType::Q4_0 | GgmlBlockType::Q4_1 => Packing::Nibbles,
            GgmlBlockType::Q8_0 => Packing::Bytes,
        };
        let per = packing.bytes_per_block();
        let mut qs = vec![0u8; blocks * per];
        let mut d = vec![f16::ZERO; blocks];
        let mut m = vec![f16::ZERO; blocks];
        let bb = kind.block_bytes();
        qs.par_chunks_mut(per * 1024)
            .zip(d.par_chunks_mut(1024))
            .zip(m.par_chunks_mut(1024))
            .enumerate()
            .for_each(|(chunk, ((qs, d), m))| {
                for (i, ((q, d), m)) in qs.chunks_mut(per).zip(d.iter_mut()).zip(m.iter_mut()).enumerate() {
                    let block = chunk * 1024 + i;
                    let src = &data[block * bb..(block + 1) * bb];
                    match kind {
                        GgmlBlockType::Q4_0 => {
                            *d = f16_at(src, 0);
                            // Exact: a power-of-two multiple of an f16.
                            *m = f16::from_f32(-8.0 * d.to_f32());
                            q.copy_from_slice(&src[2..18]);
                        }
                        GgmlBlockType::Q4_1 => {
                            *d = f16_at(src, 0);
                            *m = f16_at(src, 2);
                            q.copy_from_slice(&src[4..20]);
                        }
                        GgmlBlockType::Q8_0 => {
                            *d = f16_at(src, 0);
                            *m = f16::from_f32(-128.0 * d.to_f32());
                            for (out, &v) in q.iter_mut().zip(&src[2..34]) {
                                *out = (v as i8 as i16 + 128) as u8;
                            }
                        }
                    }
                }
            });
        if packing == Packing::Bytes {
            interleave_rows(&mut qs, cols);
        }
        Ok(Self { rows, cols, packing, qs, d, m })
    }

    /// Quantize an f32 matrix to the Q8_0 form (used for F16/F32 weights, so every
    /// matrix goes through the same kernels).
    pub fn quantize_q8(rows: usize, cols: usize, values: &[f32]) -> Result<Self, String> {
        if cols % BLOCK != 0 {
            return Err(format!("row length {cols} is not a multiple of {BLOCK}"));
        }
        let blocks = rows * cols / BLOCK;
        let mut qs = vec![0u8; blocks * BLOCK];
        let mut d = vec![f16::ZERO; blocks];
        let mut m = vec![f16::ZERO; blocks];
        for b in 0..blocks {
            let src = &values[b * BLOCK..(b + 1) * BLOCK];
            let amax = src.iter().fold(0f32, |a, v| a.max(v.abs()));
            // The stored (f16) scale is the one the values are rounded with.
            let scale = f16::from_f32(amax / 127.0);
            let inv = if scale.to_f32() > 0.0 { 1.0 / scale.to_f32() } else { 0.0 };
            for (out, v) in qs[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(src) {
                *out = ((v * inv).round().clamp(-127.0, 127.0) as i16 + 128) as u8;
            }
            d[b] = scale;
            m[b] = f16::from_f32(-128.0 * scale.to_f32());
        }
        interleave_rows(&mut qs, cols);
        Ok(Self { rows, cols, packing: Packing::Bytes, qs, d, m })
    }

    pub fn blocks_per_row(&self) -> usize {
        self.cols / BLOCK
    }

    /// Bytes held (for memory reports).
    pub fn size_bytes(&self) -> usize {
        self.qs.len() + 2 * (self.d.len() + self.m.len())
    }

    /// The unsigned `q` of value `k` of `row`.
    #[inline]
    fn q_at(&self, row: usize, k: usize) -> u8 {
        let block = row * self.blocks_per_row() + k / BLOCK;
        let j = k % BLOCK;
        match self.packing {
            Packing::Nibbles => {
                let byte = self.qs[block * 16 + (j % 16)];
                if j < 16 {
                    byte & 0x0F
                } else {
                    byte >> 4
                }
            }
            Packing::Bytes => self.qs[row * self.cols + layout_pos(self.blocks_per_row(), k / BLOCK, j)],
        }
    }

    /// Row `row` as f32 (embedding lookups; tests).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let nb = self.blocks_per_row();
        for (k, out) in out.iter_mut().enumerate().take(self.cols) {
            let block = row * nb + k / BLOCK;
            *out = self.d[block].to_f32() * f32::from(self.q_at(row, k)) + self.m[block].to_f32();
        }
    }

    /// Stack matrices with the same `cols` and packing (fused QKV, gate+up).
    pub fn concat_rows(parts: &[QMatrix]) -> Result<Self, String> {
        let first = parts.first().ok_or("nothing to concatenate")?;
        if parts.iter().any(|p| p.cols != first.cols || p.packing != first.packing) {
            return Err("matrices to fuse differ in width or type".to_string());
        }
        Ok(Self {
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            packing: first.packing,
            qs: parts.iter().flat_map(|p| p.qs.iter().copied()).collect(),
            d: parts.iter().flat_map(|p| p.d.iter().copied()).collect(),
            m: parts.iter().flat_map(|p| p.m.iter().copied()).collect(),
        })
    }

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
struct Tile<'a> {
    w: &'a QMatrix,
    r0: usize,
}

/// Rewrite rows of natural-order bytes (`cols` per row) in the interleaved layout.
fn interleave_rows(qs: &mut [u8], cols: usize) {
    let nb = cols / BLOCK;
    qs.par_chunks_mut(cols).for_each(|row| {
        let natural = row.to_vec();
        for b in 0..nb {
            scatter_block(row, nb, b, &natural[b * BLOCK..(b + 1) * BLOCK]);
        }
    });
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint row ranges of one output buffer to rayon tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

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
    /// Quantize `x` (`rows` by `cols`, row-major), reusing this buffer.
    pub fn quantize_from(&mut self, x: &[f32], rows: usize, cols: usize) {
        assert_eq!(cols % BLOCK, 0);
        assert!(x.len() >= rows * cols);
        self.rows = rows;
        self.cols = cols;
        let blocks = rows * cols / BLOCK;
        self.qs.resize(rows * cols, 0);
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        let nb = cols / BLOCK;
        let avx2 = crate::llm::model::simd_avx2();
        let quantize_row = |((src, q), (d, s)): ((&[f32], &mut [i8]), (&mut [f32], &mut [f32]))| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU has AVX2 and FMA (checked by simd_avx2).
                return unsafe { quantize_row_avx2(src, q, d, s, nb) };
            }
            let _ = avx2;
            quantize_row_body(src, q, d, s, nb)
        };
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

/// One token row to 8 bits per block (round half to even, as `vroundps` does, so the
/// loop vectorizes), in the interleaved layout.
#[inline(always)]
fn quantize_row_body(src: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32], nb: usize) {
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
unsafe fn quantize_row_avx2(src: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32], nb: usize) {
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn q4_1_bytes(rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let mut data = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            data.extend_from_slice(&f16::from_f32(0.01 + lcg(seed).abs() * 0.05).to_le_bytes());
            data.extend_from_slice(&f16::from_f32(lcg(seed) * 0.3).to_le_bytes());
            for _ in 0..16 {
                data.push((lcg(seed).abs() * 255.0) as u8);
            }
        }
        data
    }

    fn q8_0_bytes(rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let mut data = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            data.extend_from_slice(&f16::from_f32(0.001 + lcg(seed).abs() * 0.01).to_le_bytes());
            for _ in 0..32 {
                data.push(((lcg(seed) * 127.0) as i8) as u8);
            }
        }
        data
    }

    /// f64 reference of `W x` with dequantized weights and dequantized activations.
    fn reference(w: &QMatrix, x: &QActivations) -> Vec<f64> {
        let mut out = vec![0f64; x.rows * w.rows];
        let mut row = vec![0f32; w.cols];
        for r in 0..w.rows {
            w.dequantize_row(r, &mut row);
            for t in 0..x.rows {
                let mut total = 0f64;
                for k in 0..w.cols {
                    let nb = w.cols / BLOCK;
                    let xv = f64::from(x.d[(t * w.cols + k) / BLOCK]) * f64::from(x.qs[t * w.cols + layout_pos(nb, k / BLOCK, k % BLOCK)]);
                    total += f64::from(row[k]) * xv;
                }
                out[t * w.rows + r] = total;
            }
        }
        out
    }

    fn check(w: &QMatrix, tokens: usize, seed: &mut u64) {
        let xs: Vec<f32> = (0..tokens * w.cols).map(|_| lcg(seed)).collect();
        let mut x = QActivations::default();
        x.quantize_from(&xs, tokens, w.cols);
        let want = reference(w, &x);
        for kernel in Kernel::available() {
            let mut out = vec![f32::NAN; tokens * w.rows];
            w.matmul(&x, &mut out, kernel);
            for (i, (got, want)) in out.iter().zip(&want).enumerate() {
                let err = (f64::from(*got) - want).abs();
                assert!(
                    err <= 1e-3 * (1.0 + want.abs()),
                    "{} at {i} ({tokens} tokens, {:?}): {got} vs {want}",
                    kernel.name(),
                    w.packing
                );
            }
        }
    }

    #[test]
    fn q4_1_kernels_match_the_dequantized_product() {
        let mut seed = 7;
        for (rows, cols) in [(4, 32), (7, 64), (5, 96), (8, 128), (6, 160), (9, 224), (96, 576), (37, 1536)] {
            let data = q4_1_bytes(rows, cols, &mut seed);
            let w = QMatrix::from_ggml(GgmlBlockType::Q4_1, rows, cols, &data).unwrap();
            for tokens in [1, 2, 3, 4, 5, 9, 17] {
                check(&w, tokens, &mut seed);
            }
        }
    }

    #[test]
    fn q8_0_and_q4_0_kernels_match_the_dequantized_product() {
        let mut seed = 11;
        for (rows, cols) in [(5, 32), (6, 96), (4, 160), (7, 224), (64, 576)] {
            let w = QMatrix::from_ggml(GgmlBlockType::Q8_0, rows, cols, &q8_0_bytes(rows, cols, &mut seed)).unwrap();
            for tokens in [1, 4, 6] {
                check(&w, tokens, &mut seed);
            }
            // Q4_0 blocks: the Q4_1 layout without the min.
            let mut q40 = Vec::new();
            for block in q4_1_bytes(rows, cols, &mut seed).chunks(20) {
                q40.extend_from_slice(&block[..2]);
                q40.extend_from_slice(&block[4..]);
            }
            let w = QMatrix::from_ggml(GgmlBlockType::Q4_0, rows, cols, &q40).unwrap();
            for tokens in [1, 5] {
                check(&w, tokens, &mut seed);
            }
        }
    }

    #[test]
    fn ggml_layouts_dequantize_as_documented() {
        // Q4_1: d = 0.5, m = -1, byte j = (j + 16's nibble << 4) | j's nibble.
        let mut block = Vec::new();
        block.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        for j in 0..16u8 {
            block.push((15 - j) << 4 | j);
        }
        let w = QMatrix::from_ggml(GgmlBlockType::Q4_1, 1, 32, &block).unwrap();
        let mut row = vec![0f32; 32];
        w.dequantize_row(0, &mut row);
        assert_eq!(row[0], -1.0);
        assert_eq!(row[3], 0.5);
        assert_eq!(row[16], 0.5 * 15.0 - 1.0);
        assert_eq!(row[31], -1.0);
        // Q8_0: d = 0.25, values -128..
        let mut block = Vec::new();
        block.extend_from_slice(&f16::from_f32(0.25).to_le_bytes());
        for j in 0..32i8 {
            block.push((j - 16) as u8);
        }
        let w = QMatrix::from_ggml(GgmlBlockType::Q8_0, 1, 32, &block).unwrap();
        w.dequantize_row(0, &mut row);
        assert_eq!(row[0], -4.0);
        assert_eq!(row[31], 15.0 * 0.25);
    }

    #[test]
    fn simd_activation_quantization_equals_the_portable_one() {
        if !crate::llm::model::simd_avx2() {
            return;
        }
        let mut seed = 5;
        for nb in [1, 2, 3, 4, 5, 7, 18, 48] {
            let mut src: Vec<f32> = (0..nb * BLOCK).map(|_| lcg(&mut seed) * 3.0).collect();
            src[0] = 0.5; // exact ties round to even
            src[1] = -1.5;
            let (mut q1, mut d1, mut s1) = (vec![0i8; nb * BLOCK], vec![0f32; nb], vec![0f32; nb]);
            let (mut q2, mut d2, mut s2) = (q1.clone(), d1.clone(), s1.clone());
            quantize_row_body(&src, &mut q1, &mut d1, &mut s1, nb);
            // SAFETY: AVX2 checked above.
            unsafe { quantize_row_avx2(&src, &mut q2, &mut d2, &mut s2, nb) };
            assert_eq!(q1, q2, "{nb} blocks");
            assert_eq!(d1, d2);
            assert_eq!(s1, s2);
            if nb == 2 {
                // A zero block quantizes to zeros.
                let zeros = vec![0f32; 2 * BLOCK];
                unsafe { quantize_row_avx2(&zeros, &mut q2, &mut d2, &mut s2, 2) };
                assert!(q2[..64].iter().all(|&v| v == 0) && d2[..2] == [0.0, 0.0]);
            }
        }
    }

    #[test]
    fn quantize_q8_round_trips_within_half_a_step() {
        let mut seed = 3;
        let values: Vec<f32> = (0..64 * 3).map(|_| lcg(&mut seed)).collect();
        let w = QMatrix::quantize_q8(3, 64, &values).unwrap();
        let mut row = vec![0f32; 64];
        for r in 0..3 {
            w.dequantize_row(r, &mut row);
            for k in 0..64 {
                let step = w.d[(r * 64 + k) / BLOCK].to_f32();
                assert!((row[k] - values[r * 64 + k]).abs() <= step * 0.5 + 1e-6);
            }
        }
    }
}
