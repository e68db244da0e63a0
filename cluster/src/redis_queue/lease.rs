//! Leasing from a [`RedisQueue`]: a take from one partition (`deployment_take`, then
//! `job_start` for the redelivered jobs), and `lease`, which takes from the partitions
//! in turn and, finding nothing, waits on the deployment's wake-up stream.
//!
//! With several partitions a consumer takes from them one after another, starting at a
//! rotating one (each call starts one further), until it has what it asked for. A
//! consumer that found nothing looks once more, partition 0 first with its wait
//! declared (`asleep`): the take of partition 0 answers the wake-up stream's last id
//! before the others are looked at, and an enqueue into any partition after its look
//! there finds `asleep` and wakes the stream (the gateway appends to partition 0's
//! stream for the other partitions), so no wake-up is lost between the look and the
//! wait.

use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use super::replies::{array, fixed, number, parse_entries, string};
use super::partitions::Partitions;
use super::RedisQueue;
use crate::job::{Job, Lease, LeaseRef};
use crate::queue::QueueError;
use crate::unix_millis;
use swell_protocol::OutputEvent;

/// What one look at the partitions found.
struct Look {
    leases: Vec<Lease>,
    /// The wake-up stream's id to wait after (empty: none, look again).
    wake_id: String,
    /// When the next promise of a parked job ends.
    next_end: Option<Duration>,
}

impl RedisQueue {
    /// [`Queue::lease`](crate::Queue::lease).
    pub(super) async fn lease_jobs(
        &self,
        deployment: &str,
        consumer: &str,
        max_jobs: usize,
        ttl: Duration,
        block: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        if max_jobs == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + block;
        let mut declared = !self.partitions.is_split();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // The first look at several partitions does not declare the wait.
            let look = self.look(deployment, consumer, max_jobs, ttl, if declared { remaining } else { Duration::ZERO }).await?;
            if !look.leases.is_empty() {
                return Ok(look.leases);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(Vec::new());
            }
            if !declared {
                declared = true;
                continue;
            }
            if look.wake_id.is_empty() {
                // It took jobs that had ended meanwhile (no wake-up id then): look again.
                continue;
            }
            let wait = match look.next_end {
                Some(end) => remaining.min(end + Duration::from_millis(1)),
                None => remaining,
            };
            self.wait_for_work(deployment, &look.wake_id, wait).await?;
        }
    }

    /// Take from the partitions until `max_jobs` are leased: from a rotating one, or,
    /// declaring a wait of `block`, from partition 0 on (see the module docs).
    async fn look(&self, deployment: &str, consumer: &str, max_jobs: usize, ttl: Duration, block: Duration) -> Result<Look, QueueError> {
        let start = if block.is_zero() { self.next_start() } else { 0 };
        let mut look = Look { leases: Vec::new(), wake_id: String::new(), next_end: None };
        let mut first_error = None;
        for partition in self.partitions.from(start) {
            let wanted = max_jobs - look.leases.len();
            match self.take_from(deployment, partition, consumer, wanted, ttl, block).await {
                Ok((leases, wake_id, next_end)) => {
                    look.leases.extend(leases);
                    if partition == 0 {
                        look.wake_id = wake_id;
                    }
                    look.next_end = match (look.next_end, next_end) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                // A partition that cannot be reached (its master is failing over)
                // does not keep the others' jobs from being taken.
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
            if look.leases.len() >= max_jobs {
                break;
            }
        }
        match first_error {
            Some(error) if look.leases.is_empty() => Err(error),
            _ => Ok(look),
        }
    }

    /// Where the next look without a wait starts.
    fn next_start(&self) -> u32 {
        if !self.partitions.is_split() {
            return 0;
        }
        (self.take_turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % u64::from(self.partitions.count())) as u32
    }

    /// One take from one partition: take on the deployment side, start on each job's
    /// side. Answers the leases, the wake-up stream's id to block on and when the next
    /// promise ends.
    #[allow(clippy::too_many_arguments)]
    async fn take_from(
        &self,
        deployment: &str,
        partition: u32,
        consumer: &str,
        max_jobs: usize,
        ttl: Duration,
        block: Duration,
    ) -> Result<(Vec<Lease>, String, Option<Duration>), QueueError> {
        let mut call = self.deployment_call(&self.scripts.deployment_take, deployment, partition);
        call.arg(consumer).arg(max_jobs).arg(ttl.as_millis().max(1) as u64).arg(unix_millis());
        call.arg(self.config.route_liveness.as_millis().max(1) as u64).arg(block.as_millis() as u64);
        call.arg(u8::from(self.mark_seen_due(deployment, partition, consumer)));
        let reply = self.invoke::<Value>(&call).await?;
        let [taken, dropped, wake_id, next_end] = fixed::<4>(reply)?;
        // A job parked for another replica becomes takeable when its promise ends.
        let next_end = match next_end {
            Value::Nil => None,
            value => Some(Duration::from_millis(number(&value)?)),
        };
        for item in array(dropped)? {
            let [job_id, epoch] = fixed::<2>(item)?;
            self.fail_job(
                &Partitions::tag(deployment, partition),
                &string(&job_id)?,
                number(&epoch)? as u32,
                "deadline_exceeded",
                "the request's deadline passed while it was queued".into(),
            )
            .await?;
        }
        // Each redelivered job is started by a `job_start` of its own, all at once: one
        // round trip for the batch, not one after another.
        let mut taken_jobs = Vec::new();
        for item in array(taken)? {
            let [job_id, payload, epoch, deliveries] = fixed::<4>(item)?;
            taken_jobs.push((string(&job_id)?, string(&payload)?, number(&epoch)? as u32, number(&deliveries)? as u32));
        }
        let starts = taken_jobs.iter().map(|(job_id, payload, epoch, deliveries)| {
            self.start(deployment, consumer, job_id, payload, *epoch, *deliveries, ttl)
        });
        let mut leases = Vec::new();
        let mut first_error = None;
        for ((job_id, ..), started) in taken_jobs.iter().zip(futures_util::future::join_all(starts).await) {
            match started {
                Ok(Some(lease)) => leases.push(lease),
                Ok(None) => {}
                // The leases started are handed out; the rest expire unrenewed and are
                // reclaimed.
                Err(error) => {
                    tracing::warn!(%error, job_id, "redis queue: starting a lease failed");
                    first_error.get_or_insert(error);
                }
            }
        }
        if let (true, Some(error)) = (leases.is_empty(), first_error) {
            return Err(error);
        }
        Ok((leases, string(&wake_id)?, next_end))
    }

    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        deployment: &str,
        consumer: &str,
        job_id: &str,
        payload: &str,
        epoch: u32,
        deliveries: u32,
        ttl: Duration,
    ) -> Result<Option<Lease>, QueueError> {
        let job: Job = match serde_json::from_str(payload) {
            Ok(job) => job,
            Err(error) => {
                tracing::error!(%error, job_id, "redis queue: unreadable job payload; failing the job");
                self.forget_on_deployment(deployment, job_id).await?;
                let tag = self.job_tag(deployment, job_id);
                self.fail_job(&tag, job_id, epoch, "invalid_job", format!("the queued job could not be read: {error}"))
                    .await?;
                return Ok(None);
            }
        };
        let lease = |resume_tokens, resume_after_seq| Lease {
            job,
            lease: LeaseRef {
                job_id: job_id.to_string(),
                deployment: deployment.to_string(),
                consumer: consumer.to_string(),
                epoch,
            },
            deliveries,
            ttl,
            resume_tokens,
            resume_after_seq,
        };
        if epoch == 1 {
            // A first delivery (a redelivery or a hand-back raises the epoch): nothing
            // was written for it, and its first append starts it on the job's side.
            return Ok(Some(lease(Vec::new(), 0)));
        }
        let mut call = self.job_call(&self.scripts.job_start, &self.job_tag(deployment, job_id), job_id);
        call.arg(epoch).arg(consumer).arg(&self.cancelled_event).arg(self.output_ttl_ms());
        let reply = array(self.invoke::<Value>(&call).await?)?;
        match string(reply.first().unwrap_or(&Value::Nil))?.as_str() {
            "ok" => {
                // What was delivered so far: the token events of the output, over every
                // attempt.
                let output = parse_entries(reply.get(1).cloned().unwrap_or(Value::Nil))?;
                let resume_tokens = output
                    .into_iter()
                    .flat_map(|sequenced| match sequenced.event {
                        OutputEvent::Tokens { token_ids, .. } => token_ids,
                        _ => Vec::new(),
                    })
                    .collect();
                let resume_after_seq = number(reply.get(2).unwrap_or(&Value::Nil))?;
                Ok(Some(lease(resume_tokens, resume_after_seq)))
            }
            "done" | "gone" => {
                self.forget_on_deployment(deployment, job_id).await?;
                Ok(None)
            }
            other => {
                tracing::warn!(job_id, epoch, answer = other, "redis queue: a stale delivery was skipped");
                Ok(None)
            }
        }
    }

    /// Whether this take is to mark the consumer alive: a quarter of the liveness
    /// window after the last mark (which renewals refresh too), so a consumer taking
    /// work stays alive in its peers' eyes without a write at every take.
    fn mark_seen_due(&self, deployment: &str, partition: u32, consumer: &str) -> bool {
        let now = Instant::now();
        let mut marked = self.seen_marked.lock();
        let key = (deployment.to_string(), partition, consumer.to_string());
        if marked.get(&key).is_some_and(|at| now.duration_since(*at) < self.config.route_liveness / 4) {
            return false;
        }
        if marked.len() >= 4096 {
            marked.clear();
        }
        marked.insert(key, now);
        true
    }

    /// Wait (on a dedicated connection) until the wake-up stream moves past `wake_id`.
    /// (Partition 0's: the deployment's.)
    async fn wait_for_work(&self, deployment: &str, wake_id: &str, block: Duration) -> Result<(), QueueError> {
        let keys = self.deployment_keys(deployment, 0);
        let mut command = redis::cmd("XREAD");
        command.arg("BLOCK").arg(block.as_millis().max(1) as u64).arg("COUNT").arg(1);
        command.arg("STREAMS").arg(&keys.keys[3]).arg(wake_id);
        self.query_blocking(&command, block).await.map(|_| ())
    }
}
