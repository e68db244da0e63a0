//! Chat messages into the turns the chat template renders: roles (`developer` is
//! `system`), text content (a string or text parts), and the tool turns of a
//! conversation with tools, written back as the model wrote and reads them
//! ([`tools`](crate::generation::tools)): for a template with its own tool format, as
//! the tool fields the template reads (`tool_calls`, `tool_call_id`, a `tool` role);
//! otherwise in the generic format, as text. Every rejection names its message.

use serde_json::{Map, Value};
use swell_workers::ChatMessage;

use crate::generation::error::GenerationError;
use crate::generation::fields::check_message_fields;
use crate::generation::openai_types::ChatMessageIn;
use crate::generation::tools::{assistant_calls, assistant_calls_text, tool_result_text};

/// A conversation for the chat template.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Conversation {
    pub messages: Vec<ChatMessage>,
    /// Per message: its tool fields (only for a template with its own tool format).
    pub fields: Vec<Map<String, Value>>,
}

/// Whether a message is a tool turn (a call or a result).
pub fn has_tool_turns(messages: &[ChatMessageIn]) -> bool {
    messages
        .iter()
        .any(|m| m.role == "tool" || m.other.get("tool_calls").is_some_and(|calls| !calls.is_null()))
}

/// The turns of `messages`, in order, for the chat template; with `native`, tool turns
/// keep their fields for a template that renders them.
pub fn chat_messages(messages: &[ChatMessageIn], native: bool) -> Result<Conversation, GenerationError> {
    if messages.is_empty() {
        return Err(GenerationError::invalid_value("messages", "messages must contain at least one message"));
    }
    let mut conversation = Conversation::default();
    for (index, message) in messages.iter().enumerate() {
        let (message, fields) = chat_message(index, message, native)?;
        conversation.messages.push(message);
        conversation.fields.push(fields);
    }
    if !native {
        conversation.fields.clear();
    }
    Ok(conversation)
}

fn chat_message(index: usize, message: &ChatMessageIn, native: bool) -> Result<(ChatMessage, Map<String, Value>), GenerationError> {
    let role = match message.role.as_str() {
        // OpenAI's newer name for the system role; templates know `system`.
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        other => {
            return Err(GenerationError::invalid_value(
                format!("messages[{index}].role"),
                format!("unsupported role `{other}`: use system, developer, user, assistant or tool"),
            ));
        }
    };
    check_message_fields(index, &message.other)?;
    let field = |name: &str| message.other.get(name).filter(|v| !v.is_null());
    let misplaced = match role {
        "assistant" => field("tool_call_id").map(|_| "tool_call_id"),
        "tool" => field("tool_calls").map(|_| "tool_calls"),
        _ => field("tool_calls").map(|_| "tool_calls").or(field("tool_call_id").map(|_| "tool_call_id")),
    };
    if let Some(name) = misplaced {
        return Err(GenerationError::invalid_value(
            format!("messages[{index}].{name}"),
            format!("`{name}` does not belong in a `{role}` message"),
        ));
    }
    let content = message_content(index, role, message.content.as_ref())?;
    let mut fields = Map::new();
    let turn = |role: &str, content: String| ChatMessage { role: role.to_string(), content };
    match (role, field("tool_calls")) {
        ("assistant", Some(calls)) if native => {
            fields.insert("tool_calls".into(), Value::Array(assistant_calls(index, calls)?));
            Ok((turn("assistant", content), fields))
        }
        ("tool", _) if native => {
            if let Some(id) = field("tool_call_id") {
                fields.insert("tool_call_id".into(), id.clone());
            }
            Ok((turn("tool", content), fields))
        }
        // Earlier tool calls and their results, as the model wrote and reads them.
        ("assistant", Some(calls)) => Ok((turn("assistant", assistant_calls_text(index, calls)?), fields)),
        ("tool", _) => {
            let id = field("tool_call_id").and_then(Value::as_str);
            Ok((turn("user", tool_result_text(id, &content)), fields))
        }
        _ => Ok((turn(role, content), fields)),
    }
}

fn message_content(index: usize, role: &str, content: Option<&Value>) -> Result<String, GenerationError> {
    let param = format!("messages[{index}].content");
    match content {
        Some(Value::String(text)) => Ok(text.clone()),
        None | Some(Value::Null) if role == "assistant" => Ok(String::new()),
        None | Some(Value::Null) => Err(GenerationError::MissingParameter(param)),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (part_index, part) in parts.iter().enumerate() {
                let part_param = format!("{param}[{part_index}]");
                let kind = part.get("type").and_then(Value::as_str);
                match (kind, part.get("text")) {
                    (Some("text"), Some(Value::String(text))) => texts.push(text.as_str()),
                    (Some("text"), _) => {
                        return Err(GenerationError::InvalidType {
                            message: format!("{part_param}.text must be a string"),
                            param: Some(format!("{part_param}.text")),
                        });
                    }
                    (Some(other), _) => {
                        return Err(GenerationError::unsupported(
                            format!("{part_param}.type"),
                            format!("content parts of type `{other}` are not supported: only text is"),
                        ));
                    }
                    (None, _) => {
                        return Err(GenerationError::MissingParameter(format!("{part_param}.type")));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(GenerationError::InvalidType {
            message: format!("{param} must be a string or an array of content parts"),
            param: Some(param),
        }),
    }
}
