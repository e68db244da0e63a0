//! A replica whose lease was lost while its traffic to the queue was held up, and that
//! leases the same job again before it learns so (the job was reclaimed and came back
//! to it): the first attempt's late outputs must not be stored under the second lease,
//! and the first lease's late news (renewal refused) must not end the second attempt.
//! And a draining replica whose last lease was lost exits then, not at its drain grace.
//! Both found by `swell-chaos` (seeds 101 and 106: a moved stream held a token twice; a
//! worker still held draining replicas 30 s after the campaign).
//!
//! The real worker, supervisor and in-memory queue; the queue is wrapped to hold one
//! renewal call back (a fake, local to this test), and the engine is a scripted one that
//! resumes after the tokens already delivered, so the only right output is `t0 t1 …`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use swell_actors::request::{submit, RequestDeps, RequestEvent};
use swell_actors::supervisor::{DeploymentSpec, DeploymentSupervisor};
use swell_actors::worker::{Drain, ExitCause, ReplicaLifecycle, WorkerActor, WorkerConfig};
use swell_autoscaler::AutoscalingPolicy;
use swell_cluster::{
    AdmissionLimits, AppendOutcome, Enqueued, GenerationRequest, InMemoryQueue, InMemoryQueueConfig, Job, Lease, LeaseRef,
    OutputEvent, OutputOwner, PrefixBlocks, Queue, QueueDepth, QueueError, ReplicaReport, SamplingParams,
    SequencedEvent,
};

#[path = "support/scripted.rs"]
mod scripted;
use scripted::{spec, ScriptedFactory};

/// The scripted engine, 15 ms a token: `t0 t1 ...`, resumed after the tokens delivered.
fn factory() -> Arc<ScriptedFactory> {
    Arc::new(ScriptedFactory { cold_start: Duration::from_millis(10), step: Duration::from_millis(15) })
}

/// The in-memory queue, with one renewal call held back for `hold` once `armed`: the
/// replica's traffic is held up long enough for its leases to expire and be reclaimed.
/// Appends made before `appends_held_until` wait until then.
struct HeldRenewal {
    inner: InMemoryQueue,
    armed: AtomicBool,
    hold: Duration,
    appends_held_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Leases granted, by epoch seen.
    max_epoch: AtomicU32,
}

impl HeldRenewal {
    fn new(hold: Duration) -> Arc<Self> {
        Arc::new(HeldRenewal {
            // A held renewal may cost the job more than one delivery (each attempt's
            // lease expires while the renewal loop waits): no delivery limit in the way.
            inner: InMemoryQueue::new(InMemoryQueueConfig { max_deliveries: 100, ..Default::default() }),
            armed: AtomicBool::new(false),
            hold,
            appends_held_until: Default::default(),
            max_epoch: AtomicU32::new(0),
        })
    }
}

#[async_trait]
impl Queue for HeldRenewal {
    async fn enqueue(&self, job: Job, limits: AdmissionLimits) -> Result<Enqueued, QueueError> {
        self.inner.enqueue(job, limits).await
    }
    async fn position(&self, deployment: &str, job_id: &str) -> Result<Option<u64>, QueueError> {
        self.inner.position(deployment, job_id).await
    }
    async fn depth(&self, deployment: &str) -> Result<QueueDepth, QueueError> {
        self.inner.depth(deployment).await
    }
    async fn lease(&self, d: &str, c: &str, max: usize, ttl: Duration, block: Duration) -> Result<Vec<Lease>, QueueError> {
        let leases = self.inner.lease(d, c, max, ttl, block).await?;
        for lease in &leases {
            self.max_epoch.fetch_max(lease.lease.epoch, Ordering::Relaxed);
        }
        Ok(leases)
    }
    async fn renew(&self, leases: &[LeaseRef], ttl: Duration) -> Result<Vec<bool>, QueueError> {
        if self.armed.swap(false, Ordering::Relaxed) {
            // The call reaches the queue only after the hold, as a delayed packet does.
            tokio::time::sleep(self.hold).await;
        }
        self.inner.renew(leases, ttl).await
    }
    async fn ack(&self, lease: &LeaseRef) -> Result<bool, QueueError> {
        self.inner.ack(lease).await
    }
    async fn release(&self, lease: &LeaseRef) -> Result<bool, QueueError> {
        self.inner.release(lease).await
    }
    async fn reclaim_expired(&self, deployment: &str) -> Result<u64, QueueError> {
        self.inner.reclaim_expired(deployment).await
    }
    async fn cancel(&self, job_id: &str) -> Result<(), QueueError> {
        self.inner.cancel(job_id).await
    }
    async fn append_output(&self, lease: &LeaseRef, after: u64, events: Vec<OutputEvent>) -> Result<AppendOutcome, QueueError> {
        let held_until = *self.appends_held_until.lock().unwrap();
        if let Some(until) = held_until {
            tokio::time::sleep_until(until).await;
        }
        self.inner.append_output(lease, after, events).await
    }
    async fn report_replica(&self, d: &str, report: &ReplicaReport, prefix: Option<&PrefixBlocks>) -> Result<(), QueueError> {
        self.inner.report_replica(d, report, prefix).await
    }
    async fn forget_replica(&self, deployment: &str, replica: &str) -> Result<(), QueueError> {
        self.inner.forget_replica(deployment, replica).await
    }
    async fn replica_reports(&self, deployment: &str) -> Result<Vec<ReplicaReport>, QueueError> {
        self.inner.replica_reports(deployment).await
    }
    async fn replica_prefix(&self, deployment: &str, replica: &str) -> Result<Option<PrefixBlocks>, QueueError> {
        self.inner.replica_prefix(deployment, replica).await
    }
    async fn read_output(&self, job_id: &str, after: u64, block: Duration) -> Result<Vec<SequencedEvent>, QueueError> {
        self.inner.read_output(job_id, after, block).await
    }
    async fn output_owner(&self, job_id: &str) -> Result<Option<OutputOwner>, QueueError> {
        self.inner.output_owner(job_id).await
    }
    async fn attach_reader(&self, job_id: &str) -> Result<Option<u64>, QueueError> {
        self.inner.attach_reader(job_id).await
    }
}

#[actix_rt::test]
async fn a_job_leased_again_by_the_replica_that_lost_it_streams_each_token_once() {
    let queue = HeldRenewal::new(Duration::from_millis(600));
    let policy = AutoscalingPolicy { min_replicas: 1, max_replicas: 1, ..AutoscalingPolicy::default() };
    let mut deployment = DeploymentSpec::new("d", factory(), policy);
    deployment.tick = Duration::from_millis(50);
    deployment.worker.lease_ttl = Duration::from_millis(300);
    deployment.worker.lease_block = Duration::from_millis(100);
    let supervisor = DeploymentSupervisor::new(deployment, queue.clone() as Arc<dyn Queue>).start();
    let deps = RequestDeps { queue: queue.clone(), supervisor, quota: None, router: None };

    let max_tokens = 150;
    let mut admitted = submit(spec("job", max_tokens), deps).await.unwrap();
    let mut text = String::new();
    let mut armed = false;
    let finished = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = admitted.events.recv().await {
            match event {
                RequestEvent::Tokens { text: t, .. } => {
                    text.push_str(&t);
                    if !armed && text.len() > 20 {
                        // Hold the replica's next renewal back past its lease's expiry.
                        queue.armed.store(true, Ordering::Relaxed);
                        armed = true;
                    }
                }
                RequestEvent::Finished { .. } => return true,
                RequestEvent::Failed { code, message } => panic!("{code}: {message}"),
                _ => {}
            }
        }
        false
    })
    .await;
    assert_eq!(finished, Ok(true), "the request ends within 20 s");
    // The lease was lost and the job came back to the only replica, at least once.
    assert!(queue.max_epoch.load(Ordering::Relaxed) >= 2, "the job was leased again");
    let expected: String = (0..max_tokens).map(|i| format!("t{i} ")).collect();
    assert_eq!(text, expected, "every token once, in order");
}

/// Collects a replica's lifecycle messages (what its supervisor would get).
struct Recorder(tokio::sync::mpsc::UnboundedSender<ReplicaLifecycle>);

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<ReplicaLifecycle> for Recorder {
    type Result = ();
    fn handle(&mut self, message: ReplicaLifecycle, _: &mut Context<Self>) {
        let _ = self.0.send(message);
    }
}

#[actix_rt::test]
async fn a_draining_replica_whose_last_lease_was_lost_exits_then_not_at_its_drain_grace() {
    let queue = HeldRenewal::new(Duration::from_millis(800));
    let (tx, mut lifecycle) = tokio::sync::mpsc::unbounded_channel();
    let recorder = Recorder(tx).start();
    let grace = Duration::from_secs(60);
    let config = WorkerConfig {
        lease_ttl: Duration::from_millis(300),
        lease_block: Duration::from_millis(100),
        drain_grace: grace,
        node_id: None,
    };
    let worker = WorkerActor::new("d", 0, queue.clone(), factory(), recorder.recipient(), config).start();
    let ready = tokio::time::timeout(Duration::from_secs(5), lifecycle.recv()).await.expect("ready in time");
    assert!(matches!(ready, Some(ReplicaLifecycle::Ready { .. })), "{ready:?}");

    let job = Job {
        id: "long".into(),
        deployment: "d".into(),
        tenant: "t".into(),
        request: GenerationRequest { prompt_tokens: vec![1, 2, 3], params: SamplingParams { max_tokens: 100_000, ..Default::default() } },
        enqueued_at_ms: 0,
        deadline_ms: None,
        priority: Default::default(),
        route: None,
        stream_meta: None,
    };
    queue.enqueue(job, AdmissionLimits { max_queue_depth: 10 }).await.unwrap();
    let mut after = 0;
    'first_tokens: loop {
        for event in queue.read_output("long", after, Duration::from_millis(100)).await.unwrap() {
            after = event.seq;
            if matches!(event.event, OutputEvent::Tokens { .. }) {
                break 'first_tokens;
            }
        }
    }

    // Its traffic held up, the replica is told to drain; its lease expires and the job
    // is reclaimed (as the supervisor's tick does), so the replica holds nothing. The
    // refused renewal is the first it hears of it (its writes are held up longer).
    *queue.appends_held_until.lock().unwrap() = Some(tokio::time::Instant::now() + Duration::from_millis(2_000));
    queue.armed.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let drained_at = tokio::time::Instant::now();
    worker.do_send(Drain);
    while queue.inner.reclaim_expired("d").await.unwrap() == 0 {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let exited = tokio::time::timeout(Duration::from_secs(10), lifecycle.recv()).await.expect("exits well before its 60 s grace");
    assert!(matches!(exited, Some(ReplicaLifecycle::Exited { cause: ExitCause::Drained, .. })), "{exited:?}");
    assert!(drained_at.elapsed() < grace / 4, "{:?}", drained_at.elapsed());
    // The job waits for another replica, which resumes it after what was delivered.
    assert_eq!(queue.depth("d").await.unwrap().waiting, 1);
}
