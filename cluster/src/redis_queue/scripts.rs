//! The Lua scripts behind [`RedisQueue`](super::RedisQueue), one per atomic step.
//!
//! Two families: *deployment* scripts touch the keys of one partition of a deployment's
//! queue (the work streams, the consumer group, the lease index), *job* scripts the
//! keys of one job (its state and output stream). A job's keys carry its queue
//! partition's hash tag (`{dep:<name>}` or `{dep:<name>#k}`), so the two families can be
//! combined: enqueueing is one script (the job's state and its entry), and so is an
//! append that ends the job (the terminal event and the ack). Every script is atomic
//! within one Redis Cluster slot. The module docs of [`redis_queue`](super) describe
//! how the steps are sequenced.
//!
//! Every script that needs "now" for a lease asks the server (`TIME`), so lease expiry
//! does not depend on the clocks of the machines running Swell.

use redis::Script;

/// Deployment scripts: `KEYS[1]` the `normal` work stream, `KEYS[2]` requeued list,
/// `KEYS[3]` lease index (zset by expiry), `KEYS[4]` wake-up stream, `KEYS[5]`
/// dead-letter stream, `KEYS[6]` the `high` work stream, `KEYS[7]` the `low` work stream,
/// `KEYS[8]` when each consumer was last seen, `KEYS[9]` the base name of the parked
/// jobs' keys, `KEYS[10..12]` the freed jobs of `high`, `normal`, `low`, `KEYS[13]` the
/// waiting count of each priority outside the requeued list;
/// `ARGV[1]` the prefix of the per-job lease hashes (same hash tag), `ARGV[2]` the
/// consumer group (the same name on each work stream).
///
/// A job's lease hash records its priority (`level`; absent means `normal`), so every
/// script finds the job's entry in its own stream.
macro_rules! deployment_prelude {
    () => {
        include_str!("lua/deployment_prelude.lua")
    };
}

/// Job scripts: `KEYS[1]` job state hash, `KEYS[2]` output stream. Each reads the
/// state with one `HMGET` (`load`; a missing `i` is a missing job) rather than `EXISTS`
/// then fields. The state is created by [`ENQUEUE`].
macro_rules! job_prelude {
    () => {
        include_str!("lua/job_prelude.lua")
    };
}

/// Enqueue. `ARGV[3]` job id, `[4]` payload, `[5]` enqueued at (ms), `[6]` deadline (ms
/// or empty), `[7]` max waiting, `[8]` priority (`high` | `normal` | `low`), which picks
/// the work stream, `[9]` the consumer it is promised to (empty: none) and `[10]` for how
/// many ms (its end is set by the server's clock). Answers `{'ok', position, woke}` (`woke`: 1 if it woke a waiting consumer; position in service order: requeued jobs, then
/// the waiting jobs of this priority or higher), `{'full', waiting}` or `{'duplicate'}`.
/// With `KEYS[14]` the job's state, `ARGV[11]` what never changes of it (deployment,
/// tenant, stream metadata: a line each) and `ARGV[12]` its expiry (`job_max_age`, ms):
/// the state is created first (an existing one: `{'duplicate'}`), and deleted again if
/// the deployment refuses the job.
const ENQUEUE: &str = concat!(
    deployment_prelude!(),
    "local function enqueue()\n",
    include_str!("lua/deployment_enqueue.lua"),
    "\nend\n",
    include_str!("lua/enqueue.lua")
);

/// Lease up to `ARGV[4]` jobs for consumer `ARGV[3]` with a TTL of `ARGV[5]` ms: handed
/// back jobs first (newest hand-back first), then per priority (`high`, `normal`, `low`):
/// the jobs parked for this consumer, the freed ones, then new entries, in order; a new
/// entry promised to another consumer that is alive (seen within `ARGV[7]` ms) is parked
/// for it instead. Promises past their end, or to consumers gone quiet or no longer
/// taking work, are freed first. With `ARGV[9]` = 1, or when it takes nothing, the
/// consumer counts as seen until `ARGV[8]` ms from now (how long it will wait for
/// work). Jobs past their deadline (`ARGV[6]`, the
/// client's Unix ms) are acked and reported as dropped. Answers `{taken, dropped,
/// wake_id, next_end}` where taken items are `{job, payload, epoch, deliveries}`,
/// dropped items `{job, epoch}`, `wake_id` is the last id of the wake-up stream (to
/// block on, with no lost wake-up; empty when something was taken) and `next_end` the ms
/// until the next promise ends (nil: none).
const DEPLOYMENT_TAKE: &str = concat!(deployment_prelude!(), include_str!("lua/deployment_take.lua"));

/// Renew leases by `ARGV[3]` ms; `ARGV[4..]` are `job, consumer, epoch` triples.
/// Answers one 1 (held) or 0 per triple.
const DEPLOYMENT_RENEW: &str = concat!(deployment_prelude!(), include_str!("lua/deployment_renew.lua"));

/// Acknowledge job `ARGV[3]` under lease (`ARGV[4]` consumer, `ARGV[5]` epoch): XACK +
/// XDEL of its entry. Answers 1, or 0 when fenced. (An append that stores the terminal
/// event acknowledges already: see [`APPEND`].)
const DEPLOYMENT_ACK: &str = concat!(deployment_prelude!(), include_str!("lua/deployment_ack.lua"));

/// Hand job `ARGV[3]` back (lease `ARGV[4]` consumer, `ARGV[5]` epoch) to the head of the
/// queue with a bumped epoch; the hand-back does not count as a delivery. Its entry stays
/// in the consumer group's pending list (it is not acknowledged). Answers the new epoch,
/// or 0 when fenced.
const DEPLOYMENT_RELEASE: &str = concat!(deployment_prelude!(), include_str!("lua/deployment_release.lua"));

/// Redeliver jobs whose lease expired by the server's clock, bumping their epoch; a job
/// already delivered `ARGV[3]` times is moved to the dead-letter stream (capped near
/// `ARGV[4]` entries) and acknowledged instead. Answers `{requeued, dead}`: items
/// `{job, epoch}` and `{job, epoch, deliveries}`.
const DEPLOYMENT_RECLAIM: &str = concat!(deployment_prelude!(), include_str!("lua/deployment_reclaim.lua"));

/// Remove job `ARGV[3]` from the queue if it is still waiting (cancel). Answers 1 if it
/// was removed.
const DEPLOYMENT_REMOVE_WAITING: &str = concat!(deployment_prelude!(), include_str!("lua/deployment_remove_waiting.lua"));

/// Forget job `ARGV[3]` whatever its state (it ended on the job side: cancelled, or its
/// state expired). Answers 1 if there was anything to forget.
const DEPLOYMENT_FORGET: &str = concat!(deployment_prelude!(), include_str!("lua/deployment_forget.lua"));

/// Answers `{waiting, leased, oldest waiting enqueue time or ''}`; the oldest is the
/// earliest of the requeued list's head and each stream's first undelivered entry.
const DEPLOYMENT_DEPTH: &str = concat!(deployment_prelude!(), include_str!("lua/deployment_depth.lua"));

/// 1-based position of job `ARGV[3]` in service order (requeued jobs, the undelivered
/// entries of higher priorities, then those up to it in its own stream), 0 if it is not
/// waiting, -1 if the deployment has no record of it (no lease hash).
const DEPLOYMENT_POSITION: &str = concat!(deployment_prelude!(), include_str!("lua/deployment_position.lua"));

/// A consumer starts a delivery (`ARGV[1]` epoch, `ARGV[2]` consumer, `ARGV[3]` the
/// cancelled event, `ARGV[4]` output ttl ms). Answers `{'ok', output entries (only if
/// there is output), last_seq}`, or
/// `{'done'}` (the job ended meanwhile: cancelled), `{'gone'}` (no state) or `{'stale'}`.
const JOB_START: &str = concat!(job_prelude!(), include_str!("lua/job_start.lua"));

/// Append events under a lease: `ARGV[1]` epoch, `[2]` consumer, `[3]` the cancelled
/// event, `[4]` output ttl ms, `[5]` the last sequence number the writer knows stored,
/// `[6]` the `output_lost` event, then `json, terminal (0/1)` pairs, stored in one
/// entry. A first delivery's first append records its consumer. A
/// terminal event marks the job `done` and starts its keys' expiry. Answers `{'ok',
/// last_seq}`, `{'cancelled', deployment}`, `{'fenced'}`, `{'unknown'}`, or `{'lost',
/// deployment}` when output the writer had stored is gone (a failover lost it; the job
/// was ended with `[6]`).
///
/// Run as [`APPEND`], with the deployment's keys: `KEYS[14]`, `KEYS[15]` the job's,
/// `ARGV[3]` the job, `ARGV[4]` 1 when the events end the job, `ARGV[5..]` the above. A
/// terminal event stored also acknowledges the job (a third answer element, 1), and a
/// cancelled or lost job is forgotten on the deployment side.
const APPEND: &str = concat!(
    deployment_prelude!(),
    "local function job_append(KEYS, ARGV)\n",
    job_prelude!(),
    include_str!("lua/job_append.lua"),
    "\nend\n",
    include_str!("lua/append.lua")
);

/// The deployment side requeued the job with epoch `ARGV[1]`: fence the older epoch.
/// A no-op if a delivery with that epoch already started.
const JOB_REQUEUE: &str = concat!(job_prelude!(), include_str!("lua/job_requeue.lua"));

/// End a job with a terminal event written by the queue (`ARGV[1]` epoch, `[2]` event,
/// `[3]` output ttl ms). Answers 0 if it had already ended.
const JOB_FAIL: &str = concat!(job_prelude!(), include_str!("lua/job_fail.lua"));

/// The job was acknowledged: mark it done and start its output's expiry (`ARGV[1]` ms),
/// unless its terminal event did already.
const JOB_DONE: &str = concat!(job_prelude!(), include_str!("lua/job_done.lua"));

/// Cancel (`ARGV[1]` the cancelled event, `ARGV[2]` output ttl ms). Answers
/// `{'waiting', deployment}` (ended here; remove it from the queue), `{'leased'}` (flagged
/// for its writer) or `{'none'}` (unknown or already ended).
const JOB_CANCEL: &str = concat!(job_prelude!(), include_str!("lua/job_cancel.lua"));

/// A reader takes the job's output over (a resumed stream): answers the new `readers`
/// count, or -1 when the job's state is gone (expired) or has no owner.
const JOB_ATTACH_READER: &str = include_str!("lua/job_attach_reader.lua");

/// The scripts, hashed once.
pub(super) struct Scripts {
    pub enqueue: Script,
    pub deployment_take: Script,
    pub deployment_renew: Script,
    pub deployment_ack: Script,
    pub deployment_release: Script,
    pub deployment_reclaim: Script,
    pub deployment_remove_waiting: Script,
    pub deployment_forget: Script,
    pub deployment_depth: Script,
    pub deployment_position: Script,
    pub job_start: Script,
    pub append: Script,
    pub job_requeue: Script,
    pub job_fail: Script,
    pub job_done: Script,
    pub job_cancel: Script,
    pub job_attach_reader: Script,
}

/// `append`, or its `skip-epoch-check` mutant ([`crate::mutant`]).
fn append() -> String {
    #[cfg(feature = "chaos-mutant")]
    return crate::mutant::script("skip-epoch-check", APPEND, "then return {'fenced'} end", "then end");
    #[cfg(not(feature = "chaos-mutant"))]
    APPEND.to_string()
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            enqueue: Script::new(ENQUEUE),
            deployment_take: Script::new(DEPLOYMENT_TAKE),
            deployment_renew: Script::new(DEPLOYMENT_RENEW),
            deployment_ack: Script::new(DEPLOYMENT_ACK),
            deployment_release: Script::new(DEPLOYMENT_RELEASE),
            deployment_reclaim: Script::new(DEPLOYMENT_RECLAIM),
            deployment_remove_waiting: Script::new(DEPLOYMENT_REMOVE_WAITING),
            deployment_forget: Script::new(DEPLOYMENT_FORGET),
            deployment_depth: Script::new(DEPLOYMENT_DEPTH),
            deployment_position: Script::new(DEPLOYMENT_POSITION),
            job_start: Script::new(JOB_START),
            append: Script::new(&append()),
            job_requeue: Script::new(JOB_REQUEUE),
            job_fail: Script::new(JOB_FAIL),
            job_done: Script::new(JOB_DONE),
            job_cancel: Script::new(JOB_CANCEL),
            job_attach_reader: Script::new(JOB_ATTACH_READER),
        }
    }
}
