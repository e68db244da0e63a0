//! Under the load generator with the `sim` engine, replicas rise with load, fall back to
//! zero after it, and no request is lost or fails.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use serde_json::json;
use swell_loadtest::{LengthDist, LoadTestConfig};

#[actix_rt::test]
async fn replicas_follow_the_load_up_and_back_to_zero_and_nothing_fails() {
    let server = common::start("").await;
    let (code, body) = common::admin(
        &server,
        "PUT",
        "/deployments/elastic",
        Some(json!({
            "engine": "sim",
            "sim": {"profile": "smollm2-135m-cpu", "cold_start": "300ms", "decode_step_base": "10ms",
                    "decode_step_per_sequence": "1ms", "max_batch_size": 4},
            "autoscaling": {
                "min_replicas": 0, "max_replicas": 4,
                "scale_up_window": "0s", "scale_down_window": "1s", "scale_to_zero_window": "2s",
                "metrics_window": "1s",
                "load_targets": {"concurrent_requests": 2},
                "velocity": {"scale_up": {"replicas": 4, "period": "1s"}, "scale_down": {"replicas": 4, "period": "1s"}}
            }
        })),
    )
    .await;
    assert_eq!(code, 201, "{body}");

    // Watch the replica count while the load runs.
    let peak = Rc::new(Cell::new(0u64));
    let running = Rc::new(Cell::new(true));
    let watcher = {
        let (peak, running) = (peak.clone(), running.clone());
        let base = common::base(&server);
        actix_rt::spawn(async move {
            while running.get() {
                let mut response = common::client()
                    .get(format!("{base}/admin/v1/deployments/elastic"))
                    .insert_header(("authorization", format!("Bearer {}", common::ADMIN_TOKEN)))
                    .send()
                    .await
                    .unwrap();
                let status: serde_json::Value = response.json().limit(16 << 20).await.unwrap();
                let ready = status["replicas"]["ready"].as_u64().unwrap();
                peak.set(peak.get().max(ready));
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let config = LoadTestConfig {
        url: common::base(&server),
        model: "elastic".into(),
        rate: Some(25.0),
        duration: Some(Duration::from_secs(6)),
        prompt_tokens: LengthDist::Fixed(16),
        output_tokens: LengthDist::Fixed(24),
        ignore_eos: true,
        quiet: true,
        drain_timeout: Duration::from_secs(60),
        ..LoadTestConfig::default()
    };
    let report = swell_loadtest::run(config).await.expect("load test runs");
    running.set(false);
    watcher.await.unwrap();

    println!("{}", swell_loadtest::render_table(&report));
    assert!(report.requests_sent >= 100, "{}", report.requests_sent);
    assert_eq!(report.requests_failed, 0, "errors: {:?}", report.errors_by_kind);
    assert_eq!(report.requests_ok, report.requests_sent);
    assert_eq!(report.output_tokens, report.requests_ok * 24);
    assert!(peak.get() >= 2, "replicas rose with the load (peak {})", peak.get());

    common::wait_for("back to zero after the load", Duration::from_secs(30), || async {
        let status = common::status(&server, "elastic").await;
        (common::replicas(&status) == (0, 0, 0)).then_some(())
    })
    .await;
    let status = common::status(&server, "elastic").await;
    let events = status["scale_events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["reason"] == "concurrent_requests" && e["direction"] == "up"), "{status:#}");
    assert_eq!(events.last().unwrap()["reason"], "idle", "{status:#}");
    server.stop(true).await;
}
