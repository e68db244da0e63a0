//! Schedules: time-of-day / day-of-week windows, in an IANA time zone, that raise or
//! lower a deployment's `min_replicas` / `max_replicas` while they are active.
//!
//! A schedule is evaluated at a wall-clock instant (Unix milliseconds) that the caller
//! hands to the policy, never read from the system clock, so schedules are tested in
//! virtual time, daylight-saving changes included. Windows are in *civil* (wall) time
//! of the schedule's zone: `start = "08:00"` means 08:00 on the local clock, before and
//! after a DST change alike. A window whose `end` is earlier than its `start` crosses
//! midnight (`22:00`–`06:00`); `days` name the days a window *starts* on. A local time
//! that a DST gap skips simply never occurs; one that a DST fold repeats is inside the
//! window both times.
//!
//! Several active schedules combine per key: the active schedules that set `min_replicas`
//! replace the policy's value with the largest of theirs, and likewise for
//! `max_replicas` (a schedule may raise or lower either). If the result has min above
//! max, max wins (as everywhere in the policy).
//!
//! The time zone database is bundled with the binary (`jiff`'s `tzdb-bundle-always`),
//! so a schedule behaves the same on every machine.

use std::fmt;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One schedule: `[[autoscaling.schedules]]`.
///
/// ```toml
/// [[autoscaling.schedules]]
/// name = "business-hours"
/// time_zone = "Europe/Paris"
/// days = ["mon", "tue", "wed", "thu", "fri"]
/// start = "08:00"
/// end = "19:00"
/// min_replicas = 2
/// max_replicas = 16
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Shown in decisions; default `schedule-N` (1-based position in the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An IANA time zone name, default `UTC`.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// The days a window starts on (`mon`..`sun` or full names); default every day.
    #[serde(default = "Weekday::all")]
    pub days: Vec<Weekday>,
    /// Local start time, `HH:MM` or `HH:MM:SS` (inclusive).
    pub start: TimeOfDay,
    /// Local end time (exclusive); `24:00` is the end of the day. Earlier than `start`:
    /// the window crosses midnight.
    pub end: TimeOfDay,
    /// `min_replicas` while active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<u32>,
    /// `max_replicas` while active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
}

fn default_time_zone() -> String {
    "UTC".to_string()
}

impl Schedule {
    /// The name decisions show.
    pub fn display_name(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("schedule-{}", index + 1))
    }

    /// Checks the schedule; `key` is e.g. `autoscaling.schedules[0]`.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        if let Some(name) = &self.name {
            if name.trim().is_empty() {
                return Err(format!("{key}.name must not be empty"));
            }
        }
        if let Err(error) = TimeZone::get(&self.time_zone) {
            return Err(format!(
                "{key}.time_zone ({:?}) is not a known IANA time zone: {error}",
                self.time_zone
            ));
        }
        if self.days.is_empty() {
            return Err(format!("{key}.days must name at least one day"));
        }
        if self.start.seconds >= SECONDS_PER_DAY {
            return Err(format!("{key}.start ({}) must be before 24:00", self.start));
        }
        if self.start == self.end {
            return Err(format!(
                "{key}.start and {key}.end are both {}: the window would be empty",
                self.start
            ));
        }
        if self.min_replicas.is_none() && self.max_replicas.is_none() {
            return Err(format!(
                "{key} must set min_replicas or max_replicas (or both)"
            ));
        }
        if self.max_replicas == Some(0) {
            return Err(format!("{key}.max_replicas (0) must be at least 1"));
        }
        if let (Some(min), Some(max)) = (self.min_replicas, self.max_replicas) {
            if max < min {
                return Err(format!(
                    "{key}.max_replicas ({max}) must be at least {key}.min_replicas ({min})"
                ));
            }
        }
        Ok(())
    }

    /// Whether the window is active at `unix_ms` in `zone` (the resolved `time_zone`).
    pub fn is_active(&self, zone: &TimeZone, unix_ms: u64) -> bool {
        let Ok(timestamp) = Timestamp::from_millisecond(i64::try_from(unix_ms).unwrap_or(i64::MAX))
        else {
            return false;
        };
        let local = zone.to_datetime(timestamp);
        let day = Weekday::from_jiff(local.weekday());
        let second = u32::try_from(
            i32::from(local.hour()) * 3600 + i32::from(local.minute()) * 60 + i32::from(local.second()),
        )
        .unwrap_or(0);
        let (start, end) = (self.start.seconds, self.end.seconds);
        if start < end {
            self.days.contains(&day) && second >= start && second < end
        } else {
            // Crosses midnight: the evening part on a listed day, or the morning part
            // after a listed day.
            (self.days.contains(&day) && second >= start)
                || (self.days.contains(&day.previous()) && second < end)
        }
    }
}

/// The schedules of a policy with their time zones resolved once.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResolvedSchedules {
    entries: Vec<(Schedule, Option<TimeZone>)>,
}

/// What the active schedules do to the bounds at one instant.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ScheduleBounds {
    /// Names of the active schedules, in list order.
    pub active: Vec<String>,
    pub min_replicas: Option<u32>,
    pub max_replicas: Option<u32>,
}

impl ResolvedSchedules {
    pub fn new(schedules: &[Schedule]) -> Self {
        Self {
            entries: schedules
                .iter()
                .map(|schedule| (schedule.clone(), TimeZone::get(&schedule.time_zone).ok()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The active schedules at `unix_ms` and the bounds they set (a schedule whose time
    /// zone does not resolve, which `validate` refuses, is never active).
    pub fn bounds_at(&self, unix_ms: u64) -> ScheduleBounds {
        let mut bounds = ScheduleBounds::default();
        for (index, (schedule, zone)) in self.entries.iter().enumerate() {
            let Some(zone) = zone else { continue };
            if !schedule.is_active(zone, unix_ms) {
                continue;
            }
            bounds.active.push(schedule.display_name(index));
            if let Some(min) = schedule.min_replicas {
                bounds.min_replicas = Some(bounds.min_replicas.map_or(min, |m| m.max(min)));
            }
            if let Some(max) = schedule.max_replicas {
                bounds.max_replicas = Some(bounds.max_replicas.map_or(max, |m| m.max(max)));
            }
        }
        bounds
    }
}

const SECONDS_PER_DAY: u32 = 24 * 3600;

/// A day of the week; `mon`..`sun` or `monday`..`sunday` in config (any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    #[serde(alias = "monday", alias = "Mon", alias = "Monday")]
    Mon,
    #[serde(alias = "tuesday", alias = "Tue", alias = "Tuesday")]
    Tue,
    #[serde(alias = "wednesday", alias = "Wed", alias = "Wednesday")]
    Wed,
    #[serde(alias = "thursday", alias = "Thu", alias = "Thursday")]
    Thu,
    #[serde(alias = "friday", alias = "Fri", alias = "Friday")]
    Fri,
    #[serde(alias = "saturday", alias = "Sat", alias = "Saturday")]
    Sat,
    #[serde(alias = "sunday", alias = "Sun", alias = "Sunday")]
    Sun,
}

impl Weekday {
    const ORDER: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// Every day, Monday first.
    pub fn all() -> Vec<Weekday> {
        Self::ORDER.to_vec()
    }

    fn from_jiff(day: jiff::civil::Weekday) -> Self {
        Self::ORDER[usize::try_from(day.to_monday_zero_offset()).unwrap_or(0) % 7]
    }

    fn previous(self) -> Self {
        let index = Self::ORDER.iter().position(|day| *day == self).unwrap_or(0);
        Self::ORDER[(index + 6) % 7]
    }
}

/// A local time of day, `HH:MM` or `HH:MM:SS`, from `00:00` to `24:00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay {
    /// Seconds since local midnight, at most 86 400.
    pub seconds: u32,
}

impl TimeOfDay {
    pub fn hm(hour: u32, minute: u32) -> Self {
        Self {
            seconds: hour * 3600 + minute * 60,
        }
    }

    /// Parses `HH:MM` or `HH:MM:SS`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("invalid time of day {text:?}, expected HH:MM or HH:MM:SS (00:00 to 24:00)");
        let parts: Vec<&str> = text.split(':').collect();
        if !(2..=3).contains(&parts.len())
            || parts
                .iter()
                .any(|part| part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad());
        }
        let number = |part: &str| part.parse::<u32>().map_err(|_| bad());
        let hour = number(parts[0])?;
        let minute = number(parts[1])?;
        let second = if parts.len() == 3 { number(parts[2])? } else { 0 };
        if minute > 59 || second > 59 || hour > 24 || (hour == 24 && (minute > 0 || second > 0)) {
            return Err(bad());
        }
        Ok(Self {
            seconds: hour * 3600 + minute * 60 + second,
        })
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (hour, minute, second) = (self.seconds / 3600, self.seconds % 3600 / 60, self.seconds % 60);
        if second == 0 {
            write!(formatter, "{hour:02}:{minute:02}")
        } else {
            write!(formatter, "{hour:02}:{minute:02}:{second:02}")
        }
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimeVisitor;
        impl Visitor<'_> for TimeVisitor {
            type Value = TimeOfDay;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a time of day, HH:MM or HH:MM:SS")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<TimeOfDay, E> {
                TimeOfDay::parse(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(TimeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a UTC civil time.
    fn utc_ms(text: &str) -> u64 {
        let timestamp: Timestamp = format!("{text}Z").parse().unwrap();
        u64::try_from(timestamp.as_millisecond()).unwrap()
    }

    fn business_hours() -> Schedule {
        Schedule {
            name: Some("business-hours".into()),
            time_zone: "Europe/Paris".into(),
            days: vec![Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri, Weekday::Sat, Weekday::Sun],
            start: TimeOfDay::hm(8, 0),
            end: TimeOfDay::hm(19, 0),
            min_replicas: Some(2),
            max_replicas: None,
        }
    }

    #[test]
    fn parses_from_toml_with_short_and_long_day_names() {
        let schedule: Schedule = toml::from_str(
            r#"
            time_zone = "America/New_York"
            days = ["mon", "Tuesday", "fri"]
            start = "22:00"
            end = "06:30"
            max_replicas = 3
            "#,
        )
        .unwrap();
        assert_eq!(schedule.days, vec![Weekday::Mon, Weekday::Tue, Weekday::Fri]);
        assert_eq!(schedule.start, TimeOfDay::hm(22, 0));
        assert_eq!(schedule.end, TimeOfDay::hm(6, 30));
        assert_eq!(schedule.display_name(2), "schedule-3");
        assert_eq!(schedule.validate("s"), Ok(()));
        let json = serde_json::to_value(&schedule).unwrap();
        assert_eq!(json["start"], "22:00");
        assert_eq!(json["days"][1], "tue");

        let defaults: Schedule = toml::from_str("start = \"09:00\"\nend = \"17:00\"\nmin_replicas = 1").unwrap();
        assert_eq!(defaults.time_zone, "UTC");
        assert_eq!(defaults.days.len(), 7);
    }

    #[test]
    fn bad_schedules_are_errors_naming_the_key() {
        let error = toml::from_str::<Schedule>("start = \"9am\"\nend = \"17:00\"\nmin_replicas = 1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("invalid time of day \"9am\""), "{error}");
        let error = toml::from_str::<Schedule>("start = \"09:00\"\nend = \"17:00\"\nmin_replicas = 1\ndays = [\"funday\"]")
            .unwrap_err()
            .to_string();
        assert!(error.contains("funday"), "{error}");
        let error = toml::from_str::<Schedule>("start = \"09:00\"\nend = \"17:00\"\nmin_replica = 1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("min_replica"), "{error}");
        assert!(TimeOfDay::parse("24:00").is_ok());
        assert!(TimeOfDay::parse("24:01").is_err());
        assert!(TimeOfDay::parse("12:60").is_err());
        assert!(TimeOfDay::parse("1:00").is_err());

        let check = |change: &dyn Fn(&mut Schedule)| {
            let mut schedule = business_hours();
            change(&mut schedule);
            schedule.validate("autoscaling.schedules[0]").unwrap_err()
        };
        assert!(check(&|s| s.time_zone = "Mars/Olympus".into())
            .starts_with("autoscaling.schedules[0].time_zone (\"Mars/Olympus\") is not a known IANA time zone"));
        assert_eq!(check(&|s| s.days.clear()), "autoscaling.schedules[0].days must name at least one day");
        assert_eq!(
            check(&|s| s.end = s.start),
            "autoscaling.schedules[0].start and autoscaling.schedules[0].end are both 08:00: the window would be empty"
        );
        assert_eq!(
            check(&|s| s.min_replicas = None),
            "autoscaling.schedules[0] must set min_replicas or max_replicas (or both)"
        );
        assert_eq!(
            check(&|s| s.max_replicas = Some(1)),
            "autoscaling.schedules[0].max_replicas (1) must be at least autoscaling.schedules[0].min_replicas (2)"
        );
        assert_eq!(
            check(&|s| s.start = TimeOfDay::parse("24:00").unwrap()),
            "autoscaling.schedules[0].start (24:00) must be before 24:00"
        );
        assert_eq!(check(&|s| s.name = Some(" ".into())), "autoscaling.schedules[0].name must not be empty");
    }

    #[test]
    fn windows_follow_local_time_across_the_spring_dst_change() {
        // Paris moves from UTC+1 to UTC+2 at 2025-03-30 01:00 UTC.
        let schedule = business_hours();
        let zone = TimeZone::get("Europe/Paris").unwrap();
        // Saturday 29 March, UTC+1: 08:00 local is 07:00 UTC.
        assert!(!schedule.is_active(&zone, utc_ms("2025-03-29T06:59:59")));
        assert!(schedule.is_active(&zone, utc_ms("2025-03-29T07:00:00")));
        assert!(schedule.is_active(&zone, utc_ms("2025-03-29T17:59:59")));
        assert!(!schedule.is_active(&zone, utc_ms("2025-03-29T18:00:00")));
        // Sunday 30 March, UTC+2: 08:00 local is 06:00 UTC.
        assert!(!schedule.is_active(&zone, utc_ms("2025-03-30T05:59:59")));
        assert!(schedule.is_active(&zone, utc_ms("2025-03-30T06:00:00")));
        assert!(!schedule.is_active(&zone, utc_ms("2025-03-30T17:00:00")));
    }

    #[test]
    fn a_window_in_the_dst_gap_never_opens_and_one_in_the_fold_opens_twice() {
        let zone = TimeZone::get("Europe/Paris").unwrap();
        let schedule = Schedule {
            start: TimeOfDay::hm(2, 15),
            end: TimeOfDay::hm(2, 45),
            ..business_hours()
        };
        // 30 March 2025: local clocks jump from 02:00 to 03:00; 01:00..01:59 UTC.
        let gap_day: Vec<bool> = (0..120)
            .map(|minute| schedule.is_active(&zone, utc_ms("2025-03-30T00:00:00") + minute * 60_000))
            .collect();
        assert!(gap_day.iter().all(|active| !active));
        // 26 October 2025: 02:00..02:59 local happens at 00:xx and 01:xx UTC.
        assert!(schedule.is_active(&zone, utc_ms("2025-10-26T00:30:00")));
        assert!(schedule.is_active(&zone, utc_ms("2025-10-26T01:30:00")));
        assert!(!schedule.is_active(&zone, utc_ms("2025-10-26T02:30:00")));
    }

    #[test]
    fn overnight_windows_count_from_the_day_they_start() {
        let zone = TimeZone::get("UTC").unwrap();
        let schedule = Schedule {
            time_zone: "UTC".into(),
            days: vec![Weekday::Fri],
            start: TimeOfDay::hm(22, 0),
            end: TimeOfDay::hm(6, 0),
            ..business_hours()
        };
        // 2025-06-13 is a Friday.
        assert!(!schedule.is_active(&zone, utc_ms("2025-06-13T21:59:00")));
        assert!(schedule.is_active(&zone, utc_ms("2025-06-13T22:00:00")));
        assert!(schedule.is_active(&zone, utc_ms("2025-06-14T05:59:00"))); // Saturday morning
        assert!(!schedule.is_active(&zone, utc_ms("2025-06-14T06:00:00")));
        assert!(!schedule.is_active(&zone, utc_ms("2025-06-14T23:00:00"))); // Saturday night
        assert!(!schedule.is_active(&zone, utc_ms("2025-06-13T03:00:00"))); // Friday morning: Thursday's night
    }

    #[test]
    fn several_active_schedules_take_the_largest_value_per_key() {
        let schedules = [
            Schedule { min_replicas: Some(2), max_replicas: Some(4), ..business_hours() },
            Schedule { name: None, min_replicas: Some(5), max_replicas: None, ..business_hours() },
            Schedule {
                name: Some("night".into()),
                start: TimeOfDay::hm(20, 0),
                end: TimeOfDay::hm(6, 0),
                min_replicas: None,
                max_replicas: Some(1),
                ..business_hours()
            },
        ];
        let resolved = ResolvedSchedules::new(&schedules);
        let noon = resolved.bounds_at(utc_ms("2025-06-13T10:00:00")); // 12:00 in Paris
        assert_eq!(noon.active, vec!["business-hours".to_string(), "schedule-2".to_string()]);
        assert_eq!((noon.min_replicas, noon.max_replicas), (Some(5), Some(4)));
        let night = resolved.bounds_at(utc_ms("2025-06-13T22:00:00"));
        assert_eq!(night.active, vec!["night".to_string()]);
        assert_eq!((night.min_replicas, night.max_replicas), (None, Some(1)));
        let evening = resolved.bounds_at(utc_ms("2025-06-13T17:30:00")); // 19:30 local
        assert_eq!(evening, ScheduleBounds::default());
    }
}
