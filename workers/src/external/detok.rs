//! [`TextStream`]: incremental detokenization through any [`Tokenizer`], for engines
//! whose token ids Swell turns into text itself.
//!
//! The window method of Hugging Face's `DecodeStream` (also TGI's and vLLM's): decode
//! the ids from a prefix offset twice, without and with the new tokens, and release the
//! difference once it does not end in a replacement character (a character whose bytes
//! are not all there yet). Decoding from a few tokens back, not from the token alone,
//! keeps what a tokenizer does at word starts (SentencePiece's leading space) right.

use crate::tokenizer::Tokenizer;

#[derive(Debug, Default, Clone)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Where the decoding window starts.
    prefix: usize,
    /// Ids up to here have been released as text.
    read: usize,
}

impl TextStream {
    /// The text token `id` completes (empty while a character is unfinished).
    pub fn step(&mut self, tokenizer: &dyn Tokenizer, id: u32) -> String {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read]);
        let now = tokenizer.decode(&self.ids[self.prefix..]);
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            if let Some(new) = now.get(before.len()..).filter(|_| now.starts_with(&before)) {
                let new = new.to_string();
                self.prefix = self.read;
                self.read = self.ids.len();
                return new;
            }
            // The window's text changed before its end (a normalizer that looks ahead):
            // release what differs from the longest common prefix on.
            let common = before.char_indices().zip(now.chars()).take_while(|((_, a), b)| a == b).count();
            let from: usize = now.chars().take(common).map(char::len_utf8).sum();
            let new = now[from..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            return new;
        }
        String::new()
    }

    /// The held-back text, decoded lossily: call once at the end of a sequence.
    pub fn finish(&mut self, tokenizer: &dyn Tokenizer) -> String {
        if self.read == self.ids.len() {
            return String::new();
        }
        let before = tokenizer.decode(&self.ids[self.prefix..self.read]);
        let now = tokenizer.decode(&self.ids[self.prefix..]);
        self.prefix = self.read;
        self.read = self.ids.len();
        now.get(before.len()..).unwrap_or_default().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EngineError;
    use crate::tokenizer::ChatMessage;

    /// A byte-level tokenizer: id = byte; decode is lossy UTF-8, as real ones are.
    struct Bytes;

    impl Tokenizer for Bytes {
        fn encode(&self, text: &str, _: bool) -> Result<Vec<u32>, EngineError> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn decode(&self, ids: &[u32]) -> String {
            String::from_utf8_lossy(&ids.iter().map(|&i| i as u8).collect::<Vec<_>>()).into_owned()
        }
        fn token_text(&self, id: u32) -> String {
            self.decode(&[id])
        }
        fn apply_chat_template(&self, _: &[ChatMessage], _: bool) -> Result<String, EngineError> {
            Ok(String::new())
        }
        fn vocab_size(&self) -> u32 {
            256
        }
    }

    #[test]
    fn a_character_split_over_tokens_comes_out_whole_and_the_text_adds_up() {
        let text = "aé€😀b";
        let mut stream = TextStream::default();
        let pieces: Vec<String> = Bytes.encode(text, false).unwrap().into_iter().map(|id| stream.step(&Bytes, id)).collect();
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| p.chars().all(|c| c != '\u{FFFD}')));
        assert_eq!(pieces.iter().filter(|p| !p.is_empty()).count(), 5, "one piece per character: {pieces:?}");
        assert_eq!(stream.finish(&Bytes), "");
    }

    #[test]
    fn an_unfinished_character_at_the_end_is_released_lossily_by_finish() {
        let mut stream = TextStream::default();
        assert_eq!(stream.step(&Bytes, b'a' as u32), "a");
        assert_eq!(stream.step(&Bytes, 0xE2), "");
        assert_eq!(stream.finish(&Bytes), "\u{FFFD}");
    }
}
