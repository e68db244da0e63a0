//! Fidelity: does the simulator predict what the live server does?
//!
//! A short [`Scenario`] (phases of Poisson arrivals, a `sim` profile, an autoscaling
//! policy) is run twice: on a live server (the `sim` engine sleeping its modelled step
//! times, real HTTP/SSE, the real supervisor and autoscaler, in real time; see
//! `tests/fidelity.rs`) and in the simulator ([`simulate`]: the same `Autoscaler` code
//! through [`Swell`](crate::policies::Swell), the same performance model, virtual time). The simulator replays the
//! requests *as the live run sent them*: each request's send time and its token counts
//! as the server reported them (`usage`), so the workloads are identical.
//!
//! [`compare`] then checks, with [`Tolerances`]:
//!
//! - **replica timeline**: at every whole second of the run, the replica count (ready +
//!   starting, as the autoscaler counts it, from each run's scale events) of one run is
//!   within `replicas` of the other's somewhere within `replica_time_slack` seconds (the
//!   live supervisor ticks on its own 1 s phase, which the simulator cannot know);
//! - **scale events**: every scale event of either run is matched by the other run
//!   within `scale_event_seconds`: a change in the same direction to a count within
//!   `replicas` of the event's new count, or a count that stays within `replicas` of it
//!   all that time (the other run was there already);
//! - **latency**: TTFT and end-to-end p50 / p90 / p99 within
//!   `latency_absolute + latency_relative × simulated`.
//!
//! A live run on a shared machine is not a run on an idle one: [`LiveConditions`] holds
//! what the machine did to it (send lag against the plan, the engine steps' wall time
//! against the profile's model, the cold starts, the client's TTFT overhead),
//! [`LiveConditions::as_run`] gives the simulator the profile as the machine ran it, and
//! [`LiveConditions::check`] refuses a run beyond [`ValidityBounds`] (the test re-runs it).
//!
//! This module is the simulator's side and reads no live data. The live side (an
//! [`Observation`] from a load-test report and the deployment's status, the workload as
//! sent, [`LiveConditions`] from `/metrics`) is `swell_loadtest::fidelity`, which
//! depends on this crate.
//!
//! The defaults and why they are what they are: docs/simulator.md, "Fidelity".
//!
//! # Layout
//!
//! - `scenario`: [`Scenario`], the arrivals, profile and policy of one scenario.
//! - `observation`: [`Observation`], what one run did; [`simulate`].
//! - `conditions`: [`LiveConditions`], [`ValidityBounds`].
//! - `checks`: [`Tolerances`], [`compare`], [`FidelityReport`].

mod checks;
mod conditions;
mod observation;
mod scenario;

pub use checks::{compare, Check, FidelityReport, Tolerances};
pub use conditions::{LiveConditions, ValidityBounds};
pub use observation::{simulate, ObservedRequest, ObservedScaleEvent, Observation};
pub use scenario::Scenario;

#[cfg(test)]
mod tests;
