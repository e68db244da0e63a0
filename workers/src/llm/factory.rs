//! [`LlmConfig`] (a deployment's `[deployments.NAME.llm]` block) and [`LlmEngineFactory`].
//!
//! ```toml
//! [deployments.smollm.llm]
//! model_path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
//! threads = 2                 # default: every core
//! max_batch_size = 64
//! max_batched_tokens = 512    # tokens per forward pass (chunked prefill)
//! kv_cache_tokens = 32768     # per replica
//! device = "auto"             # auto | cpu | cuda
//! weight_cache = true         # map repacked weights from a cache file (weight_cache.rs)
//! weight_cache_dir = "/var/cache/swell/weights"   # when the model's folder is read-only
//! prefix_cache = true         # keep computed KV blocks by prefix (block_pool.rs)
//! kv_cache_type = "f32"       # f32 | q8 (8-bit keys and values: 30% of the memory,
//!                             # integer attention; CPUs with AVX-512 VNNI only)
//!
//! # Optional: this hardware's step-time figures (e.g. from `cargo bench -p swell-workers
//! # --bench llm`), for the autoscaler's capacity model. Default on the CPU: the
//! # calibration of the `smollm2-135m-cpu` sim profile scaled to this model and thread
//! # count; on CUDA: none (the autoscaler then knows only the batch and KV limits).
//! [deployments.smollm.llm.performance]
//! prefill_tokens_per_second = 1200
//! decode_step_base = "3ms 200us"
//! decode_step_per_sequence = "850us"
//! decode_step_per_kv_token = "1us 300ns"
//! ```
//!
//! The factory opens the GGUF and builds the tokenizer when the deployment is created
//! (the gateway needs it at once). Weights are read on the first replica's cold start
//! and shared through an `Arc` by every replica alive at the same time, so a second
//! replica starts in milliseconds; when the last replica is gone the weights are freed
//! with it (scale to zero frees memory). The next cold start maps them from the weight
//! cache file (`map_weights`, see [`crate::llm::weight_cache`]) when one matches the
//! model, the kernel and the engine; otherwise it reads and repacks the GGUF
//! (`read_weights`; the GGUF is memory-mapped only while it is read) and a background
//! thread writes the cache file for the next one. The model's hash, the cache's key, is
//! computed on a thread started by [`LlmEngineFactory::new`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::engine::{ColdStartReport, Engine, EngineDescription, EngineFactory, PerformanceProfile, ReplicaContext, StepTimes};
use crate::error::EngineError;
use crate::llm::engine::{LlmEngine, SchedulerLimits};
use crate::llm::gguf::{GgufFile, LlamaConfig};
use crate::llm::attention_q8;
use crate::llm::kv_cache::{BlockAllocator, KvCache, KvCacheType, BLOCK_TOKENS};
use crate::gpu_pool::{GpuLease, GpuPool};
use crate::llm::cuda::{discover, CudaRunner, GpuInfo};
use crate::llm::model::{CpuRunner, LlamaModel, LlamaWeights, Logits, ModelRunner, SeqChunk};
use crate::llm::quant::Kernel;
use crate::llm::tokenizer::GgufTokenizer;
use crate::llm::weight_cache::{self, WeightCache, WeightCacheError};
use crate::tokenizer::Tokenizer;

/// Where a deployment's replicas run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// CUDA when a GPU is present and free, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

fn default_max_batch_size() -> u32 {
    64
}
fn default_max_batched_tokens() -> u32 {
    512
}
fn default_kv_cache_tokens() -> u64 {
    32_768
}
fn default_weight_cache() -> bool {
    true
}

/// Upper bounds of the `llm` settings: far above any real use, low enough that no
/// setting can exhaust the process (threads, memory) before a replica even starts.
pub struct LlmLimits {
    pub threads: u64,
    pub max_batch_size: u64,
    pub max_batched_tokens: u64,
    /// 16M tokens: KV caches are allocated up front.
    pub kv_cache_tokens: u64,
    pub context_length: u64,
    pub gpus_per_replica: u64,
    pub step_time: std::time::Duration,
}

pub const LLM_LIMITS: LlmLimits = LlmLimits {
    threads: 1024,
    max_batch_size: 4096,
    max_batched_tokens: 1 << 20,
    kv_cache_tokens: 1 << 24,
    context_length: 1 << 20,
    gpus_per_replica: 64,
    step_time: std::time::Duration::from_secs(60),
};

/// A deployment's `llm` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// A GGUF file (Llama architecture), local.
    pub model_path: PathBuf,
    /// Name shown for the model; default: the GGUF's `general.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// Compute threads per process for this deployment (default: every core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    #[serde(default = "default_max_batch_size")]
    pub max_batch_size: u32,
    #[serde(default = "default_max_batched_tokens")]
    pub max_batched_tokens: u32,
    /// KV cache capacity of one replica, in tokens (rounded up to blocks of 16).
    #[serde(default = "default_kv_cache_tokens")]
    pub kv_cache_tokens: u64,
    /// Cap on prompt + output tokens (default: the model's context length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    #[serde(default)]
    pub device: DeviceChoice,
    /// The CPU kernel class (`auto`, `avx512`, `avx512-vnni`, `avx-vnni`, `avx2`,
    /// `portable`): `auto` (the default) picks the fastest this CPU runs; a named class
    /// this CPU lacks is refused when the deployment is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_kernel: Option<String>,
    /// GPUs one replica asks for when it runs on CUDA.
    #[serde(default = "default_gpus")]
    pub gpus_per_replica: u32,
    /// Step-time figures measured on this hardware (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance: Option<StepTimes>,
    /// Map the weights from a cache file of repacked weights when one matches, and
    /// write one after a read ([`crate::llm::weight_cache`]).
    #[serde(default = "default_weight_cache")]
    pub weight_cache: bool,
    /// Where cache files go when the model's folder is not writable (default:
    /// `$XDG_CACHE_HOME/swell/weights`, else `$HOME/.cache/swell/weights`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_cache_dir: Option<PathBuf>,
    /// Keep computed KV blocks by prefix and reuse them for later sequences with the
    /// same prefix ([`crate::llm::block_pool`]).
    #[serde(default = "default_prefix_cache")]
    pub prefix_cache: bool,
    /// How the KV cache stores keys and values: `f32` (exact) or `q8` (8 bits with
    /// scales per token, [`crate::llm::kv_cache_q8`]). CPU replicas with the AVX-512 VNNI
    /// kernels only (refused elsewhere: the portable loops are 20 times slower than f32).
    #[serde(default)]
    pub kv_cache_type: KvCacheType,
    /// A Jinja chat template file used in place of the GGUF's own (as llama-server's
    /// `--chat-template-file` and vLLM's `--chat-template`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<PathBuf>,
}

fn default_prefix_cache() -> bool {
    true
}

/// The run the `smollm2-135m-cpu` sim profile is calibrated on: SmolLM2-135M-Instruct
/// Q4_1 (a 98,362,432-byte GGUF; 30 layers x 3 KV heads x 64 dims of f32 K and V =
/// 46,080 bytes of KV cache per token), 2 threads (see `sim/profile.rs`).
const CALIBRATION_PROFILE: &str = "smollm2-135m-cpu";
const CALIBRATION_FILE_BYTES: f64 = 98_362_432.0;
const CALIBRATION_KV_BYTES_PER_TOKEN: f64 = 46_080.0;
const CALIBRATION_THREADS: f64 = 2.0;

fn default_gpus() -> u32 {
    1
}

impl LlmConfig {
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            model_name: None,
            threads: None,
            max_batch_size: default_max_batch_size(),
            max_batched_tokens: default_max_batched_tokens(),
            kv_cache_tokens: default_kv_cache_tokens(),
            context_length: None,
            device: DeviceChoice::Auto,
            cpu_kernel: None,
            gpus_per_replica: default_gpus(),
            performance: None,
            weight_cache: default_weight_cache(),
            weight_cache_dir: None,
            prefix_cache: default_prefix_cache(),
            kv_cache_type: KvCacheType::F32,
            chat_template: None,
        }
    }

    /// Key-naming errors for values no model could use.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |key: &str, why: &str| Err(EngineError::Config(format!("llm.{key}: {why}")));
        if let Some(name) = &self.cpu_kernel {
            Kernel::from_name(name).map_err(|why| EngineError::Config(format!("llm.cpu_kernel: {why}")))?;
        }
        if self.kv_cache_type == KvCacheType::Q8 {
            let kernel = Kernel::from_name(self.cpu_kernel.as_deref().unwrap_or("auto")).map_err(EngineError::Config)?;
            if !kernel.has_q8_attention() {
                return bad(
                    "kv_cache_type",
                    &format!("`q8` runs on the AVX-512 VNNI kernels (`avx512`, `avx512-vnni`); here the CPU kernel is `{}` (use `f32`)", kernel.name()),
                );
            }
        }
        let range = |key: &str, value: u64, min: u64, max: u64| {
            if value < min {
                Err(EngineError::Config(format!("llm.{key}: must be at least {min}")))
            } else if value > max {
                Err(EngineError::Config(format!("llm.{key}: must be at most {max} (got {value})")))
            } else {
                Ok(())
            }
        };
        range("max_batch_size", u64::from(self.max_batch_size), 1, LLM_LIMITS.max_batch_size)?;
        range("max_batched_tokens", u64::from(self.max_batched_tokens), 1, LLM_LIMITS.max_batched_tokens)?;
        range("kv_cache_tokens", self.kv_cache_tokens, BLOCK_TOKENS as u64, LLM_LIMITS.kv_cache_tokens)?;
        if let Some(threads) = self.threads {
            range("threads", threads as u64, 1, LLM_LIMITS.threads)?;
        }
        if let Some(context_length) = self.context_length {
            range("context_length", u64::from(context_length), 1, LLM_LIMITS.context_length)?;
        }
        range("gpus_per_replica", u64::from(self.gpus_per_replica), 0, LLM_LIMITS.gpus_per_replica)?;
        if let Some(dir) = &self.weight_cache_dir {
            if dir.as_os_str().is_empty() {
                return bad("weight_cache_dir", "must not be empty");
            }
            if dir.exists() && !dir.is_dir() {
                return bad("weight_cache_dir", "exists and is not a folder");
            }
        }
        if let Some(performance) = &self.performance {
            let rate = performance.prefill_tokens_per_second;
            if !(rate.is_finite() && rate > 0.0 && rate <= 1e9) {
                return bad("performance.prefill_tokens_per_second", "must be a number above 0 and at most 1e9");
            }
            for (key, step) in [
                ("decode_step_base", performance.decode_step_base),
                ("decode_step_per_sequence", performance.decode_step_per_sequence),
                ("decode_step_per_kv_token", performance.decode_step_per_kv_token),
            ] {
                if step > LLM_LIMITS.step_time {
                    return Err(EngineError::Config(format!("llm.performance.{key}: must be at most 60s")));
                }
            }
            if performance.decode_step_base.is_zero() {
                return bad("performance.decode_step_base", "must be greater than 0");
            }
        }
        Ok(())
    }
}

/// Builds `llm` engines for one deployment.
pub struct LlmEngineFactory {
    config: LlmConfig,
    file_size: usize,
    model_config: LlamaConfig,
    tokenizer: Arc<GgufTokenizer>,
    weights: Mutex<Weak<LlamaWeights>>,
    pool: Arc<rayon::ThreadPool>,
    /// Shared by the replicas whose steps run on `pool` (see `LlamaModel::with_step_lock`).
    step_lock: Arc<Mutex<()>>,
    kernel: Kernel,
    kv_blocks: usize,
    context_length: usize,
    last_cold_start_ms: AtomicU64,
    /// GPUs found at start (empty with `device = "cpu"` or without a driver).
    gpus: GpuPool,
    /// `None` with `weight_cache = false`.
    weight_cache: Option<Arc<WeightCache>>,
    /// The latest background write of the cache file.
    weight_cache_write: Mutex<Option<JoinHandle<Result<PathBuf, WeightCacheError>>>>,
}

/// Where a cold start got its weights; each is a cold-start stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsOrigin {
    /// From a live replica of the deployment (`share_weights`).
    Shared,
    /// Mapped from this weight cache file (`map_weights`).
    Mapped(PathBuf),
    /// Read and repacked from the GGUF (`read_weights`).
    Read,
}

impl WeightsOrigin {
    /// The cold-start stage's name.
    pub fn stage(&self) -> &'static str {
        match self {
            WeightsOrigin::Shared => "share_weights",
            WeightsOrigin::Mapped(_) => "map_weights",
            WeightsOrigin::Read => "read_weights",
        }
    }
}

/// A runner that keeps its GPU lease for as long as it lives.
struct LeasedRunner {
    runner: Box<dyn ModelRunner>,
    _lease: GpuLease,
}

impl ModelRunner for LeasedRunner {
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<&[f32], EngineError> {
        self.runner.forward(chunks)
    }
    fn config(&self) -> &LlamaConfig {
        self.runner.config()
    }
    fn kv_blocks(&self) -> usize {
        self.runner.kv_blocks()
    }
    fn device(&self) -> String {
        self.runner.device()
    }
    fn frees_the_cpu(&self) -> bool {
        self.runner.frees_the_cpu()
    }
}

impl std::fmt::Debug for LlmEngineFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmEngineFactory").field("config", &self.config).finish_non_exhaustive()
    }
}

impl LlmEngineFactory {
    /// Open the model file and build the tokenizer (weights are read on the first
    /// cold start).
    pub fn new(config: LlmConfig) -> Result<Self, EngineError> {
        config.validate()?;
        let file = GgufFile::open(&config.model_path)?;
        let model_config = LlamaConfig::from_gguf(&file)?;
        let mut tokenizer = GgufTokenizer::from_gguf(&file.content)?;
        if let Some(path) = &config.chat_template {
            let source = std::fs::read_to_string(path)
                .map_err(|e| EngineError::Config(format!("llm.chat_template: {}: {e}", path.display())))?;
            tokenizer.set_chat_template(source)?;
        }
        let threads = config.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("swell-llm-{i}"))
            .build()
            .map_err(|e| EngineError::Config(format!("llm.threads: {e}")))?;
        let kv_blocks = BlockAllocator::blocks_for(config.kv_cache_tokens as usize);
        let gpus = match config.device {
            DeviceChoice::Cpu => Vec::new(),
            DeviceChoice::Auto | DeviceChoice::Cuda => match discover() {
                Ok(gpus) => gpus,
                Err(error) => {
                    tracing::warn!(%error, "CUDA discovery failed; replicas run on the CPU");
                    Vec::new()
                }
            },
        };
        if config.device == DeviceChoice::Cuda && gpus.is_empty() {
            return Err(EngineError::Config("llm.device: `cuda` asked for, but no CUDA device was found".to_string()));
        }
        if !gpus.is_empty() && config.kv_cache_type != KvCacheType::F32 {
            return Err(EngineError::Config(format!(
                "llm.kv_cache_type: `{}` runs on the CPU only; the CUDA runner keeps an f32 cache (set device = \"cpu\" to use it)",
                config.kv_cache_type.name()
            )));
        }
        if !gpus.is_empty() && config.gpus_per_replica != 1 {
            return Err(EngineError::Config(format!(
                "llm.gpus_per_replica: {} asked for; one replica runs on exactly 1 GPU (no tensor parallelism yet)",
                config.gpus_per_replica
            )));
        }
        match gpus.as_slice() {
            [] if config.device == DeviceChoice::Auto => {
                tracing::info!("no CUDA device (or no driver): replicas run on the CPU")
            }
            [] => {}
            found => {
                for g in found {
                    tracing::info!(ordinal = g.ordinal, name = %g.name, total_memory = g.total_memory, free_memory = g.free_memory, "CUDA device");
                }
            }
        }
        let context_length = (config.context_length.map_or(usize::MAX, |c| c as usize))
            .min(model_config.context_length)
            .min(kv_blocks * BLOCK_TOKENS);
        let kernel = Kernel::from_name(config.cpu_kernel.as_deref().unwrap_or("auto")).map_err(EngineError::Config)?;
        let group = model_config.heads / model_config.kv_heads.max(1);
        if config.kv_cache_type == KvCacheType::Q8 && !attention_q8::runs_fast(kernel, model_config.head_dim, group) {
            return Err(EngineError::Config(format!(
                "llm.kv_cache_type: `q8` runs on the AVX-512 VNNI kernels (`avx512`, `avx512-vnni`) for heads of 64 values \
                 in groups of 1 to 4; here the CPU kernel is `{}` and the model's heads are {} values in groups of {group} (use `f32`)",
                kernel.name(),
                model_config.head_dim
            )));
        }
        let weight_cache = config.weight_cache.then(|| {
            let fallback = weight_cache::fallback_dir(config.weight_cache_dir.as_deref());
            Arc::new(WeightCache::new(&config.model_path, fallback))
        });
        Ok(Self {
            kernel,
            file_size: file.file_size(),
            model_config,
            tokenizer: Arc::new(tokenizer),
            weights: Mutex::new(Weak::new()),
            pool: Arc::new(pool),
            step_lock: Arc::default(),
            kv_blocks,
            context_length,
            last_cold_start_ms: AtomicU64::new(0),
            gpus: GpuPool::new(gpus),
            weight_cache,
            weight_cache_write: Mutex::new(None),
            config,
        })
    }

    /// GPUs this deployment may place replicas on.
    pub fn gpus(&self) -> &[GpuInfo] {
        self.gpus.gpus()
    }

    /// Take a free GPU, if any.
    fn lease_gpu(&self) -> Option<(GpuLease, u32)> {
        let lease = self.gpus.lease(1)?;
        let ordinal = lease.ordinals()[0];
        Some((lease, ordinal))
    }

    pub fn model_config(&self) -> &LlamaConfig {
        &self.model_config
    }

    pub fn gguf_tokenizer(&self) -> Arc<GgufTokenizer> {
        self.tokenizer.clone()
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// The shared weights: a live replica's; else mapped from the weight cache file;
    /// else read from the GGUF, and then the cache file is written on a thread of its
    /// own (see [`Self::wait_for_weight_cache_write`]).
    pub fn weights(&self) -> Result<(Arc<LlamaWeights>, WeightsOrigin), EngineError> {
        let mut slot = self.weights.lock();
        if let Some(weights) = slot.upgrade() {
            return Ok((weights, WeightsOrigin::Shared));
        }
        let kernel = self.kernel;
        let cache = self.weight_cache.as_ref().and_then(|cache| match cache.key(kernel) {
            Ok(key) => Some((cache, key)),
            Err(error) => {
                tracing::warn!(%error, "no weight cache key (the model could not be hashed); reading the GGUF");
                None
            }
        });
        if let Some((cache, key)) = cache {
            // The config read from the GGUF's metadata when the factory was created,
            // unless the file changed since (parsing the metadata again costs more than
            // mapping the weights).
            let config = if cache.model_changed() {
                LlamaConfig::from_gguf(&GgufFile::open(&self.config.model_path)?)?
            } else {
                self.model_config.clone()
            };
            if let Some((weights, path)) = cache.map(key, &config, kernel) {
                tracing::info!(path = %path.display(), "weights mapped from the weight cache");
                let weights = Arc::new(weights);
                *slot = Arc::downgrade(&weights);
                return Ok((weights, WeightsOrigin::Mapped(path)));
            }
        }
        // The map lives only while the weights are repacked: afterwards the file's pages
        // are not part of the process's memory.
        let file = GgufFile::open(&self.config.model_path)?;
        let weights = Arc::new(self.pool.install(|| LlamaWeights::load(&file, kernel))?);
        drop(file);
        *slot = Arc::downgrade(&weights);
        if let Some((cache, key)) = cache {
            let path = cache.candidates(key).swap_remove(0);
            tracing::info!(path = %path.display(), "weights read from the GGUF; writing the weight cache");
            match cache.write_in_background(key, weights.clone()) {
                Ok(handle) => *self.weight_cache_write.lock() = Some(handle),
                Err(error) => tracing::warn!(%error, "could not start the weight cache writer"),
            }
        }
        Ok((weights, WeightsOrigin::Read))
    }

    /// Wait for the latest background write of the weight cache file, if one was
    /// started and not waited for yet: the path written, or why not (tests, tools).
    pub fn wait_for_weight_cache_write(&self) -> Option<Result<PathBuf, String>> {
        let handle = self.weight_cache_write.lock().take()?;
        Some(match handle.join() {
            Ok(written) => written.map_err(|e| e.to_string()),
            Err(_) => Err("the weight cache writer panicked".to_string()),
        })
    }

    fn limits(&self) -> SchedulerLimits {
        SchedulerLimits {
            max_batch_size: self.config.max_batch_size as usize,
            max_batched_tokens: self.config.max_batched_tokens as usize,
            kv_blocks: self.kv_blocks,
            context_length: self.context_length,
            prefix_caching: self.config.prefix_cache,
        }
    }

    /// Bytes of one replica's KV cache.
    pub fn kv_cache_bytes(&self) -> usize {
        let c = &self.model_config;
        self.kv_blocks * BLOCK_TOKENS * KvCache::bytes_per_token_of(self.config.kv_cache_type, c.layers, c.kv_heads, c.head_dim)
    }

    /// The step-time figures of one replica: the configured `performance` block; else,
    /// on the CPU, the calibration behind the `smollm2-135m-cpu` sim profile scaled to
    /// this model: the weight-bound terms (prefill, decode base, per sequence) by the
    /// GGUF's size, the attention term by the KV bytes per token, and every term by
    /// 2 / threads (the kernels are compute-bound and split across the threads). An
    /// estimate for other CPUs and kernels; `None` on a GPU without a configured block.
    pub fn performance(&self) -> Option<PerformanceProfile> {
        let gpu = match self.gpus.gpus().first() {
            Some(gpu) => gpu.name.clone(),
            None => "cpu".to_string(),
        };
        // Weight-matrix parameters plus the embedding (shared with the head when tied).
        let c = &self.model_config;
        let params_billions = (c.matmul_macs_per_token() + c.vocab * c.hidden) as f64 / 1e9;
        if let Some(measured) = &self.config.performance {
            return Some(PerformanceProfile {
                step: *measured,
                max_prefill_tokens_per_step: u64::from(self.config.max_batched_tokens),
                model_params_billions: params_billions,
                gpu,
                source: "configured llm.performance".to_string(),
            });
        }
        if !self.gpus.is_empty() {
            return None;
        }
        let calibration = crate::sim::builtin(CALIBRATION_PROFILE)?;
        let threads = self.threads().max(1) as f64;
        // The f32 cache's bytes, whatever the cache type: the 8-bit cache's attention is
        // about twice as fast per token on this model, not as much as its bytes shrink,
        // so its f32 figure is the safe side.
        let kv_bytes = KvCache::bytes_per_token(c.layers, c.kv_heads, c.head_dim) as f64;
        let by_threads = CALIBRATION_THREADS / threads;
        let weights = self.file_size as f64 / CALIBRATION_FILE_BYTES * by_threads;
        let attention = kv_bytes / CALIBRATION_KV_BYTES_PER_TOKEN * by_threads;
        Some(PerformanceProfile {
            step: StepTimes {
                prefill_tokens_per_second: calibration.prefill_tokens_per_second / weights,
                decode_step_base: calibration.decode_step_base.mul_f64(weights),
                decode_step_per_sequence: calibration.decode_step_per_sequence.mul_f64(weights),
                decode_step_per_kv_token: calibration.decode_step_per_kv_token.mul_f64(attention),
            },
            max_prefill_tokens_per_step: u64::from(self.config.max_batched_tokens),
            model_params_billions: params_billions,
            gpu,
            source: format!(
                "calibration of sim profile {CALIBRATION_PROFILE} scaled by weights x{weights:.3}, attention x{attention:.3} ({} kernel, {} threads)",
                self.kernel.name(),
                self.threads()
            ),
        })
    }

    /// A CPU engine (also what tests and benchmarks use directly).
    pub fn create_cpu(&self, replica: &ReplicaContext) -> Result<(LlmEngine, ColdStartReport), EngineError> {
        let mut report = ColdStartReport::default();
        let started = Instant::now();
        let (weights, origin) = self.weights()?;
        report.stages.push((origin.stage().to_string(), started.elapsed()));

        let started = Instant::now();
        let mut model = LlamaModel::with_cache_type(weights, self.kv_blocks, self.config.kv_cache_type)?;
        report.stages.push(("allocate_kv_cache".to_string(), started.elapsed()));

        // Warm-up: one single-token step touches every weight (faulting in mapped pages)
        // and wakes the pool, so the first request does not pay for it. One token is
        // enough: when a request is already waiting (a start from zero) the warm-up is on
        // its path, and a longer one only adds to it.
        let started = Instant::now();
        let blocks: Vec<u32> = (0..BlockAllocator::blocks_for(1).min(self.kv_blocks) as u32).collect();
        if !blocks.is_empty() {
            let token = [0u32];
            // The pool may be running another replica's step: take turns (CpuRunner).
            let _turn = self.step_lock.lock();
            self.pool.install(|| model.forward(&[SeqChunk { tokens: &token, start: 0, blocks: &blocks, logits: Logits::Last }]))?;
        }
        report.stages.push(("warm_up".to_string(), started.elapsed()));

        let runner = CpuRunner { model, pool: self.pool.clone(), step_lock: self.step_lock.clone() };
        tracing::info!(replica = %replica.replica_id, device = %runner.device(), "replica placed on the CPU");
        let engine = LlmEngine::new(Box::new(runner), self.tokenizer.clone(), self.limits(), replica.replica_id.clone());
        self.last_cold_start_ms.store(report.total().as_millis() as u64, Ordering::Relaxed);
        Ok((engine, report))
    }
}

impl EngineFactory for LlmEngineFactory {
    fn describe(&self) -> EngineDescription {
        let measured = self.last_cold_start_ms.load(Ordering::Relaxed);
        // Before any replica started: about 2 s per GB of file on one core, at least 1 s.
        let estimate = Duration::from_millis(((self.file_size as u64) >> 19).max(1000));
        EngineDescription {
            engine: "llm".to_string(),
            model: self.config.model_name.clone().unwrap_or_else(|| self.model_config.name.clone()),
            context_length: u32::try_from(self.context_length).unwrap_or(u32::MAX),
            gpus_per_replica: if self.gpus.is_empty() { 0 } else { self.config.gpus_per_replica },
            max_batch_size: self.config.max_batch_size,
            kv_capacity_tokens: (self.kv_blocks * BLOCK_TOKENS) as u64,
            expected_cold_start: if measured > 0 { Duration::from_millis(measured) } else { estimate },
            performance: self.performance(),
            unsupported_params: Vec::new(),
        }
    }

    fn tokenizer(&self) -> Arc<dyn Tokenizer> {
        self.tokenizer.clone()
    }

    /// On a free GPU when the deployment has GPUs (one per replica; a GPU is never
    /// shared by two replicas); on the CPU when it has none, or when `device = "auto"`
    /// and every GPU is taken.
    fn create(&self, replica: &ReplicaContext) -> Result<(Box<dyn Engine>, ColdStartReport), EngineError> {
        if self.gpus.is_empty() {
            let (engine, report) = self.create_cpu(replica)?;
            return Ok((Box::new(engine), report));
        }
        let Some((lease, ordinal)) = self.lease_gpu() else {
            if self.config.device == DeviceChoice::Cuda {
                return Err(EngineError::Load(format!("no free GPU: all {} are held by other replicas", self.gpus.gpus().len())));
            }
            tracing::warn!(replica = %replica.replica_id, "every GPU is held by another replica; this replica runs on the CPU");
            let (engine, report) = self.create_cpu(replica)?;
            return Ok((Box::new(engine), report));
        };
        let mut report = ColdStartReport::default();
        let started = Instant::now();
        let (weights, origin) = self.weights()?;
        report.stages.push((origin.stage().to_string(), started.elapsed()));
        let started = Instant::now();
        let runner = CudaRunner::new(&weights, ordinal, self.kv_blocks)?;
        report.stages.push(("upload_and_warm_up_gpu".to_string(), started.elapsed()));
        tracing::info!(replica = %replica.replica_id, device = %runner.device(), "replica placed on a GPU");
        let runner = LeasedRunner { runner: Box::new(runner), _lease: lease };
        let engine = LlmEngine::new(Box::new(runner), self.tokenizer.clone(), self.limits(), replica.replica_id.clone());
        self.last_cold_start_ms.store(report.total().as_millis() as u64, Ordering::Relaxed);
        Ok((Box::new(engine), report))
    }
}
