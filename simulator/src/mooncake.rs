//! The Mooncake trace (`loadtests/traces/mooncake/`): requests with the hashes of their
//! prompt's 512-token blocks, and how those hashes become the simulator's KV blocks.
//!
//! A row is a JSON object: `timestamp` (milliseconds from the trace's start),
//! `input_length`, `output_length` (tokens) and `hash_ids`, one id per 512-token block
//! of the prompt, chained like a prefix cache's keys: two requests that share ids
//! `0..=k` share their first (k+1) × 512 tokens.
//!
//! **Mapping onto blocks of B tokens** (B divides 512; the simulator's default is 16,
//! vLLM's block size and the `llm` engine's): id `k` becomes 512 / B sub-block hashes,
//! `h = combine(combine(parent, k), j)` for `j` in `0..512/B`, where `parent` is the hash
//! of the block before (a fixed seed for the first), so the sub-blocks are chained too
//! and two requests share exactly the sub-blocks of their shared ids. A request's hashes
//! cover its `input_length / B` full blocks (the partial block at the end of the prompt
//! is never cached), and never more than its ids cover.
//!
//! **Session key**: the request's first hash id. Requests that share their first 512
//! tokens are taken as one conversation or agent (the trace has no session field);
//! session-affine routing keeps them on one replica.

use std::io::BufRead;
use std::path::Path;

use anyhow::{ensure, Context as _};
use serde::Deserialize;
use swell_router::hashing::combine;

/// Tokens per Mooncake hash id.
pub const MOONCAKE_BLOCK_TOKENS: u32 = 512;

/// The parent hash of a prompt's first block.
const CHAIN_SEED: u64 = 0x4D6F_6F6E_6361_6B65; // "Mooncake"

/// One row of a Mooncake trace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MooncakeRow {
    /// Milliseconds from the trace's start.
    pub timestamp: u64,
    pub input_length: u32,
    pub output_length: u32,
    pub hash_ids: Vec<u64>,
}

/// Reads Mooncake JSON lines (blank lines skipped); rows come back sorted by timestamp.
pub fn read_mooncake(reader: impl BufRead) -> anyhow::Result<Vec<MooncakeRow>> {
    let mut rows = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read line {}", index + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: MooncakeRow = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not a Mooncake request", index + 1))?;
        rows.push(row);
    }
    rows.sort_by_key(|row| row.timestamp);
    Ok(rows)
}

/// Reads a Mooncake trace file (see [`read_mooncake`]).
pub fn load_mooncake(path: &Path) -> anyhow::Result<Vec<MooncakeRow>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open trace {}", path.display()))?;
    let rows = read_mooncake(std::io::BufReader::new(file))
        .with_context(|| format!("cannot read trace {}", path.display()))?;
    ensure!(!rows.is_empty(), "trace {} has no rows", path.display());
    Ok(rows)
}

/// The chained hashes of the full `block_tokens`-token blocks of a prompt of
/// `input_length` tokens whose 512-token blocks have the ids `hash_ids`.
pub fn block_hashes(
    hash_ids: &[u64],
    input_length: u32,
    block_tokens: u32,
) -> anyhow::Result<Vec<u64>> {
    ensure!(
        block_tokens > 0 && MOONCAKE_BLOCK_TOKENS.is_multiple_of(block_tokens),
        "the block size ({block_tokens} tokens) must divide {MOONCAKE_BLOCK_TOKENS}"
    );
    let per_id = (MOONCAKE_BLOCK_TOKENS / block_tokens) as usize;
    let blocks = ((input_length / block_tokens) as usize).min(hash_ids.len() * per_id);
    let mut hashes = Vec::with_capacity(blocks);
    let mut parent = CHAIN_SEED;
    'ids: for &id in hash_ids {
        for sub_block in 0..per_id as u64 {
            if hashes.len() == blocks {
                break 'ids;
            }
            parent = combine(combine(parent, id), sub_block);
            hashes.push(parent);
        }
    }
    Ok(hashes)
}

/// The session a request belongs to: its first hash id (see the module docs).
pub fn session_key(hash_ids: &[u64]) -> Option<u64> {
    hash_ids.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::traces_dir;

    #[test]
    fn requests_sharing_ids_share_exactly_their_sub_blocks() {
        for block_tokens in [16, 32, 512] {
            let per_id = (512 / block_tokens) as usize;
            // Sharing ids 0..=1 (k = 1), then different.
            let a = block_hashes(&[0, 1, 2, 3], 2_048, block_tokens).unwrap();
            let b = block_hashes(&[0, 1, 5, 6], 2_048, block_tokens).unwrap();
            assert_eq!(a.len(), 4 * per_id);
            let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            assert_eq!(shared, 2 * per_id, "B = {block_tokens}");
            assert!(
                a[shared..].iter().all(|h| !b.contains(h)),
                "nothing after the shared prefix is shared"
            );
            // The same id after a different prefix is a different block (chained).
            let c = block_hashes(&[9, 1], 1_024, block_tokens).unwrap();
            assert!(c.iter().all(|h| !a.contains(h)));
        }
    }

    #[test]
    fn a_request_covers_its_full_blocks_only() {
        // 40,160 tokens, 79 ids: 2,510 full blocks of 16 (the partial 79th id is cut).
        let ids: Vec<u64> = (0..79).collect();
        assert_eq!(block_hashes(&ids, 40_160, 16).unwrap().len(), 2_510);
        assert_eq!(block_hashes(&ids, 40_160, 512).unwrap().len(), 78);
        // Never more than the ids cover; 15 tokens make no full block.
        assert_eq!(block_hashes(&[7], 5_000, 16).unwrap().len(), 32);
        assert!(block_hashes(&[7], 15, 16).unwrap().is_empty());
        assert!(
            block_hashes(&[7], 512, 48).is_err(),
            "48 does not divide 512"
        );
        assert!(block_hashes(&[7], 512, 0).is_err());
        assert_eq!(session_key(&[42, 1]), Some(42));
        assert_eq!(session_key(&[]), None);
    }

    #[test]
    fn reads_inline_rows_sorted_and_the_real_trace() {
        let text = "{\"timestamp\": 40, \"input_length\": 600, \"output_length\": 3, \"hash_ids\": [2, 3]}\n\
                    \n\
                    {\"timestamp\": 0, \"input_length\": 100, \"output_length\": 6, \"hash_ids\": [0]}\n";
        let rows = read_mooncake(text.as_bytes()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].timestamp, rows[0].hash_ids.clone()), (0, vec![0]));
        assert!(read_mooncake("{\"timestamp\": 1}\n".as_bytes()).is_err());
        let real = load_mooncake(&traces_dir().join("mooncake/synthetic_trace.jsonl"))
            .expect("the Mooncake trace is in loadtests/traces");
        assert_eq!(real.len(), 3_993);
        assert_eq!(
            (
                real[0].input_length,
                real[0].output_length,
                real[0].hash_ids.len()
            ),
            (40_160, 6, 79)
        );
    }
}
