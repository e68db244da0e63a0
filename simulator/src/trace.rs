//! Trace files, read by the simulator and the load generator alike.
//!
//! - The Azure LLM inference trace (`TIMESTAMP,ContextTokens,GeneratedTokens`):
//!   [`read_trace`], [`load_trace`].
//! - The sarathi-serve ShareGPT length file (`num_prefill_tokens,num_decode_tokens,...`):
//!   [`read_sharegpt`].
//! - The copies in the repository, `loadtests/traces/`: [`traces_dir`].
//!
//! The Azure timestamp is wall-clock time like `2023-11-16 18:15:46.6805900` (any number of
//! fractional digits; a `T` separator works too); a plain number is read as seconds. Columns
//! are found by header name (case-insensitive), or taken as the first three when the header
//! names none of them.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use thiserror::Error;

/// The traces kept in the repository (`loadtests/traces/`, beside this crate), found from
/// this crate's source directory at build time.
pub fn traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the repository")
        .join("loadtests")
        .join("traces")
}

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRow {
    /// Arrival time in microseconds (since 1970 for wall-clock timestamps).
    pub timestamp_us: i64,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
}

/// A timestamp that does not parse.
#[derive(Debug, Error, PartialEq)]
#[error("invalid timestamp {0:?}: expected YYYY-MM-DD HH:MM:SS[.fraction] or seconds")]
pub struct TimestampError(pub String);

/// Parses a trace timestamp into microseconds.
pub fn parse_timestamp(s: &str) -> Result<i64, TimestampError> {
    let s = s.trim();
    let err = || TimestampError(s.to_string());
    if let Ok(secs) = s.parse::<f64>() {
        return if secs.is_finite() {
            Ok((secs * 1e6).round() as i64)
        } else {
            Err(err())
        };
    }
    let (date, time) = s.split_once([' ', 'T']).ok_or_else(err)?;
    let mut date_parts = date.split('-');
    let mut next_num = |max: i64| -> Result<i64, TimestampError> {
        let v: i64 = date_parts
            .next()
            .ok_or_else(err)?
            .parse()
            .map_err(|_| err())?;
        if (0..=max).contains(&v) {
            Ok(v)
        } else {
            Err(err())
        }
    };
    let (year, month, day) = (next_num(9999)?, next_num(12)?, next_num(31)?);
    if month == 0 || day == 0 {
        return Err(err());
    }
    let time = time.trim_end_matches('Z');
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, frac),
        None => (time, ""),
    };
    let mut hms_parts = hms.split(':');
    let mut field = |max: i64| -> Result<i64, TimestampError> {
        let v: i64 = hms_parts
            .next()
            .ok_or_else(err)?
            .parse()
            .map_err(|_| err())?;
        if (0..=max).contains(&v) {
            Ok(v)
        } else {
            Err(err())
        }
    };
    let (h, m, sec) = (field(23)?, field(59)?, field(60)?);
    if hms_parts.next().is_some() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    // First six fractional digits are microseconds; round on the seventh.
    let mut micros: i64 = 0;
    for i in 0..6 {
        micros = micros * 10 + frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
    }
    if frac.as_bytes().get(6).is_some_and(|b| *b >= b'5') {
        micros += 1;
    }
    let days = days_from_civil(year, month as u32, day as u32);
    Ok(((days * 86_400 + h * 3_600 + m * 60 + sec) * 1_000_000) + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads a trace; rows come back sorted by timestamp. Lengths below 1 become 1.
pub fn read_trace(reader: impl Read) -> anyhow::Result<Vec<TraceRow>> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let headers = csv
        .headers()
        .context("cannot read the trace header")?
        .clone();
    let find = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let columns = match (
        find("TIMESTAMP"),
        find("ContextTokens"),
        find("GeneratedTokens"),
    ) {
        (Some(t), Some(p), Some(o)) => [t, p, o],
        (None, None, None) => [0, 1, 2],
        _ => anyhow::bail!("the trace header needs TIMESTAMP, ContextTokens and GeneratedTokens"),
    };
    let mut rows = Vec::new();
    for (i, record) in csv.records().enumerate() {
        let line = i + 2;
        let record = record.with_context(|| format!("bad trace row at line {line}"))?;
        let get = |col: usize| {
            record
                .get(col)
                .with_context(|| format!("line {line} has no column {}", col + 1))
        };
        let tokens = |col: usize| -> anyhow::Result<u32> {
            let raw = get(col)?;
            let v: u64 = raw
                .parse()
                .with_context(|| format!("line {line}: {raw:?} is not a token count"))?;
            Ok(v.clamp(1, u64::from(u32::MAX)) as u32)
        };
        rows.push(TraceRow {
            timestamp_us: parse_timestamp(get(columns[0])?)
                .with_context(|| format!("line {line}"))?,
            prompt_tokens: tokens(columns[1])?,
            output_tokens: tokens(columns[2])?,
        });
    }
    rows.sort_by_key(|r| r.timestamp_us);
    Ok(rows)
}

/// Reads a trace file.
pub fn load_trace(path: &Path) -> anyhow::Result<Vec<TraceRow>> {
    let file = File::open(path).with_context(|| format!("cannot open trace {}", path.display()))?;
    let rows = read_trace(file).with_context(|| format!("cannot read trace {}", path.display()))?;
    anyhow::ensure!(!rows.is_empty(), "trace {} has no rows", path.display());
    Ok(rows)
}

/// Reads the sarathi-serve ShareGPT length file: `(prompt tokens, output tokens)` per row.
/// Columns are found by the names `num_prefill_tokens` and `num_decode_tokens`, or taken as
/// the first two when the header names neither. Lengths below 1 become 1.
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

/// Reads a ShareGPT length file (see [`read_sharegpt`]).
pub fn load_sharegpt(path: &Path) -> anyhow::Result<Vec<(u32, u32)>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    read_sharegpt(file).with_context(|| format!("cannot read {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn azure() -> PathBuf {
        traces_dir().join("azure-2023/AzureLLMInferenceTrace_conv.csv")
    }

    fn sharegpt() -> PathBuf {
        traces_dir().join("sarathi-serve/sharegpt_8k_filtered_stats_llama2_tokenizer.csv")
    }

    #[test]
    fn parses_azure_timestamps() {
        let t0 = parse_timestamp("2023-11-16 18:15:46.6805900").unwrap();
        // 2023-11-16T18:15:46Z is 1700158546 s after the epoch.
        assert_eq!(t0, 1_700_158_546_680_590);
        let t1 = parse_timestamp("2023-11-16 18:15:50.9951690").unwrap();
        assert_eq!(t1 - t0, 4_314_579);
        assert_eq!(parse_timestamp("1970-01-01 00:00:00").unwrap(), 0);
        assert_eq!(
            parse_timestamp("1970-01-01T00:00:01.5Z").unwrap(),
            1_500_000
        );
        assert_eq!(
            parse_timestamp("2024-03-01 00:00:00").unwrap()
                - parse_timestamp("2024-02-28 00:00:00").unwrap(),
            2 * 86_400_000_000
        );
        assert_eq!(parse_timestamp("12.25").unwrap(), 12_250_000);
        for bad in [
            "",
            "2023-11-16",
            "2023-13-01 00:00:00",
            "2023-11-16 25:00:00",
            "2023-11-16 1:2:3.x",
            "yesterday",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_inline_azure_rows() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 18:15:50.9951690,396,109\n\
                    2023-11-16 18:15:46.6805900,374,44\n\
                    2023-11-16 18:15:51.2224670,879,0\n";
        let rows = read_trace(text.as_bytes()).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].prompt_tokens, rows[0].output_tokens),
            (374, 44),
            "sorted by time"
        );
        assert_eq!(
            (rows[2].prompt_tokens, rows[2].output_tokens),
            (879, 1),
            "lengths clamp to 1"
        );
    }

    #[test]
    fn finds_columns_by_name_or_position() {
        let reordered = "generatedtokens,timestamp,contexttokens\n5,1.0,7\n";
        let rows = read_trace(reordered.as_bytes()).unwrap();
        assert_eq!(
            rows[0],
            TraceRow {
                timestamp_us: 1_000_000,
                prompt_tokens: 7,
                output_tokens: 5
            }
        );
        let positional = "t,p,o\n2.5,10,20\n";
        assert_eq!(
            read_trace(positional.as_bytes()).unwrap()[0].output_tokens,
            20
        );
        assert!(read_trace("TIMESTAMP,x,y\n1,2,3\n".as_bytes()).is_err());
        assert!(
            read_trace("TIMESTAMP,ContextTokens,GeneratedTokens\n1,abc,3\n".as_bytes()).is_err()
        );
    }

    #[test]
    fn reads_the_real_azure_trace() {
        let file = File::open(azure()).expect("the Azure trace is in loadtests/traces");
        let rows = read_trace(file).unwrap();
        assert_eq!(rows.len(), 19_366);
        assert_eq!((rows[0].prompt_tokens, rows[0].output_tokens), (374, 44));
        assert_eq!((rows[1].prompt_tokens, rows[1].output_tokens), (396, 109));
        let span_s = (rows.last().unwrap().timestamp_us - rows[0].timestamp_us) as f64 / 1e6;
        assert!((3_500.0..3_505.0).contains(&span_s), "span {span_s}");
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
    fn reads_the_real_sharegpt_file() {
        let file = File::open(sharegpt()).expect("the ShareGPT lengths are in loadtests/traces");
        let rows = read_sharegpt(file).unwrap();
        assert_eq!(rows.len(), 30_731);
        assert_eq!(&rows[..2], &[(74, 918), (290, 905)]);
    }
}
