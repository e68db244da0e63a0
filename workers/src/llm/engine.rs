//! [`LlmEngine`]: the continuous-batching scheduler around a [`LlamaModel`].
//!
//! # A step
//! 1. Terminal events decided without compute are sent.
//! 2. **Admission**, first come first served: a waiting sequence joins the running batch
//!    when the batch has room and KV blocks for its whole context plus its next token
//!    are free, leaving 1% of the blocks free (vLLM's watermark) unless the batch is
//!    empty. A sequence that cannot be admitted waits: never an out-of-memory failure.
//! 3. **KV growth**: every decoding sequence gets a slot for the token it feeds now. When
//!    no block is free, the most recently admitted sequence is **preempted**: its blocks
//!    are freed and it goes back to the front of the waiting queue, to be recomputed
//!    (prompt + everything generated so far) when readmitted. Its output just
//!    continues: draws depend only on (seed, position).
//! 4. **Batch**: one token for every decoding sequence, then prompt chunks of prefilling
//!    sequences, oldest first, up to `max_batched_tokens` in all (chunked prefill).
//!    Decode tokens and prefill chunks run in the same forward pass (mixed batch).
//! 5. **Logits** only where needed: the last position of each sequence whose context
//!    is now complete, every prompt position when prompt logprobs were asked for.
//! 6. **Sampling and output**: the token is detokenized incrementally (never splitting a
//!    UTF-8 character), passed through the stop-string watcher, and emitted as
//!    `Tokens`; `Finished` comes with `Stop` (end-of-sequence token or stop string) or
//!    `Length` (`max_tokens` or the context limit).
//!
//! Cancelled sequences leave at once: their blocks are free before the next step.
//!
//! # Structured outputs
//! A sequence with a [`Constraint`](swell_protocol::Constraint) carries a matcher
//! ([`constraint`](crate::llm::constraint)). The masks of the step's constrained
//! sequences are computed together (the matcher only moves when a token is drawn),
//! then applied to their logits before sampling; the drawn token
//! advances the matcher, and a complete output ends the sequence with `Stop`. When the
//! forward pass runs on a GPU the masks are computed on a thread beside it; on the CPU
//! the forward pass uses every core, and such a thread only contended with it
//! (docs/structured-outputs.md).
//!
//! # Prefix caching
//! Every full block a sequence has computed is registered in the [`BlockPool`] under the
//! chained hash of its tokens; at admission a sequence takes the longest run of its
//! blocks already cached (shared by reference) and prefills only the rest, always
//! leaving its last context token to compute (it gives the logits). A sequence that
//! asked for prompt logprobs computes its whole prompt. Finished, cancelled and
//! preempted sequences drop their references; the blocks stay cached until their space
//! is needed. A preempted sequence readmitted finds its own blocks again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use swell_protocol::{FinishReason, JobId, OutputEvent, TokenLogprob, TopLogprob, Usage};

use crate::engine::{CachedPrefix, Engine, EngineLoad, Sequence, SequenceOutput, StepReport};
use crate::error::EngineError;
use crate::llm::block_pool::{extend_hashes, BlockHash, BlockPool, PoolStats};
use crate::llm::constraint::{self, ConstraintCompiler, SequenceConstraint, TokenMask};
use crate::llm::kv_cache::{BlockAllocator, BLOCK_TOKENS};
use crate::llm::metrics;
use crate::llm::model::{Logits, ModelRunner, SeqChunk};
use crate::llm::ops::log_softmax;
use crate::llm::sampler::{top_logprobs, Sampler, SamplerScratch};
use crate::llm::tokenizer::{DecodeStream, GgufTokenizer};
use crate::stop::{Release, StopWatcher};
use crate::tokenizer::Tokenizer;

/// Scheduling limits of one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerLimits {
    /// Sequences in the running batch.
    pub max_batch_size: usize,
    /// Tokens per forward pass (decode tokens + prefill chunk tokens).
    pub max_batched_tokens: usize,
    /// KV blocks of [`BLOCK_TOKENS`] tokens.
    pub kv_blocks: usize,
    /// Prompt + output tokens of one sequence.
    pub context_length: usize,
    /// Keep computed blocks by prefix and reuse them across sequences.
    pub prefix_caching: bool,
}

#[derive(Debug)]
struct LlmSequence {
    id: JobId,
    arrival: u64,
    prompt: Vec<u32>,
    /// Output tokens, resumed ones first.
    generated: Vec<u32>,
    max_generated: usize,
    /// Context tokens (prompt, then generated) whose keys and values are cached.
    computed: usize,
    /// While waiting: blocks of its context the cache held when it was queued (what
    /// `load` counts as spared from prefill; looked up once, not at every step).
    cached_when_queued: usize,
    blocks: Vec<u32>,
    /// Chained hashes of the context's full blocks (as far as computed so far).
    hashes: Vec<BlockHash>,
    /// Leading blocks of `blocks` registered in the pool (or taken from it).
    registered: usize,
    sampler: Sampler,
    ignore_eos: bool,
    logprobs: Option<usize>,
    /// `Some` while prompt logprobs are wanted and not yet sent (index = prompt position).
    prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    detok: DecodeStream,
    stop: StopWatcher,
    /// The matcher of a constrained output (taken out while its mask is computed).
    constraint: Option<SequenceConstraint>,
}

impl LlmSequence {
    fn context_len(&self) -> usize {
        self.prompt.len() + self.generated.len()
    }

    fn token_at(&self, pos: usize) -> u32 {
        if pos < self.prompt.len() {
            self.prompt[pos]
        } else {
            self.generated[pos - self.prompt.len()]
        }
    }

    /// Hashes of every full block of the context.
    fn update_hashes(&mut self) {
        let (prompt, generated) = (&self.prompt, &self.generated);
        let at = |p: usize| if p < prompt.len() { prompt[p] } else { generated[p - prompt.len()] };
        extend_hashes(&mut self.hashes, at, prompt.len() + generated.len());
    }

    fn can_sample(&self, context_limit: usize) -> bool {
        self.generated.len() < self.max_generated && self.context_len() < context_limit
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: u32::try_from(self.prompt.len()).unwrap_or(u32::MAX),
            completion_tokens: u32::try_from(self.generated.len()).unwrap_or(u32::MAX),
        }
    }
}

/// The real model engine of one replica.
pub struct LlmEngine {
    model: Box<dyn ModelRunner>,
    tokenizer: Arc<GgufTokenizer>,
    limits: SchedulerLimits,
    pool: BlockPool,
    watermark: usize,
    waiting: VecDeque<LlmSequence>,
    /// Sorted by arrival.
    running: Vec<LlmSequence>,
    ready: Vec<SequenceOutput>,
    next_arrival: u64,
    scratch: SamplerScratch,
    logprob_row: Vec<f32>,
    /// A masked copy of a constrained sequence's logits.
    masked_row: Vec<f32>,
    /// Built on the first constrained sequence.
    compiler: Option<ConstraintCompiler>,
    replica: String,
}

impl std::fmt::Debug for LlmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmEngine")
            .field("limits", &self.limits)
            .field("running", &self.running.len())
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

/// A random seed for a request that brought none.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

fn failed(id: &JobId, code: &str, message: String) -> SequenceOutput {
    SequenceOutput { id: id.clone(), event: OutputEvent::Failed { code: code.to_string(), message } }
}

impl LlmEngine {
    pub fn new(model: Box<dyn ModelRunner>, tokenizer: Arc<GgufTokenizer>, limits: SchedulerLimits, replica: String) -> Self {
        let kv_blocks = model.kv_blocks();
        let context_length = limits.context_length.min(kv_blocks * BLOCK_TOKENS).min(model.config().context_length);
        let limits = SchedulerLimits { context_length, kv_blocks, ..limits };
        Self {
            model,
            tokenizer,
            pool: BlockPool::new(kv_blocks, limits.prefix_caching),
            watermark: kv_blocks / 100,
            limits,
            waiting: VecDeque::new(),
            running: Vec::new(),
            ready: Vec::new(),
            next_arrival: 0,
            scratch: SamplerScratch::default(),
            logprob_row: Vec::new(),
            masked_row: Vec::new(),
            compiler: None,
            replica,
        }
    }

    pub fn limits(&self) -> &SchedulerLimits {
        &self.limits
    }

    /// The matcher of a constrained sequence (the compiler is built on first use).
    fn compile(&mut self, wanted: &swell_protocol::Constraint, resumed: &[u32]) -> Result<SequenceConstraint, String> {
        if self.compiler.is_none() {
            let vocab = self.model.config().vocab;
            self.compiler = Some(ConstraintCompiler::new(self.tokenizer.clone(), vocab)?);
        }
        self.compiler.as_ref().expect("built above").compile(wanted, resumed)
    }

    /// The prefix cache's counters, and how many blocks it holds now.
    pub fn prefix_cache(&self) -> (PoolStats, usize) {
        (self.pool.stats(), self.pool.cached())
    }

    /// Where the model runs.
    pub fn device(&self) -> String {
        self.model.device()
    }

    /// Drop a sequence's block references; its computed blocks stay cached.
    fn release(&mut self, s: &mut LlmSequence) {
        self.pool.release(&mut s.blocks);
        s.registered = 0;
        s.computed = 0;
    }

    /// Prompt tokens still to prefill: the running sequences' uncomputed context (a
    /// decoding one's single next token is not prefill), and the waiting ones' context
    /// less the prefix the cache held when they were queued.
    fn pending_prefill_tokens(&self) -> u64 {
        let running = self.running.iter().map(|s| s.context_len().saturating_sub(s.computed)).filter(|&left| left > 1);
        let waiting = self
            .waiting
            .iter()
            .map(|s| s.context_len().saturating_sub(s.computed.max(s.cached_when_queued * BLOCK_TOKENS)));
        running.chain(waiting).map(|left| left as u64).sum()
    }

    /// Register the full blocks a sequence has computed since the last call.
    fn register_computed(&mut self, i: usize) {
        let s = &mut self.running[i];
        let full = s.computed / BLOCK_TOKENS;
        if full <= s.registered || !self.pool.caching() {
            return;
        }
        s.update_hashes();
        for k in s.registered..full {
            self.pool.register(s.blocks[k], s.hashes[k]);
        }
        s.registered = full;
    }

    /// Blocks of `s`'s context found in the cache that it may take: never the block of
    /// its last context token (it is computed for the logits), none when it wants
    /// prompt logprobs. Returns (blocks, of which evictable).
    fn cached_prefix(&self, s: &mut LlmSequence) -> (usize, usize) {
        if !self.pool.caching() || s.prompt_logprobs.is_some() {
            return (0, 0);
        }
        s.update_hashes();
        let usable = (s.context_len() - 1) / BLOCK_TOKENS;
        self.pool.lookup(&s.hashes[..usable])
    }

    fn remove(&mut self, id: &str) -> bool {
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let mut s = self.running.remove(i);
            self.release(&mut s);
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i);
            return true;
        }
        let before = self.ready.len();
        self.ready.retain(|o| o.id != id);
        before != self.ready.len()
    }

    fn token_logprob(&self, id: u32, row: &[f32], top: usize) -> TokenLogprob {
        TokenLogprob {
            token: Tokenizer::token_text(&*self.tokenizer, id),
            token_id: id,
            logprob: row[id as usize],
            top: top_logprobs(row, top)
                .into_iter()
                .map(|(t, lp)| TopLogprob { token: Tokenizer::token_text(&*self.tokenizer, t), logprob: lp })
                .collect(),
        }
    }

    fn admit(&mut self) {
        while !self.waiting.is_empty() {
            if self.running.len() >= self.limits.max_batch_size {
                break;
            }
            let mut s = self.waiting.pop_front().expect("not empty");
            let need = s.context_len() + usize::from(s.can_sample(self.limits.context_length));
            let (hit, evictable) = self.cached_prefix(&mut s);
            let reserve = if self.running.is_empty() { 0 } else { self.watermark };
            if BlockAllocator::blocks_for(need) - hit + evictable + reserve > self.pool.available() {
                s.cached_when_queued = hit;
                self.waiting.push_front(s);
                break;
            }
            self.pool.acquire(&s.hashes[..hit], &mut s.blocks);
            let grown = self.pool.grow(&mut s.blocks, need);
            debug_assert!(grown);
            s.computed = hit * BLOCK_TOKENS;
            s.registered = hit;
            metrics::prefix_lookup(&self.replica, s.computed, s.context_len() - s.computed);
            self.pool.record_admission(s.computed, s.context_len() - s.computed);
            let at = self.running.partition_point(|r| r.arrival < s.arrival);
            self.running.insert(at, s);
        }
    }

    /// Free the newest running sequence's blocks and queue it for recomputation.
    fn preempt_newest(&mut self) -> bool {
        let Some(mut s) = self.running.pop() else { return false };
        self.release(&mut s);
        s.cached_when_queued = self.cached_prefix(&mut s).0;
        let at = self.waiting.partition_point(|w| w.arrival < s.arrival);
        self.waiting.insert(at, s);
        true
    }

    /// Give every decoding sequence a slot for the token it feeds now; preempt (newest
    /// first) when blocks run out. Returns the number preempted.
    fn grow_for_decode(&mut self) -> usize {
        let mut preempted = 0;
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            let decoding = s.computed > 0 && s.computed + 1 == s.context_len();
            if !decoding {
                i += 1;
                continue;
            }
            let need = s.context_len();
            let s = &mut self.running[i];
            if self.pool.grow(&mut s.blocks, need) {
                i += 1;
                continue;
            }
            let newest = self.running.len() - 1;
            self.preempt_newest();
            preempted += 1;
            if newest == i {
                // It was itself the newest: it waits now; nothing after it to look at.
                break;
            }
        }
        preempted
    }

    fn emit_release(&self, out: &mut Vec<SequenceOutput>, s: &LlmSequence, release: Release) {
        if release.token_ids.is_empty() && release.text.is_empty() {
            return;
        }
        let logprobs = s.logprobs.map(|_| release.logprobs);
        out.push(SequenceOutput {
            id: s.id.clone(),
            event: OutputEvent::Tokens { text: release.text, token_ids: release.token_ids, logprobs },
        });
    }

    fn finish(out: &mut Vec<SequenceOutput>, s: &LlmSequence, reason: FinishReason) {
        out.push(SequenceOutput { id: s.id.clone(), event: OutputEvent::Finished { reason, usage: s.usage() } });
    }

    /// The whole step, after the ready events went out.
    fn run_step(&mut self, out: &mut Vec<SequenceOutput>) -> Result<StepReport, EngineError> {
        let started = Instant::now();
        self.admit();
        let preempted = self.grow_for_decode();
        if preempted > 0 {
            self.admit();
        }
        if self.running.is_empty() {
            return Ok(StepReport { preempted, elapsed: started.elapsed(), ..StepReport::default() });
        }

        // Plan: decode tokens first, then prefill chunks, within the token budget.
        let limit = self.limits.context_length;
        let mut budget = self.limits.max_batched_tokens.max(1);
        let mut plan: Vec<(usize, usize)> = Vec::new(); // (running index, tokens)
        for (i, s) in self.running.iter().enumerate() {
            if s.computed > 0 && s.computed + 1 == s.context_len() && budget > 0 {
                plan.push((i, 1));
                budget -= 1;
            }
        }
        let (mut prefill_tokens, decode_tokens) = (0, plan.len());
        for (i, s) in self.running.iter().enumerate() {
            if budget == 0 {
                break;
            }
            let left = s.context_len() - s.computed;
            let decoding = s.computed > 0 && left == 1;
            if decoding || left == 0 {
                continue;
            }
            let n = left.min(budget);
            plan.push((i, n));
            budget -= n;
            prefill_tokens += n;
        }
        plan.sort_unstable_by_key(|&(i, _)| i);

        // The masks of the constrained sequences that draw a token this step.
        let constrained: Vec<(usize, SequenceConstraint)> = plan
            .iter()
            .filter_map(|&(i, n)| {
                let s = &mut self.running[i];
                let draws = s.computed + n == s.context_len() && s.can_sample(limit);
                if draws { s.constraint.take().map(|c| (i, c)) } else { None }
            })
            .collect();
        let token_lists: Vec<Vec<u32>> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                (s.computed..s.computed + n).map(|p| s.token_at(p)).collect()
            })
            .collect();
        let chunks: Vec<SeqChunk<'_>> = plan
            .iter()
            .zip(&token_lists)
            .map(|(&(i, n), tokens)| {
                let s = &self.running[i];
                let completes = s.computed + n == s.context_len();
                let in_prompt = s.computed < s.prompt.len();
                let logits = if s.prompt_logprobs.is_some() && in_prompt {
                    Logits::All
                } else if completes && s.can_sample(limit) {
                    Logits::Last
                } else {
                    Logits::None
                };
                SeqChunk { tokens, start: s.computed, blocks: &s.blocks, logits }
            })
            .collect();
        let logit_counts: Vec<usize> = chunks
            .iter()
            .map(|c| match c.logits {
                Logits::None => 0,
                Logits::Last => 1,
                Logits::All => c.tokens.len(),
            })
            .collect();
        let forward_started = Instant::now();
        let (logits, masked) = if constrained.is_empty() {
            (self.model.forward(&chunks).map(<[f32]>::to_vec), None)
        } else if self.model.frees_the_cpu() {
            // The GPU runs the forward pass: the masks are computed meanwhile.
            std::thread::scope(|scope| {
                let masking = scope.spawn(move || constraint::masks(constrained));
                let logits = self.model.forward(&chunks).map(<[f32]>::to_vec);
                (logits, Some(masking.join().expect("the mask thread does not panic")))
            })
        } else {
            let masked = constraint::masks(constrained);
            (self.model.forward(&chunks).map(<[f32]>::to_vec), Some(masked))
        };
        let logits = logits?;
        let forward_time = forward_started.elapsed();
        drop(chunks);
        let mut masks: Vec<Option<Result<TokenMask, String>>> = (0..self.running.len()).map(|_| None).collect();
        for (i, matcher, mask) in masked.unwrap_or_default() {
            self.running[i].constraint = Some(matcher);
            masks[i] = Some(mask);
        }
        let vocab = self.model.config().vocab;

        // Outputs, sequence by sequence.
        let mut offset = 0;
        let mut done: Vec<usize> = Vec::new();
        for (k, &(i, n)) in plan.iter().enumerate() {
            let rows = &logits[offset * vocab..(offset + logit_counts[k]) * vocab];
            offset += logit_counts[k];
            let mut s = std::mem::replace(&mut self.running[i], placeholder());
            let start = s.computed;
            s.computed += n;
            let completes = s.computed == s.context_len();
            let mut last_row: Option<&[f32]> = None;
            if logit_counts[k] == n && s.prompt_logprobs.is_some() {
                // Row j predicts position start + j + 1.
                for j in 0..n {
                    let row = &rows[j * vocab..(j + 1) * vocab];
                    let target = start + j + 1;
                    if target < s.prompt.len() {
                        log_softmax(row, &mut self.logprob_row);
                        let lp = self.token_logprob(s.prompt[target], &self.logprob_row, s.logprobs.unwrap_or(0));
                        if let Some(pl) = s.prompt_logprobs.as_mut() {
                            pl[target] = Some(lp);
                        }
                    }
                }
                last_row = Some(&rows[(n - 1) * vocab..n * vocab]);
            } else if logit_counts[k] == 1 {
                last_row = Some(rows);
            }
            if completes {
                if let Some(pl) = s.prompt_logprobs.take() {
                    out.push(SequenceOutput { id: s.id.clone(), event: OutputEvent::PromptLogprobs { logprobs: pl } });
                }
                if !s.can_sample(limit) {
                    let release = s.stop.flush();
                    self.emit_release(out, &s, release);
                    Self::finish(out, &s, FinishReason::Length);
                    done.push(i);
                } else if let Some(Err(error)) = masks[i].as_ref() {
                    out.push(failed(&s.id, "constraint_failed", format!("constrained decoding failed: {error}")));
                    done.push(i);
                } else if let Some(row) = last_row {
                    let row = match masks[i].take() {
                        Some(Ok(mask)) => {
                            self.masked_row.clear();
                            self.masked_row.extend_from_slice(row);
                            mask.apply(&mut self.masked_row);
                            &self.masked_row[..]
                        }
                        _ => row,
                    };
                    let position = s.generated.len() as u64;
                    let token = s.sampler.sample(row, position, &mut self.scratch);
                    let logprob = match s.logprobs {
                        Some(top) => {
                            log_softmax(row, &mut self.logprob_row);
                            Some(self.token_logprob(token, &self.logprob_row, top))
                        }
                        None => None,
                    };
                    s.generated.push(token);
                    s.sampler.observe(token);
                    let advanced = s.constraint.as_mut().map_or(Ok(()), |c| c.advance(token));
                    if let Err(error) = advanced {
                        out.push(failed(&s.id, "constraint_failed", format!("constrained decoding failed: {error}")));
                        done.push(i);
                    } else if !s.ignore_eos && self.tokenizer.is_eos(token) {
                        let mut release = s.stop.flush();
                        release.token_ids.push(token);
                        release.logprobs.extend(logprob);
                        self.emit_release(out, &s, release);
                        Self::finish(out, &s, FinishReason::Stop);
                        done.push(i);
                    } else {
                        let piece = s.detok.step(&self.tokenizer, token);
                        let release = s.stop.push(token, &piece, logprob);
                        let stopped = release.stopped;
                        self.emit_release(out, &s, release);
                        let complete = s.constraint.as_ref().is_some_and(SequenceConstraint::is_done);
                        if stopped {
                            Self::finish(out, &s, FinishReason::Stop);
                            done.push(i);
                        } else if complete || !s.can_sample(limit) {
                            let mut release = s.stop.flush();
                            let tail = s.detok.flush();
                            release.text.push_str(&tail);
                            self.emit_release(out, &s, release);
                            Self::finish(out, &s, if complete { FinishReason::Stop } else { FinishReason::Length });
                            done.push(i);
                        }
                    }
                }
            }
            self.running[i] = s;
            self.register_computed(i);
        }
        for &i in done.iter().rev() {
            let mut s = self.running.remove(i);
            self.release(&mut s);
        }

        let report = StepReport {
            batch_size: plan.len(),
            prefill_tokens,
            decode_tokens,
            preempted,
            elapsed: started.elapsed(),
        };
        metrics::step(&self.replica, &report, forward_time, &self.pool);
        Ok(report)
    }
}

/// A stand-in left in `running` while a sequence is being updated.
fn placeholder() -> LlmSequence {
    LlmSequence {
        id: JobId::default(),
        arrival: u64::MAX,
        prompt: Vec::new(),
        generated: Vec::new(),
        max_generated: 0,
        computed: 0,
        cached_when_queued: 0,
        blocks: Vec::new(),
        hashes: Vec::new(),
        registered: 0,
        sampler: Sampler::new(&swell_protocol::SamplingParams::default(), 0),
        ignore_eos: false,
        logprobs: None,
        prompt_logprobs: None,
        detok: DecodeStream::new(true),
        stop: StopWatcher::new(&[]),
        constraint: None,
    }
}

impl Engine for LlmEngine {
    fn add(&mut self, seq: Sequence) {
        self.remove(&seq.id);
        let limit = self.limits.context_length;
        let vocab = self.model.config().vocab;
        if let Some(&bad) = seq.prompt_tokens.iter().chain(&seq.resume_tokens).find(|&&t| t as usize >= vocab) {
            self.ready.push(failed(&seq.id, "invalid_prompt", format!("token id {bad} is outside the vocabulary (0..{vocab})")));
            return;
        }
        if seq.prompt_tokens.is_empty() {
            self.ready.push(failed(&seq.id, "invalid_prompt", "the prompt has no tokens".to_string()));
            return;
        }
        let context = seq.prompt_tokens.len() + seq.resume_tokens.len();
        if context > limit {
            self.ready.push(failed(
                &seq.id,
                "invalid_prompt",
                format!("the prompt has {context} tokens, over this replica's context limit of {limit}"),
            ));
            return;
        }
        let params = &seq.params;
        let constraint = match &params.constraint {
            None => None,
            Some(wanted) => match self.compile(wanted, &seq.resume_tokens) {
                Ok(compiled) => Some(compiled),
                Err(error) => {
                    self.ready.push(failed(&seq.id, "invalid_constraint", error));
                    return;
                }
            },
        };
        let mut sampler = Sampler::new(params, params.seed.unwrap_or_else(fresh_seed));
        let mut detok = DecodeStream::new(true);
        let stop = StopWatcher::new(&params.stop);
        let mut resumed_text = String::new();
        for &t in &seq.resume_tokens {
            sampler.observe(t);
            resumed_text.push_str(&detok.step(&self.tokenizer, t));
        }
        let mut s = LlmSequence {
            id: seq.id.clone(),
            arrival: self.next_arrival,
            max_generated: params.max_tokens as usize,
            computed: 0,
            cached_when_queued: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            registered: 0,
            sampler,
            ignore_eos: params.ignore_eos,
            logprobs: params.logprobs.map(usize::from),
            prompt_logprobs: params.prompt_logprobs.then(|| vec![None; seq.prompt_tokens.len()]),
            detok,
            stop,
            constraint,
            prompt: seq.prompt_tokens,
            generated: seq.resume_tokens,
        };
        self.next_arrival += 1;
        // Decided without compute: a resumed attempt that already ended.
        let ended_by_eos = s.generated.last().is_some_and(|&t| !s.ignore_eos && self.tokenizer.is_eos(t));
        let complete = s.constraint.as_ref().is_some_and(SequenceConstraint::is_done);
        if ended_by_eos || complete || s.stop.find_stop(&resumed_text).is_some() {
            let mut out = Vec::new();
            Self::finish(&mut out, &s, FinishReason::Stop);
            self.ready.extend(out);
            return;
        }
        if !s.can_sample(limit) && s.prompt_logprobs.is_none() {
            let mut out = Vec::new();
            Self::finish(&mut out, &s, FinishReason::Length);
            self.ready.extend(out);
            return;
        }
        s.cached_when_queued = self.cached_prefix(&mut s).0;
        self.waiting.push_back(s);
    }

    fn cancel(&mut self, id: &str) {
        self.remove(id);
    }

    fn step(&mut self, out: &mut Vec<SequenceOutput>) -> Result<StepReport, EngineError> {
        out.append(&mut self.ready);
        if self.running.is_empty() && self.waiting.is_empty() {
            return Ok(StepReport::default());
        }
        match self.run_step(out) {
            Ok(report) => Ok(report),
            Err(error) => {
                // Every sequence gets its terminal event; the engine stays usable.
                for s in self.running.drain(..).chain(self.waiting.drain(..)) {
                    out.push(failed(&s.id, error.code(), error.to_string()));
                }
                self.pool.clear();
                Err(error)
            }
        }
    }

    fn load(&self) -> EngineLoad {
        let queued = self.running.len() + self.waiting.len();
        let kv_full = self.pool.available() <= self.watermark;
        EngineLoad {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv_tokens_used: (self.pool.used() * BLOCK_TOKENS) as u64,
            kv_tokens_capacity: (self.pool.total() * BLOCK_TOKENS) as u64,
            free_slots: if kv_full { 0 } else { self.limits.max_batch_size.saturating_sub(queued) },
            pending_prefill_tokens: self.pending_prefill_tokens(),
        }
    }

    fn prefix_cache_version(&self) -> Option<u64> {
        self.pool.caching().then(|| self.pool.version())
    }

    fn cached_prefix(&self, max_blocks: usize) -> Option<CachedPrefix> {
        self.pool.caching().then(|| CachedPrefix {
            version: self.pool.version(),
            block_tokens: BLOCK_TOKENS as u32,
            blocks: self.pool.cached_names(max_blocks),
        })
    }
}
