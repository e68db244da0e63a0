//! [`SimEngine`]: continuous batching over the [`PerformanceModel`] of a profile.
//!
//! # A step
//! 1. Sequences decided without any compute (max_tokens already reached, a stop string
//!    already in the resumed tokens, a prompt over the context length) get their terminal
//!    event.
//! 2. Waiting sequences are admitted first-come first-served while the running batch is
//!    below `max_batch_size` and their KV fits (see below).
//! 3. Up to `max_prefill_tokens_per_step` prompt tokens are prefilled, oldest sequence
//!    first: a long prompt takes several steps (chunked prefill).
//! 4. Every sequence whose prefill is complete produces one token: the decoding ones, and
//!    the ones whose last prefill chunk ran in this step (their first token).
//! 5. The step's duration comes from the performance model; [`Engine::step`] sleeps what
//!    is left of it after the step's own work ([`SimEngine::advance`] does not sleep).
//! 6. Outputs: `PromptLogprobs` (when asked) right before the first token, `Tokens` for
//!    the generated tokens (held back while they may be the start of a stop string), and
//!    `Finished` with `Stop` or `Length`. The worker actor sends `Started` itself.
//!
//! # KV cache accounting (grown as generated, vLLM-style)
//! A running sequence holds as many KV slots as its context: prompt + generated tokens
//! (resumed tokens included). Admission reserves the whole prompt (+1 for the first
//! token), so a chunked prefill never stalls, and must leave 1% of the capacity free
//! (vLLM's watermark) unless the batch is empty. Each generated token takes one more slot.
//! When the tokens of a step do not fit, the most recently admitted sequences are
//! preempted: their KV is freed and they go back to the front of the waiting queue, to be
//! recomputed (prompt + everything generated so far) when readmitted. Their output just
//! continues: tokens depend only on (seed, position).
//!
//! A sequence ends with `Length` at `max_tokens` (resumed tokens count) or when its
//! context reaches the profile's `context_length`. The sim never emits end-of-sequence, so
//! `ignore_eos` changes nothing; neither do temperature, top-p/k and the penalties: the
//! text depends only on the seed (`params.seed`, else a hash of the prompt). A prompt
//! longer than the context fails with `invalid_prompt`; adding an id that is already in
//! the engine replaces the earlier sequence.
//!
//! # Layout
//! - `scheduler`: removal, admission, the prefill plan, preemption and the step itself
//!   ([`SimEngine::advance`]).
//! - `tests`: the engine's behaviour on small profiles.

mod scheduler;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Instant;

use swell_protocol::{FinishReason, JobId, OutputEvent, Usage};

use crate::engine::{Engine, EngineLoad, Sequence, SequenceOutput, StepReport};
use crate::error::EngineError;
use crate::sim::model::PerformanceModel;
use crate::sim::profile::SimProfile;
use crate::sim::sampler::sequence_seed;
use crate::sim::tokenizer::{is_special, piece};
use crate::stop::{Release, StopWatcher};

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One sequence inside the engine.
#[derive(Debug)]
struct SimSequence {
    id: JobId,
    /// Order of `add`; the preemption order (newest first).
    arrival: u64,
    prompt: Vec<u32>,
    seed: u64,
    /// Top alternatives per token, when logprobs were asked for.
    logprobs: Option<usize>,
    prompt_logprobs_pending: bool,
    /// Output tokens so far, resumed ones included; also the next token's position.
    generated: u64,
    max_generated: u64,
    /// The previous output token (for spacing).
    last_token: Option<u32>,
    /// Context tokens whose KV has been computed since admission.
    computed: u64,
    /// Prefill complete: produces one token per step.
    decoding: bool,
    stop: StopWatcher,
}

impl SimSequence {
    fn context_len(&self) -> u64 {
        self.prompt.len() as u64 + self.generated
    }

    fn can_sample(&self, context_limit: u64) -> bool {
        self.generated < self.max_generated && self.context_len() < context_limit
    }

    /// KV slots needed to admit it: its context, plus its next token.
    fn admission_need(&self, context_limit: u64) -> u64 {
        self.context_len() + u64::from(self.can_sample(context_limit))
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: clamp_u32(self.prompt.len() as u64),
            completion_tokens: clamp_u32(self.generated),
        }
    }
}

/// What one running sequence does in a step.
#[derive(Debug, Clone, Copy)]
struct Work {
    /// Context tokens processed (1 for a decoding sequence).
    chunk: u64,
    /// All of its context is computed after this step: it produces a token (or, with
    /// nothing left to generate, just its prompt logprobs).
    completes: bool,
    samples: bool,
}

/// The `sim` engine of one replica.
pub struct SimEngine {
    profile: SimProfile,
    model: PerformanceModel,
    max_batch: usize,
    kv_capacity: u64,
    watermark: u64,
    /// `min(context_length, kv_capacity)`: one sequence always fits.
    context_limit: u64,
    prefill_budget: u64,
    paced: bool,
    waiting: VecDeque<SimSequence>,
    /// Sorted by arrival.
    running: Vec<SimSequence>,
    /// Terminal events decided without compute, sent at the next step.
    ready: Vec<SequenceOutput>,
    kv_used: u64,
    next_arrival: u64,
}

impl SimEngine {
    /// An engine that sleeps each step's modelled duration.
    pub fn new(profile: SimProfile) -> Self {
        let kv_capacity = profile.kv_capacity_tokens;
        Self {
            model: PerformanceModel::new(&profile),
            max_batch: (profile.max_batch_size.max(1)) as usize,
            kv_capacity,
            watermark: kv_capacity / 100,
            context_limit: u64::from(profile.context_length).min(kv_capacity),
            prefill_budget: profile.max_prefill_tokens_per_step.max(1),
            profile,
            paced: true,
            waiting: VecDeque::new(),
            running: Vec::new(),
            ready: Vec::new(),
            kv_used: 0,
            next_arrival: 0,
        }
    }

    /// Whether `Engine::step` sleeps the modelled duration (default true).
    pub fn with_pacing(mut self, paced: bool) -> Self {
        self.paced = paced;
        self
    }

    pub fn profile(&self) -> &SimProfile {
        &self.profile
    }

    pub fn model(&self) -> &PerformanceModel {
        &self.model
    }
}

fn finish(s: &SimSequence, reason: FinishReason) -> SequenceOutput {
    SequenceOutput {
        id: s.id.clone(),
        event: OutputEvent::Finished {
            reason,
            usage: s.usage(),
        },
    }
}

fn emit_tokens(out: &mut Vec<SequenceOutput>, s: &SimSequence, release: Release) {
    if release.token_ids.is_empty() {
        return;
    }
    out.push(SequenceOutput {
        id: s.id.clone(),
        event: OutputEvent::Tokens {
            text: release.text,
            token_ids: release.token_ids,
            logprobs: s.logprobs.map(|_| release.logprobs),
        },
    });
}

impl Engine for SimEngine {
    fn add(&mut self, seq: Sequence) {
        // The same id again replaces the earlier sequence (as if it had been cancelled).
        self.remove(&seq.id);
        let Sequence {
            id,
            prompt_tokens,
            resume_tokens,
            params,
        } = seq;
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        let mut s = SimSequence {
            id,
            arrival,
            seed: sequence_seed(params.seed, &prompt_tokens),
            prompt: prompt_tokens,
            logprobs: params.logprobs.map(usize::from),
            prompt_logprobs_pending: params.prompt_logprobs && resume_tokens.is_empty(),
            generated: resume_tokens.len() as u64,
            max_generated: u64::from(params.max_tokens),
            last_token: resume_tokens
                .iter()
                .rev()
                .copied()
                .find(|t| !is_special(*t)),
            computed: 0,
            decoding: false,
            stop: StopWatcher::new(&params.stop),
        };

        // An earlier attempt may already have produced a stop string.
        if !resume_tokens.is_empty() {
            let mut text = String::new();
            let mut prev = None;
            for &t in resume_tokens.iter().filter(|t| !is_special(**t)) {
                text.push_str(&piece(prev, t));
                prev = Some(t);
            }
            if s.stop.find_stop(&text).is_some() {
                self.ready.push(finish(&s, FinishReason::Stop));
                return;
            }
        }
        if s.context_len() > self.context_limit {
            let error = EngineError::InvalidPrompt(format!(
                "prompt of {} tokens{} exceeds the context length of {} tokens",
                s.prompt.len(),
                if resume_tokens.is_empty() {
                    String::new()
                } else {
                    format!(" + {} resumed tokens", resume_tokens.len())
                },
                self.context_limit
            ));
            self.ready.push(SequenceOutput {
                id: s.id,
                event: OutputEvent::Failed {
                    code: error.code().into(),
                    message: error.to_string(),
                },
            });
            return;
        }
        if !s.prompt_logprobs_pending && !s.can_sample(self.context_limit) {
            self.ready.push(finish(&s, FinishReason::Length));
            return;
        }
        s.computed = 0;
        self.waiting.push_back(s);
    }

    fn cancel(&mut self, id: &str) {
        self.remove(id);
    }

    fn step(&mut self, out: &mut Vec<SequenceOutput>) -> Result<StepReport, EngineError> {
        let started = Instant::now();
        let mut report = self.advance(out);
        if self.paced {
            let spent = started.elapsed();
            if report.elapsed > spent {
                std::thread::sleep(report.elapsed - spent);
            }
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    fn load(&self) -> EngineLoad {
        // Would every waiting sequence be admitted by the next step as far as KV goes?
        let mut used = self.kv_used;
        let mut kv_blocked = false;
        let admissible = self.max_batch.saturating_sub(self.running.len());
        for (i, s) in self.waiting.iter().take(admissible).enumerate() {
            let need = s.admission_need(self.context_limit);
            let fits = if self.running.is_empty() && i == 0 {
                need <= self.kv_capacity
            } else {
                used.saturating_add(need).saturating_add(self.watermark) <= self.kv_capacity
            };
            if !fits {
                kv_blocked = true;
                break;
            }
            used += s.context_len();
        }
        let kv_full = self.kv_capacity.saturating_sub(used) <= self.watermark;
        let free_slots = if kv_blocked || kv_full {
            0
        } else {
            self.max_batch
                .saturating_sub(self.running.len() + self.waiting.len())
        };
        EngineLoad {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv_tokens_used: self.kv_used,
            kv_tokens_capacity: self.kv_capacity,
            free_slots,
            pending_prefill_tokens: self.waiting.iter().map(|s| s.context_len() as u64).sum(),
        }
    }
}
