//! The attention kernel alone: `cargo bench -p swell-workers --bench attention`.
//!
//! What a cached conversation turn pays beyond a fresh prompt: its new tokens attend over
//! the whole history. With SmolLM2-135M's shape (30 layers, 9 query heads over 3 KV heads
//! of 64 values), `SWELL_BENCH_NEW` new tokens (default 34) attend over a history of
//! `SWELL_BENCH_HISTORY` positions (default 784: turn 8 of the `conversation` bench), on
//! one thread, token by token (tiles of 1) and in tiles of up to
//! [`TILE_TOKENS`](swell_workers::llm::attention::TILE_TOKENS) as the forward pass runs
//! them. Prints the best of 20 passes over all layers and the multiply-adds per second
//! (query-key and probability-value products together; the softmax's time is included).
//!
//! The last row is the same over the 8-bit cache (`kv_cache_type = "q8"`,
//! [`attend_q8`](swell_workers::llm::attention_q8::attend_q8)) with the kernel class of
//! that instruction set (`avx512`: the detected AVX-512 class).
//!
//! Env: `SWELL_BENCH_HISTORY`, `SWELL_BENCH_NEW`, `SWELL_BENCH_KERNEL` (an f32 class:
//! `portable`, `avx2`, `avx512`; default: the best this CPU runs).

use std::time::Instant;

use swell_workers::llm::attention::{attend, TileQuery, TILE_TOKENS};
use swell_workers::llm::gguf::LlamaConfig;
use swell_workers::llm::attention_q8::attend_q8;
use swell_workers::llm::kv_cache::{KvCache, KvCacheType, BLOCK_TOKENS};
use swell_workers::llm::quant::{F32Simd, Kernel};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn simd() -> F32Simd {
    let available: Vec<F32Simd> = Kernel::available().into_iter().map(Kernel::f32_simd).collect();
    let best = available.iter().copied().find(|&s| s == F32Simd::Avx512).or_else(|| available.iter().copied().find(|&s| s == F32Simd::Avx2)).unwrap_or(F32Simd::Portable);
    match std::env::var("SWELL_BENCH_KERNEL").as_deref() {
        Ok("portable") => F32Simd::Portable,
        Ok("avx2") if available.contains(&F32Simd::Avx2) => F32Simd::Avx2,
        Ok("avx512") if available.contains(&F32Simd::Avx512) => F32Simd::Avx512,
        Ok(other) => panic!("SWELL_BENCH_KERNEL={other}: not a class this CPU runs"),
        Err(_) => best,
    }
}

/// One attention call: layer, tile, output, scores.
type AttendFn<'a> = dyn FnMut(usize, &TileQuery, &mut [f32], &mut Vec<f32>) + 'a;

fn main() {
    let c = LlamaConfig {
        architecture: "llama".into(),
        name: "SmolLM2-135M shape".into(),
        layers: 30,
        hidden: 576,
        ffn: 1536,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        vocab: 49_152,
        context_length: 8192,
        rope_theta: 100_000.0,
        rms_eps: 1e-5,
        tied_embeddings: true,
    };
    let (history, new) = (env("SWELL_BENCH_HISTORY", 784), env("SWELL_BENCH_NEW", 34));
    let total = history + new;
    // Every other block, so a sequence's blocks are not one contiguous run.
    let blocks = total.div_ceil(BLOCK_TOKENS);
    let mut cache = KvCache::new(c.layers, 2 * blocks, c.kv_heads, c.head_dim).expect("cache");
    let mut q8 = KvCache::with_type(c.layers, 2 * blocks, c.kv_heads, c.head_dim, KvCacheType::Q8).expect("cache");
    let table: Vec<u32> = (0..blocks as u32).map(|b| 2 * b + 1).collect();
    let kv_dim = c.kv_heads * c.head_dim;
    for layer in 0..c.layers {
        for pos in 0..total {
            let k: Vec<f32> = (0..kv_dim).map(|i| ((layer * 31 + pos * 7 + i) as f32 * 0.37).sin()).collect();
            let v: Vec<f32> = (0..kv_dim).map(|i| ((layer * 17 + pos * 3 + i) as f32 * 0.21).cos()).collect();
            cache.store(layer, &table, pos, &k, &v);
            q8.store(layer, &table, pos, &k, &v);
        }
    }
    let stride = c.hidden + 2 * kv_dim;
    let q: Vec<f32> = (0..new * stride).map(|i| (i as f32 * 0.11).cos()).collect();
    let simd = simd();
    let macs = (c.layers * c.heads * c.head_dim * 2) as f64 * (0..new).map(|i| (history + i + 1) as f64).sum::<f64>();
    println!("\n## Attention of {new} new tokens over {history} cached positions (SmolLM2-135M's shape, 1 thread, {simd:?})\n");
    println!("| tile | best of 20 (ms) | G multiply-adds/s |");
    println!("|---|---:|---:|");
    let mut out = vec![0f32; TILE_TOKENS * c.heads / c.kv_heads * c.head_dim];
    let mut scores = Vec::new();
    // The best of 20 passes over every layer and KV head, in tiles of `tile` tokens.
    let mut best_of_20 = |tile: usize, attend: &mut AttendFn| {
        let mut best = f64::MAX;
        for _ in 0..20 {
            let started = Instant::now();
            for layer in 0..c.layers {
                for kvh in 0..c.kv_heads {
                    for first in (0..new).step_by(tile) {
                        let n = tile.min(new - first);
                        let tq = TileQuery { table: &table, first_pos: history + first, n, q: &q[first * stride..], q_stride: stride, kvh };
                        attend(layer, &tq, &mut out, &mut scores);
                    }
                }
            }
            best = best.min(started.elapsed().as_secs_f64());
        }
        best
    };
    for tile in [1, TILE_TOKENS] {
        let best = best_of_20(tile, &mut |layer, tq, out, scores| attend(&c, layer, &cache, tq, out, scores, simd));
        println!("| {tile} | {:.2} | {:.1} |", best * 1e3, macs / best / 1e9);
    }
    let kernel = match simd {
        F32Simd::Avx512 => Kernel::detect(),
        F32Simd::Avx2 => Kernel::Avx2,
        F32Simd::Portable => Kernel::Scalar,
    };
    let best = best_of_20(TILE_TOKENS, &mut |layer, tq, out, scores| attend_q8(&c, layer, &q8, tq, out, scores, kernel));
    println!("| {TILE_TOKENS}, 8-bit cache ({}) | {:.2} | {:.1} |", kernel.name(), best * 1e3, macs / best / 1e9);
}
