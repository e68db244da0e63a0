//! Which request fields Swell honours, accepts without effect, or refuses: nothing a
//! client sends is silently ignored (docs/api.md, "Request fields").
//!
//! The typed request structs of [`openai_types`](crate::generation::openai_types) hold
//! the fields Swell honours; every other top-level field lands in their `other` map and
//! is judged here, for HTTP, WebSocket and Redis-ingress requests alike:
//! - the structured-output fields (`response_format`, and the `guided_json`,
//!   `guided_regex`, `guided_choice` and `json_schema` extensions) are honoured by
//!   [`structured`](crate::generation::structured), which reads them from `other`;
//! - the tool fields (`tools`, `tool_choice`, `parallel_tool_calls`; a message's
//!   `tool_calls` and `tool_call_id`) are honoured by [`tools`](crate::generation::tools);
//! - a field OpenAI defines whose value changes nothing (`metadata`, `store`, any field
//!   set to `null`) is accepted;
//! - a field OpenAI defines that Swell does not honour (`logit_bias`, `audio`, ...) is
//!   refused by name (`unsupported_parameter`);
//! - an extension other engines' clients send that Swell does not honour (`min_p`,
//!   `repetition_penalty`, `grammar`, ...) is refused by name as well;
//! - anything else is what OpenAI answers too: 400, `Unrecognized request argument
//!   supplied` (`unrecognized_argument`).
//!
//! Message fields follow the same rules (`messages[i].name`, `refusal`, ...).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::generation::error::GenerationError;
use crate::generation::structured::STRUCTURED_FIELDS;
use crate::generation::tools::{MESSAGE_FIELDS, TOOL_FIELDS};
use crate::generation::validate::GenerationKind;

/// Chat fields OpenAI defines that change nothing Swell does; accepted whatever their
/// value (docs/api.md says why for each).
const WITHOUT_EFFECT: &[&str] = &[
    // Tags for OpenAI's dashboard: Swell keeps no completions to tag.
    "metadata",
    // Swell stores no completions either way.
    "store",
    // An end-user id for OpenAI's abuse checks.
    "safety_identifier",
];

/// Chat fields OpenAI defines that Swell does not honour, each with why; accepted only
/// when their value asks for what Swell does anyway (see [`harmless`]).
const CHAT_REFUSED: &[(&str, &str)] = &[
    ("audio", "audio output is not supported"),
    ("function_call", "function calling is not supported yet"),
    ("functions", "function calling is not supported yet"),
    ("logit_bias", "logit_bias is not supported"),
    ("modalities", "only the text modality is supported"),
    ("prediction", "predicted outputs are not supported"),
    ("reasoning_effort", "the models Swell serves have no reasoning effort setting"),
    ("service_tier", "Swell has one service tier: use \"auto\" or \"default\""),
    ("verbosity", "verbosity is not supported"),
    ("web_search_options", "web search is not supported"),
];

/// Completions fields OpenAI defines that Swell does not honour (`suffix` and `best_of`
/// are typed fields, refused in validation when they would change the output).
const COMPLETION_REFUSED: &[(&str, &str)] = &[("logit_bias", "logit_bias is not supported")];

/// Extensions of other engines (vLLM, SGLang, llama.cpp, TGI) that their clients send
/// and Swell does not honour. The ones it honours (`top_k`, `ignore_eos`,
/// `parse_special_tokens`) are typed fields.
const FOREIGN_EXTENSIONS: &[&str] = &[
    "add_generation_prompt",
    "allowed_token_ids",
    "bad_words",
    "cache_prompt",
    "chat_template",
    "chat_template_kwargs",
    "continue_final_message",
    "documents",
    "dynatemp_range",
    "grammar",
    "guided_decoding_backend",
    "guided_whitespace_pattern",
    "id_slot",
    "include_stop_str_in_output",
    "length_penalty",
    "min_p",
    "min_tokens",
    "mirostat",
    "mirostat_eta",
    "mirostat_tau",
    "n_predict",
    "priority",
    "prompt_logprobs",
    "regex",
    "repeat_penalty",
    "repetition_penalty",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "stop_token_ids",
    "structured_outputs",
    "tfs_z",
    "truncate_prompt_tokens",
    "typical_p",
    "use_beam_search",
];

/// Message fields OpenAI defines that Swell does not honour, each with why.
const MESSAGE_REFUSED: &[(&str, &str)] = &[
    ("audio", "audio is not supported"),
    ("function_call", "function calling is not supported yet"),
    ("name", "participant names are not supported: the chat template has no place for them"),
    ("refusal", "an assistant refusal message is not supported: send its text as content"),
];

/// Whether `value` of a refused field asks only for what Swell does anyway.
fn harmless(name: &str, value: &Value) -> bool {
    match (name, value) {
        (_, Value::Null) => true,
        ("functions", Value::Array(list)) => list.is_empty(),
        ("function_call", Value::String(choice)) => choice == "none",
        ("logit_bias", Value::Object(map)) => map.is_empty(),
        ("modalities", Value::Array(list)) => list.iter().all(|m| m == "text"),
        ("service_tier", Value::String(tier)) => tier == "auto" || tier == "default",
        ("name", Value::String(name)) => name.is_empty(),
        _ => false,
    }
}

/// Judges `other` (the fields at `prefix`) against the `accepted` and `refused` lists;
/// other engines' extensions are known at the top level only.
fn check(
    accepted: &[&str],
    read_elsewhere: &[&[&str]],
    refused: &[(&str, &str)],
    prefix: &str,
    other: &BTreeMap<String, Value>,
) -> Result<(), GenerationError> {
    let read_elsewhere: Vec<&str> = read_elsewhere.iter().flat_map(|names| names.iter().copied()).collect();
    for (name, value) in other {
        let param = format!("{prefix}{name}");
        if accepted.contains(&name.as_str()) || read_elsewhere.contains(&name.as_str()) {
            continue;
        }
        if let Some((_, why)) = refused.iter().find(|(known, _)| known == name) {
            if harmless(name, value) {
                continue;
            }
            return Err(GenerationError::unsupported(param.clone(), format!("`{param}` is not supported: {why}")));
        }
        if prefix.is_empty() && FOREIGN_EXTENSIONS.contains(&name.as_str()) {
            if value.is_null() {
                continue;
            }
            return Err(GenerationError::unsupported(
                param.clone(),
                format!("`{param}` (an extension of other engines) is not supported by Swell"),
            ));
        }
        return Err(GenerationError::UnrecognizedArgument(param));
    }
    Ok(())
}

/// Judges a request's top-level fields outside its typed ones.
pub fn check_request_fields(kind: GenerationKind, other: &BTreeMap<String, Value>) -> Result<(), GenerationError> {
    match kind {
        GenerationKind::Chat => check(WITHOUT_EFFECT, &[STRUCTURED_FIELDS, TOOL_FIELDS], CHAT_REFUSED, "", other),
        GenerationKind::Completion => check(&[], &[STRUCTURED_FIELDS], COMPLETION_REFUSED, "", other),
    }
}

/// Judges message `index`'s fields outside `role` and `content`.
pub fn check_message_fields(index: usize, other: &BTreeMap<String, Value>) -> Result<(), GenerationError> {
    check(&[], &[MESSAGE_FIELDS], MESSAGE_REFUSED, &format!("messages[{index}]."), other)
}

/// Every field name this module knows, for the docs test: (name, where, verdict).
#[cfg(test)]
pub(crate) fn refused_names() -> impl Iterator<Item = (&'static str, &'static str)> {
    CHAT_REFUSED
        .iter()
        .map(|(name, _)| (*name, "chat"))
        .chain(COMPLETION_REFUSED.iter().map(|(name, _)| (*name, "completions")))
        .chain(MESSAGE_REFUSED.iter().map(|(name, _)| (*name, "message")))
        .chain(FOREIGN_EXTENSIONS.iter().map(|name| (*name, "extension")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(value).unwrap()
    }

    fn refusal(kind: GenerationKind, value: Value) -> GenerationError {
        check_request_fields(kind, &fields(value)).expect_err("refused")
    }

    /// Every refused chat field, with a value that asks for something, is refused by
    /// name with `unsupported_parameter`.
    #[test]
    fn each_refused_chat_field_is_named() {
        let asking: Value = json!({
            "audio": {"voice": "alloy", "format": "wav"},
            "function_call": "auto",
            "functions": [{"name": "f", "parameters": {}}],
            "logit_bias": {"50256": -100},
            "modalities": ["text", "audio"],
            "prediction": {"type": "content", "content": "x"},
            "reasoning_effort": "low",
            "service_tier": "flex",
            "verbosity": "low",
            "web_search_options": {},
        });
        let asking = asking.as_object().unwrap();
        assert_eq!(asking.len(), CHAT_REFUSED.len(), "a value for every refused field");
        for (name, value) in asking {
            let error = refusal(GenerationKind::Chat, json!({ name.clone(): value.clone() }));
            assert_eq!(error.code(), "unsupported_parameter", "{name}");
            assert_eq!(error.param(), Some(name.as_str()));
            assert!(error.to_string().contains(&format!("`{name}`")), "{name}: {error}");
        }
        let error = refusal(GenerationKind::Completion, json!({"logit_bias": {"1": 5}}));
        assert_eq!((error.code(), error.param()), ("unsupported_parameter", Some("logit_bias")));
    }

    /// Values that ask for what Swell does anyway, `null` for any known field, and the
    /// fields without effect pass.
    #[test]
    fn harmless_values_pass() {
        let harmless = json!({
            "functions": [],
            "function_call": "none",
            "logit_bias": {},
            "modalities": ["text"],
            "response_format": {"type": "text"},
            "service_tier": "auto",
            "audio": null,
            "prediction": null,
            "reasoning_effort": null,
            "metadata": {"team": "a"},
            "store": true,
            "safety_identifier": "u-1",
            "min_p": null,
        });
        check_request_fields(GenerationKind::Chat, &fields(harmless)).unwrap();
        check_request_fields(GenerationKind::Completion, &fields(json!({"logit_bias": {}, "min_p": null}))).unwrap();
        let error = refusal(GenerationKind::Completion, json!({"store": true}));
        assert_eq!(error.code(), "unrecognized_argument", "store is a chat field");
        check_message_fields(0, &fields(json!({"name": "", "audio": null}))).unwrap();
    }

    #[test]
    fn extensions_of_other_engines_are_refused_by_name() {
        for name in ["min_p", "repetition_penalty", "grammar", "cache_prompt", "chat_template_kwargs"] {
            let error = refusal(GenerationKind::Chat, json!({ name: 0.5 }));
            assert_eq!((error.code(), error.param()), ("unsupported_parameter", Some(name)));
            assert!(error.to_string().contains("extension"), "{error}");
        }
    }

    /// What OpenAI answers to a field it does not know, chat fields on the completions
    /// endpoint included.
    #[test]
    fn unknown_fields_are_unrecognized_arguments() {
        let error = refusal(GenerationKind::Chat, json!({"temprature": 0.5}));
        assert_eq!(error.code(), "unrecognized_argument");
        assert_eq!(error.to_string(), "Unrecognized request argument supplied: temprature");
        let error = refusal(GenerationKind::Completion, json!({"tools": []}));
        assert_eq!((error.code(), error.param()), ("unrecognized_argument", Some("tools")));
    }

    #[test]
    fn message_fields_are_judged_with_their_index() {
        let error = check_message_fields(2, &fields(json!({"name": "alice"}))).unwrap_err();
        assert_eq!((error.code(), error.param()), ("unsupported_parameter", Some("messages[2].name")));
        let error = check_message_fields(0, &fields(json!({"refusal": "no"}))).unwrap_err();
        assert_eq!(error.param(), Some("messages[0].refusal"));
        let error = check_message_fields(1, &fields(json!({"metadata": {}}))).unwrap_err();
        assert_eq!((error.code(), error.param()), ("unrecognized_argument", Some("messages[1].metadata")));
    }

    /// docs/api.md lists every refused field, so the docs and the code cannot drift.
    #[test]
    fn the_docs_list_every_refused_field() {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
        for (name, place) in refused_names() {
            assert!(docs.contains(&format!("`{name}`")), "docs/api.md does not name the {place} field `{name}`");
        }
        for name in WITHOUT_EFFECT {
            assert!(docs.contains(&format!("`{name}`")), "docs/api.md does not name `{name}`");
        }
    }
}
