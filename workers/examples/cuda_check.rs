//! GPU check of the CUDA runner: lists the GPUs, runs the same teacher-forced batches
//! through the CPU and CUDA runners and compares them, then measures decode tokens/s at
//! batch 1 and 16. Prints a report; exits 1 when top-1 agreement is under 95% or
//! something fails, 2 without a GPU.
//!
//! ```text
//! cargo build -p swell-workers --example cuda_check
//! target/debug/examples/cuda_check models/SmolLM2-135M-Instruct.Q4_1.gguf [ordinal]
//! ```
//! The binary needs no cargo at run time: the CUDA driver, cuBLAS and NVRTC libraries
//! are loaded when it runs (`LD_LIBRARY_PATH` if they are not on the default path).

use std::path::PathBuf;
use std::process::ExitCode;

use swell_workers::llm::cuda::check::run_check;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(model) = args.next().map(PathBuf::from) else {
        eprintln!("usage: cuda_check MODEL.gguf [GPU ordinal, default 0]");
        return ExitCode::from(1);
    };
    let ordinal = match args.next().map(|a| a.parse::<u32>()) {
        None => 0,
        Some(Ok(o)) => o,
        Some(Err(e)) => {
            eprintln!("the GPU ordinal must be a number: {e}");
            return ExitCode::from(1);
        }
    };
    match run_check(&model, ordinal) {
        Ok(None) => {
            println!("no CUDA device found (no driver library, or no GPU)");
            ExitCode::from(2)
        }
        Ok(Some(report)) => {
            println!("{report}");
            let agreement = report.comparison.top1_agreement();
            if agreement >= 0.95 {
                println!("PASS: top-1 agreement {:.2}% >= 95%", 100.0 * agreement);
                ExitCode::SUCCESS
            } else {
                println!("FAIL: top-1 agreement {:.2}% < 95%", 100.0 * agreement);
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("cuda check failed: {e}");
            ExitCode::from(1)
        }
    }
}
