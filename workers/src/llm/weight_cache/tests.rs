//! The weight cache on the real model (SmolLM2-135M-Instruct, Q4_1; `scripts/fetch-model`
//! or `SWELL_MODEL_PATH`): a written file maps back to byte-identical weights and
//! bit-identical logits; a changed key misses; a broken file is refused and replaced; a
//! read-only model folder sends the file to the fallback folder; the factory's second
//! cold start maps the file.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use super::*;
use crate::engine::ReplicaContext;
use crate::llm::factory::{DeviceChoice, LlmConfig, LlmEngineFactory, WeightsOrigin};
use crate::llm::gguf::GgufFile;
use crate::llm::model::{LlamaModel, Logits, SeqChunk};

fn model_path() -> PathBuf {
    crate::llm::find_default_model()
        .unwrap_or_else(|| panic!("the model is missing: run scripts/fetch-model (or set SWELL_MODEL_PATH)"))
}

/// A fresh folder under the system's temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("swell-weight-cache-{test}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A copy of the model in this folder (tests that write beside the model).
    fn model_copy(&self) -> PathBuf {
        let path = self.0.join(crate::llm::DEFAULT_MODEL_FILE);
        std::fs::copy(model_path(), &path).unwrap();
        path
    }

    /// Cache files, and temporary ones, in this folder.
    fn cache_files(&self) -> Vec<PathBuf> {
        cache_files(&self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    // Temporary files too (`.<cache file name>.<pid>.<n>.tmp`).
    files.retain(|p| p.to_string_lossy().contains(&format!(".{FILE_EXTENSION}")));
    files
}

/// The model read from the GGUF once for the tests of this file, and its key.
fn read_weights() -> &'static (Arc<LlamaWeights>, CacheKey) {
    static WEIGHTS: OnceLock<(Arc<LlamaWeights>, CacheKey)> = OnceLock::new();
    WEIGHTS.get_or_init(|| {
        let path = model_path();
        let file = GgufFile::open(&path).unwrap();
        let weights = LlamaWeights::load(&file, Kernel::detect()).unwrap();
        let key = CacheKey::new(hash_file(&path).unwrap(), weights.kernel.name());
        (Arc::new(weights), key)
    })
}

fn assert_same_matrix(what: &str, a: &QMatrix, b: &QMatrix) {
    assert_eq!((a.rows, a.cols, a.packing), (b.rows, b.cols, b.packing), "{what}");
    assert!(as_bytes(&a.qs) == as_bytes(&b.qs), "{what}: qs differ");
    assert!(as_bytes(&a.d) == as_bytes(&b.d), "{what}: d differ");
    assert!(as_bytes(&a.m) == as_bytes(&b.m), "{what}: m differ");
    assert!(b.qs.is_mapped() && b.d.is_mapped() && b.m.is_mapped(), "{what}: used in place");
}

fn assert_same_weights(a: &LlamaWeights, b: &LlamaWeights) {
    assert_eq!(a.config, b.config);
    assert_eq!(a.kernel, b.kernel);
    assert_eq!(a.layers.len(), b.layers.len());
    for (i, (x, y)) in a.layers.iter().zip(&b.layers).enumerate() {
        assert!(as_bytes(&x.attn_norm) == as_bytes(&y.attn_norm), "layer {i} attn_norm");
        assert!(as_bytes(&x.ffn_norm) == as_bytes(&y.ffn_norm), "layer {i} ffn_norm");
        assert_same_matrix(&format!("layer {i} qkv"), &x.qkv, &y.qkv);
        assert_same_matrix(&format!("layer {i} attn_out"), &x.attn_out, &y.attn_out);
        assert_same_matrix(&format!("layer {i} gate_up"), &x.gate_up, &y.gate_up);
        assert_same_matrix(&format!("layer {i} down"), &x.down, &y.down);
    }
    assert_same_matrix("embedding", &a.embedding, &b.embedding);
    assert!(as_bytes(&a.output_norm) == as_bytes(&b.output_norm), "output_norm");
    assert_eq!(a.output.is_some(), b.output.is_some());
    if let (Some(x), Some(y)) = (&a.output, &b.output) {
        assert_same_matrix("output", x, y);
    }
    assert!(as_bytes(a.rope.tables().0) == as_bytes(b.rope.tables().0) && as_bytes(a.rope.tables().1) == as_bytes(b.rope.tables().1));
}

/// Logits of a 12-token prefill (every position) then one decode step.
fn logits(weights: Arc<LlamaWeights>) -> Vec<u32> {
    let mut model = LlamaModel::new(weights, 4).unwrap();
    let prompt: Vec<u32> = vec![1, 504, 3458, 282, 4133, 314, 253, 1345, 30, 1018, 7, 42];
    let blocks = [0, 1, 2, 3];
    let mut out: Vec<u32> =
        model.forward(&[SeqChunk { tokens: &prompt, start: 0, blocks: &blocks, logits: Logits::All }]).unwrap().iter().map(|v| v.to_bits()).collect();
    let next = model.forward(&[SeqChunk { tokens: &[17], start: prompt.len(), blocks: &blocks, logits: Logits::Last }]).unwrap();
    out.extend(next.iter().map(|v| v.to_bits()));
    out
}

#[test]
fn a_written_file_maps_back_to_identical_weights_and_logits() {
    let dir = TempDir::new("round-trip");
    let (read, key) = read_weights();
    let path = dir.0.join(file_name(&model_path(), *key));
    write_file(&path, *key, read).unwrap();
    assert_eq!(dir.cache_files(), vec![path.clone()], "no temporary file is left");

    let mapped = map_file(&path, *key, &read.config, read.kernel, true).unwrap().expect("the file is there");
    assert_same_weights(read, &mapped);
    let mapped = Arc::new(mapped);
    let (expected, got) = (logits(read.clone()), logits(mapped.clone()));
    assert_eq!(expected.len(), 13 * read.config.vocab);
    assert!(expected == got, "logits from the mapped weights are bit-identical");

    // Every section starts on a 64-byte boundary of the file.
    let bytes = std::fs::read(&path).unwrap();
    let count = u32_at(&bytes, 12) as usize;
    assert_eq!(count, expected_sections(&read.config));
    for raw in bytes[HEADER_BYTES..HEADER_BYTES + count * ENTRY_BYTES].chunks_exact(ENTRY_BYTES) {
        assert_eq!(Entry::decode(raw).offset % 64, 0);
    }
    assert_eq!(u64_at(&bytes, 32), bytes.len() as u64, "the header holds the length");
}

#[test]
fn a_different_kernel_or_a_changed_model_byte_is_a_miss() {
    let dir = TempDir::new("key");
    let model = dir.model_copy();
    let (read, _) = read_weights();
    let cache = WeightCache::new(&model, None);
    let key = cache.key(read.kernel).unwrap();
    assert_eq!(key, read_weights().1, "the copy has the original's key");
    let written = cache.write(key, read).unwrap();
    assert_eq!(written, dir.0.join(format!("{}.{}.swell-weights", crate::llm::DEFAULT_MODEL_FILE, key.hex())));
    assert!(cache.map(key, &read.config, read.kernel).is_some(), "a hit under its own key");

    // Weights built for another kernel: another key, another file name; and the header
    // refuses the file even under the wrong name.
    let other_kernel = CacheKey::new(hash_file(&model).unwrap(), "another-kernel");
    assert_ne!(other_kernel, key);
    assert_ne!(file_name(&model, other_kernel), file_name(&model, key));
    assert!(cache.map(other_kernel, &read.config, read.kernel).is_none());
    let Err(error) = map_file(&written, other_kernel, &read.config, read.kernel, true) else { panic!("a wrong key maps") };
    assert!(error.to_string().contains("key"), "{error}");

    // One byte of the model changes (the same size; the modification time moves, as it
    // does on any write): the cache re-hashes it and the old file is a miss.
    let mut bytes = std::fs::read(&model).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(&model, &bytes).unwrap();
    let file = OpenOptions::new().write(true).open(&model).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();
    drop(file);
    let changed = cache.key(read.kernel).unwrap();
    assert_ne!(changed, key, "a changed byte changes the key");
    assert_eq!(changed, CacheKey::new(xxh3_128(&bytes), read.kernel.name()));
    assert!(cache.map(changed, &read.config, read.kernel).is_none());
}

#[test]
fn a_truncated_or_corrupted_file_is_refused_and_replaced() {
    let dir = TempDir::new("corrupt");
    let model = dir.model_copy();
    let (read, key) = read_weights();
    let cache = WeightCache::new(&model, None);
    let path = cache.write(*key, read).unwrap();
    let good = std::fs::read(&path).unwrap();

    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 8] = [
        ("empty", |b| b.clear()),
        ("shorter than the header", |b| b.truncate(10)),
        ("truncated", |b| b.truncate(b.len() / 2)),
        ("longer", |b| b.extend_from_slice(&[0; 64])),
        ("bad magic", |b| b[0] ^= 0xFF),
        ("another format version", |b| b[8] = b[8].wrapping_add(1)),
        ("another key in the header", |b| b[20] ^= 0x01),
        ("a section offset changed", |b| b[HEADER_BYTES + 32] ^= 0x40),
    ];
    for (what, damage) in damages {
        let mut bytes = good.clone();
        damage(&mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        let refused = map_file(&path, *key, &read.config, read.kernel, true);
        assert!(matches!(refused, Err(WeightCacheError::Invalid { .. })), "{what}: {refused:?}", refused = refused.map(|w| w.is_some()));
        assert!(cache.map(*key, &read.config, read.kernel).is_none(), "{what}: ignored");
        // The next write replaces it.
        assert_eq!(cache.write(*key, read).unwrap(), path);
        assert!(std::fs::read(&path).unwrap() == good, "{what}: replaced");
        let (mapped, from) = cache.map(*key, &read.config, read.kernel).expect("the replacement maps");
        assert_eq!(from, path);
        assert_same_weights(read, &mapped);
    }
    assert_eq!(dir.cache_files(), vec![path], "no temporary file is left");
}

/// The model is reached as `/proc/self/fd/N`: its folder is procfs's folder of open
/// files, where nobody, root included, can create a file, so the write beside the model
/// fails for real (tests run as root, which file permissions do not stop).
#[test]
fn a_model_in_a_read_only_folder_writes_to_the_fallback_folder() {
    let dir = TempDir::new("read-only");
    let model_file = std::fs::File::open(dir.model_copy()).unwrap();
    let model = PathBuf::from(format!("/proc/self/fd/{}", model_file.as_raw_fd()));
    let fallback = dir.0.join("fallback").join("weights");
    let (read, key) = read_weights();

    let cache = WeightCache::new(&model, Some(fallback.clone()));
    assert_eq!(cache.key(read.kernel).unwrap(), *key, "the model is hashed through its path");
    let written = cache.write(*key, read).unwrap();
    assert_eq!(written, fallback.join(file_name(&model, *key)));
    assert_eq!(cache_files(&fallback), vec![written.clone()]);
    assert!(dir.cache_files().is_empty(), "nothing beside the model's real file");
    let (mapped, from) = cache.map(*key, &read.config, read.kernel).expect("found in the fallback folder");
    assert_eq!(from, written);
    assert_same_weights(read, &mapped);

    // Without a fallback folder the write fails, and says where.
    let nowhere = WeightCache::new(&model, None);
    let error = nowhere.write(*key, read).expect_err("no writable folder");
    assert!(error.to_string().contains("/proc/self/fd/"), "{error}");
}

#[test]
fn the_fallback_folder_is_the_configured_one_then_xdg_then_home() {
    let configured = Path::new("/srv/weights");
    let (xdg, home) = (Some(PathBuf::from("/xdg")), Some(PathBuf::from("/home/me")));
    assert_eq!(fallback_dir_from(Some(configured), xdg.clone(), home.clone()), Some(configured.to_path_buf()));
    assert_eq!(fallback_dir_from(None, xdg, home.clone()), Some(PathBuf::from("/xdg/swell/weights")));
    // XDG paths must be absolute.
    assert_eq!(fallback_dir_from(None, Some(PathBuf::from("rel")), home.clone()), Some(PathBuf::from("/home/me/.cache/swell/weights")));
    assert_eq!(fallback_dir_from(None, None, home), Some(PathBuf::from("/home/me/.cache/swell/weights")));
    assert_eq!(fallback_dir_from(None, None, None), None);
}

fn cpu_factory(model: &Path, fallback: &Path) -> LlmEngineFactory {
    let mut config = LlmConfig::new(model);
    config.threads = Some(2);
    config.kv_cache_tokens = 256;
    config.device = DeviceChoice::Cpu;
    config.weight_cache_dir = Some(fallback.to_path_buf());
    LlmEngineFactory::new(config).unwrap()
}

fn cold_start_stages(factory: &LlmEngineFactory) -> Vec<String> {
    let replica = ReplicaContext { replica_id: "weight-cache-test".into(), devices: vec![] };
    let (engine, report) = factory.create_cpu(&replica).unwrap();
    drop(engine);
    report.stages.into_iter().map(|(name, _)| name).collect()
}

#[test]
fn the_second_cold_start_after_scale_to_zero_maps_the_cache_file() {
    let dir = TempDir::new("factory");
    let model = dir.model_copy();
    let fallback = dir.0.join("fallback");
    let factory = cpu_factory(&model, &fallback);

    assert_eq!(cold_start_stages(&factory), ["read_weights", "allocate_kv_cache", "warm_up"]);
    let written = factory.wait_for_weight_cache_write().expect("a write was started").unwrap();
    assert_eq!(written.parent(), Some(dir.0.as_path()), "beside the model");
    // The replica and the writer are gone: so are the weights.
    assert_eq!(cold_start_stages(&factory), ["map_weights", "allocate_kv_cache", "warm_up"]);
    assert!(factory.wait_for_weight_cache_write().is_none(), "nothing to write after a map");
    let (weights, origin) = factory.weights().unwrap();
    assert_eq!(origin, WeightsOrigin::Mapped(written.clone()));
    assert!(weights.embedding.qs.is_mapped());
    assert_same_weights(&read_weights().0, &weights);
    drop(weights);

    // A broken file is read around and rewritten, and the start after maps again.
    let file = OpenOptions::new().write(true).open(&written).unwrap();
    file.set_len(1000).unwrap();
    drop(file);
    assert_eq!(cold_start_stages(&factory)[0], "read_weights");
    assert_eq!(factory.wait_for_weight_cache_write().unwrap().unwrap(), written);
    assert_eq!(cold_start_stages(&factory)[0], "map_weights");
    assert!(!fallback.exists(), "the model's folder was writable");

    // A second factory (another deployment or process) maps the same file at once.
    let other = cpu_factory(&model, &fallback);
    assert_eq!(cold_start_stages(&other)[0], "map_weights");
}

#[test]
fn with_the_cache_off_every_cold_start_reads_and_nothing_is_written() {
    let dir = TempDir::new("off");
    let model = dir.model_copy();
    let mut config = LlmConfig::new(&model);
    config.threads = Some(2);
    config.kv_cache_tokens = 256;
    config.device = DeviceChoice::Cpu;
    config.weight_cache = false;
    let factory = LlmEngineFactory::new(config).unwrap();
    assert_eq!(cold_start_stages(&factory)[0], "read_weights");
    assert!(factory.wait_for_weight_cache_write().is_none());
    assert_eq!(cold_start_stages(&factory)[0], "read_weights");
    assert!(dir.cache_files().is_empty());
}

/// Not a check: the measurement behind [`POPULATE`], printed. Run it on a quiet machine:
/// `cargo test -p swell-workers --lib map_with_and_without_populate -- --ignored --nocapture`.
#[test]
#[ignore]
fn map_with_and_without_populate() {
    let dir = TempDir::new("populate");
    let (read, key) = read_weights();
    let path = dir.0.join(file_name(&model_path(), *key));
    write_file(&path, *key, read).unwrap();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let (prompt, blocks): (Vec<u32>, [u32; 1]) = ((0..8).collect(), [0]);
    let mut runs: [Vec<(Duration, Duration)>; 2] = Default::default();
    for rep in 0..24 {
        for populate in [rep % 2 == 0, rep % 2 != 0] {
            let started = std::time::Instant::now();
            let weights = map_file(&path, *key, &read.config, read.kernel, populate).unwrap().unwrap();
            let mapped = started.elapsed();
            let started = std::time::Instant::now();
            // The factory's warm-up: an 8-token prefill and a decode step.
            let mut model = LlamaModel::new(Arc::new(weights), 1).unwrap();
            pool.install(|| {
                model.forward(&[SeqChunk { tokens: &prompt, start: 0, blocks: &blocks, logits: Logits::Last }]).unwrap();
                model.forward(&[SeqChunk { tokens: &prompt[..1], start: 8, blocks: &blocks, logits: Logits::Last }]).unwrap();
            });
            runs[usize::from(populate)].push((mapped, started.elapsed()));
        }
    }
    for (populate, runs) in runs.iter_mut().enumerate() {
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let map = median(runs.iter().map(|r| r.0).collect());
        let warm = median(runs.iter().map(|r| r.1).collect());
        let total = median(runs.iter().map(|r| r.0 + r.1).collect());
        println!("populate {}: map_weights {map:?}, warm_up {warm:?}, total {total:?} (medians of {})", populate == 1, runs.len());
    }
}

#[test]
fn the_config_keys_parse_and_a_bad_folder_names_its_key() {
    let config: LlmConfig = serde_json::from_value(serde_json::json!({"model_path": "m.gguf"})).unwrap();
    assert!(config.weight_cache && config.weight_cache_dir.is_none(), "on by default");
    let config: LlmConfig =
        serde_json::from_value(serde_json::json!({"model_path": "m.gguf", "weight_cache": false, "weight_cache_dir": "/srv/w"})).unwrap();
    assert!(!config.weight_cache);
    assert_eq!(config.weight_cache_dir.as_deref(), Some(Path::new("/srv/w")));
    config.validate().unwrap();

    let mut empty = config.clone();
    empty.weight_cache_dir = Some(PathBuf::new());
    assert!(empty.validate().unwrap_err().to_string().contains("llm.weight_cache_dir"));
    let mut a_file = config;
    a_file.weight_cache_dir = Some(model_path());
    assert!(a_file.validate().unwrap_err().to_string().contains("llm.weight_cache_dir: exists and is not a folder"));
}
