//! Text to ids on string slices (`FastEncoder`): added tokens cut out, the pre-tokenizer's
//! split into words, BPE of each word's byte-level spelling.

use tokenizers::utils::SysRegex;
use tokenizers::Model;

use super::pre_tokenizer::split_into_words;
use super::vocab::{byte_level_decoding_table, TokenKind};
use super::PreTokenizerKind;
use crate::error::EngineError;
use crate::tokenizer::TextPiece;

/// Text to ids, the three steps of the module docs on string slices.
pub(super) struct FastEncoder {
    added_tokens: AddedTokenMatcher,
    /// The pre-tokenizer's expressions, in order.
    splits: Vec<SysRegex>,
    /// GPT-2's byte-level alphabet: the character each byte is written as.
    char_of_byte: [char; 256],
}

impl FastEncoder {
    pub(super) fn new(
        pre_tokenizer: PreTokenizerKind,
        tokens: &[&str],
        kinds: &[TokenKind],
    ) -> Result<FastEncoder, EngineError> {
        let splits = pre_tokenizer
            .regexes()
            .iter()
            .map(|regex| {
                SysRegex::new(regex).map_err(|e| {
                    EngineError::Load(format!("pre-tokenizer expression {regex:?}: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut char_of_byte = ['\0'; 256];
        for (code_point, byte) in byte_level_decoding_table().iter().enumerate() {
            if let Some(byte) = byte {
                char_of_byte[*byte as usize] = char::from_u32(code_point as u32)
                    .expect("the table holds code points below 324");
            }
        }
        Ok(FastEncoder {
            added_tokens: AddedTokenMatcher::new(tokens, kinds),
            splits,
            char_of_byte,
        })
    }

    pub(super) fn encode(
        &self,
        model: &impl Model,
        text: &str,
        parse_special: bool,
        ids: &mut Vec<u32>,
    ) -> tokenizers::Result<()> {
        let mut word = String::new();
        let mut start = 0;
        while let Some((added_start, added_end, id, _)) =
            self.added_tokens.find(text, start, parse_special)
        {
            self.encode_plain_text(model, &text[start..added_start], &mut word, ids)?;
            ids.push(id);
            start = added_end;
        }
        self.encode_plain_text(model, &text[start..], &mut word, ids)
    }

    /// Special tokens are cut out of `Markup` pieces only; the text between them, across
    /// pieces, is encoded as one stretch without `parse_special` (user-defined tokens are
    /// cut out of it, as `encode` does). So the words and ids are those of `encode` of
    /// the whole text with `parse_special` wherever no `Plain` piece holds a special
    /// token's text.
    pub(super) fn encode_pieces(
        &self,
        model: &impl Model,
        pieces: &[TextPiece<'_>],
        ids: &mut Vec<u32>,
    ) -> tokenizers::Result<()> {
        let mut stretch = String::new();
        for piece in pieces {
            match *piece {
                TextPiece::Plain(text) => stretch.push_str(text),
                TextPiece::Markup(text) => {
                    let mut start = 0;
                    while let Some((added_start, added_end, id, is_special)) =
                        self.added_tokens.find(text, start, true)
                    {
                        stretch.push_str(&text[start..added_start]);
                        if is_special {
                            self.encode(model, &stretch, false, ids)?;
                            stretch.clear();
                            ids.push(id);
                        } else {
                            stretch.push_str(&text[added_start..added_end]);
                        }
                        start = added_end;
                    }
                    stretch.push_str(&text[start..]);
                }
            }
        }
        self.encode(model, &stretch, false, ids)
    }

    fn encode_plain_text(
        &self,
        model: &impl Model,
        text: &str,
        word: &mut String,
        ids: &mut Vec<u32>,
    ) -> tokenizers::Result<()> {
        let mut result = Ok(());
        split_into_words(&self.splits, text, &mut |piece| {
            if result.is_err() {
                return;
            }
            word.clear();
            word.extend(piece.bytes().map(|byte| self.char_of_byte[byte as usize]));
            match model.tokenize(word) {
                Ok(tokens) => ids.extend(tokens.iter().map(|token| token.id)),
                Err(e) => result = Err(e),
            }
        });
        result
    }
}

/// Finds added tokens' texts in text: the leftmost match, and of those the longest (as
/// the `tokenizers` added vocabulary does).
struct AddedTokenMatcher {
    /// `(text, id, is_special)`, longest text first.
    tokens: Vec<(String, u32, bool)>,
    /// Indexes into `tokens` by first byte.
    by_first_byte: Vec<Vec<usize>>,
    /// Whether any token is not special (then texts are searched without `parse_special`).
    any_user_defined: bool,
}

impl AddedTokenMatcher {
    fn new(tokens: &[&str], kinds: &[TokenKind]) -> AddedTokenMatcher {
        let mut added: Vec<(String, u32, bool)> = tokens
            .iter()
            .zip(kinds)
            .enumerate()
            .filter(|(_, (text, kind))| {
                !text.is_empty() && (kind.is_special() || **kind == TokenKind::UserDefined)
            })
            .map(|(id, (text, kind))| (text.to_string(), id as u32, kind.is_special()))
            .collect();
        // Longest first; for equal texts the last id, as in the vocabulary map.
        added.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(b.1.cmp(&a.1)));
        let mut by_first_byte = vec![Vec::new(); 256];
        for (index, (text, _, _)) in added.iter().enumerate() {
            by_first_byte[text.as_bytes()[0] as usize].push(index);
        }
        let any_user_defined = added.iter().any(|(_, _, is_special)| !is_special);
        AddedTokenMatcher {
            tokens: added,
            by_first_byte,
            any_user_defined,
        }
    }

    /// `(start, end, id, is_special)` of the first added token in `text[from..]`; special
    /// tokens only with `parse_special`.
    fn find(
        &self,
        text: &str,
        from: usize,
        parse_special: bool,
    ) -> Option<(usize, usize, u32, bool)> {
        if !parse_special && !self.any_user_defined {
            return None;
        }
        let bytes = text.as_bytes();
        for start in from..bytes.len() {
            for &index in &self.by_first_byte[bytes[start] as usize] {
                let (token, id, is_special) = &self.tokens[index];
                if (parse_special || !is_special) && bytes[start..].starts_with(token.as_bytes()) {
                    return Some((start, start + token.len(), *id, *is_special));
                }
            }
        }
        None
    }
}
