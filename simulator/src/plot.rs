//! Plots with `plotters`, SVG and PNG: replicas and load over time (one panel per
//! policy), and cost against SLO attainment.
//!
//! Text is measured (SVG) and rasterised (PNG) with `ab_glyph` from a TrueType font read
//! at run time (`SWELL_PLOT_FONT`, else DejaVu Sans or Liberation Sans where
//! Debian/Ubuntu/Fedora put them; Debian images with fontconfig carry DejaVu); without
//! one, the plots are skipped with a message and the table and JSON remain.
//!
//! The font lookup and the small helpers ([`png_font`], [`err`], [`integer_label`],
//! [`downsample`]) are public: the load generator's live plots use them too.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::engine::RunResult;
use super::summary::PolicySummary;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a font for PNG text; false when none was found.
pub fn png_font() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let candidates = std::env::var("SWELL_PLOT_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|s| s.to_string()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// A plotting error as an [`anyhow::Error`], prefixed `plot:`.
pub fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

/// Writes `timeline.{svg,png}` and `cost_vs_slo.{svg,png}` into `dir`; returns the paths.
pub fn write_all(
    dir: &Path,
    runs: &[RunResult],
    rows: &[PolicySummary],
) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    // Text layout needs the font for SVG too (plotters measures text with it).
    if !png_font() {
        eprintln!("no TrueType font found (set SWELL_PLOT_FONT): plots skipped");
        return Ok(written);
    }
    let n = runs.len().max(1) as u32;
    let size = (1200, 220 * n + 20);
    let svg = dir.join("timeline.svg");
    timeline(SVGBackend::new(&svg, size).into_drawing_area(), runs)?;
    written.push(svg);
    let svg = dir.join("cost_vs_slo.svg");
    scatter(SVGBackend::new(&svg, (900, 600)).into_drawing_area(), rows)?;
    written.push(svg);
    let png = dir.join("timeline.png");
    timeline(BitMapBackend::new(&png, size).into_drawing_area(), runs)?;
    written.push(png);
    let png = dir.join("cost_vs_slo.png");
    scatter(
        BitMapBackend::new(&png, (900, 600)).into_drawing_area(),
        rows,
    )?;
    written.push(png);
    Ok(written)
}

/// Whole numbers only (replica counts), so a small axis does not read "0 0 1 1".
pub fn integer_label(y: f64) -> String {
    if (y - y.round()).abs() < 1e-6 {
        format!("{y:.0}")
    } else {
        String::new()
    }
}

/// At most `bins` points: the maximum of each bin, so short peaks stay visible.
pub fn downsample(points: &[(f64, f64)], bins: usize) -> Vec<(f64, f64)> {
    if points.len() <= bins {
        return points.to_vec();
    }
    let per = points.len().div_ceil(bins);
    points
        .chunks(per)
        .map(|c| (c[0].0, c.iter().map(|p| p.1).fold(f64::MIN, f64::max)))
        .collect()
}

fn timeline<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    runs: &[RunResult],
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let horizon = runs.iter().map(|r| r.horizon).fold(1.0, f64::max);
    let max_load = runs
        .iter()
        .flat_map(|r| r.timeline.iter().map(|p| p.concurrency))
        .max()
        .unwrap_or(1)
        .max(1);
    let areas = root.split_evenly((runs.len().max(1), 1));
    for (area, run) in areas.iter().zip(runs) {
        // Each panel its own replica scale (a baseline at hundreds would flatten the
        // others); the load scale is shared, the load being the same.
        let max_replicas = run
            .timeline
            .iter()
            .map(|p| p.ready + p.starting + p.draining)
            .max()
            .unwrap_or(1)
            .max(1);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{}: replicas (blue, ready+starting) and concurrent requests (red)",
                    run.policy
                ),
                ("sans-serif", 16),
            )
            .margin(6)
            .x_label_area_size(24)
            .y_label_area_size(60)
            .right_y_label_area_size(52)
            .build_cartesian_2d(0f64..horizon, 0f64..f64::from(max_replicas) * 1.1)
            .map_err(err)?
            .set_secondary_coord(0f64..horizon, 0f64..max_load as f64 * 1.1);
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("replicas")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| integer_label(*y))
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        chart
            .configure_secondary_axes()
            .y_desc("requests in flight")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(err)?;
        let load: Vec<(f64, f64)> = run
            .timeline
            .iter()
            .map(|p| (p.t, p.concurrency as f64))
            .collect();
        chart
            .draw_secondary_series(LineSeries::new(downsample(&load, 2000), RED.mix(0.6)))
            .map_err(err)?;
        let replicas: Vec<(f64, f64)> = run
            .timeline
            .iter()
            .map(|p| (p.t, f64::from(p.ready + p.starting)))
            .collect();
        chart
            .draw_series(LineSeries::new(
                downsample(&replicas, 2000),
                BLUE.stroke_width(2),
            ))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn scatter<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    rows: &[PolicySummary],
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let ratio = |r: &PolicySummary| {
        if r.cost_vs_oracle.is_finite() && r.cost_vs_oracle > 0.0 {
            r.cost_vs_oracle
        } else {
            1.0
        }
    };
    let max_ratio = rows.iter().map(ratio).fold(2.0, f64::max) * 4.0;
    let min_ratio = rows.iter().map(ratio).fold(1.0, f64::min) * 0.8;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "cost (× oracle, log scale) against SLO attainment: upper left is better",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((min_ratio..max_ratio).log_scale(), 0f64..105f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("replica-seconds / oracle's")
        .y_desc("SLO attainment (%)")
        .x_label_formatter(&|x| format!("{x:.2}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    for (i, r) in rows.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let at = (ratio(r), r.slo_attainment * 100.0);
        chart
            .draw_series(std::iter::once(Circle::new(at, 6, color.filled())))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{} ({:.0} replica-s)", r.policy, r.replica_seconds),
                at,
                ("sans-serif", 14),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
