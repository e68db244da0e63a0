//! Linear scaling: throughput with N replicas against N × the throughput of one.
//!
//! `efficiency(N) = throughput(N) / (N × throughput(1))`, throughput in generated tokens
//! per second over a measurement window in which every replica is saturated.
//!
//! - [`simulated`]: the simulator (virtual time), N replicas kept warm by a static
//!   policy, Poisson arrivals at 1.25 × what N replicas can serve (so the queue never
//!   empties), tokens counted in the window after a warm-up. The simulator models the
//!   replicas and one shared queue and nothing else (no gateway, no network), so this is
//!   the scaling of the queueing and dispatch model; less than 1 would mean capacity lost
//!   to dispatch.
//! - [`live`]: a running server. A deployment is set to exactly N replicas (`min =
//!   max = N`), a closed loop of `N × per_replica` streams keeps every batch full, and the
//!   server's own `swell_generated_tokens_total` (polled from `/metrics` by the monitor)
//!   gives the tokens of the window. With a `sim` profile whose step time is a sleep
//!   (wall clock, not CPU), replicas cost almost no CPU, so the gateway and the load
//!   generator are what the machine's cores are spent on, and the point where efficiency
//!   falls is where they saturate; each point also reports how busy the machine's CPUs
//!   were (`/proc/stat`, Linux) and the clients' inter-token latency.

use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;
use serde_json::{json, Value};
use swell_simulator::engine::Simulator;
use swell_simulator::policies::Static;
use swell_simulator::workload::SimRequest;
use swell_workers::sim::{PerformanceModel, SimProfile};

use crate::admin::AdminClient;
use crate::config::{Endpoint, LoadTestConfig};
use crate::lengths::LengthDist;
use crate::monitor::MonitorConfig;

/// One N.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingPoint {
    pub replicas: u32,
    /// Concurrent streams (live) or the offered load in requests/s (simulated).
    pub offered: f64,
    pub tokens_per_s: f64,
    /// `tokens_per_s / (replicas × tokens_per_s at N = 1)`.
    pub efficiency: f64,
    /// Live only: the clients' median inter-token latency, ms.
    pub itl_p50_ms: Option<f64>,
    /// Live only: how busy the machine's CPUs were during the window (0..1).
    pub cpu_busy: Option<f64>,
    /// Live only, with the server's pid: CPU cores the server process used during the
    /// window (its user + system time / the window).
    pub server_cores: Option<f64>,
    /// Live only: CPU cores this process (the load generator) used during the window.
    pub loadgen_cores: Option<f64>,
    /// Live only: requests that failed, and how.
    pub failed: Option<u64>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub errors: std::collections::BTreeMap<String, u64>,
}

/// Fills in `efficiency` from the first point (which must be N = 1).
fn with_efficiency(mut points: Vec<ScalingPoint>) -> anyhow::Result<Vec<ScalingPoint>> {
    let Some(first) = points.first() else {
        return Ok(points);
    };
    if first.replicas != 1 {
        bail!("the first N must be 1 (the reference), got {}", first.replicas);
    }
    let one = first.tokens_per_s;
    for p in &mut points {
        p.efficiency = if one > 0.0 {
            p.tokens_per_s / (f64::from(p.replicas) * one)
        } else {
            0.0
        };
    }
    Ok(points)
}

/// Checks a list of N: not empty, starts at 1, increasing.
pub fn check_replicas(ns: &[u32]) -> anyhow::Result<()> {
    if ns.first() != Some(&1) {
        bail!("the replica counts must start at 1 (the reference), got {ns:?}");
    }
    if ns.windows(2).any(|w| w[1] <= w[0]) {
        bail!("the replica counts must increase, got {ns:?}");
    }
    Ok(())
}

/// Tokens generated within `[from, to]` by a request whose first token came at
/// `first` and whose `tokens` were done at `finish` (the rest evenly in between).
fn tokens_within(first: f64, finish: f64, tokens: u32, from: f64, to: f64) -> f64 {
    let mut n = 0.0;
    if (from..=to).contains(&first) {
        n += 1.0;
    }
    let rest = f64::from(tokens.saturating_sub(1));
    if rest > 0.0 && finish > first {
        let overlap = (finish.min(to) - first.max(from)).max(0.0);
        n += rest * overlap / (finish - first);
    }
    n
}

/// The simulator's scaling curve for `profile`: for each N, `duration` seconds of
/// Poisson arrivals at 1.25 × the rate N replicas decode at full batch (more than they
/// serve once prefill is counted: the queue never empties), tokens counted from
/// `warmup` to `duration`.
pub fn simulated(
    profile: &SimProfile,
    ns: &[u32],
    prompt_tokens: u32,
    output_tokens: u32,
    duration: f64,
    warmup: f64,
) -> anyhow::Result<Vec<ScalingPoint>> {
    check_replicas(ns)?;
    if !(warmup >= 0.0 && duration > warmup) {
        bail!("the duration ({duration} s) must be longer than the warm-up ({warmup} s)");
    }
    let model = PerformanceModel::new(profile);
    let context = u64::from(prompt_tokens) + u64::from(output_tokens) / 2;
    let per_replica_tokens = model.max_throughput(context);
    if !per_replica_tokens.is_finite() || per_replica_tokens <= 0.0 {
        bail!("profile {} has no finite throughput (the zero profile cannot saturate)", profile.name);
    }
    let per_replica_rps = per_replica_tokens / f64::from(output_tokens.max(1));
    let mut points = Vec::new();
    for &n in ns {
        let rate = 1.25 * per_replica_rps * f64::from(n);
        let requests = poisson(rate, duration, prompt_tokens, output_tokens, u64::from(n));
        let mut policy = Static { replicas: n };
        let result = Simulator::new(&requests, profile, &mut policy).run(Some(duration));
        let tokens: f64 = result
            .outcomes
            .iter()
            .map(|o| tokens_within(o.first_token, o.finish, o.output_tokens, warmup, duration))
            .sum();
        points.push(ScalingPoint {
            replicas: n,
            offered: rate,
            tokens_per_s: tokens / (duration - warmup),
            efficiency: 0.0,
            itl_p50_ms: None,
            cpu_busy: None,
            server_cores: None,
            loadgen_cores: None,
            failed: None,
            errors: Default::default(),
        });
    }
    with_efficiency(points)
}

fn poisson(rate: f64, duration: f64, prompt: u32, output: u32, seed: u64) -> Vec<SimRequest> {
    crate::arrivals::PoissonArrivals::new(rate, seed)
        .map(|a| a.at.as_secs_f64())
        .take_while(|&t| t < duration)
        .map(|arrival| SimRequest {
            arrival,
            prompt_tokens: prompt,
            output_tokens: output,
            ..SimRequest::default()
        })
        .collect()
}

/// What a live scaling run needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveScaling {
    pub url: String,
    pub admin_token: Option<String>,
    pub api_key: Option<String>,
    /// The deployment created (or updated) for the run.
    pub deployment: String,
    /// Its `sim` block.
    pub sim: Value,
    pub replicas: Vec<u32>,
    /// Streams per replica (the batch size, to keep every batch full).
    pub per_replica: u32,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    pub warmup: Duration,
    pub window: Duration,
    /// The server's process id, when it runs on this machine (Linux): its CPU use is
    /// reported per point.
    pub server_pid: Option<u32>,
}

impl LiveScaling {
    /// The deployment body for `n` replicas, exactly.
    pub fn deployment_body(&self, n: u32) -> Value {
        json!({
            "engine": "sim",
            "sim": self.sim,
            "max_tokens_default": self.output_tokens,
            "autoscaling": {
                "min_replicas": n,
                "max_replicas": n,
                // Reach N at once (no velocity limit in the way).
                "velocity": {"scale_up": {"replicas": 1000, "period": "1s"},
                             "scale_down": {"replicas": 1000, "period": "1s"}},
            },
        })
    }
}

/// Busy and total jiffies of all CPUs (`/proc/stat`), when readable.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    let total: u64 = values.iter().take(8).sum();
    Some((total - idle, total))
}

/// User + system CPU seconds a process has used (`/proc/PID/stat`, Linux).
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, inside parentheses).
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after `)`.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ is 100 on every mainstream Linux build.
    Some(ticks as f64 / 100.0)
}

/// Runs the live scaling curve. Call on an actix-rt runtime.
pub async fn live(config: &LiveScaling) -> anyhow::Result<Vec<ScalingPoint>> {
    check_replicas(&config.replicas)?;
    let admin = AdminClient::new(&config.url, config.admin_token.clone());
    let mut points = Vec::new();
    for &n in &config.replicas {
        admin
            .put_deployment(&config.deployment, &config.deployment_body(n))
            .await
            .with_context(|| format!("setting {} to {n} replicas", config.deployment))?;
        admin
            .wait_for_replicas(&config.deployment, n, Duration::from_secs(120), Duration::from_millis(200))
            .await?;
        let streams = n * config.per_replica;
        let cpu = std::rc::Rc::new(std::cell::Cell::new((None, None, None)));
        let measure_cpu = {
            let (cpu, warmup, window, pid) = (cpu.clone(), config.warmup, config.window, config.server_pid);
            let me = std::process::id();
            actix_rt::spawn(async move {
                tokio::time::sleep(warmup).await;
                let read = || (cpu_jiffies(), pid.and_then(process_cpu_seconds), process_cpu_seconds(me));
                let start = read();
                tokio::time::sleep(window).await;
                let end = read();
                let busy = match (start.0, end.0) {
                    (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some((b1 - b0) as f64 / (t1 - t0) as f64),
                    _ => None,
                };
                let cores = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / window.as_secs_f64());
                cpu.set((busy, cores(start.1, end.1), cores(start.2, end.2)));
            })
        };
        let report = crate::run(LoadTestConfig {
            url: config.url.clone(),
            api_key: config.api_key.clone(),
            model: config.deployment.clone(),
            endpoint: Endpoint::Completions,
            concurrency: Some(streams as usize),
            duration: Some(config.warmup + config.window),
            prompt_tokens: LengthDist::Fixed(config.prompt_tokens),
            output_tokens: LengthDist::Fixed(config.output_tokens),
            drain_timeout: Duration::from_secs(60),
            quiet: true,
            monitor: Some(MonitorConfig {
                admin_token: config.admin_token.clone(),
                interval: Duration::from_millis(500),
            }),
            ..LoadTestConfig::default()
        })
        .await?;
        let _ = measure_cpu.await;
        let monitor = report.monitor.as_ref().context("the run had no monitor")?;
        let (from, to) = (
            config.warmup.as_secs_f64(),
            (config.warmup + config.window).as_secs_f64(),
        );
        let in_window: Vec<(f64, f64)> = monitor
            .samples
            .iter()
            .filter(|s| s.t_s >= from && s.t_s <= to)
            .filter_map(|s| s.generated_tokens_total.map(|g| (s.t_s, g)))
            .collect();
        let (Some(first), Some(last)) = (in_window.first(), in_window.last()) else {
            bail!("no /metrics sample inside the window at N = {n}");
        };
        if last.0 - first.0 < config.window.as_secs_f64() / 2.0 {
            bail!("too few /metrics samples inside the window at N = {n}");
        }
        points.push(ScalingPoint {
            replicas: n,
            offered: f64::from(streams),
            tokens_per_s: (last.1 - first.1) / (last.0 - first.0),
            efficiency: 0.0,
            itl_p50_ms: report.itl_ms.p50_ms,
            cpu_busy: cpu.get().0,
            server_cores: cpu.get().1,
            loadgen_cores: cpu.get().2,
            failed: Some(report.requests_failed),
            errors: report.errors_by_kind.clone(),
        });
    }
    with_efficiency(points)
}

/// A markdown table.
pub fn render(points: &[ScalingPoint], live: bool) -> String {
    let mut s = if live {
        String::from("| N | streams | tokens/s | N × tokens/s(1) | efficiency | ITL p50 | machine CPU busy | server (cores) | load generator (cores) | failed |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    } else {
        String::from("| N | offered req/s | tokens/s | N × tokens/s(1) | efficiency |\n|---:|---:|---:|---:|---:|\n")
    };
    let one = points.first().map_or(0.0, |p| p.tokens_per_s);
    for p in points {
        let ideal = f64::from(p.replicas) * one;
        if live {
            s.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} | {} |\n",
                p.replicas,
                p.offered,
                p.tokens_per_s,
                ideal,
                p.efficiency,
                p.itl_p50_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
                p.cpu_busy.map_or("-".into(), |v| format!("{:.0}%", v * 100.0)),
                p.server_cores.map_or("-".into(), |v| format!("{v:.2}")),
                p.loadgen_cores.map_or("-".into(), |v| format!("{v:.2}")),
                if p.errors.is_empty() {
                    p.failed.unwrap_or(0).to_string()
                } else {
                    format!("{} {:?}", p.failed.unwrap_or(0), p.errors)
                }
            ));
        } else {
            s.push_str(&format!(
                "| {} | {:.1} | {:.0} | {:.0} | {:.3} |\n",
                p.replicas, p.offered, p.tokens_per_s, ideal, p.efficiency
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_counted_inside_the_window_only() {
        // 11 tokens: the first at 1, ten more evenly over (1, 6].
        assert_eq!(tokens_within(1.0, 6.0, 11, 0.0, 10.0), 11.0);
        assert_eq!(tokens_within(1.0, 6.0, 11, 2.0, 10.0), 8.0);
        assert_eq!(tokens_within(1.0, 6.0, 11, 7.0, 10.0), 0.0);
        assert_eq!(tokens_within(1.0, 1.0, 1, 0.0, 2.0), 1.0);
    }

    #[test]
    fn the_replica_list_must_start_at_one_and_increase() {
        assert!(check_replicas(&[1, 2, 4]).is_ok());
        assert!(check_replicas(&[2, 4]).is_err());
        assert!(check_replicas(&[1, 4, 2]).is_err());
        assert!(check_replicas(&[]).is_err());
    }

    #[test]
    fn the_simulator_scales_linearly_to_64_replicas() {
        // The CPU profile (batches of 64) keeps a debug-build test fast: 64 replicas at
        // 1.25 × their capacity for 40 virtual seconds.
        let profile = swell_workers::sim::builtin("smollm2-135m-cpu").unwrap();
        let ns = [1, 2, 4, 8, 16, 32, 64];
        let points = simulated(&profile, &ns, 100, 64, 40.0, 15.0).unwrap();
        assert_eq!(points.len(), ns.len());
        let one = points[0].tokens_per_s;
        assert!(one > 100.0, "{points:?}");
        for p in &points {
            assert!(
                (0.97..=1.03).contains(&p.efficiency),
                "N = {}: efficiency {:.3}\n{}",
                p.replicas,
                p.efficiency,
                render(&points, false)
            );
        }
    }

    #[test]
    fn a_replica_cap_shows_as_lost_efficiency_in_the_arithmetic() {
        let points = with_efficiency(vec![
            ScalingPoint {
                replicas: 1,
                offered: 1.0,
                tokens_per_s: 100.0,
                efficiency: 0.0,
                itl_p50_ms: None,
                cpu_busy: None,
                server_cores: None,
                loadgen_cores: None,
                failed: None,
                errors: Default::default(),
            },
            ScalingPoint {
                replicas: 4,
                offered: 4.0,
                tokens_per_s: 300.0,
                efficiency: 0.0,
                itl_p50_ms: None,
                cpu_busy: None,
                server_cores: None,
                loadgen_cores: None,
                failed: None,
                errors: Default::default(),
            },
        ])
        .unwrap();
        assert_eq!(points[1].efficiency, 0.75);
        assert!(render(&points, false).contains("| 4 | 4.0 | 300 | 400 | 0.750 |"));
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        if std::path::Path::new("/proc/self/stat").exists() {
            let used = process_cpu_seconds(std::process::id()).expect("/proc/PID/stat parses");
            assert!(used >= 0.0);
            assert!(cpu_jiffies().is_some_and(|(busy, total)| total >= busy && total > 0));
        }
    }

    #[test]
    fn the_zero_profile_is_refused() {
        let zero = swell_workers::sim::builtin("zero").unwrap();
        let err = simulated(&zero, &[1], 10, 10, 10.0, 1.0).unwrap_err();
        assert!(err.to_string().contains("zero profile"), "{err}");
    }
}
