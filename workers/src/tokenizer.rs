//! The `Tokenizer` trait: the part of a model the gateway needs to validate a request.

use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// One chat message, content already flattened to text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub trait Tokenizer: Send + Sync + 'static {
    /// Token ids of `text`. With `parse_special`, special-token strings in the text (such
    /// as `<|im_start|>` in a rendered chat template) become their special ids.
    fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, EngineError>;

    /// Text of a sequence of ids (special tokens skipped).
    fn decode(&self, ids: &[u32]) -> String;

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

    /// Ids of the vocabulary.
    fn vocab_size(&self) -> u32;
}
