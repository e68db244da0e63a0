//! The weight cache: a file holding a model's weights already repacked for the kernels,
//! so a cold start maps it instead of reading and repacking the GGUF. The map is
//! read-only, so every replica and every process that maps the same file shares one copy
//! of its pages through the page cache.
//!
//! # What it owns
//! The file format, the key, where files go and are looked for, the atomic write, and the
//! map back into [`LlamaWeights`]. When to map and when to write is the factory's call
//! (`factory.rs`), and so is the model's config (from the GGUF metadata), which the
//! file's shapes are checked against.
//!
//! # Key
//! A 128-bit xxh3 of: the GGUF file's content (xxh3-128 of its bytes, hashed on a thread
//! started with the factory and again if the file's size or modification time changed),
//! [`LAYOUT`], the [`Kernel`] the weights were built for, the engine version and
//! [`FORMAT_VERSION`]. The key is in the file name (`<model file name>.<key, 32 hex
//! digits>.swell-weights`) and in the header; a file whose header, length, table or key
//! does not match is ignored, and the next write replaces it.
//!
//! # Where
//! Beside the model file when that folder is writable, else in the fallback folder
//! (`llm.weight_cache_dir`, else `$XDG_CACHE_HOME/swell/weights`, else
//! `$HOME/.cache/swell/weights`). Reads look beside the model first, then in the
//! fallback folder. A write goes to a temporary file in the same folder, then is renamed
//! over the final name: a reader sees the old file or the new one, never a part, and a
//! map of the old file stays valid.
//!
//! # Format (integers little-endian; the arrays in this machine's byte order, which is
//! # part of the key)
//! ```text
//! header, 64 bytes: magic "SWELLWGT" | format version u32 | section count u32 |
//!                   key u128 | total length u64 | xxh3-64 of the table u64 | zeros
//! table, 64 bytes per section: tensor u32 | layer u32 | part u32 | packing u32 |
//!                   rows u64 | cols u64 | offset u64 | length in bytes u64 | zeros
//! sections: one array each, every one starting at a 64-byte boundary
//! ```
//! Sections: per layer `attn_norm` and `ffn_norm` (f32 values; copied out when mapped,
//! they are small) and the `qkv`, `attn_out`, `gate_up`, `down` matrices (`qs` bytes,
//! `d` and `m` f16, with rows, cols and packing), then the embedding, `output_norm`, the
//! untied output matrix if the model has one, and the rope tables (`cos`, `sin`; computing
//! them takes longer than mapping the rest). Matrices and rope tables are used in place.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use memmap2::{Mmap, MmapOptions};
use parking_lot::Mutex;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::llm::gguf::LlamaConfig;
use crate::llm::model::{LayerWeights, LlamaWeights};
use crate::llm::ops::Rope;
use crate::llm::quant::{as_bytes, Data, Kernel, MappedRegion, Packing, Plain, QMatrix, BLOCK};

#[cfg(test)]
mod tests;

/// Bumped on any change to the file's structure.
pub const FORMAT_VERSION: u32 = 1;

/// The packed layout the sections hold, part of the key: change it whenever
/// `quant::matrix` or `quant::layout` change how a matrix is packed, or `model.rs` how
/// matrices are fused.
pub const LAYOUT: &str = "qmatrix v1: blocks of 32, w = d*q + m, d and m f16 per block; \
    nibbles: 16 bytes per block, byte j = values j and j+16 (ggml order); \
    bytes: q + 128, rows interleaved in quads of 128 bytes, then a pair, then a lone block; \
    qkv = [q; k; v] rows, gate_up = [gate; up] rows, mixed packings requantized to q8_0; \
    rope: f32 cos and sin of p * theta^(-2i/head_dim), computed in f64, per position p and pair i";

/// The file name's last part.
pub const FILE_EXTENSION: &str = "swell-weights";

const MAGIC: &[u8; 8] = b"SWELLWGT";
const HEADER_BYTES: usize = 64;
const ENTRY_BYTES: usize = 64;
/// Every section starts at a multiple of this (a cache line; more than any element's
/// alignment).
const ALIGN: usize = 64;
/// Far above any model (a 1000-layer model has 26,000 sections).
const MAX_SECTIONS: usize = 1 << 20;
const NO_LAYER: u32 = u32::MAX;

/// Which weight a section belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
enum Tensor {
    AttnNorm = 1,
    FfnNorm = 2,
    Qkv = 3,
    AttnOut = 4,
    GateUp = 5,
    Down = 6,
    Embedding = 7,
    OutputNorm = 8,
    Output = 9,
    RopeCos = 10,
    RopeSin = 11,
}

/// Which array of a weight a section is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
enum Part {
    /// f32 values of a norm vector or a rope table.
    Values = 0,
    /// A matrix's packed `q` bytes.
    Qs = 1,
    /// A matrix's f16 scales.
    D = 2,
    /// A matrix's f16 offsets.
    M = 3,
}

fn packing_code(packing: Packing) -> u32 {
    match packing {
        Packing::Nibbles => 1,
        Packing::Bytes => 2,
    }
}

fn packing_from_code(code: u32) -> Option<Packing> {
    match code {
        1 => Some(Packing::Nibbles),
        2 => Some(Packing::Bytes),
        _ => None,
    }
}

/// Why a cache file could not be used or written.
#[derive(Debug, thiserror::Error)]
pub enum WeightCacheError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl WeightCacheError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| WeightCacheError::Io { path: path.to_path_buf(), source }
    }

    fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        WeightCacheError::Invalid { path: path.to_path_buf(), reason: reason.into() }
    }
}

/// What a cache file must have been built from (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheKey(pub u128);

impl CacheKey {
    pub fn new(model_hash: u128, kernel: &str) -> Self {
        let endian = if cfg!(target_endian = "little") { "little" } else { "big" };
        let text = format!(
            "model {model_hash:032x}\nlayout {LAYOUT}\nkernel {kernel}\nengine {} format {FORMAT_VERSION}\nendian {endian}",
            env!("CARGO_PKG_VERSION")
        );
        Self(xxh3_128(text.as_bytes()))
    }

    pub fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

/// The cache file's name for a model file and a key.
pub fn file_name(model_path: &Path, key: CacheKey) -> String {
    let model = model_path.file_name().map_or_else(|| "model".into(), |n| n.to_string_lossy());
    format!("{model}.{}.{FILE_EXTENSION}", key.hex())
}

/// The fallback folder: `configured`, else `$XDG_CACHE_HOME/swell/weights`, else
/// `$HOME/.cache/swell/weights` (`None` without any of them).
pub fn fallback_dir(configured: Option<&Path>) -> Option<PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    fallback_dir_from(configured, env("XDG_CACHE_HOME"), env("HOME"))
}

fn fallback_dir_from(configured: Option<&Path>, xdg_cache_home: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(dir) = configured {
        return Some(dir.to_path_buf());
    }
    if let Some(xdg) = xdg_cache_home.filter(|p| p.is_absolute()) {
        return Some(xdg.join("swell").join("weights"));
    }
    home.map(|home| home.join(".cache").join("swell").join("weights"))
}

/// The model file's content hash and the size and modification time it was taken at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ModelFingerprint {
    hash: u128,
    stat: FileStat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStat {
    size: u64,
    modified: Option<SystemTime>,
}

fn file_stat(path: &Path) -> io::Result<FileStat> {
    let metadata = std::fs::metadata(path)?;
    Ok(FileStat { size: metadata.len(), modified: metadata.modified().ok() })
}

/// xxh3-128 of the file's bytes (read through a map: no copy of a multi-GB file).
pub fn hash_file(path: &Path) -> io::Result<u128> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(xxh3_128(&[]));
    }
    // SAFETY: read-only; a model file changed while it is hashed gives a hash of neither
    // version, and the size or time check catches the change on the next cold start.
    let map = unsafe { Mmap::map(&file) }?;
    Ok(xxh3_128(&map))
}

fn fingerprint(path: &Path) -> io::Result<ModelFingerprint> {
    let stat = file_stat(path)?;
    Ok(ModelFingerprint { hash: hash_file(path)?, stat })
}

enum ModelHash {
    Computing(JoinHandle<io::Result<ModelFingerprint>>),
    Known(ModelFingerprint),
    Unknown,
}

/// One model file's cache: its key and its two places.
pub struct WeightCache {
    model_path: PathBuf,
    fallback_dir: Option<PathBuf>,
    model_hash: Mutex<ModelHash>,
    /// The model file's size and time when this cache was created.
    start_stat: Option<FileStat>,
}

/// Whether cold starts map with `MAP_POPULATE` (every page table entry set up front) or
/// let the warm-up fault the pages in. With the file in the page cache, faulting is the
/// faster of the two for map + warm-up (the warm-up touches every matrix anyway, a fault
/// maps several pages, and the rope tables are touched only as far as positions are
/// used): `map_with_and_without_populate` in this module's tests measures it.
const POPULATE: bool = false;

impl std::fmt::Debug for WeightCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightCache")
            .field("model_path", &self.model_path)
            .field("fallback_dir", &self.fallback_dir)
            .finish_non_exhaustive()
    }
}

impl WeightCache {
    /// Starts hashing the model file on its own thread: hashing a large model takes
    /// seconds, and the factory is built where blocking that long is not allowed; the
    /// first cold start waits for the hash only if it comes before it is done.
    pub fn new(model_path: &Path, fallback_dir: Option<PathBuf>) -> Self {
        let path = model_path.to_path_buf();
        let hashing = std::thread::Builder::new().name("swell-model-hash".into()).spawn(move || fingerprint(&path));
        let model_hash = match hashing {
            Ok(handle) => ModelHash::Computing(handle),
            Err(error) => {
                tracing::warn!(%error, "could not start the model hashing thread; the first cold start hashes the model");
                ModelHash::Unknown
            }
        };
        Self {
            start_stat: file_stat(model_path).ok(),
            model_path: model_path.to_path_buf(),
            fallback_dir,
            model_hash: Mutex::new(model_hash),
        }
    }

    /// Whether the model file's size or modification time changed since this cache was
    /// created (what was read from it then is stale).
    pub fn model_changed(&self) -> bool {
        self.start_stat.is_none() || file_stat(&self.model_path).ok() != self.start_stat
    }

    /// The key for weights built for `kernel` from the model file as it is now: the
    /// hash taken at start if the file's size and modification time are unchanged,
    /// else a new one.
    pub fn key(&self, kernel: Kernel) -> Result<CacheKey, WeightCacheError> {
        let mut state = self.model_hash.lock();
        let previous = match std::mem::replace(&mut *state, ModelHash::Unknown) {
            ModelHash::Computing(handle) => {
                match handle.join().unwrap_or_else(|_| Err(io::Error::other("the hashing thread panicked"))) {
                    Ok(fingerprint) => Some(fingerprint),
                    Err(error) => {
                        tracing::warn!(%error, model = %self.model_path.display(), "hashing the model failed; hashing it again");
                        None
                    }
                }
            }
            ModelHash::Known(fingerprint) => Some(fingerprint),
            ModelHash::Unknown => None,
        };
        let stat = file_stat(&self.model_path).map_err(WeightCacheError::io(&self.model_path))?;
        let current = match previous {
            Some(fingerprint) if fingerprint.stat == stat => fingerprint,
            previous => {
                if previous.is_some() {
                    tracing::info!(model = %self.model_path.display(), "the model file changed since it was hashed; hashing it again");
                }
                fingerprint(&self.model_path).map_err(WeightCacheError::io(&self.model_path))?
            }
        };
        *state = ModelHash::Known(current);
        Ok(CacheKey::new(current.hash, kernel.name()))
    }

    fn beside_dir(&self) -> PathBuf {
        match self.model_path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Where a file for `key` is looked for, in order: beside the model, then the
    /// fallback folder.
    pub fn candidates(&self, key: CacheKey) -> Vec<PathBuf> {
        let name = file_name(&self.model_path, key);
        let mut paths = vec![self.beside_dir().join(&name)];
        if let Some(dir) = &self.fallback_dir {
            let path = dir.join(&name);
            if path != paths[0] {
                paths.push(path);
            }
        }
        paths
    }

    /// The weights from the first valid file for `key`, and its path. Files that are
    /// there but unusable are logged and skipped (the next write replaces them).
    pub fn map(&self, key: CacheKey, config: &LlamaConfig, kernel: Kernel) -> Option<(LlamaWeights, PathBuf)> {
        for path in self.candidates(key) {
            match map_file(&path, key, config, kernel, POPULATE) {
                Ok(Some(weights)) => return Some((weights, path)),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "ignoring an unusable weight cache file; it will be replaced"),
            }
        }
        None
    }

    /// Write `weights` under `key`: beside the model, or in the fallback folder when
    /// that fails. Returns the path written.
    pub fn write(&self, key: CacheKey, weights: &LlamaWeights) -> Result<PathBuf, WeightCacheError> {
        let name = file_name(&self.model_path, key);
        let beside = self.beside_dir().join(&name);
        let beside_error = match write_file(&beside, key, weights) {
            Ok(()) => return Ok(beside),
            Err(error) => error,
        };
        let Some(dir) = &self.fallback_dir else {
            return Err(beside_error);
        };
        tracing::info!(error = %beside_error, fallback = %dir.display(), "cannot write the weight cache beside the model; using the fallback folder");
        std::fs::create_dir_all(dir).map_err(WeightCacheError::io(dir))?;
        let path = dir.join(&name);
        write_file(&path, key, weights)?;
        Ok(path)
    }

    /// Write on a thread of its own holding `weights` (the cold start that read them
    /// goes on at once), at idle priority: the write must not slow the warm-up and the
    /// first requests of the replica that read them. The handle's result is logged
    /// already; it is for tests.
    pub fn write_in_background(
        self: &Arc<Self>,
        key: CacheKey,
        weights: Arc<LlamaWeights>,
    ) -> io::Result<JoinHandle<Result<PathBuf, WeightCacheError>>> {
        let cache = self.clone();
        std::thread::Builder::new().name("swell-weight-cache".into()).spawn(move || {
            run_at_idle_priority();
            let started = std::time::Instant::now();
            let written = cache.write(key, &weights);
            match &written {
                Ok(path) => tracing::info!(path = %path.display(), elapsed = ?started.elapsed(), "weight cache written"),
                Err(error) => tracing::warn!(%error, "writing the weight cache failed; cold starts read the GGUF"),
            }
            written
        })
    }
}

/// Put the calling thread in the idle scheduling class (Linux `SCHED_IDLE`): it runs on
/// CPU time no other thread wants. Best effort.
fn run_at_idle_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a plain system call; pid 0 is the calling thread, and lowering one's
        // own scheduling class needs no privilege.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "could not lower the weight cache writer's priority");
        }
    }
}

/// One section to write: an array and what it is.
struct Section<'a> {
    tensor: Tensor,
    layer: u32,
    part: Part,
    packing: u32,
    rows: u64,
    cols: u64,
    bytes: &'a [u8],
}

/// Every array of `weights`, in file order.
fn sections(weights: &LlamaWeights) -> Vec<Section<'_>> {
    fn push_vector<'a>(out: &mut Vec<Section<'a>>, tensor: Tensor, layer: u32, values: &'a [f32]) {
        let bytes = as_bytes(values);
        out.push(Section { tensor, layer, part: Part::Values, packing: 0, rows: 1, cols: values.len() as u64, bytes });
    }
    fn push_matrix<'a>(out: &mut Vec<Section<'a>>, tensor: Tensor, layer: u32, m: &'a QMatrix) {
        let (packing, rows, cols) = (packing_code(m.packing), m.rows as u64, m.cols as u64);
        for (part, bytes) in [(Part::Qs, as_bytes(&m.qs)), (Part::D, as_bytes(&m.d)), (Part::M, as_bytes(&m.m))] {
            out.push(Section { tensor, layer, part, packing, rows, cols, bytes });
        }
    }
    let mut out = Vec::new();
    for (i, layer) in weights.layers.iter().enumerate() {
        let i = i as u32;
        push_vector(&mut out, Tensor::AttnNorm, i, &layer.attn_norm);
        push_vector(&mut out, Tensor::FfnNorm, i, &layer.ffn_norm);
        push_matrix(&mut out, Tensor::Qkv, i, &layer.qkv);
        push_matrix(&mut out, Tensor::AttnOut, i, &layer.attn_out);
        push_matrix(&mut out, Tensor::GateUp, i, &layer.gate_up);
        push_matrix(&mut out, Tensor::Down, i, &layer.down);
    }
    push_matrix(&mut out, Tensor::Embedding, NO_LAYER, &weights.embedding);
    push_vector(&mut out, Tensor::OutputNorm, NO_LAYER, &weights.output_norm);
    if let Some(output) = &weights.output {
        push_matrix(&mut out, Tensor::Output, NO_LAYER, output);
    }
    let (cos, sin) = weights.rope.tables();
    let (positions, pairs) = (weights.rope.positions as u64, (weights.rope.head_dim / 2) as u64);
    for (tensor, values) in [(Tensor::RopeCos, cos), (Tensor::RopeSin, sin)] {
        out.push(Section { tensor, layer: NO_LAYER, part: Part::Values, packing: 0, rows: positions, cols: pairs, bytes: as_bytes(values) });
    }
    out
}

fn align_up(at: usize) -> usize {
    at.div_ceil(ALIGN) * ALIGN
}

/// `u64::is_multiple_of`, which needs Rust 1.87 (the workspace's `rust-version` is 1.85).
#[allow(clippy::manual_is_multiple_of)]
fn is_multiple(value: u64, of: u64) -> bool {
    value % of == 0
}

/// A table entry as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tensor: u32,
    layer: u32,
    part: u32,
    packing: u32,
    rows: u64,
    cols: u64,
    offset: u64,
    bytes: u64,
}

impl Entry {
    fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut out = [0u8; ENTRY_BYTES];
        out[0..4].copy_from_slice(&self.tensor.to_le_bytes());
        out[4..8].copy_from_slice(&self.layer.to_le_bytes());
        out[8..12].copy_from_slice(&self.part.to_le_bytes());
        out[12..16].copy_from_slice(&self.packing.to_le_bytes());
        out[16..24].copy_from_slice(&self.rows.to_le_bytes());
        out[24..32].copy_from_slice(&self.cols.to_le_bytes());
        out[32..40].copy_from_slice(&self.offset.to_le_bytes());
        out[40..48].copy_from_slice(&self.bytes.to_le_bytes());
        out
    }

    fn decode(b: &[u8]) -> Self {
        Self {
            tensor: u32_at(b, 0),
            layer: u32_at(b, 4),
            part: u32_at(b, 8),
            packing: u32_at(b, 12),
            rows: u64_at(b, 16),
            cols: u64_at(b, 24),
            offset: u64_at(b, 32),
            bytes: u64_at(b, 40),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The fixed-size header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    version: u32,
    sections: u32,
    key: u128,
    total: u64,
    table_hash: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&self.sections.to_le_bytes());
        out[16..32].copy_from_slice(&self.key.to_le_bytes());
        out[32..40].copy_from_slice(&self.total.to_le_bytes());
        out[40..48].copy_from_slice(&self.table_hash.to_le_bytes());
        out
    }

    fn decode(b: &[u8; HEADER_BYTES]) -> Result<Self, String> {
        if &b[0..8] != MAGIC {
            return Err("not a weight cache file (bad magic)".into());
        }
        Ok(Self {
            version: u32_at(b, 8),
            sections: u32_at(b, 12),
            key: u128::from_le_bytes(b[16..32].try_into().expect("16 bytes")),
            total: u64_at(b, 32),
            table_hash: u64_at(b, 40),
        })
    }
}

/// A process-wide counter for unique temporary names (with the process id).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Create the temporary file a write goes to, next to `path` (the one place a write
/// opens a file).
fn create_temp_file(path: &Path) -> Result<(File, PathBuf), WeightCacheError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map_or_else(|| "weights".into(), |n| n.to_string_lossy());
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let file = OpenOptions::new().write(true).create_new(true).open(&temp).map_err(WeightCacheError::io(&temp))?;
    Ok((file, temp))
}

/// Write `weights` to `path` atomically: a temporary file in the same folder, synced,
/// then renamed over `path`.
pub fn write_file(path: &Path, key: CacheKey, weights: &LlamaWeights) -> Result<(), WeightCacheError> {
    let sections = sections(weights);
    let mut entries = Vec::with_capacity(sections.len());
    let mut at = align_up(HEADER_BYTES + sections.len() * ENTRY_BYTES);
    for s in &sections {
        entries.push(Entry {
            tensor: s.tensor as u32,
            layer: s.layer,
            part: s.part as u32,
            packing: s.packing,
            rows: s.rows,
            cols: s.cols,
            offset: at as u64,
            bytes: s.bytes.len() as u64,
        });
        at = align_up(at + s.bytes.len());
    }
    let total = entries.last().map_or(HEADER_BYTES + sections.len() * ENTRY_BYTES, |e| (e.offset + e.bytes) as usize);
    let table: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
    let header = Header {
        version: FORMAT_VERSION,
        sections: sections.len() as u32,
        key: key.0,
        total: total as u64,
        table_hash: xxh3_64(&table),
    };

    let (file, temp) = create_temp_file(path)?;
    let write = || -> io::Result<()> {
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        out.write_all(&header.encode())?;
        out.write_all(&table)?;
        let mut written = HEADER_BYTES + table.len();
        let zeros = [0u8; ALIGN];
        for (s, e) in sections.iter().zip(&entries) {
            out.write_all(&zeros[..e.offset as usize - written])?;
            out.write_all(s.bytes)?;
            written = e.offset as usize + s.bytes.len();
        }
        out.flush()?;
        drop(out);
        file.sync_data()
    };
    let written = write().map_err(WeightCacheError::io(&temp)).and_then(|()| std::fs::rename(&temp, path).map_err(WeightCacheError::io(path)));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// A valid file's table over its map.
struct MappedFile {
    path: PathBuf,
    map: Arc<Mmap>,
    entries: HashMap<(u32, u32, u32), Entry>,
}

impl MappedFile {
    fn entry(&self, tensor: Tensor, layer: u32, part: Part) -> Result<Entry, WeightCacheError> {
        self.entries
            .get(&(tensor as u32, layer, part as u32))
            .copied()
            .ok_or_else(|| WeightCacheError::invalid(&self.path, format!("no section for {tensor:?} {part:?} of layer {layer}")))
    }

    fn region<T: Plain>(&self, e: &Entry) -> Result<MappedRegion<T>, WeightCacheError> {
        let size = std::mem::size_of::<T>() as u64;
        if !is_multiple(e.bytes, size) {
            return Err(WeightCacheError::invalid(&self.path, format!("a section of {} bytes is not whole values", e.bytes)));
        }
        MappedRegion::new(self.map.clone(), e.offset as usize, (e.bytes / size) as usize)
            .map_err(|reason| WeightCacheError::invalid(&self.path, reason))
    }

    /// A norm vector of `len` values, copied out.
    fn vector(&self, tensor: Tensor, layer: u32, len: usize) -> Result<Vec<f32>, WeightCacheError> {
        let e = self.entry(tensor, layer, Part::Values)?;
        if e.bytes != (len * 4) as u64 {
            return Err(WeightCacheError::invalid(&self.path, format!("{tensor:?} of layer {layer}: {} bytes, expected {}", e.bytes, len * 4)));
        }
        Ok(self.region::<f32>(&e)?.to_vec())
    }

    /// A rope table of `positions` x `pairs` values, in place.
    fn rope_table(&self, tensor: Tensor, positions: usize, pairs: usize) -> Result<Data<f32>, WeightCacheError> {
        let e = self.entry(tensor, NO_LAYER, Part::Values)?;
        if e.rows != positions as u64 || e.cols != pairs as u64 || e.bytes != (positions * pairs * 4) as u64 {
            return Err(WeightCacheError::invalid(&self.path, format!("{tensor:?}: {}x{} in the file, expected {positions}x{pairs}", e.rows, e.cols)));
        }
        Ok(Data::Mapped(self.region(&e)?))
    }

    /// A `rows` x `cols` matrix, its arrays in place.
    fn matrix(&self, tensor: Tensor, layer: u32, rows: usize, cols: usize) -> Result<QMatrix, WeightCacheError> {
        let bad = |reason: String| WeightCacheError::invalid(&self.path, format!("{tensor:?} of layer {layer}: {reason}"));
        let [qs, d, m] = [Part::Qs, Part::D, Part::M].map(|part| self.entry(tensor, layer, part));
        let (qs, d, m) = (qs?, d?, m?);
        if [qs, d, m].iter().any(|e| e.rows != rows as u64 || e.cols != cols as u64 || e.packing != qs.packing) {
            return Err(bad(format!("{}x{} in the file, expected {rows}x{cols}", qs.rows, qs.cols)));
        }
        let packing = packing_from_code(qs.packing).ok_or_else(|| bad(format!("unknown packing {}", qs.packing)))?;
        if !is_multiple(cols as u64, BLOCK as u64) {
            return Err(bad(format!("width {cols} is not a multiple of {BLOCK}")));
        }
        let blocks = rows * cols / BLOCK;
        if qs.bytes != (blocks * packing.bytes_per_block()) as u64 || d.bytes != 2 * blocks as u64 || m.bytes != 2 * blocks as u64 {
            return Err(bad("array lengths do not match the shape".into()));
        }
        Ok(QMatrix {
            rows,
            cols,
            packing,
            qs: Data::Mapped(self.region(&qs)?),
            d: Data::Mapped(self.region(&d)?),
            m: Data::Mapped(self.region(&m)?),
        })
    }
}

/// The weights in the file at `path`, if it is a valid file for `key` and `config`:
/// `Ok(None)` when there is no file, an error when there is one that cannot be used.
/// Matrices are used in place; `populate` maps every page up front (`MAP_POPULATE`)
/// rather than on first touch.
pub fn map_file(
    path: &Path,
    key: CacheKey,
    config: &LlamaConfig,
    kernel: Kernel,
    populate: bool,
) -> Result<Option<LlamaWeights>, WeightCacheError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(WeightCacheError::io(path)(error)),
    };
    let invalid = |reason: String| WeightCacheError::invalid(path, reason);
    let len = file.metadata().map_err(WeightCacheError::io(path))?.len();
    // The header first, so that a stale or broken file is not mapped (and populated).
    let mut head = [0u8; HEADER_BYTES];
    if len < HEADER_BYTES as u64 {
        return Err(invalid(format!("{len} bytes, shorter than the header")));
    }
    file.read_exact_at(&mut head, 0).map_err(WeightCacheError::io(path))?;
    let header = Header::decode(&head).map_err(invalid)?;
    if header.version != FORMAT_VERSION {
        return Err(invalid(format!("format version {}, this build reads {FORMAT_VERSION}", header.version)));
    }
    if header.key != key.0 {
        return Err(invalid(format!("key {:032x} in the header, {} expected", header.key, key.hex())));
    }
    if header.total != len {
        return Err(invalid(format!("{len} bytes, the header says {}", header.total)));
    }
    let count = header.sections as usize;
    let table_end = HEADER_BYTES + count * ENTRY_BYTES;
    if count > MAX_SECTIONS || table_end as u64 > len {
        return Err(invalid(format!("{count} sections do not fit in {len} bytes")));
    }

    let mut options = MmapOptions::new();
    if populate {
        options.populate();
    }
    // SAFETY: read-only; cache files are only ever replaced by rename, never written in
    // place, so the pages of this inode do not change while mapped.
    let map = unsafe { options.map(&file) }.map_err(WeightCacheError::io(path))?;
    if map.len() as u64 != len {
        return Err(invalid("the file changed while it was opened".into()));
    }
    let table = &map[HEADER_BYTES..table_end];
    if xxh3_64(table) != header.table_hash {
        return Err(invalid("the section table does not match its checksum".into()));
    }
    let mut entries = HashMap::with_capacity(count);
    for raw in table.chunks_exact(ENTRY_BYTES) {
        let e = Entry::decode(raw);
        let end = e.offset.checked_add(e.bytes);
        if !is_multiple(e.offset, ALIGN as u64) || e.offset < table_end as u64 || end.is_none_or(|end| end > len) {
            return Err(invalid(format!("a section at {}..+{} is misplaced", e.offset, e.bytes)));
        }
        if entries.insert((e.tensor, e.layer, e.part), e).is_some() {
            return Err(invalid(format!("section {}/{}/{} twice", e.tensor, e.layer, e.part)));
        }
    }
    let file = MappedFile { path: path.to_path_buf(), map: Arc::new(map), entries };
    let weights = weights_from(&file, config, kernel)?;
    if file.entries.len() != expected_sections(config) {
        return Err(invalid(format!("{} sections, {} expected", file.entries.len(), expected_sections(config))));
    }
    Ok(Some(weights))
}

fn expected_sections(c: &LlamaConfig) -> usize {
    c.layers * (2 + 4 * 3) + 3 + 1 + 2 + if c.tied_embeddings { 0 } else { 3 }
}

fn weights_from(file: &MappedFile, config: &LlamaConfig, kernel: Kernel) -> Result<LlamaWeights, WeightCacheError> {
    let c = config;
    let layers = (0..c.layers)
        .map(|i| {
            let i = i as u32;
            Ok(LayerWeights {
                attn_norm: file.vector(Tensor::AttnNorm, i, c.hidden)?,
                qkv: file.matrix(Tensor::Qkv, i, c.hidden + 2 * c.kv_dim(), c.hidden)?,
                attn_out: file.matrix(Tensor::AttnOut, i, c.hidden, c.hidden)?,
                ffn_norm: file.vector(Tensor::FfnNorm, i, c.hidden)?,
                gate_up: file.matrix(Tensor::GateUp, i, 2 * c.ffn, c.hidden)?,
                down: file.matrix(Tensor::Down, i, c.hidden, c.ffn)?,
            })
        })
        .collect::<Result<Vec<_>, WeightCacheError>>()?;
    let output = if c.tied_embeddings { None } else { Some(file.matrix(Tensor::Output, NO_LAYER, c.vocab, c.hidden)?) };
    let (positions, pairs) = (c.context_length, c.head_dim / 2);
    let rope = Rope::from_tables(
        c.head_dim,
        positions,
        file.rope_table(Tensor::RopeCos, positions, pairs)?,
        file.rope_table(Tensor::RopeSin, positions, pairs)?,
    )
    .map_err(|reason| WeightCacheError::invalid(&file.path, reason))?;
    Ok(LlamaWeights {
        embedding: file.matrix(Tensor::Embedding, NO_LAYER, c.vocab, c.hidden)?,
        output_norm: file.vector(Tensor::OutputNorm, NO_LAYER, c.hidden)?,
        output,
        layers,
        rope,
        kernel,
        config: config.clone(),
    })
}
