//! The predictive floor: start replicas before the load arrives, from the deployment's
//! own recent history, so the load meets warm capacity instead of a cold start.
//!
//! - **History.** Every decision feeds the *load need*: the highest `signal / target`
//!   of the configured load targets over the metrics window (in replicas, unrounded,
//!   before tolerance, windows, rules or clamps). The history keeps one value per
//!   minute (the minute's highest need), as long as the forecast needs (a season plus
//!   the look-ahead); a week at one value per minute is about 10,000 numbers.
//! - **Look-ahead** = the replica's expected cold start (given by the caller, e.g. the
//!   engine's `expected_cold_start`) + `margin`, unless `look_ahead` is set.
//! - **Forecast**, `method = "seasonal"` (default): the highest need recorded one
//!   `season` ago (default 1 day; `7d` for "same time last week") over the minutes from
//!   now to now + look-ahead. No forecast until a season of history exists there.
//!   `method = "trend"`: Holt's linear trend over the per-minute history (level
//!   smoothing α, trend smoothing β), extrapolated to now + look-ahead.
//! - **Floor** = ceil(forecast). With `mode = "on"` the desired count is at least the
//!   floor: it can only raise the count, never lower it, and it applies at once (no
//!   scale-up window: starting early is its purpose), within `max_replicas` and the
//!   velocity limits, and it keeps the deployment from idling to zero. With `mode =
//!   "preview"` it is computed and reported in every decision but never acts. Off (the
//!   default): nothing is computed.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::numbers::{ceil_to_u32, format_duration};

/// The longest `season` that validates (a week).
pub const MAX_SEASON: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// The longest look-ahead (or margin) that validates.
pub const MAX_LOOK_AHEAD: Duration = Duration::from_secs(60 * 60);

const MINUTE: u64 = 60;

/// `[autoscaling.predictive]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredictivePolicy {
    /// `off` (default), `preview` (report only) or `on`.
    pub mode: PredictiveMode,
    /// `seasonal` (default) or `trend`.
    pub method: ForecastMethod,
    /// The seasonal period, default 1 day.
    #[serde(with = "humantime_serde")]
    pub season: Duration,
    /// Added to the expected cold start to give the look-ahead, default 30s.
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
    /// Overrides the look-ahead (cold start + margin).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub look_ahead: Option<Duration>,
    /// Holt's α for `trend`, default 0.5.
    pub level_smoothing: f64,
    /// Holt's β for `trend`, default 0.3.
    pub trend_smoothing: f64,
}

impl Default for PredictivePolicy {
    fn default() -> Self {
        Self {
            mode: PredictiveMode::Off,
            method: ForecastMethod::Seasonal,
            season: Duration::from_secs(24 * 60 * 60),
            margin: Duration::from_secs(30),
            look_ahead: None,
            level_smoothing: 0.5,
            trend_smoothing: 0.3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictiveMode {
    Off,
    Preview,
    On,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForecastMethod {
    Seasonal,
    Trend,
}

impl fmt::Display for ForecastMethod {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            ForecastMethod::Seasonal => "seasonal",
            ForecastMethod::Trend => "trend",
        })
    }
}

impl PredictivePolicy {
    /// The look-ahead for a replica whose cold start is `expected_cold_start`.
    pub fn look_ahead(&self, expected_cold_start: Duration) -> Duration {
        self.look_ahead
            .unwrap_or_else(|| expected_cold_start.saturating_add(self.margin))
    }

    /// Checks the settings (also when off, so a later switch to on cannot fail).
    pub fn validate(&self) -> Result<(), String> {
        if self.season < Duration::from_secs(MINUTE) || self.season > MAX_SEASON {
            return Err(format!(
                "autoscaling.predictive.season ({}) must be between 1m and {}",
                format_duration(self.season),
                format_duration(MAX_SEASON)
            ));
        }
        if self.margin > MAX_LOOK_AHEAD {
            return Err(format!(
                "autoscaling.predictive.margin ({}) must be at most {}",
                format_duration(self.margin),
                format_duration(MAX_LOOK_AHEAD)
            ));
        }
        if let Some(look_ahead) = self.look_ahead {
            if look_ahead > MAX_LOOK_AHEAD {
                return Err(format!(
                    "autoscaling.predictive.look_ahead ({}) must be at most {}",
                    format_duration(look_ahead),
                    format_duration(MAX_LOOK_AHEAD)
                ));
            }
        }
        for (key, value) in [
            ("level_smoothing", self.level_smoothing),
            ("trend_smoothing", self.trend_smoothing),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                return Err(format!(
                    "autoscaling.predictive.{key} ({value}) must be greater than 0 and at most 1"
                ));
            }
        }
        Ok(())
    }
}

/// What the predictive floor did in one decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictiveEffect {
    pub mode: PredictiveMode,
    pub method: ForecastMethod,
    pub look_ahead_seconds: f64,
    /// The forecast need, in replicas (unrounded); `None` without enough history.
    pub forecast: Option<f64>,
    /// ceil(forecast).
    pub floor: Option<u32>,
    /// Whether the floor raised the count (never in preview).
    pub raised: bool,
}

/// Per-minute history of the load need, and Holt's state.
#[derive(Debug, Clone, Default)]
pub(crate) struct DemandHistory {
    /// The minute being filled: (minute index, highest need so far).
    current: Option<(u64, f64)>,
    /// Completed minutes, oldest first.
    minutes: VecDeque<(u64, f32)>,
    /// Holt's level and trend, per minute, after the last completed minute.
    holt: Option<(f64, f64)>,
}

impl DemandHistory {
    /// Records the need seen at `now`.
    pub fn observe(&mut self, now: Duration, need: f64, policy: &PredictivePolicy, keep: Duration) {
        let need = if need.is_finite() { need.max(0.0) } else { 0.0 };
        let minute = now.as_secs() / MINUTE;
        match self.current {
            Some((current, highest)) if current == minute => {
                self.current = Some((current, highest.max(need)));
            }
            Some((current, _)) if minute < current => {} // out of order: ignore
            previous => {
                if let Some((done, highest)) = previous {
                    self.complete(done, highest, policy);
                }
                self.current = Some((minute, need));
            }
        }
        let keep_minutes = keep.as_secs() / MINUTE + 2;
        while self
            .minutes
            .front()
            .is_some_and(|(oldest, _)| minute.saturating_sub(*oldest) > keep_minutes)
        {
            self.minutes.pop_front();
        }
    }

    fn complete(&mut self, minute: u64, need: f64, policy: &PredictivePolicy) {
        self.minutes.push_back((minute, need as f32));
        let (alpha, beta) = (policy.level_smoothing, policy.trend_smoothing);
        self.holt = Some(match self.holt {
            None => (need, 0.0),
            Some((level, trend)) => {
                let new_level = alpha * need + (1.0 - alpha) * (level + trend);
                let new_trend = beta * (new_level - level) + (1.0 - beta) * trend;
                (new_level, new_trend)
            }
        });
    }

    /// The forecast need over `[now, now + look_ahead]`.
    pub fn forecast(&self, now: Duration, look_ahead: Duration, policy: &PredictivePolicy) -> Option<f64> {
        match policy.method {
            ForecastMethod::Seasonal => {
                let from = now.checked_sub(policy.season)?.as_secs() / MINUTE;
                let to = now.saturating_add(look_ahead).checked_sub(policy.season)?.as_secs() / MINUTE;
                let mut highest: Option<f64> = None;
                let current = self.current.map(|(minute, need)| (minute, need as f32));
                for (minute, need) in self.minutes.iter().copied().chain(current) {
                    if minute >= from && minute <= to {
                        highest = Some(highest.map_or(f64::from(need), |h| h.max(f64::from(need))));
                    }
                }
                highest
            }
            ForecastMethod::Trend => {
                let (level, trend) = self.holt?;
                let (last, _) = *self.minutes.back()?;
                let target = now.saturating_add(look_ahead).as_secs() / MINUTE;
                let steps = target.saturating_sub(last) as f64;
                Some((level + trend * steps).max(0.0))
            }
        }
    }

    /// Completed minutes kept (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.minutes.len()
    }
}

/// ceil(forecast), for the floor.
pub(crate) fn floor_of(forecast: f64) -> u32 {
    ceil_to_u32(forecast)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minutes(value: u64) -> Duration {
        Duration::from_secs(value * 60)
    }

    #[test]
    fn parses_with_defaults_and_validates() {
        let policy: PredictivePolicy = toml::from_str("mode = \"preview\"").unwrap();
        assert_eq!(policy.mode, PredictiveMode::Preview);
        assert_eq!(policy.method, ForecastMethod::Seasonal);
        assert_eq!(policy.season, Duration::from_secs(86_400));
        assert_eq!(policy.look_ahead(Duration::from_secs(90)), Duration::from_secs(120));
        assert_eq!(policy.validate(), Ok(()));
        let policy: PredictivePolicy =
            toml::from_str("mode = \"on\"\nmethod = \"trend\"\nlook_ahead = \"5m\"\nseason = \"7d\"").unwrap();
        assert_eq!(policy.look_ahead(Duration::from_secs(90)), minutes(5));
        assert_eq!(policy.validate(), Ok(()));
        let json = serde_json::to_value(&policy).unwrap();
        assert_eq!(json["look_ahead"], "5m");
        assert_eq!(json["mode"], "on");

        let error = toml::from_str::<PredictivePolicy>("mode = \"maybe\"").unwrap_err().to_string();
        assert!(error.contains("maybe"), "{error}");
        let error = toml::from_str::<PredictivePolicy>("horizon = \"1h\"").unwrap_err().to_string();
        assert!(error.contains("horizon"), "{error}");
        let check = |change: &dyn Fn(&mut PredictivePolicy)| {
            let mut policy = PredictivePolicy::default();
            change(&mut policy);
            policy.validate().unwrap_err()
        };
        assert_eq!(
            check(&|p| p.season = Duration::from_secs(8 * 86_400)),
            "autoscaling.predictive.season (192h) must be between 1m and 168h"
        );
        assert_eq!(
            check(&|p| p.look_ahead = Some(Duration::from_secs(7200))),
            "autoscaling.predictive.look_ahead (2h) must be at most 1h"
        );
        assert_eq!(
            check(&|p| p.trend_smoothing = 0.0),
            "autoscaling.predictive.trend_smoothing (0) must be greater than 0 and at most 1"
        );
        assert_eq!(
            check(&|p| p.margin = Duration::from_secs(7200)),
            "autoscaling.predictive.margin (2h) must be at most 1h"
        );
    }

    #[test]
    fn seasonal_forecast_is_the_highest_need_one_season_ago_over_the_look_ahead() {
        let policy = PredictivePolicy { season: minutes(60), ..PredictivePolicy::default() };
        let mut history = DemandHistory::default();
        // Minute m has need m % 7, sampled every 10 s.
        for second in (0..2 * 3600).step_by(10) {
            let minute = second / 60;
            history.observe(Duration::from_secs(second), (minute % 7) as f64, &policy, minutes(70));
        }
        // Not a full season of history yet at t = 30 min.
        let mut young = DemandHistory::default();
        young.observe(minutes(30), 3.0, &policy, minutes(70));
        assert_eq!(young.forecast(minutes(30), minutes(2), &policy), None);
        // At t = 110 min, look-ahead 2 min: minutes 50..=52 an hour ago: needs 1, 2, 3.
        assert_eq!(history.forecast(minutes(110), minutes(2), &policy), Some(3.0));
        // Only as much history as the season and look-ahead need.
        assert!(history.len() <= 73, "{}", history.len());
        assert_eq!(floor_of(2.2), 3);
    }

    #[test]
    fn trend_forecast_extrapolates_a_ramp() {
        let policy = PredictivePolicy { method: ForecastMethod::Trend, ..PredictivePolicy::default() };
        let mut history = DemandHistory::default();
        assert_eq!(history.forecast(minutes(1), minutes(2), &policy), None);
        // The need rises by 1 replica per minute.
        for second in 0..=(30 * 60) {
            history.observe(Duration::from_secs(second), second as f64 / 60.0, &policy, minutes(5));
        }
        // Minute 29 completed with need ~29.98; 2 minutes ahead of t = 30 min is minute 32.
        let forecast = history.forecast(minutes(30), minutes(2), &policy).unwrap();
        assert!((forecast - 33.0).abs() < 1.0, "{forecast}");
        // A falling need never forecasts below zero.
        let mut falling = DemandHistory::default();
        for second in 0..=(10 * 60) {
            falling.observe(Duration::from_secs(second), (600 - second) as f64 / 60.0, &policy, minutes(5));
        }
        let forecast = falling.forecast(minutes(10), minutes(30), &policy).unwrap();
        assert_eq!(forecast, 0.0);
    }
}
