//! Percentiles of samples, one definition for the simulator and the load generator
//! (`swell-loadtest`'s live plots use it too; its report's latency summaries use HDR
//! histograms of whole microseconds instead).
//!
//! The percentile is the **nearest rank**: the `p`-th percentile of `n` values is the
//! smallest value with at least `p` % of the values at or below it, i.e. the value of rank
//! `ceil(p / 100 × n)` (1-based, at least 1) in ascending order. It is always one of the
//! values, never an interpolation; p0 is the smallest, p100 the largest.

/// Values sorted once, for several percentiles of the same samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sorted(Vec<f64>);

impl Sorted {
    /// Sorts `values` ascending (NaN last, by [`f64::total_cmp`]).
    pub fn new(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        Self(v)
    }

    /// The nearest-rank `p`-th percentile (`p` in 0..=100); `None` without values.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let n = self.0.len();
        if n == 0 {
            return None;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        Some(self.0[rank.clamp(1, n) - 1])
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The nearest-rank `p`-th percentile of `values` (in any order); `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    Sorted::new(values.iter().copied()).percentile(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_picks_a_sample() {
        let values = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&values, 20.0), Some(1.0));
        assert_eq!(percentile(&values, 21.0), Some(2.0));
        assert_eq!(percentile(&values, 50.0), Some(3.0));
        assert_eq!(percentile(&values, 99.0), Some(5.0));
        assert_eq!(percentile(&values, 100.0), Some(5.0));
        assert_eq!(percentile(&[], 50.0), None);
        let sorted = Sorted::new(values);
        assert_eq!((sorted.len(), sorted.percentile(80.0)), (5, Some(4.0)));
    }
}
