//! The cache-aware choice: the replica where a job would see its first token soonest.
//!
//! A job's expected time to first token on a replica is the prefill work queued ahead of
//! it there plus its own uncached prompt, over the replica's prefill rate:
//!
//! ```text
//! expected TTFT = queued prefill tokens / rate + uncached prompt tokens / rate
//! uncached      = prompt tokens − matched blocks × block tokens (at least 1 token)
//! ```
//!
//! where the matched blocks are the longest run of the job's block hashes, from the
//! first, in the replica's [`PrefixSummary`]. The rate is the same on every replica of a
//! deployment, so the choice compares token counts; ties go to the replica running fewer
//! sequences, then, for a job with a session, to the session's rendezvous replica (so a
//! conversation's first turns land where its later turns will look), then to the lowest
//! id (string order).

use std::cmp::Reverse;
use std::time::Duration;

use crate::prefix_summary::PrefixSummary;
use crate::sessions::rendezvous_weight;

/// What routing needs to know about a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobView<'a> {
    /// The chained hashes of the prompt's full blocks, first block first (empty: the
    /// prompt shares nothing that routing can see).
    pub block_hashes: &'a [u64],
    pub prompt_tokens: u64,
    /// Tokens per block.
    pub block_tokens: u64,
    /// The conversation or agent the job belongs to, if known.
    pub session: Option<u64>,
}

impl JobView<'_> {
    /// Prompt tokens left to prefill when `matched_blocks` of its blocks are cached: at
    /// least 1 (the last prompt token's forward pass yields the first output token).
    pub fn uncached_tokens(&self, matched_blocks: usize) -> u64 {
        let cached = (matched_blocks as u64).saturating_mul(self.block_tokens);
        self.prompt_tokens.saturating_sub(cached).max(1)
    }
}

/// What routing needs to know about one candidate replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaView<'a> {
    pub id: &'a str,
    pub summary: &'a PrefixSummary,
    /// Prompt tokens it has yet to prefill: its admitted sequences' and those of the jobs
    /// promised to it that still wait.
    pub queued_prefill_tokens: u64,
    /// Sequences in its batch.
    pub running_sequences: u64,
    /// Ready and not draining: it may be promised new work.
    pub can_take_work: bool,
}

/// A replica chosen for a job, with what the choice expects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice<'a> {
    pub replica: &'a str,
    /// The job's leading blocks the replica's summary holds.
    pub matched_blocks: usize,
    /// Prompt tokens the job will prefill there.
    pub uncached_tokens: u64,
    /// Queued prefill and the job's own, over the prefill rate (zero for a rate of 0,
    /// which means free prefill).
    pub expected_ttft: Duration,
}

impl<'a> Choice<'a> {
    /// What `job` would cost on `replica`.
    pub fn on(job: &JobView, replica: &ReplicaView<'a>, prefill_tokens_per_second: f64) -> Self {
        let matched_blocks = replica.summary.matched_blocks(job.block_hashes);
        let uncached_tokens = job.uncached_tokens(matched_blocks);
        let work = replica
            .queued_prefill_tokens
            .saturating_add(uncached_tokens);
        let expected_ttft = if prefill_tokens_per_second > 0.0 {
            Duration::try_from_secs_f64(work as f64 / prefill_tokens_per_second)
                .unwrap_or(Duration::MAX)
        } else {
            Duration::ZERO
        };
        Self {
            replica: replica.id,
            matched_blocks,
            uncached_tokens,
            expected_ttft,
        }
    }
}

/// The replica, among those that can take work, with the lowest expected time to first
/// token for `job` (ties: fewer running sequences, the session's rendezvous weight, the
/// lowest id). `None` when no replica can take work.
pub fn choose_cache_aware<'a>(
    job: &JobView,
    replicas: &[ReplicaView<'a>],
    prefill_tokens_per_second: f64,
) -> Option<Choice<'a>> {
    replicas
        .iter()
        .filter(|replica| replica.can_take_work)
        .map(|replica| {
            let choice = Choice::on(job, replica, prefill_tokens_per_second);
            let work = replica
                .queued_prefill_tokens
                .saturating_add(choice.uncached_tokens);
            let session_rank = Reverse(job.session.map_or(0, |s| rendezvous_weight(s, replica.id)));
            (
                (work, replica.running_sequences, session_rank, replica.id),
                choice,
            )
        })
        .min_by(|(key_a, _), (key_b, _)| key_a.cmp(key_b))
        .map(|(_, choice)| choice)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: f64 = 1_000.0;

    fn job(hashes: &[u64], session: Option<u64>) -> JobView<'_> {
        JobView {
            block_hashes: hashes,
            prompt_tokens: hashes.len() as u64 * 16 + 5,
            block_tokens: 16,
            session,
        }
    }

    fn replica<'a>(id: &'a str, summary: &'a PrefixSummary, queued: u64) -> ReplicaView<'a> {
        ReplicaView {
            id,
            summary,
            queued_prefill_tokens: queued,
            running_sequences: 0,
            can_take_work: true,
        }
    }

    #[test]
    fn picks_the_replica_with_the_prefix_unless_its_queue_makes_another_faster() {
        let hashes: Vec<u64> = (100..200).collect(); // 100 blocks, 1,605 tokens
        let warm = PrefixSummary::from_hashes(hashes[..80].iter().copied(), 1_000);
        let cold = PrefixSummary::default();
        let job = job(&hashes, None);
        // Warm replica: 1,605 − 80 × 16 = 325 tokens to prefill.
        let chosen = choose_cache_aware(
            &job,
            &[replica("a", &cold, 0), replica("b", &warm, 0)],
            RATE,
        )
        .unwrap();
        assert_eq!(
            (
                chosen.replica,
                chosen.matched_blocks,
                chosen.uncached_tokens
            ),
            ("b", 80, 325)
        );
        assert_eq!(chosen.expected_ttft, Duration::from_millis(325));
        // 1,000 tokens queued on the warm one: 1,325 still beats 1,605 on the cold one.
        let chosen = choose_cache_aware(
            &job,
            &[replica("a", &cold, 0), replica("b", &warm, 1_000)],
            RATE,
        )
        .unwrap();
        assert_eq!(chosen.replica, "b");
        // 1,300 queued: 1,625 against 1,605, the cold one is faster.
        let chosen = choose_cache_aware(
            &job,
            &[replica("a", &cold, 0), replica("b", &warm, 1_300)],
            RATE,
        )
        .unwrap();
        assert_eq!(
            (
                chosen.replica,
                chosen.matched_blocks,
                chosen.uncached_tokens
            ),
            ("a", 0, 1_605)
        );
        // A replica that cannot take work is never chosen.
        let mut draining = replica("b", &warm, 0);
        draining.can_take_work = false;
        let chosen = choose_cache_aware(&job, &[replica("a", &cold, 0), draining], RATE);
        assert_eq!(chosen.unwrap().replica, "a");
        assert_eq!(choose_cache_aware(&job, &[draining], RATE), None);
    }

    #[test]
    fn ties_go_to_fewer_sequences_then_the_session_then_the_lowest_id() {
        let empty = PrefixSummary::default();
        let hashes = [1, 2, 3];
        let ids = ["r0", "r1", "r2", "r3"];
        let views: Vec<ReplicaView> = ids.iter().map(|id| replica(id, &empty, 0)).collect();
        let no_session = job(&hashes, None);
        assert_eq!(
            choose_cache_aware(&no_session, &views, RATE)
                .unwrap()
                .replica,
            "r0"
        );
        let mut busy = views.clone();
        busy[0].running_sequences = 3;
        assert_eq!(
            choose_cache_aware(&no_session, &busy, RATE)
                .unwrap()
                .replica,
            "r1"
        );
        // With a session: its rendezvous replica, the same for every job of it.
        for session in 0..50 {
            let with_session = job(&hashes, Some(session));
            let chosen = choose_cache_aware(&with_session, &views, RATE)
                .unwrap()
                .replica;
            assert_eq!(Some(chosen), crate::rendezvous(session, ids));
        }
    }

    #[test]
    fn a_fully_cached_prompt_still_prefills_one_token() {
        let hashes = [7, 8];
        let job = JobView {
            block_hashes: &hashes,
            prompt_tokens: 32,
            block_tokens: 16,
            session: None,
        };
        assert_eq!(job.uncached_tokens(2), 1);
        assert_eq!(job.uncached_tokens(1), 16);
        assert_eq!(job.uncached_tokens(0), 32);
        let summary = PrefixSummary::from_hashes(hashes, 10);
        let choice = Choice::on(&job, &replica("a", &summary, 0), 0.0);
        assert_eq!(
            (choice.uncached_tokens, choice.expected_ttft),
            (1, Duration::ZERO)
        );
    }
}
