//! The steps of [`Autoscaler::decide`]: the load-based recommendation, burst mode,
//! custom rules, the predictive floor, the stabilisation windows and velocity limits.

use std::time::Duration;

use super::*;
use crate::predictive::{self, ForecastMethod, PredictiveMode};

impl Autoscaler {
    /// Each usable target's recommendation (with the tolerance band, and queue signals
    /// capped at the capacity while replicas start); the highest wins (the first in
    /// `Signal::ALL` on ties); SLO mode's recommendation wins only when higher. With a
    /// capacity model and `auto` load targets, the concurrent-requests target is the
    /// capacity model's.
    pub(super) fn recommend_from_load(
        &self,
        averages: &LoadAverages,
        current: ReplicaCounts,
        tolerance: f64,
        window: Duration,
    ) -> LoadRecommendation {
        let capacity = current.capacity();
        let advice = self
            .capacity
            .as_ref()
            .map(|planner| planner.advise(&self.policy, averages));
        let auto_target = advice
            .as_ref()
            .filter(|_| self.policy.load_targets.auto)
            .map(|advice| advice.concurrent_requests_target);
        let mut targets = Vec::new();
        let mut best: Option<(usize, String)> = None;
        let mut highest_need = 0f64;
        for signal in Signal::ALL {
            let target = match (signal, auto_target) {
                (Signal::ConcurrentRequests, Some(auto)) => Some(auto),
                _ => self.policy.load_targets.get(signal),
            };
            let Some(target) = target else {
                continue;
            };
            if !(target.is_finite() && target > 0.0) {
                continue;
            }
            let value = averages.get(signal);
            let (need, how) = match signal {
                Signal::QueueDelaySeconds => (
                    f64::from(current.ready) * value / target,
                    format!("/ target {} × {} ready", format_number(target), current.ready),
                ),
                Signal::KvCacheUtilization => (
                    averages.kv_cache_replicas_in_use / target,
                    format!(
                        "({} replicas' worth) / target {}",
                        format_number(averages.kv_cache_replicas_in_use),
                        format_number(target)
                    ),
                ),
                _ => (value / target, format!("/ target {} per replica", format_number(target))),
            };
            let how = match (&advice, auto_target, signal) {
                (Some(advice), Some(_), Signal::ConcurrentRequests) => {
                    format!("{how} ({})", advice.concurrent_requests_detail)
                }
                _ => how,
            };
            let need = if need.is_nan() { 0.0 } else { need };
            highest_need = highest_need.max(need);
            let within_tolerance = capacity > 0
                && need > 0.0
                && (need / f64::from(capacity) - 1.0).abs() <= tolerance;
            let mut replicas = if within_tolerance {
                capacity
            } else {
                replicas_for(need, 1.0)
            };
            let held = current.starting > 0 && signal.is_queue_signal() && replicas > capacity;
            if held {
                replicas = capacity;
            }
            let mut detail = format!(
                "{} {} {} over {} {how} -> {replicas}",
                signal.key(),
                format_number(value),
                if signal.is_rate() { "per second" } else { "avg" },
                format_duration(window),
            );
            if within_tolerance {
                detail.push_str(&format!(
                    " (within tolerance {}% of {capacity})",
                    format_number(tolerance * 100.0)
                ));
            }
            if held {
                detail.push_str(&format!(
                    " (held at {capacity} while {} replicas start)",
                    current.starting
                ));
            }

            if best
                .as_ref()
                .is_none_or(|(index, _)| replicas > targets_replicas(&targets, *index))
            {
                best = Some((targets.len(), detail));
            }
            targets.push(TargetRecommendation {
                signal,
                value,
                target,
                need,
                replicas,
                within_tolerance,
                held_by_scale_in_progress: held,
            });
        }
        let configured = best.is_some();
        let load = match best {
            Some((index, detail)) => LoadRecommendation {
                replicas: targets[index].replicas,
                winner: Some(targets[index].signal),
                slo: false,
                detail,
                need: highest_need,
                targets,
            },
            None => LoadRecommendation {
                replicas: capacity,
                winner: None,
                slo: false,
                detail: format!("no load targets configured -> keeping {capacity}"),
                need: f64::from(capacity),
                targets,
            },
        };
        match advice.and_then(|advice| advice.slo) {
            Some((replicas, detail)) if !configured || replicas > load.replicas => {
                LoadRecommendation {
                    replicas,
                    winner: None,
                    slo: true,
                    detail,
                    need: if configured {
                        load.need.max(f64::from(replicas))
                    } else {
                        f64::from(replicas)
                    },
                    targets: load.targets,
                }
            }
            _ => load,
        }
    }

    /// Burst mode: the panic window's recommendation against the capacity.
    pub(super) fn evaluate_panic(
        &mut self,
        now: Duration,
        current: ReplicaCounts,
        stable: &LoadRecommendation,
    ) -> Option<PanicEffect> {
        let threshold = self.policy.panic_threshold?;
        let window = self.policy.panic_window.min(self.policy.metrics_window);
        let averages = self.averages_over(now, window);
        let short = self.recommend_from_load(&averages, current, 0.0, window);
        let recommendation = if stable.winner.is_some() || stable.slo {
            short.replicas
        } else {
            0
        };
        let capacity = current.capacity();
        let threshold_replicas = threshold * f64::from(capacity);
        if capacity > 0 && f64::from(recommendation) >= threshold_replicas {
            self.panic.last_exceeded = Some(now);
            self.panic.since.get_or_insert(now);
        }
        // Like Knative: the panic lasts until a whole stable window passed without the
        // threshold, so the stable average no longer lags the burst when it ends.
        let stable_window = self.policy.metrics_window.max(window);
        let active = self
            .panic
            .last_exceeded
            .is_some_and(|last| now >= last && now - last < stable_window);
        if !active {
            self.panic = PanicState::default();
        }
        Some(PanicEffect {
            active,
            recommendation,
            threshold_replicas,
            since_seconds: self.panic.since.map(|since| since.as_secs_f64()),
        })
    }

    /// The rules that fire now, with their recommendations.
    pub(super) fn fired_rules(&self, now: Duration, capacity: u32, in_progress: bool) -> Vec<(RuleFired, RuleAction)> {
        let mut fired = Vec::new();
        for (index, (rule, state)) in self.policy.rules.iter().zip(&self.rule_states).enumerate() {
            let (Some(action), Some(since), Some(value)) =
                (rule.action(), state.holding_since, state.latest_value)
            else {
                continue;
            };
            let start = if action.is_relative() {
                since.max(self.last_scale_at.unwrap_or(Duration::ZERO))
            } else {
                since
            };
            if now < start || now - start < rule.hold_for {
                continue;
            }
            let mut replicas = action.replicas(capacity);
            let held = in_progress
                && rule.signal.is_queue_signal()
                && !matches!(action, RuleAction::SetMin(_))
                && replicas > capacity;
            if held {
                replicas = capacity;
            }
            fired.push((RuleFired {
                name: rule.display_name(index),
                signal: rule.signal,
                value,
                condition: rule.condition(),
                held_seconds: (now - start).as_secs_f64(),
                action: action.to_string(),
                replicas,
                held_by_scale_in_progress: held,
            }, action));
        }
        fired
    }

    /// The predictive floor: feeds the demand history, then forecasts.
    pub(super) fn evaluate_predictive(&mut self, now: Duration, need: f64) -> Option<PredictiveEffect> {
        let policy = &self.policy.predictive;
        if policy.mode == PredictiveMode::Off {
            return None;
        }
        let look_ahead = policy.look_ahead(self.expected_cold_start);
        let keep = match policy.method {
            ForecastMethod::Seasonal => policy.season.saturating_add(look_ahead),
            ForecastMethod::Trend => Duration::from_secs(60),
        };
        self.demand.observe(now, need, policy, keep);
        let forecast = self.demand.forecast(now, look_ahead, policy);
        Some(PredictiveEffect {
            mode: policy.mode,
            method: policy.method,
            look_ahead_seconds: look_ahead.as_secs_f64(),
            forecast,
            floor: forecast.map(predictive::floor_of),
            raised: false,
        })
    }

    pub(super) fn remember_recommendation(&mut self, now: Duration, replicas: u32) {
        if let Some(last) = self.recommendations.back_mut() {
            if last.replicas == replicas && now >= last.last_at {
                last.last_at = now;
                return;
            }
        }
        self.recommendations.push_back(RecommendationRun {
            last_at: now,
            replicas,
        });
    }

    pub(super) fn forget_old_recommendations(&mut self, now: Duration) {
        let keep = self
            .policy
            .scale_up_window
            .max(self.policy.scale_down_window);
        while let Some(oldest) = self.recommendations.front() {
            if oldest.last_at <= now && now - oldest.last_at > keep {
                self.recommendations.pop_front();
            } else {
                break;
            }
        }
    }

    pub(super) fn forget_old_scale_events(&mut self, now: Duration) {
        let keep = self
            .policy
            .velocity
            .scale_up
            .period
            .max(self.policy.velocity.scale_down.period);
        while let Some(oldest) = self.scale_events.front() {
            if oldest.at <= now && now - oldest.at >= keep {
                self.scale_events.pop_front();
            } else {
                break;
            }
        }
    }

    /// HPA-style stabilisation: the lowest recommendation of the up-window bounds a
    /// scale-up, the highest of the down-window bounds a scale-down.
    pub(super) fn stabilize(&self, now: Duration, current_replicas: u32, latest: u32) -> u32 {
        let up_window = self.policy.scale_up_window;
        let down_window = self.policy.scale_down_window;
        let mut lowest_in_up_window = latest;
        let mut highest_in_down_window = latest;
        for run in &self.recommendations {
            let age = now.saturating_sub(run.last_at);
            if age <= up_window {
                lowest_in_up_window = lowest_in_up_window.min(run.replicas);
            }
            if age <= down_window {
                highest_in_down_window = highest_in_down_window.max(run.replicas);
            }
        }
        // The part of a window before the first decision counts as "keep the current count".
        let deciding_for = self
            .first_decision_at
            .map_or(Duration::ZERO, |first| now.saturating_sub(first));
        if deciding_for < up_window {
            lowest_in_up_window = lowest_in_up_window.min(current_replicas);
        }
        if deciding_for < down_window {
            highest_in_down_window = highest_in_down_window.max(current_replicas);
        }
        current_replicas
            .max(lowest_in_up_window)
            .min(highest_in_down_window)
    }

    /// How long there has been no activity, when that is long enough to scale to zero
    /// (only with an effective `min_replicas` of 0).
    pub(super) fn idle_for(&self, now: Duration, min_replicas: u32) -> Option<Duration> {
        if min_replicas != 0 {
            return None;
        }
        if self.latest_sample.is_some_and(|latest| latest.is_active()) {
            return None;
        }
        let since = self.last_activity_at.or(self.observed_since)?;
        let idle_for = now.saturating_sub(since);
        (idle_for >= self.policy.scale_to_zero_window).then_some(idle_for)
    }

    /// Replicas added (`up`) or removed within the last `period`.
    pub(super) fn changed_within(&self, now: Duration, period: Duration, up: bool) -> u64 {
        self.scale_events
            .iter()
            .filter(|event| event.at > now || now - event.at < period)
            .map(|event| {
                if up {
                    u64::from(event.to.saturating_sub(event.from))
                } else {
                    u64::from(event.from.saturating_sub(event.to))
                }
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Cuts the change from `current` to `wanted` to what the velocity limits allow;
    /// returns the count and, when cut, a note for the detail.
    pub(super) fn limit_velocity(&self, now: Duration, current: u32, wanted: u32) -> (u32, Option<String>) {
        let current_wide = u64::from(current);
        if wanted > current {
            let limit = &self.policy.velocity.scale_up;
            let added = self.changed_within(now, limit.period, true);
            let Some(allowance) = limit.allowance(current_wide.saturating_sub(added)) else {
                return (wanted, None);
            };
            let mut remaining = allowance.saturating_sub(added);
            if current == 0 {
                remaining = remaining.max(1);
            }
            let ceiling = u32::try_from(current_wide.saturating_add(remaining)).unwrap_or(u32::MAX);
            if wanted > ceiling {
                return (
                    ceiling,
                    Some(format!(
                        "; limited by velocity to {ceiling} (scale_up allows {allowance} per {}, {added} added in it)",
                        format_duration(limit.period)
                    )),
                );
            }
            (wanted, None)
        } else if wanted < current {
            if wanted == 0 && current == 1 {
                return (0, None);
            }
            let limit = &self.policy.velocity.scale_down;
            let removed = self.changed_within(now, limit.period, false);
            let Some(allowance) = limit.allowance(current_wide.saturating_add(removed)) else {
                return (wanted, None);
            };
            let remaining = allowance.saturating_sub(removed);
            let floor = u32::try_from(current_wide.saturating_sub(remaining)).unwrap_or(0);
            if wanted < floor {
                return (
                    floor,
                    Some(format!(
                        "; limited by velocity to {floor} (scale_down allows {allowance} per {}, {removed} removed in it)",
                        format_duration(limit.period)
                    )),
                );
            }
            (wanted, None)
        } else {
            (wanted, None)
        }
    }
}

fn targets_replicas(targets: &[TargetRecommendation], index: usize) -> u32 {
    targets.get(index).map_or(0, |target| target.replicas)
}
