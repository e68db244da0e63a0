//! llama.cpp's `llama-server` as a real external engine in tests: where the binary is,
//! a deployment of it, and its processes as `/proc` shows them.

use std::path::PathBuf;

use serde_json::{json, Value};

/// The `llama-server` binary: `$SWELL_TEST_LLAMA_SERVER`, else where
/// `scripts/reference/build-llama-cpp --server-only` puts it; a panic says how to get it.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("SWELL_TEST_LLAMA_SERVER").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/llama.cpp/build/bin/llama-server"))
    });
    assert!(
        path.is_file(),
        "llama-server is missing at {}: run `scripts/reference/build-llama-cpp --server-only` (scripts/test does), \
         or point SWELL_TEST_LLAMA_SERVER at one",
        path.display()
    );
    path
}

/// An `external` deployment of the test model on llama-server: `slots` sequences per
/// replica, one thread each. `alias` names the model, and marks this test's processes
/// in `/proc`.
///
/// `--ubatch-size 1`: llama.cpp's CPU kernels are not batch-invariant, so a sequence
/// resumed from prompt + delivered tokens (prefilled as one batch) can take another
/// greedy path at a near-tie than the undisturbed run did (decoded a token at a time);
/// with micro-batches of one token the prefill computes exactly what decoding did, and
/// the tests can check that a resumed stream equals the undisturbed one.
/// (`docs/external-engines.md` says what this costs.) `--no-repack`: see
/// `scripts/reference/build-llama-cpp`.
pub fn deployment(alias: &str, slots: u32, min: u32, max: u32) -> Value {
    json!({
        "engine": "external",
        "max_tokens_default": 64,
        "external": {
            "preset": "llama-server",
            "command": binary(),
            "model": super::model_path(),
            "model_name": alias,
            "slots": slots,
            "context_length": 2048,
            "threads": 1,
            "extra_args": ["--no-repack", "--ubatch-size", "1"],
            "start_timeout": "60s",
            "stop_grace": "5s",
        },
        "autoscaling": {"min_replicas": min, "max_replicas": max},
    })
}

/// A running engine process of this test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineProc {
    pub pid: u32,
    pub port: u16,
}

/// The live llama-server processes whose command line names `alias` (zombies, already
/// dead, are left out).
pub fn processes(alias: &str) -> Vec<EngineProc> {
    let binary = binary();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = raw.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.first().map(PathBuf::from) != Some(binary.clone()) || !args.iter().any(|a| a == alias) {
            continue;
        }
        let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = state.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if zombie {
            continue;
        }
        let port = args.iter().position(|a| a == "--port").and_then(|i| args.get(i + 1)).and_then(|p| p.parse().ok());
        found.push(EngineProc { pid, port: port.unwrap_or(0) });
    }
    found.sort_by_key(|p| p.pid);
    found
}

/// Live processes (any program) with `arg` in their command line.
pub fn pids_with_arg(arg: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let raw = std::fs::read(entry.path().join("cmdline")).ok()?;
            let state = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let zombie = state.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            (!zombie && raw.split(|&b| b == 0).any(|a| a == arg.as_bytes())).then_some(pid)
        })
        .collect()
}

/// Sequences the engine at `port` is generating now (its `/metrics`).
pub async fn requests_processing(port: u16) -> Option<f64> {
    let mut response = super::client().get(format!("http://127.0.0.1:{port}/metrics")).send().await.ok()?;
    let body = response.body().await.ok()?;
    let text = String::from_utf8_lossy(&body);
    text.lines().find_map(|l| l.strip_prefix("llamacpp:requests_processing ")).and_then(|v| v.trim().parse().ok())
}

pub fn kill_9(pid: u32) {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill runs");
    assert!(status.success(), "kill -9 {pid}");
}
