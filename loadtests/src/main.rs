//! `swell-loadtest`: see the crate docs of `swell_loadtest` for usage.

use std::process::ExitCode;

use clap::Parser as _;
use swell_loadtest::{cli::Args, render_table, run_until};

fn main() -> ExitCode {
    let config = Args::parse().into_config().unwrap_or_else(|e| e.exit());
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let stop = async {
        if actix_rt::signal::ctrl_c().await.is_err() {
            return std::future::pending().await;
        }
        eprintln!(
            "interrupted: no new requests, waiting for in-flight ones (Ctrl-C again to quit)"
        );
        actix_rt::spawn(async {
            let _ = actix_rt::signal::ctrl_c().await;
            std::process::exit(130);
        });
    };
    match actix_rt::System::new().block_on(run_until(config, stop)) {
        Ok(report) => {
            print!("{}", render_table(&report));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
