//! The run itself: issues requests by the arrival mode, bounds the run, drains, and collects
//! records into the report.
//!
//! Everything runs on the current actix-rt (tokio `LocalSet`) thread. Issuing stops at the
//! first of: `requests` issued, `duration` elapsed, the trace exhausted, or the stop future
//! resolved. In-flight requests then get `drain_timeout` to finish, after which they are
//! cancelled and recorded as `drain_timeout`.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    rc::Rc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use awc::{Client, Connector};
use swell_simulator::trace::load_trace;
use tokio::sync::{mpsc, watch, Notify};

use crate::{
    arrivals::{trace_schedule, Arrival, PoissonArrivals},
    config::{ArrivalMode, LoadTestConfig, Protocol},
    lengths::LengthModel,
    monitor::Monitor,
    progress::Progress,
    record::{Failure, Recorder, RequestRecord},
    report::{OutputFiles, Report, ReportBuilder, RunInfo},
    request::{request_body, RequestFactory, RequestSpec},
    sse,
    ws::WsPool,
};

/// After cancelling in-flight requests, how long to wait for them to report back.
const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// Limit on establishing a connection (TCP connect, or the WebSocket handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type RecordSender = mpsc::UnboundedSender<RequestRecord>;

/// Where arrivals come from.
enum Source {
    Open(Box<dyn Iterator<Item = Arrival>>),
    Closed(usize),
}

/// State shared by every request of a run.
struct Ctx {
    config: LoadTestConfig,
    client: Client,
    ws: Option<WsPool>,
    endpoint_url: String,
    run_start: Instant,
    cancel: watch::Receiver<bool>,
    factory: RefCell<RequestFactory>,
    progress: Progress,
    stop_issuing: Cell<bool>,
    all_issued: Notify,
}

impl Ctx {
    fn issued(&self) -> u64 {
        self.factory.borrow().issued()
    }

    /// May a request planned for `at` (since the start) still be issued?
    fn may_issue(&self, at: Duration) -> bool {
        !self.stop_issuing.get()
            && self.config.requests.is_none_or(|n| self.issued() < n)
            && self.config.duration.is_none_or(|d| at < d)
    }

    /// Makes the next request and counts it as issued.
    fn next_request(&self, lengths: Option<(u32, u32)>) -> RequestSpec {
        let spec = self.factory.borrow_mut().next_request(lengths);
        self.progress.started();
        if self.config.requests.is_some_and(|n| self.issued() >= n) {
            self.all_issued.notify_one();
        }
        spec
    }
}

/// Runs a load test to completion. Call it on an actix-rt runtime
/// (`#[actix_rt::main]`, `#[actix_rt::test]`, `#[actix_web::test]`, `actix_rt::System::new().block_on`):
/// awc needs its `LocalSet`.
///
/// Writes `config.json` and `config.per_request_csv` when set; with `config.monitor`,
/// watches the server during the run (the report's `monitor`), and with `config.plots`
/// writes the live plots.
pub async fn run(config: LoadTestConfig) -> anyhow::Result<Report> {
    run_until(config, std::future::pending()).await
}

/// Like [`run`], but stops issuing early when `stop` resolves (the CLI passes Ctrl-C), then
/// drains as usual.
pub async fn run_until(
    config: LoadTestConfig,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Report> {
    let mode = config.validate()?;
    let outputs = OutputFiles::create(config.json.as_ref(), config.per_request_csv.as_ref())?;
    if let Some(dir) = &config.plots {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if let Some(monitor) = &config.monitor {
        Monitor::check(config.base_url(), &config.model, monitor).await?;
    }

    let (source, planned, lengths) = match &mode {
        ArrivalMode::Poisson { rate } => {
            let arrivals = PoissonArrivals::new(*rate, config.seed.wrapping_add(1));
            let lengths = LengthModel::new(&config.prompt_tokens, &config.output_tokens)?;
            (
                Source::Open(Box::new(arrivals)),
                config.requests,
                Some(lengths),
            )
        }
        ArrivalMode::ClosedLoop { concurrency } => {
            let lengths = LengthModel::new(&config.prompt_tokens, &config.output_tokens)?;
            (Source::Closed(*concurrency), config.requests, Some(lengths))
        }
        ArrivalMode::Trace { path } => {
            let rows = load_trace(path)?;
            let schedule = trace_schedule(
                &rows,
                config.trace_offset,
                config.trace_limit,
                config.time_scale,
            );
            anyhow::ensure!(!schedule.is_empty(), "no trace rows left after the offset");
            let planned = config
                .requests
                .map_or(schedule.len() as u64, |n| n.min(schedule.len() as u64));
            (
                Source::Open(Box::new(schedule.into_iter())),
                Some(planned),
                None,
            )
        }
    };
    let factory = RequestFactory::new(
        config.seed,
        lengths,
        config.max_prompt_tokens,
        config.max_output_tokens,
    );

    let client = Client::builder()
        .connector(Connector::new().limit(0).timeout(CONNECT_TIMEOUT))
        .disable_timeout()
        .finish();
    let ws = match config.protocol {
        Protocol::Sse => None,
        Protocol::Ws => {
            let pool = WsPool::new(
                client.clone(),
                config.base_url(),
                config.api_key.clone(),
                config.ws_connections,
                CONNECT_TIMEOUT.min(config.timeout),
            );
            pool.prewarm().await;
            Some(pool)
        }
    };

    let run_info = RunInfo {
        mode: mode.name().to_string(),
        rate: config.rate,
        concurrency: config.concurrency,
        trace: config.trace.as_ref().map(|p| p.display().to_string()),
        time_scale: config.trace.as_ref().map(|_| config.time_scale),
        protocol: config.protocol,
        endpoint: config.endpoint,
        model: config.model.clone(),
        url: config.url.clone(),
        seed: config.seed,
        started_at_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    };
    // The monotonic start, read right after the wall-clock one: the monitor places the
    // server's scale events (wall clock) on the run's clock through the pair.
    let run_start = Instant::now();
    let monitor = config.monitor.as_ref().map(|m| {
        Monitor::start(
            config.base_url(),
            &config.model,
            m,
            run_start,
            run_info.started_at_unix_s,
        )
    });

    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (record_tx, mut record_rx) = mpsc::unbounded_channel::<RequestRecord>();
    let ctx = Rc::new(Ctx {
        endpoint_url: format!("{}{}", config.base_url(), config.endpoint.path()),
        progress: Progress::new(config.quiet, planned),
        config,
        client,
        ws,
        run_start,
        cancel: cancel_rx,
        factory: RefCell::new(factory),
        stop_issuing: Cell::new(false),
        all_issued: Notify::new(),
    });

    let builder = RefCell::new(ReportBuilder::new());
    let collect = async {
        while let Some(record) = record_rx.recv().await {
            ctx.progress.finished(record.is_ok());
            builder.borrow_mut().add(record);
        }
    };
    let drive = async {
        {
            let issue = issue(ctx.clone(), source, record_tx);
            tokio::pin!(stop);
            tokio::select! {
                _ = issue => {}
                _ = &mut stop => {}
            }
        }
        ctx.stop_issuing.set(true);
        tokio::time::sleep(ctx.config.drain_timeout).await;
        cancel_tx.send_replace(true);
        tokio::time::sleep(CANCEL_GRACE).await;
    };
    tokio::select! {
        _ = collect => {}
        _ = drive => {}
    }
    let elapsed = ctx.run_start.elapsed();
    ctx.stop_issuing.set(true);
    if let Some(pool) = &ctx.ws {
        pool.close();
    }
    ctx.progress.finish();

    let mut report = builder.into_inner().finish(run_info, elapsed, ctx.issued());
    if let Some(monitor) = monitor {
        report.monitor = Some(monitor.stop().await);
    }
    outputs.write(&report)?;
    if let Some(dir) = &ctx.config.plots {
        for path in crate::live_plot::write_all(dir, &report)? {
            if !ctx.config.quiet {
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(report)
}

/// Issues requests until the arrival source or a bound says stop.
async fn issue(ctx: Rc<Ctx>, source: Source, records: RecordSender) {
    match source {
        Source::Open(arrivals) => {
            for arrival in arrivals {
                if !ctx.may_issue(arrival.at) {
                    break;
                }
                tokio::time::sleep_until((ctx.run_start + arrival.at).into()).await;
                let spec = ctx.next_request(arrival.lengths);
                let (ctx, records) = (ctx.clone(), records.clone());
                actix_rt::spawn(async move {
                    let record = execute(&ctx, spec).await;
                    let _ = records.send(record);
                });
            }
        }
        Source::Closed(workers) => {
            for _ in 0..workers {
                actix_rt::spawn(closed_loop_worker(ctx.clone(), records.clone()));
            }
            drop(records);
            let deadline = ctx.config.duration.map(|d| ctx.run_start + d);
            tokio::select! {
                _ = async {
                    match deadline {
                        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = ctx.all_issued.notified() => {}
            }
        }
    }
}

/// One closed-loop worker: the next request as soon as the previous one ends.
async fn closed_loop_worker(ctx: Rc<Ctx>, records: RecordSender) {
    while ctx.may_issue(ctx.run_start.elapsed()) {
        let spec = ctx.next_request(None);
        let record = execute(&ctx, spec).await;
        if records.send(record).is_err() {
            break;
        }
    }
}

/// Sends one request and records what happened, bounded by the request timeout and by the
/// drain cancellation.
async fn execute(ctx: &Ctx, spec: RequestSpec) -> RequestRecord {
    let config = &ctx.config;
    let body = request_body(config, &spec, ctx.ws.is_none());
    let sse_body = match ctx.ws {
        None => serde_json::to_vec(&body).expect("json values serialize"),
        Some(_) => Vec::new(),
    };
    let mut cancel = ctx.cancel.clone();
    let mut recorder = Recorder::new(&spec, ctx.run_start);
    let outcome = {
        let attempt = async {
            match &ctx.ws {
                None => {
                    sse::send_request(
                        &ctx.client,
                        &ctx.endpoint_url,
                        config.api_key.as_deref(),
                        sse_body,
                        &mut recorder,
                    )
                    .await
                }
                Some(pool) => {
                    pool.send_request(config.endpoint.ws_type(), spec.id, body, &mut recorder)
                        .await
                }
            }
        };
        let cancelled = async {
            if cancel.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = tokio::time::timeout(config.timeout, attempt) => result.unwrap_or_else(|_| Err(Failure::timeout())),
            _ = cancelled => Err(Failure::new("drain_timeout", "still running when the drain timeout ran out")),
        }
    };
    recorder.finish(outcome)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{config::Endpoint, lengths::LengthDist, testutil::fake_server};

    fn config(url: &str, model: &str) -> LoadTestConfig {
        LoadTestConfig {
            url: url.to_string(),
            model: model.to_string(),
            prompt_tokens: LengthDist::Fixed(20),
            output_tokens: LengthDist::Fixed(5),
            timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            quiet: true,
            ..LoadTestConfig::default()
        }
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("swell-lt-{}-{name}", std::process::id()))
    }

    #[actix_rt::test]
    async fn sse_closed_loop_end_to_end() {
        let (url, seen) = fake_server().await;
        let (json, csv) = (temp("report.json"), temp("requests.csv"));
        let report = run(LoadTestConfig {
            concurrency: Some(3),
            requests: Some(9),
            json: Some(json.clone()),
            per_request_csv: Some(csv.clone()),
            ..config(&url, "ok")
        })
        .await
        .unwrap();
        assert_eq!(
            (
                report.requests_sent,
                report.requests_ok,
                report.requests_failed
            ),
            (9, 9, 0),
            "{}",
            render(&report)
        );
        assert_eq!(seen.http_requests.get(), 9);
        assert_eq!(report.output_tokens, 45);
        assert_eq!(report.prompt_tokens, 99);
        assert_eq!(
            (
                report.ttft_ms.count,
                report.itl_ms.count,
                report.tpot_ms.count
            ),
            (9, 36, 9)
        );
        assert!(report.ttft_ms.p50_ms.unwrap() > 0.0);
        assert!(report.e2e_ms.p99_ms.unwrap() >= report.ttft_ms.p99_ms.unwrap());
        assert_eq!(
            (
                report.queue_comments_seen,
                report.starting_comments_seen,
                report.comments_seen
            ),
            (9, 9, 18)
        );
        assert_eq!(
            (report.requests_queued, report.requests_cold_started),
            (9, 9)
        );
        assert!(report.output_tokens_per_s > 0.0);
        assert!(report
            .records
            .iter()
            .all(|r| r.content_chunks == 5 && r.max_tokens == 5 && r.prompt_tokens == 20));

        let written: Report =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(written.requests_ok, 9);
        assert_eq!(written.run.mode, "closed");
        let rows = std::fs::read_to_string(&csv).unwrap();
        assert_eq!(rows.lines().count(), 10);
        std::fs::remove_file(json).ok();
        std::fs::remove_file(csv).ok();
    }

    fn render(report: &Report) -> String {
        crate::render_table(report)
    }

    #[actix_rt::test]
    async fn sse_completions_with_poisson_arrivals() {
        let (url, _) = fake_server().await;
        let report = run(LoadTestConfig {
            rate: Some(200.0),
            requests: Some(6),
            endpoint: Endpoint::Completions,
            ..config(&url, "ok")
        })
        .await
        .unwrap();
        assert_eq!(report.requests_ok, 6, "{}", render(&report));
        assert_eq!(
            report.records.iter().map(|r| r.content_chunks).sum::<u64>(),
            30
        );
        assert_eq!(report.run.mode, "poisson");
    }

    #[actix_rt::test]
    async fn error_kinds_are_counted() {
        let (url, _) = fake_server().await;
        for (model, kind) in [
            ("busy", "http_429:rate_limited"),
            ("cut", "stream_incomplete"),
            ("broken", "stream_error:replica_failed"),
        ] {
            let report = run(LoadTestConfig {
                concurrency: Some(2),
                requests: Some(3),
                ..config(&url, model)
            })
            .await
            .unwrap();
            assert_eq!(report.requests_failed, 3, "{model}: {}", render(&report));
            assert_eq!(
                report.errors_by_kind.get(kind),
                Some(&3),
                "{model}: {}",
                render(&report)
            );
            assert_eq!(report.ttft_ms.count, 0);
        }
        let report = run(LoadTestConfig {
            concurrency: Some(1),
            requests: Some(2),
            api_key: Some("bad".into()),
            ..config(&url, "ok")
        })
        .await
        .unwrap();
        assert_eq!(
            report.errors_by_kind.get("http_401:invalid_api_key"),
            Some(&2),
            "{}",
            render(&report)
        );
    }

    #[actix_rt::test]
    async fn connect_failures_are_counted() {
        // Bind and drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let report = run(LoadTestConfig {
            concurrency: Some(2),
            requests: Some(4),
            ..config(&format!("http://127.0.0.1:{port}"), "ok")
        })
        .await
        .unwrap();
        assert_eq!(
            report.errors_by_kind.get("connect"),
            Some(&4),
            "{}",
            render(&report)
        );
    }

    #[actix_rt::test]
    async fn timeouts_and_drain_bound_the_run() {
        let (url, _) = fake_server().await;
        let started = Instant::now();
        let report = run(LoadTestConfig {
            concurrency: Some(2),
            requests: Some(2),
            timeout: Duration::from_millis(300),
            ..config(&url, "slow")
        })
        .await
        .unwrap();
        assert_eq!(
            report.errors_by_kind.get("timeout"),
            Some(&2),
            "{}",
            render(&report)
        );

        let report = run(LoadTestConfig {
            rate: Some(100.0),
            requests: Some(3),
            drain_timeout: Duration::from_millis(300),
            ..config(&url, "slow")
        })
        .await
        .unwrap();
        assert_eq!(
            report.errors_by_kind.get("drain_timeout"),
            Some(&3),
            "{}",
            render(&report)
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[actix_rt::test]
    async fn duration_bounds_open_and_closed_loops() {
        let (url, _) = fake_server().await;
        let started = Instant::now();
        let report = run(LoadTestConfig {
            rate: Some(40.0),
            duration: Some(Duration::from_millis(500)),
            ..config(&url, "ok")
        })
        .await
        .unwrap();
        assert!(
            (5..=45).contains(&report.requests_sent),
            "{}",
            render(&report)
        );
        assert_eq!(report.requests_failed, 0, "{}", render(&report));
        let report = run(LoadTestConfig {
            concurrency: Some(2),
            duration: Some(Duration::from_millis(300)),
            ..config(&url, "ok")
        })
        .await
        .unwrap();
        assert!(report.requests_ok >= 2, "{}", render(&report));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[actix_rt::test]
    async fn stop_future_ends_issuing() {
        let (url, _) = fake_server().await;
        let report = run_until(
            LoadTestConfig {
                concurrency: Some(2),
                duration: Some(Duration::from_secs(60)),
                ..config(&url, "ok")
            },
            tokio::time::sleep(Duration::from_millis(200)),
        )
        .await
        .unwrap();
        assert!(
            report.requests_ok >= 2 && report.requests_failed == 0,
            "{}",
            render(&report)
        );
        assert!(report.duration_s < 5.0);
    }

    #[actix_rt::test]
    async fn trace_replay_uses_trace_lengths() {
        let (url, _) = fake_server().await;
        let trace = temp("trace.csv");
        std::fs::write(
            &trace,
            "TIMESTAMP,ContextTokens,GeneratedTokens\n\
             2023-11-16 18:15:46.0000000,30,3\n\
             2023-11-16 18:15:47.0000000,40,4\n\
             2023-11-16 18:15:48.5000000,5000,9\n\
             2023-11-16 18:15:49.0000000,50,2\n",
        )
        .unwrap();
        let report = run(LoadTestConfig {
            trace: Some(trace.clone()),
            time_scale: 20.0,
            trace_offset: Duration::from_millis(500),
            max_prompt_tokens: Some(100),
            max_output_tokens: Some(8),
            ..config(&url, "ok")
        })
        .await
        .unwrap();
        std::fs::remove_file(trace).ok();
        assert_eq!(report.requests_ok, 3, "{}", render(&report));
        let lengths: Vec<_> = report
            .records
            .iter()
            .map(|r| (r.prompt_tokens, r.max_tokens))
            .collect();
        assert_eq!(lengths, [(40, 4), (100, 8), (50, 2)]);
        let starts: Vec<f64> = report.records.iter().map(|r| r.start_s).collect();
        assert!(starts[1] >= 0.07 && starts[2] >= 0.1, "{starts:?}");
        assert_eq!(report.output_tokens, 14);
    }

    #[actix_rt::test]
    async fn websocket_requests_are_multiplexed() {
        let (url, seen) = fake_server().await;
        let report = run(LoadTestConfig {
            protocol: Protocol::Ws,
            ws_connections: 2,
            concurrency: Some(6),
            requests: Some(12),
            output_tokens: LengthDist::Fixed(4),
            prompt_tokens: LengthDist::Fixed(200),
            ..config(&url, "ok")
        })
        .await
        .unwrap();
        assert_eq!(report.requests_ok, 12, "{}", render(&report));
        assert_eq!(seen.ws_connections.get(), 2);
        assert_eq!(seen.ws_requests.get(), 12);
        assert_eq!(seen.http_requests.get(), 0);
        assert_eq!(report.output_tokens, 48);
        assert_eq!(
            (
                report.itl_ms.count,
                report.queue_comments_seen,
                report.comments_seen
            ),
            (36, 12, 24)
        );

        for (model, kind) in [
            ("busy", "ws_error:rate_limited"),
            ("broken", "ws_error:replica_failed"),
            ("cut", "timeout"),
        ] {
            let report = run(LoadTestConfig {
                protocol: Protocol::Ws,
                concurrency: Some(2),
                requests: Some(2),
                timeout: Duration::from_millis(500),
                ..config(&url, model)
            })
            .await
            .unwrap();
            assert_eq!(
                report.errors_by_kind.get(kind),
                Some(&2),
                "{model}: {}",
                render(&report)
            );
        }
    }
}
