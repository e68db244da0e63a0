//! The GPU acceptance check, shared by `tests/llm_cuda.rs` and `examples/cuda_check.rs`:
//! the same teacher-forced batches through the CPU runner and a [`CudaRunner`], compared
//! row by row, both also against [`ExactRunner`] (plain f32, the reference), and decode
//! throughput at a few batch sizes.
//!
//! [`compare`] works on any two [`ModelRunner`]s, so it is exercised on CPU-only machines
//! too (the CPU runner against itself must agree exactly).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::engine::EngineFactory;
use crate::error::EngineError;
use crate::llm::cuda::{discover, CudaRunner, GpuInfo};
use crate::llm::factory::{LlmConfig, LlmEngineFactory};
use crate::llm::gguf::LlamaConfig;
use crate::llm::kv_cache::{BlockAllocator, KvCache, BLOCK_TOKENS};
use crate::llm::model::{CpuRunner, LayerWeights, LlamaModel, LlamaWeights, Logits, ModelRunner, SeqChunk};
use crate::llm::ops::{axpy, dot, log_softmax, rms_norm, softmax, swiglu, Rope};
use crate::llm::quant::{Kernel, QMatrix};
use crate::tokenizer::ChatMessage;

/// How two runners' next-token distributions compare over every logits row of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    pub sequences: usize,
    /// Logits rows compared (positions).
    pub rows: usize,
    /// Rows where both runners' most likely token is the same.
    pub top1_agree: usize,
    /// Largest |log p_reference - log p_candidate| over every token of every row.
    pub max_logprob_diff: f32,
    /// Largest |difference| at the reference's most likely token.
    pub max_top1_logprob_diff: f32,
    /// Mean |difference| at the reference's most likely token.
    pub mean_top1_logprob_diff: f32,
}

impl Comparison {
    pub fn top1_agreement(&self) -> f64 {
        if self.rows == 0 {
            0.0
        } else {
            self.top1_agree as f64 / self.rows as f64
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sequences, {} positions: top-1 agreement {:.2}% ({}/{}), max |logprob diff| {:.4} over the vocabulary, \
             at the reference's top-1 token max {:.4} mean {:.4}",
            self.sequences,
            self.rows,
            100.0 * self.top1_agreement(),
            self.top1_agree,
            self.rows,
            self.max_logprob_diff,
            self.max_top1_logprob_diff,
            self.mean_top1_logprob_diff
        )
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
}

/// Prefill chunk sizes, cycled per sequence so chunks straddle block boundaries.
const CHUNK_SIZES: [usize; 4] = [7, 16, 5, 23];

/// Run `prompts` through both runners in the same batches and compare every logits row:
/// a chunked prefill of all prompts at once (every position's logits), then
/// `decode_steps` batched decode steps (one token per sequence, last logits), the next
/// token being the reference's most likely one for both (teacher forcing). Block tables
/// are grown as the scheduler grows them, interleaved between sequences.
pub fn compare(
    reference: &mut dyn ModelRunner,
    candidate: &mut dyn ModelRunner,
    prompts: &[Vec<u32>],
    decode_steps: usize,
) -> Result<Comparison, EngineError> {
    let vocab = reference.config().vocab;
    if candidate.config().vocab != vocab {
        return Err(EngineError::Config("the runners' vocabularies differ".to_string()));
    }
    let mut alloc = BlockAllocator::new(reference.kv_blocks().min(candidate.kv_blocks()));
    let mut tables: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    // Tokens of each sequence so far (prompt, then the teacher-forced continuation).
    let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
    let mut done = vec![0usize; prompts.len()];
    let mut out = Comparison { sequences: prompts.len(), ..Comparison::default() };
    let mut top1_diff_sum = 0f64;
    let (mut lp_ref, mut lp_cand) = (Vec::new(), Vec::new());
    let mut step = 0usize;

    let mut run = |chunks: &[SeqChunk<'_>], out: &mut Comparison| -> Result<Vec<usize>, EngineError> {
        let expected = chunks
            .iter()
            .map(|c| match c.logits {
                Logits::None => 0,
                Logits::Last => 1,
                Logits::All => c.tokens.len(),
            })
            .sum::<usize>();
        let a = reference.forward(chunks)?.to_vec();
        let b = candidate.forward(chunks)?;
        if a.len() != expected * vocab || b.len() != a.len() {
            return Err(EngineError::Step(format!(
                "logits: reference {} values, candidate {}, expected {}",
                a.len(),
                b.len(),
                expected * vocab
            )));
        }
        let mut tops = Vec::with_capacity(expected);
        for (ra, rb) in a.chunks(vocab).zip(b.chunks(vocab)) {
            let (ta, tb) = (argmax(ra), argmax(rb));
            log_softmax(ra, &mut lp_ref);
            log_softmax(rb, &mut lp_cand);
            let max = lp_ref.iter().zip(&lp_cand).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            let at_top = (lp_ref[ta] - lp_cand[ta]).abs();
            out.rows += 1;
            out.top1_agree += usize::from(ta == tb);
            out.max_logprob_diff = out.max_logprob_diff.max(if max.is_nan() { f32::INFINITY } else { max });
            out.max_top1_logprob_diff = out.max_top1_logprob_diff.max(at_top);
            top1_diff_sum += f64::from(at_top);
            tops.push(ta);
        }
        Ok(tops)
    };

    // Chunked prefill, every sequence at once.
    while done.iter().zip(prompts).any(|(d, p)| *d < p.len()) {
        let mut wanted = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            if done[i] < prompt.len() {
                let size = CHUNK_SIZES[(step + i) % CHUNK_SIZES.len()].min(prompt.len() - done[i]);
                if !alloc.grow(&mut tables[i], done[i] + size) {
                    return Err(EngineError::Config("kv cache too small for the comparison".to_string()));
                }
                wanted.push((i, done[i], size));
            }
        }
        let chunks: Vec<SeqChunk<'_>> = wanted
            .iter()
            .map(|&(i, start, size)| SeqChunk {
                tokens: &seqs[i][start..start + size],
                start,
                blocks: &tables[i],
                logits: Logits::All,
            })
            .collect();
        let tops = run(&chunks, &mut out)?;
        drop(chunks);
        // The last row of a sequence's final chunk is its next token.
        let mut row = 0;
        let mut next = Vec::new();
        for &(i, start, size) in &wanted {
            row += size;
            if start + size == prompts[i].len() {
                next.push((i, tops[row - 1] as u32));
            }
            done[i] = start + size;
        }
        for (i, token) in next {
            seqs[i].push(token);
        }
        step += 1;
    }

    // Batched decode: the last token of every sequence is not in the cache yet.
    for _ in 0..decode_steps {
        for (i, seq) in seqs.iter().enumerate() {
            if !alloc.grow(&mut tables[i], seq.len()) {
                return Err(EngineError::Config("kv cache too small for the comparison".to_string()));
            }
        }
        let chunks: Vec<SeqChunk<'_>> = seqs
            .iter()
            .enumerate()
            .map(|(i, seq)| SeqChunk {
                tokens: &seq[seq.len() - 1..],
                start: seq.len() - 1,
                blocks: &tables[i],
                logits: Logits::Last,
            })
            .collect();
        let tops = run(&chunks, &mut out)?;
        drop(chunks);
        for (seq, top) in seqs.iter_mut().zip(tops) {
            seq.push(top as u32);
        }
    }
    out.mean_top1_logprob_diff = if out.rows > 0 { (top1_diff_sum / out.rows as f64) as f32 } else { 0.0 };
    Ok(out)
}

/// The Llama forward pass in plain f32, one token at a time: weights dequantized to
/// dense f32, activations never quantized, attention over an f32 [`KvCache`]. Slow; the
/// reference both runners are measured against (the CPU runner quantizes activations to
/// 8 bits, the CUDA runner rounds weights and activations to f16).
pub struct ExactRunner {
    weights: Arc<LlamaWeights>,
    /// Per layer: qkv, attn_out, gate_up, down.
    layers: Vec<[DenseMatrix; 4]>,
    embedding: DenseMatrix,
    output: Option<DenseMatrix>,
    cache: KvCache,
    logits: Vec<f32>,
}

struct DenseMatrix {
    rows: usize,
    cols: usize,
    values: Vec<f32>,
}

impl DenseMatrix {
    fn new(m: &QMatrix) -> Self {
        let mut values = vec![0f32; m.rows * m.cols];
        values.par_chunks_mut(m.cols.max(1)).enumerate().for_each(|(r, row)| m.dequantize_row(r, row));
        Self { rows: m.rows, cols: m.cols, values }
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.values[r * self.cols..(r + 1) * self.cols]
    }

    fn mul(&self, x: &[f32], out: &mut [f32]) {
        out[..self.rows].par_iter_mut().enumerate().for_each(|(r, o)| *o = dot(self.row(r), x));
    }
}

impl ExactRunner {
    pub fn new(weights: Arc<LlamaWeights>, kv_blocks: usize) -> Self {
        let c = &weights.config;
        let cache = KvCache::new(c.layers, kv_blocks, c.kv_heads, c.head_dim).expect("the check's small KV cache");
        let layers = weights
            .layers
            .iter()
            .map(|l| [DenseMatrix::new(&l.qkv), DenseMatrix::new(&l.attn_out), DenseMatrix::new(&l.gate_up), DenseMatrix::new(&l.down)])
            .collect();
        let embedding = DenseMatrix::new(&weights.embedding);
        let output = weights.output.as_ref().map(DenseMatrix::new);
        Self { weights, layers, embedding, output, cache, logits: Vec::new() }
    }

    /// One token at `pos` of the sequence with block table `blocks`: its final hidden state.
    fn token(&mut self, token: u32, pos: usize, blocks: &[u32]) -> Vec<f32> {
        let w = &*self.weights;
        let c = &w.config;
        let (hidden, kv_dim, hd) = (c.hidden, c.kv_dim(), c.head_dim);
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut x = self.embedding.row(token as usize).to_vec();
        let mut h = vec![0f32; hidden];
        let mut qkv = vec![0f32; hidden + 2 * kv_dim];
        let mut attn = vec![0f32; hidden];
        let mut gate_up = vec![0f32; 2 * c.ffn];
        let mut act = vec![0f32; c.ffn];
        for (li, (dense, lw)) in self.layers.iter().zip(&w.layers).enumerate() {
            rms_norm(&x, &lw.attn_norm, c.rms_eps, &mut h);
            dense[0].mul(&h, &mut qkv);
            w.rope.apply(&mut qkv[..hidden + kv_dim], pos);
            self.cache.store(li, blocks, pos, &qkv[hidden..hidden + kv_dim], &qkv[hidden + kv_dim..]);
            let slot = |j: usize| (blocks[j / BLOCK_TOKENS], (j % BLOCK_TOKENS) * hd);
            for head in 0..c.heads {
                let kvh = head / group;
                let q = &qkv[head * hd..(head + 1) * hd];
                let mut scores: Vec<f32> = (0..=pos)
                    .map(|j| {
                        // Keys are stored dimension-major within a block (`KvCache::block`).
                        let kb = self.cache.block(li, blocks[j / BLOCK_TOKENS], kvh).0;
                        let key: Vec<f32> = (0..hd).map(|d| kb[d * BLOCK_TOKENS + j % BLOCK_TOKENS]).collect();
                        dot(q, &key) * scale
                    })
                    .collect();
                softmax(&mut scores);
                let out = &mut attn[head * hd..(head + 1) * hd];
                out.fill(0.0);
                for (j, p) in scores.iter().enumerate() {
                    let (block, at) = slot(j);
                    axpy(*p, &self.cache.block(li, block, kvh).1[at..at + hd], out);
                }
            }
            dense[1].mul(&attn, &mut h);
            x.iter_mut().zip(&h).for_each(|(x, h)| *x += h);
            rms_norm(&x, &lw.ffn_norm, c.rms_eps, &mut h);
            dense[2].mul(&h, &mut gate_up);
            swiglu(&gate_up, &mut act);
            dense[3].mul(&act, &mut h);
            x.iter_mut().zip(&h).for_each(|(x, h)| *x += h);
        }
        x
    }
}

impl ModelRunner for ExactRunner {
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<&[f32], EngineError> {
        let c = self.weights.config.clone();
        let mut plan = super::StepPlan::default();
        plan.build(chunks, &c, self.weights.rope.positions, self.cache.blocks)?;
        self.logits.clear();
        let mut normed = vec![0f32; c.hidden];
        for chunk in chunks {
            for (i, &token) in chunk.tokens.iter().enumerate() {
                let x = self.token(token, chunk.start + i, chunk.blocks);
                let wanted = match chunk.logits {
                    Logits::None => false,
                    Logits::Last => i + 1 == chunk.tokens.len(),
                    Logits::All => true,
                };
                if wanted {
                    rms_norm(&x, &self.weights.output_norm, c.rms_eps, &mut normed);
                    let start = self.logits.len();
                    self.logits.resize(start + c.vocab, 0.0);
                    self.output.as_ref().unwrap_or(&self.embedding).mul(&normed, &mut self.logits[start..]);
                }
            }
        }
        Ok(&self.logits)
    }

    fn config(&self) -> &LlamaConfig {
        &self.weights.config
    }

    fn kv_blocks(&self) -> usize {
        self.cache.blocks
    }

    fn device(&self) -> String {
        "exact f32 reference".to_string()
    }
}

/// Decode throughput of one runner.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeSpeed {
    pub batch: usize,
    pub steps: usize,
    pub elapsed: Duration,
}

impl DecodeSpeed {
    pub fn tokens_per_second(&self) -> f64 {
        (self.batch * self.steps) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for DecodeSpeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch {:>3}: {:>9.1} tokens/s ({:.2} ms per step, {} steps)",
            self.batch,
            self.tokens_per_second(),
            self.elapsed.as_secs_f64() * 1000.0 / self.steps.max(1) as f64,
            self.steps
        )
    }
}

/// `batch` sequences with `prompt_len`-token prompts prefilled in one step, then
/// `steps` timed decode steps (after one untimed), each feeding back every sequence's
/// most likely token (argmax on the host, as a greedy sampler would).
pub fn decode_speed(runner: &mut dyn ModelRunner, batch: usize, prompt_len: usize, steps: usize) -> Result<DecodeSpeed, EngineError> {
    let vocab = runner.config().vocab;
    let total = prompt_len + steps + 1;
    let mut alloc = BlockAllocator::new(runner.kv_blocks());
    let mut tables = vec![Vec::new(); batch];
    for table in &mut tables {
        if !alloc.grow(table, total) {
            return Err(EngineError::Config(format!(
                "kv cache too small: {batch} sequences of {total} tokens need {} blocks, {} held",
                batch * BlockAllocator::blocks_for(total),
                runner.kv_blocks()
            )));
        }
    }
    let prompts: Vec<Vec<u32>> =
        (0..batch).map(|b| (0..prompt_len).map(|i| ((i * 37 + b * 101 + 1) % vocab) as u32).collect()).collect();
    let chunks: Vec<SeqChunk<'_>> = prompts
        .iter()
        .zip(&tables)
        .map(|(p, t)| SeqChunk { tokens: p, start: 0, blocks: t, logits: Logits::Last })
        .collect();
    let logits = runner.forward(&chunks)?;
    let mut next: Vec<u32> = logits.chunks(vocab).map(|r| argmax(r) as u32).collect();
    let mut pos = prompt_len;
    let mut started = Instant::now();
    for step in 0..=steps {
        if step == 1 {
            started = Instant::now();
        }
        let tokens: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let chunks: Vec<SeqChunk<'_>> = tokens
            .iter()
            .zip(&tables)
            .map(|(t, table)| SeqChunk { tokens: t, start: pos, blocks: table, logits: Logits::Last })
            .collect();
        let logits = runner.forward(&chunks)?;
        next = logits.chunks(vocab).map(|r| argmax(r) as u32).collect();
        pos += 1;
    }
    Ok(DecodeSpeed { batch, steps, elapsed: started.elapsed() })
}

/// The CPU runner on `weights` with its own pool of `threads` threads.
pub fn cpu_runner(weights: Arc<LlamaWeights>, kv_blocks: usize, threads: usize) -> Result<CpuRunner, EngineError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("swell-check-{i}"))
        .build()
        .map_err(|e| EngineError::Config(format!("thread pool: {e}")))?;
    Ok(CpuRunner { model: LlamaModel::new(weights, kv_blocks)?, pool: Arc::new(pool), step_lock: Arc::default() })
}

/// A deterministic random model small enough for an emulated GPU: 2 layers, hidden 64,
/// 4 query heads sharing 2 kv heads of 16, ffn 128, vocabulary 96, context 256; weights
/// in Q8_0. `tied`: the LM head is the embedding (else a separate matrix).
pub fn tiny_random_weights(tied: bool, seed: u64) -> LlamaWeights {
    let config = LlamaConfig {
        architecture: "llama".to_string(),
        name: "tiny-random".to_string(),
        layers: 2,
        hidden: 64,
        ffn: 128,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        vocab: 96,
        context_length: 256,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
        tied_embeddings: tied,
    };
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        // xorshift64*, mapped to [-1, 1).
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let mut matrix = |rows: usize, cols: usize, scale: f32| {
        let values: Vec<f32> = (0..rows * cols).map(|_| uniform() * scale).collect();
        QMatrix::quantize_q8(rows, cols, &values).expect("cols are multiples of 32")
    };
    let c = &config;
    let kv_dim = c.kv_dim();
    let per_input = |cols: usize| (3.0 / cols as f32).sqrt();
    let mut layers = Vec::new();
    for _ in 0..c.layers {
        layers.push(LayerWeights {
            attn_norm: Vec::new(),
            qkv: matrix(c.hidden + 2 * kv_dim, c.hidden, per_input(c.hidden)),
            attn_out: matrix(c.hidden, c.hidden, per_input(c.hidden)),
            ffn_norm: Vec::new(),
            gate_up: matrix(2 * c.ffn, c.hidden, per_input(c.hidden)),
            down: matrix(c.hidden, c.ffn, per_input(c.ffn)),
        });
    }
    let embedding = matrix(c.vocab, c.hidden, 1.0);
    let output = (!tied).then(|| matrix(c.vocab, c.hidden, per_input(c.hidden)));
    let mut norm = |n: usize| (0..n).map(|_| 1.0 + 0.2 * uniform()).collect::<Vec<f32>>();
    for layer in &mut layers {
        layer.attn_norm = norm(c.hidden);
        layer.ffn_norm = norm(c.hidden);
    }
    let output_norm = norm(c.hidden);
    LlamaWeights {
        rope: Rope::new(c.head_dim, c.context_length, c.rope_theta),
        kernel: Kernel::detect(),
        embedding,
        layers,
        output_norm,
        output,
        config,
    }
}

/// Prompts of the check, as chat turns.
pub const CHECK_PROMPTS: &[&str] = &[
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash map is in one sentence.",
    "List three prime numbers and say why they are prime.",
];

/// Teacher-forced decode steps after each prompt.
pub const CHECK_DECODE_STEPS: usize = 24;
/// Batch sizes of the decode speed figures.
pub const CHECK_BATCHES: [usize; 2] = [1, 16];
/// KV cache of each runner in the check, in blocks (4096 tokens).
pub const CHECK_KV_BLOCKS: usize = 256;

/// What [`run_check`] found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub gpus: Vec<GpuInfo>,
    pub device: String,
    pub cpu_device: String,
    pub load_time: Duration,
    pub weight_bytes: usize,
    pub cache_bytes: usize,
    /// CUDA runner against the CPU runner (the acceptance criterion).
    pub comparison: Comparison,
    /// CUDA runner against the exact f32 reference.
    pub gpu_vs_exact: Comparison,
    /// CPU runner against the exact f32 reference (how much of `comparison` is the CPU's).
    pub cpu_vs_exact: Comparison,
    pub speeds: Vec<DecodeSpeed>,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "GPUs:")?;
        for g in &self.gpus {
            writeln!(
                f,
                "  cuda:{} {} (compute {}.{}), {} MiB total, {} MiB free",
                g.ordinal,
                g.name,
                g.compute_capability.0,
                g.compute_capability.1,
                g.total_memory >> 20,
                g.free_memory >> 20
            )?;
        }
        writeln!(
            f,
            "runner: {} built in {:.2} s ({} MiB f16 weights, {} MiB kv cache)",
            self.device,
            self.load_time.as_secs_f64(),
            self.weight_bytes >> 20,
            self.cache_bytes >> 20
        )?;
        writeln!(f, "cuda against {}: {}", self.cpu_device, self.comparison)?;
        writeln!(f, "cuda against the exact f32 reference: {}", self.gpu_vs_exact)?;
        writeln!(f, "cpu against the exact f32 reference: {}", self.cpu_vs_exact)?;
        writeln!(f, "decode speed on {}:", self.device)?;
        for s in &self.speeds {
            writeln!(f, "  {s}")?;
        }
        Ok(())
    }
}

/// The whole check on GPU `ordinal`: `Ok(None)` when this machine has no GPU.
pub fn run_check(model_path: &Path, ordinal: u32) -> Result<Option<CheckReport>, String> {
    let gpus = discover()?;
    if gpus.is_empty() {
        return Ok(None);
    }
    if !gpus.iter().any(|g| g.ordinal == ordinal) {
        return Err(format!("no GPU with ordinal {ordinal} ({} found)", gpus.len()));
    }
    let factory = LlmEngineFactory::new(LlmConfig::new(model_path)).map_err(|e| e.to_string())?;
    let (weights, _) = factory.weights().map_err(|e| e.to_string())?;
    let tokenizer = factory.tokenizer();
    let prompts = CHECK_PROMPTS
        .iter()
        .map(|p| {
            let text = tokenizer.apply_chat_template(&[ChatMessage { role: "user".into(), content: (*p).into() }], true)?;
            tokenizer.encode(&text, true)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;

    let started = Instant::now();
    let mut gpu = CudaRunner::new(&weights, ordinal, CHECK_KV_BLOCKS).map_err(|e| e.to_string())?;
    let load_time = started.elapsed();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cpu = cpu_runner(weights.clone(), CHECK_KV_BLOCKS, threads).map_err(|e| e.to_string())?;
    let comparison = compare(&mut cpu, &mut gpu, &prompts, CHECK_DECODE_STEPS).map_err(|e| e.to_string())?;
    let cpu_device = cpu.device();
    // Every comparison allocates blocks from 0 again: positions are written before they
    // are read, so what an earlier run left in a cache does not matter.
    let mut exact = ExactRunner::new(weights.clone(), CHECK_KV_BLOCKS);
    let gpu_vs_exact = compare(&mut exact, &mut gpu, &prompts, CHECK_DECODE_STEPS).map_err(|e| e.to_string())?;
    let cpu_vs_exact = compare(&mut exact, &mut cpu, &prompts, CHECK_DECODE_STEPS).map_err(|e| e.to_string())?;
    drop((cpu, exact));

    let speeds = CHECK_BATCHES
        .iter()
        .map(|&b| decode_speed(&mut gpu, b, 64, 64))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(Some(CheckReport {
        gpus,
        device: gpu.device(),
        cpu_device,
        load_time,
        weight_bytes: gpu.weight_bytes(),
        cache_bytes: gpu.cache_bytes(),
        comparison,
        gpu_vs_exact,
        cpu_vs_exact,
        speeds,
    }))
}
