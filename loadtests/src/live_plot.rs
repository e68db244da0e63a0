//! Plots of a live load test, the same kind the simulator draws (SVG and PNG with
//! `plotters`, fonts found by [`swell_simulator::plot`]): four panels over the run's time,
//! one shared time axis.
//!
//! 1. **Load**: requests sent per second (client) and generated tokens per second (the
//!    server's `swell_generated_tokens_total`, averaged over 5 s of polls).
//! 2. **Replicas**: ready + starting (what the autoscaler counts), ready, desired and
//!    draining, from the admin status; scale events as dots at their new count.
//! 3. **Queue**: requests waiting for a replica and requests running on replicas; the
//!    oldest wait on the right axis.
//! 4. **Latency**: per time bin, by the time requests were sent: client TTFT p50 and
//!    p99 and end-to-end p50; the server's TTFT p50 per poll (from its histogram).
//!
//! The bins are 1 s, or wider for long runs (at most 300 bins).

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use swell_simulator::plot::{downsample, err, integer_label, png_font};
use swell_simulator::stats::Sorted;

use crate::monitor::LiveTimeline;
use crate::report::Report;

/// One line of a panel.
struct Series {
    name: &'static str,
    color: RGBColor,
    width: u32,
    points: Vec<(f64, f64)>,
}

/// One panel: series on the left axis, optionally more on the right one.
struct Panel {
    title: &'static str,
    left_label: &'static str,
    left: Vec<Series>,
    /// Dots (scale events) on the left axis.
    dots: Vec<(f64, f64)>,
    integer_axis: bool,
    right_label: &'static str,
    right: Vec<Series>,
}

/// Writes `live.svg` and `live.png` into `dir`; returns the paths. Without a monitor in
/// the report there is nothing to plot the replicas from: an error.
pub fn write_all(dir: &Path, report: &Report) -> anyhow::Result<Vec<PathBuf>> {
    let Some(monitor) = &report.monitor else {
        anyhow::bail!("live plots need the monitor's samples (run with the monitor on)");
    };
    if !png_font() {
        eprintln!("no TrueType font found (set SWELL_PLOT_FONT): plots skipped");
        return Ok(Vec::new());
    }
    let panels = panels(report, monitor);
    let horizon = monitor
        .samples
        .iter()
        .map(|s| s.t_s)
        .fold(report.duration_s, f64::max)
        .max(1.0);
    let size = (1200, 4 * 240 + 20);
    let svg = dir.join("live.svg");
    draw(
        SVGBackend::new(&svg, size).into_drawing_area(),
        &panels,
        horizon,
        &report.run.model,
    )?;
    let png = dir.join("live.png");
    draw(
        BitMapBackend::new(&png, size).into_drawing_area(),
        &panels,
        horizon,
        &report.run.model,
    )?;
    Ok(vec![svg, png])
}

/// The bin width for a run of `duration` seconds: 1 s, or wider for at most 300 bins.
fn bin_width(duration: f64) -> f64 {
    (duration / 300.0).ceil().max(1.0)
}

fn panels(report: &Report, monitor: &LiveTimeline) -> Vec<Panel> {
    let duration = report.duration_s.max(1.0);
    let width = bin_width(duration);
    let bins = (duration / width).ceil() as usize + 1;
    let mut sent = vec![0u64; bins];
    let mut ttft: Vec<Vec<f64>> = vec![Vec::new(); bins];
    let mut e2e: Vec<Vec<f64>> = vec![Vec::new(); bins];
    for r in &report.records {
        let bin = ((r.start_s / width) as usize).min(bins - 1);
        sent[bin] += 1;
        if r.is_ok() {
            if let Some(t) = r.ttft_us {
                ttft[bin].push(t as f64 / 1e6);
            }
            e2e[bin].push(r.e2e_us as f64 / 1e6);
        }
    }
    let at = |bin: usize| bin as f64 * width;
    let rate: Vec<(f64, f64)> = sent
        .iter()
        .enumerate()
        .map(|(i, n)| (at(i), *n as f64 / width))
        .collect();
    // Each bin's values sorted once, for its nearest-rank percentiles.
    let sorted = |values: Vec<Vec<f64>>| -> Vec<Sorted> { values.into_iter().map(Sorted::new).collect() };
    let (ttft, e2e) = (sorted(ttft), sorted(e2e));
    let per_bin = |values: &[Sorted], p: f64| -> Vec<(f64, f64)> {
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.percentile(p).map(|x| (at(i) + width / 2.0, x)))
            .collect()
    };
    let ttft_p50 = per_bin(&ttft, 50.0);
    let ttft_p99 = per_bin(&ttft, 99.0);
    let e2e_p50 = per_bin(&e2e, 50.0);
    let samples = &monitor.samples;
    let of = |f: &dyn Fn(&crate::monitor::MonitorSample) -> f64| -> Vec<(f64, f64)> {
        samples.iter().map(|s| (s.t_s, f(s))).collect()
    };
    vec![
        Panel {
            title: "load: requests sent per second (client) and generated tokens per second (server)",
            left_label: "requests/s",
            left: vec![Series {
                name: "requests sent/s",
                color: RED,
                width: 2,
                points: rate,
            }],
            dots: Vec::new(),
            integer_axis: false,
            right_label: "tokens/s",
            right: vec![Series {
                name: "generated tok/s (5 s)",
                color: RGBColor(120, 120, 120),
                width: 1,
                points: monitor.generated_tokens_per_s(5.0),
            }],
        },
        Panel {
            title: "replicas (admin status); dots: scale events",
            left_label: "replicas",
            left: vec![
                Series {
                    name: "desired",
                    color: RGBColor(150, 150, 150),
                    width: 1,
                    points: of(&|s| f64::from(s.desired)),
                },
                Series {
                    name: "draining",
                    color: RGBColor(230, 140, 0),
                    width: 1,
                    points: of(&|s| f64::from(s.draining)),
                },
                Series {
                    name: "ready",
                    color: RGBColor(0, 150, 0),
                    width: 1,
                    points: of(&|s| f64::from(s.ready)),
                },
                Series {
                    name: "ready + starting",
                    color: BLUE,
                    width: 2,
                    points: of(&|s| f64::from(s.capacity())),
                },
            ],
            dots: monitor
                .scale_events
                .iter()
                .map(|e| (e.t_s.max(0.0), f64::from(e.to)))
                .collect(),
            integer_axis: true,
            right_label: "",
            right: Vec::new(),
        },
        Panel {
            title: "queue: requests waiting and running; oldest wait (right axis)",
            left_label: "requests",
            left: vec![
                Series {
                    name: "waiting",
                    color: RED,
                    width: 2,
                    points: of(&|s| s.queue_depth as f64),
                },
                Series {
                    name: "running",
                    color: RGBColor(120, 0, 160),
                    width: 1,
                    points: of(&|s| s.in_flight as f64),
                },
            ],
            dots: Vec::new(),
            integer_axis: false,
            right_label: "oldest wait (s)",
            right: vec![Series {
                name: "oldest wait",
                color: RGBColor(230, 140, 0),
                width: 1,
                points: of(&|s| s.oldest_wait_s.unwrap_or(0.0)),
            }],
        },
        Panel {
            title: "latency by send time: client TTFT p50 / p99, end-to-end p50; server TTFT p50",
            left_label: "seconds",
            left: vec![
                Series {
                    name: "e2e p50",
                    color: RGBColor(150, 150, 150),
                    width: 1,
                    points: e2e_p50,
                },
                Series {
                    name: "TTFT p99",
                    color: RED,
                    width: 1,
                    points: ttft_p99,
                },
                Series {
                    name: "TTFT p50",
                    color: BLUE,
                    width: 2,
                    points: ttft_p50,
                },
                Series {
                    name: "server TTFT p50",
                    color: RGBColor(0, 150, 0),
                    width: 1,
                    points: samples
                        .iter()
                        .filter_map(|s| s.server_ttft_p50_s.map(|v| (s.t_s, v)))
                        .collect(),
                },
            ],
            dots: Vec::new(),
            integer_axis: false,
            right_label: "",
            right: Vec::new(),
        },
    ]
}

fn max_y(series: &[Series], dots: &[(f64, f64)]) -> f64 {
    series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(dots.iter().map(|d| d.1))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[Panel],
    horizon: f64,
    model: &str,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let (title, body) = root.split_vertically(20);
    title
        .draw(&Text::new(
            format!("swell-loadtest: deployment {model}, time in seconds since the start of the run"),
            (8, 2),
            ("sans-serif", 14),
        ))
        .map_err(err)?;
    for (area, panel) in body.split_evenly((panels.len(), 1)).iter().zip(panels) {
        let left_max = max_y(&panel.left, &panel.dots);
        let right_max = max_y(&panel.right, &[]);
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 15))
            .margin(6)
            .x_label_area_size(24)
            .y_label_area_size(60)
            .right_y_label_area_size(if panel.right.is_empty() { 10 } else { 60 })
            .build_cartesian_2d(0f64..horizon, 0f64..left_max)
            .map_err(err)?
            .set_secondary_coord(0f64..horizon, 0f64..right_max);
        let integer = panel.integer_axis;
        chart
            .configure_mesh()
            .y_desc(panel.left_label)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| {
                if integer {
                    integer_label(*y)
                } else {
                    format!("{y:.2}")
                }
            })
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        if !panel.right.is_empty() {
            chart
                .configure_secondary_axes()
                .y_desc(panel.right_label)
                .y_label_formatter(&|y| format!("{y:.1}"))
                .draw()
                .map_err(err)?;
        }
        for s in &panel.right {
            let color = s.color;
            chart
                .draw_secondary_series(LineSeries::new(
                    downsample(&s.points, 2000),
                    color.stroke_width(s.width),
                ))
                .map_err(err)?
                .label(s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        for s in &panel.left {
            let color = s.color;
            chart
                .draw_series(LineSeries::new(
                    downsample(&s.points, 2000),
                    color.stroke_width(s.width),
                ))
                .map_err(err)?
                .label(s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        if !panel.dots.is_empty() {
            chart
                .draw_series(
                    panel
                        .dots
                        .iter()
                        .map(|&at| Circle::new(at, 3, BLACK.filled())),
                )
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::{LiveScaleEvent, MonitorSample};
    use crate::record::RequestRecord;

    fn record(id: u64, start_s: f64, ttft_ms: u64) -> RequestRecord {
        RequestRecord {
            id,
            start_s,
            status: "ok".into(),
            error_message: None,
            ttft_us: Some(ttft_ms * 1000),
            e2e_us: ttft_ms * 1000 + 500_000,
            itl_us: Vec::new(),
            itl_mean_us: None,
            itl_max_us: None,
            prompt_tokens: 10,
            max_tokens: 10,
            usage_prompt_tokens: None,
            usage_completion_tokens: Some(10),
            content_chunks: 10,
            queue_events: 0,
            starting_events: 0,
            comments: 0,
            wait_comment_us: None,
            wait_position: None,
            wait_eta_s: None,
            first_chunk_us: None,
        }
    }

    fn report() -> Report {
        let mut report = crate::report::ReportBuilder::new().finish(
            crate::report::RunInfo {
                mode: "poisson".into(),
                rate: Some(2.0),
                concurrency: None,
                trace: None,
                time_scale: None,
                protocol: crate::Protocol::Sse,
                endpoint: crate::Endpoint::Chat,
                model: "m".into(),
                url: "http://x".into(),
                seed: 1,
                started_at_unix_s: 0.0,
            },
            std::time::Duration::from_secs(4),
            0,
        );
        report.records = vec![
            record(0, 0.1, 100),
            record(1, 0.2, 300),
            record(2, 2.5, 50),
        ];
        let sample = |t_s: f64, ready: u32, generated: f64| MonitorSample {
            t_s,
            desired: 2,
            ready,
            starting: 2 - ready,
            draining: 0,
            queue_depth: 1,
            in_flight: 2,
            oldest_wait_s: Some(0.2),
            generated_tokens_total: Some(generated),
            prompt_tokens_total: None,
            server_ttft_p50_s: Some(0.1),
            server_ttft_p99_s: None,
        };
        report.monitor = Some(LiveTimeline {
            deployment: "m".into(),
            interval_s: 1.0,
            samples: vec![sample(0.0, 0, 0.0), sample(1.0, 1, 10.0), sample(2.0, 2, 30.0)],
            scale_events: vec![LiveScaleEvent {
                t_s: 0.05,
                from: 0,
                to: 2,
                reason: "queued_at_zero".into(),
                detail: String::new(),
            }],
            poll_errors: 0,
            last_error: None,
        });
        report
    }

    #[test]
    fn panels_bin_the_records_and_read_the_samples() {
        let report = report();
        let panels = panels(&report, report.monitor.as_ref().unwrap());
        assert_eq!(panels.len(), 4);
        // Two requests sent in the first second, one in the third.
        assert_eq!(&panels[0].left[0].points[..3], &[(0.0, 2.0), (1.0, 0.0), (2.0, 1.0)]);
        assert_eq!(panels[0].right[0].points, vec![(1.0, 10.0), (2.0, 15.0)]);
        let capacity = &panels[1].left[3];
        assert_eq!(capacity.name, "ready + starting");
        assert!(capacity.points.iter().all(|p| p.1 == 2.0));
        assert_eq!(panels[1].dots, vec![(0.05, 2.0)]);
        let ttft_p50 = &panels[3].left[2];
        assert_eq!(ttft_p50.name, "TTFT p50");
        assert_eq!(ttft_p50.points, vec![(0.5, 0.1), (2.5, 0.05)]);
        let ttft_p99 = &panels[3].left[1];
        assert_eq!(ttft_p99.points, vec![(0.5, 0.3), (2.5, 0.05)]);
    }

    #[test]
    fn writes_svg_and_png() {
        let dir = std::env::temp_dir().join(format!("swell-live-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            png_font(),
            "no TrueType font: install fonts-dejavu-core (Debian) or set SWELL_PLOT_FONT to a .ttf"
        );
        let written = write_all(&dir, &report()).unwrap();
        assert_eq!(written.len(), 2);
        let svg = std::fs::read_to_string(dir.join("live.svg")).unwrap();
        assert!(svg.contains("ready + starting"), "legend missing");
        assert!(std::fs::metadata(dir.join("live.png")).unwrap().len() > 1000);
        let mut without = report();
        without.monitor = None;
        assert!(write_all(&dir, &without).is_err());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bins_widen_for_long_runs() {
        assert_eq!(bin_width(10.0), 1.0);
        assert_eq!(bin_width(300.0), 1.0);
        assert_eq!(bin_width(3600.0), 12.0);
    }
}
