//! Prompt and output length distributions (`--prompt-tokens`, `--output-tokens`).
//!
//! A `DIST` is one of:
//! - `N`: always `N` tokens;
//! - `uniform:A:B`: uniform over `A..=B`;
//! - `normal:MEAN:SD`: normal, rounded, clamped to at least 1;
//! - `sharegpt:FILE`: lengths of a random row of the sarathi-serve ShareGPT CSV
//!   (`num_prefill_tokens,num_decode_tokens,...`); prompts use the prefill column, outputs the
//!   decode column. When prompt and output both name the same file, one row gives both, so
//!   their correlation is kept.

use std::{fmt, fs::File, io::Read, path::Path, path::PathBuf, str::FromStr, sync::Arc};

use anyhow::Context as _;
use rand::Rng;
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

/// Reads the sarathi-serve ShareGPT CSV. Columns are found by the names `num_prefill_tokens`
/// and `num_decode_tokens`, or taken as the first two when the header names neither. Lengths
/// below 1 become 1.
pub fn read_sharegpt(reader: impl Read) -> anyhow::Result<Vec<(u32, u32)>> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let headers = csv.headers().context("cannot read the csv header")?.clone();
    let find = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (p_col, o_col) = match (find("num_prefill_tokens"), find("num_decode_tokens")) {
        (Some(p), Some(o)) => (p, o),
        _ => (0, 1),
    };
    let mut rows = Vec::new();
    for (i, record) in csv.records().enumerate() {
        let record = record.with_context(|| format!("bad csv row {}", i + 2))?;
        let field = |col: usize| -> anyhow::Result<u32> {
            let raw = record
                .get(col)
                .with_context(|| format!("row {} has no column {}", i + 2, col + 1))?;
            let value: f64 = raw
                .parse()
                .with_context(|| format!("row {}: {raw:?} is not a number", i + 2))?;
            Ok(value.round().clamp(1.0, u32::MAX as f64) as u32)
        };
        rows.push((field(p_col)?, field(o_col)?));
    }
    anyhow::ensure!(!rows.is_empty(), "the length file has no rows");
    Ok(rows)
}

fn load_sharegpt(path: &Path) -> anyhow::Result<LengthRows> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let rows = read_sharegpt(file).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Arc::new(rows))
}

/// A ready-to-sample distribution (files loaded).
#[derive(Debug, Clone)]
enum Sampler {
    Fixed(u32),
    Uniform(u32, u32),
    Normal(f64, f64),
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
            LengthDist::Normal { mean, sd } => Sampler::Normal(*mean, *sd),
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
            Sampler::Normal(mean, sd) => {
                let value = mean + sd * standard_normal(rng);
                value.round().clamp(1.0, u32::MAX as f64) as u32
            }
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

/// One standard normal draw (Box-Muller).
pub fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
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

    const SHAREGPT: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/traces/sarathi-serve/sharegpt_8k_filtered_stats_llama2_tokenizer.csv");

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
    fn reads_sharegpt_csv_by_column_name() {
        let text = "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n\
                    74,918,992,0.08\n290,905,1195,0.32\n0,3,3,0\n";
        let rows = read_sharegpt(text.as_bytes()).unwrap();
        assert_eq!(rows, vec![(74, 918), (290, 905), (1, 3)]);
        let swapped = "pd_ratio,num_decode_tokens,num_prefill_tokens\n0.5,10,20\n";
        assert_eq!(read_sharegpt(swapped.as_bytes()).unwrap(), vec![(20, 10)]);
        assert!(read_sharegpt("a,b\n".as_bytes()).is_err());
        assert!(read_sharegpt("a,b\nx,1\n".as_bytes()).is_err());
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

    #[test]
    fn reads_the_real_sharegpt_file() {
        let file = File::open(SHAREGPT).expect("the ShareGPT lengths are in loadtests/traces");
        let rows = read_sharegpt(file).unwrap();
        assert_eq!(rows.len(), 30_731);
        assert_eq!(&rows[..2], &[(74, 918), (290, 905)]);
    }
}
