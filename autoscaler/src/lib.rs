//! # swell-autoscaler: how many replicas a deployment should have right now
//!
//! The autoscaling policy and the capacity model, as pure code: no clock, no threads, no
//! I/O, no async runtime. The deployment supervisor (`swell-actors`) feeds it a
//! [`LoadSample`] every tick and the [`ReplicaCounts`] it sees, asks for a [`Decision`],
//! carries the decision out and reports back what it changed ([`Autoscaler::scaled`]).
//! The simulator (`swell-simulator`) runs the same code on public traces in virtual
//! time. Every function takes `now: Duration`, a monotonic time since an arbitrary
//! origin; the wall clock, which only schedules need, is an input too
//! ([`LoadSample::unix_ms`]).
//!
//! # Layout (each module uses only those above it)
//! - [`numbers`]: rounding and formatting helpers.
//! - [`signals`]: the inputs, [`LoadSample`] and [`LoadAverages`] over a window, and the
//!   load signals by name.
//! - [`schedule`], [`rules`], [`predictive`]: time-of-day windows that change min/max; custom threshold rules; the predictive
//!   floor (seasonal or trend forecast). Each holds its own configuration and state.
//! - [`policy`]: a deployment's [`AutoscalingPolicy`] (load targets, windows, velocity,
//!   burst mode, SLO targets in [`policy::slo`]), its defaults, (de)serialization and
//!   validation with bounds.
//! - [`capacity`]: the capacity model: what one replica sustains within latency
//!   targets, from what the engine says about itself ([`swell_protocol::EngineDescription`])
//!   and the observed request lengths; SLO mode and the `auto` targets are built on it.
//! - [`decision`]: the outputs: [`ReplicaCounts`], [`ScaleDirection`], [`ScaleReason`],
//!   [`Decision`].
//! - [`autoscaler`]: [`Autoscaler`], the state and the decision procedure.
//! - [`record`]: decision records and the history the supervisor keeps.
//!
//! The algorithm is described in the [`autoscaler`] module and, for users, in
//! `docs/autoscaling.md`; the capacity model in [`capacity`] and `docs/capacity-model.md`.

pub mod autoscaler;
pub mod capacity;
pub mod decision;
pub mod numbers;
pub mod policy;
pub mod predictive;
pub mod record;
pub mod rules;
pub mod schedule;
pub mod signals;

#[cfg(test)]
mod tests;

pub use autoscaler::Autoscaler;
pub use capacity::{CapacityAdvice, CapacityPlanner, ReplicaCapacity};
pub use decision::{Decision, PanicEffect, ReplicaCounts, ScaleDirection, ScaleReason, ScheduleEffect, TargetRecommendation};
pub use signals::{LoadAverages, LoadSample, Signal};
pub use policy::slo::{SloMode, SloTargets};
pub use policy::{
    AutoscalingPolicy, LoadTargets, Velocity, VelocityLimit, VelocitySelect, MAX_METRICS_WINDOW, MAX_REPLICAS,
    MAX_SCALE_TO_ZERO_WINDOW, MAX_STABILIZATION_WINDOW, MAX_VELOCITY_PERCENT, MAX_VELOCITY_PERIOD, MIN_METRICS_WINDOW,
};
pub use predictive::{ForecastMethod, PredictiveEffect, PredictiveMode, PredictivePolicy};
pub use record::{DecisionHistory, DecisionRecord};
pub use rules::{CustomRule, RuleFired};
pub use schedule::{Schedule, TimeOfDay, Weekday};
