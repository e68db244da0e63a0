//! One simulated replica: its state, its continuous batch, and its KV memory, which its
//! running sequences reserve and its prefix cache ([`BlockCache`]) fills with the rest.
//!
//! **KV accounting, in tokens.** `kv_reserved` is what the running sequences hold: each
//! sequence's private tokens (its prompt blocks not yet in the cache, the partial last
//! block, its output) plus the cache's pinned blocks, each counted once however many
//! sequences share it. Evictable cached blocks take the rest of the capacity and are
//! evicted, least recently used first, whenever `kv_reserved` + evictable blocks would
//! exceed it. A request is admitted when `kv_reserved` plus what it adds (its private
//! tokens and the evictable blocks its hit pins) fits the capacity, or when the batch is
//! empty (as in the `sim` engine, a sequence alone always runs). A request without block
//! hashes reserves its prompt + output tokens, as before caching was modelled.
//!
//! **Prefix hits.** A request admitted with its first `m` blocks cached prefills only
//! the rest (`prompt − m × B`, at least 1 token) and pins those `m` blocks. The blocks it
//! computes enter the cache at the end of the step that completes them (chunked prefill
//! fills them step by step), pinned until it finishes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::block_cache::{BlockCache, Pinned};
use crate::workload::SimRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplicaState {
    Starting,
    Ready,
    Draining,
    Stopped,
}

/// A running sequence's share of its replica's KV memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct SequenceKv {
    /// Tokens it reserves outside the cache's pinned blocks.
    pub(super) private: u64,
    /// Its leading blocks pinned in the cache.
    pub(super) cached_blocks: usize,
}

/// What admitting a request on a replica now would take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Admission {
    /// Its leading blocks the cache holds.
    pub(super) matched_blocks: usize,
    /// Prompt tokens it need not prefill.
    pub(super) hit_tokens: u64,
    /// Tokens it reserves outside the cache.
    pub(super) private: u64,
    /// What `kv_reserved` grows by.
    pub(super) need: u64,
}

#[derive(Debug)]
pub(super) struct Replica {
    /// Its id for routing: `r` and its index.
    pub(super) name: String,
    pub(super) state: ReplicaState,
    pub(super) started_at: u64,
    pub(super) stopped_at: Option<u64>,
    pub(super) busy: bool,
    pub(super) kv_reserved: u64,
    /// Admitted sequences still prefilling, in admission order: (request, prompt tokens
    /// left).
    pub(super) prefilling: VecDeque<(usize, u64)>,
    /// The sum of their tokens left: the prefill work queued on this replica.
    pub(super) prefill_left: u64,
    /// Sequences past their prefill.
    pub(super) decoding: u64,
    /// The sum of their contexts (prompt + tokens generated so far).
    pub(super) decoding_context: u64,
    /// When each produces its last token: (the value of `steps` after that step,
    /// request).
    pub(super) finishes: BinaryHeap<Reverse<(u64, usize)>>,
    /// Steps run so far.
    pub(super) steps: u64,
    /// The step in flight: the sequences decoding at its start, and the prefill chunk
    /// of each of the first `step_prefill.len()` prefilling sequences.
    pub(super) step_decoding: u64,
    pub(super) step_prefill: Vec<u64>,
    /// Prompt tokens already in the KV cache (cached prefix and prefilled chunks) of the
    /// sequences still prefilling.
    pub(super) prefill_context: u64,
    /// KV tokens in use as last counted: `decoding_context + prefill_context`.
    pub(super) kv_context: u64,
    /// The prefix cache; empty when the replica starts, dropped when it stops.
    pub(super) cache: BlockCache,
}

impl Replica {
    pub(super) fn new(index: usize, state: ReplicaState, at: u64, capacity_blocks: usize) -> Self {
        Self {
            name: format!("r{index}"),
            state,
            started_at: at,
            stopped_at: None,
            busy: false,
            kv_reserved: 0,
            prefilling: VecDeque::new(),
            prefill_left: 0,
            decoding: 0,
            decoding_context: 0,
            finishes: BinaryHeap::new(),
            steps: 0,
            step_decoding: 0,
            step_prefill: Vec::new(),
            prefill_context: 0,
            kv_context: 0,
            cache: BlockCache::new(capacity_blocks),
        }
    }

    /// Sequences admitted and not finished.
    pub(super) fn sequences(&self) -> u64 {
        self.prefilling.len() as u64 + self.decoding
    }

    /// The replica stops at `now`; its cache is gone.
    pub(super) fn stop(&mut self, now: u64) {
        self.state = ReplicaState::Stopped;
        self.stopped_at = Some(now);
        self.cache = BlockCache::new(0);
    }

    /// What admitting `request` now would take (`block_tokens` per block).
    pub(super) fn admission(
        &self,
        request: &SimRequest,
        kv_capacity: u64,
        block_tokens: u64,
    ) -> Admission {
        let (matched_blocks, evictable) = self.cache.lookup(&request.block_hashes);
        let prompt = u64::from(request.prompt_tokens);
        let cached = matched_blocks as u64 * block_tokens;
        let private = (prompt + u64::from(request.output_tokens))
            .saturating_sub(cached)
            .min(kv_capacity);
        Admission {
            matched_blocks,
            hit_tokens: cached.min(prompt.saturating_sub(1)),
            private,
            need: private + evictable as u64 * block_tokens,
        }
    }

    /// Admits `request` (number `index`) as `admission` computed; returns its KV share.
    pub(super) fn admit(
        &mut self,
        index: usize,
        request: &SimRequest,
        admission: Admission,
        kv_capacity: u64,
        block_tokens: u64,
    ) -> SequenceKv {
        for &hash in &request.block_hashes[..admission.matched_blocks] {
            self.cache.pin(hash);
        }
        self.kv_reserved += admission.need;
        self.evict_to_fit(kv_capacity, block_tokens);
        let prefill = u64::from(request.prompt_tokens) - admission.hit_tokens;
        self.prefilling.push_back((index, prefill));
        self.prefill_left += prefill;
        self.prefill_context += admission.hit_tokens;
        SequenceKv {
            private: admission.private,
            cached_blocks: admission.matched_blocks,
        }
    }

    /// A prefilling sequence with `hashes` has `computed` prompt tokens in its KV: its
    /// completed blocks enter the cache, pinned.
    pub(super) fn cache_computed_blocks(
        &mut self,
        hashes: &[u64],
        kv: &mut SequenceKv,
        computed: u64,
        kv_capacity: u64,
        block_tokens: u64,
    ) {
        let full = hashes.len().min((computed / block_tokens) as usize);
        if full <= kv.cached_blocks {
            return;
        }
        for &hash in &hashes[kv.cached_blocks..full] {
            let moved = kv.private.min(block_tokens);
            kv.private -= moved;
            self.kv_reserved -= moved;
            match self.cache.pin(hash) {
                // Another sequence computed it meanwhile: one copy is kept.
                Pinned::Shared => {}
                Pinned::FromEvictable | Pinned::Inserted => self.kv_reserved += block_tokens,
            }
        }
        kv.cached_blocks = full;
        self.evict_to_fit(kv_capacity, block_tokens);
    }

    /// A sequence with `hashes` and share `kv` finished: its private tokens are freed and
    /// its cached blocks released (evictable once no sequence uses them).
    pub(super) fn release(&mut self, hashes: &[u64], kv: SequenceKv, block_tokens: u64) {
        self.kv_reserved -= kv.private;
        let now_evictable = self.cache.release(&hashes[..kv.cached_blocks]);
        self.kv_reserved -= now_evictable as u64 * block_tokens;
    }

    /// Evicts cached blocks, least recently used first, until the running sequences'
    /// reservation and the evictable blocks fit the capacity.
    fn evict_to_fit(&mut self, kv_capacity: u64, block_tokens: u64) {
        while self.kv_reserved + self.cache.evictable_blocks() as u64 * block_tokens > kv_capacity
            && self.cache.evict_least_recently_used().is_some()
        {}
    }
}
