//! [`BlockPool`]: a replica's KV blocks with **prefix caching**.
//!
//! A full block (16 positions) whose keys and values are computed is registered under
//! its [`BlockHash`]: a hash of its tokens chained with the hash of the block before it,
//! so it names the whole prefix up to the block's end, not only its own 16 tokens. A new
//! sequence looks up its blocks' hashes in order and takes the longest run found: those
//! blocks are shared by reference (a count per block) and only the rest of the prompt is
//! prefilled. Keys and values depend only on the tokens before them, and every kernel
//! computes a token's row independently of the others in its batch, so a hit gives the
//! same bits as a recompute.
//!
//! A released block keeps its contents while its hash is registered: with no reference
//! left it becomes **evictable**, still found by lookups, and is reused for new contents
//! only when no never-used block is left, least recently released first. Blocks whose
//! contents are not registered (partial last blocks, or with caching off) go straight
//! back to the free list.
//!
//! Capacity: [`BlockPool::available`] counts free and evictable blocks alike, which is
//! what admission and preemption budget against; taking a hit block out of the
//! evictable set costs one available block, as a new block does.

use std::collections::{BTreeMap, HashMap};

use crate::llm::kv_cache::{BlockAllocator, BLOCK_TOKENS};

/// The chained hash of a full block: its tokens and everything before them.
pub type BlockHash = u128;

/// The hash of the block holding `tokens` (exactly [`BLOCK_TOKENS`]) after the block
/// hashed `parent` (`None` for the first block).
pub fn chain_hash(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    debug_assert_eq!(tokens.len(), BLOCK_TOKENS);
    let mut bytes = [0u8; 16 + 4 * BLOCK_TOKENS];
    bytes[..16].copy_from_slice(&parent.unwrap_or(0).to_le_bytes());
    for (i, t) in tokens.iter().enumerate() {
        bytes[16 + 4 * i..20 + 4 * i].copy_from_slice(&t.to_le_bytes());
    }
    // A distinct seed for the first block, so no parent value stands for "none".
    xxhash_rust::xxh3::xxh3_128_with_seed(&bytes, u64::from(parent.is_none()))
}

/// Extend `hashes` to cover every full block of `tokens`.
pub fn extend_hashes(hashes: &mut Vec<BlockHash>, tokens: impl Fn(usize) -> u32, len: usize) {
    let full = len / BLOCK_TOKENS;
    let mut block = [0u32; BLOCK_TOKENS];
    while hashes.len() < full {
        let start = hashes.len() * BLOCK_TOKENS;
        for (i, slot) in block.iter_mut().enumerate() {
            *slot = tokens(start + i);
        }
        let parent = hashes.last().copied();
        hashes.push(chain_hash(parent, &block));
    }
}

/// The routing name of a block: the low 64 bits of its [`BlockHash`]. Gateways compute
/// it from a prompt's tokens ([`prefix_block_hashes`]) and replicas report the names of
/// the blocks they hold, so a router can count a prompt's leading blocks a replica holds.
pub fn routing_name(hash: BlockHash) -> u64 {
    hash as u64
}

/// The routing names ([`routing_name`]) of every full block of `tokens`, first first:
/// what a gateway knows of a prompt's prefix before any replica sees it.
pub fn prefix_block_hashes(tokens: &[u32]) -> Vec<u64> {
    let mut hashes = Vec::with_capacity(tokens.len() / BLOCK_TOKENS);
    extend_hashes(&mut hashes, |i| tokens[i], tokens.len());
    hashes.into_iter().map(routing_name).collect()
}

/// Counters since the pool was made, for the metrics, tests and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Blocks whose cached contents were reused for new ones.
    pub evictions: u64,
    /// Context tokens admitted sequences found cached.
    pub hit_tokens: u64,
    /// Context tokens admitted sequences had to compute.
    pub miss_tokens: u64,
}

/// The blocks of one replica's KV cache.
#[derive(Debug)]
pub struct BlockPool {
    /// Never-used or cleared blocks.
    free: BlockAllocator,
    refs: Vec<u32>,
    hash_of: Vec<Option<BlockHash>>,
    by_hash: HashMap<BlockHash, u32>,
    /// Evictable blocks (no reference, registered) by release order.
    evictable: BTreeMap<u64, u32>,
    /// Where each evictable block sits in `evictable`.
    released_at: Vec<u64>,
    clock: u64,
    caching: bool,
    stats: PoolStats,
    /// Bumped whenever the set of registered hashes changes (a block registered,
    /// evicted, or the pool cleared): a reporter republishes only when it moved.
    version: u64,
}

impl BlockPool {
    /// `total` blocks; `caching` false makes it a plain allocator (nothing registered).
    pub fn new(total: usize, caching: bool) -> Self {
        Self {
            free: BlockAllocator::new(total),
            refs: vec![0; total],
            hash_of: vec![None; total],
            by_hash: HashMap::new(),
            evictable: BTreeMap::new(),
            released_at: vec![0; total],
            clock: 0,
            caching,
            stats: PoolStats::default(),
            version: 0,
        }
    }

    pub fn total(&self) -> usize {
        self.free.total()
    }

    /// Blocks a sequence could be given now: free plus evictable.
    pub fn available(&self) -> usize {
        self.free.free() + self.evictable.len()
    }

    /// Blocks referenced by at least one sequence.
    pub fn used(&self) -> usize {
        self.total() - self.available()
    }

    /// Blocks whose contents are registered (referenced or evictable).
    pub fn cached(&self) -> usize {
        self.by_hash.len()
    }

    pub fn caching(&self) -> bool {
        self.caching
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// How many of `hashes`, from the first, are cached, and how many of those are
    /// evictable (taking them costs available blocks).
    pub fn lookup(&self, hashes: &[BlockHash]) -> (usize, usize) {
        let mut evictable = 0;
        for (n, h) in hashes.iter().enumerate() {
            match self.by_hash.get(h) {
                Some(&b) => evictable += usize::from(self.refs[b as usize] == 0),
                None => return (n, evictable),
            }
        }
        (hashes.len(), evictable)
    }

    /// Count an admission's tokens found cached and to compute.
    pub fn record_admission(&mut self, hit_tokens: usize, miss_tokens: usize) {
        self.stats.hit_tokens += hit_tokens as u64;
        self.stats.miss_tokens += miss_tokens as u64;
    }

    /// Take a reference to the cached blocks of `hashes` (all of which
    /// [`BlockPool::lookup`] found), appended to `table` in order.
    pub fn acquire(&mut self, hashes: &[BlockHash], table: &mut Vec<u32>) {
        for h in hashes {
            let b = self.by_hash[h];
            if self.refs[b as usize] == 0 {
                self.evictable.remove(&self.released_at[b as usize]);
            }
            self.refs[b as usize] += 1;
            table.push(b);
        }
    }

    /// Grow `table` to hold `tokens` positions with new blocks (free ones first, then
    /// the least recently released evictable ones); false, and nothing taken, when not
    /// enough are available.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let need = BlockAllocator::blocks_for(tokens).saturating_sub(table.len());
        if need > self.available() {
            return false;
        }
        for _ in 0..need {
            let b = if let Some(b) = self.free.take() {
                b
            } else {
                let (_, b) = self.evictable.pop_first().expect("available counted it");
                let h = self.hash_of[b as usize].take().expect("evictable blocks are registered");
                self.by_hash.remove(&h);
                self.stats.evictions += 1;
                self.version += 1;
                b
            };
            self.refs[b as usize] = 1;
            table.push(b);
        }
        true
    }

    /// Register `block`'s contents (full and computed) under `hash`. A block already
    /// registered, or a hash another block already holds, is left as it is: the block
    /// then stays private to its sequence.
    pub fn register(&mut self, block: u32, hash: BlockHash) {
        if !self.caching || self.hash_of[block as usize].is_some() || self.by_hash.contains_key(&hash) {
            return;
        }
        self.hash_of[block as usize] = Some(hash);
        self.by_hash.insert(hash, block);
        self.version += 1;
    }

    /// Changes whenever the set of cached hashes changes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The routing names ([`routing_name`]) of up to `max` cached blocks, those in use
    /// first, then the evictable ones, most recently released first (the last to be
    /// evicted): a bounded report keeps the blocks most likely to still be here.
    pub fn cached_names(&self, max: usize) -> Vec<u64> {
        let in_use = self.hash_of.iter().zip(&self.refs).filter(|(_, &refs)| refs > 0).filter_map(|(h, _)| *h);
        let evictable = self.evictable.values().rev().filter_map(|&b| self.hash_of[b as usize]);
        in_use.chain(evictable).take(max).map(routing_name).collect()
    }

    /// Drop one reference to every block of `table` (emptied).
    pub fn release(&mut self, table: &mut Vec<u32>) {
        // Last block first: a sequence's tail is the least likely to be shared, so its
        // blocks should be evicted before the prefix they extend.
        for b in table.drain(..).rev() {
            let refs = &mut self.refs[b as usize];
            debug_assert!(*refs > 0, "block {b} released more often than taken");
            *refs -= 1;
            if *refs > 0 {
                continue;
            }
            if self.hash_of[b as usize].is_some() {
                self.clock += 1;
                self.released_at[b as usize] = self.clock;
                self.evictable.insert(self.clock, b);
            } else {
                self.free.give(b);
            }
        }
    }

    /// Forget every block and reference (after a failed step, whose cache contents are
    /// not to be trusted).
    pub fn clear(&mut self) {
        let (stats, version) = (self.stats, self.version);
        *self = Self::new(self.total(), self.caching);
        self.stats = stats;
        self.version = version + 1;
    }

    /// Every reference count is zero and every block is free or evictable: what a pool
    /// with no sequence left must satisfy (tests).
    pub fn is_idle(&self) -> bool {
        self.refs.iter().all(|&r| r == 0) && self.available() == self.total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes_of(tokens: &[u32]) -> Vec<BlockHash> {
        let mut h = Vec::new();
        extend_hashes(&mut h, |i| tokens[i], tokens.len());
        h
    }

    #[test]
    fn hashes_chain_the_whole_prefix() {
        let a: Vec<u32> = (0..48).collect();
        let mut b = a.clone();
        b[3] = 999;
        let (ha, hb) = (hashes_of(&a), hashes_of(&b));
        assert_eq!(ha.len(), 3);
        assert!(ha.iter().zip(&hb).all(|(x, y)| x != y), "a change in block 0 changes every later hash");
        let mut c = a.clone();
        c[40] = 7;
        let hc = hashes_of(&c);
        assert_eq!(ha[..2], hc[..2]);
        assert_ne!(ha[2], hc[2]);
        assert_eq!(hashes_of(&a[..47]).len(), 2, "only full blocks are hashed");
        // The same 16 tokens after different prefixes are different blocks.
        let d: Vec<u32> = a[16..32].iter().chain(&a[16..32]).copied().collect();
        let hd = hashes_of(&d);
        assert_ne!(hd[0], hd[1]);
    }

    #[test]
    fn a_released_prefix_is_found_shared_and_evicted_last_released_last() {
        let mut pool = BlockPool::new(4, true);
        let tokens: Vec<u32> = (0..40).collect();
        let hashes = hashes_of(&tokens);
        let mut a = Vec::new();
        assert!(pool.grow(&mut a, 40));
        assert_eq!(a.len(), 3);
        pool.register(a[0], hashes[0]);
        pool.register(a[1], hashes[1]);
        assert_eq!(pool.lookup(&hashes), (2, 0), "registered blocks are found while in use");
        // A second sequence shares them.
        let mut b = Vec::new();
        pool.acquire(&hashes[..2], &mut b);
        assert!(pool.grow(&mut b, 33));
        assert_eq!(b[..2], a[..2]);
        assert_eq!(pool.used(), 4);
        pool.release(&mut a);
        assert_eq!(pool.used(), 3, "the shared blocks are still held by b; a's tail block is free");
        pool.release(&mut b);
        assert!(pool.is_idle());
        assert_eq!(pool.cached(), 2);
        assert_eq!(pool.lookup(&hashes), (2, 2), "evictable blocks are still found");
        // New contents take free blocks first, then evict the least recently released.
        let mut c = Vec::new();
        assert!(pool.grow(&mut c, 32));
        assert_eq!(pool.cached(), 2, "two free blocks were left");
        assert!(pool.grow(&mut c, 48));
        assert_eq!(pool.stats().evictions, 1);
        // b released its tail first, then block 1, then block 0: block 1 went first.
        assert_eq!(pool.lookup(&hashes), (1, 1));
        assert!(!pool.grow(&mut c, 80), "nothing left");
        assert_eq!(c.len(), 3, "a refused grow takes nothing");
        pool.release(&mut c);
        assert!(pool.is_idle());
    }

    #[test]
    fn a_hash_already_held_and_caching_off_register_nothing() {
        let mut pool = BlockPool::new(4, true);
        let h = hashes_of(&(0..16).collect::<Vec<_>>());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert!(pool.grow(&mut a, 16) && pool.grow(&mut b, 16));
        pool.register(a[0], h[0]);
        pool.register(b[0], h[0]);
        pool.release(&mut b);
        assert_eq!(pool.cached(), 1);
        assert_eq!(pool.available(), 3, "b's duplicate went back to the free list");
        pool.release(&mut a);
        let mut off = BlockPool::new(2, false);
        let mut c = Vec::new();
        assert!(off.grow(&mut c, 16));
        off.register(c[0], h[0]);
        assert_eq!(off.lookup(&h), (0, 0));
    }

    /// A long random mix of admissions with hits, growth, registration and releases
    /// (finished, cancelled and preempted sequences look the same to the pool): every
    /// count returns to zero, nothing leaks, and a block is never handed to two owners
    /// unless shared through a hit.
    #[test]
    fn reference_counts_survive_a_long_mixed_run() {
        let mut pool = BlockPool::new(24, true);
        let mut seed = 7u64;
        let mut rand = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let prefixes: Vec<Vec<u32>> = (0..4).map(|p| (0..64).map(|i| p * 1000 + i).collect()).collect();
        let mut live: Vec<(Vec<u32>, Vec<BlockHash>, Vec<u32>)> = Vec::new();
        for _ in 0..5000 {
            if live.len() < 5 && rand(3) > 0 {
                let p = &prefixes[rand(4) as usize];
                let mut tokens = p[..rand(64) as usize + 1].to_vec();
                tokens.extend((0..rand(40)).map(|_| rand(50) as u32 + 9000));
                let hashes = hashes_of(&tokens);
                let usable = (tokens.len() - 1) / BLOCK_TOKENS;
                let (hit, from_lru) = pool.lookup(&hashes[..usable]);
                let need = BlockAllocator::blocks_for(tokens.len()) - hit;
                if need + from_lru > pool.available() {
                    continue;
                }
                let mut table = Vec::new();
                pool.acquire(&hashes[..hit], &mut table);
                assert!(pool.grow(&mut table, tokens.len()));
                for (k, h) in hashes.iter().enumerate() {
                    pool.register(table[k], *h);
                }
                live.push((tokens, hashes, table));
            } else if !live.is_empty() {
                let (_, _, mut table) = live.swap_remove(rand(live.len() as u64) as usize);
                pool.release(&mut table);
            }
            // Blocks held by two sequences must hold the same registered contents.
            let mut owner: HashMap<u32, BlockHash> = HashMap::new();
            for (tokens, hashes, table) in &live {
                for (k, &b) in table.iter().enumerate() {
                    let full = (k + 1) * BLOCK_TOKENS <= tokens.len();
                    if let Some(prev) = owner.insert(b, if full { hashes[k] } else { u128::MAX - k as u128 }) {
                        assert!(full && prev == hashes[k], "block {b} handed to two owners");
                    }
                }
            }
            let held: usize = owner.len();
            assert_eq!(pool.used(), held);
        }
        for (_, _, mut table) in live.drain(..) {
            pool.release(&mut table);
        }
        assert!(pool.is_idle());
        assert!(pool.stats().evictions > 0, "the run was big enough to evict");
    }

    #[test]
    fn the_routing_report_names_held_blocks_in_use_first_and_tracks_changes() {
        let mut pool = BlockPool::new(4, true);
        let tokens: Vec<u32> = (0..64).collect();
        let hashes = hashes_of(&tokens);
        let names = prefix_block_hashes(&tokens);
        assert_eq!(names, hashes.iter().map(|&h| routing_name(h)).collect::<Vec<_>>());
        assert_eq!(prefix_block_hashes(&tokens[..15]), Vec::<u64>::new());
        let v0 = pool.version();
        let mut a = Vec::new();
        assert!(pool.grow(&mut a, 32));
        assert_eq!(pool.version(), v0, "new blocks hold nothing yet");
        pool.register(a[0], hashes[0]);
        pool.register(a[1], hashes[1]);
        let v1 = pool.version();
        assert!(v1 > v0);
        pool.register(a[1], hashes[1]);
        assert_eq!(pool.version(), v1, "nothing new");
        pool.release(&mut a);
        let mut b = Vec::new();
        assert!(pool.grow(&mut b, 16));
        pool.register(b[0], hashes[2]);
        // In use (hashes[2]) first, then evictable most recently released first: a
        // released its tail (1) before its head (0).
        assert_eq!(pool.cached_names(10), vec![names[2], names[0], names[1]]);
        assert_eq!(pool.cached_names(2), vec![names[2], names[0]], "the bound drops the next to be evicted");
        // Filling the pool evicts: the version moves.
        let v2 = pool.version();
        let mut c = Vec::new();
        assert!(pool.grow(&mut c, 48));
        assert!(pool.version() > v2);
        assert_eq!(pool.cached_names(10), vec![names[2]]);
        pool.clear();
        assert!(pool.cached_names(10).is_empty());
    }
}
