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
//! - `layout`: the interleaved byte order of activations and 8-bit weights in a row.
//! - `matrix`: [`QMatrix`] (weights, row-major, `rows` outputs by `cols` inputs), read
//!   from ggml blocks or quantized from f32.
//! - `storage`: [`Data`], a matrix's arrays, owned or mapped from a weight cache file.
//! - `activations`: [`QActivations`] (quantized inputs, one row per token).
//! - `kernel`: [`Kernel`], the kernel class: detected at run time ([`Kernel::detect`]) or
//!   forced by name, for the matrix tiles and the f32 loops alike.
//! - `matmul`: [`QMatrix::matmul`] (parallel over row chunks with rayon, tiled inside each
//!   chunk) and the portable `tile_scalar`.
//! - `x86_256`: the 256-bit loads and scale vectors the tiles share.
//! - `x86_512`: `tile_vnni512`, AVX-512 VNNI on 512-bit vectors.
//! - `x86_ymm16`: `tile_avx2`, `tile_avxvnni` and `tile_vnni` on 256-bit vectors, built
//!   for 16 registers: two tokens (or, for one token, two rows) share each accumulator.
//! - `tests`: every kernel against the dequantized product.

// SIMD loops index several parallel register arrays by the same counter.
#![allow(clippy::needless_range_loop)]

mod activations;
mod kernel;
mod layout;
mod matmul;
mod matrix;
mod storage;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86_256;
#[cfg(target_arch = "x86_64")]
mod x86_512;
#[cfg(target_arch = "x86_64")]
mod x86_ymm16;

pub use activations::{QActivations, QRows};
pub use layout::{layout_pos, pair_offsets};
pub use kernel::{F32Simd, Kernel};
pub use matrix::{GgmlBlockType, Packing, QMatrix};
pub use storage::{as_bytes, Data, MappedRegion, Plain};

/// Values per quantization block.
pub const BLOCK: usize = 32;
/// Weight rows per register tile.
pub const TILE_ROWS: usize = 4;
/// Activation rows (tokens) per register tile.
pub const TILE_COLS: usize = 4;
