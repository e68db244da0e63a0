//! The live side of the simulator's fidelity check ([`swell_simulator::fidelity`]): what a
//! live load-test run gives the comparison. From the run's [`Report`], the deployment's
//! [`DeploymentStatus`] and the server's `/metrics` ([`MetricsText`]) before and after:
//! the run's [`Observation`] ([`live_observation`]), the workload as sent
//! ([`requests_from_report`]) and what the machine did to the run
//! ([`measure_conditions`]). `tests/fidelity.rs` runs it.

use anyhow::{bail, Context as _};
use swell_simulator::fidelity::{LiveConditions, ObservedRequest, ObservedScaleEvent, Observation};
use swell_simulator::stats::Sorted;
use swell_simulator::workload::SimRequest;
use swell_workers::sim::SimProfile;

use crate::admin::{DeploymentStatus, MetricsText};
use crate::report::Report;

/// A live run's observation: latencies as the client measured them (from the
/// report), scale events from the deployment's status read after the run (so that
/// the scale-down after the last request is in), placed on the run's clock. Fails
/// when a request failed: fidelity is only defined for runs that served everything.
pub fn live_observation(report: &Report, status: &DeploymentStatus) -> anyhow::Result<Observation> {
    if report.requests_failed > 0 {
        bail!(
            "{} of {} live requests failed: {:?}",
            report.requests_failed,
            report.requests_sent,
            report.errors_by_kind
        );
    }
    let requests = report
        .records
        .iter()
        .map(|r| ObservedRequest {
            arrival: r.start_s,
            ttft: r.ttft_us.unwrap_or(r.e2e_us) as f64 / 1e6,
            e2e: r.e2e_us as f64 / 1e6,
        })
        .collect();
    let start = report.run.started_at_unix_s;
    let mut scale_events: Vec<ObservedScaleEvent> = status
        .scale_events
        .iter()
        .map(|e| ObservedScaleEvent {
            t: e.at_ms as f64 / 1e3 - start,
            from: e.from,
            to: e.to,
        })
        // Events before the run are not its own (a little slack for the clocks).
        .filter(|e| e.t >= -0.5)
        .collect();
    scale_events.sort_by(|a, b| a.t.total_cmp(&b.t));
    Ok(Observation {
        scale_events,
        requests,
    })
}

/// The live run's requests as the simulator's workload: each request's send time and
/// the token counts the server reported (`usage`).
pub fn requests_from_report(report: &Report) -> anyhow::Result<Vec<SimRequest>> {
    let mut requests = Vec::with_capacity(report.records.len());
    for r in &report.records {
        let (Some(prompt), Some(output)) = (r.usage_prompt_tokens, r.usage_completion_tokens) else {
            bail!("request {} has no usage: the server must report token counts", r.id);
        };
        requests.push(SimRequest {
            arrival: r.start_s,
            prompt_tokens: u32::try_from(prompt).context("prompt tokens")?,
            output_tokens: u32::try_from(output).context("output tokens")?,
            ..SimRequest::default()
        });
    }
    requests.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    Ok(requests)
}

/// Measures a live run of `planned` (the scenario's requests, in issue order) from
/// its report and the server's `/metrics` read after the run (`before`: read before
/// it, so that only this run counts). The deployment runs `profile`.
pub fn measure_conditions(
    report: &Report,
    planned: &[SimRequest],
    profile: &SimProfile,
    deployment: &str,
    before: &MetricsText,
    after: &MetricsText,
) -> anyhow::Result<LiveConditions> {
    let first = planned.first().map_or(0.0, |r| r.arrival);
    let mut lags = Vec::with_capacity(report.records.len());
    for r in &report.records {
        let plan = planned
            .get(usize::try_from(r.id).context("request id")?)
            .with_context(|| format!("request {} is not in the plan", r.id))?;
        lags.push(r.start_s - (plan.arrival - first));
    }
    let sorted_lags = Sorted::new(lags.iter().copied());
    let labels = [("deployment", deployment)];
    let delta = |name: &str| after.sum(name, &labels) - before.sum(name, &labels);
    let steps = delta("swell_engine_step_duration_seconds_count");
    let batch = delta("swell_engine_batch_size_sum");
    let prompt_tokens = delta("swell_prompt_tokens_total");
    // A step of `b` sequences: base + (b - 1) per sequence, plus its prefill (every
    // prompt of this scenario is prefilled within one step).
    let step_modelled_seconds = steps * profile.decode_step_base.as_secs_f64()
        + (batch - steps).max(0.0) * profile.decode_step_per_sequence.as_secs_f64()
        + prompt_tokens / profile.prefill_tokens_per_second;
    let cold_starts = delta("swell_replica_cold_start_seconds_count");
    let cold_start_mean = if cold_starts > 0.0 {
        delta("swell_replica_cold_start_seconds_sum") / cold_starts
    } else {
        profile.cold_start.as_secs_f64()
    };
    let server_ttft_count = delta("swell_time_to_first_token_seconds_count");
    let server_ttft_mean = if server_ttft_count > 0.0 {
        delta("swell_time_to_first_token_seconds_sum") / server_ttft_count
    } else {
        0.0
    };
    let client_ttfts: Vec<f64> = report
        .records
        .iter()
        .filter_map(|r| r.ttft_us.map(|us| us as f64 / 1e6))
        .collect();
    let client_ttft_mean = client_ttfts.iter().sum::<f64>() / client_ttfts.len().max(1) as f64;
    Ok(LiveConditions {
        requests: report.records.len(),
        send_lag_p50: sorted_lags.percentile(50.0).unwrap_or(0.0),
        send_lag_p99: sorted_lags.percentile(99.0).unwrap_or(0.0),
        send_lag_max: lags.iter().copied().fold(0.0, f64::max),
        steps: steps.max(0.0) as u64,
        step_wall_seconds: delta("swell_engine_step_duration_seconds_sum"),
        step_modelled_seconds,
        cold_start_mean,
        client_ttft_overhead_mean: client_ttft_mean - server_ttft_mean,
        decisions: delta("swell_autoscaler_decisions_total").max(0.0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use swell_simulator::fidelity::{Scenario, ValidityBounds};

    use super::*;

    fn live_report(starts: &[f64], ttft_s: f64) -> Report {
        let mut report = crate::report::ReportBuilder::new().finish(
            crate::report::RunInfo {
                mode: "trace".into(),
                rate: None,
                concurrency: None,
                trace: None,
                time_scale: Some(1.0),
                protocol: crate::Protocol::Sse,
                endpoint: crate::Endpoint::Completions,
                model: "fidelity".into(),
                url: "http://127.0.0.1:1".into(),
                seed: 0,
                started_at_unix_s: 0.0,
            },
            Duration::from_secs(10),
            starts.len() as u64,
        );
        report.records = starts
            .iter()
            .enumerate()
            .map(|(i, &start_s)| crate::record::RequestRecord {
                id: i as u64,
                start_s,
                status: "ok".into(),
                error_message: None,
                ttft_us: Some((ttft_s * 1e6) as u64),
                e2e_us: 1_000_000,
                itl_us: Vec::new(),
                itl_mean_us: None,
                itl_max_us: None,
                prompt_tokens: 48,
                max_tokens: 32,
                usage_prompt_tokens: Some(48),
                usage_completion_tokens: Some(32),
                content_chunks: 32,
                queue_events: 0,
                starting_events: 0,
                comments: 0,
                wait_comment_us: None,
                wait_position: None,
                wait_eta_s: None,
                first_chunk_us: None,
            })
            .collect();
        report
    }

    fn metrics(text: &str) -> MetricsText {
        MetricsText::parse(text)
    }

    #[test]
    fn live_conditions_measure_send_lag_step_stretch_and_overheads() {
        let profile = Scenario::step().profile().unwrap();
        // Planned at 5, 6, 7 s (the plan's first request is the run's 0); sent 1, 3 and
        // 20 ms late.
        let planned: Vec<SimRequest> = [5.0, 6.0, 7.0]
            .iter()
            .map(|&arrival| SimRequest { arrival, prompt_tokens: 48, output_tokens: 32, ..SimRequest::default() })
            .collect();
        let report = live_report(&[0.001, 1.003, 2.020], 0.100);
        let before = metrics(
            "swell_engine_step_duration_seconds_count{deployment=\"d\",phase=\"decode\"} 10\n\
             swell_engine_step_duration_seconds_sum{deployment=\"d\",phase=\"decode\"} 1\n\
             swell_engine_step_duration_seconds_count{deployment=\"other\",phase=\"decode\"} 999\n",
        );
        // 100 more steps of 4 sequences each (modelled 20 + 3 × 2 = 26 ms) and three 48-token
        // prompts (2.4 ms each): 2.6072 s modelled, 3.12864 s of wall time (× 1.2).
        let after = metrics(
            "swell_engine_step_duration_seconds_count{deployment=\"d\",phase=\"decode\"} 90\n\
             swell_engine_step_duration_seconds_count{deployment=\"d\",phase=\"mixed\"} 20\n\
             swell_engine_step_duration_seconds_sum{deployment=\"d\",phase=\"decode\"} 3.5\n\
             swell_engine_step_duration_seconds_sum{deployment=\"d\",phase=\"mixed\"} 0.62864\n\
             swell_engine_step_duration_seconds_count{deployment=\"other\",phase=\"decode\"} 5000\n\
             swell_engine_batch_size_sum{deployment=\"d\"} 400\n\
             swell_prompt_tokens_total{deployment=\"d\",tenant=\"default\"} 144\n\
             swell_replica_cold_start_seconds_count{deployment=\"d\"} 2\n\
             swell_replica_cold_start_seconds_sum{deployment=\"d\"} 4.1\n\
             swell_time_to_first_token_seconds_count{deployment=\"d\"} 3\n\
             swell_time_to_first_token_seconds_sum{deployment=\"d\"} 0.27\n\
             swell_autoscaler_decisions_total{deployment=\"d\",direction=\"stable\",reason=\"x\"} 7\n\
             swell_autoscaler_decisions_total{deployment=\"d\",direction=\"up\",reason=\"y\"} 2\n",
        );
        let c = measure_conditions(&report, &planned, &profile, "d", &before, &after).unwrap();
        assert_eq!((c.requests, c.steps, c.decisions), (3, 100, 9));
        assert!((c.send_lag_p50 - 0.003).abs() < 1e-9 && (c.send_lag_max - 0.020).abs() < 1e-9, "{c:?}");
        assert!((c.step_modelled_seconds - 2.6072).abs() < 1e-9, "{c:?}");
        assert!((c.step_stretch() - 1.2).abs() < 1e-9, "{c:?}");
        assert!((c.cold_start_mean - 2.05).abs() < 1e-9);
        assert!((c.client_ttft_overhead_mean - 0.010).abs() < 1e-9, "{c:?}");
        assert_eq!(c.check(&ValidityBounds::default()), Ok(()));

        // The machine as run: 20 ms × 1.2 base, 2 ms × 1.2 per sequence, prefill / 1.2.
        let run = c.as_run(&profile);
        assert_eq!(run.decode_step_base, Duration::from_millis(24));
        assert_eq!(run.decode_step_per_sequence, Duration::from_micros(2400));
        assert!((run.prefill_tokens_per_second - 20_000.0 / 1.2).abs() < 1e-6);
        assert_eq!(run.cold_start, Duration::from_millis(2050));
        assert_eq!((run.max_batch_size, run.kv_capacity_tokens), (profile.max_batch_size, profile.kv_capacity_tokens));

        // A request that is not in the plan is an error, not a lag.
        let extra = live_report(&[0.0, 1.0, 2.0, 3.0], 0.1);
        assert!(measure_conditions(&extra, &planned, &profile, "d", &before, &after).is_err());
    }
}
