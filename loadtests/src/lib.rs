//! `swell-loadtest`: the load generator of Swell and its measuring tools (binaries
//! `swell-loadtest`, `swell-scale-from-zero`, `swell-scaling`).
//!
//! It drives a Swell server (or any OpenAI-compatible server) with streaming generations and
//! measures what clients see: time to first token (TTFT), inter-token latency (ITL), time per
//! output token (TPOT), end-to-end latency, throughput, queueing and cold-start comments, and
//! errors by kind. Requests go over HTTP with server-sent events (`--protocol sse`, one
//! `POST /v1/chat/completions` or `/v1/completions` each) or are multiplexed over a few
//! WebSocket connections to `/v1/ws` (`--protocol ws`).
//!
//! Arrivals are open-loop Poisson (`--rate`), closed-loop (`--concurrency`), or replayed
//! from an Azure LLM inference trace (`--trace`). Every run is bounded (`--requests`,
//! `--duration`, or the trace's length), then drains its in-flight requests for at most
//! `--drain-timeout`, and ends with a table on stdout (plus `--json` / `--per-request-csv`).
//! Prompts are `N` random common English words (about `N` tokens); `"ignore_eos": true` is
//! sent unless `--no-ignore-eos`, so each request generates exactly `max_tokens` tokens.
//!
//! # Examples
//!
//! ```text
//! # 200 requests from 8 closed-loop workers, 256-word prompts, 128 output tokens:
//! swell-loadtest --concurrency 8 --requests 200 --prompt-tokens 256 --output-tokens 128
//!
//! # Poisson arrivals at 4 req/s for one minute over WebSockets, ShareGPT lengths capped for a
//! # small model, JSON report:
//! swell-loadtest --rate 4 --duration 60s --protocol ws --model tiny \
//!     --prompt-tokens sharegpt:loadtests/traces/sarathi-serve/sharegpt_8k_filtered_stats_llama2_tokenizer.csv \
//!     --output-tokens sharegpt:loadtests/traces/sarathi-serve/sharegpt_8k_filtered_stats_llama2_tokenizer.csv \
//!     --max-prompt-tokens 1024 --max-output-tokens 256 --json report.json
//!
//! # Ten minutes of the Azure conversation trace, starting 5 minutes in, played 10x faster:
//! swell-loadtest --trace loadtests/traces/azure-2023/AzureLLMInferenceTrace_conv.csv \
//!     --trace-offset 300 --time-scale 10 --duration 60s --max-prompt-tokens 2048 \
//!     --max-output-tokens 256 --per-request-csv requests.csv
//! ```
//!
//! From Rust (on an actix-rt runtime, e.g. in an `#[actix_rt::test]`):
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use swell_loadtest::{run, render_table, LoadTestConfig};
//!
//! let report = run(LoadTestConfig {
//!     url: "http://127.0.0.1:8080".into(),
//!     concurrency: Some(4),
//!     requests: Some(20),
//!     quiet: true,
//!     ..LoadTestConfig::default()
//! })
//! .await?;
//! assert_eq!(report.requests_failed, 0, "{}", render_table(&report));
//! # Ok(())
//! # }
//! ```
//!
//! # Measurements
//!
//! - TTFT: from sending the request to the first content-bearing chunk (a chunk with
//!   non-empty `choices[].delta.content` or `choices[].text`); role-only and usage chunks do
//!   not count.
//! - ITL: gaps between consecutive content chunks of a request (each chunk is a token or a
//!   few). TPOT: `(e2e - ttft) / (output_tokens - 1)` per request.
//! - End-to-end: from sending to `data: [DONE]` (SSE) or the `done` message (WebSocket).
//! - Output tokens: `usage.completion_tokens` when the server reports it, else the number of
//!   content chunks. Throughput is over successful requests and the whole run (start to the
//!   last request's end, drain included).
//! - Latency summaries cover successful requests only; failures are counted by kind (see
//!   [`record`] for the kinds: `http_429:rate_limited`, `timeout`, `connect`,
//!   `stream_incomplete`, `drain_timeout`, ...).
//! - SSE comments (`: queued position=3`, `: starting replica`, `: keep-alive`) and WebSocket
//!   status messages are counted; those starting with `queued` / `starting` separately.
//!
//! # JSON report
//!
//! `--json FILE` writes [`Report`] with these stable fields: `run` (`mode`, `rate`,
//! `concurrency`, `trace`, `time_scale`, `protocol`, `endpoint`, `model`, `url`, `seed`,
//! `started_at_unix_s`), `requests_sent`, `requests_ok`, `requests_failed`, `duration_s`,
//! `requests_per_s`, `output_tokens_per_s`, `prompt_tokens`, `output_tokens`, `ttft_ms`,
//! `itl_ms`, `tpot_ms`, `e2e_ms` (each `{count, mean_ms, p50_ms, p90_ms, p99_ms, max_ms}`,
//! `null` values when there are no samples), `comments_seen`, `queue_comments_seen`,
//! `starting_comments_seen`, `requests_queued`, `requests_cold_started`, `errors_by_kind`
//! (kind to count). `--per-request-csv FILE` columns are listed at
//! [`report::write_records_csv`].
//!
//! # Layout
//!
//! - [`cli`]: command-line flags, mapped onto [`LoadTestConfig`].
//! - [`config`]: [`LoadTestConfig`], its defaults and validation, duration parsing.
//! - [`arrivals`]: arrival schedules: Poisson (open loop) and trace replay; the closed loop
//!   lives in the runner.
//! - [`lengths`]: length distributions (`N`, `uniform:A:B`, `normal:MEAN:SD`,
//!   `sharegpt:FILE`).
//! - [`prompt`]: prompt text from common English words.
//! - [`request`]: per-request specs and OpenAI request bodies.
//! - [`sse`]: incremental SSE parser and the SSE (HTTP) client.
//! - `ws`: the WebSocket client: a connection pool, requests multiplexed by id.
//! - [`record`]: per-request measurements and error kinds.
//! - [`report`]: aggregation into [`Report`] (HDR histograms), table, JSON and CSV output.
//! - `runner`: the run: issuing, bounds, drain, collection ([`run`], [`run_until`]).
//! - `progress`: the progress bar.
//! - [`admin`]: the admin API (deployment status, updates) and `/metrics` parsing.
//! - [`monitor`]: polls the status and `/metrics` during a run (`--monitor`).
//! - [`live_plot`]: the live run's plots (`--plots DIR`): load, replicas, queue, latency.
//! - [`scale_from_zero`]: the first request at zero replicas by stage
//!   (`swell-scale-from-zero`).
//! - [`scaling`]: throughput with N replicas against N × one, simulated and live
//!   (`swell-scaling`).
//! - [`fidelity`]: the live side of the simulator's fidelity check (`tests/fidelity.rs`).
//! - [`chaos`]: a randomized fault campaign against a local cluster, with a history
//!   checker (`swell-chaos`).
//!
//! The workload files (Azure trace, ShareGPT lengths), the percentile definition and the
//! plot helpers come from the simulator crate (`swell_simulator::{trace, stats, plot}`),
//! which `swell-scaling` also runs; the dependency goes this way only, so the simulator
//! carries no HTTP client.

pub mod admin;
pub mod arrivals;
pub mod chaos;
pub mod cli;
pub mod config;
pub mod fidelity;
pub mod lengths;
pub mod live_plot;
pub mod monitor;
mod progress;
pub mod prompt;
pub mod record;
pub mod report;
pub mod request;
mod runner;
pub mod scale_from_zero;
pub mod scaling;
pub mod sse;
mod ws;

#[cfg(test)]
mod testutil;

pub use config::{ArrivalMode, ConfigError, Endpoint, LoadTestConfig, Protocol};
pub use monitor::{LiveTimeline, MonitorConfig};
pub use lengths::LengthDist;
pub use record::RequestRecord;
pub use report::{render_table, LatencySummary, Report, RunInfo};
pub use runner::{run, run_until};
