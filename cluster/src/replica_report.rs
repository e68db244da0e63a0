//! [`ReplicaReport`]: what a replica tells the gateways about itself, for cache-aware
//! routing: the prompt-prefix blocks its KV cache holds (their routing names, bounded),
//! the prefill work queued on it, its free room, and whether it takes new work.
//!
//! Replicas publish a report through their queue ([`crate::Queue::report_replica`]) when
//! it changed, at most a few times a second, and at least once a
//! [`ReplicaReport::HEARTBEAT`] so a live replica's report never goes stale; gateways
//! read a deployment's reports ([`crate::Queue::replica_reports`]) into their routing
//! view every few hundred milliseconds, not per request. A report older than
//! [`ReplicaReport::STALE_AFTER`] is ignored (its replica died without forgetting
//! itself), and a replica that retires removes its own.
//!
//! The encoding on Redis is bincode 2 (serde, standard config): a report of 4,096 blocks
//! is about 37 KB.

use serde::{Deserialize, Serialize};

/// One replica's state as routing sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// Its queue consumer id (the same name its leases and routes use).
    pub replica: String,
    /// When it was made (Unix ms, the replica's clock).
    pub at_ms: u64,
    /// Ready and not draining: it may be promised new work.
    pub accepting: bool,
    /// Sequences it would take now.
    pub free_slots: u64,
    /// Sequences in its batch.
    pub running: u64,
    /// Prompt tokens its engine has yet to prefill.
    pub pending_prefill_tokens: u64,
    /// The version of the [`PrefixBlocks`] it last published; `None`: its engine does not
    /// report a prefix cache (an external engine), and the gateway keeps its own record
    /// of what it sent there.
    pub prefix_version: Option<u64>,
}

/// The blocks a replica's prefix cache holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixBlocks {
    /// Changes whenever the set of blocks changes: a reader that has this version
    /// already need not rebuild its view of them.
    pub version: u64,
    /// Tokens per block.
    pub block_tokens: u32,
    /// The blocks' routing names, the most likely to stay cached first.
    pub blocks: Vec<u64>,
}

impl ReplicaReport {
    /// A live replica republishes at least this often (ms).
    pub const HEARTBEAT: u64 = 1_000;
    /// A report older than this (ms) is ignored: its replica is gone or stuck.
    pub const STALE_AFTER: u64 = 3_000;
    /// Most blocks a replica lists (512 KiB of names).
    pub const MAX_BLOCKS: usize = 65_536;

    /// Whether a reader at `now_ms` should still believe it.
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.at_ms) < Self::STALE_AFTER
    }

    /// The report as stored on Redis.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        decode(bytes, "replica report")
    }
}

impl PrefixBlocks {
    /// A replica publishes its blocks at most this often (ms): under load they change
    /// with every block a sequence fills, and the gateway adds the blocks of the jobs it
    /// starts on its own meanwhile.
    pub const EVERY: u64 = 1_000;

    /// The blocks as stored on Redis.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        decode(bytes, "prefix report")
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("a report always encodes")
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, String> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|error| format!("unreadable {what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_go_stale() {
        let report = ReplicaReport {
            replica: "node-a/chat-3".into(),
            at_ms: 10_000,
            accepting: true,
            free_slots: 4,
            running: 2,
            pending_prefill_tokens: 900,
            prefix_version: Some(7),
        };
        let bytes = report.encode();
        assert!(bytes.len() < 40, "{} bytes", bytes.len());
        assert_eq!(ReplicaReport::decode(&bytes).unwrap(), report);
        let external = ReplicaReport { prefix_version: None, ..report.clone() };
        assert_eq!(ReplicaReport::decode(&external.encode()).unwrap(), external);
        assert!(ReplicaReport::decode(b"\xff\xff").is_err());
        let blocks = PrefixBlocks { version: 7, block_tokens: 16, blocks: (0..4_096u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect() };
        let bytes = blocks.encode();
        assert!(bytes.len() < 40_000, "{} bytes", bytes.len());
        assert_eq!(PrefixBlocks::decode(&bytes).unwrap(), blocks);
        assert!(report.is_fresh(12_999));
        assert!(!report.is_fresh(13_000));
    }
}
