//! Scale from zero by stage (`swell_loadtest::scale_from_zero`): a deployment at zero
//! gets one request; the decision (the supervisor's scale event), the replica start, the
//! model load (the engine's own `ColdStartReport`, read from the status API) and the
//! first token add up to the client's TTFT, with the `sim` engine and with the real model
//! (the `llm` engine and SmolLM2-135M), and with llama-server processes (`external`).
//! Figures are printed, not asserted (speed belongs
//! to docs/benchmarks.md); what is asserted is the structure: every stage is
//! there, none is negative, the sum is the TTFT, the sim's model load is at least the
//! cold start it sleeps, and every run really started from zero.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use swell_loadtest::scale_from_zero::{self, ScaleFromZeroConfig, StageBreakdown};

/// Seconds of slack for stages derived from two clocks read a moment apart.
const CLOCK_SLACK: f64 = 0.005;

/// `stage_names`: the engine's stages each run may report (one of them).
fn check(rows: &[StageBreakdown], stage_names: &[&[&str]]) {
    for r in rows {
        assert_eq!(r.reason, "queued_at_zero", "{r:?}");
        for (name, value) in [
            ("decision", r.decision_s),
            ("replica start", r.replica_start_s),
            ("model load", r.model_load_s),
            ("first token", r.first_token_s),
        ] {
            assert!(value >= -CLOCK_SLACK, "{name} is negative: {r:?}");
        }
        let sum = r.decision_s + r.replica_start_s + r.model_load_s + r.first_token_s;
        assert!((sum - r.ttft_s).abs() < 1e-6, "{r:?}");
        let names: Vec<&str> = r.model_load_stages.iter().map(|(n, _)| n.as_str()).collect();
        assert!(stage_names.contains(&names.as_slice()), "{names:?} is none of {stage_names:?}: {r:?}");
        assert!(r.model_load_s > 0.0 && r.first_token_s > 0.0, "{r:?}");
    }
    // Each run got its own replica: the deployment really went back to zero in between.
    let mut replicas: Vec<&str> = rows.iter().map(|r| r.replica.as_str()).collect();
    replicas.dedup();
    assert_eq!(replicas.len(), rows.len(), "{rows:?}");
}

async fn measure(server: &swell::server::ServerHandle, deployment: Value, runs: u32) -> Vec<StageBreakdown> {
    let (code, body) = common::admin(server, "PUT", "/deployments/cold", Some(deployment)).await;
    assert_eq!(code, 201, "{body}");
    let rows = scale_from_zero::measure(&ScaleFromZeroConfig {
        url: common::base(server),
        model: "cold".into(),
        admin_token: Some(common::ADMIN_TOKEN.into()),
        runs,
        wait_for_zero: Duration::from_secs(30),
        ..ScaleFromZeroConfig::default()
    })
    .await
    .expect("the measurement runs");
    println!("{}", scale_from_zero::render(&rows));
    rows
}

const FROM_ZERO: &str = r#"{"min_replicas": 0, "max_replicas": 1, "scale_up_window": "0s",
    "scale_down_window": "1s", "scale_to_zero_window": "1s", "metrics_window": "1s"}"#;

#[actix_rt::test]
async fn a_sim_replica_from_zero_by_stage() {
    let server = common::start("").await;
    let rows = measure(
        &server,
        json!({
            "engine": "sim",
            "sim": {"profile": "smollm2-135m-cpu", "cold_start": "800ms"},
            "autoscaling": serde_json::from_str::<Value>(FROM_ZERO).unwrap(),
        }),
        2,
    )
    .await;
    check(&rows, &[&["schedule", "load_weights", "warm_up"]]);
    for r in &rows {
        assert!(r.model_load_s >= 0.8, "the sim sleeps its cold start: {r:?}");
    }
    server.stop(true).await;
}

#[actix_rt::test]
async fn the_real_model_from_zero_by_stage() {
    let path = swell_workers::llm::find_default_model()
        .expect("the model is missing: run scripts/fetch-model (or set SWELL_MODEL_PATH)");
    let path = std::fs::canonicalize(path).unwrap();
    let server = common::start("").await;
    let rows = measure(
        &server,
        json!({
            "engine": "llm",
            "llm": {"model_path": path, "threads": 2, "kv_cache_tokens": 4096},
            "autoscaling": serde_json::from_str::<Value>(FROM_ZERO).unwrap(),
        }),
        2,
    )
    .await;
    // At zero the weights are released. The first start reads the GGUF and writes the
    // weight cache file beside the model (or maps the file an earlier run left); the next
    // maps the file, or shares the weights if the cache writer still holds them.
    let read: &[&str] = &["read_weights", "allocate_kv_cache", "warm_up"];
    let mapped: &[&str] = &["map_weights", "allocate_kv_cache", "warm_up"];
    let shared: &[&str] = &["share_weights", "allocate_kv_cache", "warm_up"];
    check(&rows, &[read, mapped, shared]);
    let first_stage = |r: &StageBreakdown| r.model_load_stages[0].0.clone();
    assert_ne!(first_stage(&rows[0]), "share_weights", "{rows:?}");
    for r in &rows[1..] {
        assert_ne!(first_stage(r), "read_weights", "a later start finds the weight cache file: {rows:?}");
    }
    server.stop(true).await;
}

#[actix_rt::test]
async fn llama_server_replicas_from_zero_by_stage() {
    let server = common::start("").await;
    let mut deployment = common::llama_server::deployment("swell-test-from-zero", 1, 0, 1);
    deployment["autoscaling"] = serde_json::from_str::<Value>(FROM_ZERO).unwrap();
    let rows = measure(&server, deployment, 2).await;
    // Every start is a new process: spawned, loaded, then proven by a first token.
    check(&rows, &[&["spawn_process", "load_model", "first_token"]]);
    server.stop(true).await;
    common::wait_for("no llama-server left", Duration::from_secs(20), || async {
        common::llama_server::processes("swell-test-from-zero").is_empty().then_some(())
    })
    .await;
}
