//! The paged KV cache: fixed-size blocks of token slots, handed out to sequences by a
//! [`BlockAllocator`] and stored in one [`KvCache`] per replica.
//!
//! A sequence owns a block table (block ids in position order); position `p` lives in
//! block `table[p / BLOCK_TOKENS]`, slot `p % BLOCK_TOKENS`. Blocks are the unit of
//! capacity accounting: the scheduler admits a sequence only when blocks for its context
//! are free, and preempts when a decoding sequence needs a block and none is left, so the
//! cache never grows and never runs out mid-step.
//!
//! Storage layout, per layer: `[block][kv_head][slot][head_dim]` f32 for keys and the
//! same for values, so one head's keys of one block are contiguous (what attention reads).

use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::llm::kv_cache_q8::{self, Q8Block, Q8Store};

/// How keys and values are stored (`llm.kv_cache_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvCacheType {
    /// f32, exact.
    #[default]
    F32,
    /// 8 bits per value with scales per token ([`kv_cache_q8`]): under a third of the
    /// memory and integer attention; outputs differ slightly from `f32`.
    Q8,
}

impl KvCacheType {
    pub fn name(self) -> &'static str {
        match self {
            KvCacheType::F32 => "f32",
            KvCacheType::Q8 => "q8",
        }
    }
}

/// Token slots per block.
pub const BLOCK_TOKENS: usize = 16;

/// Hands out block ids; knows how many are free.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    total: usize,
    free: Vec<u32>,
}

impl BlockAllocator {
    pub fn new(total: usize) -> Self {
        Self { total, free: (0..total as u32).rev().collect() }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }

    pub fn used(&self) -> usize {
        self.total - self.free.len()
    }

    /// Blocks needed to hold `tokens` positions.
    pub fn blocks_for(tokens: usize) -> usize {
        tokens.div_ceil(BLOCK_TOKENS)
    }

    /// Grow `table` to hold `tokens` positions; false (and nothing taken) when there are
    /// not enough free blocks.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let need = Self::blocks_for(tokens).saturating_sub(table.len());
        if need > self.free.len() {
            return false;
        }
        for _ in 0..need {
            table.push(self.free.pop().expect("checked above"));
        }
        true
    }

    /// One free block, if any.
    pub fn take(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Give back one block.
    pub fn give(&mut self, block: u32) {
        self.free.push(block);
    }

    /// Give back every block of `table`.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        self.free.append(table);
    }
}

/// Types whose all-zero bytes are a valid value (what [`zeroed`] hands out).
///
/// # Safety
/// Only for types where every byte being zero is a valid value.
pub(crate) unsafe trait Zeroable: Copy {}
// SAFETY: zero bytes are 0 for integers and +0.0 for floats; arrays of such are zeros.
unsafe impl Zeroable for f32 {}
unsafe impl Zeroable for i8 {}
unsafe impl Zeroable for i32 {}
unsafe impl<T: Zeroable, const N: usize> Zeroable for [T; N] {}

/// `len` zeros, or `None` when the allocator cannot give them (instead of aborting, as
/// `vec![0.0; len]` does). Allocated zeroed, as `vec!` does, so the pages are committed
/// only when written.
pub(crate) fn zeroed<T: Zeroable>(len: usize) -> Option<Vec<T>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(len).ok()?;
    // SAFETY: `layout` has a non-zero size. A non-null pointer from `alloc_zeroed` with
    // this layout holds `len` initialized values (`T: Zeroable`: zero bytes are a valid
    // value), owned by the global allocator, which is what `Vec::from_raw_parts`
    // requires for a length and capacity of `len`.
    unsafe {
        let pointer = std::alloc::alloc_zeroed(layout).cast::<T>();
        (!pointer.is_null()).then(|| Vec::from_raw_parts(pointer, len, len))
    }
}

/// One replica's key and value storage.
#[derive(Debug)]
pub struct KvCache {
    pub layers: usize,
    pub blocks: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    storage: Storage,
}

/// What a [`KvCache`] holds, by [`KvCacheType`].
#[derive(Debug)]
enum Storage {
    F32 { k: Vec<f32>, v: Vec<f32> },
    Q8(Q8Store),
}

impl KvCache {
    /// Reserves the cache. Its pages are zeroed by the system as they are first
    /// touched, so a fresh cache costs address space, not memory; a token slot once
    /// written stays resident for the replica's life. A cache the system cannot give is
    /// an error (a failed allocation would abort the process).
    pub fn new(layers: usize, blocks: usize, kv_heads: usize, head_dim: usize) -> Result<Self, EngineError> {
        Self::with_type(layers, blocks, kv_heads, head_dim, KvCacheType::F32)
    }

    /// [`KvCache::new`] with values stored as `kind` says. An 8-bit cache needs a head
    /// size divisible by 32 (an error otherwise).
    pub fn with_type(layers: usize, blocks: usize, kv_heads: usize, head_dim: usize, kind: KvCacheType) -> Result<Self, EngineError> {
        let len = layers
            .checked_mul(blocks)
            .and_then(|n| n.checked_mul(kv_heads))
            .and_then(|n| n.checked_mul(BLOCK_TOKENS))
            .and_then(|n| n.checked_mul(head_dim));
        let cannot = || {
            let bytes = Self::bytes_per_token_of(kind, layers, kv_heads, head_dim) as f64 * (blocks * BLOCK_TOKENS) as f64;
            EngineError::Load(format!(
                "the KV cache of {} tokens ({:.1} GiB) cannot be allocated; lower llm.kv_cache_tokens",
                blocks * BLOCK_TOKENS,
                bytes / f64::from(1u32 << 30)
            ))
        };
        let len = len.ok_or_else(cannot)?;
        if kind == KvCacheType::Q8 {
            if !head_dim.is_multiple_of(kv_cache_q8::GROUP) {
                return Err(EngineError::Load(format!(
                    "llm.kv_cache_type = \"q8\" needs a head size divisible by {}; this model's is {head_dim}",
                    kv_cache_q8::GROUP
                )));
            }
            let q8 = Q8Store::new(len / (BLOCK_TOKENS * head_dim), head_dim).ok_or_else(cannot)?;
            return Ok(Self { layers, blocks, kv_heads, head_dim, storage: Storage::Q8(q8) });
        }
        let k = zeroed(len).ok_or_else(cannot)?;
        let v = zeroed(len).ok_or_else(cannot)?;
        Ok(Self { layers, blocks, kv_heads, head_dim, storage: Storage::F32 { k, v } })
    }

    /// Bytes per token slot over all layers (keys and values) of an f32 cache.
    pub fn bytes_per_token(layers: usize, kv_heads: usize, head_dim: usize) -> usize {
        Self::bytes_per_token_of(KvCacheType::F32, layers, kv_heads, head_dim)
    }

    /// Bytes per token slot over all layers (keys and values, and the 8-bit cache's scales).
    pub fn bytes_per_token_of(kind: KvCacheType, layers: usize, kv_heads: usize, head_dim: usize) -> usize {
        match kind {
            KvCacheType::F32 => 2 * layers * kv_heads * head_dim * std::mem::size_of::<f32>(),
            KvCacheType::Q8 => layers * kv_heads * kv_cache_q8::bytes_per_slot(head_dim),
        }
    }

    pub fn size_bytes(&self) -> usize {
        match &self.storage {
            Storage::Q8(q8) => q8.size_bytes(),
            Storage::F32 { k, v } => (k.len() + v.len()) * std::mem::size_of::<f32>(),
        }
    }

    pub fn kind(&self) -> KvCacheType {
        match self.storage {
            Storage::F32 { .. } => KvCacheType::F32,
            Storage::Q8(_) => KvCacheType::Q8,
        }
    }

    /// Index of a (layer, block, head): its slots start at `unit * BLOCK_TOKENS *
    /// head_dim` values (f32) or bytes (8-bit).
    #[inline]
    fn unit(&self, layer: usize, block: u32, head: usize) -> usize {
        (layer * self.blocks + block as usize) * self.kv_heads + head
    }

    /// Store one token's keys and values (`kv_heads * head_dim` each) at `pos`.
    #[inline]
    pub fn store(&mut self, layer: usize, table: &[u32], pos: usize, k: &[f32], v: &[f32]) {
        let block = table[pos / BLOCK_TOKENS];
        let slot = pos % BLOCK_TOKENS;
        let hd = self.head_dim;
        let first_unit = self.unit(layer, block, 0);
        for head in 0..self.kv_heads {
            let (kh, vh) = (&k[head * hd..(head + 1) * hd], &v[head * hd..(head + 1) * hd]);
            match &mut self.storage {
                Storage::Q8(q8) => q8.store(first_unit + head, slot, kh, vh),
                Storage::F32 { k: keys, v: values } => {
                    let base = (first_unit + head) * BLOCK_TOKENS * hd;
                    values[base + slot * hd..base + (slot + 1) * hd].copy_from_slice(vh);
                    // Keys transposed: dimension-major, the block's 16 slots side by side.
                    for (d, &kd) in kh.iter().enumerate() {
                        keys[base + d * BLOCK_TOKENS + slot] = kd;
                    }
                }
            }
        }
    }

    /// Keys and values of one head in one block, `BLOCK_TOKENS * head_dim` each: keys
    /// **transposed** (`k[d * BLOCK_TOKENS + slot]`, so one vector holds dimension `d`
    /// of all 16 slots and a block's 16 scores come out of `head_dim` multiply-adds),
    /// values slot-major (`v[slot * head_dim + d]`).
    /// Panics on an 8-bit cache (read it with [`KvCache::block_q8`]).
    #[inline]
    pub fn block(&self, layer: usize, block: u32, head: usize) -> (&[f32], &[f32]) {
        let Storage::F32 { k, v } = &self.storage else { panic!("an 8-bit cache read as f32") };
        let len = BLOCK_TOKENS * self.head_dim;
        let at = self.unit(layer, block, head) * len;
        (&k[at..at + len], &v[at..at + len])
    }

    /// One head's slots of one block of an 8-bit cache; panics on an f32 cache.
    #[inline]
    pub fn block_q8(&self, layer: usize, block: u32, head: usize) -> Q8Block<'_> {
        let Storage::Q8(q8) = &self.storage else { panic!("an f32 cache read as 8-bit") };
        q8.block(self.unit(layer, block, head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_grows_tables_and_refuses_without_taking() {
        let mut alloc = BlockAllocator::new(3);
        let mut a = Vec::new();
        assert!(alloc.grow(&mut a, 17));
        assert_eq!(a.len(), 2);
        assert!(alloc.grow(&mut a, 32), "32 positions still fit in 2 blocks");
        assert_eq!(alloc.free(), 1);
        let mut b = Vec::new();
        assert!(!alloc.grow(&mut b, 33));
        assert!(b.is_empty());
        assert_eq!(alloc.free(), 1);
        alloc.release(&mut a);
        assert_eq!(alloc.free(), 3);
        assert!(alloc.grow(&mut b, 33));
        assert_eq!(alloc.used(), 3);
    }

    #[test]
    fn store_then_read_back_through_the_table() {
        let mut cache = KvCache::new(2, 4, 2, 4).unwrap();
        let table = vec![3, 1];
        let k: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let v: Vec<f32> = (0..8).map(|i| -(i as f32)).collect();
        cache.store(1, &table, 17, &k, &v);
        let (kb, vb) = cache.block(1, 1, 1);
        // Slot 1 of block 1 (position 17); keys dimension-major.
        let key: Vec<f32> = (0..4).map(|d| kb[d * BLOCK_TOKENS + 1]).collect();
        assert_eq!(key, [4.0, 5.0, 6.0, 7.0]);
        assert_eq!(&vb[4..8], &[-4.0, -5.0, -6.0, -7.0]);
        let (kb, _) = cache.block(0, 1, 1);
        assert!(kb.iter().all(|&x| x == 0.0), "other layers untouched");
    }

    #[test]
    fn a_cache_the_system_cannot_give_is_an_error_not_an_abort() {
        let error = KvCache::new(64, 1 << 40, 64, 128).unwrap_err().to_string();
        assert!(error.contains("cannot be allocated"), "{error}");
        let error = KvCache::new(30, 1 << 32, 3, 64).unwrap_err().to_string();
        assert!(error.contains("lower llm.kv_cache_tokens"), "{error}");
        let cache = KvCache::new(1, 2, 1, 4).unwrap();
        assert_eq!(cache.size_bytes(), 2 * 2 * 16 * 4 * 4);
    }
}
