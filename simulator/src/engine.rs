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
//! Decoding sequences are not visited one by one: a replica keeps their count, the sum
//! of their contexts (what a step's attention reads; it grows by the count every step)
//! and a heap of the step at which each one produces its last token, so a step costs
//! the same for a batch of 5 or 500 and a day of a large tenant runs in seconds.
//! Arrivals are read from the (sorted) trace in order rather than queued in the event
//! heap, which holds only ticks, readiness and step ends.
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

use swell_autoscaler::{LoadSample, ReplicaCounts};
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

#[derive(Debug)]
struct Replica {
    state: ReplicaState,
    started_at: u64,
    stopped_at: Option<u64>,
    busy: bool,
    kv_reserved: u64,
    /// Admitted sequences still prefilling, in admission order: (request, prompt tokens
    /// left).
    prefilling: VecDeque<(usize, u64)>,
    /// Sequences past their prefill.
    decoding: u64,
    /// The sum of their contexts (prompt + tokens generated so far).
    decoding_context: u64,
    /// When each produces its last token: (the value of `steps` after that step,
    /// request).
    finishes: BinaryHeap<Reverse<(u64, usize)>>,
    /// Steps run so far.
    steps: u64,
    /// The step in flight: the sequences decoding at its start, and the prefill chunk
    /// of each of the first `step_prefill.len()` prefilling sequences.
    step_decoding: u64,
    step_prefill: Vec<u64>,
    /// Prompt tokens already prefilled of the sequences still prefilling.
    prefill_context: u64,
    /// KV tokens in use as last counted: `decoding_context + prefill_context`.
    kv_context: u64,
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
    /// The next request of the trace to arrive.
    next_arrival: usize,
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
            next_arrival: 0,
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

    /// KV slots a request reserves while admitted: its whole context.
    fn kv_need(&self, i: usize) -> u64 {
        let req = &self.requests[i];
        (u64::from(req.prompt_tokens) + u64::from(req.output_tokens))
            .min(self.profile.kv_capacity_tokens.max(1))
    }

    fn start_step(&mut self, r: usize) {
        let now_s = self.now as f64 / NS;
        let kv_cap = self.profile.kv_capacity_tokens.max(1);
        let cap = self.per_replica_cap;
        if self.replicas[r].state == ReplicaState::Ready {
            while self.replicas[r].sequences() < cap {
                let Some(&i) = self.queue.front() else { break };
                let need = self.kv_need(i);
                let replica = &mut self.replicas[r];
                if replica.kv_reserved + need > kv_cap && replica.sequences() > 0 {
                    break;
                }
                self.queue.pop_front();
                self.running += 1;
                self.started += 1;
                self.started_wait_ns += self.now.saturating_sub(ns(self.requests[i].arrival));
                replica.kv_reserved += need;
                self.outcomes[i].start = now_s;
                replica
                    .prefilling
                    .push_back((i, u64::from(self.requests[i].prompt_tokens)));
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
        let replica = &mut self.replicas[r];
        replica.steps += 1;
        let step = replica.steps;
        // Every sequence that was decoding made one token.
        let mut generated = replica.step_decoding;
        replica.decoding_context += replica.step_decoding;
        for (k, &chunk) in replica.step_prefill.iter().enumerate() {
            replica.prefilling[k].1 -= chunk;
            replica.prefill_context += chunk;
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
            replica.decoding_context -=
                u64::from(req.prompt_tokens) + u64::from(req.output_tokens);
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
            let need = self.kv_need(i);
            self.replicas[r].kv_reserved -= need;
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
            let batch: u64 = self.replicas.iter().map(Replica::sequences).sum();
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
                if r.sequences() == 0 && !r.busy {
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
            busy: false,
            kv_reserved: 0,
            prefilling: VecDeque::new(),
            decoding: 0,
            decoding_context: 0,
            finishes: BinaryHeap::new(),
            steps: 0,
            step_decoding: 0,
            step_prefill: Vec::new(),
            prefill_context: 0,
            kv_context: 0,
        }
    }

    /// Sequences admitted and not finished.
    fn sequences(&self) -> u64 {
        self.prefilling.len() as u64 + self.decoding
    }
}
