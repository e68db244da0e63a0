//! [`GgufTokenizer`]: the tokenizer of a GGUF model, with ids equal to llama.cpp's, and
//! [`DecodeStream`], incremental detokenization for streamed output.
//!
//! # What is read from the GGUF
//! - `tokenizer.ggml.model` must be `gpt2`: byte-level BPE (GPT-2, Llama 3, Qwen 2,
//!   SmolLM, StarCoder, ...). Other models (SentencePiece `llama`, WordPiece `bert`, ...)
//!   fail to load with [`EngineError::Load`] naming the model.
//! - `tokenizer.ggml.tokens` (the vocabulary; a token's index is its id),
//!   `tokenizer.ggml.merges` (`"left right"`, highest priority first) and
//!   `tokenizer.ggml.token_type` (llama.cpp's [`TokenKind`]; all `NORMAL` when absent).
//! - `tokenizer.ggml.pre`, the name of llama.cpp's pre-tokenizer: the regular expressions
//!   that split text into words before BPE. The names this module knows and their
//!   expressions are llama.cpp's ([`PreTokenizerKind`]); an unknown name fails the load
//!   with an error naming it. A missing name means llama.cpp's `default` (llama.cpp warns
//!   about it too).
//! - `tokenizer.ggml.bos_token_id`, `eos_token_id`, `eot_token_id`, `eom_token_id`,
//!   `add_bos_token` and `tokenizer.chat_template` (see [`crate::llm::chat_template`]).
//!
//! # How text becomes ids
//! As in llama.cpp, in three steps:
//! 1. **Added tokens** are cut out of the text first. Tokens whose type is `CONTROL` or
//!    `UNKNOWN` (such as `<|im_start|>`) are special: with `parse_special` their text
//!    becomes their single id; without, it is tokenized as plain text. `USER_DEFINED`
//!    tokens are cut out in either case. Where several match, the leftmost and then the
//!    longest wins.
//! 2. **Pre-tokenization** splits each stretch of plain text into words with llama.cpp's
//!    regular expressions for the GGUF's `tokenizer.ggml.pre`, applied in order, each to
//!    the pieces the previous one left (matches and the gaps between them are pieces).
//!    For `smollm` that is `\p{N}` (every digit alone), then GPT-2's expression, which is
//!    the split of Hugging Face's `Sequence[Digits(individual_digits=true),
//!    ByteLevel(add_prefix_space=false)]`. GPT-2's expression ends with a look-ahead,
//!    `\s+(?!\S)`, that makes it slow to run; it is used here as two expressions without
//!    it, which split every text the same way (see [`PreTokenizerKind::regexes`]).
//! 3. **BPE**: each word's bytes, in GPT-2's byte-level alphabet, are merged by the
//!    `tokenizers` BPE model built from the vocabulary and merges (with a word cache).
//!
//! A chat is encoded from pieces ([`Tokenizer::encode_pieces`]): special tokens are cut
//! out of the template's markup only, and the plain text between them, message text
//! included, goes through steps 2 and 3 as one stretch. A chat whose messages hold no
//! special token's text so gets the ids of its whole rendered text.
//!
//! These steps are also assembled as a `tokenizers::Tokenizer` (the BPE model, one
//! `Split` per expression, `ByteLevel(add_prefix_space=false, use_regex=false)`, the
//! added tokens, a `ByteLevel` decoder): [`GgufTokenizer::hf_tokenizer`]. `encode` does
//! not go through its pipeline: the pipeline keeps offsets and alignments for every
//! piece, which made it about three times slower than running the same expressions on
//! string slices and handing the words to the same BPE model. The tests check that both
//! give llama.cpp's ids.
//!
//! # How ids become text
//! Decoding is done here, on bytes, without the `tokenizers` decoder: each token has its
//! bytes, computed once at load, as llama.cpp's `token_to_piece` computes them: `NORMAL`
//! and `BYTE` tokens are their byte-level text mapped back to bytes; `CONTROL`, `UNKNOWN`
//! and `USER_DEFINED` tokens are their text as it is. A decode concatenates the bytes
//! (leaving out `CONTROL` and `UNKNOWN` tokens when special tokens are skipped, and
//! always `UNUSED` ones) and only then reads UTF-8 (lossily), so a character split over
//! tokens comes out whole. [`DecodeStream`] does the same one token at a time, holding
//! back the bytes of an unfinished character. There is no clean-up of spaces before
//! punctuation (llama.cpp's `clean_spaces` of `llama_detokenize`): the text is the
//! concatenation of the pieces, which is what llama.cpp's server streams.
//!
//! # End of generation
//! [`GgufTokenizer::eos_token_ids`] is the set of ids that end a generation:
//! - the GGUF's eos, eot and eom ids;
//! - every `CONTROL` token that marks the end of a turn (`<|im_end|>`, `<|eot_id|>`,
//!   `<|eom_id|>`, `<|end|>`, `<end_of_turn>`) and that the chat template writes: the
//!   template is what makes it the end of the assistant's turn;
//! - every `CONTROL` token that ends a document (`<|endoftext|>`, `<|end_of_text|>`),
//!   template or not: it is never valid inside an answer, and a chat model that misses
//!   its end-of-turn marker emits it. llama.cpp stops on all of these too.
//!
//! # Layout
//! - `load`: [`GgufTokenizer::from_gguf`]: typed reads of the GGUF's metadata and the
//!   ids that end a generation.
//! - `vocab`: [`TokenKind`] and every token's bytes (GPT-2's byte-level alphabet).
//! - `pre_tokenizer`: [`PreTokenizerKind`], llama.cpp's expressions, the split into words.
//! - `encode`: text to ids on string slices, with added tokens cut out first.
//! - `hf_pipeline`: the same steps as a `tokenizers::Tokenizer`.
//! - `decode_stream`: [`DecodeStream`].
//! - `tests`: ids, chat prompts and decodes of the reference model against llama.cpp's.

mod decode_stream;
mod encode;
mod hf_pipeline;
mod load;
mod pre_tokenizer;
#[cfg(test)]
mod tests;
mod vocab;

pub use decode_stream::DecodeStream;
pub use pre_tokenizer::PreTokenizerKind;
pub use vocab::TokenKind;

use std::collections::HashMap;
use std::fmt;

use crate::error::EngineError;
use crate::llm::chat_template::ChatTemplate;
use crate::tokenizer::{ChatMessage, ChatTools, TextPiece, Tokenizer};

use encode::FastEncoder;
use vocab::TokenPieces;

/// The tokenizer of a GGUF model (see the module docs). Built once per deployment and
/// shared: every method takes `&self`.
pub struct GgufTokenizer {
    /// The whole pipeline as a `tokenizers` tokenizer; `encode` uses its BPE model.
    hf: tokenizers::Tokenizer,
    encoder: FastEncoder,
    pieces: TokenPieces,
    kinds: Vec<TokenKind>,
    /// Text to id of every special and user-defined token.
    added_ids: HashMap<String, u32>,
    pre_tokenizer: PreTokenizerKind,
    pre_tokenizer_name: String,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    add_bos_token: bool,
    eos_token_ids: Vec<u32>,
    chat_template: ChatTemplate,
}

impl fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.kinds.len())
            .field("pre_tokenizer", &self.pre_tokenizer_name)
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("add_bos_token", &self.add_bos_token)
            .field(
                "chat_template_is_fallback",
                &self.chat_template.is_fallback(),
            )
            .finish()
    }
}

impl GgufTokenizer {
    /// The id of the bos token, if the model has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// The GGUF's eos id (`tokenizer.ggml.eos_token_id`); see also [`Self::eos_token_ids`].
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// Whether prompts for generation start with the bos token (`add_bos_token`).
    pub fn add_bos_token(&self) -> bool {
        self.add_bos_token
    }

    /// Every id that ends a generation, sorted (the rule is in the module docs).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_ids.clone()
    }

    /// Whether `id` ends a generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.binary_search(&id).is_ok()
    }

    /// The pre-tokenizer in use, and the GGUF's name for it.
    pub fn pre_tokenizer(&self) -> (PreTokenizerKind, &str) {
        (self.pre_tokenizer, &self.pre_tokenizer_name)
    }

    /// The same tokenizer as a `tokenizers::Tokenizer`, with special tokens parsed (call
    /// `set_encode_special_tokens(true)` on a clone for `parse_special` false). Its
    /// `encode` gives the ids of [`Tokenizer::encode`], more slowly, with offsets.
    pub fn hf_tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.hf
    }

    /// The model's chat template.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.chat_template
    }

    /// Uses `source` as the chat template in place of the GGUF's (a deployment's
    /// `chat_template` file); a template that does not compile is refused.
    pub fn set_chat_template(&mut self, source: String) -> Result<(), EngineError> {
        self.chat_template = self.chat_template.replaced(source)?;
        Ok(())
    }

    /// The type of token `id` (`None` outside the vocabulary).
    pub fn token_kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// The id of a special or user-defined token, by its text (`"<|im_end|>"`).
    pub fn added_token_id(&self, text: &str) -> Option<u32> {
        self.added_ids.get(text).copied()
    }

    /// The bytes token `id` stands for: its byte-level text mapped back to bytes, or the
    /// text of a special or user-defined token. Empty outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.pieces.get(id)
    }

    /// The bytes `id` adds to a decoded text: [`Self::token_bytes`], or nothing for an
    /// unused token, or for a special token when `skip_special_tokens`.
    pub fn piece_bytes(&self, id: u32, skip_special_tokens: bool) -> &[u8] {
        match self.token_kind(id) {
            None | Some(TokenKind::Undefined | TokenKind::Unused) => &[],
            Some(kind) if skip_special_tokens && kind.is_special() => &[],
            Some(_) => self.pieces.get(id),
        }
    }

    /// The bytes of a sequence of ids; [`Tokenizer::decode`] is this read as UTF-8.
    pub fn decode_bytes(&self, ids: &[u32], skip_special_tokens: bool) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(self.piece_bytes(id, skip_special_tokens));
        }
        bytes
    }

    /// Token ids of a prompt to generate from: [`Tokenizer::encode`], after the bos token
    /// when the model asks for it (`add_bos_token`) and the text does not already start
    /// with it (chat templates that write `{{ bos_token }}` would otherwise give two).
    pub fn encode_prompt(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, EngineError> {
        let ids = self.encode(text, parse_special)?;
        match self.bos_token_id {
            Some(bos) if self.add_bos_token && ids.first() != Some(&bos) => {
                let mut with_bos = Vec::with_capacity(ids.len() + 1);
                with_bos.push(bos);
                with_bos.extend_from_slice(&ids);
                Ok(with_bos)
            }
            _ => Ok(ids),
        }
    }
}

impl Tokenizer for GgufTokenizer {
    fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, EngineError> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        self.encoder
            .encode(self.hf.get_model(), text, parse_special, &mut ids)
            .map_err(|e| EngineError::InvalidPrompt(format!("tokenization failed: {e}")))?;
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> String {
        match String::from_utf8(self.decode_bytes(ids, true)) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    fn decode_with_special(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, false)).into_owned()
    }

    fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.token_bytes(id)).into_owned()
    }

    fn encode_pieces(&self, pieces: &[TextPiece<'_>]) -> Result<Vec<u32>, EngineError> {
        let mut ids = Vec::new();
        self.encoder
            .encode_pieces(self.hf.get_model(), pieces, &mut ids)
            .map_err(|e| EngineError::InvalidPrompt(format!("tokenization failed: {e}")))?;
        Ok(ids)
    }

    fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        self.chat_template.render(messages, add_generation_prompt)
    }

    fn chat_template_source(&self) -> Option<&str> {
        (!self.chat_template.is_fallback()).then(|| self.chat_template.source())
    }

    fn apply_chat_template_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &ChatTools,
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        self.chat_template.render_with_tools(&tools.messages(messages), &tools.tools, add_generation_prompt)
    }

    fn vocab_size(&self) -> u32 {
        self.kinds.len() as u32
    }
}
