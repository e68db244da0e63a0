//! The Llama forward pass on an NVIDIA GPU: GPU discovery and [`CudaRunner`], a
//! [`ModelRunner`](crate::llm::model::ModelRunner) with exactly the CPU runner's
//! semantics (same batch of [`SeqChunk`](crate::llm::model::SeqChunk)s, same logits rows
//! in the same order, same errors for bad positions and tokens).
//!
//! It uses `cudarc` with dynamic loading: nothing CUDA is needed to build, and on a
//! machine without the driver [`discover`] returns no GPU instead of failing. The driver
//! (`libcuda`), cuBLAS (`libcublas`) and NVRTC (`libnvrtc`) libraries are looked up when
//! they are first needed; a missing one is an error, never a panic (cudarc panics on a
//! missing library or symbol: every entry point checks for the library first and runs
//! behind `catch_unwind`).
//!
//! # How a step runs
//! The host checks the chunks (as the CPU runner does) and packs one `u32` array per
//! step: token ids, positions, KV slot ids (`block * 16 + slot`), each token's offset
//! into the flattened block tables, the rows whose logits are wanted, then the block
//! tables. One upload, then per layer:
//!
//! 1. `rms_norm` (f32 residual in, f16 out);
//! 2. cuBLAS `GemmEx` with the fused QKV matrix (f16 in, f32 out, f32 accumulation);
//! 3. `rope_store`: rotary embedding of queries and keys in place, keys and values
//!    written to the f16 paged cache through the slot ids;
//! 4. `attention`: causal grouped-query attention, one thread block per (token, head),
//!    over the token's own sequence through its block table (decode and prefill alike);
//! 5. `GemmEx` with `attn_out`, accumulating into the residual (`beta = 1`: the residual
//!    add is part of the product);
//! 6. `rms_norm`, `GemmEx` with the fused gate/up matrix, `silu_mul`, `GemmEx` with
//!    `down` accumulating into the residual.
//!
//! Then `rms_norm` of only the requested rows (gathered by row index), the LM head
//! product, and one download of those rows' logits (f32), in chunk then position order.
//!
//! # Kernels ([`kernels::SOURCE`], compiled with NVRTC when a runner is built)
//! - `embed`: gathers one f16 embedding row per token into the f32 residual stream.
//! - `rms_norm`: one block per row; sum of squares by warp shuffles, f16 output; takes an
//!   optional row-index array (the final norm reads only the rows whose logits are wanted).
//! - `rope_store`: llama.cpp's "normal" rope (adjacent pairs) with the host's f64-computed
//!   cos/sin tables (the same values as `ops::Rope`), then the KV-cache store.
//! - `attention`: 4 warps per (token, head), each with an online softmax over every 4th
//!   key, merged at the end; scale `1/sqrt(head_dim)`; f16 output for the next product.
//! - `silu_mul`: `silu(gate) * up` into f16.
//!
//! Matrix products are cuBLAS (`cublasGemmEx`, f16 weights and activations, f32 output and
//! accumulation). The f32 → f16 casts are fused into the kernels that produce GEMM inputs;
//! the residual adds are fused into the GEMMs.
//!
//! # Memory layout (device)
//! - Weights: every matrix dequantized from its `QMatrix` to f16, row-major
//!   (`rows` outputs by `cols` inputs), which cuBLAS reads as a column-major `cols x rows`
//!   matrix with `op = T`. Fused QKV (`hidden + 2 * kv_dim` rows) and gate/up (`2 * ffn`
//!   rows, gate first) as on the CPU. Norm weights f32. With tied embeddings one f16 copy
//!   serves as embedding table and LM head.
//! - Activations, row-major `tokens x width`: residual `x` f32; norm, attention and
//!   SwiGLU outputs f16 (GEMM inputs); QKV and gate/up products f32.
//! - KV cache: keys and values each one f16 buffer of
//!   `[layer][block][kv_head][slot][head_dim]`, the CPU cache's layout (`kv_cache.rs`)
//!   in half the bytes.
//!
//! # Precision
//! Weights and GEMM inputs are f16 (the CPU quantizes activations to 8 bits), the cache is
//! f16 (the CPU's is f32): logits differ slightly from the CPU's; [`check`] measures how
//! much (top-1 agreement and log-probability differences under teacher forcing).
//!
//! # What was verified where
//! Written on a machine with no GPU and no CUDA toolkit. **It has not run on a GPU yet.**
//! Verified there:
//! - the crate builds; [`discover`] returns no GPU without a driver; building a runner
//!   without a driver is an error, not a panic; the host-side step packing
//!   ([`StepPlan`]) against the CPU runner's checks (unit tests);
//! - the kernels compile to PTX with NVRTC 12.8 (the `nvidia-cuda-nvrtc-cu12` wheel; the
//!   unit test in [`kernels`] does it wherever libnvrtc is found);
//! - `scripts/check-cuda-kernels`: (1) each kernel run on the CPU, one thread per CUDA
//!   thread (barriers for `__syncthreads`, a per-warp exchange for shuffles), against
//!   reference loops, for head sizes 64, 40 and 256; (2) the whole runner driven through
//!   cudarc on CPU stand-ins for libcuda and libcublas (those emulated kernels behind
//!   `cuLaunchKernel`, unpacking arguments by the kernels' C signatures; a column-major
//!   loop behind `cublasGemmEx` that checks types and leading dimensions), with the real
//!   NVRTC: a tiny random model, tied and untied LM head, chunked prefill and batched
//!   decode, agrees with the CPU runner on 100% of top-1 tokens (mean |logprob diff| at
//!   the top token about 0.01) and with the exact f32 reference
//!   ([`check::ExactRunner`]) on 100% (mean 0.0005, max 0.02 over the vocabulary); bad
//!   chunks give the CPU runner's errors.
//! - An ad-hoc run on that emulation (not kept: too slow for the whole model) of
//!   SmolLM2's real weights cut to 2 layers: 100% top-1 agreement with the exact f32
//!   reference (max |logprob diff| at the top token 0.005), where the CPU runner agreed
//!   with it on 95.6% (0.07): most of any CPU/GPU difference is the CPU's 8-bit
//!   activations, and the 95% criterion against the CPU is about the CPU's noise too.
//!
//! Not verified: anything that only a real GPU shows (the real driver's and cuBLAS's
//! behaviour, PTX JIT, races a CPU emulation cannot show, speed). That is what
//! `tests/llm_cuda.rs` (real model, top-1 agreement >= 95%, decode tokens/s at batch 1
//! and 16) and `examples/cuda_check.rs` check on a machine with a GPU.
//!
//! # Known limits
//! - Weights are f16 (2 bytes per weight, 4x a Q4 file); no quantized GEMV kernel yet.
//! - About 9 launches per layer per step and a host synchronization per step: no CUDA
//!   graphs, so small-batch decode is launch-bound on small models.
//! - Attention reads each kv head once per query head of its group (3x for SmolLM2).
//! - PTX from NVRTC is JIT-compiled by the driver: the driver must be at least as new as
//!   the NVRTC library found (else `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`, reported as a
//!   load error).

//! # Layout
//! - this file: [`discover`] and [`GpuInfo`];
//! - [`kernels`]: the CUDA C source and the loaded kernels;
//! - [`runner`]: [`CudaRunner`] and [`StepPlan`];
//! - [`check`]: the GPU acceptance check (comparison with the CPU runner and with an
//!   exact f32 reference, decode speed) shared by the test and the example.

pub mod check;
pub mod kernels;
pub mod runner;

pub use runner::{CudaRunner, StepPlan};

use std::panic::{catch_unwind, AssertUnwindSafe};

use cudarc::driver::result::DriverError;
use cudarc::driver::sys::CUresult;
use cudarc::driver::CudaContext;

/// One GPU as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub ordinal: u32,
    pub name: String,
    /// Bytes.
    pub total_memory: u64,
    /// Bytes free when asked.
    pub free_memory: u64,
    /// `(major, minor)`, e.g. `(9, 0)` for an H100.
    pub compute_capability: (u32, u32),
}

/// Whether the CUDA driver library can be loaded (without it cudarc panics on any call).
pub fn driver_present() -> bool {
    // SAFETY: only dlopens the library to see whether it loads; no symbol is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The GPUs of this machine. No driver library, or a driver that reports no device:
/// `Ok` with no GPU. Any other driver error: `Err` with its message. Never panics.
///
/// Reading free memory needs a context: this retains each device's primary context for
/// the time of the query (a runner on the same device shares it).
pub fn discover() -> Result<Vec<GpuInfo>, String> {
    if !driver_present() {
        return Ok(Vec::new());
    }
    catch_unwind(discover_with_driver).unwrap_or_else(|panic| Err(format!("cuda: {}", panic_message(&*panic))))
}

fn discover_with_driver() -> Result<Vec<GpuInfo>, String> {
    let driver = |what: &str, e: DriverError| format!("cuda: {what}: {e}");
    match cudarc::driver::result::init() {
        Ok(()) => {}
        Err(DriverError(CUresult::CUDA_ERROR_NO_DEVICE)) => return Ok(Vec::new()),
        Err(e) => return Err(driver("cuInit", e)),
    }
    let count = cudarc::driver::result::device::get_count().map_err(|e| driver("counting devices", e))?;
    let mut gpus = Vec::new();
    for ordinal in 0..count.max(0) as usize {
        let at = |what: &str| format!("device {ordinal}: {what}");
        let ctx = CudaContext::new(ordinal).map_err(|e| driver(&at("creating a context"), e))?;
        let name = ctx.name().map_err(|e| driver(&at("name"), e))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| driver(&at("compute capability"), e))?;
        let (free, total) = ctx.mem_get_info().map_err(|e| driver(&at("memory"), e))?;
        gpus.push(GpuInfo {
            ordinal: ordinal as u32,
            name,
            total_memory: total as u64,
            free_memory: free as u64,
            compute_capability: (major.max(0) as u32, minor.max(0) as u32),
        });
    }
    Ok(gpus)
}

/// What a caught panic said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Run `f`, turning a panic inside cudarc (a missing library or symbol) into an error.
pub(crate) fn without_panics<T, E>(f: impl FnOnce() -> Result<T, E>, error: impl FnOnce(String) -> E) -> Result<T, E> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| Err(error(format!("cudarc panicked: {}", panic_message(&*panic)))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_finds_nothing_without_a_driver_and_never_fails_with_one_that_works() {
        let found = discover();
        if driver_present() {
            // A machine with the driver: discovery must succeed (GPUs or none).
            let gpus = found.unwrap_or_else(|e| panic!("discovery failed with a driver present: {e}"));
            for (i, gpu) in gpus.iter().enumerate() {
                assert_eq!(gpu.ordinal as usize, i);
                assert!(gpu.total_memory >= gpu.free_memory && gpu.total_memory > 0, "{gpu:?}");
            }
        } else {
            assert_eq!(found, Ok(Vec::new()), "no driver library: no GPU and no error");
        }
    }

    #[test]
    fn panics_become_errors() {
        let r: Result<(), String> = without_panics(|| panic!("Missing symbol cuFoo"), |m| m);
        assert_eq!(r, Err("cudarc panicked: Missing symbol cuFoo".to_string()));
    }
}
