//! `DeploymentSupervisor`: one per deployment. It owns the deployment's replica set and
//! its autoscaler, samples the load every tick, asks the policy how many replicas it
//! wants, and spawns or retires `WorkerActor`s to match, down to zero.
//!
//! Written by hand rather than with `actix::Supervisor` (which restarts an actor only
//! when it stops itself and reuses the old value): replicas are built fresh from the
//! deployment's engine factory, failures are counted by cause, and a failed start is
//! retried with exponential back-off (1 s doubling to a 60 s cap).
//!
//! - **Scale up** starts new replicas; until they are ready they count as coming
//!   capacity. Work that arrives while the deployment has no replica starts one at
//!   once (`WorkArrived` triggers an immediate tick; the policy has no window for it).
//! - **Scale down** picks the replicas to retire (still-starting ones first, then the
//!   least loaded) and sends them `Drain`: they stop taking work and finish their
//!   in-flight streams before they exit.
//! - **Liveness is progress:** a ready replica that holds work but whose step counter has
//!   not moved for `stall_timeout` is abandoned (its jobs go back to the queue).
//! - Every scale event is recorded with its reason and inputs, exported as metrics and
//!   shown by `ObserveDeployment`, and so are the last decisions (with their signals,
//!   per-target recommendations, rules fired and burst/schedule/predictive effects).
//! - **In a cluster** (`placement_driven`), the replica count is not this node's to
//!   decide: the leader's autoscaler decides it for the whole cluster and places replicas
//!   on nodes; [`SetAssignment`] tells the supervisor its share, which it starts or drains
//!   like any scale (reason `placement`). Each tick writes the deployment's load on this
//!   node into its [`LoadReport`], which the node's heartbeat carries to the leader.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use swell_cluster::{unix_millis, DeploymentLoad, Queue, QueueDepth};
use swell_workers::{ColdStartReport, EngineDescription, EngineFactory};
use tokio::sync::oneshot;
use tokio::time::Instant;

use swell_autoscaler::{
    Autoscaler, AutoscalingPolicy, Decision, DecisionHistory, LoadSample, ReplicaCounts, ScaleDirection,
};
mod messages;
mod status;

pub use messages::*;
pub use status::*;

use crate::backoff::Backoff;
use crate::renewal::RenewalCurve;
use crate::wait_estimate::WaitInputs;
use crate::wait_measurements::WaitMeasurements;
use crate::metric_series;
use crate::metrics as m;
use crate::worker::{
    Drain, ExitCause, ReplicaGauges, ReplicaLifecycle, ReplicaState, WorkerActor, WorkerConfig,
};

/// Everything a supervisor needs to run a deployment.
#[derive(Clone)]
pub struct DeploymentSpec {
    pub name: String,
    pub factory: Arc<dyn EngineFactory>,
    pub autoscaling: AutoscalingPolicy,
    pub worker: WorkerConfig,
    /// How often load is sampled and the policy consulted.
    pub tick: Duration,
    /// A ready replica holding work whose step counter does not move for this long is
    /// considered hung and abandoned.
    pub stall_timeout: Duration,
    /// Whether this node starts replicas. `false` on a gateway node: the supervisor
    /// only samples the (shared) queue for the status API and never spawns a replica.
    pub runs_replicas: bool,
    /// Whether the queue is shared with other nodes (Redis). Then the queue's depth is
    /// the whole cluster's: on shutdown or deletion this node drains its own replicas
    /// and stops, without waiting for the cluster's queue to empty (other nodes serve
    /// it).
    pub shared_queue: bool,
    /// In a cluster whose leader places replicas: the replica count on this node is what
    /// the placement assigns it ([`SetAssignment`]), not what this node's autoscaler
    /// decides (that one still runs on the local samples, for the status API's load view).
    pub placement_driven: bool,
    /// Where every tick writes this deployment's load on this node, for the node's
    /// heartbeat (the leader's autoscaler works on the sum over the nodes).
    pub load_report: Option<LoadReport>,
    /// Replicas reserved by tenants: a floor under the policy's count ([`SetReservedFloor`]).
    pub reserved_floor: u32,
}

/// This node's load of one deployment, as the last tick saw it (shared with the cluster
/// coordinator, which puts it in the node's heartbeat).
pub type LoadReport = Arc<parking_lot::Mutex<DeploymentLoad>>;

impl DeploymentSpec {
    pub fn new(name: impl Into<String>, factory: Arc<dyn EngineFactory>, autoscaling: AutoscalingPolicy) -> Self {
        Self {
            name: name.into(),
            factory,
            autoscaling,
            worker: WorkerConfig::default(),
            tick: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(120),
            runs_replicas: true,
            shared_queue: false,
            placement_driven: false,
            load_report: None,
            reserved_floor: 0,
        }
    }
}

struct ReplicaEntry {
    id: String,
    addr: Addr<WorkerActor>,
    state: ReplicaState,
    gauges: Arc<ReplicaGauges>,
    created_at: Instant,
    cold_start: Option<(Duration, ColdStartReport)>,
    last_steps: u64,
    last_progress_at: Instant,
    /// No replica was ready when it was spawned: its cold start is one from zero.
    from_zero: bool,
}

const MAX_EVENTS: usize = 100;
const EARLY_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Replacing failed replicas: 1 s doubling to 60 s, reset by a replica that comes up.
fn restart_backoff() -> Backoff {
    Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
}

pub struct DeploymentSupervisor {
    spec: DeploymentSpec,
    description: EngineDescription,
    queue: Arc<dyn Queue>,
    autoscaler: Autoscaler,
    replicas: BTreeMap<u64, ReplicaEntry>,
    next_ordinal: u64,
    origin: Instant,
    events: VecDeque<ScaleEvent>,
    last_decision: Option<Decision>,
    decisions: DecisionHistory,
    last_depth: QueueDepth,
    arrivals: u64,
    prompt_tokens: u64,
    /// Requests that left the queue since the last sample, and their summed waits.
    started: u64,
    started_wait: Duration,
    generated_total_seen: u64,
    retired_generated: u64,
    restarts: BTreeMap<&'static str, u64>,
    last_failure: Option<ReplicaFailure>,
    backoff: Backoff,
    restart_not_before: Option<Instant>,
    tick_in_flight: bool,
    deleting: bool,
    deleted_waiters: Vec<oneshot::Sender<()>>,
    /// Counters since start (for the load report).
    arrivals_total: u64,
    prompt_tokens_total: u64,
    started_total: u64,
    started_wait_total: Duration,
    /// With `placement_driven`: the replicas the cluster's placement gives this node
    /// (`None` until a placement was read: then nothing is started).
    assigned: Option<u32>,
    /// When a gateway last sampled the queue early because work arrived at an idle queue.
    last_early_sample: Option<Instant>,
    /// Measured service time and cold starts, for wait estimates.
    wait: WaitMeasurements,
}

impl DeploymentSupervisor {
    pub fn new(spec: DeploymentSpec, queue: Arc<dyn Queue>) -> Self {
        let description = spec.factory.describe();
        Self {
            autoscaler: Autoscaler::new(with_reserved_floor(&spec.autoscaling, spec.reserved_floor))
                .with_expected_cold_start(description.expected_cold_start)
                .with_capacity(swell_autoscaler::ReplicaCapacity::from_description(&description)),
            wait: WaitMeasurements::new(description.expected_cold_start),
            description,
            spec,
            queue,
            replicas: BTreeMap::new(),
            next_ordinal: 1,
            origin: Instant::now(),
            events: VecDeque::new(),
            last_decision: None,
            decisions: DecisionHistory::default(),
            last_depth: QueueDepth::default(),
            arrivals: 0,
            prompt_tokens: 0,
            started: 0,
            started_wait: Duration::ZERO,
            generated_total_seen: 0,
            retired_generated: 0,
            restarts: BTreeMap::new(),
            last_failure: None,
            backoff: restart_backoff(),
            restart_not_before: None,
            tick_in_flight: false,
            deleting: false,
            deleted_waiters: Vec::new(),
            arrivals_total: 0,
            prompt_tokens_total: 0,
            started_total: 0,
            started_wait_total: Duration::ZERO,
            assigned: None,
            last_early_sample: None,
        }
    }

    fn now(&self) -> Duration {
        Instant::now().duration_since(self.origin)
    }

    fn counts(&self) -> ReplicaCounts {
        let mut counts = ReplicaCounts::default();
        for replica in self.replicas.values() {
            match replica.state {
                ReplicaState::Ready => counts.ready += 1,
                ReplicaState::Starting => counts.starting += 1,
                ReplicaState::Draining => counts.draining += 1,
            }
        }
        counts
    }

    fn readiness(&self) -> Readiness {
        let slots_per_replica = self.description.max_batch_size.max(1);
        if !self.spec.runs_replicas {
            // A gateway does not know the worker nodes' replicas: don't claim one is
            // starting. Its estimate is filled from the replicas' reports by the caller
            // (`Readiness::with_reported_slots`); until then a replica is taken as
            // starting now (the leader starts one for work queued at zero).
            let wait = WaitInputs {
                slots_per_replica,
                starting_ready_in: vec![self.wait.cold_start(true)],
                service: self.service_curve(),
                ..WaitInputs::default()
            };
            return Readiness { ready: 1, starting: 0, ready_in: None, wait, reported: true, assumed_start: true };
        }
        let counts = self.counts();
        let mut starting_ready_in: Vec<Duration> = self
            .replicas
            .values()
            .filter(|r| r.state == ReplicaState::Starting)
            .map(|r| self.wait.cold_start(r.from_zero).saturating_sub(r.created_at.elapsed()))
            .collect();
        let assumed_start =
            counts.ready + counts.starting == 0 && self.autoscaler.policy().max_replicas > 0 && !self.deleting;
        if assumed_start {
            // Work queued at zero starts a replica at once (its tick may not have run yet).
            starting_ready_in.push(self.wait.cold_start(true));
        }
        let (free_slots, busy_slots) = self
            .replicas
            .values()
            .filter(|r| r.state == ReplicaState::Ready)
            .map(|r| r.gauges.load().min(u64::from(slots_per_replica)))
            .fold((0, 0), |(free, busy), load| (free + u64::from(slots_per_replica) - load, busy + load));
        let ready_in = starting_ready_in.iter().min().copied();
        let wait = WaitInputs {
            slots_per_replica,
            free_slots,
            busy_slots,
            starting_ready_in,
            service: self.service_curve(),
        };
        // A queue shared with other nodes is served by their replicas too: count the
        // slots every replica reports.
        let reported = self.spec.shared_queue;
        Readiness { ready: counts.ready, starting: counts.starting, ready_in, wait, reported, assumed_start }
    }

    /// The measured service-time distribution, or until a job finished, the engine
    /// profile's service time for the mean arriving request.
    fn service_curve(&self) -> Option<Arc<RenewalCurve>> {
        self.wait.service_curve().or_else(|| {
            let slots = self.description.max_batch_size;
            let prior = self.wait.prior_service_time(self.description.performance.as_ref(), slots)?;
            RenewalCurve::from_samples(&[prior.as_secs_f64()]).map(Arc::new)
        })
    }

    fn publish_replica_gauges(&self) {
        let counts = self.counts();
        m::replicas(&self.spec.name, "ready", counts.ready);
        m::replicas(&self.spec.name, "starting", counts.starting);
        m::replicas(&self.spec.name, "draining", counts.draining);
    }

    /// Sample the queue (async), then decide.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.tick_in_flight {
            return;
        }
        self.tick_in_flight = true;
        let queue = self.queue.clone();
        let name = self.spec.name.clone();
        ctx.spawn(
            async move {
                if let Err(error) = queue.reclaim_expired(&name).await {
                    tracing::warn!(deployment = %name, %error, "reclaiming expired leases failed");
                }
                queue.depth(&name).await
            }
            .into_actor(self)
            .map(|depth, supervisor, ctx| {
                supervisor.tick_in_flight = false;
                match depth {
                    Ok(depth) => supervisor.evaluate(depth, ctx),
                    Err(error) => {
                        tracing::warn!(deployment = %supervisor.spec.name, %error, "queue depth unavailable");
                        // A shared queue's depth does not gate shutdown: don't let an
                        // unreachable Redis hold it up.
                        if supervisor.spec.shared_queue {
                            if supervisor.deleting && supervisor.spec.runs_replicas {
                                let counts = supervisor.counts();
                                let current = counts.ready + counts.starting;
                                if current > 0 {
                                    supervisor.apply(0, "deleting", "the node is shutting down".into(), ctx);
                                }
                            }
                            supervisor.complete_deletion_if_done(ctx);
                        }
                    }
                }
            }),
        );
    }

    fn evaluate(&mut self, depth: QueueDepth, ctx: &mut Context<Self>) {
        self.last_depth = depth;
        m::queue_depth(&self.spec.name, depth.waiting);
        let now = self.now();

        let live_generated: u64 =
            self.replicas.values().map(|r| r.gauges.generated_tokens.load(Ordering::Relaxed)).sum();
        let generated_total = live_generated + self.retired_generated;
        let generated = generated_total.saturating_sub(self.generated_total_seen);
        self.generated_total_seen = generated_total;
        // KV use of ready replicas only: a warming replica's numbers are not load.
        let (ready_replicas, kv_tokens_used) = self
            .replicas
            .values()
            .filter(|r| r.state == ReplicaState::Ready)
            .fold((0u32, 0u64), |(count, kv), r| (count + 1, kv + r.gauges.kv_tokens_used.load(Ordering::Relaxed)));
        let unix_ms = unix_millis();
        self.autoscaler.record(LoadSample {
            at: now,
            queued: depth.waiting,
            running: depth.leased,
            arrivals: std::mem::take(&mut self.arrivals),
            prompt_tokens: std::mem::take(&mut self.prompt_tokens),
            generated_tokens: generated,
            oldest_wait: depth
                .oldest_waiting_enqueued_at_ms
                .map_or(Duration::ZERO, |at| Duration::from_millis(unix_ms.saturating_sub(at))),
            started: std::mem::take(&mut self.started),
            started_wait: std::mem::take(&mut self.started_wait),
            kv_tokens_used,
            kv_capacity_tokens: self.description.kv_capacity_tokens,
            ready_replicas,
            unix_ms: Some(unix_ms),
        });
        self.check_progress(ctx);
        self.write_load_report(now);

        let counts = self.counts();
        let current = counts.ready + counts.starting;
        if !self.spec.runs_replicas {
            // A gateway: the sample feeds the status API; no replicas to decide on.
            self.complete_deletion_if_done(ctx);
            return;
        }
        if self.deleting {
            let busy = !self.spec.shared_queue && depth.waiting + depth.leased > 0;
            let desired = if busy { current.max(1) } else { 0 };
            if desired != current {
                self.apply(desired, "deleting", "the deployment is being deleted".into(), ctx);
            }
            self.complete_deletion_if_done(ctx);
            return;
        }
        if self.spec.placement_driven {
            self.follow_assignment(ctx);
            return;
        }
        let decision = self.autoscaler.decide(now, counts);
        m::desired_replicas(&self.spec.name, decision.desired);
        m::autoscaler_decision(&self.spec.name, &decision);
        if decision.desired != current {
            self.apply(decision.desired, decision.reason.as_str(), decision.detail.clone(), ctx);
        }
        self.decisions.push(decision.clone());
        self.last_decision = Some(decision);
        self.publish_replica_gauges();
    }

    /// Write this tick's view of the deployment on this node for the heartbeat.
    fn write_load_report(&self, now: Duration) {
        let Some(report) = &self.spec.load_report else { return };
        let counts = self.counts();
        let averages = self.autoscaler.load_averages(now);
        let live_generated: u64 =
            self.replicas.values().map(|r| r.gauges.generated_tokens.load(Ordering::Relaxed)).sum();
        let in_flight: u64 = self.replicas.values().map(|r| r.gauges.load()).sum();
        *report.lock() = DeploymentLoad {
            replicas: counts.ready + counts.starting,
            ready: counts.ready,
            draining: counts.draining,
            in_flight,
            queued: self.last_depth.waiting,
            oldest_wait_ms: self
                .last_depth
                .oldest_waiting_enqueued_at_ms
                .map(|at| unix_millis().saturating_sub(at)),
            requests_per_second: averages.requests_per_second,
            tokens_generated_per_second: averages.tokens_generated_per_second,
            prompt_tokens_per_second: averages.prompt_tokens_per_second,
            arrivals_total: self.arrivals_total,
            prompt_tokens_total: self.prompt_tokens_total,
            generated_tokens_total: live_generated + self.retired_generated,
            started_total: self.started_total,
            started_wait_ms_total: self.started_wait_total.as_millis() as u64,
            kv_tokens_used: self
                .replicas
                .values()
                .filter(|r| r.state == ReplicaState::Ready)
                .map(|r| r.gauges.kv_tokens_used.load(Ordering::Relaxed))
                .sum(),
            kv_capacity_tokens: self.description.kv_capacity_tokens,
        };
    }

    /// With `placement_driven`: start or retire replicas to match the assignment.
    fn follow_assignment(&mut self, ctx: &mut Context<Self>) {
        let counts = self.counts();
        let current = counts.ready + counts.starting;
        let desired = self.assigned.unwrap_or(0);
        m::desired_replicas(&self.spec.name, desired);
        if desired != current {
            let detail = format!("the cluster's placement assigns {desired} replica(s) to this node");
            self.apply(desired, "placement", detail, ctx);
        }
        self.publish_replica_gauges();
    }

    /// Move the replica count from its current value to `desired`.
    fn apply(&mut self, desired: u32, reason: &'static str, detail: String, ctx: &mut Context<Self>) {
        let counts = self.counts();
        let current = counts.ready + counts.starting;
        let direction;
        if desired > current {
            if let Some(not_before) = self.restart_not_before {
                if Instant::now() < not_before {
                    tracing::debug!(deployment = %self.spec.name, "replica start delayed by back-off");
                    return;
                }
            }
            direction = ScaleDirection::Up;
            for _ in current..desired {
                self.spawn_replica(ctx);
            }
        } else if desired < current {
            direction = ScaleDirection::Down;
            let mut candidates: Vec<(u64, bool, u64, Instant)> = self
                .replicas
                .iter()
                .filter(|(_, r)| r.state != ReplicaState::Draining)
                .map(|(ordinal, r)| {
                    (*ordinal, r.state == ReplicaState::Ready, r.gauges.load(), r.created_at)
                })
                .collect();
            // Starting replicas first (newest first), then the least loaded ready ones.
            candidates.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.cmp(&b.2)).then(b.3.cmp(&a.3)));
            for (ordinal, _, _, _) in candidates.into_iter().take((current - desired) as usize) {
                if let Some(replica) = self.replicas.get_mut(&ordinal) {
                    replica.state = ReplicaState::Draining;
                    replica.addr.do_send(Drain);
                    tracing::info!(replica = %replica.id, reason, "retiring replica");
                }
            }
        } else {
            return;
        }
        self.autoscaler.scaled(self.now(), current, desired);
        m::scale_event(
            &self.spec.name,
            if direction == ScaleDirection::Up { "up" } else { "down" },
            reason,
        );
        tracing::info!(deployment = %self.spec.name, from = current, to = desired, reason, %detail, "scale");
        self.events.push_back(ScaleEvent { at_ms: unix_millis(), from: current, to: desired, direction, reason, detail });
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
        self.publish_replica_gauges();
    }

    fn spawn_replica(&mut self, ctx: &mut Context<Self>) {
        let ordinal = self.next_ordinal;
        self.next_ordinal += 1;
        let worker = WorkerActor::new(
            &self.spec.name,
            ordinal,
            self.queue.clone(),
            self.spec.factory.clone(),
            ctx.address().recipient(),
            self.spec.worker.clone(),
        );
        let id = worker.replica_id().to_string();
        let gauges = worker.gauges();
        let addr = worker.start();
        metric_series::live("replica", &id);
        tracing::info!(replica = %id, "starting replica");
        let now = Instant::now();
        let from_zero = self.counts().ready == 0;
        self.replicas.insert(
            ordinal,
            ReplicaEntry {
                id,
                addr,
                state: ReplicaState::Starting,
                gauges,
                created_at: now,
                cold_start: None,
                last_steps: 0,
                last_progress_at: now,
                from_zero,
            },
        );
    }

    /// Abandon ready replicas that hold work but make no progress.
    fn check_progress(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut stalled = Vec::new();
        for (ordinal, replica) in &mut self.replicas {
            let steps = replica.gauges.steps.load(Ordering::Relaxed);
            if steps != replica.last_steps || replica.gauges.load() == 0 {
                replica.last_steps = steps;
                replica.last_progress_at = now;
            } else if replica.state == ReplicaState::Ready
                && now.duration_since(replica.last_progress_at) >= self.spec.stall_timeout
            {
                stalled.push(*ordinal);
            }
        }
        for ordinal in stalled {
            if let Some(replica) = self.replicas.get(&ordinal) {
                tracing::error!(replica = %replica.id, "replica made no progress; abandoning it");
                replica.addr.do_send(crate::worker::Abandon);
            }
            let _ = ctx;
        }
    }

    fn complete_deletion_if_done(&mut self, ctx: &mut Context<Self>) {
        let queue_empty = self.spec.shared_queue || self.last_depth.waiting + self.last_depth.leased == 0;
        if self.deleting && self.replicas.is_empty() && queue_empty {
            for waiter in self.deleted_waiters.drain(..) {
                let _ = waiter.send(());
            }
            self.publish_replica_gauges();
            ctx.stop();
        }
    }

    fn status(&self) -> DeploymentStatus {
        let counts = self.counts();
        let now_ms = unix_millis();
        DeploymentStatus {
            name: self.spec.name.clone(),
            engine: self.description.clone(),
            replicas: ReplicaCountsView {
                desired: if self.spec.placement_driven {
                    self.assigned.unwrap_or(0)
                } else {
                    self.last_decision.as_ref().map(|d| d.desired).unwrap_or(counts.ready + counts.starting)
                },
                ready: counts.ready,
                starting: counts.starting,
                draining: counts.draining,
            },
            queue: QueueView {
                depth: self.last_depth.waiting,
                in_flight: self.last_depth.leased,
                oldest_wait_seconds: self
                    .last_depth
                    .oldest_waiting_enqueued_at_ms
                    .map(|at| now_ms.saturating_sub(at) as f64 / 1000.0),
            },
            load: self.autoscaler.load_averages(self.now()),
            autoscaling: self.autoscaler.policy().clone(),
            last_decision: self.last_decision.clone(),
            decisions: self.decisions.records(),
            scale_events: self.events.iter().cloned().collect(),
            replica_details: self
                .replicas
                .values()
                .map(|r| ReplicaDetail {
                    replica: r.id.clone(),
                    state: r.state,
                    active_sequences: r.gauges.load(),
                    steps: r.gauges.steps.load(Ordering::Relaxed),
                    generated_tokens: r.gauges.generated_tokens.load(Ordering::Relaxed),
                    age_seconds: r.created_at.elapsed().as_secs_f64(),
                    cold_start_seconds: r.cold_start.as_ref().map(|(d, _)| d.as_secs_f64()),
                    cold_start_stages: r.cold_start.as_ref().map(|(_, report)| report.clone()),
                })
                .collect(),
            restarts: self.restarts.clone(),
            last_failure: self.last_failure.clone(),
            restart_backoff_seconds: self
                .restart_not_before
                .map(|at| at.saturating_duration_since(Instant::now()).as_secs_f64())
                .filter(|left| *left > 0.0),
            deleting: self.deleting,
            reserved_floor: self.spec.reserved_floor,
            assigned: self.spec.placement_driven.then_some(self.assigned),
        }
    }
}

impl Actor for DeploymentSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        metric_series::live("deployment", &self.spec.name);
        tracing::info!(deployment = %self.spec.name, engine = %self.description.engine, model = %self.description.model, "deployment started");
        self.publish_replica_gauges();
        self.tick(ctx);
        ctx.run_interval(self.spec.tick, |supervisor, ctx| supervisor.tick(ctx));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        for replica in self.replicas.values() {
            metric_series::gone("replica", &replica.id);
        }
        metric_series::gone("deployment", &self.spec.name);
        tracing::info!(deployment = %self.spec.name, "deployment stopped");
    }
}

impl Handler<ReplicaLifecycle> for DeploymentSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ReplicaLifecycle, ctx: &mut Context<Self>) {
        match msg {
            ReplicaLifecycle::Ready { ordinal, cold_start, elapsed } => {
                m::cold_start(&self.spec.name, elapsed);
                self.last_failure = None;
                self.backoff.reset();
                self.restart_not_before = None;
                if let Some(replica) = self.replicas.get_mut(&ordinal) {
                    self.wait.replica_ready(elapsed, replica.from_zero);
                    replica.cold_start = Some((elapsed, cold_start));
                    if replica.state == ReplicaState::Starting {
                        replica.state = ReplicaState::Ready;
                    }
                }
                self.publish_replica_gauges();
            }
            ReplicaLifecycle::Exited { ordinal, cause } => {
                let Some(replica) = self.replicas.remove(&ordinal) else { return };
                metric_series::gone("replica", &replica.id);
                self.retired_generated += replica.gauges.generated_tokens.load(Ordering::Relaxed);
                if cause != ExitCause::Drained {
                    let label = cause.label();
                    self.last_failure = Some(ReplicaFailure {
                        at_ms: unix_millis(),
                        replica: replica.id.clone(),
                        cause: label,
                        message: cause.message().unwrap_or_default().to_string(),
                    });
                    *self.restarts.entry(label).or_default() += 1;
                    m::replica_restart(&self.spec.name, label);
                    let wait = self.backoff.failed();
                    self.restart_not_before = Some(Instant::now() + wait);
                    tracing::warn!(replica = %replica.id, ?cause, backoff = ?wait, "replica failed; it will be replaced");
                    ctx.run_later(wait, |supervisor, ctx| supervisor.tick(ctx));
                }
                self.publish_replica_gauges();
                self.tick(ctx);
            }
        }
    }
}

#[cfg(test)]
mod reserved_floor_tests {
    use super::*;

    #[test]
    fn the_reserved_floor_only_raises_min_replicas_and_stays_within_max() {
        let policy = AutoscalingPolicy { min_replicas: 1, max_replicas: 4, ..AutoscalingPolicy::default() };
        assert_eq!(with_reserved_floor(&policy, 0).min_replicas, 1);
        assert_eq!(with_reserved_floor(&policy, 3).min_replicas, 3);
        assert_eq!(with_reserved_floor(&policy, 9).min_replicas, 4);
        assert_eq!(with_reserved_floor(&policy, 3).max_replicas, 4);
        let raised = with_reserved_floor(&policy, 2);
        assert_eq!(AutoscalingPolicy { min_replicas: 1, ..raised }, policy, "nothing else changes");
    }
}
