//! Every kernel this CPU runs against an f64 product of the dequantized matrices, the ggml
//! layouts, and the SIMD activation quantizer against the portable one.

use half::f16;

use super::activations::{quantize_row_avx2, quantize_row_body};
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
    x.quantize_from(&xs, tokens, w.cols, Kernel::detect().f32_simd());
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
    if !Kernel::Avx2.supported() {
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

/// Batch invariance of every kernel: a token's outputs are bit-identical whether it is
/// multiplied alone or at any position of a batch (so in a tile with other tokens, or in
/// a lone-token tile), for 4- and 8-bit weights, even and odd block counts.
#[test]
fn a_tokens_outputs_do_not_depend_on_its_batch() {
    let mut seed = 13;
    for (rows, cols) in [(9, 96), (12, 160), (8, 576)] {
        let q41 = QMatrix::from_ggml(GgmlBlockType::Q4_1, rows, cols, &q4_1_bytes(rows, cols, &mut seed)).unwrap();
        let q80 = QMatrix::from_ggml(GgmlBlockType::Q8_0, rows, cols, &q8_0_bytes(rows, cols, &mut seed)).unwrap();
        for w in [&q41, &q80] {
            let tokens = 11;
            let xs: Vec<f32> = (0..tokens * cols).map(|_| lcg(&mut seed)).collect();
            for kernel in Kernel::available() {
                let simd = kernel.f32_simd();
                let mut all = QActivations::default();
                all.quantize_from(&xs, tokens, cols, simd);
                let mut batch = vec![f32::NAN; tokens * rows];
                w.matmul(&all, &mut batch, kernel);
                for t in 0..tokens {
                    for (start, len) in [(t, 1), (t.saturating_sub(1), 2.min(tokens - t.saturating_sub(1))), (0, t + 1)] {
                        let mut some = QActivations::default();
                        some.quantize_from(&xs[start * cols..(start + len) * cols], len, cols, simd);
                        let mut out = vec![f32::NAN; len * rows];
                        w.matmul(&some, &mut out, kernel);
                        let got = &out[(t - start) * rows..(t - start + 1) * rows];
                        let want = &batch[t * rows..(t + 1) * rows];
                        assert!(
                            got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{} {:?} {rows}x{cols}: token {t} alone or in a batch of {len} from {start} differs",
                            kernel.name(),
                            w.packing
                        );
                    }
                }
            }
        }
    }
}
