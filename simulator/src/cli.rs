//! What the command-line tools share: this crate's `swell-simulate`, and the load
//! generator's `swell-scaling` and `swell-scale-from-zero`.

/// The exit status of a tool binary's `run`: success, or the error with its causes on
/// stderr and exit status 1.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A built-in `sim` profile by name; the error lists the names there are.
pub fn builtin_profile(name: &str) -> anyhow::Result<swell_workers::sim::SimProfile> {
    swell_workers::sim::builtin(name).ok_or_else(|| {
        anyhow::anyhow!("unknown profile {name:?}: {:?}", swell_workers::sim::builtin_names())
    })
}
