//! The tokenizer as a `tokenizers::Tokenizer` (`GgufTokenizer::hf_tokenizer`): the BPE
//! model of the GGUF's vocabulary and merges, llama.cpp's pre-tokenizer, added tokens.

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::vocab::TokenKind;
use super::PreTokenizerKind;
use crate::error::EngineError;

/// The `tokenizers` tokenizer: BPE, llama.cpp's pre-tokenizer, added tokens.
pub(super) fn build_hf_tokenizer(
    tokens: &[&str],
    kinds: &[TokenKind],
    merges: &[&str],
    pre_tokenizer: PreTokenizerKind,
) -> Result<tokenizers::Tokenizer, EngineError> {
    // A text that is twice in the vocabulary maps to its last id, as in llama.cpp.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, text)| (text.to_string(), id as u32))
        .collect();

    let mut pairs = Vec::with_capacity(merges.len());
    let mut unusable = 0usize;
    for merge in merges {
        // llama.cpp splits at the first space after the first character.
        let split = merge
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(at, _)| at);
        let Some(at) = split else {
            unusable += 1;
            continue;
        };
        let (left, right) = (&merge[..at], &merge[at + 1..]);
        let usable = vocab.contains_key(left)
            && vocab.contains_key(right)
            && vocab.contains_key(&format!("{left}{right}"));
        if usable {
            pairs.push((left.to_string(), right.to_string()));
        } else {
            unusable += 1;
        }
    }
    if unusable > 0 {
        tracing::warn!(
            unusable,
            "skipped GGUF merges that are malformed or leave the vocabulary"
        );
    }

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(pre_tokenizer.ignore_merges())
        .build()
        .map_err(|e| EngineError::Load(format!("cannot build the BPE model: {e}")))?;

    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for regex in pre_tokenizer.regexes() {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| EngineError::Load(format!("pre-tokenizer expression {regex:?}: {e}")))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, true, false).into());

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Sequence::new(steps)));
    tokenizer.with_decoder(Some(ByteLevel::new(false, true, false)));

    let added = |wanted: fn(TokenKind) -> bool, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(kinds)
            .filter(|(text, kind)| !text.is_empty() && wanted(**kind))
            .map(|(text, _)| AddedToken::from(text.to_string(), special).normalized(false))
            .collect()
    };
    tokenizer
        .add_special_tokens(added(TokenKind::is_special, true))
        .map_err(|e| EngineError::Load(format!("special tokens: {e}")))?;
    tokenizer
        .add_tokens(added(|kind| kind == TokenKind::UserDefined, false))
        .map_err(|e| EngineError::Load(format!("user-defined tokens: {e}")))?;
    Ok(tokenizer)
}
