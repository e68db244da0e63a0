//! Custom rules: threshold rules on any [`Signal`], evaluated beside the load targets.
//!
//! ```toml
//! [[autoscaling.rules]]
//! name = "slow-queue"
//! signal = "queue_delay_seconds"
//! above = 2.0
//! for = "30s"
//! add = 2
//! ```
//!
//! - **Condition.** `above = x` holds while the signal's per-sample value is greater
//!   than `x`; `below = x` while it is less than `x` (exactly one of them). A rule
//!   *fires* once its condition held in every sample for `for` (default 0s: the latest
//!   sample alone). A sample that does not hold restarts the clock; a sample that cannot
//!   tell (KV use with no ready replica) does not hold.
//! - **Action** (exactly one): `add = n` recommends capacity + n; `remove = n` capacity
//!   − n; `multiply = f` ceil(capacity × f); `set = n` recommends n; `set_min = n`
//!   raises the effective `min_replicas` to n while the rule fires. Capacity is ready +
//!   starting replicas.
//! - **Highest wins.** A firing rule's recommendation competes with the load targets'
//!   (after their stabilisation windows: a rule's `for` is its own window), and the
//!   highest count wins; `remove` therefore only matters where it is still above what
//!   the targets want. Every rule that fired is named in the decision, with its value.
//! - **Relative actions act once per `for`.** After the replica count changes, the
//!   condition of an `add`, `remove` or `multiply` rule must hold for `for` again before
//!   it fires again (a cooldown), so a rule does not compound on every decision while
//!   the new replicas start.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::signals::Signal;
use crate::numbers::{ceil_to_u32, format_duration, format_number};

/// The longest `for` that validates.
pub const MAX_RULE_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// One custom rule: `[[autoscaling.rules]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRule {
    /// Shown in decisions and metrics; default `rule-N` (1-based position in the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub signal: Signal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// How long the condition must hold, default 0s.
    #[serde(rename = "for", default, with = "humantime_serde")]
    pub hold_for: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiply: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_min: Option<u32>,
}

/// What a firing rule does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RuleAction {
    Add(u32),
    Remove(u32),
    Multiply(f64),
    Set(u32),
    SetMin(u32),
}

impl RuleAction {
    /// The replicas this action recommends at `capacity`.
    pub fn replicas(self, capacity: u32) -> u32 {
        match self {
            RuleAction::Add(count) => capacity.saturating_add(count),
            RuleAction::Remove(count) => capacity.saturating_sub(count),
            RuleAction::Multiply(factor) => ceil_to_u32(f64::from(capacity) * factor),
            RuleAction::Set(count) | RuleAction::SetMin(count) => count,
        }
    }

    /// Relative to the current count (acts once per `for`).
    pub fn is_relative(self) -> bool {
        matches!(self, RuleAction::Add(_) | RuleAction::Remove(_) | RuleAction::Multiply(_))
    }
}

impl fmt::Display for RuleAction {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleAction::Add(count) => write!(formatter, "add {count}"),
            RuleAction::Remove(count) => write!(formatter, "remove {count}"),
            RuleAction::Multiply(factor) => write!(formatter, "multiply {}", format_number(*factor)),
            RuleAction::Set(count) => write!(formatter, "set {count}"),
            RuleAction::SetMin(count) => write!(formatter, "set_min {count}"),
        }
    }
}

impl CustomRule {
    /// The name decisions and metrics show.
    pub fn display_name(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("rule-{}", index + 1))
    }

    /// The action; `None` unless exactly one is set (which `validate` requires).
    pub fn action(&self) -> Option<RuleAction> {
        let actions = [
            self.add.map(RuleAction::Add),
            self.remove.map(RuleAction::Remove),
            self.multiply.map(RuleAction::Multiply),
            self.set.map(RuleAction::Set),
            self.set_min.map(RuleAction::SetMin),
        ];
        let mut set = actions.into_iter().flatten();
        let first = set.next();
        if set.next().is_some() {
            None
        } else {
            first
        }
    }

    /// Whether `value` meets the condition.
    pub fn holds(&self, value: f64) -> bool {
        match (self.above, self.below) {
            (Some(above), None) => value > above,
            (None, Some(below)) => value < below,
            _ => false,
        }
    }

    /// `above 2` / `below 0.5`, for decisions.
    pub fn condition(&self) -> String {
        match (self.above, self.below) {
            (Some(above), _) => format!("above {}", format_number(above)),
            (_, Some(below)) => format!("below {}", format_number(below)),
            _ => "never".to_string(),
        }
    }

    /// Checks the rule; `key` is e.g. `autoscaling.rules[0]`.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        if let Some(name) = &self.name {
            if name.trim().is_empty() {
                return Err(format!("{key}.name must not be empty"));
            }
        }
        match (self.above, self.below) {
            (Some(_), Some(_)) => return Err(format!("{key} must set only one of above and below")),
            (None, None) => return Err(format!("{key} must set above or below (the threshold)")),
            (Some(threshold), None) | (None, Some(threshold)) => {
                if !threshold.is_finite() {
                    let which = if self.above.is_some() { "above" } else { "below" };
                    return Err(format!("{key}.{which} ({threshold}) must be a finite number"));
                }
            }
        }
        if self.hold_for > MAX_RULE_FOR {
            return Err(format!(
                "{key}.for ({}) must be at most {}",
                format_duration(self.hold_for),
                format_duration(MAX_RULE_FOR)
            ));
        }
        let actions = [
            self.add.is_some(),
            self.remove.is_some(),
            self.multiply.is_some(),
            self.set.is_some(),
            self.set_min.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count();
        if actions != 1 {
            return Err(format!(
                "{key} must set exactly one action: add, remove, multiply, set or set_min ({actions} set)"
            ));
        }
        if self.add == Some(0) {
            return Err(format!("{key}.add (0) must be at least 1"));
        }
        if self.remove == Some(0) {
            return Err(format!("{key}.remove (0) must be at least 1"));
        }
        if let Some(factor) = self.multiply {
            if !(factor.is_finite() && factor > 0.0) {
                return Err(format!("{key}.multiply ({factor}) must be a finite number greater than 0"));
            }
        }
        Ok(())
    }
}

/// A rule's memory: since when its condition has held, sample after sample.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct RuleState {
    pub holding_since: Option<Duration>,
    /// The signal's value in the latest sample.
    pub latest_value: Option<f64>,
}

/// A rule that fired, in a decision record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleFired {
    pub name: String,
    pub signal: Signal,
    /// The signal's value in the latest sample.
    pub value: f64,
    /// `above 2`, `below 0.5`.
    pub condition: String,
    /// How long the condition has held (since the last scale, for relative actions).
    pub held_seconds: f64,
    /// `add 2`, `set_min 3`, ...
    pub action: String,
    /// What it recommends (for `set_min`: the floor).
    pub replicas: u32,
    /// Whether it was held back because replicas are still starting (a queue signal).
    pub held_by_scale_in_progress: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_parses_from_toml_and_json() {
        let rule: CustomRule =
            toml::from_str(r#"signal = "queue_delay_seconds"
above = 2.0
for = "30s"
add = 2"#)
                .unwrap();
        assert_eq!(rule.signal, Signal::QueueDelaySeconds);
        assert_eq!(rule.above, Some(2.0));
        assert_eq!(rule.hold_for, Duration::from_secs(30));
        assert_eq!(rule.action(), Some(RuleAction::Add(2)));
        assert_eq!(rule.validate("r"), Ok(()));
        assert_eq!(rule.display_name(0), "rule-1");
        assert!(rule.holds(2.5) && !rule.holds(2.0));

        let rule: CustomRule = serde_json::from_str(
            r#"{"name": "cool", "signal": "kv_cache_utilization", "below": 0.2, "multiply": 0.5}"#,
        )
        .unwrap();
        assert_eq!(rule.hold_for, Duration::ZERO);
        assert_eq!(rule.action(), Some(RuleAction::Multiply(0.5)));
        assert!(rule.holds(0.1) && !rule.holds(0.2));
        assert_eq!(rule.condition(), "below 0.2");
        let json = serde_json::to_value(&rule).unwrap();
        assert_eq!(json["for"], "0s");
        assert_eq!(json.get("add"), None);
    }

    #[test]
    fn bad_rules_are_errors_naming_the_key() {
        let error = toml::from_str::<CustomRule>("signal = \"latency\"\nabove = 1\nadd = 1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("latency") && error.contains("queue_delay_seconds"), "{error}");
        let error = toml::from_str::<CustomRule>("signal = \"queue_depth\"\nabove = 1\nadd = 1\nfor = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("for"), "{error}");
        let error = toml::from_str::<CustomRule>("signal = \"queue_depth\"\nabove = 1\nscale = 1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("scale"), "{error}");

        let base = CustomRule {
            name: None,
            signal: Signal::QueueDepth,
            above: Some(10.0),
            below: None,
            hold_for: Duration::from_secs(30),
            add: Some(1),
            remove: None,
            multiply: None,
            set: None,
            set_min: None,
        };
        let check = |change: &dyn Fn(&mut CustomRule)| {
            let mut rule = base.clone();
            change(&mut rule);
            rule.validate("autoscaling.rules[1]").unwrap_err()
        };
        assert_eq!(check(&|r| r.below = Some(1.0)), "autoscaling.rules[1] must set only one of above and below");
        assert_eq!(check(&|r| r.above = None), "autoscaling.rules[1] must set above or below (the threshold)");
        assert_eq!(check(&|r| r.above = Some(f64::NAN)), "autoscaling.rules[1].above (NaN) must be a finite number");
        assert_eq!(
            check(&|r| r.set = Some(3)),
            "autoscaling.rules[1] must set exactly one action: add, remove, multiply, set or set_min (2 set)"
        );
        assert_eq!(
            check(&|r| r.add = None),
            "autoscaling.rules[1] must set exactly one action: add, remove, multiply, set or set_min (0 set)"
        );
        assert_eq!(check(&|r| r.add = Some(0)), "autoscaling.rules[1].add (0) must be at least 1");
        assert_eq!(
            check(&|r| {
                r.add = None;
                r.multiply = Some(-1.0);
            }),
            "autoscaling.rules[1].multiply (-1) must be a finite number greater than 0"
        );
        assert_eq!(
            check(&|r| r.hold_for = Duration::from_secs(2 * 24 * 3600)),
            "autoscaling.rules[1].for (48h) must be at most 24h"
        );
        assert_eq!(check(&|r| r.name = Some(String::new())), "autoscaling.rules[1].name must not be empty");
    }

    #[test]
    fn actions_recommend_from_the_capacity() {
        assert_eq!(RuleAction::Add(2).replicas(3), 5);
        assert_eq!(RuleAction::Remove(2).replicas(1), 0);
        assert_eq!(RuleAction::Multiply(1.5).replicas(3), 5);
        assert_eq!(RuleAction::Multiply(1.5).replicas(0), 0);
        assert_eq!(RuleAction::Set(7).replicas(3), 7);
        assert_eq!(RuleAction::SetMin(2).replicas(9), 2);
        assert_eq!(RuleAction::Add(u32::MAX).replicas(5), u32::MAX);
        assert!(RuleAction::Multiply(2.0).is_relative() && !RuleAction::SetMin(1).is_relative());
        assert_eq!(RuleAction::Multiply(1.5).to_string(), "multiply 1.5");
    }
}
