//! [`RenewalCurve`]: how many jobs one batch slot is expected to finish within a time
//! `x` after it starts a job, when it runs job after job whose service times follow the
//! measured distribution: the renewal function `M(x) = F(x) + ∫ M(x − s) dF(s)` of the
//! empirical distribution `F` of recent service times, solved on a grid. Wait estimates
//! use it for slots that start a job together (a replica that just became ready): their
//! first jobs end as the distribution says (short jobs soon), not all at the mean.
//!
//! Plain arithmetic; built by the supervisor from its window of service times at most
//! once a second, and shared (`Arc`) with every estimate.

/// Grid points of the curve.
const POINTS: usize = 256;
/// The grid spans this many times the longest sample; beyond it the curve grows at the
/// long-run rate `x / mean`.
const SPAN: f64 = 3.0;

/// The renewal function of a service-time distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct RenewalCurve {
    /// Mean service time (seconds).
    mean: f64,
    /// Grid step (seconds).
    step: f64,
    /// `M` at `i × step`.
    renewals: Vec<f64>,
}

impl RenewalCurve {
    /// The curve of the service times `samples` (seconds); `None` without a positive one.
    pub fn from_samples(samples: &[f64]) -> Option<Self> {
        let samples: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite() && *s > 0.0).collect();
        if samples.is_empty() {
            return None;
        }
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        let longest = samples.iter().copied().fold(0.0, f64::max);
        let step = longest * SPAN / (POINTS - 1) as f64;
        // The empirical distribution on the grid: the share of samples within i steps
        // (a sample counts from the grid point at or after it, so no job ends at 0).
        let mut density = vec![0.0; POINTS];
        for sample in &samples {
            let index = ((sample / step).ceil() as usize).clamp(1, POINTS - 1);
            density[index] += 1.0 / samples.len() as f64;
        }
        let mut cumulative = vec![0.0; POINTS];
        let mut sum = 0.0;
        for (i, share) in density.iter().enumerate() {
            sum += share;
            cumulative[i] = sum;
        }
        // M[i] = F[i] + Σ_{j=1..i} f[j] · M[i − j].
        let mut renewals = vec![0.0; POINTS];
        for i in 1..POINTS {
            let mut value = cumulative[i];
            for j in 1..=i {
                if density[j] > 0.0 {
                    value += density[j] * renewals[i - j];
                }
            }
            renewals[i] = value;
        }
        Some(Self { mean, step, renewals })
    }

    /// The mean service time (seconds).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Expected jobs a slot finishes within `x` seconds of starting its first.
    pub fn renewals(&self, x: f64) -> f64 {
        if x <= 0.0 {
            return 0.0;
        }
        let last = self.renewals.len() - 1;
        let position = x / self.step;
        if position >= last as f64 {
            return self.renewals[last] + (x - last as f64 * self.step) / self.mean;
        }
        let index = position.floor() as usize;
        let fraction = position - index as f64;
        self.renewals[index] + fraction * (self.renewals[index + 1] - self.renewals[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64, tolerance: f64) {
        assert!((actual - expected).abs() <= tolerance, "{actual} != {expected} ± {tolerance}");
    }

    #[test]
    fn a_fixed_service_time_ends_one_job_per_service_time() {
        let curve = RenewalCurve::from_samples(&[4.0; 10]).unwrap();
        assert_eq!(curve.mean(), 4.0);
        // (The grid rounds a sample up to its next point, 1.2% of the longest here.)
        close(curve.renewals(3.9), 0.0, 1e-9);
        close(curve.renewals(4.1), 1.0, 1e-9);
        close(curve.renewals(7.9), 1.0, 1e-9);
        close(curve.renewals(8.2), 2.0, 1e-9);
        // Past the grid (3 × 4 s): the long-run rate.
        close(curve.renewals(40.0), 10.0, 0.1);
    }

    #[test]
    fn short_jobs_end_early_and_the_long_run_rate_is_one_over_the_mean() {
        // Half the jobs take 1 s, half 7 s: mean 4 s.
        let curve = RenewalCurve::from_samples(&[1.0, 7.0, 1.0, 7.0]).unwrap();
        close(curve.renewals(1.1), 0.5, 0.01);
        // Two short ones in a row: a quarter of the slots have ended two jobs.
        close(curve.renewals(2.2), 0.75, 0.01);
        close(curve.renewals(0.5), 0.0, 0.01);
        close(curve.renewals(400.0) / 400.0, 0.25, 0.01);
    }

    #[test]
    fn no_positive_sample_has_no_curve() {
        assert_eq!(RenewalCurve::from_samples(&[]), None);
        assert_eq!(RenewalCurve::from_samples(&[0.0]), None);
    }
}
