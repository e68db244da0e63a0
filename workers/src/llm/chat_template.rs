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
//!   string when the model has none, as llama.cpp does).
//!
//! The template is compiled once, when the tokenizer is built; a template that does not
//! compile fails the model load. A GGUF without a template gets [`CHATML_TEMPLATE`]
//! (ChatML, the format of the `sim` engine and of most small instruct models), and
//! [`ChatTemplate::is_fallback`] says so.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
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
    fn a_template_that_does_not_compile_fails_the_load() {
        let error = ChatTemplate::new(Some("{% for %}".to_string()), "", "").unwrap_err();
        assert_eq!(error.code(), "model_load_failed");
        assert!(error.to_string().contains("chat template"), "{error}");
    }
}
