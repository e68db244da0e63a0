//! Fidelity of the simulator: the same short scenario (`Scenario::step`, 70 s: light
//! load, a step up, a step down, silence) on the live server (the `sim` engine sleeping
//! its modelled step times, real HTTP/SSE, the real supervisor and autoscaler with a 1 s
//! tick, in real time) and in the simulator (the same policy and profile, virtual time,
//! the requests exactly as the live run sent them). They must agree on the replica
//! timeline (count at every second, every scale event) and on TTFT / end-to-end
//! percentiles within `Tolerances::default()` (README "Fidelity" says why those).
//!
//! Set `SWELL_FIDELITY_OUT=DIR` to keep the live plots, the comparison and both
//! observations there.

mod common;

use std::time::Duration;

use swell::config::Config;
use swell_loadtest::admin::AdminClient;
use swell_loadtest::simulate::fidelity::{self, Scenario, Tolerances};
use swell_loadtest::{Endpoint, LoadTestConfig, MonitorConfig};

// Real time against virtual time: on a machine whose cores are saturated by other work
// the live load generator sends late and bunched, and the comparison fails (seen once with
// three compilers beside it). Out of the default run until it is made robust to that; run
// it alone: `cargo test --test fidelity -- --ignored`.
#[ignore = "real-time comparison: run alone with --ignored (README, Fidelity)"]
#[actix_rt::test]
async fn the_simulator_predicts_the_live_replica_timeline_and_latencies() {
    // The simulator asks the policy once a second: so does this server.
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{}\"\nautoscaler_tick = \"1s\"\nshutdown_timeout = \"5s\"\n",
        common::ADMIN_TOKEN
    );
    let server = swell::server::start(Config::from_toml_str(&text).unwrap()).await.expect("server starts");
    let scenario = Scenario::step();
    let (code, body) = common::admin(&server, "PUT", "/deployments/fidelity", Some(scenario.deployment_body())).await;
    assert_eq!(code, 201, "{body}");

    let out = std::env::var_os("SWELL_FIDELITY_OUT").map(std::path::PathBuf::from);
    let trace = std::env::temp_dir().join(format!("swell-fidelity-{}.csv", std::process::id()));
    scenario.write_trace(&trace).unwrap();
    let admin = AdminClient::new(&common::base(&server), Some(common::ADMIN_TOKEN.into()));
    let metrics_before = admin.metrics().await.unwrap();
    let report = swell_loadtest::run(LoadTestConfig {
        url: common::base(&server),
        model: "fidelity".into(),
        endpoint: Endpoint::Completions,
        trace: Some(trace.clone()),
        timeout: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(30),
        quiet: true,
        monitor: Some(MonitorConfig {
            admin_token: Some(common::ADMIN_TOKEN.into()),
            interval: Duration::from_millis(250),
        }),
        plots: out.clone(),
        ..LoadTestConfig::default()
    })
    .await
    .expect("the load test runs");
    std::fs::remove_file(&trace).ok();
    println!("{}", swell_loadtest::render_table(&report));

    // The scale to zero comes after the last request: wait for it, then read the events.
    common::wait_for("the deployment back at zero", Duration::from_secs(40), || async {
        let status = admin.status("fidelity").await.unwrap();
        (status.replicas.capacity() == 0 && status.replicas.draining == 0).then_some(())
    })
    .await;
    let status = admin.status("fidelity").await.unwrap();
    let live = fidelity::Observation::from_live(&report, &status).expect("every live request was served");

    let metrics_after = admin.metrics().await.unwrap();
    let conditions = fidelity::LiveConditions::measure(
        &report,
        &scenario.requests(),
        &scenario.profile().unwrap(),
        "fidelity",
        &metrics_before,
        &metrics_after,
    )
    .unwrap();
    println!("live conditions: {}", conditions.render());
    let requests = fidelity::requests_from_report(&report).unwrap();
    let horizon = scenario.duration();
    let simulated = fidelity::simulate(&requests, &scenario.profile().unwrap(), scenario.policy().unwrap(), horizon);
    let comparison = fidelity::compare(&live, &simulated, horizon, &Tolerances::default());
    println!("{}", comparison.render());
    println!("live scale events: {:?}", live.scale_events);
    println!("simulated scale events: {:?}", simulated.scale_events);
    if let Some(dir) = &out {
        let json = serde_json::json!({"comparison": comparison, "live": live, "simulated": simulated});
        std::fs::write(dir.join("fidelity.json"), serde_json::to_string_pretty(&json).unwrap()).unwrap();
        std::fs::write(dir.join("fidelity.md"), comparison.render()).unwrap();
    }
    assert!(comparison.passed(), "the simulator and the live server disagree:\n{}", comparison.render());
    server.stop(true).await;
}
