//! [`BlockCache`]: one replica's prefix cache of KV blocks, with LRU eviction.
//!
//! A block is named by its chained hash. The blocks of running sequences are **pinned**
//! (counted references) and never evicted; when the last sequence using a block
//! finishes, the block stays cached, **evictable**, until the replica needs its memory:
//! then the least recently used evictable block goes first. A sequence's blocks are
//! released last block first, so of one prompt the tail is evicted before the head (a
//! block is useless once the block before it is gone) and the blocks many prompts share
//! stay longest. The cache keeps a [`PrefixSummary`] of its hashes in step with it: what
//! the replica reports to routing.
//!
//! How much memory the cached blocks may take is the engine's decision
//! ([`crate::engine`]): the replica's KV capacity minus what its running sequences
//! reserve.

use std::collections::{BTreeMap, HashMap};

use swell_router::PrefixSummary;

/// A cached block: the sequences using it and, when none does, its place in the LRU
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    references: u32,
    /// The stamp of its release (the key in `evictable`) while `references` is 0.
    released: u64,
}

/// What pinning a block found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    /// Another running sequence already pinned it: no new memory.
    Shared,
    /// It was cached and evictable: its memory is now pinned.
    FromEvictable,
    /// It was not cached: it now is, pinned.
    Inserted,
}

/// One replica's cached blocks.
#[derive(Debug, Clone)]
pub struct BlockCache {
    blocks: HashMap<u64, Block>,
    /// Release stamp → hash, for the evictable blocks: the first is the least recently
    /// used.
    evictable: BTreeMap<u64, u64>,
    next_stamp: u64,
    pinned: usize,
    summary: PrefixSummary,
}

impl BlockCache {
    /// An empty cache whose summary holds at most `summary_bound` hashes (the replica's
    /// capacity in blocks: past it [`PrefixSummary`] refuses hashes).
    pub fn new(summary_bound: usize) -> Self {
        Self {
            blocks: HashMap::new(),
            evictable: BTreeMap::new(),
            next_stamp: 0,
            pinned: 0,
            summary: PrefixSummary::new(summary_bound),
        }
    }

    /// The leading blocks of `hashes` that are cached, and how many of those are
    /// evictable (pinning them takes their memory from the cache).
    pub fn lookup(&self, hashes: &[u64]) -> (usize, usize) {
        let mut matched = 0;
        let mut evictable = 0;
        for hash in hashes {
            let Some(block) = self.blocks.get(hash) else {
                break;
            };
            matched += 1;
            if block.references == 0 {
                evictable += 1;
            }
        }
        (matched, evictable)
    }

    /// One more running sequence uses the block `hash` (cached or not).
    pub fn pin(&mut self, hash: u64) -> Pinned {
        match self.blocks.get_mut(&hash) {
            Some(block) if block.references > 0 => {
                block.references += 1;
                Pinned::Shared
            }
            Some(block) => {
                self.evictable.remove(&block.released);
                block.references = 1;
                self.pinned += 1;
                Pinned::FromEvictable
            }
            None => {
                self.blocks.insert(
                    hash,
                    Block {
                        references: 1,
                        released: 0,
                    },
                );
                self.summary.insert(hash);
                self.pinned += 1;
                Pinned::Inserted
            }
        }
    }

    /// A finished sequence no longer uses `hashes` (its pinned blocks, first block
    /// first); they are released last first. Returns how many became evictable.
    pub fn release(&mut self, hashes: &[u64]) -> usize {
        let mut now_evictable = 0;
        for hash in hashes.iter().rev() {
            let block = self
                .blocks
                .get_mut(hash)
                .expect("a released block is cached");
            debug_assert!(block.references > 0, "released more than pinned");
            block.references -= 1;
            if block.references == 0 {
                block.released = self.next_stamp;
                self.evictable.insert(self.next_stamp, *hash);
                self.next_stamp += 1;
                self.pinned -= 1;
                now_evictable += 1;
            }
        }
        now_evictable
    }

    /// Evicts the least recently used evictable block; `None` when every cached block is
    /// pinned.
    pub fn evict_least_recently_used(&mut self) -> Option<u64> {
        let (_, hash) = self.evictable.pop_first()?;
        self.blocks.remove(&hash);
        self.summary.remove(hash);
        Some(hash)
    }

    pub fn pinned_blocks(&self) -> usize {
        self.pinned
    }

    pub fn evictable_blocks(&self) -> usize {
        self.evictable.len()
    }

    pub fn summary(&self) -> &PrefixSummary {
        &self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin_all(cache: &mut BlockCache, hashes: &[u64]) -> Vec<Pinned> {
        hashes.iter().map(|&h| cache.pin(h)).collect()
    }

    #[test]
    fn evicts_least_recently_released_first_and_the_tail_of_a_prompt_before_its_head() {
        let mut cache = BlockCache::new(100);
        pin_all(&mut cache, &[1, 2, 3]);
        pin_all(&mut cache, &[10, 11]);
        assert_eq!(cache.release(&[1, 2, 3]), 3);
        assert_eq!(cache.release(&[10, 11]), 2);
        // Prompt 1..3 was released first; within it, 3 (its tail) before 1.
        let order: Vec<u64> = std::iter::from_fn(|| cache.evict_least_recently_used()).collect();
        assert_eq!(order, vec![3, 2, 1, 11, 10]);
        assert_eq!(cache.lookup(&[1]), (0, 0));
        assert!(cache.summary().is_empty());
    }

    #[test]
    fn a_hit_refreshes_a_block_and_pinned_blocks_are_never_evicted() {
        let mut cache = BlockCache::new(100);
        pin_all(&mut cache, &[1, 2]);
        cache.release(&[1, 2]);
        pin_all(&mut cache, &[5, 6]);
        cache.release(&[5, 6]);
        // A new sequence with prefix 1 and a new block 7.
        assert_eq!(cache.lookup(&[1, 7]), (1, 1));
        assert_eq!(
            pin_all(&mut cache, &[1, 7]),
            vec![Pinned::FromEvictable, Pinned::Inserted]
        );
        // A second sequence sharing block 1: no new memory.
        assert_eq!(cache.pin(1), Pinned::Shared);
        assert_eq!((cache.pinned_blocks(), cache.evictable_blocks()), (2, 3));
        // Only 2, 6, 5 can go; 1 and 7 are pinned.
        let order: Vec<u64> = std::iter::from_fn(|| cache.evict_least_recently_used()).collect();
        assert_eq!(order, vec![2, 6, 5]);
        assert_eq!(cache.lookup(&[1, 7]), (2, 0));
        assert_eq!(cache.summary().matched_blocks(&[1, 7]), 2);
        // The first sequence ends: 1 is still pinned by the second, 7 is released.
        assert_eq!(cache.release(&[1, 7]), 1);
        assert_eq!(cache.evict_least_recently_used(), Some(7));
        assert_eq!(cache.evict_least_recently_used(), None);
        assert_eq!(cache.release(&[1]), 1);
        assert_eq!(cache.evict_least_recently_used(), Some(1));
        assert_eq!((cache.pinned_blocks(), cache.evictable_blocks()), (0, 0));
    }
}
