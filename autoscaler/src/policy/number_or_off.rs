//! Deserializing "a number, or `false` (TOML) / `null` (JSON) for off".

use std::fmt;

use serde::de::{self, Unexpected, Visitor};
use serde::Deserializer;

pub(super) enum NumberOrOff {
    Integer(i128),
    Float(f64),
    Off,
}

pub(super) struct NumberOrOffVisitor<'a> {
    expecting: &'a str,
}

impl<'de> Visitor<'de> for NumberOrOffVisitor<'_> {
    type Value = NumberOrOff;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.expecting)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<NumberOrOff, E> {
        if value {
            Err(E::invalid_value(Unexpected::Bool(true), &self))
        } else {
            Ok(NumberOrOff::Off)
        }
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<NumberOrOff, E> {
        Ok(NumberOrOff::Integer(i128::from(value)))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<NumberOrOff, E> {
        Ok(NumberOrOff::Integer(i128::from(value)))
    }

    fn visit_i128<E: de::Error>(self, value: i128) -> Result<NumberOrOff, E> {
        Ok(NumberOrOff::Integer(value))
    }

    fn visit_u128<E: de::Error>(self, value: u128) -> Result<NumberOrOff, E> {
        Ok(NumberOrOff::Integer(
            i128::try_from(value).unwrap_or(i128::MAX),
        ))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<NumberOrOff, E> {
        Ok(NumberOrOff::Float(value))
    }

    fn visit_none<E: de::Error>(self) -> Result<NumberOrOff, E> {
        Ok(NumberOrOff::Off)
    }

    fn visit_unit<E: de::Error>(self) -> Result<NumberOrOff, E> {
        Ok(NumberOrOff::Off)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<NumberOrOff, D::Error> {
        deserializer.deserialize_any(self)
    }
}

pub(super) const EXPECTING_NUMBER: &str = "a number, or false to turn it off";
pub(super) const EXPECTING_REPLICAS: &str = "a whole number of replicas, or false to turn it off";

pub(super) fn deserialize_optional_target<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<f64>, D::Error> {
    let visitor = NumberOrOffVisitor {
        expecting: EXPECTING_NUMBER,
    };
    Ok(match deserializer.deserialize_any(visitor)? {
        NumberOrOff::Integer(value) => Some(value as f64),
        NumberOrOff::Float(value) => Some(value),
        NumberOrOff::Off => None,
    })
}

pub(super) fn deserialize_optional_replicas<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    let visitor = NumberOrOffVisitor {
        expecting: EXPECTING_REPLICAS,
    };
    let expected = &EXPECTING_REPLICAS;
    match deserializer.deserialize_any(visitor)? {
        NumberOrOff::Integer(value) => u32::try_from(value).map(Some).map_err(|_| {
            de::Error::custom(format!(
                "invalid value: {value}, expected {EXPECTING_REPLICAS}"
            ))
        }),
        NumberOrOff::Float(value) => {
            if value.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&value) {
                Ok(Some(value as u32))
            } else {
                Err(de::Error::invalid_value(Unexpected::Float(value), expected))
            }
        }
        NumberOrOff::Off => Ok(None),
    }
}

pub(super) fn deserialize_present_target<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<f64>>, D::Error> {
    deserialize_optional_target(deserializer).map(Some)
}

pub(super) fn deserialize_present_replicas<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<u32>>, D::Error> {
    deserialize_optional_replicas(deserializer).map(Some)
}
