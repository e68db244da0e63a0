//! A deployment created with min 0 and a short scale-to-zero window serves a request,
//! goes to 0 replicas when idle, and serves the next request from zero with no error;
//! the status API and `/metrics` show the transitions and their reasons, and the
//! metrics pass `promtool check metrics`.

mod common;

use std::time::Duration;

use serde_json::json;

async fn chat(server: &swell::server::ServerHandle) -> (Vec<String>, Vec<String>) {
    let body = json!({
        "model": "burst",
        "messages": [{"role": "user", "content": "tell me a story"}],
        "max_tokens": 8,
        "stream": true,
    });
    let (status, _, text) = common::post(server, "/v1/chat/completions", None, &body).await;
    assert_eq!(status, 200, "{text}");
    let (comments, data) = common::sse_parts(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    (comments, data)
}

#[actix_rt::test]
async fn a_deployment_scales_to_zero_when_idle_and_serves_again_from_zero() {
    let server = common::start("").await;
    let (code, body) = common::admin(
        &server,
        "PUT",
        "/deployments/burst",
        Some(json!({
            "engine": "sim",
            "sim": {"profile": "smollm2-135m-cpu", "cold_start": "500ms", "decode_step_base": "5ms"},
            "autoscaling": {
                "min_replicas": 0, "max_replicas": 1,
                "scale_up_window": "0s", "scale_down_window": "1s",
                "scale_to_zero_window": "2s", "metrics_window": "1s"
            }
        })),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let status = common::status(&server, "burst").await;
    assert_eq!(common::replicas(&status), (0, 0, 0), "a new min-0 deployment starts at zero");

    // First request: from zero. The client is told a replica is starting.
    let (comments, _) = chat(&server).await;
    assert!(comments.iter().any(|c| c.starts_with("starting replica")), "{comments:?}");

    // Idle: back to zero.
    common::wait_for("scale to zero", Duration::from_secs(20), || async {
        let status = common::status(&server, "burst").await;
        (common::replicas(&status) == (0, 0, 0)).then_some(())
    })
    .await;

    // Second request: from zero again, no error.
    let (comments, _) = chat(&server).await;
    assert!(comments.iter().any(|c| c.starts_with("starting replica")), "{comments:?}");

    let status = common::status(&server, "burst").await;
    let reasons: Vec<(String, String)> = status["scale_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["direction"].as_str().unwrap().to_string(), e["reason"].as_str().unwrap().to_string()))
        .collect();
    let expected = [("up", "queued_at_zero"), ("down", "idle"), ("up", "queued_at_zero")];
    let got: Vec<(&str, &str)> = reasons.iter().map(|(d, r)| (d.as_str(), r.as_str())).collect();
    assert_eq!(&got[..3], &expected, "{status:#}");

    let (code, metrics) = common::get_text(&server, "/metrics").await;
    assert_eq!(code, 200);
    for needle in [
        r#"swell_scale_events_total{deployment="burst",direction="up",reason="queued_at_zero"} 2"#,
        r#"swell_scale_events_total{deployment="burst",direction="down",reason="idle"} 1"#,
        r#"swell_replica_cold_start_seconds_count{deployment="burst"} 2"#,
        r#"swell_requests_total{deployment="burst",tenant="anonymous",status="ok"} 2"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    for family in [
        "swell_time_to_first_token_seconds_bucket",
        "swell_inter_token_latency_seconds_bucket",
        "swell_request_duration_seconds_bucket",
        "swell_queue_wait_seconds_bucket",
        "swell_queue_depth",
        "swell_replicas",
        "swell_prompt_tokens_total",
        "swell_generated_tokens_total",
    ] {
        assert!(metrics.contains(family), "missing {family}");
    }
    promtool_check(&metrics);
    server.stop(true).await;
}

fn promtool_check(metrics: &str) {
    use std::io::Write;
    let promtool = std::env::var("SWELL_TEST_PROMTOOL").unwrap_or_else(|_| ".tools/bin/promtool".into());
    let child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!("this test needs promtool at {promtool} ({e}): run `scripts/test-tools`, or set SWELL_TEST_PROMTOOL")
    });
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
}
