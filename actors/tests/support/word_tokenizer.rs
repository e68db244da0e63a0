//! A tokenizer for tests whose engines are scripted (a fake, for tests only): a word's
//! token is its length; a chat is its messages' texts joined by new lines.

use swell_workers::{ChatMessage, EngineError, Tokenizer};

pub struct WordTokenizer;

impl Tokenizer for WordTokenizer {
    fn encode(&self, text: &str, _: bool) -> Result<Vec<u32>, EngineError> {
        Ok(text.split_whitespace().map(|w| w.len() as u32).collect())
    }
    fn decode(&self, ids: &[u32]) -> String {
        format!("{ids:?}")
    }
    fn token_text(&self, id: u32) -> String {
        id.to_string()
    }
    fn apply_chat_template(&self, messages: &[ChatMessage], _: bool) -> Result<String, EngineError> {
        Ok(messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"))
    }
    fn vocab_size(&self) -> u32 {
        100
    }
}
