//! Structured outputs at the edge: a request's `response_format` (chat and completions)
//! or one of the extensions other engines' clients send (`guided_json`, `guided_regex`,
//! `guided_choice`, `guided_grammar`, llama.cpp's `json_schema`) becomes the [`Constraint`] its jobs carry
//! and the engine enforces while decoding.
//!
//! The constraint is compiled here once (llguidance, against a one-byte vocabulary), so
//! a bad schema or regex is a 400 naming its field before anything is queued; a
//! deployment whose engine cannot constrain decoding refuses the field by name.

use std::collections::BTreeMap;

use serde_json::Value;
use swell_cluster::Constraint;

use crate::generation::error::GenerationError;
use crate::generation::validate::ModelLimits;

/// The top-level fields read here (the field checks let them through).
pub const STRUCTURED_FIELDS: &[&str] = &[
    "response_format",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "json_schema",
];

/// What a deployment's engine can enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConstraintSupport {
    /// JSON objects and JSON schemas.
    pub json: bool,
    /// Regular expressions.
    pub regex: bool,
    /// A choice among fixed strings.
    pub choice: bool,
    /// Context-free grammars (llguidance's Lark).
    pub grammar: bool,
}

impl ConstraintSupport {
    pub const ALL: ConstraintSupport = ConstraintSupport {
        json: true,
        regex: true,
        choice: true,
        grammar: true,
    };
    pub const NONE: ConstraintSupport = ConstraintSupport {
        json: false,
        regex: false,
        choice: false,
        grammar: false,
    };

    /// From an engine's list of unsupported parameters.
    pub fn from_unsupported(unsupported: &[String]) -> ConstraintSupport {
        let has = |name: &str| unsupported.iter().any(|p| p == name);
        if has("response_format") {
            return ConstraintSupport::NONE;
        }
        ConstraintSupport {
            json: true,
            regex: !has("guided_regex"),
            choice: !has("guided_choice"),
            grammar: !has("guided_grammar"),
        }
    }

    fn allows(&self, constraint: &Constraint) -> bool {
        match constraint {
            Constraint::JsonObject | Constraint::JsonSchema(_) => self.json,
            Constraint::Regex(_) => self.regex,
            Constraint::Choice(_) => self.choice,
            Constraint::Grammar(_) => self.grammar,
        }
    }
}

/// The constraint a request asks for, if any (`other` holds its untyped fields).
pub fn constraint_of(
    other: &BTreeMap<String, Value>,
    limits: &ModelLimits,
) -> Result<Option<Constraint>, GenerationError> {
    let mut found: Option<(&str, Constraint)> = None;
    for &field in STRUCTURED_FIELDS {
        let Some(value) = other.get(field).filter(|v| !v.is_null()) else {
            continue;
        };
        let Some(constraint) = parse(field, value)? else {
            continue;
        };
        if let Some((first, _)) = &found {
            return Err(GenerationError::invalid_value(
                field,
                format!("`{first}` and `{field}` both constrain the output: send one of them"),
            ));
        }
        found = Some((field, constraint));
    }
    let Some((field, constraint)) = found else {
        return Ok(None);
    };
    if !limits.constraints.allows(&constraint) {
        return Err(GenerationError::unsupported(
            field,
            format!(
                "`{field}` ({}) is not supported by this deployment's engine",
                constraint.kind()
            ),
        ));
    }
    swell_workers::llm::constraint::check(&constraint).map_err(|error| {
        GenerationError::invalid_value(field, format!("`{field}` cannot be enforced: {error}"))
    })?;
    Ok(Some(constraint))
}

fn parse(field: &str, value: &Value) -> Result<Option<Constraint>, GenerationError> {
    let invalid =
        |message: &str| GenerationError::invalid_value(field, format!("`{field}` {message}"));
    match field {
        "response_format" => response_format(value),
        "guided_json" => match value {
            Value::Object(_) | Value::Bool(_) => {
                Ok(Some(Constraint::JsonSchema(value.to_string())))
            }
            Value::String(text) => Ok(Some(Constraint::JsonSchema(text.clone()))),
            _ => Err(invalid("must be a JSON schema (an object, or its text)")),
        },
        "json_schema" => match value {
            Value::Object(_) => Ok(Some(Constraint::JsonSchema(value.to_string()))),
            _ => Err(invalid("must be a JSON schema object")),
        },
        "guided_regex" => match value {
            Value::String(regex) => Ok(Some(Constraint::Regex(regex.clone()))),
            _ => Err(invalid("must be a string (a regular expression)")),
        },
        "guided_grammar" => match value {
            Value::String(lark) => Ok(Some(Constraint::Grammar(lark.clone()))),
            _ => Err(invalid("must be a string (a grammar in llguidance's Lark syntax)")),
        },
        "guided_choice" => match value {
            Value::Array(items) if !items.is_empty() => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| invalid("must be a list of strings"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|choices| Some(Constraint::Choice(choices))),
            _ => Err(invalid("must be a non-empty list of strings")),
        },
        _ => unreachable!("a structured field"),
    }
}

/// OpenAI's `response_format`: `text`, `json_object`, or `json_schema` with its schema.
fn response_format(value: &Value) -> Result<Option<Constraint>, GenerationError> {
    let invalid = |param: &str, message: String| GenerationError::invalid_value(param, message);
    let Some(format) = value.as_object() else {
        return Err(invalid(
            "response_format",
            "`response_format` must be an object with a `type`".into(),
        ));
    };
    let allowed_keys: &[&str] = match format.get("type").and_then(Value::as_str) {
        Some("text" | "json_object") => &["type"],
        Some("json_schema") => &["type", "json_schema"],
        Some(other) => {
            return Err(invalid(
                "response_format.type",
                format!("`response_format.type` must be \"text\", \"json_object\" or \"json_schema\", got {other:?}"),
            ))
        }
        None => return Err(invalid("response_format.type", "`response_format.type` is required".into())),
    };
    if let Some(key) = format.keys().find(|k| !allowed_keys.contains(&k.as_str())) {
        return Err(GenerationError::UnrecognizedArgument(format!(
            "response_format.{key}"
        )));
    }
    match format["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonObject)),
        _ => {
            let Some(spec) = format.get("json_schema").and_then(Value::as_object) else {
                return Err(invalid(
                    "response_format.json_schema",
                    "`response_format.json_schema` (an object with `name` and `schema`) is required".into(),
                ));
            };
            if let Some(key) = spec
                .keys()
                .find(|k| !["name", "description", "schema", "strict"].contains(&k.as_str()))
            {
                return Err(GenerationError::UnrecognizedArgument(format!(
                    "response_format.json_schema.{key}"
                )));
            }
            if !spec.get("name").is_some_and(Value::is_string) {
                return Err(invalid(
                    "response_format.json_schema.name",
                    "`response_format.json_schema.name` (a string) is required".into(),
                ));
            }
            if spec
                .get("strict")
                .is_some_and(|s| !s.is_boolean() && !s.is_null())
            {
                return Err(invalid(
                    "response_format.json_schema.strict",
                    "`response_format.json_schema.strict` must be a boolean".into(),
                ));
            }
            // Without a schema, any JSON value (OpenAI's default schema is empty).
            let schema = spec
                .get("schema")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({}));
            if !schema.is_object() {
                return Err(invalid(
                    "response_format.json_schema.schema",
                    "`response_format.json_schema.schema` must be an object".into(),
                ));
            }
            Ok(Some(Constraint::JsonSchema(schema.to_string())))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn limits(constraints: ConstraintSupport) -> ModelLimits {
        ModelLimits {
            context_length: 64,
            max_tokens_default: 16,
            max_tokens_limit: 48,
            prompt_logprobs: true,
            constraints,
        }
    }

    fn of(value: Value) -> Result<Option<Constraint>, GenerationError> {
        constraint_of(
            &serde_json::from_value(value).unwrap(),
            &limits(ConstraintSupport::ALL),
        )
    }

    fn param_of(value: Value) -> (String, Option<String>) {
        let error = of(value).expect_err("refused");
        (error.code().to_string(), error.param().map(str::to_string))
    }

    #[test]
    fn each_form_becomes_its_constraint() {
        assert_eq!(of(json!({})).unwrap(), None);
        assert_eq!(
            of(json!({"response_format": {"type": "text"}})).unwrap(),
            None
        );
        assert_eq!(
            of(json!({"response_format": {"type": "json_object"}})).unwrap(),
            Some(Constraint::JsonObject)
        );
        let schema =
            json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
        let format = json!({"type": "json_schema", "json_schema": {"name": "t", "strict": true, "schema": schema}});
        assert_eq!(
            of(json!({ "response_format": format })).unwrap(),
            Some(Constraint::JsonSchema(schema.to_string()))
        );
        assert_eq!(
            of(json!({ "guided_json": schema })).unwrap(),
            Some(Constraint::JsonSchema(schema.to_string()))
        );
        assert_eq!(
            of(json!({ "json_schema": schema })).unwrap(),
            Some(Constraint::JsonSchema(schema.to_string()))
        );
        assert_eq!(
            of(json!({"guided_regex": "[0-9]+"})).unwrap(),
            Some(Constraint::Regex("[0-9]+".into()))
        );
        assert_eq!(
            of(json!({"guided_choice": ["yes", "no"]})).unwrap(),
            Some(Constraint::Choice(vec!["yes".into(), "no".into()]))
        );
        let lark = "start: \"a\" %json {\"type\": \"integer\"}";
        assert_eq!(of(json!({ "guided_grammar": lark })).unwrap(), Some(Constraint::Grammar(lark.into())));
        assert_eq!(of(json!({"guided_grammar": "start: ("})).unwrap_err().param(), Some("guided_grammar"));
        // A text format beside a guided field is no conflict.
        assert!(
            of(json!({"response_format": {"type": "text"}, "guided_regex": "a"}))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn bad_forms_are_named() {
        let invalid = |param: &str| ("invalid_value".to_string(), Some(param.to_string()));
        assert_eq!(
            param_of(json!({"response_format": "json"})),
            invalid("response_format")
        );
        assert_eq!(
            param_of(json!({"response_format": {"type": "xml"}})),
            invalid("response_format.type")
        );
        assert_eq!(
            param_of(json!({"response_format": {"type": "json_schema"}})),
            invalid("response_format.json_schema")
        );
        assert_eq!(
            param_of(
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}})
            ),
            invalid("response_format.json_schema.name")
        );
        assert_eq!(
            param_of(json!({"response_format": {"type": "json_object", "schema": {}}})),
            (
                "unrecognized_argument".to_string(),
                Some("response_format.schema".to_string())
            )
        );
        assert_eq!(
            param_of(json!({"guided_choice": []})),
            invalid("guided_choice")
        );
        assert_eq!(
            param_of(json!({"guided_regex": "(open"})),
            invalid("guided_regex")
        );
        assert_eq!(
            param_of(json!({"guided_json": {"type": "no-such-type"}})),
            invalid("guided_json")
        );
        assert_eq!(
            param_of(json!({"response_format": {"type": "json_object"}, "guided_regex": "a"})),
            invalid("guided_regex")
        );
    }

    #[test]
    fn an_engine_without_support_refuses_by_name() {
        let none = limits(ConstraintSupport::NONE);
        let error = constraint_of(
            &serde_json::from_value(json!({"guided_json": {}})).unwrap(),
            &none,
        )
        .unwrap_err();
        assert_eq!(
            (error.code(), error.param()),
            ("unsupported_parameter", Some("guided_json"))
        );
        // Asking for plain text needs no support.
        assert_eq!(
            constraint_of(
                &serde_json::from_value(json!({"response_format": {"type": "text"}})).unwrap(),
                &none
            )
            .unwrap(),
            None
        );
        let no_regex = limits(ConstraintSupport::from_unsupported(&[
            "guided_regex".to_string()
        ]));
        let error = constraint_of(
            &serde_json::from_value(json!({"guided_regex": "a+"})).unwrap(),
            &no_regex,
        )
        .unwrap_err();
        assert_eq!(error.param(), Some("guided_regex"));
        assert!(constraint_of(
            &serde_json::from_value(json!({"guided_choice": ["a"]})).unwrap(),
            &no_regex
        )
        .unwrap()
        .is_some());
    }
}
