//! [`Team`]: the threads of one forward pass, started once per step (one rayon broadcast)
//! and kept together through every layer by a spinning barrier, instead of one rayon
//! parallel region per matrix (four per layer, over a hundred per step at batch 1, each
//! paying a wake-up).
//!
//! A step is a sequence of **phases** (normalize and quantize, a matrix product,
//! attention, ...). Within a phase every thread takes work from a shared counter in
//! chunks ([`Team::run`]), so a thread the OS delays costs the others only its last
//! chunk; the phase ends at the barrier, where each thread waits for all the others. The
//! counters are one per phase and zeroed before the step, so no thread resets anything
//! another may still read.
//!
//! Which thread computes a chunk never changes the arithmetic, so outputs stay
//! batch-invariant.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Spins before yielding the core at a barrier: a phase at batch 1 lasts microseconds,
/// so a short wait is cheapest by spinning; a long one (a thread descheduled because
/// the machine is busy) should not burn the core the late thread needs.
const SPINS_BEFORE_YIELD: u32 = 20_000;

/// What the threads of one step share: the barrier and the per-phase work counters.
#[derive(Debug, Default)]
pub struct TeamState {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    counters: Vec<AtomicUsize>,
    /// Set when a thread of the step panics, so the others leave the barrier (by
    /// panicking too) instead of waiting for it forever; the broadcast then re-raises
    /// the panic to the caller.
    poisoned: AtomicBool,
}

impl TeamState {
    /// Ready for a step of `threads` threads and at most `phases` phases.
    pub fn reset(&mut self, threads: usize, phases: usize) {
        self.threads = threads.max(1);
        *self.arrived.get_mut() = 0;
        *self.generation.get_mut() = 0;
        *self.poisoned.get_mut() = false;
        if self.counters.len() < phases {
            self.counters.resize_with(phases, AtomicUsize::default);
        }
        for c in &mut self.counters {
            *c.get_mut() = 0;
        }
    }
}

/// One thread's handle on the step: its index, and the phase it is in.
pub struct Team<'a> {
    state: &'a TeamState,
    pub index: usize,
    phase: usize,
}

impl<'a> Team<'a> {
    pub fn new(state: &'a TeamState, index: usize) -> Self {
        Self { state, index, phase: 0 }
    }

    pub fn threads(&self) -> usize {
        self.state.threads
    }

    /// Run `f` on chunks of `0..total` (each at most `chunk` long) taken by whichever
    /// thread is free, then wait for every thread to finish the phase.
    pub fn run(&mut self, total: usize, chunk: usize, mut f: impl FnMut(Range<usize>)) {
        let chunk = chunk.max(1);
        let counter = &self.state.counters[self.phase];
        loop {
            let start = counter.fetch_add(chunk, Ordering::Relaxed);
            if start >= total {
                break;
            }
            f(start..(start + chunk).min(total));
        }
        self.barrier();
    }

    /// Chunk size that gives each thread about `per_thread` chunks of `total` items, in
    /// multiples of `align`, at least `min`.
    pub fn chunk_for(&self, total: usize, per_thread: usize, align: usize, min: usize) -> usize {
        let want = total.div_ceil(self.threads() * per_thread).max(min);
        want.div_ceil(align) * align
    }

    /// Wait until every thread of the step has arrived (sense by generation count).
    pub fn barrier(&mut self) {
        self.phase += 1;
        let s = self.state;
        if s.threads == 1 {
            return;
        }
        let generation = s.generation.load(Ordering::Acquire);
        if s.arrived.fetch_add(1, Ordering::AcqRel) + 1 == s.threads {
            s.arrived.store(0, Ordering::Relaxed);
            s.generation.store(generation + 1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while s.generation.load(Ordering::Acquire) == generation {
            if s.poisoned.load(Ordering::Relaxed) {
                panic!("another thread of this step panicked");
            }
            if spins < SPINS_BEFORE_YIELD {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for Team<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.state.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_item_runs_once_per_phase_and_phases_do_not_overlap() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let mut state = TeamState::default();
        let (phases, items) = (50, 97);
        state.reset(3, phases);
        let hits: Vec<AtomicU64> = (0..items).map(|_| AtomicU64::new(0)).collect();
        let done = AtomicUsize::new(0);
        pool.broadcast(|ctx| {
            let mut team = Team::new(&state, ctx.index());
            for phase in 0..phases {
                // Every item of the previous phase is done before this one starts.
                let before = done.load(Ordering::Acquire);
                assert!(before >= phase * items && before <= (phase + 1) * items, "phase {phase}: {before} done");
                team.run(items, 4, |range| {
                    for i in range {
                        hits[i].fetch_add(1 << (phase % 60), Ordering::Relaxed);
                        done.fetch_add(1, Ordering::AcqRel);
                    }
                });
            }
        });
        let want: u64 = (0..phases).map(|p| 1u64 << (p % 60)).sum();
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == want));
    }

    #[test]
    fn a_panic_in_one_thread_reaches_the_caller_instead_of_hanging_the_others() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let mut state = TeamState::default();
        state.reset(2, 4);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.broadcast(|ctx| {
                let mut team = Team::new(&state, ctx.index());
                team.barrier();
                if ctx.index() == 1 {
                    panic!("boom");
                }
                team.barrier();
            })
        }));
        assert!(caught.is_err());
    }

    #[test]
    fn chunks_are_aligned_and_spread_over_the_threads() {
        let mut state = TeamState::default();
        state.reset(2, 1);
        let team = Team::new(&state, 0);
        assert_eq!(team.chunk_for(960, 4, 4, 16), 120);
        assert_eq!(team.chunk_for(10, 4, 4, 16), 16);
        assert_eq!(team.chunk_for(49152, 4, 4, 16) % 4, 0);
    }
}
