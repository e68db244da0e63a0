//! A small client for what a load test reads from (and sets on) a running Swell server
//! besides the generation API: the admin deployment status (`GET
//! /admin/v1/deployments/{name}`), deployment updates (`PUT`), and `/metrics`
//! (Prometheus text).
//!
//! [`DeploymentStatus`] is the subset of the status body the tools use (replica counts,
//! queue, scale events, replicas with their cold-start stages); unknown fields are
//! ignored, so it keeps working as the server adds fields. [`MetricsText`] parses the
//! Prometheus text exposition format (`name{label="v",...} value` lines; comments and
//! timestamps are skipped).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use awc::Client;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Talks to one server's admin API and `/metrics`.
#[derive(Clone)]
pub struct AdminClient {
    client: Client,
    base: String,
    token: Option<String>,
}

impl AdminClient {
    /// `base` is the server's base URL (`http://127.0.0.1:8080`); `token` the admin token
    /// (`server.admin_token`, `SWELL_ADMIN_TOKEN`), if the server has one.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            client: Client::builder()
                .timeout(Duration::from_secs(30))
                .finish(),
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
        }
    }

    fn authorized(&self, request: awc::ClientRequest) -> awc::ClientRequest {
        match &self.token {
            Some(token) => request.insert_header(("authorization", format!("Bearer {token}"))),
            None => request,
        }
    }

    /// The deployment's status as raw JSON.
    pub async fn status_json(&self, deployment: &str) -> anyhow::Result<Value> {
        let url = format!("{}/admin/v1/deployments/{deployment}", self.base);
        let mut response = self
            .authorized(self.client.get(&url))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
        let status = response.status();
        let body = response
            .body()
            .limit(64 << 20)
            .await
            .map_err(|e| anyhow::anyhow!("GET {url}: reading the body: {e}"))?;
        if !status.is_success() {
            bail!(
                "GET {url}: {status}: {} (is --admin-token right, and does the deployment exist?)",
                String::from_utf8_lossy(&body).trim()
            );
        }
        serde_json::from_slice(&body).with_context(|| format!("GET {url}: not JSON"))
    }

    /// The deployment's status.
    pub async fn status(&self, deployment: &str) -> anyhow::Result<DeploymentStatus> {
        let json = self.status_json(deployment).await?;
        serde_json::from_value(json)
            .with_context(|| format!("the status of {deployment:?} does not have the expected shape"))
    }

    /// Creates or replaces a deployment (`PUT /admin/v1/deployments/{name}`).
    pub async fn put_deployment(&self, deployment: &str, body: &Value) -> anyhow::Result<()> {
        let url = format!("{}/admin/v1/deployments/{deployment}", self.base);
        let mut response = self
            .authorized(self.client.put(&url))
            .send_json(body)
            .await
            .map_err(|e| anyhow::anyhow!("PUT {url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.body().limit(1 << 20).await.unwrap_or_default();
            bail!("PUT {url}: {status}: {}", String::from_utf8_lossy(&body).trim());
        }
        Ok(())
    }

    /// Deletes a deployment (`DELETE /admin/v1/deployments/{name}`); waits for the server's
    /// answer (it answers once the deployment drained).
    pub async fn delete_deployment(&self, deployment: &str) -> anyhow::Result<()> {
        let url = format!("{}/admin/v1/deployments/{deployment}", self.base);
        let mut response = self
            .authorized(self.client.delete(&url))
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("DELETE {url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.body().limit(1 << 20).await.unwrap_or_default();
            bail!("DELETE {url}: {status}: {}", String::from_utf8_lossy(&body).trim());
        }
        Ok(())
    }

    /// `/metrics`, parsed.
    pub async fn metrics(&self) -> anyhow::Result<MetricsText> {
        let url = format!("{}/metrics", self.base);
        let mut response = self
            .authorized(self.client.get(&url))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
        let status = response.status();
        let body = response
            .body()
            .limit(64 << 20)
            .await
            .map_err(|e| anyhow::anyhow!("GET {url}: reading the body: {e}"))?;
        if !status.is_success() {
            bail!("GET {url}: {status}");
        }
        Ok(MetricsText::parse(&String::from_utf8_lossy(&body)))
    }

    /// Polls the status every `every` until `ready` replicas are ready, none is starting and
    /// none is draining, or fails after `within`.
    pub async fn wait_for_replicas(
        &self,
        deployment: &str,
        ready: u32,
        within: Duration,
        every: Duration,
    ) -> anyhow::Result<DeploymentStatus> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let status = self.status(deployment).await?;
            let r = &status.replicas;
            if r.ready == ready && r.starting == 0 && r.draining == 0 {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{deployment}: still {} ready, {} starting, {} draining after {within:?} (waiting for {ready} ready)",
                    r.ready,
                    r.starting,
                    r.draining
                );
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// The part of the admin status body the load-test tools read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeploymentStatus {
    pub name: String,
    pub replicas: ReplicaCounts,
    pub queue: QueueView,
    /// Most recent last (the server keeps the last 100).
    pub scale_events: Vec<ScaleEvent>,
    pub replica_details: Vec<ReplicaDetail>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicaCounts {
    pub desired: u32,
    pub ready: u32,
    pub starting: u32,
    pub draining: u32,
}

impl ReplicaCounts {
    /// `ready + starting`, what the autoscaler counts as the replica count.
    pub fn capacity(&self) -> u32 {
        self.ready + self.starting
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueView {
    pub depth: u64,
    pub in_flight: u64,
    pub oldest_wait_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScaleEvent {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub from: u32,
    pub to: u32,
    pub direction: String,
    pub reason: String,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicaDetail {
    pub replica: String,
    pub state: String,
    pub active_sequences: u64,
    pub generated_tokens: u64,
    /// Seconds since the supervisor created the replica, when the status was built.
    pub age_seconds: f64,
    /// From creation to ready (actor start, engine thread, the engine's own cold start).
    pub cold_start_seconds: Option<f64>,
    pub cold_start_stages: Option<ColdStartStages>,
}

/// The engine's own cold start by stage (`ColdStartReport` of `swell-workers`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ColdStartStages {
    pub stages: Vec<(String, Duration)>,
}

impl ColdStartStages {
    pub fn total(&self) -> Duration {
        self.stages.iter().map(|(_, d)| *d).sum()
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsText {
    pub samples: Vec<MetricSample>,
}

impl MetricsText {
    /// Parses the text exposition format. Lines that do not parse are skipped (the format
    /// allows extensions this reader does not need).
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_sample_line)
            .collect();
        Self { samples }
    }

    /// Sum of every sample of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Samples of `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a MetricSample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// A histogram's cumulative buckets (`le`, count) summed over the series matching
    /// `labels`, sorted by `le` (`+Inf` last).
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in self.matching(&bucket, labels) {
            let Some(le) = s.labels.get("le") else { continue };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => continue,
                }
            };
            let entry = by_le.entry(le.to_bits()).or_insert((le, 0.0));
            entry.1 += s.value;
        }
        let mut buckets: Vec<(f64, f64)> = by_le.into_values().collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

/// The `q` quantile (0..1) of the observations between two snapshots of one cumulative
/// histogram (`later - earlier`, bucket by bucket), interpolated linearly inside the
/// bucket as Prometheus' `histogram_quantile` does. `None` without observations.
pub fn histogram_quantile(q: f64, earlier: &[(f64, f64)], later: &[(f64, f64)]) -> Option<f64> {
    let count_at = |buckets: &[(f64, f64)], le: f64| {
        buckets
            .iter()
            .find(|(l, _)| l.to_bits() == le.to_bits())
            .map_or(0.0, |b| b.1)
    };
    let delta: Vec<(f64, f64)> = later
        .iter()
        .map(|&(le, c)| (le, (c - count_at(earlier, le)).max(0.0)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut previous = (0.0, 0.0);
    for &(le, count) in &delta {
        if count >= rank {
            if le.is_infinite() {
                // Above the last finite bound: that bound is the best answer.
                return Some(previous.0);
            }
            let in_bucket = count - previous.1;
            let fraction = if in_bucket > 0.0 {
                (rank - previous.1) / in_bucket
            } else {
                1.0
            };
            return Some(previous.0 + (le - previous.0) * fraction);
        }
        previous = (le, count);
    }
    Some(previous.0)
}

fn parse_sample_line(line: &str) -> Option<MetricSample> {
    let (name_and_labels, rest) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (&line[..=close], &line[close + 1..])
        }
        None => {
            let space = line.find(char::is_whitespace)?;
            (&line[..space], &line[space..])
        }
    };
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    let (name, labels) = match name_and_labels.split_once('{') {
        Some((name, labels)) => (name, parse_labels(labels.strip_suffix('}')?)?),
        None => (name_and_labels, BTreeMap::new()),
    };
    Some(MetricSample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y \"quoted\""` into a map.
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(labels);
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim().to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP swell_generated_tokens_total Tokens generated.
# TYPE swell_generated_tokens_total counter
swell_generated_tokens_total{deployment="a"} 120
swell_generated_tokens_total{deployment="b"} 7
swell_queue_depth{deployment="a"} 3
swell_replicas{deployment="a",state="ready"} 2
swell_replicas{deployment="a",state="starting"} 1
swell_time_to_first_token_seconds_bucket{deployment="a",tenant="t1",le="0.1"} 2
swell_time_to_first_token_seconds_bucket{deployment="a",tenant="t1",le="0.5"} 6
swell_time_to_first_token_seconds_bucket{deployment="a",tenant="t1",le="+Inf"} 8
swell_time_to_first_token_seconds_bucket{deployment="a",tenant="t2",le="0.1"} 0
swell_time_to_first_token_seconds_bucket{deployment="a",tenant="t2",le="0.5"} 2
swell_time_to_first_token_seconds_bucket{deployment="a",tenant="t2",le="+Inf"} 2
weird_label{msg="a \"quoted\", comma"} 1.5e3
no_labels 4
broken{line 1
"#;

    #[test]
    fn parses_samples_labels_and_sums() {
        let m = MetricsText::parse(PAGE);
        assert_eq!(m.sum("swell_generated_tokens_total", &[("deployment", "a")]), 120.0);
        assert_eq!(m.sum("swell_generated_tokens_total", &[]), 127.0);
        assert_eq!(m.sum("swell_replicas", &[("deployment", "a")]), 3.0);
        assert_eq!(
            m.sum("swell_replicas", &[("deployment", "a"), ("state", "ready")]),
            2.0
        );
        assert_eq!(m.sum("no_labels", &[]), 4.0);
        let weird = m.matching("weird_label", &[]).next().unwrap();
        assert_eq!(weird.labels["msg"], "a \"quoted\", comma");
        assert_eq!(weird.value, 1500.0);
        assert_eq!(m.sum("broken", &[]), 0.0);
        assert_eq!(m.sum("missing", &[]), 0.0);
    }

    #[test]
    fn histogram_buckets_are_summed_over_series_and_sorted() {
        let m = MetricsText::parse(PAGE);
        let h = m.histogram("swell_time_to_first_token_seconds", &[("deployment", "a")]);
        assert_eq!(h, vec![(0.1, 2.0), (0.5, 8.0), (f64::INFINITY, 10.0)]);
        // 10 observations: 2 in [0, 0.1], 6 in (0.1, 0.5], 2 above 0.5.
        let p50 = histogram_quantile(0.5, &[], &h).unwrap();
        assert!((p50 - (0.1 + 0.4 * 3.0 / 6.0)).abs() < 1e-9, "{p50}");
        assert_eq!(histogram_quantile(0.1, &[], &h), Some(0.05));
        // Beyond the last finite bucket: its bound.
        assert_eq!(histogram_quantile(0.99, &[], &h), Some(0.5));
        // Between two snapshots only the new observations count.
        // New: 0 in [0, 0.1], 6 in (0.1, 0.5], 2 above; the median is the 4th of 8.
        let earlier = vec![(0.1, 2.0), (0.5, 2.0), (f64::INFINITY, 2.0)];
        let p50 = histogram_quantile(0.5, &earlier, &h).unwrap();
        assert!((p50 - (0.1 + 0.4 * 4.0 / 6.0)).abs() < 1e-9, "{p50}");
        assert_eq!(histogram_quantile(0.5, &h, &h), None);
    }

    #[test]
    fn status_parses_the_servers_shape_and_ignores_unknown_fields() {
        let json = serde_json::json!({
            "name": "d",
            "engine": {"engine": "sim"},
            "replicas": {"desired": 2, "ready": 1, "starting": 1, "draining": 0},
            "queue": {"depth": 4, "in_flight": 3, "oldest_wait_seconds": 0.5},
            "scale_events": [{"at_ms": 1700000000123u64, "from": 0, "to": 1, "direction": "up",
                              "reason": "queued_at_zero", "detail": "x"}],
            "replica_details": [{"replica": "d-1", "state": "ready", "active_sequences": 3,
                "steps": 10, "generated_tokens": 40, "age_seconds": 2.5, "cold_start_seconds": 1.25,
                "cold_start_stages": {"stages": [["schedule", {"secs": 0, "nanos": 100000000}],
                                                  ["load_weights", {"secs": 1, "nanos": 0}]]}}],
            "something_new": true
        });
        let status: DeploymentStatus = serde_json::from_value(json).unwrap();
        assert_eq!(status.replicas.capacity(), 2);
        assert_eq!(status.queue.depth, 4);
        assert_eq!(status.scale_events[0].reason, "queued_at_zero");
        let stages = status.replica_details[0].cold_start_stages.as_ref().unwrap();
        assert_eq!(stages.total(), Duration::from_millis(1100));
        assert_eq!(status.replica_details[0].cold_start_seconds, Some(1.25));
    }
}
