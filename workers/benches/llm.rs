//! Engine benchmark on the real model: `cargo bench -p swell-workers --bench llm`.
//!
//! Prints, for this machine and thread count:
//! - the quantized kernels against candle's f32 matmul on the model's matrix shapes;
//! - the weight stream: every weight byte of a decode step read and nothing else, the
//!   memory-bandwidth floor under decode at batch 1;
//! - decode tokens/s of the engine with 1, 4, 16 and 64 concurrent sequences
//!   (100-token prompts, 128 generated tokens each, end-of-sequence ignored);
//! - prefill tokens/s of a 1000-token prompt, and time to first token of a 100-token one.
//!
//! Env: `SWELL_MODEL_PATH`, `SWELL_BENCH_THREADS` (default: every core),
//! `SWELL_BENCH_KERNEL` (a kernel class, as `llm.cpu_kernel`: `avx2`, `portable`, ...;
//! default `auto`; the class that ran is printed),
//! `SWELL_BENCH_QUICK=1` (fewer shapes and concurrencies), `SWELL_BENCH_CONCURRENCY=1,16`.
//! Flags: `--engine-only` (skip the kernel table and the weight stream; `--weight-stream`
//! keeps the stream), `--decode-only` (skip prefill/TTFT).

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use swell_protocol::SamplingParams;
use swell_workers::llm::quant::{Kernel, QActivations, QMatrix};
use swell_workers::llm::{find_default_model, LlmConfig, LlmEngineFactory};
use swell_workers::{Engine, ReplicaContext, Sequence};

fn threads() -> usize {
    std::env::var("SWELL_BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    })
}

fn time<F: FnMut()>(mut f: F, min: Duration) -> Duration {
    f();
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < min || n < 3 {
        f();
        n += 1;
    }
    started.elapsed() / n
}

fn kernels(factory: &LlmEngineFactory, pool: &rayon::ThreadPool, quick: bool) {
    let (w, _) = factory.weights().expect("weights");
    let layer = &w.layers[0];
    let shapes: Vec<(&str, &QMatrix)> =
        vec![("qkv", &layer.qkv), ("attn_out", &layer.attn_out), ("gate_up", &layer.gate_up), ("down", &layer.down), ("lm_head", w.lm_head())];
    let tokens: &[usize] = if quick { &[1, 16] } else { &[1, 4, 16, 64, 256] };
    println!("\n## Kernels (GMAC/s = rows x cols x tokens / time; {} threads)\n", pool.current_num_threads());
    println!("| matrix | rows x cols | tokens | {} | candle f32 matmul |", Kernel::available().iter().map(|k| k.name()).collect::<Vec<_>>().join(" | "));
    println!("|---|---|---|{}---|", "---|".repeat(Kernel::available().len()));
    for (name, m) in shapes {
        let mut row = vec![0f32; m.cols];
        let mut dense = Vec::with_capacity(m.rows * m.cols);
        for r in 0..m.rows {
            m.dequantize_row(r, &mut row);
            dense.extend_from_slice(&row);
        }
        let wt = Tensor::from_vec(dense, (m.rows, m.cols), &Device::Cpu).unwrap().t().unwrap();
        for &t in tokens {
            let x: Vec<f32> = (0..t * m.cols).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
            let mut qa = QActivations::default();
            qa.quantize_from(&x, t, m.cols, factory.kernel().f32_simd());
            let mut out = vec![0f32; t * m.rows];
            let macs = (m.rows * m.cols * t) as f64;
            let mut cells = Vec::new();
            for k in Kernel::available() {
                if k == Kernel::Scalar && t > 16 {
                    cells.push("-".to_string());
                    continue;
                }
                let d = pool.install(|| time(|| m.matmul(&qa, &mut out, k), Duration::from_millis(300)));
                cells.push(format!("{:.1}", macs / d.as_secs_f64() / 1e9));
            }
            let xt = Tensor::from_vec(x.clone(), (t, m.cols), &Device::Cpu).unwrap();
            let d = pool.install(|| time(|| drop(xt.matmul(&wt).unwrap()), Duration::from_millis(300)));
            cells.push(format!("{:.1}", macs / d.as_secs_f64() / 1e9));
            println!("| {name} | {}x{} | {t} | {} |", m.rows, m.cols, cells.join(" | "));
        }
    }
}

/// The floor under decode at batch 1: every weight byte a step reads (the layers' matrices
/// and the LM head), streamed by the pool's threads (each its share of every matrix,
/// summed as 64-bit words) with nothing else done. Prints GB/s and the tokens/s a step
/// that did only this would reach.
fn weight_stream(factory: &LlmEngineFactory, pool: &rayon::ThreadPool) {
    let (w, _) = factory.weights().expect("weights");
    let mut parts: Vec<&[u8]> = Vec::new();
    fn bytes_of(m: &QMatrix) -> [&[u8]; 3] {
        // SAFETY: f16 is plain data; the byte views cover exactly the vectors' contents.
        unsafe {
            [
                &m.qs[..],
                std::slice::from_raw_parts(m.d.as_ptr() as *const u8, m.d.len() * 2),
                std::slice::from_raw_parts(m.m.as_ptr() as *const u8, m.m.len() * 2),
            ]
        }
    }
    for l in &w.layers {
        for m in [&l.qkv, &l.attn_out, &l.gate_up, &l.down] {
            parts.extend(bytes_of(m));
        }
    }
    parts.extend(bytes_of(w.lm_head()));
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let threads = pool.current_num_threads();
    let sink = std::sync::atomic::AtomicU64::new(0);
    // Built for AVX2 where the CPU has it, so the loop is bound by memory, not by
    // instructions (the crate's baseline is SSE2).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn sum_avx2(words: &[u8]) -> u64 {
        sum(words)
    }
    #[inline(always)]
    fn sum(words: &[u8]) -> u64 {
        let mut acc = [0u64; 8];
        let mut chunks = words.chunks_exact(64);
        for c in &mut chunks {
            for (i, a) in acc.iter_mut().enumerate() {
                *a = a.wrapping_add(u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().unwrap()));
            }
        }
        acc.iter().fold(chunks.remainder().iter().map(|&b| u64::from(b)).sum::<u64>(), |a, b| a.wrapping_add(*b))
    }
    let avx2 = Kernel::Avx2.supported();
    let pass = || {
        pool.broadcast(|ctx| {
            let mut total = 0u64;
            for p in &parts {
                let share = p.len().div_ceil(threads).div_ceil(64) * 64;
                let start = (ctx.index() * share).min(p.len());
                let end = (start + share).min(p.len());
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX2 checked above.
                let s = if avx2 { unsafe { sum_avx2(&p[start..end]) } } else { sum(&p[start..end]) };
                #[cfg(not(target_arch = "x86_64"))]
                let s = sum(&p[start..end]);
                total = total.wrapping_add(s);
            }
            sink.fetch_add(total, std::sync::atomic::Ordering::Relaxed);
        });
    };
    let d = time(pass, Duration::from_millis(1000));
    let gbs = total as f64 / d.as_secs_f64() / 1e9;
    println!(
        "\n## Weight stream ({threads} threads)\n\n{:.1} MB of weights per decode step read in {:.2} ms: {gbs:.1} GB/s, so at most {:.0} decode steps/s at batch 1 (checksum {})",
        total as f64 / 1e6,
        d.as_secs_f64() * 1e3,
        1.0 / d.as_secs_f64(),
        sink.load(std::sync::atomic::Ordering::Relaxed) % 1000
    );
}

fn engine_runs(factory: &LlmEngineFactory, quick: bool) {
    let replica = ReplicaContext { replica_id: "bench".into(), devices: vec![] };
    let (mut engine, cold) = factory.create_cpu(&replica).expect("engine");
    println!("\n## Engine ({} threads, kernel {})\n", factory.threads(), factory.kernel().name());
    println!("cold start: {:?}", cold.stages);
    let vocab = factory.model_config().vocab as u32;
    let prompt = |n: usize, salt: u32| -> Vec<u32> { (0..n as u32).map(|i| 1000 + (i * 31 + salt * 977) % (vocab - 2000)).collect() };
    let params = |max| SamplingParams { max_tokens: max, temperature: 0.0, ignore_eos: true, ..SamplingParams::default() };
    let mut out = Vec::new();
    let mut drain = |engine: &mut swell_workers::llm::LlmEngine| {
        let mut steps = 0;
        while engine.load().running + engine.load().waiting > 0 {
            out.clear();
            engine.step(&mut out).unwrap();
            steps += 1;
        }
        steps
    };

    let decode_only = std::env::args().any(|a| a == "--decode-only");
    if !decode_only {
    // Time to first token and prefill.
    let started = Instant::now();
    engine.add(Sequence { id: "ttft".into(), prompt_tokens: prompt(100, 1), resume_tokens: vec![], params: params(1) });
    drain(&mut engine);
    println!("time to first token, 100-token prompt: {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
    let started = Instant::now();
    engine.add(Sequence { id: "prefill".into(), prompt_tokens: prompt(1000, 2), resume_tokens: vec![], params: params(1) });
    drain(&mut engine);
    let d = started.elapsed();
    println!("prefill, 1000-token prompt: {:.0} ms = {:.0} tokens/s", d.as_secs_f64() * 1e3, 1000.0 / d.as_secs_f64());
    }

    println!("\n| concurrent sequences | decode tokens/s (aggregate) | per sequence | steps |");
    println!("|---|---|---|---|");
    let conc: Vec<usize> = match std::env::var("SWELL_BENCH_CONCURRENCY") {
        Ok(list) => list.split(',').filter_map(|v| v.trim().parse().ok()).collect(),
        Err(_) if quick => vec![1, 16],
        Err(_) => vec![1, 4, 16, 64],
    };
    for &n in &conc {
        // Prefill all first, then time the decode steps only.
        for i in 0..n {
            engine.add(Sequence { id: format!("c{i}").into(), prompt_tokens: prompt(100, 10 + i as u32), resume_tokens: vec![], params: params(129) });
        }
        out.clear();
        while engine.load().running < n || { out.clear(); engine.step(&mut out).unwrap().prefill_tokens > 0 } {
            out.clear();
            engine.step(&mut out).unwrap();
        }
        let started = Instant::now();
        let mut generated = 0usize;
        let mut steps = 0;
        while engine.load().running > 0 {
            out.clear();
            let r = engine.step(&mut out).unwrap();
            generated += r.decode_tokens;
            steps += 1;
        }
        let d = started.elapsed().as_secs_f64();
        println!("| {n} | {:.1} | {:.1} | {steps} |", generated as f64 / d, generated as f64 / d / n as f64);
    }
}

fn main() {
    let quick = std::env::var("SWELL_BENCH_QUICK").is_ok_and(|v| v == "1");
    let path = find_default_model().expect("model missing: run scripts/fetch-model");
    let mut config = LlmConfig::new(path);
    config.threads = Some(threads());
    config.kv_cache_tokens = 65_536;
    config.cpu_kernel = std::env::var("SWELL_BENCH_KERNEL").ok();
    let factory = LlmEngineFactory::new(config).expect("factory");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads()).build().unwrap();
    if !std::env::args().any(|a| a == "--engine-only") {
        kernels(&factory, &pool, quick);
    }
    if !std::env::args().any(|a| a == "--engine-only") || std::env::args().any(|a| a == "--weight-stream") {
        weight_stream(&factory, &pool);
    }
    engine_runs(&factory, quick);
}
