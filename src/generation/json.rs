//! JSON request bodies into typed structs, with errors that name the parameter: parsed
//! with `serde_path_to_error` so that a wrong type names the parameter
//! (`messages[0].content`), a missing field is `missing_required_parameter` and broken
//! JSON is `invalid_json`. HTTP bodies, WebSocket messages and ingress entries all parse
//! through here.

use serde::de::DeserializeOwned;

use crate::generation::error::GenerationError;

/// Parses JSON text into `T`, naming the offending parameter on failure.
pub fn parse_json<T: DeserializeOwned>(text: &[u8]) -> Result<T, GenerationError> {
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok() {
        return Err(GenerationError::InvalidType { message: "the request body must be a json object".into(), param: None });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(path_error)?;
    deserializer.end().map_err(|error| GenerationError::InvalidJson(strip_position(&error.to_string())))?;
    Ok(value)
}

/// Converts an already parsed JSON value into `T` (WebSocket requests arrive as values).
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, GenerationError> {
    serde_path_to_error::deserialize(value).map_err(path_error)
}

fn path_error(error: serde_path_to_error::Error<serde_json::Error>) -> GenerationError {
    let path = error.path().to_string();
    let inner = error.inner();
    let message = strip_position(&inner.to_string());
    match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof | serde_json::error::Category::Io => {
            GenerationError::InvalidJson(message)
        }
        serde_json::error::Category::Data => {
            let join = |field: &str| if path == "." { field.to_string() } else { format!("{path}.{field}") };
            if let Some(field) = quoted_after(&message, "missing field `") {
                return GenerationError::MissingParameter(join(field));
            }
            if let Some(field) = quoted_after(&message, "unknown field `") {
                // serde's "expected one of ..." part lists the accepted names.
                let expected = message.split_once("`, ").map(|(_, rest)| format!("; {rest}")).unwrap_or_default();
                let param = if path.ends_with(field) { path.clone() } else { join(field) };
                return GenerationError::UnknownParameter { param, expected };
            }
            if path == "." {
                GenerationError::InvalidType { message: format!("invalid request body: {message}"), param: None }
            } else {
                GenerationError::InvalidType {
                    message: format!("invalid parameter `{path}`: {message}"),
                    param: Some(path),
                }
            }
        }
    }
}

/// `missing field `model`` with prefix "missing field `" → `model`.
fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next()
}

/// serde_json appends ` at line L column C` (the parameter path says more) and starts
/// some messages with `EOF`; messages are lowercase.
pub fn strip_position(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(index) if message[index..].contains(" column ") => &message[..index],
        _ => message,
    };
    match message.strip_prefix("EOF") {
        Some(rest) => format!("end of input{rest}"),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        model: String,
        temperature: Option<f32>,
        messages: Option<Vec<Message>>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Message {
        role: String,
    }

    #[test]
    fn broken_json_is_invalid_json() {
        let error = parse_json::<Body>(b"{\"model\": ").unwrap_err();
        assert_eq!(error.code(), "invalid_json");
        assert!(!error.to_string().contains("line"), "{error}");
        assert_eq!(parse_json::<Body>(b"").unwrap_err().code(), "invalid_json");
        assert_eq!(parse_json::<Body>(b"{\"model\": \"m\"} trailing").unwrap_err().code(), "invalid_json");
    }

    #[test]
    fn wrong_types_name_the_parameter() {
        let error = parse_json::<Body>(br#"{"model": "m", "temperature": "hot"}"#).unwrap_err();
        assert_eq!(error.code(), "invalid_type");
        assert_eq!(error.param(), Some("temperature"));
        assert!(error.to_string().contains("temperature"), "{error}");
        let error = parse_json::<Body>(br#"{"model": "m", "messages": [{"role": 3}]}"#).unwrap_err();
        assert_eq!(error.param(), Some("messages[0].role"));
    }

    #[test]
    fn missing_fields_are_named() {
        let error = parse_json::<Body>(br#"{"temperature": 1}"#).unwrap_err();
        assert_eq!(error.code(), "missing_required_parameter");
        assert_eq!(error.param(), Some("model"));
        let error = parse_json::<Body>(br#"{"model": "m", "messages": [{}]}"#).unwrap_err();
        assert_eq!(error.param(), Some("messages[0].role"));
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        engine: String,
        inner: Option<StrictInner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct StrictInner {
        min_replicas: Option<u32>,
    }

    #[test]
    fn unknown_fields_of_strict_bodies_are_named() {
        let error = parse_json::<Strict>(br#"{"engine": "sim", "engnie": 1}"#).unwrap_err();
        assert_eq!(error.code(), "unknown_parameter");
        assert_eq!(error.param(), Some("engnie"));
        assert!(error.to_string().contains("expected `engine` or `inner`"), "{error}");
        let error = parse_json::<Strict>(br#"{"engine": "sim", "inner": {"min_replica": 1}}"#).unwrap_err();
        assert_eq!(error.param(), Some("inner.min_replica"));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_a_type_error() {
        let error = parse_json::<Body>(b"[1, 2]").unwrap_err();
        assert_eq!(error.code(), "invalid_type");
        assert_eq!(error.param(), None);
    }

    #[test]
    fn values_parse_like_text() {
        let error = from_value::<Body>(serde_json::json!({"model": 5})).unwrap_err();
        assert_eq!(error.param(), Some("model"));
    }
}
