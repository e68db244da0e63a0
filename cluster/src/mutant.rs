//! Planted bugs for testing the fault campaign's checker (`swell-chaos`), compiled only
//! with the `chaos-mutant` feature and switched on by `SWELL_CHAOS_MUTANT`:
//!
//! - `skip-epoch-check`: an output append is stored whatever the job's epoch and
//!   consumer, so a writer whose lease was reclaimed (a paused node come back) is not
//!   fenced;
//! - `early-ack`: a replica acknowledges a job before appending its last events, so its
//!   end is never stored;
//! - `double-concurrency`: the quota admits twice a tenant's `max_concurrent_requests`
//!   (`swell_actors::redis_quota`).
//!
//! A build without the feature has none of this; a test asserts that a short campaign
//! fails on each mutant (`tests/chaos.rs`).

/// The environment variable naming the active mutant.
pub const VARIABLE: &str = "SWELL_CHAOS_MUTANT";

/// Whether mutant `name` is switched on.
pub fn active(name: &str) -> bool {
    std::env::var(VARIABLE).is_ok_and(|value| value == name)
}

/// `script` with `from` replaced by `to` when mutant `name` is on; panics when `from`
/// is not in the script (the mutant would silently not exist).
pub fn script(name: &str, script: &str, from: &str, to: &str) -> String {
    if !active(name) {
        return script.to_string();
    }
    assert!(script.contains(from), "mutant {name}: `{from}` is not in the script");
    tracing::warn!(mutant = name, "a planted bug is on (chaos-mutant)");
    script.replace(from, to)
}
