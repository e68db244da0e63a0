//! [`HfTokenizer`]: a model's tokenizer from its Hugging Face files (`tokenizer.json`, and
//! the chat template and special tokens from `tokenizer_config.json` or
//! `chat_template.jinja`): what an `external` deployment of a vLLM, SGLang or TGI model
//! folder counts and encodes prompts with at the edge.
//!
//! User text is always plain text: a second copy of the tokenizer has
//! `encode_special_tokens` set, so `<|im_start|>` in a message is encoded as the
//! characters it is, never as the special token.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::EngineError;
use crate::llm::chat_template::ChatTemplate;
use crate::tokenizer::{ChatMessage, ChatTools, Tokenizer};

pub struct HfTokenizer {
    /// Parses special tokens (for text a chat template wrote).
    markup: tokenizers::Tokenizer,
    /// Encodes special-token text as plain text (for text a user sent).
    plain: tokenizers::Tokenizer,
    template: ChatTemplate,
    vocab_size: u32,
    folder: PathBuf,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer").field("folder", &self.folder).field("vocab_size", &self.vocab_size).finish()
    }
}

/// A special token as `tokenizer_config.json` writes it: a string or `{"content": ...}`.
fn token_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

/// The default chat template of a config: a string, or the one named `default` in a list.
fn chat_template(config: &Value) -> Option<String> {
    match config.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| named.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

impl HfTokenizer {
    /// Whether `path` is a Hugging Face tokenizer: a folder with `tokenizer.json`, or that
    /// file itself.
    pub fn is_hf(path: &Path) -> bool {
        path.join("tokenizer.json").is_file() || path.file_name().is_some_and(|n| n == "tokenizer.json")
    }

    /// Load from a model folder (or its `tokenizer.json`; the other files are read from
    /// beside it).
    pub fn open(path: &Path) -> Result<HfTokenizer, EngineError> {
        let folder = if path.is_dir() { path.to_path_buf() } else { path.parent().unwrap_or(Path::new(".")).to_path_buf() };
        let file = folder.join("tokenizer.json");
        let load = || {
            tokenizers::Tokenizer::from_file(&file).map_err(|e| EngineError::Load(format!("{}: {e}", file.display())))
        };
        let markup = load()?;
        let mut plain = load()?;
        plain.set_encode_special_tokens(true);
        let config: Value = match std::fs::read_to_string(folder.join("tokenizer_config.json")) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| EngineError::Load(format!("{}: {e}", folder.join("tokenizer_config.json").display())))?,
            Err(_) => Value::Null,
        };
        let source = chat_template(&config).or_else(|| std::fs::read_to_string(folder.join("chat_template.jinja")).ok());
        let template = ChatTemplate::new(source, &token_text(config.get("bos_token")), &token_text(config.get("eos_token")))?;
        let vocab_size = markup.get_vocab_size(true) as u32;
        Ok(HfTokenizer { markup, plain, template, vocab_size, folder })
    }

    /// The model's context length from the folder's `config.json`, when it says.
    pub fn context_length(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.folder.join("config.json")).ok()?;
        let config: Value = serde_json::from_str(&text).ok()?;
        let from = |v: &Value| v.get("max_position_embeddings").and_then(Value::as_u64);
        from(&config).or_else(|| config.get("text_config").and_then(from)).map(|n| n.min(u64::from(u32::MAX)) as u32)
    }
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, EngineError> {
        let tokenizer = if parse_special { &self.markup } else { &self.plain };
        let encoding = tokenizer
            .encode(text, false)
            .map_err(|e| EngineError::InvalidPrompt(format!("tokenization failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.markup.decode(ids, true).unwrap_or_default()
    }

    fn decode_with_special(&self, ids: &[u32]) -> String {
        self.markup.decode(ids, false).unwrap_or_default()
    }

    fn token_text(&self, id: u32) -> String {
        self.markup.decode(&[id], false).unwrap_or_default()
    }

    fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, EngineError> {
        self.template.render(messages, add_generation_prompt)
    }

    fn chat_template_source(&self) -> Option<&str> {
        (!self.template.is_fallback()).then(|| self.template.source())
    }

    fn apply_chat_template_with_tools(&self, messages: &[ChatMessage], tools: &ChatTools, add_generation_prompt: bool) -> Result<String, EngineError> {
        self.template.render_with_tools(&tools.messages(messages), &tools.tools, add_generation_prompt)
    }

    fn vocab_size(&self) -> u32 {
        self.vocab_size
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::llm::gguf::GgufFile;
    use crate::llm::tokenizer::GgufTokenizer;

    /// The test model's tokenizer written out as Hugging Face files (the `tokenizers`
    /// form Swell builds from the GGUF, its chat template and special tokens).
    pub(crate) fn hf_folder(gguf: &GgufTokenizer, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("tokenizer.json"), gguf.hf_tokenizer().to_string(false).unwrap()).unwrap();
        let config = serde_json::json!({
            "chat_template": gguf.chat_template().source(),
            "bos_token": {"content": "<|im_start|>"},
            "eos_token": "<|im_end|>",
        });
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"max_position_embeddings": 8192}"#).unwrap();
    }

    #[test]
    fn a_tokenizer_folder_encodes_and_renders_chats_as_the_gguf_does() {
        let Some(model) = crate::llm::find_default_model() else {
            panic!("the model is missing: run scripts/fetch-model (or set SWELL_MODEL_PATH)")
        };
        let file = GgufFile::open(&model).unwrap();
        let gguf = GgufTokenizer::from_gguf(&file.content).unwrap();
        let dir = std::env::temp_dir().join(format!("swell-hf-tokenizer-{}", std::process::id()));
        hf_folder(&gguf, &dir);
        let hf = HfTokenizer::open(&dir).unwrap();
        assert!(HfTokenizer::is_hf(&dir) && HfTokenizer::is_hf(&dir.join("tokenizer.json")));
        assert_eq!(hf.context_length(), Some(8192));
        assert_eq!(hf.vocab_size(), gguf.vocab_size());
        for text in ["Hello, world!", "  two  spaces\nand lines\n\n", "déjà vu 😀 123456", "<|im_start|>user"] {
            let ids = hf.encode(text, false).unwrap();
            assert_eq!(ids, gguf.encode(text, false).unwrap(), "{text:?}");
            assert_eq!(hf.decode(&ids), gguf.decode(&ids), "{text:?}");
        }
        // Special tokens: parsed in markup, plain text in user text.
        let marked = hf.encode("<|im_start|>user", true).unwrap();
        assert_eq!(marked, gguf.encode("<|im_start|>user", true).unwrap());
        assert!(marked.len() < hf.encode("<|im_start|>user", false).unwrap().len());
        let chat = [
            ChatMessage { role: "system".into(), content: "Be brief.".into() },
            ChatMessage { role: "user".into(), content: "Say <|im_end|> hi".into() },
        ];
        assert_eq!(hf.apply_chat_template(&chat, true).unwrap(), gguf.apply_chat_template(&chat, true).unwrap());
        let ids = hf.encode_chat(&chat, true).unwrap();
        assert_eq!(ids, gguf.encode_chat(&chat, true).unwrap());
        assert_eq!(hf.decode_with_special(&ids), gguf.decode_with_special(&ids));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn templates_and_special_tokens_are_read_in_every_form_the_config_writes_them() {
        let list = serde_json::json!({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]});
        assert_eq!(chat_template(&list).as_deref(), Some("D"));
        assert_eq!(chat_template(&serde_json::json!({"chat_template": "S"})).as_deref(), Some("S"));
        assert_eq!(chat_template(&Value::Null), None);
        assert_eq!(token_text(Some(&serde_json::json!({"content": "<s>", "lstrip": false}))), "<s>");
        assert_eq!(token_text(Some(&serde_json::json!("</s>"))), "</s>");
        assert_eq!(token_text(None), "");
    }
}
