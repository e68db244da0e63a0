//! Tool calls: OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`, in a generic
//! JSON format (as llama.cpp does for chat templates without tool support, which
//! SmolLM2's is), enforced by constrained decoding:
//!
//! - The request's tools are described to the model in the system message, with the
//!   format to answer in.
//! - The output is constrained to that format: `{"tool_calls": [{"name": ..., "arguments":
//!   {...}}]}`, each call's arguments fitting its function's `parameters` schema; with
//!   `tool_choice: "auto"` the model may instead answer `{"response": "..."}`. With
//!   `"required"` it must call a tool, with a named function that one; `parallel_tool_calls:
//!   false` allows one call; `"none"` leaves the tools out.
//! - The output is read back into OpenAI's `tool_calls` (`finish_reason: "tool_calls"`) or
//!   content ([`parse_output`]).
//! - Earlier turns come back as the model wrote them: an assistant message's `tool_calls`
//!   as the same JSON, a `tool` message as a user turn holding `{"tool_response": ...}`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use swell_cluster::Constraint;

use crate::generation::error::GenerationError;
use crate::generation::openai_types::{ChatMessageOut, FunctionCallOut, ToolCallOut};
use crate::generation::tool_format::{NativeReader, ToolFormat};
use crate::generation::tool_stream::{ToolDelta, ToolStreamReader};
use crate::generation::validate::ModelLimits;

/// The top-level fields read here (the field checks let them through).
pub const TOOL_FIELDS: &[&str] = &["tools", "tool_choice", "parallel_tool_calls"];
/// The message fields read in validation.
pub const MESSAGE_FIELDS: &[&str] = &["tool_calls", "tool_call_id"];

/// What a request's tools add to it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolPlan {
    /// The format of the calls: the chat template's own, or the generic one.
    pub format: ToolFormat,
    /// The generic format: appended to the system message (or the system message, when
    /// there is none). Empty for a native format, whose template renders the tools.
    pub instructions: String,
    /// The format the output must take (`None`: a native format's `auto`, left free).
    pub constraint: Option<Constraint>,
    /// The request's tools, for a template that renders them.
    pub tools: Value,
}

struct Function {
    name: String,
    description: Option<String>,
    parameters: Value,
}

/// The plan of a request's `tools` (`None`: no tools, or `tool_choice: "none"`), for a
/// model whose template has the tool-call format `format`.
pub fn tool_plan(other: &BTreeMap<String, Value>, limits: &ModelLimits, format: ToolFormat) -> Result<Option<ToolPlan>, GenerationError> {
    let functions = match other.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools.iter().enumerate().map(|(i, tool)| function(i, tool)).collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(GenerationError::invalid_value("tools", "`tools` must be a list of tools")),
    };
    for (i, f) in functions.iter().enumerate() {
        if functions[..i].iter().any(|g| g.name == f.name) {
            return Err(GenerationError::invalid_value(format!("tools[{i}].function.name"), format!("two tools are named `{}`", f.name)));
        }
    }
    let parallel = match other.get("parallel_tool_calls") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(parallel)) => *parallel,
        Some(_) => return Err(GenerationError::invalid_value("parallel_tool_calls", "`parallel_tool_calls` must be a boolean")),
    };
    // `auto` may answer in text; `required` must call one of them; a named one, that one.
    let (may_answer, called): (bool, Vec<&Function>) = match other.get("tool_choice") {
        None | Some(Value::Null) => (true, functions.iter().collect()),
        Some(Value::String(choice)) => match choice.as_str() {
            "none" => return Ok(None),
            "auto" => (true, functions.iter().collect()),
            "required" => (false, functions.iter().collect()),
            _ => {
                return Err(GenerationError::invalid_value(
                    "tool_choice",
                    format!("`tool_choice` must be \"none\", \"auto\", \"required\" or a function, got {choice:?}"),
                ))
            }
        },
        Some(Value::Object(choice)) => {
            let name = choice.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            let Some(name) = name.filter(|_| choice.get("type").and_then(Value::as_str) == Some("function")) else {
                return Err(GenerationError::invalid_value(
                    "tool_choice",
                    "a named `tool_choice` is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                ));
            };
            let Some(f) = functions.iter().find(|f| f.name == name) else {
                return Err(GenerationError::invalid_value("tool_choice", format!("`tool_choice` names `{name}`, which is not in `tools`")));
            };
            (false, vec![f])
        }
        Some(_) => return Err(GenerationError::invalid_value("tool_choice", "`tool_choice` must be a string or an object")),
    };
    if functions.is_empty() {
        if other.get("tool_choice").is_some_and(|c| !c.is_null()) {
            return Err(GenerationError::invalid_value("tool_choice", "`tool_choice` needs `tools`"));
        }
        return Ok(None);
    }
    let tools = other.get("tools").cloned().unwrap_or(Value::Null);
    if format.is_native() {
        if may_answer {
            // The model answers as it was trained; its output is read, not constrained.
            return Ok(Some(ToolPlan { format, instructions: String::new(), constraint: None, tools }));
        }
        let supported = match format {
            ToolFormat::Hermes => limits.constraints.grammar,
            _ => limits.constraints.json,
        };
        if !supported {
            return Err(GenerationError::unsupported(
                "tool_choice",
                "this deployment's engine cannot constrain the output to the model's tool-call format: use `tool_choice: \"auto\"`",
            ));
        }
        let (calls, defs) = call_schemas(&called, format.arguments_key())?;
        let parallel = parallel && format.parallel_calls();
        let constraint = format.call_constraint(calls, defs, parallel);
        checked(&constraint)?;
        return Ok(Some(ToolPlan { format, instructions: String::new(), constraint: Some(constraint), tools }));
    }
    if !limits.constraints.json {
        return Err(GenerationError::unsupported("tools", "`tools` is not supported by this deployment's engine (no constrained decoding)"));
    }
    let constraint = Constraint::JsonSchema(output_schema(&called, may_answer, parallel)?.to_string());
    checked(&constraint)?;
    Ok(Some(ToolPlan { format, instructions: instructions(&functions, may_answer, parallel), constraint: Some(constraint), tools }))
}

fn checked(constraint: &Constraint) -> Result<(), GenerationError> {
    swell_workers::llm::constraint::check(constraint)
        .map_err(|error| GenerationError::invalid_value("tools", format!("the tools' schemas cannot be enforced: {error}")))
}

fn function(index: usize, tool: &Value) -> Result<Function, GenerationError> {
    let param = format!("tools[{index}]");
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(GenerationError::invalid_value(format!("{param}.type"), format!("`{param}.type` must be \"function\"")));
    }
    let Some(f) = tool.get("function").and_then(Value::as_object) else {
        return Err(GenerationError::MissingParameter(format!("{param}.function")));
    };
    let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
    let valid = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(GenerationError::invalid_value(
            format!("{param}.function.name"),
            "a function name is 1 to 64 letters, digits, `_` or `-`",
        ));
    }
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(GenerationError::invalid_value(format!("{param}.function.parameters"), "`parameters` must be a JSON schema object")),
    };
    let description = f.get("description").and_then(Value::as_str).map(str::to_string);
    Ok(Function { name: name.to_string(), description, parameters })
}

/// The JSON schema of each call, `{"name": N, "<arguments_key>": A}`, and the functions'
/// `$defs`: they move to the root, where their `#/$defs/...` references point once the
/// parameters are nested.
fn call_schemas(called: &[&Function], arguments_key: &str) -> Result<(Vec<Value>, Option<Value>), GenerationError> {
    let mut defs = Map::new();
    let mut calls = Vec::new();
    for f in called {
        let mut parameters = f.parameters.clone();
        if let Some(Value::Object(own)) = parameters.as_object_mut().and_then(|p| p.remove("$defs")) {
            for (name, def) in own {
                if defs.get(&name).is_some_and(|d| d != &def) {
                    return Err(GenerationError::invalid_value("tools", format!("two tools define `$defs/{name}` differently")));
                }
                defs.insert(name, def);
            }
        }
        calls.push(json!({
            "type": "object",
            "properties": {"name": {"const": f.name}, arguments_key: parameters},
            "required": ["name", arguments_key],
            "additionalProperties": false
        }));
    }
    Ok((calls, (!defs.is_empty()).then_some(Value::Object(defs))))
}

/// The JSON schema of the generic format's output.
fn output_schema(called: &[&Function], may_answer: bool, parallel: bool) -> Result<Value, GenerationError> {
    let (calls, defs) = call_schemas(called, "arguments")?;
    let mut list = json!({"type": "array", "items": {"anyOf": calls}, "minItems": 1});
    if !parallel {
        list["maxItems"] = json!(1);
    }
    let call = json!({"type": "object", "properties": {"tool_calls": list}, "required": ["tool_calls"], "additionalProperties": false});
    let mut schema = if may_answer {
        let answer = json!({"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"], "additionalProperties": false});
        json!({"anyOf": [call, answer]})
    } else {
        call
    };
    if let Some(defs) = defs {
        schema["$defs"] = defs;
    }
    Ok(schema)
}

fn instructions(functions: &[Function], may_answer: bool, parallel: bool) -> String {
    let tools: Vec<Value> = functions
        .iter()
        .map(|f| {
            let mut tool = json!({"name": f.name, "parameters": f.parameters});
            if let Some(description) = &f.description {
                tool["description"] = json!(description);
            }
            tool
        })
        .collect();
    let mut text = format!(
        "You can call these tools:\n{}\nTo call {}, reply with JSON only: {{\"tool_calls\": [{{\"name\": <the tool's name>, \"arguments\": <its arguments>}}]}}.",
        serde_json::to_string(&tools).expect("tools serialize"),
        if parallel { "tools" } else { "a tool" },
    );
    if may_answer {
        text.push_str(" To reply to the user instead, reply with JSON only: {\"response\": <your reply>}.");
    }
    text
}

/// An assistant message's `tool_calls`, each as `{"id", "type", "function": {"name",
/// "arguments"}}` with its arguments as a JSON value (as chat templates read them).
pub fn assistant_calls(index: usize, calls: &Value) -> Result<Vec<Value>, GenerationError> {
    let param = format!("messages[{index}].tool_calls");
    let invalid = |message: &str| GenerationError::invalid_value(param.clone(), format!("`{param}` {message}"));
    let Some(calls) = calls.as_array() else { return Err(invalid("must be a list")) };
    let mut read = Vec::with_capacity(calls.len());
    for call in calls {
        let f = call.get("function").ok_or_else(|| invalid("holds a call without `function`"))?;
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| invalid("holds a call without a function name"))?;
        let arguments = match f.get("arguments") {
            Some(Value::String(text)) => serde_json::from_str::<Value>(text).map_err(|_| invalid("holds arguments that are not JSON"))?,
            Some(Value::Object(_)) => f["arguments"].clone(),
            _ => return Err(invalid("holds a call without `arguments`")),
        };
        let mut out = json!({"type": "function", "function": {"name": name, "arguments": arguments}});
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            out["id"] = json!(id);
        }
        read.push(out);
    }
    Ok(read)
}

/// An assistant message's `tool_calls` in the generic format, as the model writes them
/// (its content).
pub fn assistant_calls_text(index: usize, calls: &Value) -> Result<String, GenerationError> {
    let written: Vec<Value> = assistant_calls(index, calls)?
        .into_iter()
        .map(|call| json!({"name": call["function"]["name"], "arguments": call["function"]["arguments"]}))
        .collect();
    Ok(generated_layout(&json!({"tool_calls": written})))
}

/// A `tool` message's content, as the user turn the model reads it in.
pub fn tool_result_text(tool_call_id: Option<&str>, content: &str) -> String {
    generated_layout(&json!({"tool_response": {"tool_call_id": tool_call_id, "content": content}}))
}

/// JSON in the layout the grammar generates (`", "` and `": "`, no other whitespace,
/// Python's default), so earlier tool calls come back as the text (and tokens) the model
/// produced.
fn generated_layout(value: &Value) -> String {
    swell_workers::llm::chat_template::python_json(value)
}

/// One call read from the output.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    /// The arguments as JSON text (OpenAI's `arguments` is a string).
    pub arguments: String,
}

/// What a tools request's output says.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolOutput {
    Calls(Vec<ParsedCall>),
    /// A reply in text (`{"response": ...}`), or the raw output when it is not in the
    /// format (cut short by `max_tokens`).
    Text(String),
}

pub fn parse_output(text: &str) -> ToolOutput {
    let Ok(Value::Object(output)) = serde_json::from_str::<Value>(text) else {
        return ToolOutput::Text(partial_response(text).unwrap_or_else(|| text.to_string()));
    };
    if let Some(Value::String(reply)) = output.get("response") {
        return ToolOutput::Text(reply.clone());
    }
    let calls = output.get("tool_calls").and_then(Value::as_array).map(|calls| {
        calls
            .iter()
            .filter_map(|call| {
                let name = call.get("name")?.as_str()?.to_string();
                Some(ParsedCall { name, arguments: call.get("arguments")?.to_string() })
            })
            .collect::<Vec<_>>()
    });
    match calls {
        Some(calls) if !calls.is_empty() => ToolOutput::Calls(calls),
        _ => ToolOutput::Text(text.to_string()),
    }
}

/// The text of a reply cut short by `max_tokens` (`{"response": "The weath`): what it
/// holds so far, unescaped, as the stream reader reads it.
fn partial_response(text: &str) -> Option<String> {
    let mut reader = ToolStreamReader::default();
    let mut reply = None::<String>;
    for delta in reader.push(text) {
        match delta {
            ToolDelta::Content(more) => reply.get_or_insert_with(String::new).push_str(&more),
            ToolDelta::CallStart { .. } | ToolDelta::Arguments { .. } => return None,
        }
    }
    reply
}

/// The message and finish reason of a chat choice whose output is `text` (finished
/// with `finish`): with tools (their format), calls become `tool_calls`
/// (`finish_reason: "tool_calls"`) and a reply becomes content.
pub fn chat_message(
    response_id: &str,
    choice: usize,
    text: String,
    finish: Option<&'static str>,
    tools: Option<ToolFormat>,
) -> (ChatMessageOut, Option<&'static str>) {
    let called = |finish: Option<&'static str>| if finish == Some("stop") { Some("tool_calls") } else { finish };
    match tools {
        None => (ChatMessageOut { role: "assistant", content: Some(text), tool_calls: None }, finish),
        Some(ToolFormat::Generic) => match parse_output(&text) {
            ToolOutput::Calls(calls) => {
                let calls = tool_calls_out(response_id, choice, calls);
                (ChatMessageOut { role: "assistant", content: None, tool_calls: Some(calls) }, called(finish))
            }
            ToolOutput::Text(text) => (ChatMessageOut { role: "assistant", content: Some(text), tool_calls: None }, finish),
        },
        Some(format) => {
            let mut reader = NativeReader::new(format);
            let mut deltas = reader.push(&text);
            deltas.extend(reader.finish());
            let (mut content, mut calls) = (String::new(), Vec::<ParsedCall>::new());
            for delta in deltas {
                match delta {
                    ToolDelta::Content(more) => content.push_str(&more),
                    ToolDelta::CallStart { name, .. } => calls.push(ParsedCall { name, arguments: String::new() }),
                    ToolDelta::Arguments { text, .. } => {
                        if let Some(call) = calls.last_mut() {
                            call.arguments.push_str(&text);
                        }
                    }
                }
            }
            let content = (!content.is_empty() || calls.is_empty()).then_some(content);
            if calls.is_empty() {
                return (ChatMessageOut { role: "assistant", content, tool_calls: None }, finish);
            }
            let calls = tool_calls_out(response_id, choice, calls);
            (ChatMessageOut { role: "assistant", content, tool_calls: Some(calls) }, called(finish))
        }
    }
}

/// OpenAI's form of parsed calls.
pub fn tool_calls_out(response_id: &str, choice: usize, calls: Vec<ParsedCall>) -> Vec<ToolCallOut> {
    calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| ToolCallOut {
            id: call_id(response_id, choice, i),
            kind: "function",
            function: FunctionCallOut { name: call.name, arguments: call.arguments },
        })
        .collect()
}

/// The id of call `index` of the response `response_id`.
pub fn call_id(response_id: &str, choice: usize, index: usize) -> String {
    let suffix: String = response_id.rsplit('-').next().unwrap_or(response_id).chars().take(12).collect();
    format!("call_{suffix}_{choice}_{index}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::structured::ConstraintSupport;

    fn limits() -> ModelLimits {
        ModelLimits { context_length: 64, max_tokens_default: 16, max_tokens_limit: 48, prompt_logprobs: true, constraints: ConstraintSupport::ALL }
    }

    fn plan(value: Value) -> Result<Option<ToolPlan>, GenerationError> {
        tool_plan(&serde_json::from_value(value).unwrap(), &limits(), ToolFormat::Generic)
    }

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"]}}})
    }

    fn schema_of(plan: &ToolPlan) -> Value {
        match &plan.constraint {
            Some(Constraint::JsonSchema(text)) => serde_json::from_str(text).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn choices_shape_the_output_schema() {
        assert_eq!(plan(json!({})).unwrap(), None);
        assert_eq!(plan(json!({"tools": [weather()], "tool_choice": "none"})).unwrap(), None);
        let auto = plan(json!({"tools": [weather()]})).unwrap().unwrap();
        assert_eq!(schema_of(&auto)["anyOf"].as_array().unwrap().len(), 2, "a call or a reply");
        assert!(auto.instructions.contains("get_weather") && auto.instructions.contains("\"response\""));
        let required = plan(json!({"tools": [weather()], "tool_choice": "required", "parallel_tool_calls": false})).unwrap().unwrap();
        let schema = schema_of(&required);
        assert_eq!(schema["properties"]["tool_calls"]["maxItems"], 1);
        assert!(!required.instructions.contains("\"response\""));
        let named = json!({"tools": [weather(), {"type": "function", "function": {"name": "other"}}],
            "tool_choice": {"type": "function", "function": {"name": "other"}}});
        let schema = schema_of(&plan(named).unwrap().unwrap());
        let calls = schema["properties"]["tool_calls"]["items"]["anyOf"].as_array().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["properties"]["name"]["const"], "other");
    }

    #[test]
    fn nested_definitions_move_to_the_root() {
        let tool = json!({"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "required": ["a"],
            "$defs": {"A": {"type": "integer"}}}}});
        let schema = schema_of(&plan(json!({"tools": [tool], "tool_choice": "required"})).unwrap().unwrap());
        assert_eq!(schema["$defs"]["A"]["type"], "integer");
    }

    #[test]
    fn bad_tools_are_named() {
        let param = |value: Value| plan(value).unwrap_err().param().map(str::to_string);
        assert_eq!(param(json!({"tools": {}})).as_deref(), Some("tools"));
        assert_eq!(param(json!({"tools": [{"type": "retrieval"}]})).as_deref(), Some("tools[0].type"));
        assert_eq!(param(json!({"tools": [{"type": "function", "function": {"name": "a b"}}]})).as_deref(), Some("tools[0].function.name"));
        assert_eq!(param(json!({"tools": [weather(), weather()]})).as_deref(), Some("tools[1].function.name"));
        assert_eq!(param(json!({"tools": [weather()], "tool_choice": "always"})).as_deref(), Some("tool_choice"));
        assert_eq!(
            param(json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "nope"}}})).as_deref(),
            Some("tool_choice")
        );
        assert_eq!(param(json!({"tool_choice": "required"})).as_deref(), Some("tool_choice"));
        let none = ModelLimits { constraints: ConstraintSupport::NONE, ..limits() };
        let error = tool_plan(&serde_json::from_value(json!({"tools": [weather()]})).unwrap(), &none, ToolFormat::Generic).unwrap_err();
        assert_eq!((error.code(), error.param()), ("unsupported_parameter", Some("tools")));
    }

    #[test]
    fn native_formats_leave_auto_free_and_constrain_required_calls() {
        let request = |value: Value| serde_json::from_value::<BTreeMap<String, Value>>(value).unwrap();
        let auto = tool_plan(&request(json!({"tools": [weather()]})), &limits(), ToolFormat::Hermes).unwrap().unwrap();
        assert_eq!((auto.constraint, auto.instructions.as_str(), auto.tools[0]["function"]["name"].as_str()), (None, "", Some("get_weather")));
        let required = tool_plan(&request(json!({"tools": [weather()], "tool_choice": "required"})), &limits(), ToolFormat::Hermes)
            .unwrap()
            .unwrap();
        assert!(matches!(&required.constraint, Some(Constraint::Grammar(lark)) if lark.contains("<tool_call>")), "{required:?}");
        let llama = tool_plan(&request(json!({"tools": [weather()], "tool_choice": "required"})), &limits(), ToolFormat::Llama3)
            .unwrap()
            .unwrap();
        let Some(Constraint::JsonSchema(schema)) = &llama.constraint else { panic!("{llama:?}") };
        let schema: Value = serde_json::from_str(schema).unwrap();
        assert_eq!(schema["anyOf"][0]["required"], json!(["name", "parameters"]));
        // An engine without grammars cannot require a Hermes call, and says so.
        let no_grammar = ModelLimits { constraints: ConstraintSupport { grammar: false, ..ConstraintSupport::ALL }, ..limits() };
        let error = tool_plan(&request(json!({"tools": [weather()], "tool_choice": "required"})), &no_grammar, ToolFormat::Hermes)
            .unwrap_err();
        assert_eq!((error.code(), error.param()), ("unsupported_parameter", Some("tool_choice")));
    }

    #[test]
    fn native_outputs_read_back_into_calls_and_content() {
        let text = "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>".to_string();
        let (message, finish) = chat_message("chatcmpl-1-x", 0, text, Some("stop"), Some(ToolFormat::Hermes));
        assert_eq!(finish, Some("tool_calls"));
        assert_eq!(message.content.as_deref(), Some("Checking."));
        let calls = message.tool_calls.unwrap();
        assert_eq!((calls[0].function.name.as_str(), calls[0].function.arguments.as_str()), ("get_weather", r#"{"city":"Paris"}"#));
        let (message, finish) = chat_message("chatcmpl-1-x", 0, "Sunny.".into(), Some("stop"), Some(ToolFormat::Llama3));
        assert_eq!((message.content.as_deref(), message.tool_calls.is_none(), finish), (Some("Sunny."), true, Some("stop")));
    }

    #[test]
    fn outputs_read_back_into_calls_or_text() {
        let calls = parse_output(r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}]}"#);
        assert_eq!(
            calls,
            ToolOutput::Calls(vec![ParsedCall { name: "get_weather".into(), arguments: r#"{"city":"Paris","unit":"c"}"#.into() }])
        );
        assert_eq!(parse_output(r#"{"response": "Hello"}"#), ToolOutput::Text("Hello".into()));
        assert_eq!(parse_output(r#"{"tool_calls": [{"na"#), ToolOutput::Text(r#"{"tool_calls": [{"na"#.into()));
        // A reply cut short keeps what it said, unescaped, without a cut escape.
        assert_eq!(parse_output(r#"{"response": "Say \"hi\" then \u00e9\u00"#), ToolOutput::Text("Say \"hi\" then é".into()));
        assert_eq!(call_id("chatcmpl-1234-abcd", 0, 2), "call_abcd_0_2");
    }

    #[test]
    fn earlier_turns_are_written_as_the_model_wrote_them() {
        let calls = json!([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1, \"a\": [1,2]}"}}]);
        // The layout the grammar generates, keys in their order.
        assert_eq!(assistant_calls_text(1, &calls).unwrap(), r#"{"tool_calls": [{"name": "f", "arguments": {"x": 1, "a": [1, 2]}}]}"#);
        let bad = json!([{"function": {"name": "f", "arguments": "{oops"}}]);
        assert_eq!(assistant_calls_text(3, &bad).unwrap_err().param(), Some("messages[3].tool_calls"));
        assert_eq!(tool_result_text(Some("c1"), "18C"), r#"{"tool_response": {"tool_call_id": "c1", "content": "18C"}}"#);
    }
}
