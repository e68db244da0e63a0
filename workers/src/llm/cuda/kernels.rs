//! The CUDA C source of the runner's kernels, compiled at run time with NVRTC, and the
//! loaded functions.
//!
//! The source includes no header (NVRTC ships none of the CUDA toolkit's): `f16` values
//! travel as raw `unsigned short` bits and are converted with the PTX `cvt` instruction.
//! Every kernel reads and writes row-major matrices whose rows are tokens; see the
//! module docs of [`crate::llm::cuda`] for the memory layout.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::error::EngineError;

/// Threads per block of the attention kernel (4 warps, each its own share of the keys).
pub const ATTENTION_THREADS: u32 = 128;
/// Largest head size the attention kernel handles (8 values per lane).
pub const MAX_HEAD_DIM: usize = 256;

/// The kernels' CUDA C source.
pub const SOURCE: &str = r#"
typedef unsigned int u32;
typedef unsigned short f16bits;

#define BLOCK_TOKENS 16
#define MAX_HEAD_DIM 256
#define MAX_DIMS_PER_LANE (MAX_HEAD_DIM / 32)
#define MAX_WARPS 4

__device__ __forceinline__ float h2f(f16bits h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
}

// Round to nearest; saturates at the largest finite f16 instead of overflowing to inf.
__device__ __forceinline__ f16bits f2h(float f) {
    f16bits h;
    f = fminf(fmaxf(f, -65504.0f), 65504.0f);
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float block_sum(float v, float* shared) {
    v = warp_sum(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    if (warp == 0) {
        v = lane < warps ? shared[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) shared[32] = v;
    }
    __syncthreads();
    return shared[32];
}

// x[r] = embedding[tokens[r]] (f16 table, f32 out). Grid: one block per token.
extern "C" __global__ void embed(const f16bits* table, const u32* tokens, float* x, int hidden) {
    const int r = blockIdx.x;
    const f16bits* row = table + (size_t)tokens[r] * hidden;
    float* out = x + (size_t)r * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) out[i] = h2f(row[i]);
}

// out[r] = x[src] / rms(x[src]) * weight, with src = rows ? rows[r] : r (f32 in, f16 out).
// Grid: one block per output row.
extern "C" __global__ void rms_norm(const float* x, const u32* rows, const float* weight,
                                    f16bits* out, int hidden, float eps) {
    __shared__ float shared[33];
    const int r = blockIdx.x;
    const float* src = x + (size_t)(rows ? rows[r] : (u32)r) * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) ss += src[i] * src[i];
    ss = block_sum(ss, shared);
    const float scale = 1.0f / sqrtf(ss / (float)hidden + eps);
    f16bits* dst = out + (size_t)r * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = f2h(src[i] * scale * weight[i]);
}

// Rotary embedding of one token's query and key heads (adjacent pairs x[2i], x[2i+1],
// in place in the f32 qkv row), then its keys and values stored in the f16 cache at
// slot_ids[r] = block * 16 + slot. Grid: one block per token.
extern "C" __global__ void rope_store(float* qkv, const u32* pos, const u32* slot_ids,
                                      const float* cos_table, const float* sin_table,
                                      f16bits* k_cache, f16bits* v_cache,
                                      int heads, int kv_heads, int head_dim,
                                      unsigned long long layer_base) {
    const int r = blockIdx.x;
    const int pairs = head_dim / 2;
    const int hidden = heads * head_dim, kv_dim = kv_heads * head_dim;
    float* row = qkv + (size_t)r * (hidden + 2 * kv_dim);
    const float* c = cos_table + (size_t)pos[r] * pairs;
    const float* s = sin_table + (size_t)pos[r] * pairs;
    const size_t block = slot_ids[r] / BLOCK_TOKENS, slot = slot_ids[r] % BLOCK_TOKENS;
    const int q_pairs = heads * pairs;
    for (int p = threadIdx.x; p < (heads + kv_heads) * pairs; p += blockDim.x) {
        const int i = p % pairs;
        const float a = row[2 * p], b = row[2 * p + 1];
        const float ra = a * c[i] - b * s[i];
        const float rb = a * s[i] + b * c[i];
        if (p < q_pairs) {
            row[2 * p] = ra;
            row[2 * p + 1] = rb;
        } else {
            const int kp = p - q_pairs;
            const size_t head = kp / pairs;
            const size_t at = layer_base + ((block * kv_heads + head) * BLOCK_TOKENS + slot) * head_dim + 2 * i;
            k_cache[at] = f2h(ra);
            k_cache[at + 1] = f2h(rb);
        }
    }
    const float* v = row + hidden + kv_dim;
    for (int e = threadIdx.x; e < kv_dim; e += blockDim.x) {
        const size_t head = e / head_dim, d = e % head_dim;
        const size_t at = layer_base + ((block * kv_heads + head) * BLOCK_TOKENS + slot) * head_dim + d;
        v_cache[at] = f2h(v[e]);
    }
}

// Causal attention of one (token, query head) over positions 0..=pos[r] of the token's
// sequence, read through its block table (tables + table_at[r]). Grouped-query: head h
// reads kv head h / (heads / kv_heads). Each warp takes every 4th key with an online
// softmax; the warps' partial results are merged at the end. Output f16.
// Grid: (heads, tokens); block: 128 threads.
extern "C" __global__ void attention(const float* qkv, const u32* pos, const u32* table_at,
                                     const u32* tables, const f16bits* k_cache,
                                     const f16bits* v_cache, f16bits* out,
                                     int heads, int kv_heads, int head_dim,
                                     unsigned long long layer_base, float scale) {
    __shared__ float q[MAX_HEAD_DIM];
    __shared__ float warp_max[MAX_WARPS], warp_sum_exp[MAX_WARPS];
    __shared__ float warp_acc[MAX_WARPS][MAX_HEAD_DIM];
    const int h = blockIdx.x, r = blockIdx.y;
    const int group = heads / kv_heads, kvh = h / group;
    const int hidden = heads * head_dim, kv_dim = kv_heads * head_dim;
    const float* q_row = qkv + (size_t)r * (hidden + 2 * kv_dim) + (size_t)h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) q[d] = q_row[d];
    __syncthreads();

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int len = (int)pos[r] + 1;
    const u32* table = tables + table_at[r];
    const float neg_inf = __int_as_float(0xff800000);
    float m = neg_inf, l = 0.0f;
    float acc[MAX_DIMS_PER_LANE];
    for (int k = 0; k < MAX_DIMS_PER_LANE; ++k) acc[k] = 0.0f;
    for (int j = warp; j < len; j += warps) {
        const size_t base = layer_base +
            (((size_t)table[j / BLOCK_TOKENS] * kv_heads + kvh) * BLOCK_TOKENS + j % BLOCK_TOKENS) * head_dim;
        float score = 0.0f;
        for (int k = 0; k < MAX_DIMS_PER_LANE; ++k) {
            const int d = lane + 32 * k;
            if (d < head_dim) score += q[d] * h2f(k_cache[base + d]);
        }
        score = warp_sum(score) * scale;
        const float m_new = fmaxf(m, score);
        const float correction = expf(m - m_new);
        const float p = expf(score - m_new);
        l = l * correction + p;
        for (int k = 0; k < MAX_DIMS_PER_LANE; ++k) {
            const int d = lane + 32 * k;
            if (d < head_dim) acc[k] = acc[k] * correction + p * h2f(v_cache[base + d]);
        }
        m = m_new;
    }
    if (lane == 0) {
        warp_max[warp] = m;
        warp_sum_exp[warp] = l;
    }
    for (int k = 0; k < MAX_DIMS_PER_LANE; ++k) {
        const int d = lane + 32 * k;
        if (d < head_dim) warp_acc[warp][d] = acc[k];
    }
    __syncthreads();

    float total_max = neg_inf;
    for (int w = 0; w < warps; ++w) total_max = fmaxf(total_max, warp_max[w]);
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += warp_sum_exp[w] * expf(warp_max[w] - total_max);
    f16bits* dst = out + (size_t)r * hidden + (size_t)h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
        for (int w = 0; w < warps; ++w) o += warp_acc[w][d] * expf(warp_max[w] - total_max);
        dst[d] = f2h(o / total);
    }
}

// out[r][i] = silu(gate_up[r][i]) * gate_up[r][ffn + i] (f32 in, f16 out).
extern "C" __global__ void silu_mul(const float* gate_up, f16bits* out, int ffn, int rows) {
    const size_t n = (size_t)ffn * rows;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / ffn, c = i % ffn;
        const float g = gate_up[r * 2 * ffn + c];
        const float u = gate_up[r * 2 * ffn + ffn + c];
        out[i] = f2h(g / (1.0f + expf(-g)) * u);
    }
}
"#;

/// Names of the kernels in [`SOURCE`], in the order [`Kernels`] holds them.
pub const KERNEL_NAMES: [&str; 5] = ["embed", "rms_norm", "rope_store", "attention", "silu_mul"];

/// Compile [`SOURCE`] to PTX. Needs the NVRTC library (not a GPU).
pub fn compile() -> Result<Ptx, String> {
    // SAFETY: only tries to dlopen the library; no symbol of it is used here.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("the NVRTC library (libnvrtc.so) was not found: install the CUDA toolkit's nvrtc or put it on LD_LIBRARY_PATH".to_string());
    }
    let options = CompileOptions { name: Some("swell_llm.cu".to_string()), ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(SOURCE, options).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. } => {
            format!("nvrtc: {nvrtc}: {}", log.to_string_lossy())
        }
        other => format!("nvrtc: {other}"),
    })
}

/// The loaded kernels of one context.
#[derive(Debug)]
pub struct Kernels {
    pub embed: CudaFunction,
    pub rms_norm: CudaFunction,
    pub rope_store: CudaFunction,
    pub attention: CudaFunction,
    pub silu_mul: CudaFunction,
}

impl Kernels {
    /// Compile the source and load every kernel into `ctx`.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self, EngineError> {
        let ptx = compile().map_err(|e| EngineError::Load(format!("cuda kernels: {e}")))?;
        let module = ctx
            .load_module(ptx)
            .map_err(|e| EngineError::Load(format!("cuda kernels: loading the module: {e}")))?;
        let function = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| EngineError::Load(format!("cuda kernels: function {name}: {e}")))
        };
        Ok(Self {
            embed: function("embed")?,
            rms_norm: function("rms_norm")?,
            rope_store: function("rope_store")?,
            attention: function("attention")?,
            silu_mul: function("silu_mul")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles the kernels where NVRTC is present (it needs the library, not a GPU);
    /// where it is absent this check cannot run and the test says so.
    #[test]
    fn kernels_compile_with_nvrtc_when_present() {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("libnvrtc not found: kernel compilation not checked (put libnvrtc.so.12 on LD_LIBRARY_PATH to check it)");
            return;
        }
        let ptx = compile().unwrap_or_else(|e| panic!("{e}"));
        let text = ptx.to_src();
        for name in KERNEL_NAMES {
            assert!(text.contains(&format!(".entry {name}(")), "kernel {name} missing from the PTX");
        }
    }
}
