//! # swell-router: which replica should run a job
//!
//! A replica that already holds a job's prompt prefix in its KV cache prefills only the
//! rest, so where a job runs decides how much prefill it costs. This crate owns that
//! choice, as pure code: no clock, no threads, no I/O. Whoever routes (the simulator
//! today, the gateway later) describes the job and each candidate replica as plain
//! structs, asks for a replica, and promises the job to it for a bounded time; a queue
//! then uses [`may_take`] to decide which consumer may take the job (the simulator's and
//! the embedded queue, `swell_cluster::routing`, do). Times are `Duration`s since an origin the caller chooses, like the autoscaler's.
//!
//! Priorities are not routing's business: the queue orders jobs by priority first, and
//! routing only filters within that order.
//!
//! # Layout (each module uses only those above it)
//! - [`hashing`]: stable 64-bit hashing (the same on every node and every build).
//! - [`policy`]: [`RoutingPolicy`]: `any`, `cache-aware`, `session`.
//! - [`prefix_summary`]: [`PrefixSummary`], the block hashes a replica reports holding,
//!   bounded, and [`PrefixSummary::matched_blocks`].
//! - [`sessions`]: [`SessionTable`], which replica served each session (bounded), and
//!   rendezvous hashing of a session over replicas.
//! - [`chooser`]: [`JobView`], [`ReplicaView`], [`Choice`]; the cache-aware choice by
//!   expected time to first token.
//! - [`router`]: [`Router`], a policy with its session memory: one call per job.
//! - [`promise`]: [`Promise`] and [`may_take`], the bound on how long a routed job waits
//!   for its replica.

pub mod chooser;
pub mod hashing;
pub mod policy;
pub mod prefix_summary;
pub mod promise;
pub mod router;
pub mod sessions;

pub use chooser::{choose_cache_aware, Choice, JobView, ReplicaView};
pub use policy::{RoutingPolicy, UnknownRoutingPolicy};
pub use prefix_summary::PrefixSummary;
pub use promise::{may_take, Promise, DEFAULT_PROMISE_BOUND};
pub use router::Router;
pub use sessions::{rendezvous, SessionTable};
