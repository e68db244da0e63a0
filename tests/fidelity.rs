//! Fidelity of the simulator: the same short scenario (`Scenario::step`, 70 s: light
//! load, a step up, a step down, silence) on the live server (the `sim` engine sleeping
//! its modelled step times, real HTTP/SSE, the real supervisor and autoscaler with a 1 s
//! tick, in real time) and in the simulator (the same policy and profile, virtual time,
//! the requests exactly as the live run sent them). They must agree on the replica
//! timeline (count at every second, every scale event) and on TTFT / end-to-end
//! percentiles within `Tolerances::default()` (docs/simulator.md, "Fidelity", says why those).
//!
//! Real time against virtual time on a shared machine: a busy machine stretches the live
//! engine steps (the `sim` engine's sleeps wake late), which the queue near the peak
//! amplifies. So each live run's conditions are measured (`LiveConditions`, by
//! `swell_loadtest::fidelity::measure_conditions`: send lag against the plan, step wall
//! time against the profile's model from `/metrics`, cold start, client-minus-server
//! TTFT) and the simulator is fed the machine as it ran
//! (`LiveConditions::as_run`: step times × the measured stretch, the measured cold
//! start). A run beyond `ValidityBounds::default()` is not compared but re-run on a fresh
//! deployment, [`ATTEMPTS`] runs at most; no valid run fails the test, and so does a
//! valid run that disagrees (at once).
//!
//! Set `SWELL_FIDELITY_OUT=DIR` to keep the live plots, the comparison, the measured
//! conditions and both observations there.

mod common;

use std::time::Duration;

use swell::config::Config;
use swell_loadtest::admin::AdminClient;
use swell_loadtest::fidelity::{live_observation, measure_conditions, requests_from_report};
use swell_loadtest::{Endpoint, LoadTestConfig, MonitorConfig};
use swell_simulator::fidelity::{self, Scenario, Tolerances, ValidityBounds};

/// Live runs at most: the first and two re-runs when the machine made a run invalid.
const ATTEMPTS: u32 = 3;

#[actix_rt::test]
async fn the_simulator_predicts_the_live_replica_timeline_and_latencies() {
    // The simulator asks the policy once a second: so does this server.
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{}\"\nautoscaler_tick = \"1s\"\nshutdown_timeout = \"5s\"\n",
        common::ADMIN_TOKEN
    );
    let server = swell::server::start(Config::from_toml_str(&text).unwrap()).await.expect("server starts");
    let scenario = Scenario::step();
    let out = std::env::var_os("SWELL_FIDELITY_OUT").map(std::path::PathBuf::from);
    let bounds = ValidityBounds::default();
    let mut invalid = Vec::new();
    for attempt in 1..=ATTEMPTS {
        // A fresh deployment per attempt: no autoscaler history, its own metric series.
        let deployment = format!("fidelity-{attempt}");
        match run_once(&server, &scenario, &deployment, out.as_deref(), &bounds).await {
            Ok(comparison) => {
                assert!(
                    comparison.passed(),
                    "the simulator and the live server disagree (attempt {attempt}, a valid run):\n{}",
                    comparison.render()
                );
                server.stop(true).await;
                return;
            }
            Err(why) => {
                println!("attempt {attempt}: not a valid run, the machine was too busy: {why}");
                invalid.push(format!("attempt {attempt}: {why}"));
            }
        }
    }
    panic!("no valid live run in {ATTEMPTS} attempts (the machine was too busy to compare):\n{}", invalid.join("\n"));
}

/// One live run of `scenario` on `deployment` and its comparison with the simulator fed
/// the same requests on the machine as measured; `Err` when the run broke `bounds`.
async fn run_once(
    server: &swell::server::ServerHandle,
    scenario: &Scenario,
    deployment: &str,
    out: Option<&std::path::Path>,
    bounds: &ValidityBounds,
) -> Result<fidelity::FidelityReport, String> {
    let (code, body) = common::admin(server, "PUT", &format!("/deployments/{deployment}"), Some(scenario.deployment_body())).await;
    assert_eq!(code, 201, "{body}");
    let trace = std::env::temp_dir().join(format!("swell-fidelity-{}.csv", std::process::id()));
    scenario.write_trace(&trace).unwrap();
    let admin = AdminClient::new(&common::base(server), Some(common::ADMIN_TOKEN.into()));
    let metrics_before = admin.metrics().await.unwrap();
    let report = swell_loadtest::run(LoadTestConfig {
        url: common::base(server),
        model: deployment.into(),
        endpoint: Endpoint::Completions,
        trace: Some(trace.clone()),
        timeout: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(30),
        quiet: true,
        monitor: Some(MonitorConfig {
            admin_token: Some(common::ADMIN_TOKEN.into()),
            interval: Duration::from_millis(250),
        }),
        plots: out.map(std::path::Path::to_path_buf),
        ..LoadTestConfig::default()
    })
    .await
    .expect("the load test runs");
    std::fs::remove_file(&trace).ok();
    println!("{}", swell_loadtest::render_table(&report));

    // The scale to zero comes after the last request: wait for it, then read the events.
    common::wait_for("the deployment back at zero", Duration::from_secs(40), || async {
        let status = admin.status(deployment).await.unwrap();
        (status.replicas.capacity() == 0 && status.replicas.draining == 0).then_some(())
    })
    .await;
    let status = admin.status(deployment).await.unwrap();
    let live = live_observation(&report, &status).expect("every live request was served");
    let metrics_after = admin.metrics().await.unwrap();
    let profile = scenario.profile().unwrap();
    let conditions =
        measure_conditions(&report, &scenario.requests(), &profile, deployment, &metrics_before, &metrics_after).unwrap();
    println!("live conditions: {}", conditions.render());
    conditions.check(bounds)?;

    // The simulator replays the requests as sent, on the machine as it ran them.
    let requests = requests_from_report(&report).unwrap();
    let horizon = scenario.duration();
    let simulated = fidelity::simulate(&requests, &conditions.as_run(&profile), scenario.policy().unwrap(), horizon);
    let comparison = fidelity::compare(&live, &simulated, horizon, &Tolerances::default());
    println!("{}", comparison.render());
    // For the record (not checked): the simulator on the profile as modelled, as if the
    // machine had been idle; what the comparison would be without the measured stretch.
    let idle = fidelity::simulate(&requests, &profile, scenario.policy().unwrap(), horizon);
    println!(
        "for reference, simulated on the profile as modelled (not checked):\n{}",
        fidelity::compare(&live, &idle, horizon, &Tolerances::default()).render()
    );
    println!("live scale events: {:?}", live.scale_events);
    println!("simulated scale events: {:?}", simulated.scale_events);
    if let Some(dir) = out {
        let json = serde_json::json!({"comparison": comparison, "conditions": conditions, "live": live, "simulated": simulated});
        std::fs::write(dir.join("fidelity.json"), serde_json::to_string_pretty(&json).unwrap()).unwrap();
        std::fs::write(dir.join("fidelity.md"), comparison.render()).unwrap();
    }
    Ok(comparison)
}
