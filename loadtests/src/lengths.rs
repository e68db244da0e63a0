//! Prompt and output length distributions (`--prompt-tokens`, `--output-tokens`).
//!
//! A `DIST` is one of:
//! - `N`: always `N` tokens;
//! - `uniform:A:B`: uniform over `A..=B`;
//! - `normal:MEAN:SD`: normal, rounded, clamped to at least 1;
//! - `sharegpt:FILE`: lengths of a random row of the sarathi-serve ShareGPT CSV
//!   (`num_prefill_tokens,num_decode_tokens,...`, read by
//!   [`swell_simulator::trace::read_sharegpt`]); prompts use the prefill column, outputs the
//!   decode column. When prompt and output both name the same file, one row gives both, so
//!   their correlation is kept.

use std::{fmt, path::Path, path::PathBuf, str::FromStr, sync::Arc};

use anyhow::Context as _;
use rand::Rng;
use rand_distr::{Distribution, Normal};
use thiserror::Error;

/// A length distribution, as parsed from a `DIST` string.
#[derive(Debug, Clone, PartialEq)]
pub enum LengthDist {
    Fixed(u32),
    Uniform { min: u32, max: u32 },
    Normal { mean: f64, sd: f64 },
    ShareGpt(PathBuf),
}

/// A `DIST` string that does not parse.
#[derive(Debug, Error, PartialEq)]
#[error("invalid length distribution {input:?}: {reason} (expected N, uniform:A:B, normal:MEAN:SD or sharegpt:FILE)")]
pub struct ParseDistError {
    input: String,
    reason: String,
}

impl FromStr for LengthDist {
    type Err = ParseDistError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| ParseDistError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let positive = |v: &str| -> Result<u32, ParseDistError> {
            match v.trim().parse::<u32>() {
                Ok(0) => Err(fail("lengths must be at least 1")),
                Ok(n) => Ok(n),
                Err(_) => Err(fail(&format!("{v:?} is not a whole number"))),
            }
        };
        let s_trim = s.trim();
        let (kind, rest) = match s_trim.split_once(':') {
            None => return positive(s_trim).map(LengthDist::Fixed),
            Some(parts) => parts,
        };
        match kind.to_ascii_lowercase().as_str() {
            "uniform" => {
                let (a, b) = rest
                    .split_once(':')
                    .ok_or_else(|| fail("uniform needs A:B"))?;
                let (min, max) = (positive(a)?, positive(b)?);
                if min > max {
                    return Err(fail("uniform needs A <= B"));
                }
                Ok(LengthDist::Uniform { min, max })
            }
            "normal" => {
                let (m, d) = rest
                    .split_once(':')
                    .ok_or_else(|| fail("normal needs MEAN:SD"))?;
                let number = |v: &str| {
                    v.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| fail(&format!("{v:?} is not a number")))
                };
                let (mean, sd) = (number(m)?, number(d)?);
                if sd < 0.0 {
                    return Err(fail("the standard deviation must not be negative"));
                }
                Ok(LengthDist::Normal { mean, sd })
            }
            "sharegpt" if !rest.is_empty() => Ok(LengthDist::ShareGpt(PathBuf::from(rest))),
            "sharegpt" => Err(fail("sharegpt needs a file")),
            other => Err(fail(&format!("unknown distribution {other:?}"))),
        }
    }
}

impl fmt::Display for LengthDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LengthDist::Fixed(n) => write!(f, "{n}"),
            LengthDist::Uniform { min, max } => write!(f, "uniform:{min}:{max}"),
            LengthDist::Normal { mean, sd } => write!(f, "normal:{mean}:{sd}"),
            LengthDist::ShareGpt(path) => write!(f, "sharegpt:{}", path.display()),
        }
    }
}

/// Rows of a ShareGPT length file: `(prompt tokens, output tokens)`.
pub type LengthRows = Arc<Vec<(u32, u32)>>;

fn load_sharegpt(path: &Path) -> anyhow::Result<LengthRows> {
    Ok(Arc::new(swell_simulator::trace::load_sharegpt(path)?))
}

/// A ready-to-sample distribution (files loaded).
#[derive(Debug, Clone)]
enum Sampler {
    Fixed(u32),
    Uniform(u32, u32),
    /// Rounded, clamped to at least 1.
    Normal(Normal<f64>),
    Rows {
        rows: LengthRows,
        prompt_column: bool,
    },
}

impl Sampler {
    fn new(dist: &LengthDist, prompt_column: bool) -> anyhow::Result<Self> {
        Ok(match dist {
            LengthDist::Fixed(n) => Sampler::Fixed(*n),
            LengthDist::Uniform { min, max } => Sampler::Uniform(*min, *max),
            LengthDist::Normal { mean, sd } => Sampler::Normal(
                Normal::new(*mean, *sd).context("normal length distribution")?,
            ),
            LengthDist::ShareGpt(path) => Sampler::Rows {
                rows: load_sharegpt(path)?,
                prompt_column,
            },
        })
    }

    fn sample(&self, rng: &mut impl Rng) -> u32 {
        match self {
            Sampler::Fixed(n) => *n,
            Sampler::Uniform(a, b) => rng.random_range(*a..=*b),
            Sampler::Normal(normal) => normal.sample(rng).round().clamp(1.0, u32::MAX as f64) as u32,
            Sampler::Rows {
                rows,
                prompt_column,
            } => {
                let (p, o) = rows[rng.random_range(0..rows.len())];
                if *prompt_column {
                    p
                } else {
                    o
                }
            }
        }
    }
}

/// Draws `(prompt tokens, output tokens)` pairs.
#[derive(Debug, Clone)]
pub struct LengthModel {
    prompt: Sampler,
    output: Sampler,
    /// Set when both sides come from the same ShareGPT file: one row per draw.
    joint: Option<LengthRows>,
}

impl LengthModel {
    /// Prepares the distributions, loading ShareGPT files.
    pub fn new(prompt: &LengthDist, output: &LengthDist) -> anyhow::Result<Self> {
        if let (LengthDist::ShareGpt(p), LengthDist::ShareGpt(o)) = (prompt, output) {
            if p == o {
                let rows = load_sharegpt(p)?;
                return Ok(LengthModel {
                    prompt: Sampler::Fixed(1),
                    output: Sampler::Fixed(1),
                    joint: Some(rows),
                });
            }
        }
        Ok(LengthModel {
            prompt: Sampler::new(prompt, true)?,
            output: Sampler::new(output, false)?,
            joint: None,
        })
    }

    /// Draws one pair.
    pub fn sample(&self, rng: &mut impl Rng) -> (u32, u32) {
        match &self.joint {
            Some(rows) => rows[rng.random_range(0..rows.len())],
            None => (self.prompt.sample(rng), self.output.sample(rng)),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("128".parse(), Ok(LengthDist::Fixed(128)));
        assert_eq!(" 7 ".parse(), Ok(LengthDist::Fixed(7)));
        assert_eq!(
            "uniform:10:20".parse(),
            Ok(LengthDist::Uniform { min: 10, max: 20 })
        );
        assert_eq!(
            "uniform:5:5".parse(),
            Ok(LengthDist::Uniform { min: 5, max: 5 })
        );
        assert_eq!(
            "normal:100:15.5".parse(),
            Ok(LengthDist::Normal {
                mean: 100.0,
                sd: 15.5
            })
        );
        assert_eq!(
            "sharegpt:/tmp/a.csv".parse(),
            Ok(LengthDist::ShareGpt("/tmp/a.csv".into()))
        );
        assert_eq!(
            "sharegpt:C:/x.csv".parse(),
            Ok(LengthDist::ShareGpt("C:/x.csv".into()))
        );
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "",
            "0",
            "-3",
            "1.5",
            "uniform:5",
            "uniform:9:3",
            "uniform:0:3",
            "normal:1",
            "normal:x:1",
            "normal:10:-1",
            "sharegpt:",
            "zipf:1:2",
            "uniform:a:b",
        ] {
            let err = bad.parse::<LengthDist>().unwrap_err().to_string();
            assert!(
                err.starts_with("invalid length distribution"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "128",
            "uniform:10:20",
            "normal:100:15.5",
            "sharegpt:/tmp/a.csv",
        ] {
            assert_eq!(s.parse::<LengthDist>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn samples_stay_in_range() {
        let mut rng = StdRng::seed_from_u64(1);
        let model = LengthModel::new(
            &LengthDist::Uniform { min: 10, max: 20 },
            &LengthDist::Normal {
                mean: 3.0,
                sd: 50.0,
            },
        )
        .unwrap();
        let mut seen_min = false;
        for _ in 0..10_000 {
            let (p, o) = model.sample(&mut rng);
            assert!((10..=20).contains(&p));
            assert!(o >= 1);
            seen_min |= p == 10;
        }
        assert!(seen_min, "uniform bounds are inclusive");
    }

    #[test]
    fn normal_has_the_requested_moments() {
        let mut rng = StdRng::seed_from_u64(7);
        let model = LengthModel::new(
            &LengthDist::Normal {
                mean: 500.0,
                sd: 50.0,
            },
            &LengthDist::Fixed(1),
        )
        .unwrap();
        let draws: Vec<f64> = (0..50_000)
            .map(|_| model.sample(&mut rng).0 as f64)
            .collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        assert!((mean - 500.0).abs() < 1.5, "mean {mean}");
        assert!((var.sqrt() - 50.0).abs() < 1.5, "sd {}", var.sqrt());
    }

    #[test]
    fn same_sharegpt_file_samples_rows_jointly() {
        let path =
            std::env::temp_dir().join(format!("swell-lt-sharegpt-{}.csv", std::process::id()));
        std::fs::write(
            &path,
            "num_prefill_tokens,num_decode_tokens\n10,1\n20,2\n30,3\n",
        )
        .unwrap();
        let dist = LengthDist::ShareGpt(path.clone());
        let model = LengthModel::new(&dist, &dist).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let (p, o) = model.sample(&mut rng);
            assert_eq!(p, o * 10);
        }
        std::fs::remove_file(path).ok();
    }
}
