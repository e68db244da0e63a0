//! `RedisQueue`: the [`Queue`] on Redis Streams, for Swell on several machines.
//!
//! Every deployment has one *work stream* consumed by one consumer group; every job has
//! its own *output stream*. Each step is one Lua script, atomic on the server, and no
//! script touches keys of two hash slots, so the layout works on Redis Cluster. A job's
//! keys are in its queue partition's slot, so enqueueing a job and acknowledging it with
//! its terminal event are one script each.
//!
//! # Key layout
//! `P` is [`RedisQueueConfig::key_prefix`] (default `swell`); `{...}` is the hash tag.
//!
//! Deployment `D`, all in the slot of `{dep:D}` (with [`RedisQueueConfig::queue_partitions`]
//! above 1, each partition `k > 0` has the same keys under `{dep:D#k}`, and a job's are
//! in the partition its id hashes to; the replicas' reports and the wake-up stream the
//! consumers wait on are partition 0's; see `redis_queue/partitions.rs`):
//! - `P:{dep:D}:jobs:high`, `P:{dep:D}:jobs` (`normal`) and `P:{dep:D}:jobs:low`: the
//!   work streams, one per [`Priority`](crate::Priority), one entry per job (`id`, `job`
//!   = the [`Job`] as JSON, `t` = enqueue time, `dl` = deadline), each with the consumer
//!   group `workers`. A job goes to its priority's stream; `lease` reads `high`, then
//!   `normal`, then `low`. An entry is deleted (`XACK` + `XDEL`, in the same script) only
//!   once its job is acknowledged, dead-lettered, cancelled or dropped past its
//!   deadline; never trimmed by length. (The `normal` stream keeps the name of the single
//!   stream older versions used, so their queued jobs are served as `normal`.)
//! - `P:{dep:D}:job:<id>`: the lease hash of a job: `entry` (stream id), `level` (its
//!   priority, so every script finds the entry's stream), `epoch`, `deliveries`, `state`
//!   (`waiting` | `leased`), `consumer`, `expires` (server ms). This is the authority on
//!   who holds a job.
//! - `P:{dep:D}:leases`: zset of leased job ids by lease expiry (server clock).
//! - `P:{dep:D}:requeued`: list of handed-back or reclaimed job ids, head first. Their
//!   entries stay in the group's pending list (unacknowledged) until leased again
//!   (`XCLAIM`).
//! - `P:{dep:D}:wake`: a tiny stream (capped at 16 entries; it carries no work) that
//!   release and reclaim append to, and enqueue too when a consumer that found nothing
//!   may be waiting (`asleep` in the counts hash); a blocked `lease` waits on it.
//! - Routed jobs ([`crate::routing`]): `P:{dep:D}:seen`, hash of consumer → when it was
//!   last seen (server ms, or the end of the wait it is in; `0` once it said it stops
//!   taking work). A new entry promised to another consumer that is alive is *parked*
//!   by the take that reads it: pushed to `P:{dep:D}:parked:<consumer>:<level>` and
//!   added to the zset `P:{dep:D}:parked:<level>` by promise end (its entry stays
//!   pending in the group, like a requeued one, with `parked` = consumer in its lease
//!   hash). Its consumer takes it before new entries of that priority; any take first
//!   moves parked jobs whose promise ended, or whose consumer went quiet for
//!   [`RedisQueueConfig::route_liveness`] or stopped taking work, to the free list
//!   `P:{dep:D}:free:<level>` (`free` for `normal`), which every consumer takes before
//!   new entries of that priority. Parked and freed jobs count as waiting. A blocked
//!   `lease` wakes when the next promise ends.
//! - `P:{dep:D}:replicas` and `P:{dep:D}:prefixes`: hashes of the replicas'
//!   [`ReplicaReport`]s and [`PrefixBlocks`] (bincode), by consumer id, for cache-aware
//!   routing; they expire 30 s after the last report.
//! - `P:{dep:D}:count`: hash `high`, `normal`, `low`: the waiting jobs of each priority
//!   outside the requeued list (undelivered, parked and freed), kept by every script
//!   that moves a job, so admission, the enqueue position and `lease` read three numbers
//!   instead of walking the streams (`v` = 1: kept; without it the scripts count once by
//!   walking). `depth` walks the streams and sets them to what it found. Also `asleep`
//!   = 1 while a consumer that took nothing may be waiting on the wake-up stream (set by
//!   that take, cleared by the enqueue that wakes it).
//! - `P:{dep:D}:dead`: the dead-letter stream (`id`, `job`, `deliveries`, `epoch`),
//!   capped near [`RedisQueueConfig::dead_letter_max_len`].
//!
//! Job `J`, in the slot of its queue partition (`T` = `dep:D`, or `dep:D#k`):
//! - `P:{T}:state:J`: hash `i` (what never changes: the deployment, the tenant and the
//!   gateway's stream metadata, a line each; written by the enqueue, which an existing
//!   `i` refuses as a duplicate), then what its deliveries write: `epoch` (absent: 1),
//!   `status` (absent: `waiting`; `leased` | `done`, `done` once its terminal event is
//!   stored), `consumer`, `cancelled`, `last_seq`, `finished`. The authority on what
//!   may be written to the output stream (the fence). Also `readers` (readers that took
//!   the output over, for a client that resumes the stream).
//! - `P:{T}:out:J`: the output stream, one entry per append: id `0-<seq>` (the
//!   sequence number of its last event), fields `e` (epoch) and `v` (the
//!   [`OutputEvent`] as JSON, or the JSON array of an append's several events, numbered
//!   back from the last). `read_output` is `XRANGE`/`XREAD BLOCK` from `0-<after_seq>`
//!   (dropping the events of the first entry up to `after_seq`): no miss, no repeat. A blocking read is one `XREAD BLOCK` (answered
//!   at once when entries follow); only an empty answer checks that the job exists, so a
//!   blocking read of an unknown (or expired) job answers `UnknownJob` when its block
//!   ends, not at once. Its token events are the tokens delivered over every attempt,
//!   which the next attempt resumes after.
//! - `P:{job:J}:at` (the slot of `{job:J}`): the job's `T`, so that a call that knows
//!   only the job's id (`read_output`, `cancel`, `output_owner`, `attach_reader`) finds
//!   its keys; written beside the enqueue (`SET … NX GET`: an id of another deployment
//!   is refused as a duplicate), kept until the job's deadline and `output_ttl` after it
//!   (at most `job_max_age`). A queue remembers where the jobs it enqueued or looked up
//!   are, so the gateway that enqueued a job never reads it; a stream resumed on another
//!   gateway reads it once.
//!
//! The per-job lease hashes are found by the scripts from `ARGV[1]` (the prefix
//! `P:{dep:D}:job:`) rather than declared in `KEYS`, since `lease` and
//! `reclaim_expired` discover their jobs inside the script; they carry the deployment's
//! hash tag, so they live in the same slot as the declared keys (Redis Cluster serves
//! such scripts; it refuses only keys of another slot).
//!
//! The job keys expire [`RedisQueueConfig::output_ttl`] after the terminal event (or the
//! ack), and at the latest [`RedisQueueConfig::job_max_age`] after the enqueue:
//! the state gets its expiry when it is created, the output stream the state's
//! remaining one when it is created (not at every write).
//!
//! # Scripts and how they are sequenced
//! See [`scripts`] for each script. The deployment scripts and the job scripts are
//! separate steps (combined into one script where a request's path needs both); a call
//! that runs two runs the deployment script first, then the job script(s), each of
//! which is idempotent and checks epochs, so a client dying between the two leaves
//! nothing that the next step does not repair:
//! - `enqueue`: one script: the state's `HSETNX` of `i` (refuses a duplicate id) and
//!   its expiry, then `deployment_enqueue` (refuses past `max_queue_depth`, counting
//!   waiting = the kept counts + requeued; a refused job's state is deleted again);
//!   beside it, the pointer key.
//! - `lease`: `deployment_take` (requeued first, then `XREADGROUP >` on the `high`,
//!   `normal` and `low` streams in turn; counts the delivery, sets the lease with the
//!   server's clock, drops jobs past their deadline),
//!   then, for every taken job that was delivered or handed back before (epoch above 1),
//!   `job_start`, all at once (raises the job's epoch to the lease's, records its
//!   consumer, answers the output so far, whose tokens were delivered). A job found ended
//!   there (cancelled while it was being taken) is forgotten on the deployment side. A
//!   client that dies between the two leaves a lease nobody renews: it expires and is
//!   reclaimed. A first delivery (epoch 1, which only the take of a new entry hands out)
//!   needs no `job_start`: its first append records its consumer.
//! - `reclaim_expired`: `deployment_reclaim` takes only leases whose *expiry* passed (an
//!   idle entry whose lease is renewed is never taken), bumps the epoch and requeues it,
//!   or dead-letters + acks it at `max_deliveries`; then `job_requeue` (raises the fence
//!   to the new epoch) or `job_fail` (`delivery_limit`).
//! - `release`: `deployment_release` (bumps the epoch, uncounts the delivery, pushes to
//!   the head), then `job_requeue`.
//! - `ack`: nothing when the lease's terminal append acknowledged the job (the usual
//!   case); else `deployment_ack` (fenced; `XACK` + `XDEL`), then `job_done` (marks it
//!   done and starts expiry).
//! - `renew`: `deployment_renew` per deployment (fenced on consumer and epoch).
//! - `append_output`: `append`, one script: `job_append`, fenced on the job's epoch and
//!   consumer, one `XADD` for all its events, one `HSET`; when it stores the terminal
//!   event, the ack (`deployment_ack`'s, fenced on the lease hash) in the same script;
//!   a cancelled job (answered `Cancelled`) is forgotten on the deployment side there
//!   too.
//! - `cancel`: `job_cancel`; a waiting job gets its terminal `cancelled` event there and
//!   is then removed by `deployment_remove_waiting`; a leased one is only flagged.
//!
//! Between `deployment_reclaim` and `job_requeue`, a writer whose lease just expired
//! can still append under its old epoch. That is harmless: `job_start` of the next
//! attempt reads the output atomically with raising the epoch, so whatever the old
//! writer stored is part of the new attempt's `resume_tokens`, and anything it tries
//! after that is `Fenced`.
//!
//! # What a redelivered job's client sees
//! One output stream for all attempts. Its events keep their sequence numbers; the
//! new attempt's events carry the new epoch and continue after the last sequence number
//! (`Lease::resume_after_seq`), and the new replica continues generation after the
//! tokens already delivered (`Lease::resume_tokens`), so a reader neither misses nor
//! repeats a token. It may see a second `Started` event.
//!
//! # Connections
//! Redis is one server (`redis://`) or a Redis Cluster (`redis-cluster://` seed nodes;
//! see [`crate::redis_conn`]). Non-blocking calls share one multiplexed connection,
//! which reconnects by itself (on a cluster it routes each script to its slot's master
//! and follows failovers). Blocking reads (`lease` and `read_output` with a `block`) use
//! dedicated connections from a small pool, never the shared one. Every call is bounded
//! by `connect_timeout + response_timeout` (a blocking one by its block on top): while
//! Redis is unreachable calls fail fast with [`QueueError::Unavailable`] and work resumes
//! when it is back. Scripts are sent by hash and reloaded after a Redis restart.
//!
//! # Durability
//! What survives a Redis crash is what Redis persisted. With `appendonly yes` and
//! `appendfsync everysec` (Redis's default), a crash (of the machine, or a `kill -9`
//! with the OS losing the page cache) may lose about the last second of writes that
//! were already acknowledged to Swell: a job enqueued just before may vanish, an ack
//! may be undone (the job is then delivered again, with a new epoch). With
//! `appendfsync always` nothing acknowledged is lost, at the cost of an fsync per
//! write. Without AOF (RDB snapshots only) everything since the last snapshot is lost.
//!
//! # Limits
//! `position` counts the undelivered entries ahead of a job in its stream (`XRANGE`),
//! linear in the queue's depth, which admission bounds, plus the undelivered counts of
//! the higher priorities' streams (`XLEN` − `XPENDING`, constant time). A gateway that dies between the two steps of
//! a queue-side failure (deadline, dead letter) leaves the job's stream without a
//! terminal event; its reader times out and the keys expire with `job_max_age`.

mod config;
mod jobs;
mod lease;
mod partitions;
mod replies;
pub mod scripts;
#[doc(hidden)]
pub mod testing;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::{FromRedisValue, ScriptInvocation, Value};
use tokio::time::Instant;

pub use self::config::RedisQueueConfig;
use self::replies::{array, bounded, fixed, malformed, number, parse_entries, string, unavailable, timed_out};
use self::partitions::Partitions;
use self::scripts::Scripts;
use crate::job::{AdmissionLimits, Enqueued, Job, Lease, LeaseRef, OutputOwner, QueueDepth};
use swell_protocol::{OutputEvent, SequencedEvent};
use crate::queue::{AppendOutcome, Queue, QueueError};
use crate::replica_report::{PrefixBlocks, ReplicaReport};
use crate::redis_conn::{BlockingConnection, RedisClient, SharedConnection};

/// The consumer group every replica of a deployment reads the work stream with.
const GROUP: &str = "workers";

/// The queue on Redis. Cheap to share: wrap it in an `Arc`.
pub struct RedisQueue {
    config: RedisQueueConfig,
    client: RedisClient,
    shared: SharedConnection,
    /// Idle dedicated connections for blocking commands.
    blocking: Mutex<Vec<BlockingConnection>>,
    scripts: Scripts,
    cancelled_event: String,
    /// The terminal event of a job whose stored output a failover lost.
    output_lost_event: String,
    /// When a short `WAIT` was last logged.
    wait_warned: Mutex<Option<Instant>>,
    /// Leases whose terminal append acknowledged the job already, so their `ack` needs
    /// no call. Only a saving: a lease missing here is acknowledged by `deployment_ack`
    /// (which answers that it no longer holds it) and `job_done` (a no-op for a job
    /// already done).
    acked_by_append: Mutex<HashSet<(String, u32)>>,
    /// Where the keys of jobs this queue enqueued or looked up are (their hash tag),
    /// so that calls that know only a job's id need not read its pointer key.
    located: Mutex<HashMap<String, String>>,
    /// When each (deployment, partition, consumer) was last marked alive by a take of
    /// this queue.
    seen_marked: Mutex<HashMap<(String, u32, String), Instant>>,
    partitions: Partitions,
    /// Where the next look at the partitions starts (rotates).
    take_turn: std::sync::atomic::AtomicU64,
}

/// At most this many leases are remembered in `acked_by_append` (one per job between
/// its terminal append and its ack; a lease lost before its ack stays until the next
/// clear).
const MAX_ACKED_BY_APPEND: usize = 4096;

/// At most this many jobs' places are remembered in `located` (a job's is forgotten once
/// a read returned its end; past this many it starts over, and a job forgotten is found
/// by its pointer key).
const MAX_LOCATED: usize = 65_536;

/// The keys of one deployment, in the order the deployment scripts take them.
struct DeploymentKeys {
    keys: [String; 13],
    lease_prefix: String,
}

impl RedisQueue {
    /// Connect (failing `Unavailable` if Redis does not answer within the timeouts).
    pub async fn connect(config: RedisQueueConfig) -> Result<Self, QueueError> {
        config.validate().map_err(|message| QueueError::Unavailable(format!("config: {message}")))?;
        let (client, shared) =
            crate::redis_conn::connect_shared(&config.url, config.connect_timeout, config.response_timeout)
                .await
                .map_err(QueueError::Unavailable)?;
        let cancelled_event = serde_json::to_string(&OutputEvent::Failed {
            code: "cancelled".into(),
            message: "the request was cancelled".into(),
        })
        .expect("an event serializes");
        let output_lost_event = serde_json::to_string(&OutputEvent::Failed {
            code: "output_lost".into(),
            message: "Redis lost part of this request's output in a failover; it cannot be continued".into(),
        })
        .expect("an event serializes");
        Ok(Self {
            config: config.clone(),
            client,
            shared,
            blocking: Mutex::new(Vec::new()),
            scripts: Scripts::new(),
            cancelled_event,
            output_lost_event,
            wait_warned: Mutex::new(None),
            acked_by_append: Mutex::new(HashSet::new()),
            located: Mutex::new(HashMap::new()),
            seen_marked: Mutex::new(HashMap::new()),
            partitions: Partitions::new(config.queue_partitions),
            take_turn: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &RedisQueueConfig {
        &self.config
    }

    /// The partition of the deployment's queue a job is in ([`RedisQueueConfig::queue_partitions`]).
    pub fn partition_of(&self, job_id: &str) -> u32 {
        self.partitions.of(job_id)
    }

    /// `PING` on the shared connection, within the call timeout: whether Redis answers
    /// now (health checks).
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.query::<String>(&redis::cmd("PING")).await.map(|_| ())
    }

    /// The keys of partition `partition` of `deployment` (see [`partitions`]).
    fn deployment_keys(&self, deployment: &str, partition: u32) -> DeploymentKeys {
        let base = format!("{}:{{{}}}", self.config.key_prefix, Partitions::tag(deployment, partition));
        DeploymentKeys {
            keys: [
                "jobs", "requeued", "leases", "wake", "dead", "jobs:high", "jobs:low", "seen", "parked", "free:high",
                "free", "free:low", "count",
            ]
            .map(|name| format!("{base}:{name}")),
            lease_prefix: format!("{base}:job:"),
        }
    }

    /// `P:{dep:D}:replicas`: the replicas' [`ReplicaReport`]s, by replica.
    fn replicas_key(&self, deployment: &str) -> String {
        format!("{}:{{dep:{deployment}}}:replicas", self.config.key_prefix)
    }

    /// `P:{dep:D}:prefixes`: the replicas' [`PrefixBlocks`], by replica.
    fn prefixes_key(&self, deployment: &str) -> String {
        format!("{}:{{dep:{deployment}}}:prefixes", self.config.key_prefix)
    }

    /// `P:{dep:D}:seen` of each partition: when each consumer was last seen (the take
    /// script's `KEYS[8]`).
    fn seen_keys(&self, deployment: &str) -> Vec<String> {
        (0..self.partitions.count()).map(|partition| self.deployment_keys(deployment, partition).keys[7].clone()).collect()
    }

    /// The longest a non-blocking call may take, reconnection included.
    fn call_timeout(&self) -> Duration {
        self.config.connect_timeout + self.config.response_timeout
    }

    fn output_ttl_ms(&self) -> u64 {
        self.config.output_ttl.as_millis().max(1) as u64
    }

    fn deployment_call<'a>(&self, script: &'a redis::Script, deployment: &str, partition: u32) -> ScriptInvocation<'a> {
        let keys = self.deployment_keys(deployment, partition);
        let mut invocation = script.prepare_invoke();
        for key in &keys.keys {
            invocation.key(key);
        }
        invocation.arg(&keys.lease_prefix).arg(GROUP);
        invocation
    }

    /// A deployment script on the partition of `job_id`.
    fn job_partition_call<'a>(&self, script: &'a redis::Script, deployment: &str, job_id: &str) -> ScriptInvocation<'a> {
        self.deployment_call(script, deployment, self.partitions.of(job_id))
    }

    fn job_call<'a>(&self, script: &'a redis::Script, tag: &str, job_id: &str) -> ScriptInvocation<'a> {
        let keys = self.job_keys(tag, job_id);
        let mut invocation = script.prepare_invoke();
        invocation.key(keys.state).key(keys.out);
        invocation
    }

    /// Run a script on the shared connection, within the call timeout.
    async fn invoke<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> Result<T, QueueError> {
        let mut connection = self.shared.clone();
        bounded(self.call_timeout(), connection.invoke(invocation)).await
    }

    async fn query<T: FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, QueueError> {
        let mut connection = self.shared.clone();
        bounded(self.call_timeout(), command.query_async(&mut connection)).await
    }

    /// Run a blocking command (`XREAD BLOCK`) on a dedicated connection. A pooled
    /// connection found broken (Redis restarted) is replaced once.
    async fn query_blocking(&self, command: &redis::Cmd, block: Duration) -> Result<Value, QueueError> {
        let limit = block + self.config.response_timeout;
        let pooled = self.blocking.lock().pop();
        if let Some(mut connection) = pooled {
            match tokio::time::timeout(limit, command.query_async::<Value>(&mut connection)).await {
                Ok(Ok(value)) => {
                    self.return_blocking(connection);
                    return Ok(value);
                }
                Ok(Err(error)) if !(error.is_io_error() || error.is_unrecoverable_error()) => {
                    return Err(unavailable(error));
                }
                Ok(Err(_)) => {} // stale after a reconnect: try a fresh one
                Err(_) => return Err(timed_out()),
            }
        }
        let mut connection = bounded(self.config.connect_timeout * 4, self.client.blocking(self.config.connect_timeout)).await?;
        let value = bounded(limit, command.query_async::<Value>(&mut connection)).await?;
        self.return_blocking(connection);
        Ok(value)
    }

    fn return_blocking(&self, connection: BlockingConnection) {
        let mut idle = self.blocking.lock();
        if idle.len() < self.config.max_idle_blocking_connections {
            idle.push(connection);
        }
    }

    /// End a job with a queue-side failure event (deadline, delivery limit).
    /// (`tag`: the job's, see [`Self::job_tag`].)
    async fn fail_job(&self, tag: &str, job_id: &str, epoch: u32, code: &str, message: String) -> Result<(), QueueError> {
        let event = serde_json::to_string(&OutputEvent::Failed { code: code.into(), message })
            .expect("an event serializes");
        let mut call = self.job_call(&self.scripts.job_fail, tag, job_id);
        call.arg(epoch).arg(event).arg(self.output_ttl_ms());
        self.invoke::<i64>(&call).await?;
        if self.config.wait_replicas > 0 {
            self.wait_replicated(&self.job_keys(tag, job_id).state).await;
        }
        Ok(())
    }

    /// With `wait_replicas`, wait (`WAIT`, on the master of `key`'s slot) until that
    /// many replicas have every write this connection sent there. A short answer or an
    /// error is logged (at most every 10 s) and the caller goes on: the write itself
    /// was made.
    /// (Callers check `wait_replicas` first, so the key is not built for nothing.)
    async fn wait_replicated(&self, key: &str) {
        let wanted = self.config.wait_replicas;
        let mut command = redis::cmd("WAIT");
        command.arg(wanted).arg(self.config.wait_timeout.as_millis().max(1) as u64);
        let mut connection = self.shared.clone();
        let limit = self.call_timeout() + self.config.wait_timeout;
        let problem = match tokio::time::timeout(limit, connection.query_at::<u32>(key, &command)).await {
            Ok(Ok(acknowledged)) if acknowledged >= wanted => return,
            Ok(Ok(acknowledged)) => format!("{acknowledged} of {wanted} replicas acknowledged in time"),
            Ok(Err(error)) => format!("WAIT failed: {error}"),
            Err(_) => "WAIT got no answer in time".to_string(),
        };
        let mut last = self.wait_warned.lock();
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(key, problem, "redis queue: a write is not on the replicas yet; a failover now could lose it");
        }
    }

    async fn forget_on_deployment(&self, deployment: &str, job_id: &str) -> Result<(), QueueError> {
        let mut call = self.job_partition_call(&self.scripts.deployment_forget, deployment, job_id);
        call.arg(job_id);
        self.invoke::<i64>(&call).await.map(|_| ())
    }

    /// Redeliver or dead-letter the expired leases of one partition.
    async fn reclaim_in(&self, deployment: &str, partition: u32) -> Result<u64, QueueError> {
        let mut call = self.deployment_call(&self.scripts.deployment_reclaim, deployment, partition);
        call.arg(self.config.max_deliveries).arg(self.config.dead_letter_max_len);
        let [requeued, dead] = fixed::<2>(self.invoke::<Value>(&call).await?)?;
        let requeued = array(requeued)?;
        let redelivered = requeued.len() as u64;
        let mut last_error = None;
        if partition > 0 && redelivered > 0 {
            if let Err(error) = self.wake_deployment(deployment).await {
                last_error = Some(error);
            }
        }
        let tag = Partitions::tag(deployment, partition);
        for item in requeued {
            let [job_id, epoch] = fixed::<2>(item)?;
            if let Err(error) = self.requeue_on_job(&tag, &string(&job_id)?, number(&epoch)? as u32).await {
                last_error = Some(error);
            }
        }
        for item in array(dead)? {
            let [job_id, epoch, deliveries] = fixed::<3>(item)?;
            let job_id = string(&job_id)?;
            let deliveries = number(&deliveries)?;
            tracing::warn!(job_id, deliveries, "redis queue: job dead-lettered");
            let message = format!("the job's replica failed {deliveries} times; giving up");
            if let Err(error) = self.fail_job(&tag, &job_id, number(&epoch)? as u32, "delivery_limit", message).await {
                last_error = Some(error);
            }
        }
        match last_error {
            Some(error) => Err(error),
            None => Ok(redelivered),
        }
    }

    /// Mark `replica` as taking no more work in these `seen` hashes.
    async fn mark_stopped(&self, seen: &[String], replica: &str) -> Result<(), QueueError> {
        for key in seen {
            self.query::<i64>(redis::cmd("HSET").arg(key).arg(replica).arg(0)).await?;
        }
        Ok(())
    }

    /// Wake the consumers waiting for work on `deployment` (partition 0's wake-up
    /// stream; a partition's own scripts wake it for partition 0 only).
    async fn wake_deployment(&self, deployment: &str) -> Result<(), QueueError> {
        let mut command = redis::cmd("XADD");
        command.arg(&self.deployment_keys(deployment, 0).keys[3]).arg("MAXLEN").arg(16).arg("*").arg("w").arg(1);
        self.query::<String>(&command).await.map(|_| ())
    }

    async fn requeue_on_job(&self, tag: &str, job_id: &str, epoch: u32) -> Result<(), QueueError> {
        let mut call = self.job_call(&self.scripts.job_requeue, tag, job_id);
        call.arg(epoch);
        self.invoke::<i64>(&call).await.map(|_| ())
    }

}

#[async_trait]
impl Queue for RedisQueue {
    fn is_remote(&self) -> bool {
        true
    }

    async fn enqueue(&self, job: Job, limits: AdmissionLimits) -> Result<Enqueued, QueueError> {
        self.enqueue_job(job, limits).await
    }

    async fn position(&self, deployment: &str, job_id: &str) -> Result<Option<u64>, QueueError> {
        let mut call = self.job_partition_call(&self.scripts.deployment_position, deployment, job_id);
        call.arg(job_id);
        match self.invoke::<i64>(&call).await? {
            -1 => Err(QueueError::UnknownJob(job_id.to_string())),
            position => Ok((position > 0).then_some(self.partitions.scale(position as u64))),
        }
    }

    async fn depth(&self, deployment: &str) -> Result<QueueDepth, QueueError> {
        // Every partition at once; their sum.
        let partitions = (0..self.partitions.count()).map(|partition| async move {
            let call = self.deployment_call(&self.scripts.deployment_depth, deployment, partition);
            let [waiting, leased, oldest] = fixed::<3>(self.invoke::<Value>(&call).await?)?;
            let oldest = string(&oldest)?;
            Ok::<_, QueueError>(QueueDepth {
                waiting: number(&waiting)?,
                leased: number(&leased)?,
                oldest_waiting_enqueued_at_ms: if oldest.is_empty() {
                    None
                } else {
                    Some(oldest.parse().map_err(|_| malformed("enqueue time"))?)
                },
            })
        });
        let mut depth = QueueDepth { waiting: 0, leased: 0, oldest_waiting_enqueued_at_ms: None };
        for part in futures_util::future::join_all(partitions).await {
            let part = part?;
            depth.waiting += part.waiting;
            depth.leased += part.leased;
            depth.oldest_waiting_enqueued_at_ms = match (depth.oldest_waiting_enqueued_at_ms, part.oldest_waiting_enqueued_at_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(depth)
    }

    async fn lease(
        &self,
        deployment: &str,
        consumer: &str,
        max_jobs: usize,
        ttl: Duration,
        block: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        self.lease_jobs(deployment, consumer, max_jobs, ttl, block).await
    }

    async fn renew(&self, leases: &[LeaseRef], ttl: Duration) -> Result<Vec<bool>, QueueError> {
        let mut held = vec![false; leases.len()];
        let mut by_partition: HashMap<(&str, u32), Vec<usize>> = HashMap::new();
        for (index, lease) in leases.iter().enumerate() {
            by_partition.entry((lease.deployment.as_str(), self.partitions.of(&lease.job_id))).or_default().push(index);
        }
        for ((deployment, partition), indices) in by_partition {
            let mut call = self.deployment_call(&self.scripts.deployment_renew, deployment, partition);
            call.arg(ttl.as_millis().max(1) as u64);
            for &index in &indices {
                let lease = &leases[index];
                call.arg(&lease.job_id).arg(&lease.consumer).arg(lease.epoch);
            }
            let answers: Vec<i64> = self.invoke(&call).await?;
            for (&index, answer) in indices.iter().zip(answers) {
                held[index] = answer == 1;
            }
        }
        Ok(held)
    }

    async fn ack(&self, lease: &LeaseRef) -> Result<bool, QueueError> {
        if self.acked_by_append.lock().remove(&(lease.job_id.clone(), lease.epoch)) {
            // Its terminal append acknowledged it.
            return Ok(true);
        }
        let mut call = self.job_partition_call(&self.scripts.deployment_ack, &lease.deployment, &lease.job_id);
        call.arg(&lease.job_id).arg(&lease.consumer).arg(lease.epoch);
        if self.invoke::<i64>(&call).await? == 0 {
            return Ok(false);
        }
        let mut done = self.job_call(&self.scripts.job_done, &self.job_tag(&lease.deployment, &lease.job_id), &lease.job_id);
        done.arg(self.output_ttl_ms());
        if let Err(error) = self.invoke::<i64>(&done).await {
            // Acknowledged; the job's keys still expire with `job_max_age`.
            tracing::warn!(%error, job_id = lease.job_id, "redis queue: marking an acked job done failed");
        }
        Ok(true)
    }

    async fn release(&self, lease: &LeaseRef) -> Result<bool, QueueError> {
        let mut call = self.job_partition_call(&self.scripts.deployment_release, &lease.deployment, &lease.job_id);
        call.arg(&lease.job_id).arg(&lease.consumer).arg(lease.epoch);
        let epoch = self.invoke::<i64>(&call).await?;
        if epoch == 0 {
            return Ok(false);
        }
        if self.partitions.of(&lease.job_id) > 0 {
            self.wake_deployment(&lease.deployment).await?;
        }
        if let Err(error) = self.requeue_on_job(&self.job_tag(&lease.deployment, &lease.job_id), &lease.job_id, epoch as u32).await {
            // Handed back; the next delivery raises the fence when it starts.
            tracing::warn!(%error, job_id = lease.job_id, "redis queue: fencing a released job failed");
        }
        Ok(true)
    }

    async fn reclaim_expired(&self, deployment: &str) -> Result<u64, QueueError> {
        let mut redelivered = 0;
        let mut last_error = None;
        for partition in 0..self.partitions.count() {
            match self.reclaim_in(deployment, partition).await {
                Ok(n) => redelivered += n,
                Err(error) => last_error = Some(error),
            }
        }
        match last_error {
            Some(error) => Err(error),
            None => Ok(redelivered),
        }
    }

    async fn cancel(&self, job_id: &str) -> Result<(), QueueError> {
        match self.locate(job_id).await? {
            Some(tag) => self.cancel_at(&tag, job_id).await,
            None => Ok(()),
        }
    }

    async fn append_output(
        &self,
        lease: &LeaseRef,
        after: u64,
        events: Vec<OutputEvent>,
    ) -> Result<AppendOutcome, QueueError> {
        self.append_job(lease, after, events).await
    }

    async fn report_replica(
        &self,
        deployment: &str,
        report: &ReplicaReport,
        prefix: Option<&PrefixBlocks>,
    ) -> Result<(), QueueError> {
        let key = self.replicas_key(deployment);
        let prefixes = self.prefixes_key(deployment);
        let mut pipeline = redis::pipe();
        pipeline.cmd("HSET").arg(&key).arg(&report.replica).arg(report.encode()).ignore();
        if let Some(prefix) = prefix {
            pipeline.cmd("HSET").arg(&prefixes).arg(&report.replica).arg(prefix.encode()).ignore();
        }
        let seen = self.seen_keys(deployment);
        if !report.accepting {
            // Draining: the jobs promised to it are free at once (`deployment_take`).
            pipeline.cmd("HSET").arg(&seen[0]).arg(&report.replica).arg(0).ignore();
        }
        // A deployment nobody reports for any more leaves no key behind.
        for key in [&key, &prefixes] {
            pipeline.cmd("PEXPIRE").arg(key).arg(10 * ReplicaReport::STALE_AFTER).ignore();
        }
        let mut connection = self.shared.clone();
        bounded(self.call_timeout(), pipeline.query_async::<()>(&mut connection)).await?;
        if !report.accepting {
            // The other partitions' (other slots: a command each).
            self.mark_stopped(&seen[1..], &report.replica).await?;
        }
        Ok(())
    }

    async fn forget_replica(&self, deployment: &str, replica: &str) -> Result<(), QueueError> {
        let seen = self.seen_keys(deployment);
        let mut pipeline = redis::pipe();
        pipeline.cmd("HDEL").arg(self.replicas_key(deployment)).arg(replica).ignore();
        pipeline.cmd("HDEL").arg(self.prefixes_key(deployment)).arg(replica).ignore();
        pipeline.cmd("HSET").arg(&seen[0]).arg(replica).arg(0).ignore();
        let mut connection = self.shared.clone();
        bounded(self.call_timeout(), pipeline.query_async::<()>(&mut connection)).await?;
        self.mark_stopped(&seen[1..], replica).await
    }

    async fn replica_reports(&self, deployment: &str) -> Result<Vec<ReplicaReport>, QueueError> {
        let key = self.replicas_key(deployment);
        let stored: Vec<(String, Vec<u8>)> = self.query(redis::cmd("HGETALL").arg(&key)).await?;
        let now = crate::unix_millis();
        let mut fresh = Vec::with_capacity(stored.len());
        let mut gone = Vec::new();
        for (replica, bytes) in stored {
            match ReplicaReport::decode(&bytes) {
                Ok(report) if report.is_fresh(now) => fresh.push(report),
                // Long silent (its replica died without forgetting itself), or written by
                // a version that encodes differently: dropped.
                Ok(report) if now.saturating_sub(report.at_ms) > 10 * ReplicaReport::STALE_AFTER => gone.push(replica),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(deployment, replica, %error, "dropping a replica report");
                    gone.push(replica);
                }
            }
        }
        if !gone.is_empty() {
            let mut pipeline = redis::pipe();
            pipeline.cmd("HDEL").arg(&key).arg(&gone).ignore();
            pipeline.cmd("HDEL").arg(self.prefixes_key(deployment)).arg(&gone).ignore();
            let mut connection = self.shared.clone();
            bounded(self.call_timeout(), pipeline.query_async::<()>(&mut connection)).await?;
        }
        Ok(fresh)
    }

    async fn replica_prefix(&self, deployment: &str, replica: &str) -> Result<Option<PrefixBlocks>, QueueError> {
        let stored: Option<Vec<u8>> = self.query(redis::cmd("HGET").arg(self.prefixes_key(deployment)).arg(replica)).await?;
        match stored.map(|bytes| PrefixBlocks::decode(&bytes)) {
            None => Ok(None),
            Some(Ok(prefix)) => Ok(Some(prefix)),
            Some(Err(error)) => {
                tracing::warn!(deployment, replica, %error, "ignoring a replica's blocks");
                Ok(None)
            }
        }
    }

    async fn read_output(
        &self,
        job_id: &str,
        after_seq: u64,
        block: Duration,
    ) -> Result<Vec<SequencedEvent>, QueueError> {
        let Some(tag) = self.locate(job_id).await? else {
            return Err(QueueError::UnknownJob(job_id.to_string()));
        };
        let keys = self.job_keys(&tag, job_id);
        let from = format!("0-{after_seq}");
        // One command when there is output (the usual case): `XREAD BLOCK` answers at
        // once if entries follow `from`. Only an empty answer asks whether the job exists
        // (an unknown or expired job reads as empty forever).
        let mut events = if block.is_zero() {
            let mut command = redis::cmd("XRANGE");
            command.arg(&keys.out).arg(format!("({from}")).arg("+");
            parse_entries(self.query::<Value>(&command).await?)?
        } else {
            let mut command = redis::cmd("XREAD");
            command.arg("BLOCK").arg(block.as_millis().max(1) as u64);
            command.arg("STREAMS").arg(&keys.out).arg(&from);
            match self.query_blocking(&command, block).await? {
                Value::Nil => Vec::new(),
                reply => {
                    // [[key, entries]]
                    let mut streams = array(reply)?;
                    if streams.is_empty() {
                        Vec::new()
                    } else {
                        let [_, entries] = fixed::<2>(streams.swap_remove(0))?;
                        parse_entries(entries)?
                    }
                }
            }
        };
        // An entry of several events that starts at or before `after_seq` ends after it.
        events.retain(|sequenced| sequenced.seq > after_seq);
        if events.is_empty() && self.query::<u64>(redis::cmd("EXISTS").arg(&keys.state).arg(&keys.out)).await? == 0 {
            return Err(QueueError::UnknownJob(job_id.to_string()));
        }
        if events.last().is_some_and(|sequenced| sequenced.event.is_terminal()) {
            // Its reader is done: the place need not be remembered (read again, it is
            // found by its pointer key).
            self.located.lock().remove(job_id);
        }
        Ok(events)
    }

    async fn output_owner(&self, job_id: &str) -> Result<Option<OutputOwner>, QueueError> {
        let Some(tag) = self.locate(job_id).await? else { return Ok(None) };
        let mut command = redis::cmd("HMGET");
        command.arg(self.job_keys(&tag, job_id).state).arg("i").arg("readers");
        let fields: Vec<Option<String>> = self.query(&command).await?;
        let [info, readers] = <[Option<String>; 2]>::try_from(fields).map_err(|_| malformed("job state"))?;
        let Some(info) = info else { return Ok(None) };
        // `i`: deployment, tenant and stream metadata, a line each.
        let mut lines = info.splitn(3, '\n');
        let deployment = lines.next().unwrap_or_default().to_string();
        let tenant = lines.next().ok_or_else(|| malformed("job state"))?.to_string();
        let meta = lines.next().map(str::to_string);
        Ok(Some(OutputOwner {
            tenant,
            deployment,
            stream_meta: meta.filter(|meta| !meta.is_empty()),
            readers: readers.and_then(|r| r.parse().ok()).unwrap_or(0),
        }))
    }

    async fn attach_reader(&self, job_id: &str) -> Result<Option<u64>, QueueError> {
        let Some(tag) = self.locate(job_id).await? else { return Ok(None) };
        let call = self.job_call(&self.scripts.job_attach_reader, &tag, job_id);
        let readers: i64 = self.invoke(&call).await?;
        Ok(u64::try_from(readers).ok())
    }
}
