//! [`TokenKind`], a token's type in a GGUF, and every token's bytes: GPT-2's byte-level
//! alphabet read backwards, or the text of a special or user-defined token.

/// A token's type in a GGUF (`tokenizer.ggml.token_type`), as llama.cpp numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// 0: no type; decodes to nothing.
    Undefined,
    /// 1: an ordinary vocabulary token.
    Normal,
    /// 2: the unknown token; special.
    Unknown,
    /// 3: a control token such as `<|im_start|>`; special.
    Control,
    /// 4: a token added by the model's authors; always matched in text, always decoded.
    UserDefined,
    /// 5: a placeholder; decodes to nothing.
    Unused,
    /// 6: a token for one raw byte.
    Byte,
}

impl TokenKind {
    pub(super) fn from_gguf(value: i64) -> Option<TokenKind> {
        Some(match value {
            0 => TokenKind::Undefined,
            1 => TokenKind::Normal,
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => return None,
        })
    }

    /// Special tokens are parsed from text only on request and left out of decodes.
    pub fn is_special(self) -> bool {
        matches!(self, TokenKind::Control | TokenKind::Unknown)
    }
}

/// Every token's bytes in one buffer.
pub(super) struct TokenPieces {
    bytes: Vec<u8>,
    /// `offsets[id]..offsets[id + 1]` are token `id`'s bytes.
    offsets: Vec<usize>,
}

impl TokenPieces {
    pub(super) fn new(tokens: &[&str], kinds: &[TokenKind]) -> TokenPieces {
        let byte_of_char = byte_level_decoding_table();
        let mut bytes = Vec::with_capacity(tokens.iter().map(|t| t.len()).sum());
        let mut offsets = Vec::with_capacity(tokens.len() + 1);
        offsets.push(0);
        for (text, kind) in tokens.iter().zip(kinds) {
            match kind {
                TokenKind::Normal | TokenKind::Byte | TokenKind::Undefined | TokenKind::Unused => {
                    for c in text.chars() {
                        match byte_of_char.get(c as usize).copied().flatten() {
                            Some(byte) => bytes.push(byte),
                            // Not a byte-level character (a malformed vocabulary): keep it.
                            None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                }
                TokenKind::Unknown | TokenKind::Control | TokenKind::UserDefined => {
                    bytes.extend_from_slice(text.as_bytes())
                }
            }
            offsets.push(bytes.len());
        }
        TokenPieces { bytes, offsets }
    }

    pub(super) fn get(&self, id: u32) -> &[u8] {
        let id = id as usize;
        match (self.offsets.get(id), self.offsets.get(id + 1)) {
            (Some(&start), Some(&end)) => &self.bytes[start..end],
            _ => &[],
        }
    }
}

/// GPT-2's byte-level encoding read backwards: index a character's code point to get the
/// byte it stands for. Printable bytes (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) stand for
/// themselves; the 68 others are the characters from U+0100 on, in byte order.
pub(super) fn byte_level_decoding_table() -> [Option<u8>; 256 + 68] {
    let mut table = [None; 256 + 68];
    let mut next_shifted = 256;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        if printable {
            table[byte as usize] = Some(byte);
        } else {
            table[next_shifted] = Some(byte);
            next_shifted += 1;
        }
    }
    table
}
