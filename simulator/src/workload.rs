//! Workloads for the simulator: a list of requests (arrival, prompt tokens, output tokens;
//! for traces that carry them, the prompt's block hashes and a session) from a real trace
//! or a synthetic pattern.

use std::path::Path;

use anyhow::{bail, Context as _};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Exp1, Gamma, Weibull};

/// One request of a workload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SimRequest {
    /// Arrival in seconds since the start of the workload.
    pub arrival: f64,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// The chained hashes of the prompt's full KV blocks, first block first (the
    /// simulator's block size); empty for traces without them: nothing is cached.
    pub block_hashes: Vec<u64>,
    /// The conversation or agent the request belongs to, for session-affine routing.
    pub session: Option<u64>,
}

/// Reads an Azure 2023 trace CSV: the first row arrives at 0, gaps divided by `time_scale`.
pub fn azure(
    path: &Path,
    time_scale: f64,
    duration: Option<f64>,
) -> anyhow::Result<Vec<SimRequest>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let rows = crate::trace::read_trace(file)?;
    let Some(first) = rows.first().map(|r| r.timestamp_us) else {
        bail!("{} holds no request", path.display());
    };
    let mut out: Vec<SimRequest> = rows
        .iter()
        .map(|r| SimRequest {
            arrival: (r.timestamp_us - first) as f64 / 1e6 / time_scale,
            prompt_tokens: r.prompt_tokens.max(1),
            output_tokens: r.output_tokens.max(1),
            ..SimRequest::default()
        })
        .collect();
    if let Some(d) = duration {
        out.retain(|r| r.arrival < d);
    }
    Ok(out)
}

/// Reads a Mooncake trace ([`crate::mooncake`]): the first row arrives at 0, gaps divided
/// by `time_scale`; each prompt's 512-token hash ids become the hashes of its full
/// `block_tokens`-token blocks, and its first id its session.
pub fn mooncake(
    path: &Path,
    block_tokens: u32,
    time_scale: f64,
    duration: Option<f64>,
) -> anyhow::Result<Vec<SimRequest>> {
    let rows = crate::mooncake::load_mooncake(path)?;
    let first = rows[0].timestamp;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let arrival = (row.timestamp - first) as f64 / 1e3 / time_scale;
        if duration.is_some_and(|d| arrival >= d) {
            break;
        }
        out.push(SimRequest {
            arrival,
            prompt_tokens: row.input_length.max(1),
            output_tokens: row.output_length.max(1),
            block_hashes: crate::mooncake::block_hashes(
                &row.hash_ids,
                row.input_length,
                block_tokens,
            )?,
            session: crate::mooncake::session_key(&row.hash_ids),
        });
    }
    Ok(out)
}

/// Turns a ServeGen per-tenant file (`window_start_s, rate, cv, pattern, shape, scale`,
/// one row per 600 s window) into arrivals: inter-arrival gaps drawn from the fitted
/// Gamma or Weibull distribution ([`rand_distr`]), rescaled so each window's mean rate is
/// its `rate`.
/// Lengths come from `lengths` (ShareGPT pairs), drawn uniformly.
pub fn servegen(
    path: &Path,
    lengths: &[(u32, u32)],
    time_scale: f64,
    duration: Option<f64>,
    seed: u64,
) -> anyhow::Result<Vec<SimRequest>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut rows: Vec<(f64, f64, String, f64, f64)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 6 {
            bail!("{}: expected 6 columns, got {line:?}", path.display());
        }
        let num = |s: &str| s.parse::<f64>().unwrap_or(0.0);
        rows.push((num(f[0]), num(f[1]), f[3].to_string(), num(f[4]), num(f[5])));
    }
    let Some(t0) = rows.first().map(|r| r.0) else {
        bail!("{} holds no window", path.display());
    };
    for (i, (start, rate, pattern, shape, scale)) in rows.iter().enumerate() {
        let end = rows.get(i + 1).map_or(start + 600.0, |r| r.0);
        let (start, end) = ((start - t0) / time_scale, (end - t0) / time_scale);
        if duration.is_some_and(|d| start >= d) {
            break;
        }
        if *rate <= 0.0 {
            continue;
        }
        let rate = rate * time_scale;
        let n_expected = (rate * (end - start)).max(1.0);
        // Draw raw gaps, then rescale them to the window's mean rate.
        let count = n_expected.ceil() as usize + 1;
        let dist = Gaps::new(pattern, *shape, *scale);
        let gaps: Vec<f64> = (0..count).map(|_| dist.sample(&mut rng)).collect();
        let mean_raw = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let factor = if mean_raw > 0.0 {
            1.0 / rate / mean_raw
        } else {
            1.0 / rate
        };
        let mut t = start;
        for g in gaps {
            t += g * factor;
            if t >= end {
                break;
            }
            let (p, o) = lengths[rng.random_range(0..lengths.len())];
            out.push(SimRequest {
                arrival: t,
                prompt_tokens: p.max(1),
                output_tokens: o.max(1),
                ..SimRequest::default()
            });
        }
    }
    if let Some(d) = duration {
        out.retain(|r| r.arrival < d);
    }
    Ok(out)
}

/// A ServeGen window's inter-arrival distribution, before rescaling to the window's rate.
enum Gaps {
    Weibull(Weibull<f64>),
    Gamma(Gamma<f64>),
    /// No usable fit (shape or scale not positive): exponential, i.e. Poisson arrivals.
    Exponential,
}

impl Gaps {
    /// `pattern` `Weibull`, else Gamma, with the fitted `shape` and `scale`.
    fn new(pattern: &str, shape: f64, scale: f64) -> Self {
        if !(shape > 0.0 && scale > 0.0) {
            return Self::Exponential;
        }
        match pattern {
            "Weibull" => Weibull::new(scale, shape).map_or(Self::Exponential, Self::Weibull),
            _ => Gamma::new(shape, scale).map_or(Self::Exponential, Self::Gamma),
        }
    }
}

impl Distribution<f64> for Gaps {
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match self {
            Self::Weibull(d) => d.sample(rng),
            Self::Gamma(d) => d.sample(rng),
            Self::Exponential => Exp1.sample(rng),
        }
    }
}

/// The requests from `start` seconds on, moved so `start` is t = 0.
pub fn window(mut requests: Vec<SimRequest>, start: f64) -> Vec<SimRequest> {
    if start > 0.0 {
        requests.retain(|r| r.arrival >= start);
        for r in &mut requests {
            r.arrival -= start;
        }
    }
    requests
}

/// Synthetic load patterns, Poisson arrivals at a time-varying rate `peak` req/s at most,
/// fixed lengths `prompt`/`output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// 0 → peak/4 → peak → peak/2 → 0, each a fifth of the duration.
    Steps,
    /// peak/10 with a 60 s spike to peak in the middle.
    Spike,
    /// A sine from 0 to peak over the duration (one "day").
    Diurnal,
    /// Alternating peak and idle, 10 minutes each.
    OnOff,
}

impl std::str::FromStr for Pattern {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "steps" => Self::Steps,
            "spike" => Self::Spike,
            "diurnal" => Self::Diurnal,
            "onoff" => Self::OnOff,
            _ => bail!("unknown pattern {s:?}: expected steps, spike, diurnal or onoff"),
        })
    }
}

impl Pattern {
    /// The rate at `t` seconds of a workload lasting `duration` seconds.
    pub fn rate(self, t: f64, duration: f64, peak: f64) -> f64 {
        let x = t / duration;
        match self {
            Self::Steps => match (x * 5.0) as u32 {
                0 => 0.0,
                1 => peak / 4.0,
                2 => peak,
                3 => peak / 2.0,
                _ => 0.0,
            },
            Self::Spike => {
                if (t - duration / 2.0).abs() < 30.0 {
                    peak
                } else {
                    peak / 10.0
                }
            }
            Self::Diurnal => peak * 0.5 * (1.0 - (2.0 * std::f64::consts::PI * x).cos()),
            Self::OnOff => {
                if ((t / 600.0) as u64).is_multiple_of(2) {
                    peak
                } else {
                    0.0
                }
            }
        }
    }
}

/// A synthetic workload: Poisson arrivals at the pattern's rate (thinning), fixed lengths.
pub fn synthetic(
    pattern: Pattern,
    duration: f64,
    peak: f64,
    prompt: u32,
    output: u32,
    seed: u64,
) -> Vec<SimRequest> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let gaps = match Exp::new(peak) {
        Ok(gaps) if peak > 0.0 => gaps,
        _ => return out,
    };
    let mut t = 0.0;
    loop {
        t += gaps.sample(&mut rng);
        if t >= duration {
            break;
        }
        if rng.random::<f64>() * peak < pattern.rate(t, duration, peak) {
            out.push(SimRequest {
                arrival: t,
                prompt_tokens: prompt,
                output_tokens: output,
                ..SimRequest::default()
            });
        }
    }
    out
}
