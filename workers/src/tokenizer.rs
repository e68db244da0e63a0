//! The `Tokenizer` trait: the part of a model the gateway needs to validate a request.

use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// One chat message, content already flattened to text.
///
/// The role is written by the chat template as markup, so callers pass only roles they
/// accept. The content is never markup: [`Tokenizer::encode_chat`] encodes it as plain
/// text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A conversation's tools, for a chat template that renders them itself
/// ([`Tokenizer::encode_chat_with_tools`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatTools {
    /// OpenAI's list of tools (`[{"type": "function", "function": {...}}]`).
    pub tools: serde_json::Value,
    /// Per message, in order: its tool fields (`tool_calls` with arguments as JSON
    /// objects, `tool_call_id`), added to it as the template sees it.
    pub fields: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl ChatTools {
    /// `messages` as the template sees them: `role`, `content` and their tool fields.
    pub fn messages(&self, messages: &[ChatMessage]) -> Vec<serde_json::Value> {
        messages
            .iter()
            .enumerate()
            .map(|(index, message)| {
                let mut object = serde_json::Map::new();
                object.insert("role".into(), message.role.clone().into());
                object.insert("content".into(), message.content.clone().into());
                if let Some(fields) = self.fields.get(index) {
                    object.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                serde_json::Value::Object(object)
            })
            .collect()
    }
}

/// A stretch of text to encode, and whether special tokens in it are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextPiece<'t> {
    /// Text a chat template wrote: special-token strings become their ids.
    Markup(&'t str),
    /// Text a user sent: always plain text.
    Plain(&'t str),
}

pub trait Tokenizer: Send + Sync + 'static {
    /// Token ids of `text`. With `parse_special`, special-token strings in the text (such
    /// as `<|im_start|>` in a rendered chat template) become their special ids: only for
    /// text the caller trusts to write them, never for text a user sent unasked.
    fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, EngineError>;

    /// Token ids of the concatenation of `pieces`, with special tokens parsed in
    /// [`TextPiece::Markup`] pieces only (a special token's text must lie wholly in one).
    /// The default encodes each piece apart. A tokenizer whose words can span pieces
    /// overrides it, so that where no `Plain` piece holds a special token's text the ids
    /// are those of `encode` of the whole text with `parse_special`.
    fn encode_pieces(&self, pieces: &[TextPiece<'_>]) -> Result<Vec<u32>, EngineError> {
        let mut ids = Vec::new();
        for piece in pieces {
            match *piece {
                TextPiece::Markup(text) => ids.extend(self.encode(text, true)?),
                TextPiece::Plain(text) => ids.extend(self.encode(text, false)?),
            }
        }
        Ok(ids)
    }

    /// Text of a sequence of ids (special tokens skipped).
    fn decode(&self, ids: &[u32]) -> String;

    /// Text of a sequence of ids with special tokens written out (`<|im_start|>`): the
    /// prompt of an engine that takes only text. The default skips them, as `decode`.
    fn decode_with_special(&self, ids: &[u32]) -> String {
        self.decode(ids)
    }

    /// The text of one token, as shown in logprobs (may be a partial UTF-8 character,
    /// rendered lossily).
    fn token_text(&self, id: u32) -> String;

    /// Render the model's chat template for `messages`, ending with the assistant's turn
    /// opened when `add_generation_prompt`.
    fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError>;

    /// Token ids of a conversation: the chat template rendered with
    /// [`apply_chat_template`](Self::apply_chat_template), special tokens parsed in the
    /// template's own markup only. The messages' text is always plain text, so a message
    /// cannot open or close a turn. A template that changes message text beyond trimming
    /// it, or writes different markup depending on it, is refused with
    /// [`EngineError::InvalidPrompt`] (see [`crate::chat_encoding`]).
    fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, EngineError> {
        crate::chat_encoding::encode_chat(self, messages, add_generation_prompt)
    }

    /// The chat template's source, when the model has one of its own (what it can
    /// render, such as a native tool-call format, is read from it).
    fn chat_template_source(&self) -> Option<&str> {
        None
    }

    /// Renders the chat template with tools ([`ChatTools`]); a tokenizer whose template
    /// cannot refuses.
    fn apply_chat_template_with_tools(
        &self,
        _messages: &[ChatMessage],
        _tools: &ChatTools,
        _add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        Err(EngineError::InvalidPrompt("this model's chat template does not render tools".into()))
    }

    /// [`encode_chat`](Self::encode_chat) with tools rendered by the template. The
    /// tools and earlier calls are markup the template writes from JSON: any that holds
    /// the text of a special token is refused.
    fn encode_chat_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &ChatTools,
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, EngineError> {
        crate::chat_encoding::encode_chat_with_tools(self, messages, tools, add_generation_prompt)
    }

    /// Ids of the vocabulary.
    fn vocab_size(&self) -> u32;
}
