//! [`DecodeStream`]: incremental detokenization of one sequence, for streamed output.

use super::GgufTokenizer;

/// Incremental detokenization of one sequence: [`step`](Self::step) takes the next id and
/// returns the text it completes. Bytes of a character split over tokens are held back
/// until the character is whole, so the concatenation of all `step` outputs and
/// [`flush`](Self::flush) is exactly the decode of all the ids (invalid UTF-8 included:
/// it becomes U+FFFD in the same places). Each step costs the token's bytes plus at most
/// three held-back bytes.
#[derive(Debug, Clone)]
pub struct DecodeStream {
    /// Bytes of an unfinished character (at most 3).
    pending: Vec<u8>,
    skip_special_tokens: bool,
}

impl Default for DecodeStream {
    fn default() -> Self {
        DecodeStream::new(true)
    }
}

impl DecodeStream {
    /// A stream that leaves special tokens out (as
    /// [`Tokenizer::decode`](crate::tokenizer::Tokenizer::decode) does) when
    /// `skip_special_tokens`, or writes their text.
    pub fn new(skip_special_tokens: bool) -> DecodeStream {
        DecodeStream {
            pending: Vec::new(),
            skip_special_tokens,
        }
    }

    /// The text that token `id` completes (empty while a character is unfinished).
    pub fn step(&mut self, tokenizer: &GgufTokenizer, id: u32) -> String {
        let bytes = tokenizer.piece_bytes(id, self.skip_special_tokens);
        if self.pending.is_empty() {
            if let Ok(text) = std::str::from_utf8(bytes) {
                return text.to_string();
            }
        }
        self.pending.extend_from_slice(bytes);
        let mut text = String::with_capacity(self.pending.len());
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(valid) => {
                    text.push_str(valid);
                    start = self.pending.len();
                }
                Err(error) => {
                    let valid_end = start + error.valid_up_to();
                    text.push_str(
                        std::str::from_utf8(&self.pending[start..valid_end])
                            .expect("valid_up_to marks valid UTF-8"),
                    );
                    match error.error_len() {
                        // An invalid sequence: one replacement character, as a lossy
                        // decode of the whole text writes.
                        Some(invalid_len) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            start = valid_end + invalid_len;
                        }
                        // An unfinished character at the end: wait for more bytes.
                        None => {
                            start = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        text
    }

    /// The text of held-back bytes at the end of the sequence (a replacement character
    /// if a character was left unfinished, otherwise empty); the stream is then empty.
    pub fn flush(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }

    /// How many bytes are held back.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }
}
