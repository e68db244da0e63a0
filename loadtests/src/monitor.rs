//! Watching the server while a load test runs: every `interval` the monitor reads the
//! deployment's admin status (replicas by state, desired count, queue depth, requests
//! in flight, the oldest wait, scale events) and `/metrics` (generated and prompt token
//! counters, the server-side time-to-first-token histogram), and keeps one
//! [`MonitorSample`] per poll on the run's own clock (seconds since the run started).
//!
//! The result, a [`LiveTimeline`], goes into the report (`monitor` in the JSON) and feeds
//! the live plots ([`crate::live_plot`]). Scale events carry the server's wall-clock time
//! (unix milliseconds) and are placed on the run's clock through the run's
//! `started_at_unix_s`; on one machine that is exact to the millisecond, across machines
//! it is off by the clocks' difference.
//!
//! A failed poll is counted and the monitor carries on (the run matters more than a
//! missing point); a monitor that cannot read the status at all fails the run before it
//! starts ([`Monitor::check`]).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::admin::{histogram_quantile, AdminClient, DeploymentStatus, MetricsText};

/// TTFT as the server measures it (from the edge to the first token).
const SERVER_TTFT: &str = "swell_time_to_first_token_seconds";
const GENERATED_TOKENS: &str = "swell_generated_tokens_total";
const PROMPT_TOKENS: &str = "swell_prompt_tokens_total";

/// What to watch and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorConfig {
    /// The admin token, when the server has one.
    pub admin_token: Option<String>,
    /// Time between polls.
    pub interval: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            admin_token: None,
            interval: Duration::from_secs(1),
        }
    }
}

/// One poll of the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorSample {
    /// Seconds since the start of the run (when the answer arrived).
    pub t_s: f64,
    pub desired: u32,
    pub ready: u32,
    pub starting: u32,
    pub draining: u32,
    /// Requests waiting for a replica.
    pub queue_depth: u64,
    /// Requests running on replicas.
    pub in_flight: u64,
    pub oldest_wait_s: Option<f64>,
    /// The deployment's `swell_generated_tokens_total` (all tenants), if `/metrics`
    /// answered.
    pub generated_tokens_total: Option<f64>,
    /// The deployment's `swell_prompt_tokens_total`.
    pub prompt_tokens_total: Option<f64>,
    /// Median and 99th percentile of the server's TTFT histogram over the requests that
    /// got their first token since the previous poll (bucket-interpolated).
    pub server_ttft_p50_s: Option<f64>,
    pub server_ttft_p99_s: Option<f64>,
}

impl MonitorSample {
    /// `ready + starting`: the replica count the autoscaler works with.
    pub fn capacity(&self) -> u32 {
        self.ready + self.starting
    }
}

/// One scale event, on the run's clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveScaleEvent {
    /// Seconds since the start of the run (negative: before it).
    pub t_s: f64,
    pub from: u32,
    pub to: u32,
    pub reason: String,
    pub detail: String,
}

/// Everything the monitor saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveTimeline {
    pub deployment: String,
    pub interval_s: f64,
    pub samples: Vec<MonitorSample>,
    /// Scale events from the start of the run to the last poll, oldest first.
    pub scale_events: Vec<LiveScaleEvent>,
    /// Polls that failed (status or metrics), and the last error.
    pub poll_errors: u64,
    pub last_error: Option<String>,
}

impl LiveTimeline {
    /// The replica count (`ready + starting`) the last poll at or before `t` saw (0
    /// before the first poll).
    pub fn capacity_at(&self, t: f64) -> u32 {
        self.samples
            .iter()
            .take_while(|s| s.t_s <= t)
            .last()
            .map_or(0, MonitorSample::capacity)
    }

    /// Generated tokens per second, at each poll, over the polls of the last `window`
    /// seconds (at least the previous poll): the server's counter moves in bursts, so
    /// single intervals are noisy.
    pub fn generated_tokens_per_s(&self, window: f64) -> Vec<(f64, f64)> {
        let counted: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter_map(|s| s.generated_tokens_total.map(|g| (s.t_s, g)))
            .collect();
        (1..counted.len())
            .filter_map(|i| {
                let (t, g) = counted[i];
                let start = counted[..i]
                    .iter()
                    .rev()
                    .skip(1)
                    .take_while(|(t0, _)| t - t0 <= window)
                    .last()
                    .copied()
                    .unwrap_or(counted[i - 1]);
                let dt = t - start.0;
                (dt > 0.0).then(|| (t, (g - start.1).max(0.0) / dt))
            })
            .collect()
    }
}

/// A running monitor: polls until [`Monitor::stop`].
pub struct Monitor {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<LiveTimeline>,
}

impl Monitor {
    /// Fails when the deployment's status cannot be read (wrong token, unknown
    /// deployment, server down): checked before a run starts.
    pub async fn check(base_url: &str, deployment: &str, config: &MonitorConfig) -> anyhow::Result<()> {
        let admin = AdminClient::new(base_url, config.admin_token.clone());
        admin
            .status(deployment)
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("cannot monitor the deployment: {e:#}"))
    }

    /// Starts polling on the current actix-rt thread. `run_start` / `run_start_unix_s`
    /// are the same instant on the monotonic and the wall clock.
    pub fn start(
        base_url: &str,
        deployment: &str,
        config: &MonitorConfig,
        run_start: Instant,
        run_start_unix_s: f64,
    ) -> Self {
        let admin = AdminClient::new(base_url, config.admin_token.clone());
        let (stop, stopped) = watch::channel(false);
        let poller = Poller {
            admin,
            deployment: deployment.to_string(),
            run_start,
            run_start_unix_s,
            timeline: LiveTimeline {
                deployment: deployment.to_string(),
                interval_s: config.interval.as_secs_f64(),
                ..LiveTimeline::default()
            },
            previous_ttft: None,
            seen_events: BTreeSet::new(),
        };
        let task = actix_rt::spawn(poller.run(config.interval, stopped));
        Self { stop, task }
    }

    /// Takes one last poll and returns what was seen.
    pub async fn stop(self) -> LiveTimeline {
        self.stop.send_replace(true);
        self.task.await.unwrap_or_default()
    }
}

struct Poller {
    admin: AdminClient,
    deployment: String,
    run_start: Instant,
    run_start_unix_s: f64,
    timeline: LiveTimeline,
    previous_ttft: Option<Vec<(f64, f64)>>,
    /// (at_ms, from, to) of events already kept.
    seen_events: BTreeSet<(u64, u32, u32)>,
}

impl Poller {
    async fn run(mut self, interval: Duration, mut stopped: watch::Receiver<bool>) -> LiveTimeline {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.poll().await,
                _ = stopped.wait_for(|s| *s) => {
                    self.poll().await;
                    return self.timeline;
                }
            }
        }
    }

    fn error(&mut self, error: anyhow::Error) {
        self.timeline.poll_errors += 1;
        self.timeline.last_error = Some(format!("{error:#}"));
    }

    async fn poll(&mut self) {
        let (status, metrics) = futures_util::join!(
            self.admin.status(&self.deployment),
            self.admin.metrics()
        );
        let t_s = self.run_start.elapsed().as_secs_f64();
        let status = match status {
            Ok(status) => status,
            Err(error) => return self.error(error),
        };
        let metrics = match metrics {
            Ok(metrics) => Some(metrics),
            Err(error) => {
                self.error(error);
                None
            }
        };
        self.keep_events(&status);
        let sample = self.sample(t_s, &status, metrics.as_ref());
        self.timeline.samples.push(sample);
    }

    fn keep_events(&mut self, status: &DeploymentStatus) {
        for e in &status.scale_events {
            let t_s = e.at_ms as f64 / 1e3 - self.run_start_unix_s;
            // Events of earlier runs against the same deployment are not this run's
            // (a little slack: the clocks are read at slightly different moments).
            if t_s < -0.5 || !self.seen_events.insert((e.at_ms, e.from, e.to)) {
                continue;
            }
            self.timeline.scale_events.push(LiveScaleEvent {
                t_s,
                from: e.from,
                to: e.to,
                reason: e.reason.clone(),
                detail: e.detail.clone(),
            });
        }
        self.timeline
            .scale_events
            .sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    }

    fn sample(&mut self, t_s: f64, status: &DeploymentStatus, metrics: Option<&MetricsText>) -> MonitorSample {
        let labels = [("deployment", self.deployment.as_str())];
        let (mut p50, mut p99) = (None, None);
        if let Some(m) = metrics {
            let ttft = m.histogram(SERVER_TTFT, &labels);
            let earlier = self.previous_ttft.take().unwrap_or_default();
            p50 = histogram_quantile(0.5, &earlier, &ttft);
            p99 = histogram_quantile(0.99, &earlier, &ttft);
            self.previous_ttft = Some(ttft);
        }
        MonitorSample {
            t_s,
            desired: status.replicas.desired,
            ready: status.replicas.ready,
            starting: status.replicas.starting,
            draining: status.replicas.draining,
            queue_depth: status.queue.depth,
            in_flight: status.queue.in_flight,
            oldest_wait_s: status.queue.oldest_wait_seconds,
            generated_tokens_total: metrics.map(|m| m.sum(GENERATED_TOKENS, &labels)),
            prompt_tokens_total: metrics.map(|m| m.sum(PROMPT_TOKENS, &labels)),
            server_ttft_p50_s: p50,
            server_ttft_p99_s: p99,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, ready: u32, starting: u32, generated: Option<f64>) -> MonitorSample {
        MonitorSample {
            t_s,
            desired: ready + starting,
            ready,
            starting,
            draining: 0,
            queue_depth: 0,
            in_flight: 0,
            oldest_wait_s: None,
            generated_tokens_total: generated,
            prompt_tokens_total: None,
            server_ttft_p50_s: None,
            server_ttft_p99_s: None,
        }
    }

    #[test]
    fn capacity_and_token_rates_from_samples() {
        let timeline = LiveTimeline {
            samples: vec![
                sample(0.5, 0, 1, Some(0.0)),
                sample(1.5, 1, 0, Some(100.0)),
                sample(2.0, 2, 1, None),
                sample(3.0, 3, 0, Some(400.0)),
            ],
            ..LiveTimeline::default()
        };
        assert_eq!(timeline.capacity_at(0.0), 0);
        assert_eq!(timeline.capacity_at(0.5), 1);
        assert_eq!(timeline.capacity_at(1.9), 1);
        assert_eq!(timeline.capacity_at(2.5), 3);
        assert_eq!(timeline.capacity_at(99.0), 3);
        // Polls without the counter are skipped; a window shorter than the polls' gaps
        // gives the rate since the previous poll that has the counter.
        assert_eq!(
            timeline.generated_tokens_per_s(0.1),
            vec![(1.5, 100.0), (3.0, 200.0)]
        );
        // A 5 s window: since the first poll.
        assert_eq!(
            timeline.generated_tokens_per_s(5.0),
            vec![(1.5, 100.0), (3.0, 160.0)]
        );
    }
}
