//! How a deployment's queue is split into partitions, each in its own hash slot, so
//! that one busy deployment spreads over the masters of a Redis Cluster.
//!
//! Partition 0 of deployment `D` has the hash tag `{dep:D}` (the one a queue of a
//! single partition always had); partition `k > 0` has `{dep:D#k}` (`#` is not allowed
//! in a deployment name, so no deployment's tag is another's partition). A job belongs
//! to the partition its id hashes to (FNV-1a, fixed, so every node agrees and every
//! call that knows the job id finds it). Every partition is a whole queue of its own
//! (work streams, requeued list, leases, counts, routed jobs, dead letters); what is
//! per deployment (the replicas' reports, the wake-up stream consumers wait on) lives
//! in partition 0.
//!
//! What a partitioned queue gives up, and what it keeps:
//! - Order is kept within a partition (priorities, then FIFO); across partitions a
//!   consumer takes from one partition after another, starting at a rotating one, so a
//!   job may be served before an older (or higher-priority) job of another partition.
//! - Admission: each partition admits up to `max_queue_depth / partitions` waiting jobs
//!   (rounded up), and a refusal's depth is that partition's times the partitions.
//! - Positions are estimates: a job's place in its partition times the partitions.
//! - Every other guarantee (leases on the server clock, fencing, dead letters,
//!   redelivery, idempotent ids, resumable output) holds per partition as before.

/// The partitions of every deployment (one setting for all nodes: a job is looked for
/// in the partition its id hashes to, so all nodes must agree; changing it strands the
/// jobs queued meanwhile in partitions no longer looked at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Partitions {
    count: u32,
}

impl Partitions {
    pub fn new(count: u32) -> Self {
        Self { count: count.max(1) }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_split(&self) -> bool {
        self.count > 1
    }

    /// The partition of a job.
    pub fn of(&self, job_id: &str) -> u32 {
        if self.count == 1 {
            return 0;
        }
        (fnv1a(job_id.as_bytes()) % u64::from(self.count)) as u32
    }

    /// The hash tag (without braces) of partition `partition` of `deployment`.
    pub fn tag(deployment: &str, partition: u32) -> String {
        if partition == 0 {
            format!("dep:{deployment}")
        } else {
            format!("dep:{deployment}#{partition}")
        }
    }

    /// Every partition once, starting at `start` (mod the count).
    pub fn from(&self, start: u32) -> impl Iterator<Item = u32> + '_ {
        (0..self.count).map(move |i| (start + i) % self.count)
    }

    /// The waiting jobs each partition admits out of a deployment's `max_queue_depth`.
    pub fn admits(&self, max_queue_depth: u64) -> u64 {
        max_queue_depth.div_ceil(u64::from(self.count))
    }

    /// A deployment-wide estimate from one partition's count (position or depth).
    pub fn scale(&self, in_partition: u64) -> u64 {
        if in_partition == 0 {
            return 0;
        }
        (in_partition - 1) * u64::from(self.count) + 1
    }
}

/// 64-bit FNV-1a: stable across versions and platforms (the standard library's hasher
/// is not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_partition_is_the_old_layout() {
        let one = Partitions::new(1);
        assert_eq!(one.of("anything"), 0);
        assert_eq!(Partitions::tag("chat", 0), "dep:chat");
        assert_eq!(one.admits(7), 7);
        assert_eq!(one.scale(3), 3);
        assert_eq!(one.from(5).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn jobs_spread_over_the_partitions_the_same_way_everywhere() {
        let four = Partitions::new(4);
        // Fixed values: a change of the hash would strand queued jobs.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut per = [0u32; 4];
        for i in 0..4000 {
            per[four.of(&format!("req-{i}")) as usize] += 1;
        }
        assert!(per.iter().all(|&n| (800..1200).contains(&n)), "{per:?}");
        assert_eq!(Partitions::tag("chat", 3), "dep:chat#3");
        assert_eq!(four.from(2).collect::<Vec<_>>(), [2, 3, 0, 1]);
    }

    #[test]
    fn limits_and_estimates_scale_with_the_partitions() {
        let four = Partitions::new(4);
        assert_eq!(four.admits(10), 3);
        assert_eq!(four.admits(1), 1);
        assert_eq!(four.scale(0), 0);
        assert_eq!(four.scale(1), 1);
        assert_eq!(four.scale(3), 9);
    }
}
