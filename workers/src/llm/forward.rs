//! [`LlamaModel::forward`]: one step of the Llama forward pass on the CPU, over a batch that
//! mixes prefill chunks and decode tokens, run by a [`Team`] of threads.
//!
//! All tokens of all sequences are stacked into one `tokens x hidden` matrix, so every
//! weight matrix is read once per step whatever the batch size. The step is one rayon
//! broadcast; inside it every layer is a fixed list of phases, each split across the
//! threads and closed by the team's barrier:
//!
//! | phase | work items | what |
//! |---|---|---|
//! | norm | tokens | residual add, RMS norm, quantize to 8 bits |
//! | qkv | weight rows | Q, K, V |
//! | rope | tokens | rotary embedding of Q and K |
//! | store | one | K and V into the paged cache |
//! | attention | tiles of up to 8 tokens x KV heads | causal attention over the sequence's cache |
//! | quantize | tokens | the attention output |
//! | attn_out | weight rows | output projection |
//! | norm | tokens | residual add, RMS norm, quantize |
//! | gate_up | weight rows | gate and up projections |
//! | swiglu | tokens | SwiGLU, quantize |
//! | down | weight rows | down projection |
//!
//! then the final norm and the LM head on the rows whose logits are wanted. At batch 1
//! that is one wake-up of the pool per step instead of one per matrix.
//!
//! Threads share the step's buffers through [`Buf`] (a raw pointer and a length): in a
//! phase each element is written by at most one thread and nothing reads it until the
//! barrier, which orders the phases.

use crate::error::EngineError;
use crate::llm::attention::{attend, TileQuery, TILE_TOKENS};
use crate::llm::attention_q8::attend_q8;
use crate::llm::kv_cache::{KvCache, KvCacheType, BLOCK_TOKENS};
use crate::llm::model::{LlamaModel, LlamaWeights, Logits, SeqChunk};
use crate::llm::ops::rms_norm;
use crate::llm::quant::{QActivations, QMatrix, QRows, TILE_ROWS};
use crate::llm::simd;
use crate::llm::team::{Team, TeamState};

/// Held by steps that run on rayon's global pool (callers outside any pool).
static GLOBAL_POOL_STEPS: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// Barriers per layer (the table above) and after the layers, for sizing the counters.
const PHASES_PER_LAYER: usize = 11;
const PHASES_AFTER: usize = 4;

/// Scratch buffers of one replica, grown to the largest batch seen.
#[derive(Debug, Default)]
pub struct Workspace {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    gate_up: Vec<f32>,
    /// Activations quantized for the matrices that read `hidden` values and `ffn` values.
    quant_h: QActivations,
    quant_f: QActivations,
    /// The normalized rows the LM head reads.
    quant_head: QActivations,
    /// Per stacked token: (chunk index, position).
    rows: Vec<(usize, usize)>,
    /// Attention tiles: (first row, tokens), consecutive rows of one chunk.
    tiles: Vec<(usize, usize)>,
    logit_rows: Vec<usize>,
    /// Per thread: a row of scratch values and attention scores.
    scratch: Vec<(Vec<f32>, Vec<f32>)>,
    team: TeamState,
    pub logits: Vec<f32>,
}

impl Workspace {
    pub fn size_bytes(&self) -> usize {
        let q = |a: &QActivations| a.qs.capacity() + 4 * (a.d.capacity() + a.s.capacity());
        4 * (self.x.capacity() + self.h.capacity() + self.qkv.capacity() + self.attn.capacity() + self.gate_up.capacity())
            + 4 * self.logits.capacity()
            + q(&self.quant_h)
            + q(&self.quant_f)
            + q(&self.quant_head)
            + 4 * self.scratch.iter().map(|(a, b)| a.capacity() + b.capacity()).sum::<usize>()
    }
}

fn resize(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// A step buffer shared by the team: see the module docs for who may touch what.
#[derive(Clone, Copy)]
struct Buf<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: phases give each element to one writer and order writes before reads.
unsafe impl<T> Send for Buf<T> {}
unsafe impl<T> Sync for Buf<T> {}

impl<T> Buf<T> {
    fn new(v: &mut [T]) -> Self {
        Self { ptr: v.as_mut_ptr(), len: v.len() }
    }

    /// Elements `at..at + len`.
    ///
    /// # Safety
    /// No other thread accesses them while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, at: usize, len: usize) -> &mut [T] {
        assert!(at + len <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(at), len)
    }

    /// Elements `at..at + len`, read-only.
    ///
    /// # Safety
    /// No thread writes them while the slice lives.
    unsafe fn read(&self, at: usize, len: usize) -> &[T] {
        assert!(at + len <= self.len);
        std::slice::from_raw_parts(self.ptr.add(at), len)
    }
}

impl LlamaModel {
    /// Run one step. Returns the logits, `vocab` values per requested position, in
    /// chunk order and position order within a chunk.
    pub fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<&[f32], EngineError> {
        let w = &*self.weights;
        let c = &w.config;
        let (hidden, kv_dim, ffn) = (c.hidden, c.kv_dim(), c.ffn);
        let qkv_width = hidden + 2 * kv_dim;
        let ws = &mut self.ws;

        ws.rows.clear();
        ws.tiles.clear();
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
            let first = ws.rows.len() - chunk.tokens.len();
            for at in (first..ws.rows.len()).step_by(TILE_TOKENS) {
                ws.tiles.push((at, TILE_TOKENS.min(ws.rows.len() - at)));
            }
        }
        let t = ws.rows.len();
        let n = ws.logit_rows.len();
        ws.logits.clear();
        if t == 0 {
            return Ok(&[]);
        }
        resize(&mut ws.x, t * hidden);
        resize(&mut ws.h, t * hidden);
        resize(&mut ws.qkv, t * qkv_width);
        resize(&mut ws.attn, t * hidden);
        resize(&mut ws.gate_up, t * 2 * ffn);
        ws.quant_h.prepare(t, hidden);
        ws.quant_f.prepare(t, ffn);
        ws.quant_head.prepare(n, hidden);
        ws.logits.resize(n * c.vocab, 0.0);
        let mut i = 0;
        for chunk in chunks {
            for &tok in chunk.tokens {
                w.embedding.dequantize_row(tok as usize, &mut ws.x[i * hidden..(i + 1) * hidden]);
                i += 1;
            }
        }

        let threads = rayon::current_num_threads().max(1);
        ws.team.reset(threads, w.layers.len() * PHASES_PER_LAYER + PHASES_AFTER);
        if ws.scratch.len() < threads {
            ws.scratch.resize_with(threads, Default::default);
        }
        let step = Step {
            weights: w,
            chunks,
            rows: &ws.rows,
            tiles: &ws.tiles,
            logit_rows: &ws.logit_rows,
            team: &ws.team,
            cache: &mut self.cache,
            x: Buf::new(&mut ws.x),
            h: Buf::new(&mut ws.h),
            qkv: Buf::new(&mut ws.qkv),
            attn: Buf::new(&mut ws.attn),
            gate_up: Buf::new(&mut ws.gate_up),
            logits: Buf::new(&mut ws.logits),
            scratch: Buf::new(&mut ws.scratch),
            qh: ws.quant_h.rows_mut(),
            qf: ws.quant_f.rows_mut(),
            qhead: ws.quant_head.rows_mut(),
            quant_h: &ws.quant_h,
            quant_f: &ws.quant_f,
            quant_head: &ws.quant_head,
        };
        // Two steps on one pool at once would each hold threads the other waits for at
        // its barrier. Inside a pool the caller keeps its steps apart (`CpuRunner` takes
        // a lock per pool before entering it); from outside any pool the step runs on the
        // global one, shared by every such caller, so they take turns here.
        let _turn = rayon::current_thread_index().is_none().then(|| GLOBAL_POOL_STEPS.lock());
        if threads == 1 {
            step.run(0);
        } else {
            rayon::broadcast(|ctx| step.run(ctx.index()));
        }
        drop(step);
        Ok(&self.ws.logits)
    }
}

/// One step's shared state: the read-only parts by reference, the rest by raw pointer
/// (see the module docs for who writes what, when).
struct Step<'s, 'a> {
    weights: &'s LlamaWeights,
    chunks: &'s [SeqChunk<'a>],
    rows: &'s [(usize, usize)],
    tiles: &'s [(usize, usize)],
    logit_rows: &'s [usize],
    team: &'s TeamState,
    cache: *mut KvCache,
    x: Buf<f32>,
    h: Buf<f32>,
    qkv: Buf<f32>,
    attn: Buf<f32>,
    gate_up: Buf<f32>,
    logits: Buf<f32>,
    scratch: Buf<(Vec<f32>, Vec<f32>)>,
    qh: QRows,
    qf: QRows,
    qhead: QRows,
    quant_h: *const QActivations,
    quant_f: *const QActivations,
    quant_head: *const QActivations,
}

// SAFETY: see `Buf`. The cache is written by one thread in the `store` phase and read in
// the `attention` phase; quantized rows are written in one phase and read by the next
// product: the barrier orders each write before every read.
unsafe impl Send for Step<'_, '_> {}
unsafe impl Sync for Step<'_, '_> {}

impl Step<'_, '_> {
    /// The whole step as seen by thread `index`.
    fn run(&self, index: usize) {
        let w = self.weights;
        let c = &w.config;
        let (hidden, kv_dim, ffn, hd) = (c.hidden, c.kv_dim(), c.ffn, c.head_dim);
        let qkv_width = hidden + 2 * kv_dim;
        let group = c.heads / c.kv_heads;
        let (kernel, simd) = (w.kernel, w.kernel.f32_simd());
        let (t, rows) = (self.rows.len(), self.rows);
        let mut team = Team::new(self.team, index);
        // SAFETY: one scratch entry per thread index.
        let (tmp, scores) = unsafe { &mut self.scratch.slice(index, 1)[0] };
        resize(tmp, hidden.max(ffn).max(TILE_TOKENS * group * hd));
        let (qh, qf, qhead) = (self.qh, self.qf, self.qhead);
        let per_token = |team: &mut Team, f: &mut dyn FnMut(usize)| {
            let chunk = team.chunk_for(t, 2, 1, 1);
            team.run(t, chunk, |range| range.for_each(&mut *f));
        };
        // A matrix product into `out` (`ldo` values per token), split by weight rows.
        let product = |team: &mut Team, m: &QMatrix, x: *const QActivations, out: Buf<f32>, ldo: usize| {
            // SAFETY: the activations were written in the previous phase; none are written
            // in this one.
            let x = unsafe { &*x };
            let chunk = team.chunk_for(m.rows, 4, TILE_ROWS, 16);
            team.run(m.rows, chunk, |range| {
                assert!(out.len >= (x.rows - 1) * ldo + m.rows);
                // SAFETY: rows `range` of every token are this thread's alone in this phase.
                unsafe { m.matmul_rows(x, range.start, range.end, out.ptr, ldo, kernel) };
            });
        };

        for (li, layer) in w.layers.iter().enumerate() {
            // SAFETY (every `slice` below): rows are split by token or by weight row as the
            // module docs say, one writer per element per phase.
            per_token(&mut team, &mut |r| unsafe {
                let x = self.x.slice(r * hidden, hidden);
                if li > 0 {
                    add(x, self.h.read(r * hidden, hidden));
                }
                rms_norm(x, &layer.attn_norm, c.rms_eps, &mut tmp[..hidden]);
                qh.quantize_row(r, &tmp[..hidden], simd);
            });
            product(&mut team, &layer.qkv, self.quant_h, self.qkv, qkv_width);
            per_token(&mut team, &mut |r| unsafe {
                w.rope.apply(&mut self.qkv.slice(r * qkv_width, qkv_width)[..hidden + kv_dim], rows[r].1);
            });
            team.run(1, 1, |_| {
                // SAFETY: one thread stores while the others wait at the barrier.
                let cache: &mut KvCache = unsafe { &mut *self.cache };
                for (r, &(ci, pos)) in rows.iter().enumerate().take(t) {
                    let row = unsafe { self.qkv.read(r * qkv_width, qkv_width) };
                    let (k, v) = row[hidden..].split_at(kv_dim);
                    cache.store(li, self.chunks[ci].blocks, pos, k, v);
                }
            });
            let tiles = self.tiles;
            let units = tiles.len() * c.kv_heads;
            // One unit at a time: units are large and unequal (a chunk's last tile is short).
            team.run(units, 1, |range| {
                // SAFETY: the cache is only read in this phase.
                let cache: &KvCache = unsafe { &*self.cache };
                let width = group * hd;
                for u in range {
                    // KV-head-major: a thread's run of units is one head's keys and values
                    // over consecutive tiles, read again while they are still cached.
                    let (kvh, (r0, n)) = (u / tiles.len(), tiles[u % tiles.len()]);
                    let (ci, pos) = rows[r0];
                    let q = unsafe { self.qkv.read(r0 * qkv_width, (n - 1) * qkv_width + hidden) };
                    let out = &mut tmp[..n * width];
                    let tq = TileQuery { table: self.chunks[ci].blocks, first_pos: pos, n, q, q_stride: qkv_width, kvh };
                    match cache.kind() {
                        KvCacheType::F32 => attend(c, li, cache, &tq, out, scores, simd),
                        KvCacheType::Q8 => attend_q8(c, li, cache, &tq, out, scores, kernel),
                    }
                    for (i, o) in out.chunks_exact(width).enumerate() {
                        unsafe { self.attn.slice((r0 + i) * hidden + kvh * width, width) }.copy_from_slice(o);
                    }
                }
            });
            per_token(&mut team, &mut |r| unsafe { qh.quantize_row(r, self.attn.read(r * hidden, hidden), simd) });
            product(&mut team, &layer.attn_out, self.quant_h, self.h, hidden);
            per_token(&mut team, &mut |r| unsafe {
                let x = self.x.slice(r * hidden, hidden);
                add(x, self.h.read(r * hidden, hidden));
                rms_norm(x, &layer.ffn_norm, c.rms_eps, &mut tmp[..hidden]);
                qh.quantize_row(r, &tmp[..hidden], simd);
            });
            product(&mut team, &layer.gate_up, self.quant_h, self.gate_up, 2 * ffn);
            per_token(&mut team, &mut |r| unsafe {
                simd::swiglu(simd, self.gate_up.read(r * 2 * ffn, 2 * ffn), &mut tmp[..ffn]);
                qf.quantize_row(r, &tmp[..ffn], simd);
            });
            product(&mut team, &layer.down, self.quant_f, self.h, hidden);
        }
        // The last residual, the output norm and the LM head, on the wanted rows only.
        let n = self.logit_rows.len();
        if n == 0 {
            return;
        }
        let chunk = team.chunk_for(n, 2, 1, 1);
        team.run(n, chunk, |range| {
            for i in range {
                let r = self.logit_rows[i];
                // SAFETY: row r of x and h are only read now.
                let (x, h) = unsafe { (self.x.read(r * hidden, hidden), self.h.read(r * hidden, hidden)) };
                for ((o, x), h) in scores_row(scores, hidden).iter_mut().zip(x.iter()).zip(h.iter()) {
                    *o = x + h;
                }
                rms_norm(&scores[..hidden], &w.output_norm, c.rms_eps, &mut tmp[..hidden]);
                unsafe { qhead.quantize_row(i, &tmp[..hidden], simd) };
            }
        });
        product(&mut team, w.lm_head(), self.quant_head, self.logits, c.vocab);
    }
}

/// `scores` grown to at least `len` values, as a row of scratch space.
fn scores_row(scores: &mut Vec<f32>, len: usize) -> &mut [f32] {
    resize(scores, len);
    &mut scores[..len]
}

/// `x += h`.
#[inline]
fn add(x: &mut [f32], h: &[f32]) {
    for (x, h) in x.iter_mut().zip(h) {
        *x += h;
    }
}
