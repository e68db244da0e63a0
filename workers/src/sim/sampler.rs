//! The deterministic token stream of the `sim` engine.
//!
//! The token at output position `i` is a pure function of `(seed, i)`: a splitmix64 hash of
//! both picks a vocabulary word (skewed towards the frequent words at the front of the
//! vocabulary) or, about one time in eight, a `.` or `,` (never at position 0 and never
//! twice in a row). So a resumed sequence continues exactly where the original would have,
//! and the same seed always gives the same text. The seed is `params.seed`, or a hash of
//! the prompt tokens when the request has none.
//!
//! Logprobs are made up but plausible and deterministic: the chosen token gets a
//! probability in `[0.25, 0.95)`, its alternatives share the rest geometrically.

use swell_protocol::{TokenLogprob, TopLogprob};

use crate::sim::tokenizer::{is_special, piece, vocab_id, word_ids};

const STREAM_KIND: u64 = 0x6b69_6e64;
const STREAM_WORD: u64 = 0x776f_7264;
const STREAM_LOGPROB: u64 = 0x6c70_726f;
const STREAM_ALTERNATIVES: u64 = 0x616c_7473;
const STREAM_PROMPT: u64 = 0x7072_6f6d;

/// splitmix64 (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 64 random bits for `(seed, position, stream)`.
fn draw(seed: u64, position: u64, stream: u64) -> u64 {
    splitmix64(splitmix64(seed ^ stream) ^ position.wrapping_mul(0xd1b5_4a32_d192_ed03))
}

/// A float in `[0, 1)` from the top 53 bits.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// The seed of a sequence: the request's, or a hash of its prompt.
pub(crate) fn sequence_seed(seed: Option<u64>, prompt: &[u32]) -> u64 {
    seed.unwrap_or_else(|| {
        prompt
            .iter()
            .fold(0x5eed_u64, |h, id| splitmix64(h ^ u64::from(*id)))
    })
}

fn word_at(seed: u64, position: u64) -> u32 {
    let words = word_ids();
    let n = u64::from(words.end - words.start);
    let a = unit(draw(seed, position, STREAM_WORD));
    // Squaring skews towards the front of the vocabulary (the frequent words).
    let idx = ((a * a) * n as f64) as u64;
    words.start + idx.min(n - 1) as u32
}

/// `Some(mark)` when position `i`'s first draw asks for punctuation.
fn mark_at(seed: u64, position: u64) -> Option<u32> {
    match draw(seed, position, STREAM_KIND) % 100 {
        0..=6 => vocab_id("."),
        7..=11 => vocab_id(","),
        _ => None,
    }
}

/// The token at output position `position` of a sequence seeded with `seed`.
pub(crate) fn token_at(seed: u64, position: u64) -> u32 {
    match mark_at(seed, position) {
        Some(mark) if position > 0 && mark_at(seed, position - 1).is_none() => mark,
        _ => word_at(seed, position),
    }
}

/// Text of `id` as shown in logprobs after `prev` (special tokens by name).
fn shown(prev: Option<u32>, id: u32) -> String {
    if is_special(id) {
        match id {
            0 => "<unk>".into(),
            1 => "<|im_start|>".into(),
            _ => "<|im_end|>".into(),
        }
    } else {
        piece(prev, id)
    }
}

/// A plausible logprob of `chosen` at `position`, with `top_k` top alternatives (the
/// chosen token among them), sorted by decreasing logprob.
pub(crate) fn token_logprob(
    seed: u64,
    position: u64,
    prev: Option<u32>,
    chosen: u32,
    top_k: usize,
) -> TokenLogprob {
    let p = 0.25 + 0.7 * unit(draw(seed, position, STREAM_LOGPROB));
    let logprob = p.ln() as f32;
    let mut top = Vec::new();
    if top_k > 0 {
        top.push(TopLogprob {
            token: shown(prev, chosen),
            logprob,
        });
        let words = word_ids();
        let n = words.end - words.start;
        let start = (draw(seed, position, STREAM_ALTERNATIVES) % u64::from(n)) as u32;
        let mut share = 1.0 - p;
        let alternatives = (0..n)
            .map(|j| words.start + (start + j) % n)
            .filter(|id| *id != chosen)
            .take(top_k - 1);
        for id in alternatives {
            share /= 2.0;
            top.push(TopLogprob {
                token: shown(prev, id),
                logprob: share.ln() as f32,
            });
        }
        top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
    }
    TokenLogprob {
        token: shown(prev, chosen),
        token_id: chosen,
        logprob,
        top,
    }
}

/// Logprobs of the prompt's own tokens: `None` for the first, then one per token, each
/// with `top_k` alternatives. Deterministic in the prompt.
pub(crate) fn prompt_logprobs(prompt: &[u32], top_k: usize) -> Vec<Option<TokenLogprob>> {
    let seed = sequence_seed(None, prompt) ^ STREAM_PROMPT;
    let mut out = Vec::with_capacity(prompt.len());
    let mut prev = None;
    for (i, &id) in prompt.iter().enumerate() {
        if i == 0 {
            out.push(None);
        } else {
            out.push(Some(token_logprob(seed, i as u64, prev, id, top_k)));
        }
        if !is_special(id) {
            prev = Some(id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::tokenizer::SimTokenizer;
    use crate::tokenizer::Tokenizer;

    #[test]
    fn splitmix64_reference_values() {
        // First outputs of the reference splitmix64 generator seeded with 0
        // (state += golden gamma, then mix).
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(0x9e37_79b9_7f4a_7c15), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn tokens_are_a_function_of_seed_and_position() {
        let a: Vec<u32> = (0..200).map(|i| token_at(42, i)).collect();
        let b: Vec<u32> = (0..200).map(|i| token_at(42, i)).collect();
        let c: Vec<u32> = (0..200).map(|i| token_at(43, i)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let words = word_ids();
        let marks = [vocab_id(".").unwrap(), vocab_id(",").unwrap()];
        assert!(words.contains(&a[0]), "position 0 is a word");
        for w in a.windows(2) {
            assert!(
                !(marks.contains(&w[0]) && marks.contains(&w[1])),
                "two marks in a row"
            );
        }
        for t in &a {
            assert!(words.contains(t) || marks.contains(t));
        }
        let n_marks = a.iter().filter(|t| marks.contains(t)).count();
        assert!((5..=50).contains(&n_marks), "{n_marks} marks in 200 tokens");
        let text = SimTokenizer::new().decode(&a);
        assert!(text.split_whitespace().count() > 150, "{text}");
    }

    #[test]
    fn seed_defaults_to_a_hash_of_the_prompt() {
        assert_eq!(sequence_seed(Some(7), &[1, 2, 3]), 7);
        assert_eq!(
            sequence_seed(None, &[1, 2, 3]),
            sequence_seed(None, &[1, 2, 3])
        );
        assert_ne!(
            sequence_seed(None, &[1, 2, 3]),
            sequence_seed(None, &[1, 2, 4])
        );
        let _ = sequence_seed(None, &[]);
    }

    #[test]
    fn logprobs_are_plausible() {
        let chosen = token_at(9, 5);
        let lp = token_logprob(9, 5, Some(token_at(9, 4)), chosen, 5);
        assert_eq!(lp, token_logprob(9, 5, Some(token_at(9, 4)), chosen, 5));
        assert_eq!(lp.token_id, chosen);
        assert!(lp.logprob <= (0.95f32).ln() && lp.logprob >= (0.25f32).ln());
        assert_eq!(lp.top.len(), 5);
        assert!(lp
            .top
            .iter()
            .any(|t| t.token == lp.token && t.logprob == lp.logprob));
        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        let total: f32 = lp.top.iter().map(|t| t.logprob.exp()).sum();
        assert!(total <= 1.0 + 1e-5, "{total}");
        let mut tokens: Vec<&str> = lp.top.iter().map(|t| t.token.as_str()).collect();
        tokens.sort();
        tokens.dedup();
        assert_eq!(tokens.len(), 5, "alternatives are distinct");
        assert!(token_logprob(9, 5, None, chosen, 0).top.is_empty());
        // More alternatives than words: capped, never panics.
        let many = token_logprob(9, 5, None, word_ids().start + 5, 100_000);
        assert_eq!(many.top.len(), (word_ids().end - word_ids().start) as usize);
    }

    #[test]
    fn prompt_logprobs_start_with_none() {
        let lps = prompt_logprobs(&[1, 40, 41, 2], 2);
        assert_eq!(lps.len(), 4);
        assert!(lps[0].is_none());
        let last = lps[3].as_ref().unwrap();
        assert_eq!(last.token, "<|im_end|>");
        assert_eq!(last.token_id, 2);
        assert_eq!(last.top.len(), 2);
        assert!(prompt_logprobs(&[], 2).is_empty());
    }
}
