//! [`QMatrix`], a quantized weight matrix: repacked from ggml blocks (Q4_0, Q4_1, Q8_0) or
//! quantized from f32, dequantized by row, stacked.

use half::f16;
use rayon::prelude::*;

use super::layout::{layout_pos, scatter_block};
use super::storage::Data;
use super::BLOCK;

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
    pub qs: Data<u8>,
    /// Scale per block (f16, as in the file: half the memory traffic of f32 at batch 1,
    /// where the product is bound by memory bandwidth).
    pub d: Data<f16>,
    /// Offset per block (f16).
    pub m: Data<f16>,
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
        Ok(Self { rows, cols, packing, qs: qs.into(), d: d.into(), m: m.into() })
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
        Ok(Self { rows, cols, packing: Packing::Bytes, qs: qs.into(), d: d.into(), m: m.into() })
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
    pub(super) fn q_at(&self, row: usize, k: usize) -> u8 {
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
            qs: parts.iter().flat_map(|p| p.qs.iter().copied()).collect::<Vec<_>>().into(),
            d: parts.iter().flat_map(|p| p.d.iter().copied()).collect::<Vec<_>>().into(),
            m: parts.iter().flat_map(|p| p.m.iter().copied()).collect::<Vec<_>>().into(),
        })
    }

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
