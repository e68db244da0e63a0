//! The Llama forward pass on CPU over a batch of sequences that mixes prefill chunks and
//! decode tokens, with a paged KV cache.
//!
//! A batch is a list of [`SeqChunk`]s: for each sequence, the tokens to run now, the
//! position of the first one, its block table and which logits are wanted. All tokens of
//! all sequences are stacked into one `tokens x hidden` matrix, so every weight matrix is
//! read once per step whatever the batch size; attention is per sequence, over its own
//! cache. Logits are computed only where asked: the last position of a sequence that
//! samples, or every position when the prompt's log-probabilities are wanted.
//!
//! Weights ([`LlamaWeights`]) are immutable and shared by every replica of a process
//! through an `Arc`; a replica owns only its [`KvCache`] and a [`Workspace`] of scratch
//! buffers that grow to the largest batch seen.

// SIMD loops index several parallel register arrays by the same counter.
#![allow(clippy::needless_range_loop)]

use std::sync::Arc;

use rayon::prelude::*;

use crate::error::EngineError;
use crate::llm::gguf::{GgufFile, LlamaConfig};
use crate::llm::kv_cache::{KvCache, BLOCK_TOKENS};
use crate::llm::ops::{axpy, rms_norm, softmax, swiglu, Rope};
use crate::llm::quant::{Kernel, QActivations, QMatrix};

/// One transformer block's weights.
#[derive(Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    /// Q, K and V stacked: `hidden + 2 * kv_dim` rows.
    pub qkv: QMatrix,
    pub attn_out: QMatrix,
    pub ffn_norm: Vec<f32>,
    /// Gate and up stacked: `2 * ffn` rows.
    pub gate_up: QMatrix,
    pub down: QMatrix,
}

/// A whole model, shared between replicas.
#[derive(Debug)]
pub struct LlamaWeights {
    pub config: LlamaConfig,
    pub embedding: QMatrix,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Vec<f32>,
    /// `None` with tied embeddings (the embedding is the LM head).
    pub output: Option<QMatrix>,
    pub rope: Rope,
    pub kernel: Kernel,
}

fn fuse(file: &GgufFile, names: &[String]) -> Result<QMatrix, EngineError> {
    let parts = names.iter().map(|n| file.matrix(n)).collect::<Result<Vec<_>, _>>()?;
    match QMatrix::concat_rows(&parts) {
        Ok(m) => Ok(m),
        // Different packings cannot be stacked: bring them all to Q8_0.
        Err(_) => {
            let mut values = Vec::new();
            let mut rows = 0;
            let cols = parts[0].cols;
            let mut row = vec![0f32; cols];
            for p in &parts {
                for r in 0..p.rows {
                    p.dequantize_row(r, &mut row);
                    values.extend_from_slice(&row);
                }
                rows += p.rows;
            }
            QMatrix::quantize_q8(rows, cols, &values).map_err(EngineError::Load)
        }
    }
}

fn check_dims(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<(), EngineError> {
    let dims = file.dims(name)?;
    if dims != (rows, cols) {
        return Err(EngineError::Load(format!(
            "{}: {name} is {}x{}, expected {rows}x{cols}",
            file.path.display(),
            dims.0,
            dims.1
        )));
    }
    Ok(())
}

impl LlamaWeights {
    /// Read and repack every tensor (parallel over layers).
    pub fn load(file: &GgufFile, kernel: Kernel) -> Result<Self, EngineError> {
        let config = LlamaConfig::from_gguf(file)?;
        let c = &config;
        let layers = (0..c.layers)
            .into_par_iter()
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}.weight");
                check_dims(file, &n("attn_q"), c.hidden, c.hidden)?;
                check_dims(file, &n("attn_k"), c.kv_dim(), c.hidden)?;
                check_dims(file, &n("attn_v"), c.kv_dim(), c.hidden)?;
                check_dims(file, &n("attn_output"), c.hidden, c.hidden)?;
                check_dims(file, &n("ffn_gate"), c.ffn, c.hidden)?;
                check_dims(file, &n("ffn_up"), c.ffn, c.hidden)?;
                check_dims(file, &n("ffn_down"), c.hidden, c.ffn)?;
                Ok(LayerWeights {
                    attn_norm: file.f32_values(&n("attn_norm"))?,
                    qkv: fuse(file, &[n("attn_q"), n("attn_k"), n("attn_v")])?,
                    attn_out: file.matrix(&n("attn_output"))?,
                    ffn_norm: file.f32_values(&n("ffn_norm"))?,
                    gate_up: fuse(file, &[n("ffn_gate"), n("ffn_up")])?,
                    down: file.matrix(&n("ffn_down"))?,
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let output = if c.tied_embeddings {
            None
        } else {
            check_dims(file, "output.weight", c.vocab, c.hidden)?;
            Some(file.matrix("output.weight")?)
        };
        Ok(Self {
            embedding: file.matrix("token_embd.weight")?,
            output_norm: file.f32_values("output_norm.weight")?,
            output,
            rope: Rope::new(c.head_dim, c.context_length, c.rope_theta),
            layers,
            kernel,
            config,
        })
    }

    pub fn lm_head(&self) -> &QMatrix {
        self.output.as_ref().unwrap_or(&self.embedding)
    }

    /// Bytes of weights held in memory.
    pub fn size_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv.size_bytes()
                    + l.attn_out.size_bytes()
                    + l.gate_up.size_bytes()
                    + l.down.size_bytes()
                    + 4 * (l.attn_norm.len() + l.ffn_norm.len())
            })
            .sum();
        layers + self.embedding.size_bytes() + self.output.as_ref().map_or(0, QMatrix::size_bytes)
    }
}

/// Which logits a chunk needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only fills the cache (a prefill chunk that is not the last).
    None,
    /// The last position (the next token).
    Last,
    /// Every position of the chunk (prompt log-probabilities).
    All,
}

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`; positions before it are in the cache.
    pub start: usize,
    /// Covers every position up to `start + tokens.len()`.
    pub blocks: &'a [u32],
    pub logits: Logits,
}

/// Scratch buffers of one replica, grown to the largest batch seen.
#[derive(Debug, Default)]
pub struct Workspace {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    quant: QActivations,
    /// Per stacked token: (chunk index, position).
    rows: Vec<(usize, usize)>,
    logit_rows: Vec<usize>,
    normed: Vec<f32>,
    pub logits: Vec<f32>,
}

impl Workspace {
    pub fn size_bytes(&self) -> usize {
        4 * (self.x.capacity()
            + self.h.capacity()
            + self.qkv.capacity()
            + self.attn.capacity()
            + self.gate_up.capacity()
            + self.act.capacity()
            + self.normed.capacity()
            + self.logits.capacity())
            + self.quant.qs.capacity()
            + 8 * self.quant.d.capacity()
    }
}

fn resize(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// What the scheduler needs of a model on any device: one forward pass over a batch of
/// chunks (see [`SeqChunk`]), returning `vocab` logits per requested position.
pub trait ModelRunner: Send {
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<&[f32], EngineError>;
    fn config(&self) -> &LlamaConfig;
    /// KV cache blocks this runner holds (of [`BLOCK_TOKENS`] tokens).
    fn kv_blocks(&self) -> usize;
    /// Where it runs, for logs and status (`cpu (avx512-vnni, 2 threads)`, `cuda:0 (NVIDIA H100)`).
    fn device(&self) -> String;
}

/// The CPU runner: the model plus the thread pool its kernels run on.
pub struct CpuRunner {
    pub model: LlamaModel,
    pub pool: Arc<rayon::ThreadPool>,
}

impl ModelRunner for CpuRunner {
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<&[f32], EngineError> {
        let model = &mut self.model;
        self.pool.install(|| model.forward(chunks))
    }

    fn config(&self) -> &LlamaConfig {
        &self.model.weights.config
    }

    fn kv_blocks(&self) -> usize {
        self.model.cache.blocks
    }

    fn device(&self) -> String {
        format!("cpu ({}, {} threads)", self.model.weights.kernel.name(), self.pool.current_num_threads())
    }
}

/// A replica's model: shared weights plus its own cache and scratch space.
#[derive(Debug)]
pub struct LlamaModel {
    pub weights: Arc<LlamaWeights>,
    pub cache: KvCache,
    pub ws: Workspace,
}

impl LlamaModel {
    pub fn new(weights: Arc<LlamaWeights>, kv_blocks: usize) -> Result<Self, EngineError> {
        let c = &weights.config;
        let cache = KvCache::new(c.layers, kv_blocks, c.kv_heads, c.head_dim)?;
        Ok(Self { weights, cache, ws: Workspace::default() })
    }

    /// Run one step. Returns the logits, `vocab` values per requested position, in
    /// chunk order and position order within a chunk.
    pub fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<&[f32], EngineError> {
        let w = &*self.weights;
        let c = &w.config;
        let (hidden, kv_dim, hd) = (c.hidden, c.kv_dim(), c.head_dim);
        let qkv_width = hidden + 2 * kv_dim;
        let ws = &mut self.ws;

        ws.rows.clear();
        ws.logit_rows.clear();
        for (ci, chunk) in chunks.iter().enumerate() {
            let end = chunk.start + chunk.tokens.len();
            if end > c.context_length || end > w.rope.positions {
                return Err(EngineError::Step(format!("position {end} is past the context length {}", c.context_length)));
            }
            if chunk.blocks.len() * BLOCK_TOKENS < end {
                return Err(EngineError::Step(format!("block table too short for position {end}")));
            }
            for (i, &tok) in chunk.tokens.iter().enumerate() {
                if tok as usize >= c.vocab {
                    return Err(EngineError::Step(format!("token id {tok} is outside the vocabulary ({})", c.vocab)));
                }
                let wanted = match chunk.logits {
                    Logits::None => false,
                    Logits::Last => i + 1 == chunk.tokens.len(),
                    Logits::All => true,
                };
                if wanted {
                    ws.logit_rows.push(ws.rows.len());
                }
                ws.rows.push((ci, chunk.start + i));
            }
        }
        let t = ws.rows.len();
        ws.logits.clear();
        if t == 0 {
            return Ok(&ws.logits);
        }

        resize(&mut ws.x, t * hidden);
        resize(&mut ws.h, t * hidden);
        resize(&mut ws.qkv, t * qkv_width);
        resize(&mut ws.attn, t * hidden);
        resize(&mut ws.gate_up, t * 2 * c.ffn);
        resize(&mut ws.act, t * c.ffn);

        // Embeddings.
        {
            let mut i = 0;
            for chunk in chunks {
                for &tok in chunk.tokens {
                    w.embedding.dequantize_row(tok as usize, &mut ws.x[i * hidden..(i + 1) * hidden]);
                    i += 1;
                }
            }
        }

        for (li, layer) in w.layers.iter().enumerate() {
            // Attention.
            for r in 0..t {
                rms_norm(&ws.x[r * hidden..(r + 1) * hidden], &layer.attn_norm, c.rms_eps, &mut ws.h[r * hidden..(r + 1) * hidden]);
            }
            ws.quant.quantize_from(&ws.h, t, hidden);
            layer.qkv.matmul(&ws.quant, &mut ws.qkv, w.kernel);
            for r in 0..t {
                let (ci, pos) = ws.rows[r];
                let row = &mut ws.qkv[r * qkv_width..(r + 1) * qkv_width];
                w.rope.apply(&mut row[..hidden + kv_dim], pos);
                let (k, v) = row[hidden..].split_at(kv_dim);
                self.cache.store(li, chunks[ci].blocks, pos, k, v);
            }
            attention(c, li, &self.cache, chunks, &ws.rows, &ws.qkv[..t * qkv_width], &mut ws.attn[..t * hidden]);
            ws.quant.quantize_from(&ws.attn, t, hidden);
            layer.attn_out.matmul(&ws.quant, &mut ws.h, w.kernel);
            for (x, h) in ws.x[..t * hidden].iter_mut().zip(&ws.h[..t * hidden]) {
                *x += h;
            }

            // Feed-forward.
            for r in 0..t {
                rms_norm(&ws.x[r * hidden..(r + 1) * hidden], &layer.ffn_norm, c.rms_eps, &mut ws.h[r * hidden..(r + 1) * hidden]);
            }
            ws.quant.quantize_from(&ws.h, t, hidden);
            layer.gate_up.matmul(&ws.quant, &mut ws.gate_up, w.kernel);
            let ffn = c.ffn;
            let gate_up = &ws.gate_up[..t * 2 * ffn];
            let act = &mut ws.act[..t * ffn];
            if t >= 8 {
                act.par_chunks_mut(ffn).zip(gate_up.par_chunks(2 * ffn)).for_each(|(a, g)| swiglu(g, a));
            } else {
                act.chunks_mut(ffn).zip(gate_up.chunks(2 * ffn)).for_each(|(a, g)| swiglu(g, a));
            }
            ws.quant.quantize_from(&ws.act, t, ffn);
            layer.down.matmul(&ws.quant, &mut ws.h, w.kernel);
            for (x, h) in ws.x[..t * hidden].iter_mut().zip(&ws.h[..t * hidden]) {
                *x += h;
            }
        }

        // LM head on the requested rows only.
        let n = ws.logit_rows.len();
        if n == 0 {
            return Ok(&ws.logits);
        }
        resize(&mut ws.normed, n * hidden);
        for (i, &r) in ws.logit_rows.iter().enumerate() {
            rms_norm(&ws.x[r * hidden..(r + 1) * hidden], &w.output_norm, c.rms_eps, &mut ws.normed[i * hidden..(i + 1) * hidden]);
        }
        ws.quant.quantize_from(&ws.normed, n, hidden);
        ws.logits.resize(n * c.vocab, 0.0);
        w.lm_head().matmul(&ws.quant, &mut ws.logits, w.kernel);
        let _ = hd;
        Ok(&ws.logits)
    }
}

/// Causal attention of every stacked token over its sequence's cache (grouped-query:
/// `heads / kv_heads` query heads share a key/value head). Parallel over tokens.
///
/// Each token's attention is computed by the same loops in the same order whatever else
/// is in the batch, and the matrix kernels compute each (row, token) product
/// independently too, so outputs are **batch-invariant**: a sequence gets bit-identical
/// logits whether it runs alone, batched with others, prefilled in chunks or recomputed
/// after a preemption. (Matrix-product attention for long prefill chunks, through
/// candle, was tried: its summation order depends on the chunk shape, so greedy outputs
/// changed with chunking and preemption, and it was taken out.)
fn attention(
    c: &LlamaConfig,
    layer: usize,
    cache: &KvCache,
    chunks: &[SeqChunk<'_>],
    rows: &[(usize, usize)],
    qkv: &[f32],
    out: &mut [f32],
) {
    let hidden = c.hidden;
    let avx2 = simd_avx2();
    let avx512 = simd_avx512();
    let one = |(r, out): (usize, &mut [f32])| {
        #[cfg(target_arch = "x86_64")]
        if avx512 {
            // SAFETY: the CPU has AVX-512F/VL, AVX2 and FMA (checked by simd_avx512).
            return unsafe { attend_row_avx512(c, layer, cache, chunks, rows, qkv, r, out) };
        }
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 and FMA (checked by simd_avx2).
            return unsafe { attend_row_avx2(c, layer, cache, chunks, rows, qkv, r, out) };
        }
        let _ = (avx2, avx512);
        attend_row::<false>(c, layer, cache, chunks, rows, qkv, r, out)
    };
    if rows.len() > 1 {
        out.par_chunks_mut(hidden).enumerate().for_each(one);
    } else {
        out.chunks_mut(hidden).enumerate().for_each(one);
    }
}

/// Whether the AVX2 + FMA builds of the f32 loops can run here (checked once).
pub fn simd_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the AVX-512 builds of the f32 loops can run here (checked once).
pub fn simd_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX512.get_or_init(|| {
            simd_avx2() && std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`attend_row`] compiled for an instruction set: the crate is built for baseline
/// x86-64 (SSE2) and `attend_row` is `#[inline(always)]`, so each wrapper holds its own
/// build of it. `$avx512` picks the AVX-512 intrinsics inside.
macro_rules! attend_row_for {
    ($(#[$doc:meta])* $name:ident, $features:literal, $avx512:literal) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            c: &LlamaConfig,
            layer: usize,
            cache: &KvCache,
            chunks: &[SeqChunk<'_>],
            rows: &[(usize, usize)],
            qkv: &[f32],
            r: usize,
            out: &mut [f32],
        ) {
            attend_row::<$avx512>(c, layer, cache, chunks, rows, qkv, r, out)
        }
    };
}

attend_row_for!(
    /// AVX-512: 16-wide vectors, one per key block of 16 slots.
    attend_row_avx512, "avx2,fma,avx512f,avx512vl", true
);
attend_row_for!(
    /// AVX2 + FMA.
    attend_row_avx2, "avx2,fma", false
);

/// One stacked token's attention, all heads.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_row<const AVX512: bool>(
    c: &LlamaConfig,
    layer: usize,
    cache: &KvCache,
    chunks: &[SeqChunk<'_>],
    rows: &[(usize, usize)],
    qkv: &[f32],
    r: usize,
    out: &mut [f32],
) {
    let (hidden, kv_dim, hd) = (c.hidden, c.kv_dim(), c.head_dim);
    let qkv_width = hidden + 2 * kv_dim;
    let group = c.heads / c.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    {
        let (ci, pos) = rows[r];
        let table = chunks[ci].blocks;
        let q_all = &qkv[r * qkv_width..r * qkv_width + hidden];
        let len = pos + 1;
        let mut scores = vec![0f32; len * group];
        for kvh in 0..c.kv_heads {
            let q = &q_all[kvh * group * hd..(kvh + 1) * group * hd];
            let o = &mut out[kvh * group * hd..(kvh + 1) * group * hd];
            let done = hd == 64
                && match group {
                    1 => attend64::<1, AVX512>(q, cache, layer, table, kvh, len, scale, &mut scores, o),
                    2 => attend64::<2, AVX512>(q, cache, layer, table, kvh, len, scale, &mut scores, o),
                    3 => attend64::<3, AVX512>(q, cache, layer, table, kvh, len, scale, &mut scores, o),
                    4 => attend64::<4, AVX512>(q, cache, layer, table, kvh, len, scale, &mut scores, o),
                    _ => false,
                };
            if done {
                continue;
            }
            // Any head size or group: the general loops.
            for (b, &block) in table.iter().enumerate().take(len.div_ceil(BLOCK_TOKENS)) {
                let (kb, _) = cache.block(layer, block, kvh);
                let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
                for s in 0..slots {
                    for g in 0..group {
                        let qg = &q[g * hd..(g + 1) * hd];
                        let dot: f32 = (0..hd).map(|d| qg[d] * kb[d * BLOCK_TOKENS + s]).sum();
                        scores[g * len + b * BLOCK_TOKENS + s] = dot * scale;
                    }
                }
            }
            for g in 0..group {
                softmax(&mut scores[g * len..(g + 1) * len]);
                o[g * hd..(g + 1) * hd].fill(0.0);
            }
            for (b, &block) in table.iter().enumerate().take(len.div_ceil(BLOCK_TOKENS)) {
                let (_, vb) = cache.block(layer, block, kvh);
                let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
                for s in 0..slots {
                    let value = &vb[s * hd..(s + 1) * hd];
                    for g in 0..group {
                        axpy(scores[g * len + b * BLOCK_TOKENS + s], value, &mut o[g * hd..(g + 1) * hd]);
                    }
                }
            }
        }
    }
}

/// Attention of `G` query heads (64 values each, back to back in `q`) that share one
/// key/value head, over positions `0..len`; writes their outputs to `out`. Keys are
/// stored dimension-major per block ([`KvCache::block`]), so a block's 16 scores per
/// head are 64 multiply-adds of 16-wide vectors, in 4 independent partial sums per head
/// (12 chains for 3 heads: bound by throughput, not latency). Each key and value is
/// loaded once for all `G` heads, and the weighted sums of values stay in local
/// accumulators for the whole pass. Returns true (it handled the case).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend64<const G: usize, const AVX512: bool>(
    q: &[f32],
    cache: &KvCache,
    layer: usize,
    table: &[u32],
    kvh: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) -> bool {
    let mut qs = [[0f32; 64]; G];
    for (g, qg) in qs.iter_mut().enumerate() {
        for (d, v) in qg.iter_mut().zip(&q[g * 64..(g + 1) * 64]) {
            *d = v * scale;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if AVX512 {
        // SAFETY: AVX512 is true only in `attend_row_avx512`, whose CPU check covers these.
        unsafe { attend64_avx512::<G>(&qs, cache, layer, table, kvh, len, scores, out) };
        return true;
    }
    let blocks = len.div_ceil(BLOCK_TOKENS);
    for (b, &block) in table.iter().enumerate().take(blocks) {
        let (kb, _) = cache.block(layer, block, kvh);
        let kt: &[f32; 64 * BLOCK_TOKENS] = kb.try_into().expect("a block of 64-value keys");
        let mut part = [[[0f32; BLOCK_TOKENS]; 4]; G];
        for d4 in 0..16 {
            for p in 0..4 {
                let d = d4 * 4 + p;
                let row: &[f32; BLOCK_TOKENS] = kt[d * BLOCK_TOKENS..(d + 1) * BLOCK_TOKENS].try_into().expect("16 slots");
                for g in 0..G {
                    let qd = qs[g][d];
                    for s in 0..BLOCK_TOKENS {
                        part[g][p][s] += qd * row[s];
                    }
                }
            }
        }
        // Only the block's filled slots count (the rest hold other data).
        let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
        for g in 0..G {
            let dst = &mut scores[g * len + b * BLOCK_TOKENS..g * len + b * BLOCK_TOKENS + slots];
            for (s, v) in dst.iter_mut().enumerate() {
                *v = (part[g][0][s] + part[g][1][s]) + (part[g][2][s] + part[g][3][s]);
            }
        }
    }
    for g in 0..G {
        softmax(&mut scores[g * len..(g + 1) * len]);
    }
    let mut acc = [[0f32; 64]; G];
    for (b, &block) in table.iter().enumerate().take(blocks) {
        let (_, vb) = cache.block(layer, block, kvh);
        let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
        for s in 0..slots {
            let value: &[f32; 64] = vb[s * 64..(s + 1) * 64].try_into().expect("64 values");
            for g in 0..G {
                let p = scores[g * len + b * BLOCK_TOKENS + s];
                for d in 0..64 {
                    acc[g][d] += p * value[d];
                }
            }
        }
    }
    for (g, a) in acc.iter().enumerate() {
        out[g * 64..(g + 1) * 64].copy_from_slice(a);
    }
    true
}

/// [`attend64`] with AVX-512 intrinsics: a block's 16 scores per head are 64 FMAs of
/// 16-wide vectors (keys dimension-major) in 4 independent chains per head, and the
/// value pass keeps each head's 64 output values in 4 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn attend64_avx512<const G: usize>(
    qs: &[[f32; 64]; G],
    cache: &KvCache,
    layer: usize,
    table: &[u32],
    kvh: usize,
    len: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(scores.len() >= G * len && out.len() >= G * 64);
    let blocks = len.div_ceil(BLOCK_TOKENS);
    assert!(table.len() >= blocks);
    for (b, &block) in table.iter().enumerate().take(blocks) {
        let (kb, _) = cache.block(layer, block, kvh);
        assert!(kb.len() >= 64 * BLOCK_TOKENS);
        let kp = kb.as_ptr();
        let mut part = [[_mm512_setzero_ps(); 4]; G];
        for d4 in 0..16 {
            for p in 0..4 {
                let d = d4 * 4 + p;
                let row = _mm512_loadu_ps(kp.add(d * BLOCK_TOKENS));
                for g in 0..G {
                    part[g][p] = _mm512_fmadd_ps(_mm512_set1_ps(qs[g][d]), row, part[g][p]);
                }
            }
        }
        let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
        let k: __mmask16 = if slots == 16 { 0xFFFF } else { (1u16 << slots) - 1 };
        for (g, part) in part.iter().enumerate() {
            let sum = _mm512_add_ps(_mm512_add_ps(part[0], part[1]), _mm512_add_ps(part[2], part[3]));
            _mm512_mask_storeu_ps(scores.as_mut_ptr().add(g * len + b * BLOCK_TOKENS), k, sum);
        }
    }
    for g in 0..G {
        softmax(&mut scores[g * len..(g + 1) * len]);
    }
    let mut acc = [[_mm512_setzero_ps(); 4]; G];
    for (b, &block) in table.iter().enumerate().take(blocks) {
        let (_, vb) = cache.block(layer, block, kvh);
        assert!(vb.len() >= 64 * BLOCK_TOKENS);
        let slots = (len - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
        for s in 0..slots {
            let vp = vb.as_ptr().add(s * 64);
            let v = [_mm512_loadu_ps(vp), _mm512_loadu_ps(vp.add(16)), _mm512_loadu_ps(vp.add(32)), _mm512_loadu_ps(vp.add(48))];
            for g in 0..G {
                let p = _mm512_set1_ps(*scores.get_unchecked(g * len + b * BLOCK_TOKENS + s));
                for c in 0..4 {
                    acc[g][c] = _mm512_fmadd_ps(p, v[c], acc[g][c]);
                }
            }
        }
    }
    for (g, a) in acc.iter().enumerate() {
        for (c, v) in a.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(g * 64 + c * 16), *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 attention and the portable loops (what CPUs without AVX-512 run)
    /// agree, for full and partial blocks and every group size the model may have.
    #[test]
    fn simd_attention_matches_the_portable_loops() {
        if !simd_avx512() {
            return;
        }
        let mut seed = 17u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let (kv_heads, hd) = (2, 64);
        let mut cache = KvCache::new(1, 6, kv_heads, hd).unwrap();
        let table: Vec<u32> = vec![4, 0, 5, 2];
        for pos in 0..table.len() * BLOCK_TOKENS {
            let k: Vec<f32> = (0..kv_heads * hd).map(|_| next()).collect();
            let v: Vec<f32> = (0..kv_heads * hd).map(|_| next()).collect();
            cache.store(0, &table, pos, &k, &v);
        }
        fn run<const G: usize>(q: &[f32], cache: &KvCache, table: &[u32], len: usize, simd: bool) -> Vec<f32> {
            let mut scores = vec![0f32; G * len];
            let mut out = vec![0f32; G * 64];
            if simd {
                // SAFETY: simd_avx512 checked by the caller.
                unsafe { run_avx512::<G>(q, cache, table, len, &mut scores, &mut out) }
            } else {
                attend64::<G, false>(q, cache, 0, table, 1, len, 0.125, &mut scores, &mut out);
            }
            out
        }
        #[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
        unsafe fn run_avx512<const G: usize>(q: &[f32], cache: &KvCache, table: &[u32], len: usize, scores: &mut [f32], out: &mut [f32]) {
            attend64::<G, true>(q, cache, 0, table, 1, len, 0.125, scores, out);
        }
        fn check<const G: usize>(q: &[f32], cache: &KvCache, table: &[u32]) {
            for len in [1, 5, 16, 17, 40, 64] {
                let a = run::<G>(q, cache, table, len, false);
                let b = run::<G>(q, cache, table, len, true);
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "G={G} len={len} at {i}: {x} vs {y}");
                }
                assert!(a.iter().any(|&x| x != 0.0));
            }
        }
        let q: Vec<f32> = (0..4 * hd).map(|_| next() * 4.0).collect();
        check::<1>(&q, &cache, &table);
        check::<2>(&q, &cache, &table);
        check::<3>(&q, &cache, &table);
        check::<4>(&q, &cache, &table);
    }
}
