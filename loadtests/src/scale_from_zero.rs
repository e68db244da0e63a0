//! Scale from zero, by stage: how long the first request to a deployment at zero
//! replicas waits for its first token, and where that time goes.
//!
//! Each run waits until the deployment has no replica, sends one streaming request, and
//! reads the deployment's admin status right after it:
//!
//! | stage | from | to | where it is read |
//! |---|---|---|---|
//! | decision | the client sends the request | the supervisor decides to start a replica | the scale event's `at_ms` (its `0 → n` event) |
//! | replica start | the decision | the engine starts loading | the replica's `cold_start_seconds` minus its engine stages |
//! | model load | the engine starts loading | the engine is ready | the replica's `cold_start_stages` (the engine's own `ColdStartReport`) |
//! | first token | the replica is ready | the client has the first token | the client's TTFT minus the three above |
//!
//! The four add up to the client's TTFT exactly. The decision covers HTTP, validation
//! and tokenization, admission, the enqueue and the supervisor's tick; replica start the
//! worker actor and its engine thread (and the `Ready` message back); first token the
//! lease, the prefill, the first step and the way back to the client. The replica's
//! creation time is read as the status's time minus the replica's `age_seconds` (the
//! status call's round trip is its uncertainty, about a millisecond on one machine);
//! client and server clocks must be the same clock (one machine), or the decision and
//! replica-start stages absorb their difference.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::admin::{AdminClient, DeploymentStatus};
use crate::config::{Endpoint, LoadTestConfig};
use crate::lengths::LengthDist;

/// What to measure against.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleFromZeroConfig {
    pub url: String,
    /// The deployment (sent as `model`).
    pub model: String,
    pub admin_token: Option<String>,
    pub api_key: Option<String>,
    pub endpoint: Endpoint,
    /// Measurements; the deployment must go back to zero between them (a short
    /// `scale_to_zero_window`).
    pub runs: u32,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// How long to wait for the deployment to reach zero before each run.
    pub wait_for_zero: Duration,
}

impl Default for ScaleFromZeroConfig {
    fn default() -> Self {
        Self {
            url: crate::config::DEFAULT_URL.into(),
            model: "default".into(),
            admin_token: None,
            api_key: None,
            endpoint: Endpoint::Completions,
            runs: 3,
            prompt_tokens: 32,
            output_tokens: 8,
            wait_for_zero: Duration::from_secs(120),
        }
    }
}

/// One request from zero, by stage (seconds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageBreakdown {
    /// The client's time to first token: the sum of the four stages.
    pub ttft_s: f64,
    pub decision_s: f64,
    pub replica_start_s: f64,
    pub model_load_s: f64,
    pub first_token_s: f64,
    /// The engine's own stages (`read_weights`, `warm_up`, ...), seconds.
    pub model_load_stages: Vec<(String, f64)>,
    /// The replica that served it and the scale event's reason.
    pub replica: String,
    pub reason: String,
}

impl StageBreakdown {
    /// Derives the stages. `sent_unix_s`: when the client sent; `status_unix_s`: when the
    /// status (read after the request) was built.
    pub fn derive(
        sent_unix_s: f64,
        ttft_s: f64,
        status: &DeploymentStatus,
        status_unix_s: f64,
    ) -> anyhow::Result<Self> {
        // The first scale-up from zero at or after the send (a little slack: the event is
        // stamped in whole milliseconds).
        let event = status
            .scale_events
            .iter()
            .filter(|e| e.from == 0 && e.to > 0 && e.at_ms as f64 / 1e3 >= sent_unix_s - 0.002)
            .min_by_key(|e| e.at_ms)
            .context("no scale-up from zero after the request was sent: was the deployment at zero?")?;
        let decided_unix_s = event.at_ms as f64 / 1e3;
        // The replica created by that decision: the one created closest to it.
        let replica = status
            .replica_details
            .iter()
            .filter(|r| r.cold_start_seconds.is_some())
            .min_by(|a, b| {
                let gap = |r: &crate::admin::ReplicaDetail| (status_unix_s - r.age_seconds - decided_unix_s).abs();
                gap(a).total_cmp(&gap(b))
            })
            .context("no ready replica in the status: it may already have been retired (use a longer scale_to_zero_window)")?;
        let created_unix_s = status_unix_s - replica.age_seconds;
        let cold_start_s = replica.cold_start_seconds.unwrap_or_default();
        let stages = replica.cold_start_stages.clone().unwrap_or_default();
        let model_load_s = stages.total().as_secs_f64();
        let ready_unix_s = created_unix_s + cold_start_s;
        let decision_s = decided_unix_s - sent_unix_s;
        let replica_start_s = ready_unix_s - decided_unix_s - model_load_s;
        let first_token_s = sent_unix_s + ttft_s - ready_unix_s;
        Ok(Self {
            ttft_s,
            decision_s,
            replica_start_s,
            model_load_s,
            first_token_s,
            model_load_stages: stages
                .stages
                .iter()
                .map(|(name, d)| (name.clone(), d.as_secs_f64()))
                .collect(),
            replica: replica.replica.clone(),
            reason: event.reason.clone(),
        })
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Waits until the deployment has no replica (none starting or draining either).
async fn wait_for_zero(admin: &AdminClient, config: &ScaleFromZeroConfig) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + config.wait_for_zero;
    loop {
        let status = admin.status(&config.model).await?;
        let r = status.replicas;
        if r.capacity() == 0 && r.draining == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{} still has {} ready, {} starting, {} draining after {:?}: a scale-from-zero measurement needs the deployment at zero (min_replicas 0 and a short scale_to_zero_window, e.g. \"5s\")",
                config.model,
                r.ready,
                r.starting,
                r.draining,
                config.wait_for_zero
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Measures `config.runs` requests from zero. Call on an actix-rt runtime.
pub async fn measure(config: &ScaleFromZeroConfig) -> anyhow::Result<Vec<StageBreakdown>> {
    if config.runs == 0 {
        bail!("runs must be at least 1");
    }
    let admin = AdminClient::new(&config.url, config.admin_token.clone());
    let mut out = Vec::new();
    for run in 0..config.runs {
        wait_for_zero(&admin, config).await?;
        let report = crate::run(LoadTestConfig {
            url: config.url.clone(),
            api_key: config.api_key.clone(),
            model: config.model.clone(),
            endpoint: config.endpoint,
            concurrency: Some(1),
            requests: Some(1),
            prompt_tokens: LengthDist::Fixed(config.prompt_tokens),
            output_tokens: LengthDist::Fixed(config.output_tokens),
            seed: 42 + u64::from(run),
            quiet: true,
            ..LoadTestConfig::default()
        })
        .await?;
        let Some(record) = report.records.first() else {
            bail!("the request was not sent");
        };
        if !record.is_ok() {
            bail!(
                "the request from zero failed: {} {}",
                record.status,
                record.error_message.as_deref().unwrap_or("")
            );
        }
        let ttft_s = record.ttft_us.context("the request got no token")? as f64 / 1e6;
        let sent_unix_s = report.run.started_at_unix_s + record.start_s;
        let before = unix_now();
        let status = admin.status(&config.model).await?;
        let status_unix_s = (before + unix_now()) / 2.0;
        out.push(StageBreakdown::derive(sent_unix_s, ttft_s, &status, status_unix_s)?);
    }
    Ok(out)
}

/// The modelled breakdown of a `sim` profile (what the simulator charges a request from
/// zero): an immediate decision, the profile's `schedule` stage as the replica start,
/// its other stages as the model load, and the time to first token of a lone
/// `prompt_tokens` prompt.
pub fn modelled(profile: &swell_workers::sim::SimProfile, prompt_tokens: u32) -> StageBreakdown {
    let stages = profile.cold_start_stages();
    let replica_start_s = stages
        .iter()
        .filter(|(name, _)| *name == "schedule")
        .map(|(_, d)| d.as_secs_f64())
        .sum();
    let load: Vec<(String, f64)> = stages
        .iter()
        .filter(|(name, _)| *name != "schedule")
        .map(|(name, d)| (name.to_string(), d.as_secs_f64()))
        .collect();
    let model_load_s = load.iter().map(|s| s.1).sum();
    let first_token_s = swell_workers::sim::PerformanceModel::new(profile)
        .time_to_first_token(u64::from(prompt_tokens), 0)
        .as_secs_f64();
    StageBreakdown {
        ttft_s: replica_start_s + model_load_s + first_token_s,
        decision_s: 0.0,
        replica_start_s,
        model_load_s,
        first_token_s,
        model_load_stages: load,
        replica: profile.name.clone(),
        reason: "modelled".into(),
    }
}

/// A markdown table, one row per measurement and a median row when there are several.
pub fn render(rows: &[StageBreakdown]) -> String {
    let mut s = String::from(
        "| run | decision | replica start | model load (stages) | first token | TTFT |\n|---|---:|---:|---|---:|---:|\n",
    );
    let ms = |v: f64| format!("{:.1} ms", v * 1e3);
    for (i, r) in rows.iter().enumerate() {
        let stages = r
            .model_load_stages
            .iter()
            .map(|(name, v)| format!("{name} {}", ms(*v)))
            .collect::<Vec<_>>()
            .join(", ");
        s.push_str(&format!(
            "| {} ({}) | {} | {} | {} ({stages}) | {} | {} |\n",
            i + 1,
            r.replica,
            ms(r.decision_s),
            ms(r.replica_start_s),
            ms(r.model_load_s),
            ms(r.first_token_s),
            ms(r.ttft_s)
        ));
    }
    if rows.len() > 1 {
        let median = |f: fn(&StageBreakdown) -> f64| {
            let mut v: Vec<f64> = rows.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            let mid = v.len() / 2;
            if v.len() % 2 == 0 {
                (v[mid - 1] + v[mid]) / 2.0
            } else {
                v[mid]
            }
        };
        s.push_str(&format!(
            "| median | {} | {} | {} | {} | {} |\n",
            ms(median(|r| r.decision_s)),
            ms(median(|r| r.replica_start_s)),
            ms(median(|r| r.model_load_s)),
            ms(median(|r| r.first_token_s)),
            ms(median(|r| r.ttft_s))
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{ColdStartStages, ReplicaCounts, ReplicaDetail, ScaleEvent};

    fn status() -> DeploymentStatus {
        DeploymentStatus {
            name: "d".into(),
            replicas: ReplicaCounts {
                desired: 1,
                ready: 1,
                starting: 0,
                draining: 0,
            },
            scale_events: vec![
                // An earlier run's events are ignored.
                ScaleEvent {
                    at_ms: 999_000,
                    from: 0,
                    to: 1,
                    reason: "queued_at_zero".into(),
                    ..ScaleEvent::default()
                },
                ScaleEvent {
                    at_ms: 1_000_010,
                    from: 0,
                    to: 1,
                    reason: "queued_at_zero".into(),
                    ..ScaleEvent::default()
                },
            ],
            replica_details: vec![ReplicaDetail {
                replica: "d-2".into(),
                age_seconds: 1.99,
                cold_start_seconds: Some(0.9),
                cold_start_stages: Some(ColdStartStages {
                    stages: vec![
                        ("read_weights".into(), Duration::from_millis(600)),
                        ("warm_up".into(), Duration::from_millis(200)),
                    ],
                }),
                ..ReplicaDetail::default()
            }],
            ..DeploymentStatus::default()
        }
    }

    #[test]
    fn stages_add_up_to_the_ttft() {
        // Sent at 1000.000; decided at 1000.010; created at 1002.000 - 1.99 = 1000.010;
        // ready 0.9 s later (0.8 s of engine stages); first token at 1001.0.
        let b = StageBreakdown::derive(1000.0, 1.0, &status(), 1002.0).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(b.decision_s, 0.010), "{b:?}");
        assert!(close(b.replica_start_s, 0.1), "{b:?}");
        assert!(close(b.model_load_s, 0.8), "{b:?}");
        assert!(close(b.first_token_s, 1.0 - 0.010 - 0.9), "{b:?}");
        assert!(close(b.decision_s + b.replica_start_s + b.model_load_s + b.first_token_s, b.ttft_s));
        assert_eq!(b.model_load_stages[0], ("read_weights".to_string(), 0.6));
        assert_eq!((b.replica.as_str(), b.reason.as_str()), ("d-2", "queued_at_zero"));
        let mut slower = b.clone();
        slower.model_load_s = 1.0;
        let table = render(&[b.clone(), slower]);
        assert!(table.contains("| median | 10.0 ms | 100.0 ms | 900.0 ms"), "{table}");
    }

    #[test]
    fn without_a_scale_up_after_the_send_it_says_why() {
        let err = StageBreakdown::derive(1000.02, 1.0, &status(), 1002.0).unwrap_err();
        assert!(err.to_string().contains("at zero"), "{err}");
        let mut s = status();
        s.replica_details.clear();
        let err = StageBreakdown::derive(1000.0, 1.0, &s, 1002.0).unwrap_err();
        assert!(err.to_string().contains("scale_to_zero_window"), "{err}");
    }

    #[test]
    fn modelled_breakdown_of_a_profile() {
        let p = swell_workers::sim::builtin("llama-3.1-8b-h100").unwrap();
        let b = modelled(&p, 1000);
        assert_eq!(b.decision_s, 0.0);
        assert!((b.replica_start_s - 2.5).abs() < 1e-9);
        assert!((b.model_load_s - 22.5).abs() < 1e-9);
        // 1000 tokens / 30k tok/s + 6.5 ms.
        assert!((b.first_token_s - 0.039_833_333).abs() < 1e-9, "{b:?}");
        assert!((b.ttft_s - 25.039_833_333).abs() < 1e-9);
        assert_eq!(b.model_load_stages.len(), 2);
    }
}
