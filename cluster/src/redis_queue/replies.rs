//! Reading Redis's replies into the queue's types, and Redis errors as [`QueueError`]s
//! (every failure to reach or understand Redis is `Unavailable`).

use std::time::Duration;

use redis::{RedisError, Value};
use swell_protocol::{OutputEvent, SequencedEvent};

use crate::queue::QueueError;

/// Output stream entries (`[[id, [field, value, ...]], ...]`) as events. An entry holds
/// one event (`v` its JSON) or several (`v` their JSON array): its id is `0-<the last
/// one's sequence number>`, the ones before are numbered back from it.
pub(super) fn parse_entries(entries: Value) -> Result<Vec<SequencedEvent>, QueueError> {
    let mut events = Vec::new();
    for entry in array(entries)? {
        let [id, fields] = fixed::<2>(entry)?;
        let id = string(&id)?;
        let last: u64 = id
            .strip_prefix("0-")
            .and_then(|seq| seq.parse().ok())
            .ok_or_else(|| malformed("output entry id"))?;
        let (mut epoch, mut stored) = (None, None);
        let fields = array(fields)?;
        for pair in fields.chunks(2) {
            match (string(&pair[0])?.as_str(), pair.get(1)) {
                ("e", Some(value)) => epoch = Some(number(value)? as u32),
                ("v", Some(value)) => stored = Some(string(value)?),
                _ => {}
            }
        }
        let (Some(epoch), Some(stored)) = (epoch, stored) else {
            return Err(malformed("output entry"));
        };
        let batch: Vec<OutputEvent> = if stored.starts_with('[') {
            serde_json::from_str(&stored).map_err(|_| malformed("output events"))?
        } else {
            vec![serde_json::from_str(&stored).map_err(|_| malformed("output event"))?]
        };
        let first = (last + 1).checked_sub(batch.len() as u64).filter(|first| *first >= 1);
        let first = first.ok_or_else(|| malformed("output entry id"))?;
        events.extend(batch.into_iter().zip(first..).map(|(event, seq)| SequencedEvent { seq, epoch, event }));
    }
    Ok(events)
}

pub(super) async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, QueueError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(unavailable),
        Err(_) => Err(timed_out()),
    }
}

pub(super) fn unavailable(error: RedisError) -> QueueError {
    QueueError::Unavailable(format!("redis: {error}"))
}

pub(super) fn timed_out() -> QueueError {
    QueueError::Unavailable("redis: no answer in time".into())
}

pub(super) fn malformed(what: &str) -> QueueError {
    QueueError::Unavailable(format!("redis: malformed reply ({what})"))
}

pub(super) fn array(value: Value) -> Result<Vec<Value>, QueueError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(malformed("expected an array")),
    }
}

pub(super) fn fixed<const N: usize>(value: Value) -> Result<[Value; N], QueueError> {
    array(value)?.try_into().map_err(|_| malformed("wrong number of items"))
}

pub(super) fn string(value: &Value) -> Result<String, QueueError> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).map_err(|_| malformed("utf-8")),
        Value::SimpleString(text) => Ok(text.clone()),
        Value::Int(number) => Ok(number.to_string()),
        Value::Nil => Ok(String::new()),
        _ => Err(malformed("expected a string")),
    }
}

pub(super) fn number(value: &Value) -> Result<u64, QueueError> {
    match value {
        Value::Int(number) => u64::try_from(*number).map_err(|_| malformed("negative number")),
        _ => string(value)?.parse().map_err(|_| malformed("expected a number")),
    }
}
