//! [`ChatTemplate`]: a model's Jinja chat template, rendered the way Hugging Face renders it.
//!
//! GGUF files carry the template of the original `tokenizer_config.json` as
//! `tokenizer.chat_template`. Hugging Face renders it with Jinja2 in a sandboxed
//! environment with `trim_blocks=True, lstrip_blocks=True` and the `loopcontrols`
//! extension, with these names defined: `messages` (a list of `{role, content}` maps),
//! `add_generation_prompt`, the special tokens' texts (`bos_token`, `eos_token`, ...) and
//! a `raise_exception(message)` function that templates call to reject a conversation.
//! This module does the same with minijinja:
//!
//! - the same whitespace handling (`trim_blocks`, `lstrip_blocks`, no trailing newline kept);
//! - Python string, list and dict methods (`.strip()`, `.startswith()`, `.items()`, ...)
//!   through `minijinja_contrib::pycompat`, as templates are written against Python;
//! - `raise_exception(message)` fails the render; the message reaches the client as an
//!   [`EngineError::InvalidPrompt`];
//! - `bos_token` and `eos_token` are the texts of the GGUF's bos and eos tokens (an empty
//!   string when the model has none, as llama.cpp does);
//! - `tojson` writes JSON as Hugging Face's does (Python's `json.dumps`: `", "` and `": "`
//!   separators, or `indent`, keys in their order, no HTML escaping), where minijinja's
//!   own escapes `<`, `>`, `&` and `'`;
//! - with [`ChatTemplate::render_with_tools`], `tools` (OpenAI's list of tools) and
//!   messages with their tool fields (`tool_calls`, `tool_call_id`), as
//!   `transformers`' `apply_chat_template(messages, tools=...)` passes them.
//!
//! The template is compiled once, when the tokenizer is built; a template that does not
//! compile fails the model load. A GGUF without a template gets [`CHATML_TEMPLATE`]
//! (ChatML, the format of the `sim` engine and of most small instruct models), and
//! [`ChatTemplate::is_fallback`] says so.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde};
use minijinja::{context, Environment, Error as JinjaError, ErrorKind as JinjaErrorKind, Value};

use crate::error::EngineError;
use crate::tokenizer::ChatMessage;

/// The template used when a GGUF has none: ChatML, with no default system prompt.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The name the compiled template has inside its environment (it shows in render errors).
const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template. Rendering takes `&self` and is safe from many threads.
#[derive(Debug)]
pub struct ChatTemplate {
    environment: Environment<'static>,
    /// The source again, for [`Self::source`] (the environment keeps its own copy).
    source: String,
    is_fallback: bool,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source` (or [`CHATML_TEMPLATE`] when `None`). `bos_token` and `eos_token`
    /// are the texts the template sees under those names.
    pub fn new(
        source: Option<String>,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, EngineError> {
        let is_fallback = source.is_none();
        let source = source.unwrap_or_else(|| CHATML_TEMPLATE.to_string());

        let mut environment = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| EngineError::Load(format!("chat template syntax config: {e}")))?;
        environment.set_syntax(syntax);
        environment
            .set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function("raise_exception", raise_exception);
        environment.add_filter("tojson", python_tojson);
        environment
            .add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| EngineError::Load(format!("chat template does not compile: {e}")))?;

        Ok(ChatTemplate {
            environment,
            source,
            is_fallback,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// Another template for the same model (its `bos_token` and `eos_token`): a
    /// deployment's own template in place of the one its model file carries.
    pub fn replaced(&self, source: String) -> Result<ChatTemplate, EngineError> {
        ChatTemplate::new(Some(source), &self.bos_token, &self.eos_token)
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when the GGUF had no template and ChatML is used instead.
    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    /// Renders the conversation; with `add_generation_prompt`, the text ends with the
    /// assistant's turn opened.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let context = context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        self.template().render(context).map_err(render_error)
    }

    /// Renders a conversation with tools: `messages` are OpenAI-style message objects
    /// (`role`, `content`, and `tool_calls` / `tool_call_id` where they have them) and
    /// `tools` OpenAI's list of tools.
    pub fn render_with_tools(
        &self,
        messages: &[serde_json::Value],
        tools: &serde_json::Value,
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let context = context! {
            messages => Value::from(Serde(messages)),
            tools => Value::from(Serde(tools)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        self.template().render(context).map_err(render_error)
    }

    fn template(&self) -> minijinja::Template<'_, '_> {
        self.environment
            .get_template(TEMPLATE_NAME)
            .expect("the chat template was added when the environment was built")
    }
}

/// The `raise_exception(message)` function of Hugging Face's template environment.
fn raise_exception(message: String) -> Result<Value, JinjaError> {
    Err(
        JinjaError::new(JinjaErrorKind::InvalidOperation, message.clone())
            .with_source(RaisedException(message)),
    )
}

/// Hugging Face's `tojson` (`json.dumps(value, ensure_ascii=False, indent=indent)`):
/// `", "` and `": "` between items, or `indent` spaces a level with `","` and `": "`.
fn python_tojson(value: Value, kwargs: Kwargs) -> Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Python's other options are accepted with the values templates pass.
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(JinjaErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let text = match indent {
        Some(width) => {
            let spaces = vec![b' '; width];
            let mut out = Vec::new();
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            serde::Serialize::serialize(&json, &mut serde_json::Serializer::with_formatter(&mut out, formatter))
                .expect("a JSON value serializes");
            String::from_utf8(out).expect("JSON is UTF-8")
        }
        None => python_json(&json),
    };
    Ok(Value::from_safe_string(text))
}

/// JSON as Python's `json.dumps` writes it by default: `", "` and `": "` separators, no
/// other whitespace, non-ASCII text as it is.
pub fn python_json(value: &serde_json::Value) -> String {
    use std::io::{Result, Write};

    struct Spaced;
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + Write>(&mut self, out: &mut W, first: bool) -> Result<()> {
            if first { Ok(()) } else { out.write_all(b", ") }
        }
        fn begin_object_key<W: ?Sized + Write>(&mut self, out: &mut W, first: bool) -> Result<()> {
            if first { Ok(()) } else { out.write_all(b", ") }
        }
        fn begin_object_value<W: ?Sized + Write>(&mut self, out: &mut W) -> Result<()> {
            out.write_all(b": ")
        }
    }
    let mut text = Vec::new();
    serde::Serialize::serialize(value, &mut serde_json::Serializer::with_formatter(&mut text, Spaced))
        .expect("a JSON value serializes");
    String::from_utf8(text).expect("JSON is UTF-8")
}

/// Attached to the error of `raise_exception`, so a template rejecting a conversation is
/// told apart from a template failing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RaisedException(String);

fn render_error(error: JinjaError) -> EngineError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = cause {
        if let Some(raised) = current.downcast_ref::<RaisedException>() {
            return EngineError::InvalidPrompt(format!(
                "the chat template rejected the messages: {}",
                raised.0
            ));
        }
        cause = current.source();
    }
    EngineError::InvalidPrompt(format!("the chat template failed to render: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_string(),
            content: content.to_string(),
        }
    }

    #[test]
    fn fallback_is_chatml() {
        let template = ChatTemplate::new(None, "", "<|im_end|>").unwrap();
        assert!(template.is_fallback());
        let text = template
            .render(
                &[message("system", "Be brief."), message("user", "Hi")],
                true,
            )
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn blocks_are_trimmed_as_hugging_face_does() {
        let source = "{% for message in messages %}\n    {{ message.role }}: {{ message.content }}\n{% endfor %}\n".to_string();
        let template = ChatTemplate::new(Some(source), "", "").unwrap();
        let text = template
            .render(&[message("user", "a"), message("assistant", "b")], false)
            .unwrap();
        assert_eq!(text, "    user: a\n    assistant: b\n");
    }

    #[test]
    fn python_methods_and_special_token_names_work() {
        let source =
            "{{ bos_token }}{% for m in messages %}{% if m.content.strip().startswith('x') %}\
                      {{ m.content.strip().upper() }}{% endif %}{% endfor %}{{ eos_token }}"
                .to_string();
        let template = ChatTemplate::new(Some(source), "<s>", "</s>").unwrap();
        let text = template
            .render(&[message("user", "  xy  "), message("user", "no")], false)
            .unwrap();
        assert_eq!(text, "<s>XY</s>");
    }

    #[test]
    fn raise_exception_becomes_invalid_prompt_with_its_message() {
        let source = "{% if messages[0]['role'] == 'system' %}\
                      {{ raise_exception('System role not supported') }}{% endif %}ok"
            .to_string();
        let template = ChatTemplate::new(Some(source), "", "").unwrap();
        assert_eq!(
            template.render(&[message("user", "hi")], false).unwrap(),
            "ok"
        );
        let error = template
            .render(&[message("system", "hi")], false)
            .unwrap_err();
        assert_eq!(error.code(), "invalid_prompt");
        assert!(
            error.to_string().contains("System role not supported"),
            "{error}"
        );
    }

    #[test]
    fn tojson_writes_json_as_python_does() {
        let source = "{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}".to_string();
        let template = ChatTemplate::new(Some(source), "", "").unwrap();
        let tools = serde_json::json!([{"name": "f", "b": ["x's <b>", 1], "a": {}}]);
        let text = template.render_with_tools(&[], &tools, false).unwrap();
        assert_eq!(
            text,
            "[{\"name\": \"f\", \"b\": [\"x's <b>\", 1], \"a\": {}}]|\
             {\n  \"name\": \"f\",\n  \"b\": [\n    \"x's <b>\",\n    1\n  ],\n  \"a\": {}\n}"
        );
    }

    #[test]
    fn messages_with_tool_fields_reach_the_template() {
        let source = "{% for m in messages %}{{ m.role }}:{% if 'tool_calls' in m %}\
                      {% for c in m.tool_calls %}{{ c.function.name }}{{ c.function.arguments | tojson }}{% endfor %}\
                      {% else %}{{ m.content }}{% endif %};{% endfor %}{{ tools | length }}"
            .to_string();
        let template = ChatTemplate::new(Some(source), "", "").unwrap();
        let messages = [
            serde_json::json!({"role": "user", "content": "hi"}),
            serde_json::json!({"role": "assistant", "content": "",
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]}),
        ];
        let text = template.render_with_tools(&messages, &serde_json::json!([{}, {}]), false).unwrap();
        assert_eq!(text, "user:hi;assistant:f{\"x\": 1};2");
    }

    #[test]
    fn a_template_that_does_not_compile_fails_the_load() {
        let error = ChatTemplate::new(Some("{% for %}".to_string()), "", "").unwrap_err();
        assert_eq!(error.code(), "model_load_failed");
        assert!(error.to_string().contains("chat template"), "{error}");
    }
}
