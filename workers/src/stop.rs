//! Stop strings: generation stops before the first occurrence of any of them, and the
//! client never sees any part of one.
//!
//! Generated tokens go through a [`StopWatcher`]. A token's text is released only when no
//! stop string can start inside it any more: the watcher holds back every token from the
//! one where the longest suffix of the pending text that is a prefix of a stop string
//! begins. Tokens are released whole (ids, text and logprobs together), so the ids a client
//! has received always match the text it has received; a redelivered job resumed from
//! those ids regenerates the held tokens and decides them again.

use std::collections::VecDeque;

use swell_protocol::TokenLogprob;

/// Tokens let through by the watcher. Empty when everything is held back.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Release {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    /// A stop string was found: `text` ends just before it, and `token_ids` include the
    /// tokens that produced the stop string (they count as generated).
    pub stopped: bool,
}

#[derive(Debug)]
struct Held {
    id: u32,
    text_len: usize,
    logprob: Option<TokenLogprob>,
}

#[derive(Debug)]
pub(crate) struct StopWatcher {
    stops: Vec<String>,
    held: VecDeque<Held>,
    held_text: String,
}

impl StopWatcher {
    /// Empty stop strings are ignored.
    pub(crate) fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: VecDeque::new(),
            held_text: String::new(),
        }
    }

    /// Start of the first stop string in `text`, if any.
    pub(crate) fn find_stop(&self, text: &str) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
    }

    /// Length of the longest suffix of the held text that is a proper prefix of a stop.
    fn partial_len(&self) -> usize {
        let text = self.held_text.as_str();
        self.stops
            .iter()
            .filter_map(|s| {
                (1..s.len().min(text.len() + 1))
                    .rev()
                    .find(|&l| s.is_char_boundary(l) && text.ends_with(&s[..l]))
            })
            .max()
            .unwrap_or(0)
    }

    /// Add a generated token; returns what may be shown now.
    pub(crate) fn push(&mut self, id: u32, text: &str, logprob: Option<TokenLogprob>) -> Release {
        self.held.push_back(Held {
            id,
            text_len: text.len(),
            logprob,
        });
        self.held_text.push_str(text);
        if let Some(at) = self.find_stop(&self.held_text) {
            let mut release = self.flush();
            release.text.truncate(at);
            release.stopped = true;
            return release;
        }
        let boundary = self.held_text.len() - self.partial_len();
        let mut release = Release::default();
        let mut end = 0;
        while let Some(front) = self.held.front() {
            if end + front.text_len > boundary {
                break;
            }
            end += front.text_len;
            let held = self.held.pop_front().expect("front exists");
            release.token_ids.push(held.id);
            release.logprobs.extend(held.logprob);
        }
        release.text = self.held_text[..end].to_string();
        self.held_text.drain(..end);
        release
    }

    /// Release everything held (the sequence ends without a stop string).
    pub(crate) fn flush(&mut self) -> Release {
        let mut release = Release {
            text: std::mem::take(&mut self.held_text),
            ..Release::default()
        };
        for held in self.held.drain(..) {
            release.token_ids.push(held.id);
            release.logprobs.extend(held.logprob);
        }
        release
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watcher(stops: &[&str]) -> StopWatcher {
        StopWatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn without_stops_everything_passes_at_once() {
        let mut w = watcher(&[]);
        let r = w.push(7, "hello", None);
        assert_eq!(r.text, "hello");
        assert_eq!(r.token_ids, vec![7]);
        assert!(!r.stopped);
        let mut w = watcher(&[""]);
        assert_eq!(w.push(7, " x", None).text, " x");
    }

    #[test]
    fn stop_inside_one_token_cuts_it() {
        let mut w = watcher(&["lo w"]);
        assert_eq!(w.push(1, "the", None).text, "the");
        // " hel" cannot start "lo w"... but "l" at its end can: held whole.
        let r = w.push(2, " hel", None);
        assert_eq!(r, Release::default());
        let r = w.push(3, "lo world", None);
        assert!(r.stopped);
        assert_eq!(r.text, " hel");
        assert_eq!(r.token_ids, vec![2, 3]);
    }

    #[test]
    fn partial_stop_is_held_then_released_when_it_diverges() {
        let mut w = watcher(&["the end"]);
        assert_eq!(w.push(1, "go", None).text, "go");
        // " the" could be the start of "the end": held.
        let r = w.push(2, " the", None);
        assert!(r.token_ids.is_empty() && r.text.is_empty());
        // " en" still could be.
        assert!(w.push(3, " en", None).token_ids.is_empty());
        // "ough" makes " the enough", which cannot: all three tokens come out together.
        let r = w.push(4, "ough", None);
        assert_eq!(r.text, " the enough");
        assert_eq!(r.token_ids, vec![2, 3, 4]);
        assert!(!r.stopped);
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut w = watcher(&["b c", "a"]);
        let r = w.push(1, "x b c a", None);
        assert!(r.stopped);
        assert_eq!(r.text, "x ");
    }

    #[test]
    fn flush_releases_held_tokens_with_logprobs() {
        let mut w = watcher(&["zzz"]);
        let lp = TokenLogprob {
            token: " z".into(),
            token_id: 5,
            logprob: -0.5,
            top: vec![],
        };
        let r = w.push(5, " z", Some(lp.clone()));
        assert!(r.token_ids.is_empty());
        let r = w.flush();
        assert_eq!(r.text, " z");
        assert_eq!(r.token_ids, vec![5]);
        assert_eq!(r.logprobs, vec![lp]);
        assert_eq!(w.flush(), Release::default());
    }

    #[test]
    fn multibyte_stops_are_safe() {
        let mut w = watcher(&["東京"]);
        assert!(w.push(1, "to 東", None).token_ids.is_empty());
        let r = w.push(2, "x", None);
        assert_eq!(r.text, "to 東x");
        let r = w.push(3, "東京!", None);
        assert!(r.stopped);
        assert_eq!(r.text, "");
    }
}
