//! The tool-call format a model was trained on, read from its chat template, and the
//! reading of its output in that format.
//!
//! - [`ToolFormat::Hermes`] (Hermes 2/3, Qwen 2.5 and later, and the many templates that
//!   copied them): the template lists the tools in `<tools></tools>`; the model answers
//!   with text and/or calls, each `<tool_call>\n{"name": N, "arguments": A}\n</tool_call>`;
//!   results come back as `tool` messages the template wraps in `<tool_response>`.
//! - [`ToolFormat::Llama3`] (Llama 3.1 to 3.3, JSON tool calling): the template shows the
//!   tools as JSON; the model answers with one call, the JSON object `{"name": N,
//!   "parameters": A}`, or with text; results come back as `ipython` turns.
//! - [`ToolFormat::Generic`]: any other template (SmolLM2's has no tools): the format of
//!   [`tools`](crate::generation::tools), described in the system message.
//!
//! With a native format the template renders the tools and earlier calls itself, and
//! `tool_choice: "auto"` leaves the output free, as the model was trained; `"required"`
//! and a named function constrain it to the format's calls, each call's arguments
//! fitting its function's schema (a grammar for Hermes, a JSON schema for Llama 3).
//! [`NativeReader`] reads the output as it streams: text outside calls is content, a
//! call is told when it is whole, and a call that does not parse is content as written.

use serde_json::{json, Value};
use swell_cluster::Constraint;

use crate::generation::tool_stream::ToolDelta;

/// See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolFormat {
    Generic,
    Hermes,
    Llama3,
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";

impl ToolFormat {
    /// The format of a chat template (`None`: the model has none of its own).
    pub fn of_template(source: Option<&str>) -> ToolFormat {
        let Some(source) = source.filter(|s| s.contains("tools")) else { return ToolFormat::Generic };
        if source.contains(HERMES_OPEN) && source.contains(HERMES_CLOSE) {
            ToolFormat::Hermes
        } else if source.contains("<|start_header_id|>") && source.contains("ipython") {
            ToolFormat::Llama3
        } else {
            ToolFormat::Generic
        }
    }

    pub fn is_native(self) -> bool {
        self != ToolFormat::Generic
    }

    /// Whether the format carries several calls in one answer.
    pub fn parallel_calls(self) -> bool {
        self != ToolFormat::Llama3
    }

    /// The output constraint of a native format when a call is required. `calls` are
    /// the JSON schemas of the calls allowed, `{"name": N, "arguments": A}` (Llama 3
    /// names the arguments `parameters`); `defs` the functions' `$defs`, hoisted.
    pub fn call_constraint(self, calls: Vec<Value>, defs: Option<Value>, parallel: bool) -> Constraint {
        let mut call = json!({"anyOf": calls});
        if let Some(defs) = defs {
            call["$defs"] = defs;
        }
        match self {
            ToolFormat::Hermes => {
                let schema = swell_workers::llm::constraint::compact(call);
                let literal = |text: &str| serde_json::to_string(text).expect("strings serialize");
                let repeat = if parallel { format!(" ({} call)*", literal("\n")) } else { String::new() };
                Constraint::Grammar(format!(
                    "start: call{repeat}\ncall: {} %json {schema} {}\n",
                    literal(&format!("{HERMES_OPEN}\n")),
                    literal(&format!("\n{HERMES_CLOSE}")),
                ))
            }
            ToolFormat::Llama3 | ToolFormat::Generic => Constraint::JsonSchema(call.to_string()),
        }
    }

    /// The key of a call's arguments in this format.
    pub fn arguments_key(self) -> &'static str {
        if self == ToolFormat::Llama3 { "parameters" } else { "arguments" }
    }
}

/// Reads a native format's output as it streams (see the module docs).
#[derive(Debug)]
pub struct NativeReader {
    format: ToolFormat,
    text: String,
    /// Bytes of `text` told so far (as content or calls).
    told: usize,
    calls: usize,
    yielded: bool,
    /// Llama 3: the output opened with `{` and is read whole at the end.
    whole: bool,
}

impl NativeReader {
    pub fn new(format: ToolFormat) -> Self {
        Self { format, text: String::new(), told: 0, calls: 0, yielded: false, whole: false }
    }

    /// Reads `piece`; returns what it adds.
    pub fn push(&mut self, piece: &str) -> Vec<ToolDelta> {
        self.text.push_str(piece);
        let out = match self.format {
            ToolFormat::Hermes => self.read_hermes(false),
            _ => self.read_llama3(false),
        };
        self.yielded |= !out.is_empty();
        out
    }

    /// The output ended: what is left to tell.
    pub fn finish(&mut self) -> Vec<ToolDelta> {
        let out = match self.format {
            ToolFormat::Hermes => self.read_hermes(true),
            _ => self.read_llama3(true),
        };
        self.yielded |= !out.is_empty();
        out
    }

    pub fn calls(&self) -> usize {
        self.calls
    }

    pub fn yielded(&self) -> bool {
        self.yielded
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn read_hermes(&mut self, end: bool) -> Vec<ToolDelta> {
        let mut out = Vec::new();
        loop {
            let rest = &self.text[self.told..];
            match rest.find(HERMES_OPEN) {
                Some(at) => {
                    let Some(close) = rest[at..].find(HERMES_CLOSE) else {
                        if end {
                            // Cut short inside a call: what was written is content.
                            let len = rest.len();
                            self.content(len, &mut out, false);
                        } else {
                            // A call still being written: tell the text before it.
                            self.content(at, &mut out, true);
                        }
                        break;
                    };
                    let body = &rest[at + HERMES_OPEN.len()..at + close];
                    let call = read_call(body, "arguments");
                    let block_end = self.told + at + close + HERMES_CLOSE.len();
                    match call {
                        Some((name, arguments)) => {
                            self.content(at, &mut out, true);
                            self.call(name, arguments, &mut out);
                        }
                        // Not a call after all: its text is content.
                        None => {
                            let whole = block_end - self.told;
                            self.content(whole, &mut out, false);
                        }
                    }
                    self.told = block_end;
                }
                None => {
                    // Hold back what may be the start of `<tool_call>`.
                    let keep = if end { 0 } else { partial_suffix(rest, HERMES_OPEN) };
                    self.content(rest.len() - keep, &mut out, !end);
                    if end && self.told < self.text.len() {
                        self.told = self.text.len();
                    }
                    break;
                }
            }
        }
        out
    }

    fn read_llama3(&mut self, end: bool) -> Vec<ToolDelta> {
        let mut out = Vec::new();
        if self.told == 0 && !self.whole {
            let started = self.text.trim_start();
            if started.is_empty() {
                return out;
            }
            self.whole = started.starts_with('{');
        }
        if !self.whole {
            let len = self.text.len() - self.told;
            self.content(len, &mut out, false);
        } else if end {
            match read_call(&self.text, "parameters") {
                Some((name, arguments)) => self.call(name, arguments, &mut out),
                None => out.push(ToolDelta::Content(self.text.clone())),
            }
            self.told = self.text.len();
        }
        out
    }

    /// Tells `len` more bytes as content; with `hold_space`, whitespace at its end waits
    /// (it may only separate calls).
    fn content(&mut self, len: usize, out: &mut Vec<ToolDelta>, hold_space: bool) {
        let piece = &self.text[self.told..self.told + len];
        let piece = if hold_space { piece.trim_end() } else { piece };
        // Whitespace before the first word or between calls is not content.
        let piece = if self.told == 0 || self.calls > 0 { piece.trim_start() } else { piece };
        if !piece.is_empty() {
            out.push(ToolDelta::Content(piece.to_string()));
        }
        let consumed = &self.text[self.told..self.told + len];
        let advance = if hold_space { consumed.trim_end().len() } else { len };
        self.told += advance;
    }

    fn call(&mut self, name: String, arguments: String, out: &mut Vec<ToolDelta>) {
        out.push(ToolDelta::CallStart { index: self.calls, name });
        out.push(ToolDelta::Arguments { index: self.calls, text: arguments });
        self.calls += 1;
    }
}

/// A call's name and arguments (JSON text) from `{"name": N, "<key>": A}`; arguments
/// written as a JSON string are taken as its text.
fn read_call(body: &str, key: &str) -> Option<(String, String)> {
    let Value::Object(call) = serde_json::from_str::<Value>(body.trim()).ok()? else { return None };
    let name = call.get("name")?.as_str()?.to_string();
    let arguments = match call.get(key).or_else(|| call.get("arguments")) {
        Some(Value::String(text)) => serde_json::from_str::<Value>(text).ok()?.to_string(),
        Some(value @ Value::Object(_)) => value.to_string(),
        None => "{}".to_string(),
        Some(_) => return None,
    };
    Some((name, arguments))
}

/// The length of the longest end of `text` that begins `tag`.
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(format: ToolFormat, pieces: &[&str]) -> Vec<ToolDelta> {
        let mut reader = NativeReader::new(format);
        let mut out: Vec<ToolDelta> = pieces.iter().flat_map(|p| reader.push(p)).collect();
        out.extend(reader.finish());
        // Adjacent content pieces joined: what the client reads.
        let mut joined: Vec<ToolDelta> = Vec::new();
        for delta in out {
            match (joined.last_mut(), delta) {
                (Some(ToolDelta::Content(text)), ToolDelta::Content(more)) => text.push_str(&more),
                (_, delta) => joined.push(delta),
            }
        }
        joined
    }

    fn call(index: usize, name: &str, arguments: &str) -> [ToolDelta; 2] {
        [
            ToolDelta::CallStart { index, name: name.into() },
            ToolDelta::Arguments { index, text: arguments.into() },
        ]
    }

    #[test]
    fn formats_are_read_from_templates() {
        assert_eq!(ToolFormat::of_template(None), ToolFormat::Generic);
        assert_eq!(ToolFormat::of_template(Some("{{ messages }}")), ToolFormat::Generic);
        let hermes = "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools> <tool_call></tool_call>{% endif %}";
        assert_eq!(ToolFormat::of_template(Some(hermes)), ToolFormat::Hermes);
        let llama = "{% if tools %}<|start_header_id|>ipython<|end_header_id|>{% endif %}";
        assert_eq!(ToolFormat::of_template(Some(llama)), ToolFormat::Llama3);
    }

    #[test]
    fn hermes_calls_and_text_are_told_as_they_complete() {
        let pieces = ["Let me check.\n<tool", "_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": ",
            "\"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}\n</tool_call>"];
        let mut expected = vec![ToolDelta::Content("Let me check.".into())];
        expected.extend(call(0, "get_weather", r#"{"city":"Paris"}"#));
        expected.extend(call(1, "f", r#"{"x":1}"#));
        assert_eq!(read_all(ToolFormat::Hermes, &pieces), expected);
        // Streaming: the text before a call is told before the call is whole.
        let mut reader = NativeReader::new(ToolFormat::Hermes);
        assert_eq!(reader.push("Hi <tool_c"), vec![ToolDelta::Content("Hi".into())]);
        assert_eq!(reader.push("all>\n{\"name\""), vec![]);
        assert_eq!(reader.calls(), 0);
    }

    #[test]
    fn hermes_text_without_calls_and_broken_calls_are_content() {
        assert_eq!(read_all(ToolFormat::Hermes, &["Hello", " there <b>"]), vec![ToolDelta::Content("Hello there <b>".into())]);
        let broken = "<tool_call>\n{\"name\": oops}\n</tool_call>";
        assert_eq!(read_all(ToolFormat::Hermes, &[broken]), vec![ToolDelta::Content(broken.into())]);
        // Cut short inside a call: what was written is content.
        assert_eq!(
            read_all(ToolFormat::Hermes, &["<tool_call>\n{\"name\": \"f\""]),
            vec![ToolDelta::Content("<tool_call>\n{\"name\": \"f\"".into())]
        );
    }

    #[test]
    fn llama3_answers_are_one_call_or_text() {
        let expected: Vec<ToolDelta> = call(0, "get_weather", r#"{"city":"Paris"}"#).into();
        assert_eq!(read_all(ToolFormat::Llama3, &["{\"name\": \"get_weather\", ", "\"parameters\": {\"city\": \"Paris\"}}"]), expected);
        assert_eq!(read_all(ToolFormat::Llama3, &["It is ", "sunny."]), vec![ToolDelta::Content("It is sunny.".into())]);
        assert_eq!(read_all(ToolFormat::Llama3, &["{not json"]), vec![ToolDelta::Content("{not json".into())]);
    }

    #[test]
    fn required_calls_compile_into_each_formats_constraint() {
        let calls = vec![json!({"type": "object", "properties": {"name": {"const": "f"}, "arguments": {"type": "object"}},
            "required": ["name", "arguments"], "additionalProperties": false})];
        let hermes = ToolFormat::Hermes.call_constraint(calls.clone(), None, true);
        assert!(matches!(&hermes, Constraint::Grammar(lark) if lark.contains("%json")), "{hermes:?}");
        swell_workers::llm::constraint::check(&hermes).unwrap();
        swell_workers::llm::constraint::check(&ToolFormat::Hermes.call_constraint(calls.clone(), None, false)).unwrap();
        assert!(matches!(ToolFormat::Llama3.call_constraint(calls, None, false), Constraint::JsonSchema(_)));
    }
}
