//! `InMemoryQueue`: the embedded queue, for Swell on one machine.
//!
//! One mutex guards all state; every operation is a few map and deque updates, so the
//! lock is held for microseconds. Waiting (for work in `lease`, for output in
//! `read_output`) uses `tokio::sync::Notify`, armed before the state is checked so no
//! wake-up is lost. Time is tokio time, so tests can pause it.
//!
//! A deployment's waiting jobs are kept in service order: a list of handed-back and
//! redelivered jobs (served first), then one FIFO per [`Priority`](crate::Priority),
//! highest first. A consumer takes the first job in that order it may take: a job routed
//! to another live replica is passed over while its promise holds ([`crate::routing`]),
//! and a blocked `lease` wakes when such a job becomes takeable.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::job::{AdmissionLimits, Enqueued, Job, JobId, Lease, LeaseRef, OutputOwner, QueueDepth};
use swell_protocol::{OutputEvent, SequencedEvent};
use crate::queue::{AppendOutcome, Queue, QueueError};
use crate::replica_report::{PrefixBlocks, ReplicaReport};
use crate::routing::{Eligibility, Routing};
use crate::unix_millis;

#[derive(Debug, Clone)]
pub struct InMemoryQueueConfig {
    /// A job delivered this many times (its consumers kept dying) is failed with
    /// `delivery_limit` instead of being delivered again.
    pub max_deliveries: u32,
    /// How long a finished job's output stream stays readable (for a reader that
    /// reconnects) before it is dropped.
    pub output_retention: Duration,
    /// A replica that has not leased, renewed or written for this long no longer holds
    /// the jobs routed to it ([`crate::routing`]).
    pub route_liveness: Duration,
}

impl Default for InMemoryQueueConfig {
    fn default() -> Self {
        Self { max_deliveries: 3, output_retention: Duration::from_secs(60), route_liveness: Duration::from_secs(2) }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum JobStatus {
    Waiting,
    Leased { consumer: String, expires_at: Instant },
    Done,
}

struct JobState {
    job: Job,
    status: JobStatus,
    epoch: u32,
    deliveries: u32,
    cancelled: bool,
    /// Readers that took the output over (resumed streams).
    readers: u64,
}

#[derive(Default)]
struct DeploymentQueue {
    /// Handed-back and redelivered jobs, served before any new job (head first).
    requeued: VecDeque<JobId>,
    /// New jobs per priority (indexed by [`Priority::rank`]), oldest first.
    levels: [VecDeque<JobId>; 3],
    leased: HashSet<JobId>,
    notify: Arc<Notify>,
}

impl DeploymentQueue {
    /// The waiting jobs in service order.
    fn waiting(&self) -> impl Iterator<Item = &JobId> {
        self.requeued.iter().chain(self.levels.iter().flatten())
    }

    fn waiting_len(&self) -> usize {
        self.requeued.len() + self.levels.iter().map(VecDeque::len).sum::<usize>()
    }

    /// The first job in service order that `pick` accepts, taken out of its list.
    fn take_first(&mut self, mut pick: impl FnMut(&JobId) -> bool) -> Option<JobId> {
        for list in std::iter::once(&mut self.requeued).chain(self.levels.iter_mut()) {
            if let Some(at) = list.iter().position(&mut pick) {
                return list.remove(at);
            }
        }
        None
    }

    /// The jobs heading each list (the candidates for the oldest waiting job).
    fn heads(&self) -> impl Iterator<Item = &JobId> {
        self.requeued.front().into_iter().chain(self.levels.iter().filter_map(VecDeque::front))
    }

    fn remove_waiting(&mut self, job_id: &str) {
        self.requeued.retain(|id| id != job_id);
        for level in &mut self.levels {
            level.retain(|id| id != job_id);
        }
    }
}

struct OutputStream {
    events: Vec<SequencedEvent>,
    /// Token ids delivered so far, over all attempts (what a redelivery resumes after).
    delivered_tokens: Vec<u32>,
    notify: Arc<Notify>,
    finished_at: Option<Instant>,
}

impl OutputStream {
    fn new() -> Self {
        Self {
            events: Vec::new(),
            delivered_tokens: Vec::new(),
            notify: Arc::new(Notify::new()),
            finished_at: None,
        }
    }

    fn last_seq(&self) -> u64 {
        self.events.last().map(|e| e.seq).unwrap_or(0)
    }

    fn push(&mut self, epoch: u32, event: OutputEvent) {
        if self.finished_at.is_some() {
            return;
        }
        if let OutputEvent::Tokens { token_ids, .. } = &event {
            self.delivered_tokens.extend_from_slice(token_ids);
        }
        if event.is_terminal() {
            self.finished_at = Some(Instant::now());
        }
        let seq = self.last_seq() + 1;
        self.events.push(SequencedEvent { seq, epoch, event });
    }
}

/// A replica's last report, and the blocks it last published.
type Reported = (ReplicaReport, Option<Arc<PrefixBlocks>>);

struct State {
    deployments: HashMap<String, DeploymentQueue>,
    jobs: HashMap<JobId, JobState>,
    outputs: HashMap<JobId, OutputStream>,
    next_sweep: Option<Instant>,
    routing: Routing,
    /// Each deployment's replica reports and published blocks, by replica.
    reports: HashMap<String, HashMap<String, Reported>>,
}

impl State {
    fn new(config: &InMemoryQueueConfig) -> Self {
        Self {
            deployments: HashMap::new(),
            jobs: HashMap::new(),
            outputs: HashMap::new(),
            next_sweep: None,
            routing: Routing::new(config.route_liveness),
            reports: HashMap::new(),
        }
    }

    fn deployment(&mut self, name: &str) -> &mut DeploymentQueue {
        self.deployments.entry(name.to_string()).or_default()
    }

    /// End a job with a terminal error event (queue-side failures: cancelled, deadline).
    fn fail_job(&mut self, job_id: &str, code: &str, message: String) {
        let Some(state) = self.jobs.get_mut(job_id) else { return };
        let deployment = state.job.deployment.clone();
        let epoch = state.epoch;
        state.status = JobStatus::Done;
        let queue = self.deployment(&deployment);
        queue.remove_waiting(job_id);
        queue.leased.remove(job_id);
        if let Some(output) = self.outputs.get_mut(job_id) {
            output.push(epoch, OutputEvent::Failed { code: code.to_string(), message });
            output.notify.notify_waiters();
        }
    }

    /// Drop finished jobs whose output has been retained long enough.
    fn sweep(&mut self, retention: Duration) {
        let now = Instant::now();
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        self.next_sweep = Some(now + Duration::from_secs(1));
        self.routing.sweep(unix_millis());
        let expired: Vec<JobId> = self
            .outputs
            .iter()
            .filter(|(_, o)| o.finished_at.is_some_and(|at| now.duration_since(at) >= retention))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.outputs.remove(&id);
            if self.jobs.get(&id).is_some_and(|j| j.status == JobStatus::Done) {
                self.jobs.remove(&id);
            }
        }
    }
}

/// A consumer inside a blocking `lease` call: alive for routing throughout, however
/// long it waits (also when the call is dropped mid-wait).
struct WaitingInLease<'a> {
    queue: &'a InMemoryQueue,
    deployment: &'a str,
    consumer: &'a str,
}

impl<'a> WaitingInLease<'a> {
    fn new(queue: &'a InMemoryQueue, deployment: &'a str, consumer: &'a str) -> Self {
        queue.state.lock().routing.waiting(deployment, consumer, true, unix_millis());
        Self { queue, deployment, consumer }
    }
}

impl Drop for WaitingInLease<'_> {
    fn drop(&mut self) {
        self.queue.state.lock().routing.waiting(self.deployment, self.consumer, false, unix_millis());
    }
}

/// The embedded queue. Cheap to share: wrap it in an `Arc`.
pub struct InMemoryQueue {
    state: Mutex<State>,
    config: InMemoryQueueConfig,
}

impl Default for InMemoryQueue {
    fn default() -> Self {
        Self::new(InMemoryQueueConfig::default())
    }
}

impl InMemoryQueue {
    pub fn new(config: InMemoryQueueConfig) -> Self {
        Self { state: Mutex::new(State::new(&config)), config }
    }

    /// Take up to `max_jobs` waiting jobs for `consumer`, failing expired ones on the way.
    /// Also answers when a job passed over (routed to another replica) becomes takeable
    /// (Unix ms), if one was.
    fn try_lease(
        &self,
        deployment: &str,
        consumer: &str,
        max_jobs: usize,
        ttl: Duration,
    ) -> (Vec<Lease>, Option<u64>) {
        let mut state = self.state.lock();
        let now_ms = unix_millis();
        state.routing.seen(deployment, consumer, now_ms);
        let mut leases = Vec::new();
        let mut next_change: Option<u64> = None;
        while leases.len() < max_jobs {
            let State { deployments, jobs, routing, .. } = &mut *state;
            let queue = deployments.entry(deployment.to_string()).or_default();
            let picked = queue.take_first(|id| {
                let Some(job) = jobs.get(id) else { return true };
                match routing.eligible(deployment, job.job.route.as_ref(), consumer, now_ms) {
                    Eligibility::Now => true,
                    Eligibility::From(at) => {
                        next_change = Some(next_change.map_or(at, |n| n.min(at)));
                        false
                    }
                }
            });
            let Some(job_id) = picked else { break };
            let Some(job) = state.jobs.get(&job_id) else { continue };
            if job.job.deadline_ms.is_some_and(|deadline| now_ms > deadline) {
                state.fail_job(
                    &job_id,
                    "deadline_exceeded",
                    "the request's deadline passed while it was queued".into(),
                );
                continue;
            }
            let job = state.jobs.get_mut(&job_id).expect("checked above");
            job.status = JobStatus::Leased {
                consumer: consumer.to_string(),
                expires_at: Instant::now() + ttl,
            };
            job.deliveries += 1;
            let lease_ref = LeaseRef {
                job_id: job_id.clone(),
                deployment: deployment.to_string(),
                consumer: consumer.to_string(),
                epoch: job.epoch,
            };
            let (job_copy, deliveries) = (job.job.clone(), job.deliveries);
            let (resume_tokens, resume_after_seq) = state
                .outputs
                .get(&job_id)
                .map(|o| (o.delivered_tokens.clone(), o.last_seq()))
                .unwrap_or_default();
            state.deployment(deployment).leased.insert(job_id);
            leases.push(Lease {
                job: job_copy,
                lease: lease_ref,
                deliveries,
                ttl,
                resume_tokens,
                resume_after_seq,
            });
        }
        (leases, next_change)
    }

    fn holds(state: &State, lease: &LeaseRef) -> bool {
        state.jobs.get(&lease.job_id).is_some_and(|job| {
            job.epoch == lease.epoch
                && matches!(&job.status, JobStatus::Leased { consumer, .. } if *consumer == lease.consumer)
        })
    }
}

#[async_trait]
impl Queue for InMemoryQueue {
    async fn enqueue(&self, job: Job, limits: AdmissionLimits) -> Result<Enqueued, QueueError> {
        let mut state = self.state.lock();
        state.sweep(self.config.output_retention);
        if state.jobs.contains_key(&job.id) {
            return Err(QueueError::DuplicateJob(job.id));
        }
        let deployment = job.deployment.clone();
        let depth = state.deployment(&deployment).waiting_len() as u64;
        if depth >= limits.max_queue_depth {
            return Err(QueueError::Full { deployment, depth });
        }
        let id = job.id.clone();
        let priority = job.priority;
        state.outputs.insert(id.clone(), OutputStream::new());
        state.jobs.insert(
            id.clone(),
            JobState { job, status: JobStatus::Waiting, epoch: 1, deliveries: 0, cancelled: false, readers: 0 },
        );
        let queue = state.deployment(&deployment);
        queue.levels[priority.rank()].push_back(id);
        queue.notify.notify_waiters();
        // Behind every handed-back job and every waiting job of its priority or higher.
        let position = queue.requeued.len()
            + queue.levels[..=priority.rank()].iter().map(VecDeque::len).sum::<usize>();
        Ok(Enqueued { position: position as u64 })
    }

    async fn position(&self, deployment: &str, job_id: &str) -> Result<Option<u64>, QueueError> {
        let state = self.state.lock();
        if !state.jobs.contains_key(job_id) {
            return Err(QueueError::UnknownJob(job_id.to_string()));
        }
        Ok(state
            .deployments
            .get(deployment)
            .and_then(|q| q.waiting().position(|id| id == job_id))
            .map(|index| index as u64 + 1))
    }

    async fn depth(&self, deployment: &str) -> Result<QueueDepth, QueueError> {
        let mut state = self.state.lock();
        // Supervisors ask every tick: finished outputs are dropped on time when no new
        // request arrives too.
        state.sweep(self.config.output_retention);
        let Some(queue) = state.deployments.get(deployment) else {
            return Ok(QueueDepth::default());
        };
        let oldest = queue
            .heads()
            .filter_map(|id| state.jobs.get(id))
            .map(|job| job.job.enqueued_at_ms)
            .min();
        Ok(QueueDepth {
            waiting: queue.waiting_len() as u64,
            leased: queue.leased.len() as u64,
            oldest_waiting_enqueued_at_ms: oldest,
        })
    }

    async fn lease(
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
        let notify = self.state.lock().deployment(deployment).notify.clone();
        let _waiting = WaitingInLease::new(self, deployment, consumer);
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (leases, next_change) = self.try_lease(deployment, consumer, max_jobs, ttl);
            if !leases.is_empty() {
                return Ok(leases);
            }
            // Wake when a passed-over job becomes takeable, if before the deadline.
            let wake = next_change.map_or(deadline, |at| {
                deadline.min(Instant::now() + Duration::from_millis(at.saturating_sub(unix_millis()) + 1))
            });
            if tokio::time::timeout_at(wake, notified).await.is_err() && wake >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    async fn renew(&self, leases: &[LeaseRef], ttl: Duration) -> Result<Vec<bool>, QueueError> {
        let mut state = self.state.lock();
        let expires_at = Instant::now() + ttl;
        let now_ms = unix_millis();
        for lease in leases {
            state.routing.seen(&lease.deployment, &lease.consumer, now_ms);
        }
        Ok(leases
            .iter()
            .map(|lease| {
                if !Self::holds(&state, lease) {
                    return false;
                }
                if let Some(job) = state.jobs.get_mut(&lease.job_id) {
                    job.status =
                        JobStatus::Leased { consumer: lease.consumer.clone(), expires_at };
                }
                true
            })
            .collect())
    }

    async fn ack(&self, lease: &LeaseRef) -> Result<bool, QueueError> {
        let mut state = self.state.lock();
        if !Self::holds(&state, lease) {
            return Ok(false);
        }
        if let Some(job) = state.jobs.get_mut(&lease.job_id) {
            job.status = JobStatus::Done;
        }
        state.deployment(&lease.deployment).leased.remove(&lease.job_id);
        Ok(true)
    }

    async fn release(&self, lease: &LeaseRef) -> Result<bool, QueueError> {
        let mut state = self.state.lock();
        if !Self::holds(&state, lease) {
            return Ok(false);
        }
        if let Some(job) = state.jobs.get_mut(&lease.job_id) {
            job.status = JobStatus::Waiting;
            job.epoch += 1;
            // Its replica gave it up: any replica takes it now.
            job.job.route = None;
            // A hand-back is not a failed delivery.
            job.deliveries = job.deliveries.saturating_sub(1);
        }
        let queue = state.deployment(&lease.deployment);
        queue.leased.remove(&lease.job_id);
        queue.requeued.push_front(lease.job_id.clone());
        queue.notify.notify_waiters();
        Ok(true)
    }

    async fn reclaim_expired(&self, deployment: &str) -> Result<u64, QueueError> {
        let mut state = self.state.lock();
        let now = Instant::now();
        let expired: Vec<JobId> = state
            .deployments
            .get(deployment)
            .map(|queue| {
                queue
                    .leased
                    .iter()
                    .filter(|id| {
                        state.jobs.get(*id).is_some_and(|job| {
                            matches!(job.status, JobStatus::Leased { expires_at, .. } if expires_at <= now)
                        })
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut redelivered = 0;
        for job_id in expired {
            let job = state.jobs.get_mut(&job_id).expect("listed above");
            job.epoch += 1;
            if job.deliveries >= self.config.max_deliveries {
                let deliveries = job.deliveries;
                state.fail_job(
                    &job_id,
                    "delivery_limit",
                    format!("the job's replica failed {deliveries} times; giving up"),
                );
                continue;
            }
            job.status = JobStatus::Waiting;
            job.job.route = None;
            let queue = state.deployment(deployment);
            queue.leased.remove(&job_id);
            queue.requeued.push_front(job_id);
            redelivered += 1;
        }
        if redelivered > 0 {
            state.deployment(deployment).notify.notify_waiters();
        }
        Ok(redelivered)
    }

    async fn cancel(&self, job_id: &str) -> Result<(), QueueError> {
        let mut state = self.state.lock();
        let Some(job) = state.jobs.get_mut(job_id) else { return Ok(()) };
        match job.status {
            JobStatus::Done => {}
            JobStatus::Waiting => {
                job.cancelled = true;
                state.fail_job(job_id, "cancelled", "the request was cancelled".into());
            }
            // The writer learns it at its next append and stops.
            JobStatus::Leased { .. } => job.cancelled = true,
        }
        Ok(())
    }

    async fn append_output(
        &self,
        lease: &LeaseRef,
        after: u64,
        events: Vec<OutputEvent>,
    ) -> Result<AppendOutcome, QueueError> {
        let mut state = self.state.lock();
        let Some(job) = state.jobs.get(&lease.job_id) else {
            return Err(QueueError::UnknownJob(lease.job_id.clone()));
        };
        if job.cancelled {
            if job.status != JobStatus::Done {
                state.fail_job(&lease.job_id, "cancelled", "the request was cancelled".into());
            }
            return Ok(AppendOutcome::Cancelled);
        }
        // The output ends elsewhere than the writer knows: this same append stored
        // already (its events, up to a terminal one, are the last, under this epoch),
        // or someone else wrote.
        if let Some(output) = state.outputs.get(&lease.job_id).filter(|o| o.last_seq() != after) {
            let stored = events.iter().position(OutputEvent::is_terminal).map_or(events.len(), |i| i + 1) as u64;
            let ours = output.events.last().is_some_and(|e| e.epoch == lease.epoch);
            return Ok(if ours && output.last_seq() == after + stored {
                AppendOutcome::Accepted(output.last_seq())
            } else {
                AppendOutcome::Fenced
            });
        }
        if after != 0 && !state.outputs.contains_key(&lease.job_id) {
            return Ok(AppendOutcome::Fenced);
        }
        if !Self::holds(&state, lease) {
            return Ok(AppendOutcome::Fenced);
        }
        state.routing.seen(&lease.deployment, &lease.consumer, unix_millis());
        let output = state.outputs.entry(lease.job_id.clone()).or_insert_with(OutputStream::new);
        for event in events {
            output.push(lease.epoch, event);
        }
        let last = output.last_seq();
        output.notify.notify_waiters();
        Ok(AppendOutcome::Accepted(last))
    }

    async fn report_replica(
        &self,
        deployment: &str,
        report: &ReplicaReport,
        prefix: Option<&PrefixBlocks>,
    ) -> Result<(), QueueError> {
        let mut state = self.state.lock();
        state.routing.accepting(deployment, &report.replica, report.accepting);
        if !report.accepting {
            // Jobs routed to it may be taken by others now.
            state.deployment(deployment).notify.notify_waiters();
        }
        let reports = state.reports.entry(deployment.to_string()).or_default();
        let held = reports.entry(report.replica.clone()).or_insert_with(|| (report.clone(), None));
        held.0.clone_from(report);
        if let Some(prefix) = prefix {
            held.1 = Some(Arc::new(prefix.clone()));
        }
        Ok(())
    }

    async fn forget_replica(&self, deployment: &str, replica: &str) -> Result<(), QueueError> {
        let mut state = self.state.lock();
        state.routing.accepting(deployment, replica, false);
        state.deployment(deployment).notify.notify_waiters();
        if let Some(reports) = state.reports.get_mut(deployment) {
            reports.remove(replica);
            if reports.is_empty() {
                state.reports.remove(deployment);
            }
        }
        Ok(())
    }

    async fn replica_reports(&self, deployment: &str) -> Result<Vec<ReplicaReport>, QueueError> {
        let now = unix_millis();
        let mut state = self.state.lock();
        let Some(reports) = state.reports.get_mut(deployment) else { return Ok(Vec::new()) };
        // A replica that died without forgetting itself: its report goes for good.
        reports.retain(|_, (report, _)| report.is_fresh(now));
        Ok(reports.values().map(|(report, _)| report.clone()).collect())
    }

    async fn replica_prefix(&self, deployment: &str, replica: &str) -> Result<Option<PrefixBlocks>, QueueError> {
        let state = self.state.lock();
        let held = state.reports.get(deployment).and_then(|reports| reports.get(replica));
        Ok(held.and_then(|(_, prefix)| prefix.as_deref().cloned()))
    }

    async fn read_output(
        &self,
        job_id: &str,
        after_seq: u64,
        block: Duration,
    ) -> Result<Vec<SequencedEvent>, QueueError> {
        let deadline = Instant::now() + block;
        let notify = {
            let state = self.state.lock();
            let Some(output) = state.outputs.get(job_id) else {
                return Err(QueueError::UnknownJob(job_id.to_string()));
            };
            output.notify.clone()
        };
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.state.lock();
                let Some(output) = state.outputs.get(job_id) else {
                    return Err(QueueError::UnknownJob(job_id.to_string()));
                };
                // Sequence numbers are dense from 1, so `after_seq` is an index.
                let start = (after_seq as usize).min(output.events.len());
                if start < output.events.len() {
                    return Ok(output.events[start..].to_vec());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn output_owner(&self, job_id: &str) -> Result<Option<OutputOwner>, QueueError> {
        let mut state = self.state.lock();
        state.sweep(self.config.output_retention);
        if !state.outputs.contains_key(job_id) {
            return Ok(None);
        }
        Ok(state.jobs.get(job_id).map(|job| OutputOwner {
            tenant: job.job.tenant.clone(),
            deployment: job.job.deployment.clone(),
            stream_meta: job.job.stream_meta.clone(),
            readers: job.readers,
        }))
    }

    async fn attach_reader(&self, job_id: &str) -> Result<Option<u64>, QueueError> {
        let mut state = self.state.lock();
        state.sweep(self.config.output_retention);
        if !state.outputs.contains_key(job_id) {
            return Ok(None);
        }
        Ok(state.jobs.get_mut(job_id).map(|job| {
            job.readers += 1;
            job.readers
        }))
    }
}
