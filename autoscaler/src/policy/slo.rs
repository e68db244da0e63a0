//! SLO mode's configuration: latency targets, or off, or `auto`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};


/// SLO mode's latency targets: `slo = { ttft_seconds = 2, inter_token_seconds = 0.1 }`.
/// Keys left out take their defaults; unknown keys are errors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloTargets {
    /// Time to first token, seconds, default 2.
    pub ttft_seconds: f64,
    /// Mean time between tokens of a request, seconds, default 0.1.
    pub inter_token_seconds: f64,
    /// The share of requests (percent) that should meet the targets, default 99.
    pub percentile: f64,
    /// The share of a replica's SLO-meeting throughput SLO mode plans to use; the rest
    /// absorbs load that grows while new replicas start. Default (left out):
    /// `1 - min(cold start / 100 s, 0.15)`, see [`SloTargets::utilization_for`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
}

impl Default for SloTargets {
    fn default() -> Self {
        Self {
            ttft_seconds: 2.0,
            inter_token_seconds: 0.1,
            percentile: 99.0,
            utilization: None,
        }
    }
}

impl SloTargets {
    /// Checks the targets; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("ttft_seconds", self.ttft_seconds),
            ("inter_token_seconds", self.inter_token_seconds),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!(
                    "autoscaling.slo.{key} ({value}) must be a finite number greater than 0"
                ));
            }
        }
        if !(self.percentile > 0.0 && self.percentile < 100.0) {
            return Err(format!(
                "autoscaling.slo.percentile ({}) must be greater than 0 and less than 100",
                self.percentile
            ));
        }
        if let Some(utilization) = self.utilization {
            if !(utilization > 0.0 && utilization <= 1.0) {
                return Err(format!(
                    "autoscaling.slo.utilization ({utilization}) must be greater than 0 and at most 1"
                ));
            }
        }
        Ok(())
    }

    /// The utilization SLO mode plans for a replica that takes `cold_start` to start: the
    /// configured one, else `1 - min(cold_start / 100 s, 0.15)`. Capacity asked for now
    /// arrives a cold start later, so the longer the start, the more of the load's
    /// growth the replicas already running must absorb: 1% of headroom per second of
    /// cold start, at most 15% (a 0.12 s CPU start plans 99.9%, every GPU start of 15 s
    /// or more 85%; tuned in the simulator, docs/simulator.md).
    pub fn utilization_for(&self, cold_start: Duration) -> f64 {
        match self.utilization {
            Some(utilization) if utilization > 0.0 && utilization <= 1.0 => utilization,
            _ => 1.0 - (cold_start.as_secs_f64() / 100.0).min(0.15),
        }
    }
}

/// SLO mode's setting: `slo = "auto"` (the default, also when left out), `false`
/// (TOML) / `null` (JSON) for off, or a table of targets.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SloMode {
    /// On with the default targets when the load targets are `auto` (the default
    /// policy); off when the policy writes its own load targets, so a written table is
    /// used as written.
    #[default]
    Auto,
    /// Off.
    Off,
    /// On, with these targets, beside any load targets.
    On(SloTargets),
}

impl SloMode {
    /// The targets SLO mode works to, if it is on; `auto_load_targets` says whether the
    /// policy's load targets are `auto`.
    pub fn targets(&self, auto_load_targets: bool) -> Option<SloTargets> {
        match self {
            SloMode::Auto if auto_load_targets => Some(SloTargets::default()),
            SloMode::Auto | SloMode::Off => None,
            SloMode::On(targets) => Some(*targets),
        }
    }
}

impl Serialize for SloMode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SloMode::Auto => serializer.serialize_str("auto"),
            SloMode::Off => serializer.serialize_bool(false),
            SloMode::On(targets) => targets.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for SloMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Visitor};

        struct SloOrOff;

        impl<'de> Visitor<'de> for SloOrOff {
            type Value = SloMode;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(
                    "\"auto\", a table like { ttft_seconds = 2, inter_token_seconds = 0.1 }, or false for off",
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                if value == "auto" {
                    Ok(SloMode::Auto)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(value), &self))
                }
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
                if value {
                    Err(E::invalid_value(de::Unexpected::Bool(true), &self))
                } else {
                    Ok(SloMode::Off)
                }
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(SloMode::Off)
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(SloMode::Off)
            }

            fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
                deserializer.deserialize_any(SloOrOff)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                SloTargets::deserialize(de::value::MapAccessDeserializer::new(map)).map(SloMode::On)
            }
        }

        deserializer.deserialize_any(SloOrOff)
    }
}
