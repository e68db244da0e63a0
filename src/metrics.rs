//! The gateway's own metrics, declared once, and the process-wide Prometheus recorder.
//!
//! The recorder is global to the process (the `metrics` facade has one recorder), so it
//! is installed once, however many servers a process starts (tests start several), and
//! every server renders the same registry.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS_TOTAL: &str = "swell_http_requests_total";
pub const WEBSOCKET_CONNECTIONS: &str = "swell_websocket_connections";
pub const WEBSOCKET_REQUESTS_TOTAL: &str = "swell_websocket_requests_total";
pub const INGRESS_UNANSWERED_TOTAL: &str = "swell_ingress_unanswered_total";

/// Prometheus' text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and describes every metric.
/// Answers `None` when another recorder was installed first (metrics then go there).
pub fn install() -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    swell_actors::metrics::LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(swell_actors::metrics::ENGINE_BATCH_SIZE.into()),
                        swell_actors::metrics::BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(swell_workers::llm::metrics::STEP_TOKENS.into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0],
                    )
                });
            let handle = match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(handle) => handle,
                Err(error) => {
                    tracing::warn!(%error, "the prometheus recorder could not be installed; /metrics will be empty");
                    return None;
                }
            };
            swell_actors::metrics::describe();
            swell_workers::llm::metrics::describe();
            describe();
            // Histograms buffer samples until upkeep drains them.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .ok();
            Some(handle)
        })
        .clone()
}

fn describe() {
    describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests by route pattern and status");
    describe_gauge!(WEBSOCKET_CONNECTIONS, "Open WebSocket connections");
    describe_counter!(WEBSOCKET_REQUESTS_TOTAL, "Generation requests received over WebSockets, by outcome");
    describe_counter!(
        INGRESS_UNANSWERED_TOTAL,
        "Ingress entries acknowledged without an answer because their reply_to may not be written, by code"
    );
}

/// Renders every metric in Prometheus' text format, without the series of deleted
/// deployments and retired replicas (`swell_actors::metric_series`).
pub fn render() -> String {
    let text = install().map(|handle| handle.render()).unwrap_or_default();
    swell_actors::metric_series::without_gone_series(&text)
}

pub fn http_request(route: &str, status: u16) {
    counter!(HTTP_REQUESTS_TOTAL, "route" => route.to_string(), "status" => status.to_string()).increment(1);
}

pub fn websocket_connections(delta: f64) {
    gauge!(WEBSOCKET_CONNECTIONS).increment(delta);
}

pub fn websocket_request(outcome: &'static str) {
    counter!(WEBSOCKET_REQUESTS_TOTAL, "outcome" => outcome).increment(1);
}

/// An ingress entry left unanswered: its `reply_to` may not be written (`code` is the
/// refusal's, e.g. `reply_to_not_permitted`).
pub fn ingress_unanswered(code: &'static str) {
    counter!(INGRESS_UNANSWERED_TOTAL, "code" => code).increment(1);
}
