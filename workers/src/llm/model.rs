//! The CPU model: weights, the batch a step runs, and the runner the scheduler drives.
//!
//! A batch is a list of [`SeqChunk`]s: for each sequence, the tokens to run now, the
//! position of the first one, its block table and which logits are wanted. Logits are
//! computed only where asked: the last position of a sequence that samples, or every
//! position when the prompt's log-probabilities are wanted. The step itself is
//! [`LlamaModel::forward`], in [`crate::llm::forward`].
//!
//! Weights ([`LlamaWeights`]) are immutable and shared by every replica of a process
//! through an `Arc`; a replica owns only its [`KvCache`] and a [`Workspace`] of scratch
//! buffers that grow to the largest batch seen.

use std::sync::Arc;

use parking_lot::Mutex;
use rayon::prelude::*;

use crate::error::EngineError;
use crate::llm::forward::Workspace;
use crate::llm::gguf::{GgufFile, LlamaConfig};
use crate::llm::kv_cache::{KvCache, KvCacheType};
use crate::llm::ops::Rope;
use crate::llm::quant::{Kernel, QMatrix};

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

/// What the scheduler needs of a model on any device: one forward pass over a batch of
/// chunks (see [`SeqChunk`]), returning `vocab` logits per requested position.
pub trait ModelRunner: Send {
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<&[f32], EngineError>;
    fn config(&self) -> &LlamaConfig;
    /// KV cache blocks this runner holds (of [`BLOCK_TOKENS`] tokens).
    fn kv_blocks(&self) -> usize;
    /// Where it runs, for logs and status (`cpu (avx512-vnni, 2 threads)`, `cpu
    /// (avx512-vnni-512, 2 threads, q8 KV cache)`, `cuda:0 (NVIDIA H100)`).
    fn device(&self) -> String;
    /// Whether the CPU is free while `forward` runs (a GPU computes it): work of the next
    /// step's sampling (structured-output masks) is then done beside it.
    fn frees_the_cpu(&self) -> bool {
        false
    }
}

/// The CPU runner: the model plus the thread pool its kernels run on.
pub struct CpuRunner {
    pub model: LlamaModel,
    pub pool: Arc<rayon::ThreadPool>,
    /// Shared by every runner on `pool`: two steps on one pool at once would each hold
    /// threads the other waits for at its barrier, so they take turns. Taken before
    /// entering the pool (a pool thread must never block on it).
    pub step_lock: Arc<Mutex<()>>,
}

impl ModelRunner for CpuRunner {
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<&[f32], EngineError> {
        let model = &mut self.model;
        let _turn = self.step_lock.lock();
        self.pool.install(|| model.forward(chunks))
    }

    fn config(&self) -> &LlamaConfig {
        &self.model.weights.config
    }

    fn kv_blocks(&self) -> usize {
        self.model.cache.blocks
    }

    fn device(&self) -> String {
        let kv = match self.model.cache.kind() {
            KvCacheType::F32 => String::new(),
            other => format!(", {} KV cache", other.name()),
        };
        format!("cpu ({}, {} threads{kv})", self.model.weights.kernel.name(), self.pool.current_num_threads())
    }
}

/// A replica's model: shared weights plus its own cache and scratch space. Its forward
/// pass is in [`crate::llm::forward`].
#[derive(Debug)]
pub struct LlamaModel {
    pub weights: Arc<LlamaWeights>,
    pub cache: KvCache,
    pub ws: Workspace,
}

impl LlamaModel {
    pub fn new(weights: Arc<LlamaWeights>, kv_blocks: usize) -> Result<Self, EngineError> {
        Self::with_cache_type(weights, kv_blocks, KvCacheType::F32)
    }

    /// [`LlamaModel::new`] with keys and values stored as `kind` says.
    pub fn with_cache_type(weights: Arc<LlamaWeights>, kv_blocks: usize, kind: KvCacheType) -> Result<Self, EngineError> {
        let c = &weights.config;
        let cache = KvCache::with_type(c.layers, kv_blocks, c.kv_heads, c.head_dim, kind)?;
        Ok(Self { weights, cache, ws: Workspace::default() })
    }
}
