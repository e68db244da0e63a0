//! The small f32 operations of a Llama layer: RMS norm, rotary embeddings, SwiGLU,
//! softmax and dot products. Written as plain loops over slices with 8 independent
//! accumulators, which LLVM turns into SIMD without fast-math.

use crate::llm::quant::Data;

/// `sum a[i] * b[i]`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let mut ac = a.chunks_exact(8);
    let mut bc = b.chunks_exact(8);
    for (x, y) in (&mut ac).zip(&mut bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut total = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    for (x, y) in ac.remainder().iter().zip(bc.remainder()) {
        total += x * y;
    }
    total
}

/// `y += alpha * x`.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// `out = x / rms(x) * weight`, one row.
#[inline]
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean_sq = dot(x, x) / x.len() as f32;
    let scale = 1.0 / (mean_sq + eps).sqrt();
    for ((o, x), w) in out.iter_mut().zip(x).zip(weight) {
        *o = x * scale * w;
    }
}

/// Rotary embedding tables: `cos`/`sin` per position and frequency pair (computed, or
/// mapped from a weight cache file).
#[derive(Debug, Clone)]
pub struct Rope {
    pub head_dim: usize,
    pub positions: usize,
    cos: Data<f32>,
    sin: Data<f32>,
}

impl Rope {
    /// The tables (weight cache files store them: a change to how they are computed
    /// must change `weight_cache::LAYOUT`).
    pub fn new(head_dim: usize, positions: usize, theta: f32) -> Self {
        let pairs = head_dim / 2;
        let mut cos = Vec::with_capacity(positions * pairs);
        let mut sin = Vec::with_capacity(positions * pairs);
        for p in 0..positions {
            for i in 0..pairs {
                let freq = 1.0 / f64::from(theta).powf(2.0 * i as f64 / head_dim as f64);
                let angle = p as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self { head_dim, positions, cos: cos.into(), sin: sin.into() }
    }

    /// Tables computed before (a weight cache file's), `head_dim / 2` values per position
    /// each.
    pub fn from_tables(head_dim: usize, positions: usize, cos: Data<f32>, sin: Data<f32>) -> Result<Self, String> {
        let len = positions * (head_dim / 2);
        if cos.len() != len || sin.len() != len {
            return Err(format!("rope tables of {} and {} values, {len} expected", cos.len(), sin.len()));
        }
        Ok(Self { head_dim, positions, cos, sin })
    }

    /// The tables, `head_dim / 2` values per position: `(cos, sin)` (the CUDA runner
    /// uploads these same values).
    pub fn tables(&self) -> (&[f32], &[f32]) {
        (&self.cos[..], &self.sin[..])
    }

    /// Rotate every head of `x` (heads of `head_dim` values, back to back) for
    /// position `pos`. GGUF llama weights are permuted so that pairs are adjacent
    /// (`x[2i]`, `x[2i + 1]`): llama.cpp's "normal" rope mode.
    #[inline]
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let pairs = self.head_dim / 2;
        let cos = &self.cos[pos * pairs..(pos + 1) * pairs];
        let sin = &self.sin[pos * pairs..(pos + 1) * pairs];
        for head in x.chunks_exact_mut(self.head_dim) {
            for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * cos[i] - b * sin[i];
                pair[1] = a * sin[i] + b * cos[i];
            }
        }
    }
}

#[inline]
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `out[i] = silu(gate[i]) * up[i]` for one row whose gate and up halves are adjacent.
#[inline]
pub fn swiglu(gate_up: &[f32], out: &mut [f32]) {
    let (gate, up) = gate_up.split_at(out.len());
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(*g) * u;
    }
}

/// In-place softmax; returns nothing, the slice sums to 1 afterwards.
#[inline]
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Log-softmax of logits into `out` (f64 sums for accuracy over a large vocabulary).
pub fn log_softmax(logits: &[f32], out: &mut Vec<f32>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| f64::from(v - max).exp()).sum();
    let log_sum = sum.ln() as f32 + max;
    out.clear();
    out.extend(logits.iter().map(|&v| v - log_sum));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_norm() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..19).map(|i| (i * i) as f32).sum::<f32>());
        let mut out = vec![0f32; 2];
        rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out);
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6 && (out[1] - 8.0 / rms).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_adjacent_pairs() {
        let rope = Rope::new(4, 3, 10_000.0);
        let mut x = vec![1.0, 0.0, 1.0, 0.0];
        rope.apply(&mut x, 0);
        assert_eq!(x, vec![1.0, 0.0, 1.0, 0.0]);
        rope.apply(&mut x, 1);
        // First pair: angle 1 rad; second pair: angle 1/100 rad.
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
        assert!((x[2] - 0.01f32.cos()).abs() < 1e-6 && (x[3] - 0.01f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn softmax_and_log_softmax_agree() {
        let logits = vec![1.0f32, 2.0, 3.0, -1.0];
        let mut p = logits.clone();
        softmax(&mut p);
        let mut lp = Vec::new();
        log_softmax(&logits, &mut lp);
        for (p, lp) in p.iter().zip(&lp) {
            assert!((p.ln() - lp).abs() < 1e-6);
        }
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn swiglu_is_silu_gate_times_up() {
        let mut out = vec![0f32; 2];
        swiglu(&[0.0, 1.0, 2.0, 3.0], &mut out);
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 1.0 / (1.0 + (-1f32).exp()) * 3.0).abs() < 1e-6);
    }
}
