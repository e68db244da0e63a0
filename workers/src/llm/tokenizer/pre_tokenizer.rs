//! [`PreTokenizerKind`]: llama.cpp's pre-tokenizers and their regular expressions, and
//! the split of text into words with them.

use tokenizers::utils::SysRegex;

/// The pre-tokenizers this module knows: llama.cpp's families of `tokenizer.ggml.pre`
/// names, with llama.cpp's regular expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// `default` (and a missing name): llama.cpp's default list of four expressions.
    Default,
    /// `gpt-2` and the models that use GPT-2's expression alone (`phi-2`, `mpt`, `olmo`, ...).
    Gpt2,
    /// `smollm`, `starcoder`, `refact`, ...: every digit alone, then GPT-2's expression.
    DigitsThenGpt2,
    /// `llama-bpe` (Llama 3) and its family: numbers in groups of up to three digits,
    /// and whole words taken from the vocabulary before merging (`ignore_merges`).
    Llama3,
    /// `dbrx`, `smaug-bpe`: Llama 3's expression without `ignore_merges`.
    Llama3RegexOnly,
    /// `qwen2` and its family: Llama 3's expression with every digit alone.
    Qwen2,
}

/// GPT-2's expression, `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`,
/// as two expressions without the look-ahead.
///
/// The look-ahead only matters in a run of whitespace followed by a non-space: GPT-2
/// takes the run but its last character as one piece, and that last character starts the
/// next piece (glued to the word when it is a space, alone otherwise). The first
/// expression, `\s?\S+`, cuts the text exactly there: each non-space run with at most one
/// whitespace character before it is a piece, and what whitespace is left (the rest of a
/// longer run, or a run at the end) is a gap between pieces. Within those pieces the
/// look-ahead can never apply, so the second expression is GPT-2's with the plain `\s+`
/// (which Hugging Face's version ends with anyway) in its place. Checked against llama.cpp
/// on 3,000 texts.
const GPT2_REGEX: [&str; 2] = [
    r"\s?\S+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+",
];
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl PreTokenizerKind {
    /// The kind of a `tokenizer.ggml.pre` name, as llama.cpp maps it.
    pub fn from_gguf_name(name: &str) -> Option<PreTokenizerKind> {
        Some(match name {
            "default" => PreTokenizerKind::Default,
            "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "mpt" | "olmo"
            | "jais" | "trillion" | "granite-docling" => PreTokenizerKind::Gpt2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" | "mellum2" => PreTokenizerKind::DigitsThenGpt2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" => PreTokenizerKind::Llama3,
            "dbrx" | "smaug-bpe" => PreTokenizerKind::Llama3RegexOnly,
            "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" => PreTokenizerKind::Qwen2,
            _ => return None,
        })
    }

    /// The names [`from_gguf_name`](Self::from_gguf_name) knows, for error messages.
    pub const KNOWN_NAMES: &'static str = "default, gpt-2, phi-2, mpt, olmo, smollm, \
        starcoder, refact, command-r, llama-bpe (llama3), dbrx, smaug-bpe, qwen2, stablelm2";

    /// llama.cpp's expressions, applied in order, each to the pieces the previous left
    /// (GPT-2's as two, see `GPT2_REGEX` in the source).
    pub fn regexes(self) -> &'static [&'static str] {
        match self {
            PreTokenizerKind::Default => &[
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_REGEX[0],
                GPT2_REGEX[1],
                r"\p{N}+",
                "[0-9][0-9][0-9]",
            ],
            PreTokenizerKind::Gpt2 => &GPT2_REGEX,
            PreTokenizerKind::DigitsThenGpt2 => &[r"\p{N}", GPT2_REGEX[0], GPT2_REGEX[1]],
            PreTokenizerKind::Llama3 | PreTokenizerKind::Llama3RegexOnly => &[LLAMA3_REGEX],
            PreTokenizerKind::Qwen2 => &[QWEN2_REGEX],
        }
    }

    /// Whether a word that is itself in the vocabulary is taken whole, without merging.
    pub fn ignore_merges(self) -> bool {
        self == PreTokenizerKind::Llama3
    }

    /// Whether a bos token is added when the GGUF does not say (`add_bos_token`).
    pub fn adds_bos_by_default(self) -> bool {
        self == PreTokenizerKind::Llama3
    }
}

/// Applies `regexes` in order, the first to `text`, each next one to every match and gap
/// of the previous, and hands the final pieces to `word` in order.
pub(super) fn split_into_words<'t>(
    regexes: &[SysRegex],
    text: &'t str,
    word: &mut impl FnMut(&'t str),
) {
    if text.is_empty() {
        return;
    }
    let Some((regex, rest)) = regexes.split_first() else {
        word(text);
        return;
    };
    let mut end_of_previous = 0;
    for (start, end) in regex.find_iter(text) {
        if start > end_of_previous {
            split_into_words(rest, &text[end_of_previous..start], word);
        }
        split_into_words(rest, &text[start..end], word);
        end_of_previous = end;
    }
    split_into_words(rest, &text[end_of_previous..], word);
}
