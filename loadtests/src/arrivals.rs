//! Arrival schedules: open-loop Poisson arrivals and trace replay. (The closed loop has no
//! schedule: its workers send back to back; see `runner`.)

use std::time::Duration;

use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Exp};
use swell_simulator::trace::TraceRow;

/// One planned request: when to send it, relative to the start of the run, and its lengths
/// when the schedule dictates them (trace replay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    pub at: Duration,
    /// `(prompt tokens, output tokens)`; `None` means "draw from the length distributions".
    pub lengths: Option<(u32, u32)>,
}

/// Endless Poisson arrival times (seeded): exponential gaps, the first arrival one gap
/// after zero.
#[derive(Debug, Clone)]
pub struct PoissonArrivals {
    rng: StdRng,
    gaps: Exp<f64>,
    t: f64,
}

impl PoissonArrivals {
    /// `rate` must be positive and finite.
    pub fn new(rate: f64, seed: u64) -> Self {
        assert!(
            rate.is_finite() && rate > 0.0,
            "poisson rate must be positive"
        );
        PoissonArrivals {
            rng: StdRng::seed_from_u64(seed),
            gaps: Exp::new(rate).expect("a positive, finite rate"),
            t: 0.0,
        }
    }
}

impl Iterator for PoissonArrivals {
    type Item = Arrival;

    fn next(&mut self) -> Option<Arrival> {
        self.t += self.gaps.sample(&mut self.rng);
        Some(Arrival {
            at: Duration::from_secs_f64(self.t),
            lengths: None,
        })
    }
}

/// Turns trace rows (sorted by time) into a schedule: rows before `offset` of trace time are
/// skipped, at most `limit` rows are kept, the first kept row arrives at zero, and gaps are
/// divided by `time_scale`.
pub fn trace_schedule(
    rows: &[TraceRow],
    offset: Duration,
    limit: Option<usize>,
    time_scale: f64,
) -> Vec<Arrival> {
    let Some(first) = rows.first() else {
        return Vec::new();
    };
    let offset_us = i64::try_from(offset.as_micros()).unwrap_or(i64::MAX);
    let start = first.timestamp_us.saturating_add(offset_us);
    let kept = rows
        .iter()
        .filter(|r| r.timestamp_us >= start)
        .take(limit.unwrap_or(usize::MAX));
    let mut base = None;
    kept.map(|row| {
        let base = *base.get_or_insert(row.timestamp_us);
        let secs = (row.timestamp_us - base) as f64 / 1e6 / time_scale;
        Arrival {
            at: Duration::from_secs_f64(secs.max(0.0)),
            lengths: Some((row.prompt_tokens, row.output_tokens)),
        }
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_mean_rate_matches_for_a_seeded_rng() {
        for (rate, seed) in [(5.0, 1), (200.0, 2), (0.5, 3)] {
            let n = 100_000;
            let last = PoissonArrivals::new(rate, seed)
                .nth(n - 1)
                .unwrap()
                .at
                .as_secs_f64();
            let measured = n as f64 / last;
            assert!(
                (measured / rate - 1.0).abs() < 0.02,
                "rate {rate}: measured {measured}"
            );
        }
    }

    #[test]
    fn poisson_gaps_are_exponential() {
        // Exponential gaps: coefficient of variation 1, and P(gap > mean) = 1/e.
        let times: Vec<f64> = PoissonArrivals::new(10.0, 9)
            .take(100_001)
            .map(|a| a.at.as_secs_f64())
            .collect();
        let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        assert!((sd / mean - 1.0).abs() < 0.03, "cv {}", sd / mean);
        let above = gaps.iter().filter(|g| **g > 0.1).count() as f64 / gaps.len() as f64;
        assert!((above - (-1.0f64).exp()).abs() < 0.01, "tail {above}");
        assert!(gaps.iter().all(|g| g.is_finite() && *g >= 0.0));
    }

    #[test]
    fn poisson_is_reproducible_and_increasing() {
        let a: Vec<_> = PoissonArrivals::new(3.0, 11).take(50).collect();
        let b: Vec<_> = PoissonArrivals::new(3.0, 11).take(50).collect();
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a.iter().all(|x| x.lengths.is_none()));
    }

    fn row(t_ms: i64, p: u32, o: u32) -> TraceRow {
        TraceRow {
            timestamp_us: 5_000_000 + t_ms * 1000,
            prompt_tokens: p,
            output_tokens: o,
        }
    }

    #[test]
    fn trace_schedule_scales_offsets_and_limits() {
        let rows = [
            row(0, 1, 2),
            row(1000, 3, 4),
            row(3000, 5, 6),
            row(7000, 7, 8),
        ];
        let plain = trace_schedule(&rows, Duration::ZERO, None, 1.0);
        let at: Vec<f64> = plain.iter().map(|a| a.at.as_secs_f64()).collect();
        assert_eq!(at, [0.0, 1.0, 3.0, 7.0]);
        assert_eq!(plain[1].lengths, Some((3, 4)));

        let fast = trace_schedule(&rows, Duration::ZERO, None, 10.0);
        assert_eq!(fast[3].at, Duration::from_millis(700));

        let shifted = trace_schedule(&rows, Duration::from_millis(500), Some(2), 2.0);
        assert_eq!(shifted.len(), 2);
        assert_eq!(
            shifted[0],
            Arrival {
                at: Duration::ZERO,
                lengths: Some((3, 4))
            }
        );
        assert_eq!(shifted[1].at, Duration::from_secs(1));

        assert!(trace_schedule(&rows, Duration::from_secs(60), None, 1.0).is_empty());
        assert!(trace_schedule(&[], Duration::ZERO, None, 1.0).is_empty());
    }
}
