//! [`CudaRunner`]: the weights, KV cache and scratch buffers of one replica on one GPU,
//! and [`StepPlan`], the host-side packing of a step's chunks (checked as the CPU runner
//! checks them). The module docs of [`crate::llm::cuda`] describe the kernels and layout.

use std::ffi::c_void;
use std::ops::Range;
use std::sync::Arc;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use half::f16;
use rayon::prelude::*;

use crate::error::EngineError;
use crate::llm::cuda::kernels::{Kernels, ATTENTION_THREADS, MAX_HEAD_DIM};
use crate::llm::cuda::without_panics;
use crate::llm::gguf::LlamaConfig;
use crate::llm::kv_cache::BLOCK_TOKENS;
use crate::llm::model::{LlamaWeights, Logits, ModelRunner, SeqChunk};
use crate::llm::quant::QMatrix;

/// Threads per block of the row-wise kernels (`embed`, `rms_norm`, `rope_store`, `silu_mul`).
const ROW_THREADS: u32 = 256;
/// Most tokens in one step (the attention grid's second dimension).
const MAX_STEP_TOKENS: usize = 65_535;

/// A step's chunks packed for the device: one `u32` array of
/// `[token ids | positions | slot ids | table offsets | logit rows | block tables]`,
/// the first four with one entry per stacked token.
#[derive(Debug, Default, Clone)]
pub struct StepPlan {
    /// Stacked tokens (every chunk's tokens, in chunk order).
    pub tokens: usize,
    /// Rows whose logits are wanted (indices into the stacked tokens).
    pub logit_rows: usize,
    pub meta: Vec<u32>,
}

impl StepPlan {
    pub fn token_ids(&self) -> Range<usize> {
        0..self.tokens
    }
    pub fn positions(&self) -> Range<usize> {
        self.tokens..2 * self.tokens
    }
    /// `block * BLOCK_TOKENS + slot` of each token's cache entry.
    pub fn slot_ids(&self) -> Range<usize> {
        2 * self.tokens..3 * self.tokens
    }
    /// Where each token's block table starts in [`Self::tables`].
    pub fn table_offsets(&self) -> Range<usize> {
        3 * self.tokens..4 * self.tokens
    }
    pub fn logit_row_ids(&self) -> Range<usize> {
        4 * self.tokens..4 * self.tokens + self.logit_rows
    }
    /// The flattened block tables, relative to the start of the table region.
    pub fn tables(&self) -> Range<usize> {
        4 * self.tokens + self.logit_rows..self.meta.len()
    }

    /// Pack `chunks`, refusing what the CPU runner refuses with the same messages, and
    /// also a block id outside the cache (`kv_blocks`), which on a GPU would write out of
    /// bounds. `positions` is the length of the rope tables.
    pub fn build(
        &mut self,
        chunks: &[SeqChunk<'_>],
        c: &LlamaConfig,
        positions: usize,
        kv_blocks: usize,
    ) -> Result<(), EngineError> {
        self.meta.clear();
        self.tokens = 0;
        self.logit_rows = 0;
        for chunk in chunks {
            let end = chunk.start + chunk.tokens.len();
            if end > c.context_length || end > positions {
                return Err(EngineError::Step(format!("position {end} is past the context length {}", c.context_length)));
            }
            if chunk.blocks.len() * BLOCK_TOKENS < end {
                return Err(EngineError::Step(format!("block table too short for position {end}")));
            }
            if let Some(&bad) = chunk.blocks[..end.div_ceil(BLOCK_TOKENS)].iter().find(|&&b| b as usize >= kv_blocks) {
                return Err(EngineError::Step(format!("block id {bad} is outside the cache ({kv_blocks} blocks)")));
            }
            if let Some(&tok) = chunk.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(EngineError::Step(format!("token id {tok} is outside the vocabulary ({})", c.vocab)));
            }
            self.tokens += chunk.tokens.len();
        }
        let t = self.tokens;
        self.meta.resize(4 * t, 0);
        let mut wanted = Vec::new();
        let mut tables = Vec::new();
        let mut r = 0;
        for chunk in chunks {
            let used = (chunk.start + chunk.tokens.len()).div_ceil(BLOCK_TOKENS);
            let table_at = tables.len() as u32;
            tables.extend_from_slice(&chunk.blocks[..used]);
            for (i, &tok) in chunk.tokens.iter().enumerate() {
                let pos = chunk.start + i;
                let block = chunk.blocks[pos / BLOCK_TOKENS];
                self.meta[r] = tok;
                self.meta[t + r] = pos as u32;
                self.meta[2 * t + r] = block * BLOCK_TOKENS as u32 + (pos % BLOCK_TOKENS) as u32;
                self.meta[3 * t + r] = table_at;
                let want = match chunk.logits {
                    Logits::None => false,
                    Logits::Last => i + 1 == chunk.tokens.len(),
                    Logits::All => true,
                };
                if want {
                    wanted.push(r as u32);
                }
                r += 1;
            }
        }
        self.logit_rows = wanted.len();
        self.meta.extend_from_slice(&wanted);
        self.meta.extend_from_slice(&tables);
        Ok(())
    }
}

fn load_error(ordinal: u32, what: &str) -> impl Fn(String) -> EngineError + '_ {
    move |e| EngineError::Load(format!("cuda:{ordinal}: {what}: {e}"))
}

fn step_error(what: &str) -> impl Fn(String) -> EngineError + '_ {
    move |e| EngineError::Step(format!("cuda: {what}: {e}"))
}

/// A weight matrix on the device: f16, row-major, `rows` outputs by `cols` inputs.
struct DeviceMatrix {
    rows: usize,
    cols: usize,
    data: CudaSlice<u16>,
}

impl DeviceMatrix {
    fn upload(stream: &Arc<CudaStream>, m: &QMatrix) -> Result<Self, String> {
        let mut host = vec![0u16; m.rows * m.cols];
        host.par_chunks_mut(m.cols.max(1)).enumerate().for_each_init(
            || vec![0f32; m.cols],
            |row, (r, out)| {
                m.dequantize_row(r, row);
                for (o, &v) in out.iter_mut().zip(row.iter()) {
                    *o = f16::from_f32(v).to_bits();
                }
            },
        );
        let data = stream.clone_htod(&host).map_err(|e| e.to_string())?;
        Ok(Self { rows: m.rows, cols: m.cols, data })
    }
}

struct DeviceLayer {
    attn_norm: CudaSlice<f32>,
    qkv: DeviceMatrix,
    attn_out: DeviceMatrix,
    ffn_norm: CudaSlice<f32>,
    gate_up: DeviceMatrix,
    down: DeviceMatrix,
}

struct DeviceWeights {
    /// The embedding table; also the LM head when `output` is `None` (tied).
    embedding: DeviceMatrix,
    output: Option<DeviceMatrix>,
    output_norm: CudaSlice<f32>,
    layers: Vec<DeviceLayer>,
    /// `positions x head_dim / 2` each.
    rope_cos: CudaSlice<f32>,
    rope_sin: CudaSlice<f32>,
    /// Rows of the rope tables.
    positions: usize,
}

impl DeviceWeights {
    fn lm_head(&self) -> &DeviceMatrix {
        self.output.as_ref().unwrap_or(&self.embedding)
    }
}


/// Device buffers of one step, grown to the largest step seen.
struct Scratch {
    tokens: usize,
    logit_rows: usize,
    meta: CudaSlice<u32>,
    /// Residual stream, `tokens x hidden` f32.
    x: CudaSlice<f32>,
    /// Norm output, `tokens x hidden` f16.
    normed: CudaSlice<u16>,
    /// `tokens x (hidden + 2 kv_dim)` f32.
    qkv: CudaSlice<f32>,
    /// Attention output, `tokens x hidden` f16.
    attn: CudaSlice<u16>,
    /// `tokens x 2 ffn` f32.
    gate_up: CudaSlice<f32>,
    /// SwiGLU output, `tokens x ffn` f16.
    act: CudaSlice<u16>,
    /// Final norm of the requested rows, `logit_rows x hidden` f16.
    final_normed: CudaSlice<u16>,
    /// `logit_rows x vocab` f32.
    logits: CudaSlice<f32>,
}

fn alloc<T: DeviceRepr + ValidAsZeroBits>(stream: &Arc<CudaStream>, len: usize) -> Result<CudaSlice<T>, String> {
    stream.alloc_zeros::<T>(len.max(1)).map_err(|e| e.to_string())
}

impl Scratch {
    fn new(stream: &Arc<CudaStream>) -> Result<Self, String> {
        Ok(Self {
            tokens: 0,
            logit_rows: 0,
            meta: alloc(stream, 1)?,
            x: alloc(stream, 1)?,
            normed: alloc(stream, 1)?,
            qkv: alloc(stream, 1)?,
            attn: alloc(stream, 1)?,
            gate_up: alloc(stream, 1)?,
            act: alloc(stream, 1)?,
            final_normed: alloc(stream, 1)?,
            logits: alloc(stream, 1)?,
        })
    }

    /// Make room for `tokens` tokens, `logit_rows` logits rows and `meta` packed values
    /// (capacities grow to the next power of two, so growth is rare).
    fn reserve(&mut self, stream: &Arc<CudaStream>, c: &LlamaConfig, tokens: usize, logit_rows: usize, meta: usize) -> Result<(), String> {
        if meta > self.meta.len() {
            self.meta = alloc(stream, meta.next_power_of_two())?;
        }
        if tokens > self.tokens {
            let t = tokens.next_power_of_two();
            let kv_dim = c.kv_dim();
            self.x = alloc(stream, t * c.hidden)?;
            self.normed = alloc(stream, t * c.hidden)?;
            self.qkv = alloc(stream, t * (c.hidden + 2 * kv_dim))?;
            self.attn = alloc(stream, t * c.hidden)?;
            self.gate_up = alloc(stream, t * 2 * c.ffn)?;
            self.act = alloc(stream, t * c.ffn)?;
            self.tokens = t;
        }
        if logit_rows > self.logit_rows {
            let n = logit_rows.next_power_of_two();
            self.final_normed = alloc(stream, n * c.hidden)?;
            self.logits = alloc(stream, n * c.vocab)?;
            self.logit_rows = n;
        }
        Ok(())
    }
}

/// `out (tokens x w.rows, f32) = x (tokens x w.cols, f16) · wᵀ`, plus `out` when
/// `accumulate`. Row-major everywhere, so in cuBLAS's column-major terms:
/// `C (rows x tokens) = op_T(W: cols x rows) · X (cols x tokens)`.
fn gemm(
    blas: &CudaBlas,
    stream: &Arc<CudaStream>,
    w: &DeviceMatrix,
    x: &CudaSlice<u16>,
    tokens: usize,
    out: &mut CudaSlice<f32>,
    accumulate: bool,
) -> Result<(), String> {
    if x.len() < tokens * w.cols || out.len() < tokens * w.rows {
        return Err(format!("buffers too small for {tokens} x {} x {}", w.rows, w.cols));
    }
    let dim = |v: usize| i32::try_from(v).map_err(|_| format!("dimension {v} does not fit cuBLAS's int"));
    let (m, n, k) = (dim(w.rows)?, dim(tokens)?, dim(w.cols)?);
    let alpha = 1f32;
    let beta = if accumulate { 1f32 } else { 0f32 };
    let (a, _read_a) = w.data.device_ptr(stream);
    let (b, _read_b) = x.device_ptr(stream);
    let (c, _write_c) = out.device_ptr_mut(stream);
    // SAFETY: a, b, c are live device buffers of this context holding at least
    // rows*cols, tokens*cols and tokens*rows elements (checked above); the handle's stream
    // is the one every buffer is used on; alpha and beta are host f32 (pointer mode host).
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            m,
            n,
            k,
            (&alpha) as *const f32 as *const c_void,
            a as *const c_void,
            cudaDataType_t::CUDA_R_16F,
            k,
            b as *const c_void,
            cudaDataType_t::CUDA_R_16F,
            k,
            (&beta) as *const f32 as *const c_void,
            c as *mut c_void,
            cudaDataType_t::CUDA_R_32F,
            m,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| e.to_string())
}

fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// One replica's model on one GPU. Built from the CPU-side [`LlamaWeights`] (which it
/// does not keep); see the module docs of [`crate::llm::cuda`].
pub struct CudaRunner {
    config: LlamaConfig,
    ordinal: u32,
    device_name: String,
    kv_blocks: usize,
    weight_bytes: usize,
    cache_bytes: usize,
    plan: StepPlan,
    logits: Vec<f32>,
    kernels: Kernels,
    blas: CudaBlas,
    weights: DeviceWeights,
    /// `[layer][block][kv_head][slot][head_dim]` f16, keys and values.
    k_cache: CudaSlice<u16>,
    v_cache: CudaSlice<u16>,
    scratch: Scratch,
    // Dropped last: everything above holds device memory of this context.
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for CudaRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaRunner")
            .field("device", &self.device())
            .field("kv_blocks", &self.kv_blocks)
            .finish_non_exhaustive()
    }
}

impl CudaRunner {
    /// Upload `weights` (dequantized to f16) to GPU `ordinal`, allocate a cache of
    /// `kv_blocks` blocks, compile the kernels and run a two-step warm-up (which also
    /// checks that every kernel launches). Any failure is [`EngineError::Load`].
    pub fn new(weights: &LlamaWeights, ordinal: u32, kv_blocks: usize) -> Result<Self, EngineError> {
        if !super::driver_present() {
            return Err(EngineError::Load(format!("cuda:{ordinal}: the CUDA driver library (libcuda.so) was not found")));
        }
        // SAFETY: only dlopens the library to see whether it loads.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(EngineError::Load(format!("cuda:{ordinal}: the cuBLAS library (libcublas.so) was not found")));
        }
        without_panics(|| Self::build(weights, ordinal, kv_blocks), load_error(ordinal, "building the runner"))
    }

    fn build(weights: &LlamaWeights, ordinal: u32, kv_blocks: usize) -> Result<Self, EngineError> {
        let c = weights.config.clone();
        let fail = |what: &'static str| load_error(ordinal, what);
        if c.head_dim % 2 != 0 || c.head_dim > MAX_HEAD_DIM || c.hidden != c.heads * c.head_dim {
            return Err(fail("unsupported model")(format!(
                "head_dim {} (even, at most {MAX_HEAD_DIM}), hidden {} (heads x head_dim = {})",
                c.head_dim,
                c.hidden,
                c.heads * c.head_dim
            )));
        }
        if c.kv_heads == 0 || c.heads % c.kv_heads != 0 {
            return Err(fail("unsupported model")(format!("{} heads are not a multiple of {} kv heads", c.heads, c.kv_heads)));
        }
        if kv_blocks == 0 || kv_blocks * BLOCK_TOKENS > u32::MAX as usize {
            return Err(fail("kv cache")(format!("{kv_blocks} blocks (1 to {})", u32::MAX as usize / BLOCK_TOKENS)));
        }

        let ctx = CudaContext::new(ordinal as usize).map_err(|e| fail("creating a context")(e.to_string()))?;
        // SAFETY: every buffer this runner allocates is used on its one stream only, so
        // cudarc's cross-stream event tracking is not needed (and costs events per launch).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| fail("creating a stream")(e.to_string()))?;
        let device_name = ctx.name().map_err(|e| fail("device name")(e.to_string()))?;

        // Refuse early, with sizes, when the model and cache cannot fit.
        let matrices: Vec<&QMatrix> = weights
            .layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.attn_out, &l.gate_up, &l.down])
            .chain(std::iter::once(&weights.embedding))
            .chain(weights.output.iter())
            .collect();
        let weight_bytes: usize = matrices.iter().map(|m| 2 * m.rows * m.cols).sum();
        let positions = c.context_length;
        let cache_elements = c.layers * kv_blocks * c.kv_heads * BLOCK_TOKENS * c.head_dim;
        let cache_bytes = 2 * 2 * cache_elements;
        let rope_bytes = 2 * 4 * positions * (c.head_dim / 2);
        let (free, _) = ctx.mem_get_info().map_err(|e| fail("memory")(e.to_string()))?;
        let need = weight_bytes + cache_bytes + rope_bytes;
        if need > free {
            return Err(fail("not enough GPU memory")(format!(
                "weights {} MiB + kv cache {} MiB + rope tables {} MiB > {} MiB free on {device_name}",
                weight_bytes >> 20,
                cache_bytes >> 20,
                rope_bytes >> 20,
                free >> 20
            )));
        }

        let upload = |m: &QMatrix| DeviceMatrix::upload(&stream, m);
        let upload_f32 = |v: &[f32]| stream.clone_htod(v).map_err(|e| e.to_string());
        let mut layers = Vec::with_capacity(c.layers);
        for (i, l) in weights.layers.iter().enumerate() {
            let at = |e: String| EngineError::Load(format!("cuda:{ordinal}: uploading layer {i}: {e}"));
            layers.push(DeviceLayer {
                attn_norm: upload_f32(&l.attn_norm).map_err(at)?,
                qkv: upload(&l.qkv).map_err(at)?,
                attn_out: upload(&l.attn_out).map_err(at)?,
                ffn_norm: upload_f32(&l.ffn_norm).map_err(at)?,
                gate_up: upload(&l.gate_up).map_err(at)?,
                down: upload(&l.down).map_err(at)?,
            });
        }
        // The CPU model's own tables (same positions: the context length).
        let (cos, sin) = weights.rope.tables();
        let device_weights = DeviceWeights {
            embedding: upload(&weights.embedding).map_err(fail("uploading the embedding"))?,
            output: weights.output.as_ref().map(upload).transpose().map_err(fail("uploading the lm head"))?,
            output_norm: upload_f32(&weights.output_norm).map_err(fail("uploading the output norm"))?,
            layers,
            rope_cos: upload_f32(&cos).map_err(fail("uploading the rope tables"))?,
            rope_sin: upload_f32(&sin).map_err(fail("uploading the rope tables"))?,
            positions,
        };
        let k_cache = alloc::<u16>(&stream, cache_elements).map_err(fail("allocating the kv cache"))?;
        let v_cache = alloc::<u16>(&stream, cache_elements).map_err(fail("allocating the kv cache"))?;
        let kernels = Kernels::load(&ctx)?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| fail("creating the cuBLAS handle")(e.to_string()))?;
        let scratch = Scratch::new(&stream).map_err(fail("allocating scratch buffers"))?;
        stream.synchronize().map_err(|e| fail("uploading the weights")(e.to_string()))?;

        let mut runner = Self {
            config: c,
            ordinal,
            device_name,
            kv_blocks,
            weight_bytes,
            cache_bytes,
            plan: StepPlan::default(),
            logits: Vec::new(),
            kernels,
            blas,
            weights: device_weights,
            k_cache,
            v_cache,
            scratch,
            stream,
            ctx,
        };
        runner.warm_up().map_err(|e| EngineError::Load(format!("cuda:{ordinal}: warm-up: {e}")))?;
        Ok(runner)
    }

    /// A prefill of 8 tokens and a decode step in block 0 (as the CPU factory's warm-up):
    /// compiles nothing more, but makes every kernel and cuBLAS path run once.
    fn warm_up(&mut self) -> Result<(), EngineError> {
        let vocab = self.config.vocab as u32;
        let prompt: Vec<u32> = (0..8u32).map(|i| i % vocab).collect();
        let blocks = [0u32];
        if self.config.context_length < 9 {
            return Ok(());
        }
        self.forward(&[SeqChunk { tokens: &prompt, start: 0, blocks: &blocks, logits: Logits::Last }])?;
        self.forward(&[SeqChunk { tokens: &prompt[..1], start: 8, blocks: &blocks, logits: Logits::Last }])?;
        Ok(())
    }

    pub fn ordinal(&self) -> u32 {
        self.ordinal
    }

    /// The GPU's name as the driver reports it.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Bytes of f16 weights on the device.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Bytes of the KV cache on the device.
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// Everything after the host-side checks: upload, layers, LM head, download into
    /// `self.logits`.
    fn run_step(&mut self) -> Result<(), EngineError> {
        let c = &self.config;
        let plan = &self.plan;
        let (t, n) = (plan.tokens, plan.logit_rows);
        if t > MAX_STEP_TOKENS {
            return Err(EngineError::Step(format!("cuda: {t} tokens in one step (at most {MAX_STEP_TOKENS})")));
        }
        let stream = &self.stream;
        let k = &self.kernels;
        let w = &self.weights;
        let s = &mut self.scratch;
        self.ctx.bind_to_thread().map_err(|e| step_error("binding the context")(e.to_string()))?;
        s.reserve(stream, c, t, n, plan.meta.len()).map_err(step_error("allocating scratch buffers"))?;
        stream
            .memcpy_htod(&plan.meta, &mut s.meta.slice_mut(0..plan.meta.len()))
            .map_err(|e| step_error("uploading the step")(e.to_string()))?;

        let launch_error = |name: &'static str| move |e: cudarc::driver::DriverError| step_error(name)(e.to_string());
        let (hidden, heads, kv_heads, head_dim) = (c.hidden as i32, c.heads as i32, c.kv_heads as i32, c.head_dim as i32);
        let (ffn, eps) = (c.ffn as i32, c.rms_eps);
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        let no_rows: u64 = 0;
        let layer_elements = (self.kv_blocks * c.kv_heads * BLOCK_TOKENS * c.head_dim) as u64;
        let token_ids = s.meta.slice(plan.token_ids());
        let positions = s.meta.slice(plan.positions());
        let slot_ids = s.meta.slice(plan.slot_ids());
        let table_offsets = s.meta.slice(plan.table_offsets());
        let logit_rows = s.meta.slice(plan.logit_row_ids());
        let tables = s.meta.slice(plan.tables());

        // SAFETY (every launch below): argument types and order match the kernel's
        // signature in kernels::SOURCE; every buffer holds at least the rows the grid
        // covers (Scratch::reserve); token ids, positions and block ids were checked by
        // StepPlan::build against the vocabulary, the rope tables and the cache.
        unsafe {
            stream
                .launch_builder(&k.embed)
                .arg(&w.embedding.data)
                .arg(&token_ids)
                .arg(&mut s.x)
                .arg(&hidden)
                .launch(rows_config(t))
                .map_err(launch_error("embed"))?;
        }
        for (li, layer) in w.layers.iter().enumerate() {
            let layer_base = li as u64 * layer_elements;
            unsafe {
                stream
                    .launch_builder(&k.rms_norm)
                    .arg(&s.x)
                    .arg(&no_rows)
                    .arg(&layer.attn_norm)
                    .arg(&mut s.normed)
                    .arg(&hidden)
                    .arg(&eps)
                    .launch(rows_config(t))
                    .map_err(launch_error("rms_norm"))?;
            }
            gemm(&self.blas, stream, &layer.qkv, &s.normed, t, &mut s.qkv, false).map_err(step_error("qkv gemm"))?;
            unsafe {
                stream
                    .launch_builder(&k.rope_store)
                    .arg(&mut s.qkv)
                    .arg(&positions)
                    .arg(&slot_ids)
                    .arg(&w.rope_cos)
                    .arg(&w.rope_sin)
                    .arg(&mut self.k_cache)
                    .arg(&mut self.v_cache)
                    .arg(&heads)
                    .arg(&kv_heads)
                    .arg(&head_dim)
                    .arg(&layer_base)
                    .launch(LaunchConfig { grid_dim: (t as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 })
                    .map_err(launch_error("rope_store"))?;
                stream
                    .launch_builder(&k.attention)
                    .arg(&s.qkv)
                    .arg(&positions)
                    .arg(&table_offsets)
                    .arg(&tables)
                    .arg(&self.k_cache)
                    .arg(&self.v_cache)
                    .arg(&mut s.attn)
                    .arg(&heads)
                    .arg(&kv_heads)
                    .arg(&head_dim)
                    .arg(&layer_base)
                    .arg(&scale)
                    .launch(LaunchConfig {
                        grid_dim: (c.heads as u32, t as u32, 1),
                        block_dim: (ATTENTION_THREADS, 1, 1),
                        shared_mem_bytes: 0,
                    })
                    .map_err(launch_error("attention"))?;
            }
            gemm(&self.blas, stream, &layer.attn_out, &s.attn, t, &mut s.x, true).map_err(step_error("attn_out gemm"))?;
            unsafe {
                stream
                    .launch_builder(&k.rms_norm)
                    .arg(&s.x)
                    .arg(&no_rows)
                    .arg(&layer.ffn_norm)
                    .arg(&mut s.normed)
                    .arg(&hidden)
                    .arg(&eps)
                    .launch(rows_config(t))
                    .map_err(launch_error("rms_norm"))?;
            }
            gemm(&self.blas, stream, &layer.gate_up, &s.normed, t, &mut s.gate_up, false).map_err(step_error("gate_up gemm"))?;
            let rows = t as i32;
            let elements = t * c.ffn;
            let blocks = elements.div_ceil(ROW_THREADS as usize).min(8192) as u32;
            unsafe {
                stream
                    .launch_builder(&k.silu_mul)
                    .arg(&s.gate_up)
                    .arg(&mut s.act)
                    .arg(&ffn)
                    .arg(&rows)
                    .launch(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: 0 })
                    .map_err(launch_error("silu_mul"))?;
            }
            gemm(&self.blas, stream, &layer.down, &s.act, t, &mut s.x, true).map_err(step_error("down gemm"))?;
        }

        if n > 0 {
            unsafe {
                stream
                    .launch_builder(&k.rms_norm)
                    .arg(&s.x)
                    .arg(&logit_rows)
                    .arg(&w.output_norm)
                    .arg(&mut s.final_normed)
                    .arg(&hidden)
                    .arg(&eps)
                    .launch(rows_config(n))
                    .map_err(launch_error("rms_norm"))?;
            }
            gemm(&self.blas, stream, w.lm_head(), &s.final_normed, n, &mut s.logits, false).map_err(step_error("lm head gemm"))?;
            self.logits.resize(n * c.vocab, 0.0);
            stream
                .memcpy_dtoh(&s.logits.slice(0..n * c.vocab), &mut self.logits[..])
                .map_err(|e| step_error("downloading the logits")(e.to_string()))?;
        }
        stream.synchronize().map_err(|e| step_error("running the step")(e.to_string()))?;
        Ok(())
    }
}

impl Drop for CudaRunner {
    /// The fields' own drops free device memory; they need this context current on the
    /// dropping thread, which need not be the one that built the runner.
    fn drop(&mut self) {
        self.ctx.record_err(self.ctx.bind_to_thread());
    }
}

impl ModelRunner for CudaRunner {
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<&[f32], EngineError> {
        self.logits.clear();
        self.plan.build(chunks, &self.config, self.weights.positions, self.kv_blocks)?;
        if self.plan.tokens > 0 {
            without_panics(|| self.run_step(), |m| EngineError::Step(format!("cuda: {m}")))?;
        }
        Ok(&self.logits)
    }

    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn kv_blocks(&self) -> usize {
        self.kv_blocks
    }

    fn device(&self) -> String {
        format!("cuda:{} ({})", self.ordinal, self.device_name)
    }

    fn frees_the_cpu(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LlamaConfig {
        LlamaConfig {
            architecture: "llama".into(),
            name: "tiny".into(),
            layers: 1,
            hidden: 8,
            ffn: 16,
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            vocab: 10,
            context_length: 64,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            tied_embeddings: true,
        }
    }

    #[test]
    fn plan_packs_tokens_positions_slots_tables_and_logit_rows() {
        let c = config();
        let a_blocks = [5u32, 2];
        let b_blocks = [7u32];
        let chunks = [
            SeqChunk { tokens: &[1, 2, 3], start: 14, blocks: &a_blocks, logits: Logits::All },
            SeqChunk { tokens: &[4], start: 3, blocks: &b_blocks, logits: Logits::Last },
            SeqChunk { tokens: &[6, 7], start: 0, blocks: &b_blocks, logits: Logits::None },
        ];
        let mut plan = StepPlan::default();
        plan.build(&chunks, &c, 64, 8).unwrap();
        assert_eq!(plan.tokens, 6);
        assert_eq!(plan.logit_rows, 4);
        assert_eq!(&plan.meta[plan.token_ids()], &[1, 2, 3, 4, 6, 7]);
        assert_eq!(&plan.meta[plan.positions()], &[14, 15, 16, 3, 0, 1]);
        // Position 16 is block a[1] = 2, slot 0.
        assert_eq!(&plan.meta[plan.slot_ids()], &[5 * 16 + 14, 5 * 16 + 15, 2 * 16, 7 * 16 + 3, 7 * 16, 7 * 16 + 1]);
        assert_eq!(&plan.meta[plan.tables()], &[5, 2, 7, 7]);
        assert_eq!(&plan.meta[plan.table_offsets()], &[0, 0, 0, 2, 3, 3]);
        assert_eq!(&plan.meta[plan.logit_row_ids()], &[0, 1, 2, 3]);
    }

    #[test]
    fn plan_refuses_what_the_cpu_runner_refuses_with_the_same_messages() {
        let c = config();
        let mut plan = StepPlan::default();
        let blocks = [0u32, 1, 2, 3, 4];
        let err = |chunk: SeqChunk<'_>, plan: &mut StepPlan| plan.build(&[chunk], &c, 64, 8).unwrap_err().to_string();
        assert_eq!(
            err(SeqChunk { tokens: &[1], start: 64, blocks: &blocks, logits: Logits::Last }, &mut plan),
            "engine failure: position 65 is past the context length 64"
        );
        assert_eq!(
            err(SeqChunk { tokens: &[1], start: 16, blocks: &blocks[..1], logits: Logits::Last }, &mut plan),
            "engine failure: block table too short for position 17"
        );
        assert_eq!(
            err(SeqChunk { tokens: &[10], start: 0, blocks: &blocks, logits: Logits::Last }, &mut plan),
            "engine failure: token id 10 is outside the vocabulary (10)"
        );
        let far = [9u32];
        assert_eq!(
            err(SeqChunk { tokens: &[1], start: 0, blocks: &far, logits: Logits::Last }, &mut plan),
            "engine failure: block id 9 is outside the cache (8 blocks)"
        );
        // Rope tables shorter than the context: the CPU checks rope.positions too.
        assert!(plan.build(&[SeqChunk { tokens: &[1], start: 40, blocks: &blocks, logits: Logits::Last }], &c, 32, 8).is_err());
        plan.build(&[], &c, 64, 8).unwrap();
        assert_eq!((plan.tokens, plan.logit_rows, plan.meta.len()), (0, 0, 0));
    }

    #[test]
    fn building_without_a_driver_is_an_error_not_a_panic() {
        if super::super::driver_present() {
            return; // a machine with a driver: the GPU tests cover the runner
        }
        let weights = tiny_weights();
        let err = CudaRunner::new(&weights, 0, 4).unwrap_err();
        assert!(matches!(&err, EngineError::Load(m) if m.contains("libcuda")), "{err}");
    }

    fn tiny_weights() -> LlamaWeights {
        use crate::llm::model::LayerWeights;
        use crate::llm::quant::Kernel;
        // No layers and an empty embedding: the runner must fail before reading them.
        let c = config();
        LlamaWeights {
            rope: crate::llm::ops::Rope::new(c.head_dim, c.context_length, c.rope_theta),
            embedding: QMatrix::quantize_q8(0, 32, &[]).unwrap(),
            layers: Vec::<LayerWeights>::new(),
            output_norm: vec![1.0; c.hidden],
            output: None,
            kernel: Kernel::Scalar,
            config: c,
        }
    }
}
