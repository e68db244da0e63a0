//! [`SimTokenizer`]: a word-level tokenizer good enough for realistic token counts.
//!
//! - ids 0 `<unk>`, 1 `<|im_start|>`, 2 `<|im_end|>` (also the end-of-sequence id);
//! - ids `3..3 + VOCAB.len()`: a fixed vocabulary of punctuation marks and a few hundred
//!   common English words (lowercase);
//! - any other word or mark gets a stable id hashed (FNV-1a) into
//!   `3 + VOCAB.len() .. SIM_VOCAB_SIZE`, so unknown text still counts one token per word.
//!
//! `encode` splits on whitespace and punctuation: one token per run of alphanumeric
//! characters and one per other character. `decode` puts a space before every word except
//! the first one and except after an opening mark (`(`, `[`, `{`, `'`, `-`, `/`, ...),
//! never before punctuation; hashed ids decode as `tok<id>`, special ids are skipped. So
//! `decode(encode(text))` gives back text made of vocabulary words and marks with
//! normalised spacing.

use std::collections::HashMap;

use crate::error::EngineError;
use crate::tokenizer::{ChatMessage, Tokenizer};

pub const UNK_ID: u32 = 0;
pub const IM_START_ID: u32 = 1;
pub const IM_END_ID: u32 = 2;
/// The end-of-sequence id (`<|im_end|>`, as in ChatML models).
pub const EOS_ID: u32 = IM_END_ID;
/// Ids are `0..SIM_VOCAB_SIZE`.
pub const SIM_VOCAB_SIZE: u32 = 32_000;

const SPECIALS: [&str; 3] = ["<unk>", "<|im_start|>", "<|im_end|>"];
pub(crate) const FIRST_VOCAB_ID: u32 = 3;

/// Punctuation marks first (ids 3..), then words roughly by frequency.
#[rustfmt::skip]
pub(crate) const VOCAB: &[&str] = &[
    ".", ",", "!", "?", ";", ":", "'", "\"", "(", ")", "-", "/", "[", "]", "{", "}", "<", ">",
    "|", "_", "*", "#", "=", "+", "%", "$", "@", "&", "`", "~", "the", "of", "and", "to", "a",
    "in", "is", "it", "you", "that", "he", "was", "for", "on", "are", "with", "as", "i", "his",
    "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "not", "word", "but",
    "what", "some", "we", "can", "out", "other", "were", "all", "there", "when", "up", "use",
    "your", "how", "said", "an", "each", "she", "which", "do", "their", "time", "if", "will",
    "way", "about", "many", "then", "them", "write", "would", "like", "so", "these", "her",
    "long", "make", "thing", "see", "him", "two", "has", "look", "more", "day", "could", "go",
    "come", "did", "number", "sound", "no", "most", "people", "my", "over", "know", "water",
    "than", "call", "first", "who", "may", "down", "side", "been", "now", "find", "any", "new",
    "work", "part", "take", "get", "place", "made", "live", "where", "after", "back", "little",
    "only", "round", "man", "year", "came", "show", "every", "good", "me", "give", "our",
    "under", "name", "very", "through", "just", "form", "sentence", "great", "think", "say",
    "help", "low", "line", "differ", "turn", "cause", "much", "mean", "before", "move", "right",
    "boy", "old", "too", "same", "tell", "does", "set", "three", "want", "air", "well", "also",
    "play", "small", "end", "put", "home", "read", "hand", "port", "large", "spell", "add",
    "even", "land", "here", "must", "big", "high", "such", "follow", "act", "why", "ask", "men",
    "change", "went", "light", "kind", "off", "need", "house", "picture", "try", "us", "again",
    "animal", "point", "mother", "world", "near", "build", "self", "earth", "father", "head",
    "stand", "own", "page", "should", "country", "found", "answer", "school", "grow", "study",
    "still", "learn", "plant", "cover", "food", "sun", "four", "between", "state", "keep",
    "eye", "never", "last", "let", "thought", "city", "tree", "cross", "farm", "hard", "start",
    "might", "story", "saw", "far", "sea", "draw", "left", "late", "run", "while", "press",
    "close", "night", "real", "life", "few", "north", "open", "seem", "together", "next",
    "white", "children", "begin", "got", "walk", "example", "ease", "paper", "group", "always",
    "music", "those", "both", "mark", "often", "letter", "until", "mile", "river", "car",
    "feet", "care", "second", "book", "carry", "took", "science", "eat", "room", "friend",
    "began", "idea", "fish", "mountain", "stop", "once", "base", "hear", "horse", "cut", "sure",
    "watch", "color", "face", "wood", "main", "enough", "plain", "girl", "usual", "young",
    "ready", "above", "ever", "red", "list", "though", "feel", "talk", "bird", "soon", "body",
    "dog", "family", "direct", "pose", "leave", "song", "measure", "door", "product", "black",
    "short", "numeral", "class", "wind", "question", "happen", "complete", "ship", "area",
    "half", "rock", "order", "fire", "south", "problem", "piece", "told", "knew", "pass",
    "since", "top", "whole", "king", "space", "heard", "best", "hour", "better", "true",
    "during", "hundred", "five", "remember", "step", "early", "hold", "west", "ground",
    "interest", "reach", "fast", "verb", "sing", "listen", "six", "table", "travel", "less",
    "morning", "ten", "simple", "several", "vowel", "toward", "war", "lay", "against",
    "pattern", "slow", "center", "love", "person", "money", "serve", "appear", "road", "map",
    "rain", "rule", "govern", "pull", "cold", "notice", "voice", "unit", "power", "town",
    "fine", "certain", "fly", "fall", "lead", "cry", "dark", "machine", "note", "wait", "plan",
    "figure", "star", "box", "noun", "field", "rest", "correct", "able", "pound", "done",
    "beauty", "drive", "stood", "contain", "front", "teach", "week", "final", "gave", "green",
    "oh", "quick", "develop", "ocean", "warm", "free", "minute", "strong", "special", "mind",
    "behind", "clear", "tail", "produce", "fact", "street", "inch", "multiply", "nothing",
    "course", "stay", "wheel", "full", "force", "blue", "object", "decide", "surface", "deep",
    "moon", "island", "foot", "system", "busy", "test", "record", "boat", "common", "gold",
    "possible", "plane", "instead", "dry", "wonder", "laugh", "thousand", "ago", "ran", "check",
    "game", "shape", "equate", "hot", "miss", "brought", "heat", "snow", "tire", "bring", "yes",
    "distant", "fill", "east", "paint", "language", "among", "model", "token", "data", "server",
    "request", "because", "hello", "hi", "please", "thanks", "user", "assistant",
];

/// Marks after which the next token attaches without a space.
fn is_opening_mark(s: &str) -> bool {
    matches!(
        s,
        "(" | "[" | "{" | "'" | "\"" | "-" | "/" | "<" | "_" | "@" | "#" | "$" | "`"
    )
}

/// Marks that take a leading space like words do.
fn is_bracket(s: &str) -> bool {
    matches!(s, "(" | "[" | "{")
}

/// What a valid id denotes.
enum Entry {
    Special(&'static str),
    Mark(&'static str),
    Word(&'static str),
    Hashed(u32),
}

fn entry(id: u32) -> Entry {
    if let Some(s) = SPECIALS.get(id as usize) {
        return Entry::Special(s);
    }
    match VOCAB.get((id - FIRST_VOCAB_ID) as usize) {
        Some(s) if !s.as_bytes()[0].is_ascii_alphanumeric() => Entry::Mark(s),
        Some(s) => Entry::Word(s),
        None => Entry::Hashed(id),
    }
}

pub(crate) fn first_hashed_id() -> u32 {
    FIRST_VOCAB_ID + VOCAB.len() as u32
}

/// Ids of the vocabulary's words (not marks), in vocabulary order.
pub(crate) fn word_ids() -> std::ops::Range<u32> {
    let first_word = VOCAB
        .iter()
        .position(|s| s.as_bytes()[0].is_ascii_alphanumeric())
        .unwrap_or(0) as u32;
    FIRST_VOCAB_ID + first_word..first_hashed_id()
}

pub(crate) fn vocab_id(s: &str) -> Option<u32> {
    VOCAB
        .iter()
        .position(|w| *w == s)
        .map(|i| FIRST_VOCAB_ID + i as u32)
}

/// True for ids that are special tokens.
pub(crate) fn is_special(id: u32) -> bool {
    (id as usize) < SPECIALS.len()
}

/// The text `id` contributes to decoded text after `prev` (the previous non-special id,
/// `None` at the start).
pub(crate) fn piece(prev: Option<u32>, id: u32) -> String {
    let space = match prev {
        None => false,
        Some(p) => match entry(p) {
            Entry::Mark(m) => !is_opening_mark(m),
            _ => true,
        },
    };
    spaced(id, space)
}

/// The text of `id`, with its leading space when `space` and the token takes one.
fn spaced(id: u32, space: bool) -> String {
    let sp = if space { " " } else { "" };
    match entry(id) {
        Entry::Special(_) => String::new(),
        Entry::Mark(m) if is_bracket(m) => format!("{sp}{m}"),
        Entry::Mark(m) => m.to_string(),
        Entry::Word(w) => format!("{sp}{w}"),
        Entry::Hashed(h) => format!("{sp}tok{h}"),
    }
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The word-level tokenizer of the `sim` engine.
#[derive(Debug, Clone)]
pub struct SimTokenizer {
    index: HashMap<&'static str, u32>,
}

impl Default for SimTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl SimTokenizer {
    pub fn new() -> Self {
        let index = VOCAB
            .iter()
            .enumerate()
            .map(|(i, w)| (*w, FIRST_VOCAB_ID + i as u32))
            .collect();
        Self { index }
    }

    fn id_of(&self, unit: &str) -> u32 {
        if let Some(id) = self.index.get(unit) {
            return *id;
        }
        let first = first_hashed_id();
        first + (fnv1a(unit) % u64::from(SIM_VOCAB_SIZE - first)) as u32
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        let mut word_start: Option<usize> = None;
        for (i, c) in text.char_indices() {
            if c.is_alphanumeric() {
                word_start.get_or_insert(i);
                continue;
            }
            if let Some(s) = word_start.take() {
                out.push(self.id_of(&text[s..i]));
            }
            if !c.is_whitespace() {
                out.push(self.id_of(&text[i..i + c.len_utf8()]));
            }
        }
        if let Some(s) = word_start {
            out.push(self.id_of(&text[s..]));
        }
    }
}

impl Tokenizer for SimTokenizer {
    fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, EngineError> {
        let mut out = Vec::with_capacity(text.len() / 4 + 1);
        if !parse_special {
            self.encode_plain(text, &mut out);
            return Ok(out);
        }
        let mut rest = text;
        loop {
            let next = [IM_START_ID, IM_END_ID]
                .into_iter()
                .filter_map(|id| rest.find(SPECIALS[id as usize]).map(|at| (at, id)))
                .min();
            match next {
                Some((at, id)) => {
                    self.encode_plain(&rest[..at], &mut out);
                    out.push(id);
                    rest = &rest[at + SPECIALS[id as usize].len()..];
                }
                None => {
                    self.encode_plain(rest, &mut out);
                    return Ok(out);
                }
            }
        }
    }

    fn decode(&self, ids: &[u32]) -> String {
        let mut out = String::new();
        let mut prev = None;
        for &id in ids {
            if is_special(id) {
                continue;
            }
            out.push_str(&piece(prev, id));
            prev = Some(id);
        }
        out
    }

    fn token_text(&self, id: u32) -> String {
        match entry(id) {
            Entry::Special(s) => s.to_string(),
            // As shown in logprobs: the form with its leading space.
            _ => spaced(id, true),
        }
    }

    fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let mut out = String::new();
        for m in messages {
            out.push_str("<|im_start|>");
            out.push_str(&m.role);
            out.push('\n');
            out.push_str(&m.content);
            out.push_str("<|im_end|>\n");
        }
        if add_generation_prompt {
            out.push_str("<|im_start|>assistant\n");
        }
        Ok(out)
    }

    fn vocab_size(&self) -> u32 {
        SIM_VOCAB_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> SimTokenizer {
        SimTokenizer::new()
    }

    #[test]
    fn vocabulary_has_no_duplicates_and_fits() {
        let mut seen = std::collections::HashSet::new();
        for w in VOCAB {
            assert!(seen.insert(*w), "duplicate vocabulary entry {w:?}");
        }
        assert!(VOCAB.len() > 300, "{}", VOCAB.len());
        assert!(first_hashed_id() < SIM_VOCAB_SIZE);
        assert_eq!(vocab_id("."), Some(3));
        assert_eq!(vocab_id("the"), Some(word_ids().start));
    }

    #[test]
    fn encodes_one_token_per_word_and_mark() {
        let t = tok();
        let ids = t.encode("Hello, the world.", false).unwrap();
        assert_eq!(ids.len(), 5);
        assert_eq!(ids[1], vocab_id(",").unwrap());
        assert_eq!(ids[2], vocab_id("the").unwrap());
        assert_eq!(ids[3], vocab_id("world").unwrap());
        assert_eq!(ids[4], vocab_id(".").unwrap());
        // "Hello" (capitalised) is not in the vocabulary: a stable hashed id.
        assert!(ids[0] >= first_hashed_id() && ids[0] < SIM_VOCAB_SIZE);
        assert_eq!(t.encode("Hello", false).unwrap(), vec![ids[0]]);
        assert_ne!(t.encode("Hellp", false).unwrap(), vec![ids[0]]);
        // Whitespace of any kind separates; it is not a token.
        assert_eq!(t.encode("  the\n\tworld  ", false).unwrap().len(), 2);
        assert_eq!(t.encode("", false).unwrap(), Vec::<u32>::new());
        // Roughly one token per word.
        let text = "the quick brown fox jumps over the lazy dog and runs far away";
        assert_eq!(t.encode(text, false).unwrap().len(), 13);
    }

    #[test]
    fn round_trip_of_vocabulary_text() {
        let t = tok();
        let text = "the man said, we can't go home now (and they did). why? because it was late!";
        let ids = t.encode(text, false).unwrap();
        // "can't" is can ' t, and "t" is not in the vocabulary.
        assert_eq!(ids.len(), 24);
        assert!(ids
            .iter()
            .all(|id| *id < first_hashed_id() || *id == ids[7]));
        assert_eq!(
            t.decode(&ids),
            text.replace("can't", &format!("can'tok{}", ids[7]))
        );
        let text = "the man said, we go home now (and they did). why? because it was late!";
        let ids = t.encode(text, false).unwrap();
        assert!(ids.iter().all(|id| *id < first_hashed_id()));
        assert_eq!(t.decode(&ids), text);
        // Unknown words come back as tok<id>.
        let ids = t.encode("the zyzzyva", false).unwrap();
        assert_eq!(t.decode(&ids), format!("the tok{}", ids[1]));
    }

    #[test]
    fn non_ascii_and_odd_input_never_panics() {
        let t = tok();
        let ids = t.encode("naïve café — 東京 🙂 x", false).unwrap();
        assert_eq!(ids.len(), 6);
        let _ = t.decode(&ids);
        assert_eq!(t.decode(&[u32::MAX]), format!("tok{}", u32::MAX));
        let _ = t.token_text(u32::MAX);
    }

    #[test]
    fn special_tokens() {
        let t = tok();
        let ids = t.encode("<|im_start|>user\nhi<|im_end|>", true).unwrap();
        assert_eq!(ids[0], IM_START_ID);
        assert_eq!(*ids.last().unwrap(), IM_END_ID);
        assert_eq!(ids.len(), 4);
        // Without parse_special the markers are ordinary marks and words.
        let plain = t.encode("<|im_start|>", false).unwrap();
        assert!(!plain.contains(&IM_START_ID));
        assert_eq!(plain.len(), 7); // < | im _ start | >
                                    // Specials are skipped by decode but shown by token_text.
        assert_eq!(t.decode(&ids), "user hi");
        assert_eq!(t.token_text(IM_START_ID), "<|im_start|>");
        assert_eq!(t.token_text(EOS_ID), "<|im_end|>");
        assert_eq!(t.token_text(vocab_id("the").unwrap()), " the");
        assert_eq!(t.token_text(vocab_id(",").unwrap()), ",");
        assert_eq!(t.vocab_size(), 32_000);
    }

    #[test]
    fn chat_template_is_chatml() {
        let t = tok();
        let messages = vec![
            ChatMessage {
                role: "system".into(),
                content: "be brief".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "hello there".into(),
            },
        ];
        let text = t.apply_chat_template(&messages, true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n"
        );
        let ids = t.encode(&text, true).unwrap();
        // 3 starts, 2 ends, roles system/user/assistant, 4 content words.
        assert_eq!(ids.len(), 12);
        assert_eq!(ids.iter().filter(|id| **id == IM_START_ID).count(), 3);
        let no_gen = t.apply_chat_template(&messages[..1], false).unwrap();
        assert_eq!(no_gen, "<|im_start|>system\nbe brief<|im_end|>\n");
    }
}
