//! Aggregation of request records into a [`Report`], and its outputs: the plain-text table
//! ([`render_table`]), JSON, and the per-request CSV.
//!
//! Latencies are kept in HDR histograms at microsecond precision (3 significant digits) and
//! reported in milliseconds. They cover successful requests only; failed requests show up in
//! `errors_by_kind`. Means are exact (from sums), percentiles come from the histograms.

use std::{
    collections::BTreeMap, fmt::Write as _, fs::File, io::Write as _, path::PathBuf, time::Duration,
};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{
    config::{Endpoint, Protocol},
    record::RequestRecord,
};

/// Largest latency the histograms resolve (longer values count as this): one day.
const MAX_LATENCY_US: u64 = 86_400 * 1_000_000;

/// Error kind of requests that never reported back (should not happen).
pub const LOST: &str = "lost";

/// What was run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// `poisson`, `closed` or `trace`.
    pub mode: String,
    pub rate: Option<f64>,
    pub concurrency: Option<usize>,
    pub trace: Option<String>,
    pub time_scale: Option<f64>,
    pub protocol: Protocol,
    pub endpoint: Endpoint,
    pub model: String,
    pub url: String,
    pub seed: u64,
    /// Wall-clock start of the run, seconds since the Unix epoch.
    pub started_at_unix_s: f64,
}

/// Summary of one latency, in milliseconds (`null` when there are no samples).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// The result of a run. Serialized as the `--json` output; the field names are stable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub run: RunInfo,
    /// Requests issued.
    pub requests_sent: u64,
    /// Requests that completed their stream.
    pub requests_ok: u64,
    /// Requests that failed, by any kind (`requests_sent = requests_ok + requests_failed`).
    pub requests_failed: u64,
    /// From the start of the run until the last request finished.
    pub duration_s: f64,
    /// `requests_ok / duration_s`.
    pub requests_per_s: f64,
    /// `output_tokens / duration_s`.
    pub output_tokens_per_s: f64,
    /// Prompt tokens of successful requests (`usage.prompt_tokens`, else the length asked for).
    pub prompt_tokens: u64,
    /// Output tokens of successful requests (`usage.completion_tokens`, else content chunks).
    pub output_tokens: u64,
    /// Time to first token.
    pub ttft_ms: LatencySummary,
    /// Inter-token latency: gaps between consecutive content chunks.
    pub itl_ms: LatencySummary,
    /// Time per output token after the first, per request: `(e2e - ttft) / (tokens - 1)`.
    pub tpot_ms: LatencySummary,
    /// End-to-end latency.
    pub e2e_ms: LatencySummary,
    /// SSE comments / WebSocket status messages, all requests.
    pub comments_seen: u64,
    /// `queued` comments / statuses.
    pub queue_comments_seen: u64,
    /// `starting` comments / statuses (cold starts).
    pub starting_comments_seen: u64,
    /// Requests that saw at least one `queued` comment / status.
    pub requests_queued: u64,
    /// Requests that saw at least one `starting` comment / status.
    pub requests_cold_started: u64,
    /// Failed requests by error kind (see [`crate::record`]).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// What the monitor saw (`--monitor`, `--plots`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<crate::monitor::LiveTimeline>,
    /// Every request, by id. Not part of the JSON; written by `--per-request-csv`.
    #[serde(skip)]
    pub records: Vec<RequestRecord>,
}

/// A latency histogram plus an exact sum.
#[derive(Debug, Clone)]
struct Latency {
    histogram: Histogram<u64>,
    sum_us: u128,
}

impl Latency {
    fn new() -> Self {
        Latency {
            histogram: Histogram::new_with_max(MAX_LATENCY_US, 3).expect("valid histogram bounds"),
            sum_us: 0,
        }
    }

    fn record(&mut self, us: u64) {
        self.histogram.saturating_record(us);
        self.sum_us += u128::from(us);
    }

    fn summary(&self) -> LatencySummary {
        let count = self.histogram.len();
        if count == 0 {
            return LatencySummary::default();
        }
        let ms = |us: u64| Some(us as f64 / 1000.0);
        LatencySummary {
            count,
            mean_ms: Some(self.sum_us as f64 / count as f64 / 1000.0),
            p50_ms: ms(self.histogram.value_at_quantile(0.50)),
            p90_ms: ms(self.histogram.value_at_quantile(0.90)),
            p99_ms: ms(self.histogram.value_at_quantile(0.99)),
            max_ms: ms(self.histogram.max()),
        }
    }
}

/// Accumulates records as they finish.
#[derive(Debug, Clone)]
pub struct ReportBuilder {
    ttft: Latency,
    itl: Latency,
    tpot: Latency,
    e2e: Latency,
    ok: u64,
    failed: u64,
    prompt_tokens: u64,
    output_tokens: u64,
    comments: u64,
    queue_comments: u64,
    starting_comments: u64,
    requests_queued: u64,
    requests_cold_started: u64,
    errors: BTreeMap<String, u64>,
    records: Vec<RequestRecord>,
}

impl Default for ReportBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ReportBuilder {
    pub fn new() -> Self {
        ReportBuilder {
            ttft: Latency::new(),
            itl: Latency::new(),
            tpot: Latency::new(),
            e2e: Latency::new(),
            ok: 0,
            failed: 0,
            prompt_tokens: 0,
            output_tokens: 0,
            comments: 0,
            queue_comments: 0,
            starting_comments: 0,
            requests_queued: 0,
            requests_cold_started: 0,
            errors: BTreeMap::new(),
            records: Vec::new(),
        }
    }

    /// Requests added so far.
    pub fn count(&self) -> u64 {
        self.ok + self.failed
    }

    /// Adds one finished request (its inter-token gaps go into the histogram and are dropped
    /// from the record).
    pub fn add(&mut self, mut record: RequestRecord) {
        self.comments += u64::from(record.comments);
        self.queue_comments += u64::from(record.queue_events);
        self.starting_comments += u64::from(record.starting_events);
        self.requests_queued += u64::from(record.queue_events > 0);
        self.requests_cold_started += u64::from(record.starting_events > 0);
        if record.is_ok() {
            self.ok += 1;
            self.prompt_tokens += record.input_tokens();
            self.output_tokens += record.output_tokens();
            self.e2e.record(record.e2e_us);
            if let Some(ttft) = record.ttft_us {
                self.ttft.record(ttft);
                let tokens = record.output_tokens();
                if tokens > 1 {
                    self.tpot
                        .record(record.e2e_us.saturating_sub(ttft) / (tokens - 1));
                }
            }
            for gap in &record.itl_us {
                self.itl.record(*gap);
            }
        } else {
            self.failed += 1;
            *self.errors.entry(record.status.clone()).or_default() += 1;
        }
        record.itl_us = Vec::new();
        self.records.push(record);
    }

    /// The report of a run that took `duration` and issued `sent` requests (any not added
    /// count as failed with kind `lost`).
    pub fn finish(mut self, run: RunInfo, duration: Duration, sent: u64) -> Report {
        let lost = sent.saturating_sub(self.count());
        if lost > 0 {
            self.failed += lost;
            *self.errors.entry(LOST.to_string()).or_default() += lost;
        }
        self.records.sort_by_key(|r| r.id);
        let secs = duration.as_secs_f64();
        let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Report {
            run,
            requests_sent: self.ok + self.failed,
            requests_ok: self.ok,
            requests_failed: self.failed,
            duration_s: secs,
            requests_per_s: per_s(self.ok),
            output_tokens_per_s: per_s(self.output_tokens),
            prompt_tokens: self.prompt_tokens,
            output_tokens: self.output_tokens,
            ttft_ms: self.ttft.summary(),
            itl_ms: self.itl.summary(),
            tpot_ms: self.tpot.summary(),
            e2e_ms: self.e2e.summary(),
            comments_seen: self.comments,
            queue_comments_seen: self.queue_comments,
            starting_comments_seen: self.starting_comments,
            requests_queued: self.requests_queued,
            requests_cold_started: self.requests_cold_started,
            errors_by_kind: self.errors,
            monitor: None,
            records: self.records,
        }
    }
}

/// The report as a plain-text table.
pub fn render_table(report: &Report) -> String {
    let run = &report.run;
    let mut out = String::new();
    let mode = match run.mode.as_str() {
        "poisson" => format!("poisson {} req/s", run.rate.unwrap_or_default()),
        "closed" => format!(
            "closed loop, concurrency {}",
            run.concurrency.unwrap_or_default()
        ),
        other => match &run.trace {
            Some(trace) => format!("{other} {trace} at {}x", run.time_scale.unwrap_or(1.0)),
            None => other.to_string(),
        },
    };
    let protocol = match run.protocol {
        Protocol::Sse => "sse",
        Protocol::Ws => "ws",
    };
    let endpoint = match run.endpoint {
        Endpoint::Chat => "chat",
        Endpoint::Completions => "completions",
    };
    let _ = writeln!(
        out,
        "swell-loadtest: {mode}, {protocol}, {endpoint}, model {} at {}",
        run.model, run.url
    );
    let _ = writeln!(
        out,
        "requests     sent {}   ok {}   failed {}",
        report.requests_sent, report.requests_ok, report.requests_failed
    );
    let _ = writeln!(out, "duration     {:.2} s", report.duration_s);
    let _ = writeln!(
        out,
        "throughput   {:.2} req/s   {:.1} output tok/s   ({} prompt + {} output tokens)",
        report.requests_per_s,
        report.output_tokens_per_s,
        report.prompt_tokens,
        report.output_tokens
    );
    let _ = writeln!(
        out,
        "queueing     {} queue comments ({} requests queued), {} starting ({} requests), {} comments in all",
        report.queue_comments_seen,
        report.requests_queued,
        report.starting_comments_seen,
        report.requests_cold_started,
        report.comments_seen
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<14}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "latency (ms)", "mean", "p50", "p90", "p99", "max", "count"
    );
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    for (name, s) in [
        ("ttft", &report.ttft_ms),
        ("itl", &report.itl_ms),
        ("tpot", &report.tpot_ms),
        ("e2e", &report.e2e_ms),
    ] {
        let _ = writeln!(
            out,
            "{:<14}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            name,
            cell(s.mean_ms),
            cell(s.p50_ms),
            cell(s.p90_ms),
            cell(s.p99_ms),
            cell(s.max_ms),
            s.count
        );
    }
    if !report.errors_by_kind.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "errors");
        let width = report
            .errors_by_kind
            .keys()
            .map(|k| k.len())
            .max()
            .unwrap_or(0);
        for (kind, count) in &report.errors_by_kind {
            let _ = writeln!(out, "  {kind:<width$}  {count}");
        }
    }
    if let Some(monitor) = &report.monitor {
        let _ = writeln!(out);
        let peak = monitor.samples.iter().map(|s| s.capacity()).max().unwrap_or(0);
        let peak_queue = monitor.samples.iter().map(|s| s.queue_depth).max().unwrap_or(0);
        let tokens = monitor.generated_tokens_per_s(5.0);
        let peak_tokens = tokens.iter().map(|t| t.1).fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "monitor      {} polls ({} failed), peak {} replicas, peak queue {}, peak {:.0} generated tok/s (server, 5 s average), {} scale events",
            monitor.samples.len(),
            monitor.poll_errors,
            peak,
            peak_queue,
            peak_tokens,
            monitor.scale_events.len()
        );
        const SHOWN: usize = 20;
        for e in monitor.scale_events.iter().take(SHOWN) {
            let _ = writeln!(
                out,
                "  {:>8.1} s  {} -> {}  {}",
                e.t_s, e.from, e.to, e.reason
            );
        }
        if monitor.scale_events.len() > SHOWN {
            let _ = writeln!(out, "  ... {} more in the JSON report", monitor.scale_events.len() - SHOWN);
        }
    }
    out
}

/// One row of the per-request CSV.
#[derive(Debug, Serialize)]
struct CsvRow<'a> {
    id: u64,
    start_s: f64,
    status: &'a str,
    ttft_ms: Option<f64>,
    e2e_ms: f64,
    itl_mean_ms: Option<f64>,
    itl_max_ms: Option<f64>,
    prompt_tokens: u32,
    max_tokens: u32,
    usage_prompt_tokens: Option<u64>,
    usage_completion_tokens: Option<u64>,
    output_tokens: u64,
    content_chunks: u64,
    queue_events: u32,
    starting_events: u32,
    comments: u32,
    wait_comment_ms: Option<f64>,
    wait_position: Option<u64>,
    wait_eta_s: Option<f64>,
    first_chunk_ms: Option<f64>,
    error_message: Option<&'a str>,
}

/// Writes one CSV row per record (columns: `id, start_s, status, ttft_ms, e2e_ms,
/// itl_mean_ms, itl_max_ms, prompt_tokens, max_tokens, usage_prompt_tokens,
/// usage_completion_tokens, output_tokens, content_chunks, queue_events, starting_events,
/// comments, wait_comment_ms, wait_position, wait_eta_s, first_chunk_ms, error_message`;
/// the `wait_*` columns are those of the first SSE waiting comment, `first_chunk_ms` the
/// time to the first chunk of any kind).
pub fn write_records_csv(
    records: &[RequestRecord],
    writer: impl std::io::Write,
) -> anyhow::Result<()> {
    let mut csv = csv::Writer::from_writer(writer);
    let ms = |us: u64| us as f64 / 1000.0;
    for r in records {
        csv.serialize(CsvRow {
            id: r.id,
            start_s: r.start_s,
            status: &r.status,
            ttft_ms: r.ttft_us.map(ms),
            e2e_ms: ms(r.e2e_us),
            itl_mean_ms: r.itl_mean_us.map(|us| us / 1000.0),
            itl_max_ms: r.itl_max_us.map(ms),
            prompt_tokens: r.prompt_tokens,
            max_tokens: r.max_tokens,
            usage_prompt_tokens: r.usage_prompt_tokens,
            usage_completion_tokens: r.usage_completion_tokens,
            output_tokens: r.output_tokens(),
            content_chunks: r.content_chunks,
            queue_events: r.queue_events,
            starting_events: r.starting_events,
            comments: r.comments,
            wait_comment_ms: r.wait_comment_us.map(ms),
            wait_position: r.wait_position,
            wait_eta_s: r.wait_eta_s,
            first_chunk_ms: r.first_chunk_us.map(ms),
            error_message: r.error_message.as_deref(),
        })?;
    }
    csv.flush()?;
    Ok(())
}

/// The `--json` and `--per-request-csv` files, created before the run starts so that a bad
/// path fails fast rather than after a long run.
#[derive(Debug)]
pub(crate) struct OutputFiles {
    json: Option<(PathBuf, File)>,
    csv: Option<(PathBuf, File)>,
}

impl OutputFiles {
    pub(crate) fn create(json: Option<&PathBuf>, csv: Option<&PathBuf>) -> anyhow::Result<Self> {
        let open = |path: Option<&PathBuf>| -> anyhow::Result<Option<(PathBuf, File)>> {
            path.map(|p| {
                let file =
                    File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
                Ok((p.clone(), file))
            })
            .transpose()
        };
        Ok(OutputFiles {
            json: open(json)?,
            csv: open(csv)?,
        })
    }

    pub(crate) fn write(self, report: &Report) -> anyhow::Result<()> {
        if let Some((path, file)) = self.json {
            let mut writer = std::io::BufWriter::new(file);
            serde_json::to_writer_pretty(&mut writer, report)?;
            writeln!(writer)?;
            writer
                .flush()
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if let Some((path, file)) = self.csv {
            write_records_csv(&report.records, std::io::BufWriter::new(file))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::OK;

    fn record(
        id: u64,
        status: &str,
        ttft_ms: u64,
        e2e_ms: u64,
        tokens: u64,
        itl_ms: &[u64],
    ) -> RequestRecord {
        RequestRecord {
            id,
            start_s: id as f64,
            status: status.to_string(),
            error_message: (status != OK).then(|| "boom".to_string()),
            ttft_us: Some(ttft_ms * 1000),
            e2e_us: e2e_ms * 1000,
            itl_us: itl_ms.iter().map(|ms| ms * 1000).collect(),
            itl_mean_us: None,
            itl_max_us: None,
            prompt_tokens: 10,
            max_tokens: tokens as u32,
            usage_prompt_tokens: Some(12),
            usage_completion_tokens: Some(tokens),
            content_chunks: tokens,
            queue_events: (id % 2) as u32,
            starting_events: 0,
            comments: 2,
            wait_comment_us: None,
            wait_position: None,
            wait_eta_s: None,
            first_chunk_us: None,
        }
    }

    fn run_info() -> RunInfo {
        RunInfo {
            mode: "closed".into(),
            rate: None,
            concurrency: Some(2),
            trace: None,
            time_scale: None,
            protocol: Protocol::Sse,
            endpoint: Endpoint::Chat,
            model: "default".into(),
            url: "http://127.0.0.1:8080".into(),
            seed: 1,
            started_at_unix_s: 0.0,
        }
    }

    #[test]
    fn percentiles_and_means() {
        let mut latency = Latency::new();
        for ms in 1..=1000u64 {
            latency.record(ms * 1000);
        }
        latency.record(0);
        let s = latency.summary();
        assert_eq!(s.count, 1001);
        let close =
            |got: Option<f64>, want: f64| (got.unwrap() - want).abs() <= want * 0.001 + 1e-9;
        assert!(close(s.p50_ms, 500.0), "{s:?}");
        assert!(close(s.p90_ms, 900.0), "{s:?}");
        assert!(close(s.p99_ms, 990.0), "{s:?}");
        assert!(close(s.max_ms, 1000.0), "{s:?}");
        assert!(
            (s.mean_ms.unwrap() - 500_500.0 / 1001.0).abs() < 1e-9,
            "{s:?}"
        );
        assert_eq!(Latency::new().summary(), LatencySummary::default());
        let mut huge = Latency::new();
        huge.record(u64::MAX);
        assert!(huge.summary().max_ms.unwrap() >= MAX_LATENCY_US as f64 / 1000.0 * 0.999);
    }

    #[test]
    fn report_arithmetic() {
        let mut b = ReportBuilder::new();
        b.add(record(1, OK, 100, 1100, 11, &[100; 10]));
        b.add(record(0, OK, 300, 2300, 21, &[100, 200]));
        b.add(record(2, "http_429:rate_limited", 0, 5, 0, &[]));
        b.add(record(3, "timeout", 0, 5, 0, &[]));
        b.add(record(4, "timeout", 0, 5, 0, &[]));
        let report = b.finish(run_info(), Duration::from_secs(4), 6);
        assert_eq!(
            (
                report.requests_sent,
                report.requests_ok,
                report.requests_failed
            ),
            (6, 2, 4)
        );
        assert_eq!(report.output_tokens, 32);
        assert_eq!(report.prompt_tokens, 24);
        assert!((report.requests_per_s - 0.5).abs() < 1e-12);
        assert!((report.output_tokens_per_s - 8.0).abs() < 1e-12);
        assert_eq!(report.ttft_ms.count, 2);
        assert!((report.ttft_ms.mean_ms.unwrap() - 200.0).abs() < 1e-9);
        assert_eq!(report.itl_ms.count, 12);
        assert!((report.itl_ms.mean_ms.unwrap() - 1300.0 / 12.0).abs() < 1e-9);
        // tpot: (1100 - 100) / 10 = 100 ms and (2300 - 300) / 20 = 100 ms (the histogram
        // reports the highest value equivalent at 3 significant digits).
        assert!(
            (report.tpot_ms.p50_ms.unwrap() - 100.0).abs() <= 0.1,
            "{:?}",
            report.tpot_ms
        );
        assert_eq!(report.e2e_ms.count, 2);
        let errors: Vec<_> = report
            .errors_by_kind
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(
            errors,
            [("http_429:rate_limited", 1), ("lost", 1), ("timeout", 2)]
        );
        assert_eq!(
            (
                report.comments_seen,
                report.queue_comments_seen,
                report.requests_queued
            ),
            (10, 2, 2)
        );
        let ids: Vec<u64> = report.records.iter().map(|r| r.id).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
        assert!(report.records.iter().all(|r| r.itl_us.is_empty()));
    }

    #[test]
    fn json_field_names_are_stable() {
        let report = ReportBuilder::new().finish(run_info(), Duration::from_secs(1), 0);
        let json = serde_json::to_value(&report).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "run",
            "requests_sent",
            "requests_ok",
            "requests_failed",
            "duration_s",
            "requests_per_s",
            "output_tokens_per_s",
            "prompt_tokens",
            "output_tokens",
            "ttft_ms",
            "itl_ms",
            "tpot_ms",
            "e2e_ms",
            "comments_seen",
            "queue_comments_seen",
            "starting_comments_seen",
            "requests_queued",
            "requests_cold_started",
            "errors_by_kind",
        ];
        expected.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
        assert_eq!(
            json["ttft_ms"],
            serde_json::json!({"count": 0, "mean_ms": null, "p50_ms": null, "p90_ms": null, "p99_ms": null, "max_ms": null})
        );
        assert_eq!(json["run"]["protocol"], "sse");
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn table_and_csv_render() {
        let mut b = ReportBuilder::new();
        b.add(record(0, OK, 100, 1100, 11, &[100; 10]));
        b.add(record(1, "stream_incomplete", 0, 5, 0, &[]));
        let report = b.finish(run_info(), Duration::from_secs(2), 2);
        let table = render_table(&report);
        assert!(table.contains("sent 2   ok 1   failed 1"), "{table}");
        assert!(table.contains("0.50 req/s"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("ttft") && l.contains("100.0")),
            "{table}"
        );
        assert!(table.contains("stream_incomplete  1"), "{table}");
        assert!(table.contains("closed loop, concurrency 2"), "{table}");

        let mut csv = Vec::new();
        write_records_csv(&report.records, &mut csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        let mut lines = csv.lines();
        assert!(lines
            .next()
            .unwrap()
            .starts_with("id,start_s,status,ttft_ms,e2e_ms,itl_mean_ms"));
        assert!(lines.next().unwrap().starts_with("0,0.0,ok,100.0,1100.0,"));
        assert!(lines.next().unwrap().ends_with(",boom"));
    }
}
