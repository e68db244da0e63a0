//! Prompt text: `N` common English words separated by spaces, which most tokenizers turn into
//! about `N` tokens. Words are drawn at random per request, so no two prompts share a long
//! prefix (prefix caches do not flatter the numbers).

use rand::{seq::IndexedRandom, Rng};

/// Short, frequent English words; each is a single token for common BPE vocabularies when
/// preceded by a space.
#[rustfmt::skip]
pub const WORDS: &[&str] = &[
    "the", "be", "to", "of", "and", "a", "in", "that", "have", "it", "for", "not", "on", "with",
    "he", "as", "you", "do", "at", "this", "but", "his", "by", "from", "they", "we", "say", "her",
    "she", "or", "an", "will", "my", "one", "all", "would", "there", "their", "what", "so", "up",
    "out", "if", "about", "who", "get", "which", "go", "me", "when", "make", "can", "like", "time",
    "no", "just", "him", "know", "take", "people", "into", "year", "your", "good", "some", "could",
    "them", "see", "other", "than", "then", "now", "look", "only", "come", "its", "over", "think",
    "also", "back", "after", "use", "two", "how", "our", "work", "first", "well", "way", "even",
    "new", "want", "because", "any", "these", "give", "day", "most", "us", "is", "was", "are",
    "were", "has", "had", "been", "made", "said", "did", "many", "more", "very", "much", "where",
    "through", "long", "down", "should", "man", "world", "life", "hand", "part", "child", "eye",
    "woman", "place", "week", "case", "point", "number", "group", "problem", "fact", "home",
    "water", "room", "mother", "area", "money", "story", "month", "lot", "right", "study", "book",
    "job", "word", "business", "side", "kind", "head", "house", "service", "friend", "father",
    "power", "hour", "game", "line", "end", "member", "law", "car", "city", "name", "team",
    "minute", "idea", "kid", "body", "back", "parent", "face", "others", "level", "office", "door",
    "health", "person", "art", "war", "history", "party", "result", "change", "morning", "reason",
    "research", "girl", "guy", "moment", "air", "teacher", "force", "education", "small", "large",
    "great", "old", "big", "high", "different", "little", "own", "last", "next", "early", "young",
    "important", "few", "public", "bad", "same", "able", "open", "green", "light", "river", "tree",
    "sun", "road", "music", "food", "paper", "table", "window", "school", "state", "family",
    "question", "country", "night", "thing", "company", "system", "program", "government", "week",
];

/// Builds a prompt of `words` random words (at least one).
pub fn build_prompt(words: u32, rng: &mut impl Rng) -> String {
    let words = words.max(1) as usize;
    let mut prompt = String::with_capacity(words * 6);
    for i in 0..words {
        if i > 0 {
            prompt.push(' ');
        }
        prompt.push_str(WORDS.choose(rng).expect("the word list is not empty"));
    }
    prompt
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;

    #[test]
    fn prompt_has_the_requested_word_count() {
        let mut rng = StdRng::seed_from_u64(0);
        for n in [1, 2, 17, 4096] {
            let prompt = build_prompt(n, &mut rng);
            assert_eq!(prompt.split(' ').count(), n as usize);
            assert!(prompt.split(' ').all(|w| WORDS.contains(&w)));
        }
        assert_eq!(build_prompt(0, &mut rng).split(' ').count(), 1);
    }

    #[test]
    fn prompts_vary_but_are_reproducible() {
        let mut a = StdRng::seed_from_u64(5);
        let mut b = StdRng::seed_from_u64(5);
        let first = build_prompt(64, &mut a);
        assert_ne!(first, build_prompt(64, &mut a));
        assert_eq!(first, build_prompt(64, &mut b));
    }

    #[test]
    fn words_are_plain_lowercase_ascii() {
        assert!(WORDS.len() >= 200);
        assert!(WORDS
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase())));
    }
}
