//! The step of the `sim` engine ([`SimEngine::advance`]): admission of waiting sequences,
//! the chunked-prefill plan, preemption for KV space, one token per completed sequence.

use swell_protocol::{FinishReason, OutputEvent};

use super::{emit_tokens, finish, SimEngine, Work};
use crate::engine::{SequenceOutput, StepReport};
use crate::sim::sampler::{prompt_logprobs, token_at, token_logprob};
use crate::sim::tokenizer::piece;

impl SimEngine {
    pub(super) fn remove(&mut self, id: &str) -> bool {
        let before = self.waiting.len() + self.running.len() + self.ready.len();
        self.waiting.retain(|s| s.id != id);
        let mut freed = 0;
        self.running.retain(|s| {
            let keep = s.id != id;
            if !keep {
                freed += s.context_len();
            }
            keep
        });
        self.kv_used -= freed;
        self.ready.retain(|o| o.id != id);
        before != self.waiting.len() + self.running.len() + self.ready.len()
    }

    fn admit(&mut self) {
        while let Some(front) = self.waiting.front() {
            if self.running.len() >= self.max_batch {
                break;
            }
            let need = front.admission_need(self.context_limit);
            let fits = if self.running.is_empty() {
                need <= self.kv_capacity
            } else {
                self.kv_used
                    .saturating_add(need)
                    .saturating_add(self.watermark)
                    <= self.kv_capacity
            };
            if !fits {
                break;
            }
            let mut seq = self.waiting.pop_front().expect("front exists");
            seq.computed = 0;
            seq.decoding = false;
            self.kv_used += seq.context_len();
            let at = self.running.partition_point(|r| r.arrival < seq.arrival);
            self.running.insert(at, seq);
        }
    }

    fn plan(&self) -> Vec<Work> {
        let mut budget = self.prefill_budget;
        self.running
            .iter()
            .map(|s| {
                if s.decoding {
                    return Work {
                        chunk: 1,
                        completes: true,
                        samples: true,
                    };
                }
                let need = s.context_len() - s.computed;
                let chunk = need.min(budget);
                budget -= chunk;
                let completes = chunk == need;
                Work {
                    chunk,
                    completes,
                    samples: completes && s.can_sample(self.context_limit),
                }
            })
            .collect()
    }

    /// Run one step without sleeping. The report's `elapsed` is the step's *modelled*
    /// duration (for a virtual-time simulator); nothing here reads the clock.
    pub fn advance(&mut self, out: &mut Vec<SequenceOutput>) -> StepReport {
        out.append(&mut self.ready);
        self.admit();
        if self.running.is_empty() {
            return StepReport::default();
        }

        // Make room for this step's tokens, preempting the newest sequences.
        let mut preempted = 0;
        let plan = loop {
            let plan = self.plan();
            let new_tokens = plan.iter().filter(|w| w.samples).count() as u64;
            if self.kv_used + new_tokens <= self.kv_capacity || self.running.len() <= 1 {
                break plan;
            }
            let mut victim = self.running.pop().expect("more than one running");
            self.kv_used -= victim.context_len();
            victim.computed = 0;
            victim.decoding = false;
            tracing::debug!(id = %victim.id, "sim: preempted for KV space");
            self.waiting.push_front(victim);
            preempted += 1;
        };

        let mut prefill_tokens = 0u64;
        let mut decode_sequences = 0u64;
        let mut kv_tokens = 0u64;
        let mut batch_size = 0usize;
        for (s, w) in self.running.iter().zip(&plan) {
            if s.decoding {
                kv_tokens += s.context_len();
            } else {
                prefill_tokens += w.chunk;
            }
            decode_sequences += u64::from(w.completes);
            batch_size += usize::from(w.chunk > 0 || w.completes);
        }

        let context_limit = self.context_limit;
        let mut decode_tokens = 0usize;
        let mut finished = Vec::new();
        for (i, w) in plan.iter().enumerate() {
            let s = &mut self.running[i];
            s.computed += w.chunk;
            if !w.completes {
                continue;
            }
            if s.prompt_logprobs_pending {
                s.prompt_logprobs_pending = false;
                let logprobs = prompt_logprobs(&s.prompt, s.logprobs.unwrap_or(0));
                out.push(SequenceOutput {
                    id: s.id.clone(),
                    event: OutputEvent::PromptLogprobs { logprobs },
                });
            }
            if !w.samples {
                // Nothing to generate (max_tokens 0 with prompt logprobs).
                finished.push(i);
                out.push(finish(s, FinishReason::Length));
                continue;
            }
            let position = s.generated;
            let token = token_at(s.seed, position);
            let text = piece(s.last_token, token);
            let logprob = s
                .logprobs
                .map(|k| token_logprob(s.seed, position, s.last_token, token, k));
            s.generated += 1;
            s.last_token = Some(token);
            s.decoding = true;
            self.kv_used += 1;
            decode_tokens += 1;
            let release = s.stop.push(token, &text, logprob);
            let stopped = release.stopped;
            emit_tokens(out, s, release);
            if stopped {
                finished.push(i);
                out.push(finish(s, FinishReason::Stop));
            } else if !s.can_sample(context_limit) {
                let rest = s.stop.flush();
                emit_tokens(out, s, rest);
                finished.push(i);
                out.push(finish(s, FinishReason::Length));
            }
        }
        for i in finished.into_iter().rev() {
            let s = self.running.remove(i);
            self.kv_used -= s.context_len();
        }

        StepReport {
            batch_size,
            prefill_tokens: usize::try_from(prefill_tokens).unwrap_or(usize::MAX),
            decode_tokens,
            preempted,
            elapsed: self
                .model
                .step_duration(prefill_tokens, decode_sequences, kv_tokens),
        }
    }
}
