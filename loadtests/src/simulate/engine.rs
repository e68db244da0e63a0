//! The discrete-event simulator: one deployment, a FIFO queue, replicas running the `sim`
//! engine's performance model with continuous batching, and a scaling policy ticking in
//! virtual time.
//!
//! Time is integer nanoseconds; events (arrivals, ticks, replicas becoming ready, engine
//! steps ending) sit in a heap ordered by (time, sequence number), so runs are
//! deterministic and idle stretches cost nothing but their ticks.
//!
//! A replica's step, as in the `sim` engine: admit queued requests while the batch has
//! room (`max_batch_size`, a per-replica cap a baseline may impose, and the KV cache:
//! prompt + output tokens of every admitted sequence must fit `kv_capacity_tokens`);
//! give the step's prefill budget (`max_prefill_tokens_per_step`) to prefilling
//! sequences in admission order; every sequence already prefilled decodes one token.
//! Step time is [`PerformanceModel::step_duration`]. The step that ends a prompt's
//! prefill also yields its first token, and that sequence counts among the step's
//! decoding sequences (as in the `sim` engine: the first token costs a forward pass).
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

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

use swell_actors::autoscaler::{LoadSample, ReplicaCounts};
use swell_workers::sim::{PerformanceModel, SimProfile};

use super::policies::ScalingPolicy;
use super::workload::SimRequest;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplicaState {
    Starting,
    Ready,
    Draining,
    Stopped,
}

#[derive(Debug, Clone)]
struct Sequence {
    request: usize,
    prefill_left: u64,
    context: u64,
    generated: u32,
    reserved_kv: u64,
}

#[derive(Debug)]
struct Replica {
    state: ReplicaState,
    started_at: u64,
    stopped_at: Option<u64>,
    batch: Vec<Sequence>,
    busy: bool,
    kv_reserved: u64,
    /// KV tokens in use: the context of the batch's sequences.
    kv_context: u64,
    /// What the current step does, applied when it ends.
    step_prefill: Vec<(usize, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    // Order within the same instant: replicas become ready and steps end before the
    // tick looks at the state, arrivals last.
    Ready(usize),
    StepEnd(usize),
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
    now: u64,
    queue: VecDeque<usize>,
    replicas: Vec<Replica>,
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
            now: 0,
            queue: VecDeque::new(),
            replicas: Vec::new(),
            outcomes: requests
                .iter()
                .map(|r| RequestOutcome {
                    arrival: r.arrival,
                    output_tokens: r.output_tokens,
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

    pub fn run(mut self, horizon: Option<f64>) -> RunResult {
        let last_arrival = self.requests.iter().map(|r| r.arrival).fold(0.0, f64::max);
        let horizon_ns = ns(horizon.unwrap_or(last_arrival).max(last_arrival));
        for _ in 0..self.policy.initial_replicas().max(self.warm) {
            self.idle.insert(self.replicas.len());
            self.replicas.push(Replica::new(ReplicaState::Ready, 0));
            self.counts.ready += 1;
        }
        for (i, r) in self.requests.iter().enumerate() {
            let at = ns(r.arrival);
            self.seq += 1;
            self.heap.push(Reverse((at, self.seq, Event::Arrival(i))));
        }
        self.push(0, Event::Tick);
        while let Some(Reverse((at, _, event))) = self.heap.pop() {
            self.now = at;
            match event {
                Event::Arrival(i) => self.on_arrival(i),
                Event::Ready(r) => self.on_ready(r),
                Event::StepEnd(r) => self.on_step_end(r),
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
        self.queue.push_back(i);
        if self.counts().capacity() == 0 {
            self.outcomes[i].at_zero = true;
            // The supervisor's `WorkArrived`: decide at once.
            self.tick();
        }
        self.wake_idle();
    }

    fn wake_idle(&mut self) {
        while !self.queue.is_empty() {
            let Some(r) = self.idle.pop_first() else {
                break;
            };
            self.start_step(r);
        }
    }

    fn on_ready(&mut self, r: usize) {
        if self.replicas[r].state == ReplicaState::Starting {
            self.replicas[r].state = ReplicaState::Ready;
            self.counts.starting -= 1;
            self.counts.ready += 1;
            self.start_step(r);
        }
    }

    fn start_step(&mut self, r: usize) {
        let now_s = self.now as f64 / NS;
        let kv_cap = self.profile.kv_capacity_tokens.max(1);
        let cap = self.per_replica_cap;
        let replica = &mut self.replicas[r];
        if replica.state == ReplicaState::Ready {
            while (replica.batch.len() as u64) < cap {
                let Some(&i) = self.queue.front() else { break };
                let req = self.requests[i];
                let need =
                    (u64::from(req.prompt_tokens) + u64::from(req.output_tokens)).min(kv_cap);
                if replica.kv_reserved + need > kv_cap && !replica.batch.is_empty() {
                    break;
                }
                self.queue.pop_front();
                self.running += 1;
                self.started += 1;
                self.started_wait_ns += self.now.saturating_sub(ns(req.arrival));
                replica.kv_reserved += need;
                self.outcomes[i].start = now_s;
                replica.batch.push(Sequence {
                    request: i,
                    prefill_left: u64::from(req.prompt_tokens),
                    context: 0,
                    generated: 0,
                    reserved_kv: need,
                });
            }
        }
        if replica.batch.is_empty() {
            replica.busy = false;
            if replica.state == ReplicaState::Ready {
                self.idle.insert(r);
            }
            return;
        }
        self.idle.remove(&r);
        let mut budget = self.profile.max_prefill_tokens_per_step.max(1);
        let mut prefill_tokens = 0;
        let mut decode = 0u64;
        let mut kv = 0u64;
        replica.step_prefill.clear();
        for (k, s) in replica.batch.iter().enumerate() {
            if s.prefill_left > 0 {
                if budget > 0 {
                    let chunk = s.prefill_left.min(budget);
                    budget -= chunk;
                    prefill_tokens += chunk;
                    replica.step_prefill.push((k, chunk));
                    if chunk == s.prefill_left {
                        // The step that ends the prompt's prefill also yields its first
                        // token: it is one more sequence of the forward pass, as in the
                        // `sim` engine (`decode_sequences` counts it; its KV is not read).
                        decode += 1;
                    }
                }
            } else {
                decode += 1;
                kv += s.context;
            }
        }
        let step = self
            .model
            .step_duration(prefill_tokens, decode, kv)
            .as_nanos()
            .max(1) as u64;
        replica.busy = true;
        self.push(self.now + step, Event::StepEnd(r));
    }

    fn on_step_end(&mut self, r: usize) {
        let now_s = self.now as f64 / NS;
        let replica = &mut self.replicas[r];
        let prefilled: Vec<(usize, u64)> = std::mem::take(&mut replica.step_prefill);
        let mut in_prefill = vec![false; replica.batch.len()];
        for &(k, _) in &prefilled {
            in_prefill[k] = true;
        }
        let mut generated = 0u64;
        for (k, s) in replica.batch.iter_mut().enumerate() {
            if in_prefill[k] {
                let chunk = prefilled.iter().find(|p| p.0 == k).map_or(0, |p| p.1);
                s.prefill_left -= chunk;
                s.context += chunk;
                if s.prefill_left == 0 {
                    s.generated = 1;
                    s.context += 1;
                    generated += 1;
                    self.outcomes[s.request].first_token = now_s;
                }
            } else if s.prefill_left == 0 {
                s.generated += 1;
                s.context += 1;
                generated += 1;
            }
        }
        let mut finished = 0usize;
        let mut released = 0u64;
        replica.batch.retain(|s| {
            let done = s.prefill_left == 0 && s.generated >= self.requests[s.request].output_tokens;
            if done {
                self.outcomes[s.request].finish = now_s;
                self.finished_count[s.request] += 1;
                finished += 1;
                released += s.reserved_kv;
            }
            !done
        });
        replica.kv_reserved -= released;
        let kv_context: u64 = replica.batch.iter().map(|s| s.context).sum();
        if replica.state == ReplicaState::Ready {
            self.kv_in_use_ready = self.kv_in_use_ready + kv_context - replica.kv_context;
        }
        replica.kv_context = kv_context;
        self.unfinished -= finished;
        self.running -= finished as u64;
        self.generated += generated;
        self.generated_total += generated;
        replica.busy = false;
        if replica.state == ReplicaState::Draining && replica.batch.is_empty() {
            self.counts.draining -= 1;
            replica.state = ReplicaState::Stopped;
            replica.stopped_at = Some(self.now);
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
            .queue
            .front()
            .map_or(0, |&i| self.now.saturating_sub(ns(self.requests[i].arrival)));
        let sample = LoadSample {
            at: now,
            queued: self.queue.len() as u64,
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
            let batch: u64 = self.replicas.iter().map(|r| r.batch.len() as u64).sum();
            debug_assert_eq!(batch, running, "incremental running count");
            let kv: u64 = self
                .replicas
                .iter()
                .filter(|r| r.state == ReplicaState::Ready)
                .map(|r| r.kv_context)
                .sum();
            debug_assert_eq!(kv, self.kv_in_use_ready, "incremental KV in use");
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
                let id = self.replicas.len();
                self.replicas
                    .push(Replica::new(ReplicaState::Starting, self.now));
                self.counts.starting += 1;
                self.cold_starts += 1;
                let at = self.now + self.profile.cold_start.as_nanos() as u64;
                self.push(at, Event::Ready(id));
            }
        } else if desired < current {
            let mut candidates: Vec<(bool, usize, u64, usize)> = self
                .replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| matches!(r.state, ReplicaState::Starting | ReplicaState::Ready))
                .map(|(i, r)| {
                    (
                        r.state == ReplicaState::Ready,
                        r.batch.len(),
                        u64::MAX - r.started_at,
                        i,
                    )
                })
                .collect();
            // Starting first (newest first), then the least loaded ready ones.
            candidates.sort();
            for &(_, _, _, i) in candidates.iter().take((current - desired) as usize) {
                let r = &mut self.replicas[i];
                self.idle.remove(&i);
                match r.state {
                    ReplicaState::Starting => self.counts.starting -= 1,
                    _ => {
                        self.counts.ready -= 1;
                        self.kv_in_use_ready -= r.kv_context;
                    }
                }
                if r.batch.is_empty() && !r.busy {
                    r.state = ReplicaState::Stopped;
                    r.stopped_at = Some(self.now);
                } else {
                    r.state = ReplicaState::Draining;
                    self.counts.draining += 1;
                }
            }
        } else {
            return;
        }
        self.policy.scaled(now, current, desired);
    }
}

impl Replica {
    fn new(state: ReplicaState, at: u64) -> Self {
        Self {
            state,
            started_at: at,
            stopped_at: None,
            batch: Vec::new(),
            busy: false,
            kv_reserved: 0,
            kv_context: 0,
            step_prefill: Vec::new(),
        }
    }
}
