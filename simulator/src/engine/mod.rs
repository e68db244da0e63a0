//! The discrete-event simulator: one deployment, a queue, replicas running the `sim`
//! engine's performance model with continuous batching and a prefix cache, a routing
//! policy, and a scaling policy ticking in virtual time.
//!
//! Time is integer nanoseconds; events (arrivals, ticks, replicas becoming ready, engine
//! steps ending, promises of routed jobs running out) sit in a heap ordered by (time, sequence number), so runs are
//! deterministic and idle stretches cost nothing but their ticks.
//!
//! A replica's step, as in the `sim` engine: admit queued requests while the batch has
//! room (`max_batch_size`, a per-replica cap a baseline may impose, and the KV cache:
//! prompt + output tokens of every admitted sequence, cached blocks they share counted
//! once, must fit `kv_capacity_tokens`);
//! give the step's prefill budget (`max_prefill_tokens_per_step`) to prefilling
//! sequences in admission order; every sequence already prefilled decodes one token.
//! Step time is [`PerformanceModel::step_duration`]. A request whose prompt prefix is in
//! the replica's cache prefills only the rest; the blocks it computes join the cache
//! (`engine/replica.rs` has the KV accounting). The step that ends a prompt's
//! prefill also yields its first token, and that sequence counts among the step's
//! decoding sequences (as in the `sim` engine: the first token costs a forward pass).
//!
//! Decoding sequences are not visited one by one: a replica keeps their count, the sum
//! of their contexts (what a step's attention reads; it grows by the count every step)
//! and a heap of the step at which each one produces its last token, so a step costs
//! the same for a batch of 5 or 500 and a day of a large tenant runs in seconds.
//! Arrivals are read from the (sorted) trace in order rather than queued in the event
//! heap, which holds only ticks, readiness, step ends and promise ends.
//!
//! Every tick (the policy's tick, 1 s by default) the simulator builds a [`LoadSample`]
//! the way the live supervisor does (`queued` = waiting jobs, `running` = sequences on
//! replicas, arrivals, prompt tokens and generated tokens since the previous sample;
//! the oldest waiting request's age and the waits of the requests admitted since the
//! previous sample, for the queue delay; the KV tokens in use on *ready* replicas
//! (their sequences' context) with the profile's KV capacity and the ready count, for
//! KV utilisation; no wall clock, so schedules do not apply in the simulator),
//! hands it to the policy with the [`ReplicaCounts`], and applies the desired count:
//! new replicas start and are ready after the profile's `cold_start`; retiring takes
//! starting replicas first (newest first), then the least loaded ready ones, which
//! drain (finish their sequences, take nothing new). Like the supervisor, an arrival
//! at zero capacity triggers a tick at once (the live `WorkArrived`; Knative's
//! activator does the same).
//!
//! Routing ([`RoutingSettings`]): with `any`, every job waits in one FIFO queue and a
//! replica with room takes the oldest. With `cache-aware` or `session`, an arriving job
//! is routed among the ready replicas by [`swell_router::Router`] (each replica's view:
//! its cache's [`swell_router::PrefixSummary`] as of that instant, its prefill tokens
//! left plus those of the jobs promised to it, its batch) and promised to the chosen
//! one for the promise bound ([`crate::waiting`]); a job nobody can take yet (no ready
//! replica) waits unpromised.

mod replica;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::Duration;

use swell_autoscaler::{LoadSample, ReplicaCounts};
use swell_router::{JobView, Promise, ReplicaView, Router, RoutingPolicy};
use swell_workers::sim::{PerformanceModel, SimProfile};

use super::policies::ScalingPolicy;
use super::routing::RoutingSettings;
use super::waiting::WaitingJobs;
use super::workload::SimRequest;
use replica::{Replica, ReplicaState, SequenceKv};

const NS: f64 = 1e9;

fn ns(secs: f64) -> u64 {
    (secs * NS).round().max(0.0) as u64
}

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RequestOutcome {
    pub arrival: f64,
    /// Admitted to a replica's batch.
    pub start: f64,
    pub first_token: f64,
    pub finish: f64,
    pub output_tokens: u32,
    pub prompt_tokens: u32,
    /// Prompt tokens found in the replica's prefix cache: not prefilled.
    pub cached_tokens: u32,
    /// Arrived while the deployment had no replica (ready or starting): it waited for a
    /// scale from zero.
    pub at_zero: bool,
}

impl RequestOutcome {
    pub fn ttft(&self) -> f64 {
        self.first_token - self.arrival
    }
    pub fn queue_delay(&self) -> f64 {
        self.start - self.arrival
    }
    /// Mean inter-token latency after the first token (0 for one-token outputs).
    pub fn mean_itl(&self) -> f64 {
        if self.output_tokens > 1 {
            (self.finish - self.first_token) / f64::from(self.output_tokens - 1)
        } else {
            0.0
        }
    }
}

/// One point of the replica timeline, taken at every tick.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TimelinePoint {
    pub t: f64,
    pub ready: u32,
    pub starting: u32,
    pub draining: u32,
    /// Queued + running requests.
    pub concurrency: u64,
    pub arrivals: u64,
}

/// The raw result of one run.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub policy: String,
    pub routing: RoutingPolicy,
    pub outcomes: Vec<RequestOutcome>,
    /// How many times each request finished (conservation checks).
    pub finished_count: Vec<u32>,
    pub replica_seconds: f64,
    pub cold_starts: u32,
    pub timeline: Vec<TimelinePoint>,
    /// The simulated horizon, seconds.
    pub horizon: f64,
    /// Output tokens generated in all.
    pub generated_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    // Order within the same instant: replicas become ready and steps end before the
    // tick looks at the state, arrivals last.
    Ready(usize),
    StepEnd(usize),
    /// The promise of a routed job runs out.
    PromiseEnds(usize),
    Tick,
    Arrival(usize),
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct SimSettings {
    pub profile: SimProfile,
    /// Stop ticking after this (the run still serves every request).
    pub horizon: Option<f64>,
}

pub struct Simulator<'a> {
    requests: &'a [SimRequest],
    model: PerformanceModel,
    profile: SimProfile,
    policy: &'a mut dyn ScalingPolicy,
    per_replica_cap: u64,
    heap: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    /// The next request of the trace to arrive.
    next_arrival: usize,
    now: u64,
    waiting: WaitingJobs,
    replicas: Vec<Replica>,
    /// Each request's share of its replica's KV memory while it runs.
    kv: Vec<SequenceKv>,
    outcomes: Vec<RequestOutcome>,
    finished_count: Vec<u32>,
    unfinished: usize,
    // Counters since the previous sample.
    arrivals: u64,
    prompt_tokens: u64,
    generated: u64,
    started: u64,
    started_wait_ns: u64,
    generated_total: u64,
    /// KV tokens in use on ready replicas.
    kv_in_use_ready: u64,
    cold_starts: u32,
    timeline: Vec<TimelinePoint>,
    tick_ns: u64,
    last_tick: Option<u64>,
    warm: u32,
    /// Ready replicas with nothing to do.
    idle: BTreeSet<usize>,
    /// Ready replicas.
    ready: BTreeSet<usize>,
    routing: RoutingSettings,
    router: Router,
    /// Kept up to date at every transition (a day of Ray Serve creates thousands).
    counts: ReplicaCounts,
    running: u64,
}

impl<'a> Simulator<'a> {
    pub fn new(
        requests: &'a [SimRequest],
        profile: &SimProfile,
        policy: &'a mut dyn ScalingPolicy,
    ) -> Self {
        let cap = policy.per_replica_cap().map_or(u64::MAX, u64::from);
        let tick_ns = policy.tick().as_nanos().max(1) as u64;
        Self {
            requests,
            model: PerformanceModel::new(profile),
            profile: profile.clone(),
            policy,
            per_replica_cap: cap.min(u64::from(profile.max_batch_size.max(1))),
            heap: BinaryHeap::new(),
            seq: 0,
            next_arrival: 0,
            now: 0,
            waiting: WaitingJobs::default(),
            replicas: Vec::new(),
            kv: vec![SequenceKv::default(); requests.len()],
            outcomes: requests
                .iter()
                .map(|r| RequestOutcome {
                    arrival: r.arrival,
                    output_tokens: r.output_tokens,
                    prompt_tokens: r.prompt_tokens,
                    ..Default::default()
                })
                .collect(),
            finished_count: vec![0; requests.len()],
            unfinished: requests.len(),
            arrivals: 0,
            prompt_tokens: 0,
            generated: 0,
            started: 0,
            started_wait_ns: 0,
            generated_total: 0,
            kv_in_use_ready: 0,
            cold_starts: 0,
            timeline: Vec::new(),
            tick_ns,
            last_tick: None,
            warm: 0,
            idle: BTreeSet::new(),
            ready: BTreeSet::new(),
            routing: RoutingSettings::default(),
            router: Router::new(RoutingPolicy::AnyReplica),
            counts: ReplicaCounts::default(),
            running: 0,
        }
    }

    fn push(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, event)));
    }

    /// Runs until every request finished and the trace (or `horizon`) is over.
    /// Starts with `replicas` warm (at least the policy's own initial count), as if the
    /// trace continued a steady state instead of starting cold.
    pub fn warm_start(mut self, replicas: u32) -> Self {
        self.warm = replicas;
        self
    }

    /// Routes and caches as `routing` says (default: `any`, blocks of 16 tokens).
    pub fn routing(mut self, routing: RoutingSettings) -> Self {
        self.routing = routing;
        self.router = Router::new(routing.policy);
        self
    }

    /// Tokens per KV block.
    fn block_tokens(&self) -> u64 {
        u64::from(self.routing.block_tokens.max(1))
    }

    /// The replica's KV capacity in blocks.
    fn capacity_blocks(&self) -> usize {
        (self.profile.kv_capacity_tokens / self.block_tokens()) as usize
    }

    /// A new replica, numbered after the others.
    fn add_replica(&mut self, state: ReplicaState) -> usize {
        let index = self.replicas.len();
        let capacity_blocks = self.capacity_blocks();
        self.replicas
            .push(Replica::new(index, state, self.now, capacity_blocks));
        index
    }

    pub fn run(mut self, horizon: Option<f64>) -> RunResult {
        let last_arrival = self.requests.iter().map(|r| r.arrival).fold(0.0, f64::max);
        let horizon_ns = ns(horizon.unwrap_or(last_arrival).max(last_arrival));
        for _ in 0..self.policy.initial_replicas().max(self.warm) {
            let r = self.add_replica(ReplicaState::Ready);
            self.idle.insert(r);
            self.ready.insert(r);
            self.counts.ready += 1;
        }
        self.push(0, Event::Tick);
        loop {
            // Arrivals come from the trace in order; at the same instant they go before
            // the heap's events.
            let arrival = self
                .requests
                .get(self.next_arrival)
                .map(|r| (ns(r.arrival), self.next_arrival));
            let (at, event) = match (arrival, self.heap.peek()) {
                (Some((at, i)), Some(Reverse((next, _, _)))) if at <= *next => {
                    (at, Event::Arrival(i))
                }
                (Some((at, i)), None) => (at, Event::Arrival(i)),
                (_, Some(_)) => {
                    let Reverse((at, _, event)) = self.heap.pop().expect("peeked");
                    (at, event)
                }
                (None, None) => break,
            };
            if let Event::Arrival(_) = event {
                self.next_arrival += 1;
            }
            self.now = at;
            match event {
                Event::Arrival(i) => self.on_arrival(i),
                Event::Ready(r) => self.on_ready(r),
                Event::StepEnd(r) => self.on_step_end(r),
                Event::PromiseEnds(i) => {
                    if self.waiting.promise_ended(i) {
                        self.wake_idle();
                    }
                }
                Event::Tick => {
                    if self.last_tick != Some(at) {
                        self.tick();
                    }
                    let next = at + self.tick_ns;
                    if next <= horizon_ns || self.unfinished > 0 {
                        self.push(next, Event::Tick);
                    }
                }
            }
        }
        let end = self.now.max(horizon_ns);
        let replica_seconds = self
            .replicas
            .iter()
            .map(|r| {
                (r.stopped_at
                    .unwrap_or(end)
                    .min(end)
                    .saturating_sub(r.started_at)) as f64
                    / NS
            })
            .sum();
        RunResult {
            policy: self.policy.name(),
            routing: self.routing.policy,
            outcomes: self.outcomes,
            finished_count: self.finished_count,
            replica_seconds,
            cold_starts: self.cold_starts,
            timeline: self.timeline,
            horizon: end as f64 / NS,
            generated_tokens: self.generated_total,
        }
    }

    fn counts(&self) -> ReplicaCounts {
        self.counts
    }

    fn running(&self) -> u64 {
        self.running
    }

    fn on_arrival(&mut self, i: usize) {
        self.arrivals += 1;
        self.prompt_tokens += u64::from(self.requests[i].prompt_tokens);
        let routed = self.route(i);
        match routed {
            Some((r, prefill_tokens)) => {
                let promise = Promise::new(
                    self.replicas[r].name.as_str(),
                    Duration::from_nanos(self.now),
                    self.routing.promise_bound,
                );
                self.waiting.push_promised(i, r, promise, prefill_tokens);
                let ends = self.now + self.routing.promise_bound.as_nanos() as u64;
                self.push(ends, Event::PromiseEnds(i));
            }
            None => self.waiting.push_shared(i),
        }
        if self.counts().capacity() == 0 {
            self.outcomes[i].at_zero = true;
            // The supervisor's `WorkArrived`: decide at once.
            self.tick();
        }
        match routed {
            Some((r, _)) => {
                if self.idle.remove(&r) {
                    self.start_step(r);
                }
            }
            None => self.wake_idle(),
        }
    }

    /// The ready replica request `i` is promised to, with the prompt tokens routing
    /// expects it to prefill there; `None`: any replica may take it.
    fn route(&self, i: usize) -> Option<(usize, u64)> {
        if self.routing.policy == RoutingPolicy::AnyReplica {
            return None;
        }
        let request = &self.requests[i];
        let job = JobView {
            block_hashes: &request.block_hashes,
            prompt_tokens: u64::from(request.prompt_tokens),
            block_tokens: self.block_tokens(),
            session: request.session,
        };
        let candidates: Vec<usize> = self.ready.iter().copied().collect();
        let views: Vec<ReplicaView> = candidates
            .iter()
            .map(|&r| {
                let replica = &self.replicas[r];
                ReplicaView {
                    id: &replica.name,
                    summary: replica.cache.summary(),
                    queued_prefill_tokens: replica.prefill_left
                        + self.waiting.promised_prefill_tokens(r),
                    running_sequences: replica.sequences(),
                    can_take_work: true,
                }
            })
            .collect();
        let choice = self
            .router
            .route(&job, &views, self.profile.prefill_tokens_per_second)?;
        let position = views.iter().position(|v| v.id == choice.replica)?;
        Some((candidates[position], choice.uncached_tokens))
    }

    /// Replicas with nothing to do start on the shared queue.
    fn wake_idle(&mut self) {
        while self.waiting.has_shared() {
            let Some(r) = self.idle.pop_first() else {
                break;
            };
            self.start_step(r);
        }
    }

    fn on_ready(&mut self, r: usize) {
        if self.replicas[r].state == ReplicaState::Starting {
            self.replicas[r].state = ReplicaState::Ready;
            self.ready.insert(r);
            self.counts.starting -= 1;
            self.counts.ready += 1;
            self.start_step(r);
        }
    }

    /// Whether the replica named `name` takes work (ready, not draining or gone).
    fn takes_work(&self, name: &str) -> bool {
        self.ready.iter().any(|&r| self.replicas[r].name == name)
    }

    fn start_step(&mut self, r: usize) {
        let now_s = self.now as f64 / NS;
        let kv_cap = self.profile.kv_capacity_tokens.max(1);
        let block_tokens = self.block_tokens();
        let cap = self.per_replica_cap;
        if self.replicas[r].state == ReplicaState::Ready {
            while self.replicas[r].sequences() < cap {
                let Some((i, source)) = self.waiting.next_for(r) else {
                    break;
                };
                let request = &self.requests[i];
                let admission = self.replicas[r].admission(request, kv_cap, block_tokens);
                let replica = &self.replicas[r];
                if replica.kv_reserved + admission.need > kv_cap && replica.sequences() > 0 {
                    break;
                }
                debug_assert!(swell_router::may_take(
                    self.waiting.promise(i),
                    &replica.name,
                    Duration::from_nanos(self.now),
                    |name| self.takes_work(name),
                ));
                self.waiting.take(i, r, source);
                self.router.served(request.session, &self.replicas[r].name);
                self.running += 1;
                self.started += 1;
                self.started_wait_ns += self.now.saturating_sub(ns(request.arrival));
                self.outcomes[i].start = now_s;
                self.outcomes[i].cached_tokens = admission.hit_tokens as u32;
                self.kv[i] = self.replicas[r].admit(i, request, admission, kv_cap, block_tokens);
            }
        }
        let replica = &mut self.replicas[r];
        if replica.sequences() == 0 {
            replica.busy = false;
            if replica.state == ReplicaState::Ready {
                self.idle.insert(r);
            }
            return;
        }
        self.idle.remove(&r);
        let mut budget = self.profile.max_prefill_tokens_per_step.max(1);
        let mut prefill_tokens = 0;
        let mut decode = replica.decoding;
        replica.step_prefill.clear();
        for &(_, left) in &replica.prefilling {
            if budget == 0 {
                break;
            }
            let chunk = left.min(budget);
            budget -= chunk;
            prefill_tokens += chunk;
            replica.step_prefill.push(chunk);
            if chunk == left {
                // The step that ends the prompt's prefill also yields its first token: it
                // is one more sequence of the forward pass, as in the `sim` engine
                // (`decode_sequences` counts it; its KV is not read).
                decode += 1;
            }
        }
        replica.step_decoding = replica.decoding;
        let step = self
            .model
            .step_duration(prefill_tokens, decode, replica.decoding_context)
            .as_nanos()
            .max(1) as u64;
        replica.busy = true;
        self.push(self.now + step, Event::StepEnd(r));
    }

    fn on_step_end(&mut self, r: usize) {
        let now_s = self.now as f64 / NS;
        let requests = self.requests;
        let kv_cap = self.profile.kv_capacity_tokens.max(1);
        let block_tokens = self.block_tokens();
        let replica = &mut self.replicas[r];
        replica.steps += 1;
        let step = replica.steps;
        // Every sequence that was decoding made one token.
        let mut generated = replica.step_decoding;
        replica.decoding_context += replica.step_decoding;
        for k in 0..replica.step_prefill.len() {
            let chunk = replica.step_prefill[k];
            replica.prefilling[k].1 -= chunk;
            replica.prefill_context += chunk;
            replica.prefill_left -= chunk;
            // The blocks this step completed join the cache.
            let (i, left) = replica.prefilling[k];
            let request = &requests[i];
            if !request.block_hashes.is_empty() {
                let computed = u64::from(request.prompt_tokens) - left;
                replica.cache_computed_blocks(
                    &request.block_hashes,
                    &mut self.kv[i],
                    computed,
                    kv_cap,
                    block_tokens,
                );
            }
        }
        let mut done: Vec<usize> = Vec::new();
        // Prefills complete in admission order: the done ones lead the queue.
        while let Some(&(i, 0)) = replica.prefilling.front() {
            replica.prefilling.pop_front();
            generated += 1;
            self.outcomes[i].first_token = now_s;
            let req = &requests[i];
            replica.prefill_context -= u64::from(req.prompt_tokens);
            if req.output_tokens <= 1 {
                done.push(i);
            } else {
                replica.decoding += 1;
                replica.decoding_context += u64::from(req.prompt_tokens) + 1;
                replica
                    .finishes
                    .push(Reverse((step + u64::from(req.output_tokens) - 1, i)));
            }
        }
        while let Some(&Reverse((last, i))) = replica.finishes.peek() {
            if last > step {
                break;
            }
            replica.finishes.pop();
            let req = &requests[i];
            replica.decoding -= 1;
            replica.decoding_context -= u64::from(req.prompt_tokens) + u64::from(req.output_tokens);
            done.push(i);
        }
        replica.busy = false;
        let kv_context = replica.decoding_context + replica.prefill_context;
        if replica.state == ReplicaState::Ready {
            self.kv_in_use_ready = self.kv_in_use_ready + kv_context - replica.kv_context;
        }
        replica.kv_context = kv_context;
        let finished = done.len();
        for i in done {
            let kv = std::mem::take(&mut self.kv[i]);
            self.replicas[r].release(&requests[i].block_hashes, kv, block_tokens);
            self.outcomes[i].finish = now_s;
            self.finished_count[i] += 1;
        }
        self.unfinished -= finished;
        self.running -= finished as u64;
        self.generated += generated;
        self.generated_total += generated;
        let replica = &mut self.replicas[r];
        if replica.state == ReplicaState::Draining && replica.sequences() == 0 {
            self.counts.draining -= 1;
            replica.stop(self.now);
            return;
        }
        self.start_step(r);
    }

    fn tick(&mut self) {
        self.last_tick = Some(self.now);
        let now = Duration::from_nanos(self.now);
        let running = self.running();
        let counts = self.counts();
        let oldest_wait = self
            .waiting
            .oldest()
            .map_or(0, |i| self.now.saturating_sub(ns(self.requests[i].arrival)));
        let sample = LoadSample {
            at: now,
            queued: self.waiting.len() as u64,
            running,
            arrivals: std::mem::take(&mut self.arrivals),
            prompt_tokens: std::mem::take(&mut self.prompt_tokens),
            generated_tokens: std::mem::take(&mut self.generated),
            oldest_wait: Duration::from_nanos(oldest_wait),
            started: std::mem::take(&mut self.started),
            started_wait: Duration::from_nanos(std::mem::take(&mut self.started_wait_ns)),
            kv_tokens_used: self.kv_in_use_ready,
            kv_capacity_tokens: self.profile.kv_capacity_tokens,
            ready_replicas: counts.ready,
            unix_ms: None,
        };
        #[cfg(debug_assertions)]
        {
            let mut check = ReplicaCounts::default();
            for r in &self.replicas {
                match r.state {
                    ReplicaState::Starting => check.starting += 1,
                    ReplicaState::Ready => check.ready += 1,
                    ReplicaState::Draining => check.draining += 1,
                    ReplicaState::Stopped => {}
                }
            }
            debug_assert_eq!(check, counts, "incremental replica counts");
            let batch: u64 = self.replicas.iter().map(Replica::sequences).sum();
            debug_assert_eq!(batch, running, "incremental running count");
            let kv: u64 = self
                .replicas
                .iter()
                .filter(|r| r.state == ReplicaState::Ready)
                .map(|r| r.kv_context)
                .sum();
            debug_assert_eq!(kv, self.kv_in_use_ready, "incremental KV in use");
            let ready: BTreeSet<usize> = (0..self.replicas.len())
                .filter(|&r| self.replicas[r].state == ReplicaState::Ready)
                .collect();
            debug_assert_eq!(ready, self.ready, "incremental ready set");
        }
        self.timeline.push(TimelinePoint {
            t: now.as_secs_f64(),
            ready: counts.ready,
            starting: counts.starting,
            draining: counts.draining,
            concurrency: sample.queued + sample.running,
            arrivals: sample.arrivals,
        });
        let desired = self.policy.decide(now, &sample, counts);
        let current = counts.capacity();
        if desired > current {
            for _ in current..desired {
                let id = self.add_replica(ReplicaState::Starting);
                self.counts.starting += 1;
                self.cold_starts += 1;
                let at = self.now + self.profile.cold_start.as_nanos() as u64;
                self.push(at, Event::Ready(id));
            }
        } else if desired < current {
            let mut candidates: Vec<(bool, u64, u64, usize)> = self
                .replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| matches!(r.state, ReplicaState::Starting | ReplicaState::Ready))
                .map(|(i, r)| {
                    (
                        r.state == ReplicaState::Ready,
                        r.sequences(),
                        u64::MAX - r.started_at,
                        i,
                    )
                })
                .collect();
            // Starting first (newest first), then the least loaded ready ones.
            candidates.sort();
            let mut orphaned = 0;
            for &(_, _, _, i) in candidates.iter().take((current - desired) as usize) {
                let r = &mut self.replicas[i];
                self.idle.remove(&i);
                match r.state {
                    ReplicaState::Starting => self.counts.starting -= 1,
                    _ => {
                        self.counts.ready -= 1;
                        self.kv_in_use_ready -= r.kv_context;
                        self.ready.remove(&i);
                        // Its promised jobs: any replica may take them now.
                        orphaned += self.waiting.replica_left(i);
                    }
                }
                if r.sequences() == 0 && !r.busy {
                    r.stop(self.now);
                } else {
                    r.state = ReplicaState::Draining;
                    self.counts.draining += 1;
                }
            }
            if orphaned > 0 {
                self.wake_idle();
            }
        } else {
            return;
        }
        self.policy.scaled(now, current, desired);
    }
}
