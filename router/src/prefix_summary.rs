//! [`PrefixSummary`]: what a replica reports about the prompt-prefix blocks it holds.
//!
//! A prompt's KV cache is cut into blocks of a fixed number of tokens, each named by a
//! chained hash (a block's hash covers every token before it too), so a replica holding
//! a job's first `k` block hashes holds the KV of its first `k` blocks. The summary is
//! the set of those hashes.
//!
//! **Bound.** A summary holds at most `max_blocks` hashes (default
//! [`PrefixSummary::DEFAULT_MAX_BLOCKS`], 65,536: 512 KiB of hashes, more than the
//! 27,500 blocks of 16 tokens an 8B model's KV cache holds on one H100). Past the bound
//! [`PrefixSummary::insert`] refuses new hashes. A missing hash can only make
//! [`PrefixSummary::matched_blocks`] shorter, never longer: an over-full summary makes
//! routing less cache-aware, never wrong about what a replica holds. A replica that
//! keeps its summary beside an LRU cache inserts the blocks it touches and removes the
//! ones it evicts, so the summary stays within its cache.

use std::collections::HashSet;

/// The set of block hashes a replica holds, at most `max_blocks` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixSummary {
    hashes: HashSet<u64>,
    max_blocks: usize,
}

impl Default for PrefixSummary {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_BLOCKS)
    }
}

impl PrefixSummary {
    /// The default bound: 65,536 hashes (512 KiB).
    pub const DEFAULT_MAX_BLOCKS: usize = 65_536;

    /// An empty summary holding at most `max_blocks` hashes.
    pub fn new(max_blocks: usize) -> Self {
        Self {
            hashes: HashSet::new(),
            max_blocks,
        }
    }

    /// A summary of `hashes`, taken in order until the bound: a replica lists its most
    /// recently used blocks first, so the bound drops the least recently used.
    pub fn from_hashes(hashes: impl IntoIterator<Item = u64>, max_blocks: usize) -> Self {
        let mut summary = Self::new(max_blocks);
        for hash in hashes {
            if summary.is_full() {
                break;
            }
            summary.insert(hash);
        }
        summary
    }

    /// Records a hash the replica now holds; false when the summary is full and did not
    /// record it (or already held it).
    pub fn insert(&mut self, hash: u64) -> bool {
        if self.hashes.len() >= self.max_blocks {
            return false;
        }
        self.hashes.insert(hash)
    }

    /// Forgets a hash the replica no longer holds; false when it was not recorded.
    pub fn remove(&mut self, hash: u64) -> bool {
        self.hashes.remove(&hash)
    }

    pub fn contains(&self, hash: u64) -> bool {
        self.hashes.contains(&hash)
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.hashes.len() >= self.max_blocks
    }

    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }

    /// The length of the longest run of `job_hashes`, from the first, that the replica
    /// holds: the job's blocks it need not prefill.
    pub fn matched_blocks(&self, job_hashes: &[u64]) -> usize {
        job_hashes
            .iter()
            .take_while(|hash| self.hashes.contains(hash))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matched_blocks_is_the_held_run_from_the_first_block() {
        let summary = PrefixSummary::from_hashes([10, 11, 12, 20, 14], 100);
        assert_eq!(summary.matched_blocks(&[10, 11, 12, 13, 14]), 3);
        assert_eq!(
            summary.matched_blocks(&[20, 10, 11]),
            3,
            "any order of holding"
        );
        assert_eq!(
            summary.matched_blocks(&[13, 10, 11]),
            0,
            "a gap at the start"
        );
        assert_eq!(
            summary.matched_blocks(&[10, 13, 14]),
            1,
            "a later block held after a gap does not count"
        );
        assert_eq!(summary.matched_blocks(&[]), 0);
        assert_eq!(PrefixSummary::default().matched_blocks(&[10]), 0);
    }

    #[test]
    fn the_bound_refuses_new_hashes_and_only_shortens_matches() {
        // Most recent first: the bound keeps 1, 2, 3 and drops 4.
        let mut summary = PrefixSummary::from_hashes([1, 2, 3, 4], 3);
        assert_eq!((summary.len(), summary.is_full()), (3, true));
        assert!(!summary.contains(4));
        assert!(!summary.insert(5), "full");
        assert_eq!(summary.matched_blocks(&[1, 2, 3, 4]), 3);
        assert!(summary.remove(3));
        assert!(!summary.remove(3));
        assert!(summary.insert(5));
        assert_eq!(summary.matched_blocks(&[1, 2, 3, 4]), 2);
        assert_eq!(summary.max_blocks(), 3);
    }
}
