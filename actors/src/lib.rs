//! # swell-actors: the control plane of one Swell node
//!
//! Swell's moving parts are actix actors; the logic they run lives in plain structs
//! with synchronous tests (the quota arithmetic here; the autoscaling policy and capacity
//! model in the pure crate `swell-autoscaler`).
//!
//! - A [`DeploymentSupervisor`](supervisor::DeploymentSupervisor) per deployment owns
//!   its replica set and autoscaler: every tick it samples the load, asks the policy
//!   for a replica count, and spawns or drains replicas (worker actors) to match, down to zero.
//! - A [`WorkerActor`](worker::WorkerActor) per replica builds its engine on a
//!   dedicated thread, leases jobs from the queue while the engine has room, and
//!   publishes each step's output to the jobs' output streams.
//! - A [`RequestActor`](request::RequestActor) per request takes it through the tenant's
//!   quota and into the queue, relays its output stream to the client, and settles
//!   the quota when it ends.
//! - A [`QuotaActor`](quota::QuotaActor) per tenant enforces its rate and concurrency
//!   limits (token buckets, reserve then refund), alone or, across many nodes, in Redis.
//!
//! # Layout
//! - [`supervisor`]: `DeploymentSupervisor`, deployment status and scale events.
//! - [`worker`]: `WorkerActor`, its engine thread, lease/publish/renew loops.
//! - [`request`]: `RequestActor` and `submit`, the edge's entry point.
//! - [`routing`]: `DeploymentRouter`, the gateway's cache-aware choice of replica per job.
//! - [`quota`]: `TenantQuota` (arithmetic) and `QuotaActor`, local or Redis-backed.
//! - [`redis_quota`]: quotas shared by many nodes: the Lua scripts, key layout, leases,
//!   the local fast path.
//! - [`hold_times`]: when a tenant's next concurrency slot frees (measured hold times),
//!   the `retry-after` of a concurrency 429.
//! - [`quota_failure`]: failure policies and the circuit breaker for when Redis is away.
//! - [`wait_estimate`]: a queued request's expected wait (the `eta` of its waiting
//!   comments, the `retry-after` of `queue_full`), from position, slots, service time and
//!   cold starts; [`wait_measurements`]: the supervisor's measured service time and cold
//!   starts; [`renewal`]: the renewal function of the measured service-time distribution
//!   (when slots that start jobs together open again).
//! - [`backoff`]: the exponential back-off of every retry loop.
//! - [`metrics`]: every metric the actors record, declared once.
//! - [`metric_series`]: which `deployment` and `replica` label values still name
//!   something live (the scrape leaves the others out).

pub mod backoff;
pub mod hold_times;
pub mod metric_series;
pub mod metrics;
pub mod quota;
pub mod quota_failure;
pub mod redis_quota;
pub mod renewal;
pub mod request;
pub mod routing;
pub mod supervisor;
pub mod wait_estimate;
pub mod wait_measurements;
pub mod worker;
