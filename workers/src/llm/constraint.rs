//! Structured outputs in the `llm` engine: a sequence's [`Constraint`] compiled by
//! [llguidance](https://github.com/guidance-ai/llguidance) into a token-level matcher.
//! Before each draw the matcher's mask sends every token that cannot continue a valid
//! output to -inf, so the output always fits (unless `max_tokens` cuts it short); the
//! drawn token then advances the matcher.
//!
//! - [`ConstraintCompiler`]: one per engine, built on the first constrained request (not
//!   at load, so cold starts do not pay for it): the tokenizer's vocabulary as a token
//!   trie (special tokens are marked so no grammar ever matches them) and llguidance's
//!   parser factory.
//! - [`SequenceConstraint`]: one sequence's matcher: [`mask`](SequenceConstraint::mask),
//!   [`advance`](SequenceConstraint::advance), [`is_done`](SequenceConstraint::is_done).
//! - [`check`]: compiles a constraint against a one-byte-per-token vocabulary, so the
//!   edge refuses a bad schema or regex with a 400 before anything is queued.
//!
//! JSON is written compactly (`", "` and `": "` separators, no free whitespace): a
//! sampled model cannot wander into endless whitespace.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{
    ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv,
};
use llguidance::{Matcher, ParserFactory};
use swell_protocol::Constraint;

use crate::llm::tokenizer::{GgufTokenizer, TokenKind};
use crate::tokenizer::Tokenizer;

/// The layout of generated JSON: one space after `,` and `:`, no other whitespace (a
/// schema's own `x-guidance` options take precedence).
pub fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if schema == serde_json::Value::Bool(true) {
        schema = serde_json::json!({});
    }
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({ "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": " })
        });
    }
    schema
}

/// The llguidance grammar of a constraint.
pub fn grammar(constraint: &Constraint) -> Result<TopLevelGrammar, String> {
    Ok(match constraint {
        Constraint::JsonObject => {
            TopLevelGrammar::from_json_schema(compact(serde_json::json!({ "type": "object" })))
        }
        Constraint::JsonSchema(text) => {
            let schema: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| format!("the JSON schema is not JSON: {e}"))?;
            if !schema.is_object() && !schema.is_boolean() {
                return Err("the JSON schema must be an object".to_string());
            }
            TopLevelGrammar::from_json_schema(compact(schema))
        }
        Constraint::Regex(regex) => TopLevelGrammar::from_regex(regex),
        Constraint::Choice(choices) => {
            if choices.is_empty() {
                return Err("the list of choices is empty".to_string());
            }
            TopLevelGrammar::from_regex(&choice_regex(choices))
        }
        Constraint::Grammar(lark) => TopLevelGrammar::from_lark(lark.clone()),
    })
}

/// A choice among fixed strings as a regular expression.
pub fn choice_regex(choices: &[String]) -> String {
    let alternatives: Vec<String> = choices.iter().map(|c| regex_syntax::escape(c)).collect();
    format!("({})", alternatives.join("|"))
}

/// Compiles `constraint` against a one-byte-per-token vocabulary: the schema or regex
/// is checked the way the engine will compile it, without the model's tokenizer.
pub fn check(constraint: &Constraint) -> Result<(), String> {
    thread_local! {
        static FACTORY: Result<ParserFactory, String> =
            quiet_factory(&ApproximateTokEnv::single_byte_env());
    }
    let grammar = grammar(constraint)?;
    FACTORY.with(|factory| {
        let factory = factory.as_ref().map_err(Clone::clone)?;
        let matcher = Matcher::new(factory.create_parser(grammar));
        match matcher.get_error() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    })
}

fn quiet_factory(env: &TokEnv) -> Result<ParserFactory, String> {
    let mut factory = ParserFactory::new_simple(env).map_err(|e| e.to_string())?;
    // Errors come back through the matcher; nothing on stderr.
    factory.quiet();
    Ok(factory)
}

/// The model's vocabulary as llguidance sees it.
struct VocabEnv {
    trie: TokTrie,
    tokenizer: Arc<GgufTokenizer>,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.tokenizer
            .encode(&String::from_utf8_lossy(s), false)
            .unwrap_or_default()
    }
}

/// Compiles constraints for one engine (see the module docs).
pub struct ConstraintCompiler {
    factory: ParserFactory,
    /// Every id that ends a generation (the mask of a finished grammar allows them all).
    eos_ids: Vec<u32>,
}

impl ConstraintCompiler {
    /// `vocab` is the width of the model's logits (it may exceed the tokenizer's).
    pub fn new(tokenizer: Arc<GgufTokenizer>, vocab: usize) -> Result<ConstraintCompiler, String> {
        let eos_ids = tokenizer.eos_token_ids();
        let eos = tokenizer
            .eos_token_id()
            .or_else(|| eos_ids.first().copied())
            .ok_or("the model has no end-of-sequence token")?;
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| match tokenizer.token_kind(id) {
                Some(TokenKind::Normal | TokenKind::Byte | TokenKind::UserDefined) => {
                    tokenizer.token_bytes(id).to_vec()
                }
                // Special, unused or beyond the tokenizer: marked, so no grammar matches it.
                _ => {
                    let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    marked.extend_from_slice(format!("<|swell_special_{id}|>").as_bytes());
                    marked
                }
            })
            .collect();
        let info = TokRxInfo {
            vocab_size: vocab as u32,
            tok_eos: eos,
            tok_bos: tokenizer.bos_token_id(),
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: None,
        };
        let env: TokEnv = Arc::new(VocabEnv {
            trie: TokTrie::from(&info, &words),
            tokenizer,
        });
        Ok(ConstraintCompiler {
            factory: quiet_factory(&env)?,
            eos_ids,
        })
    }

    /// The matcher of one sequence, advanced over `generated` (the tokens an earlier
    /// attempt delivered, when the sequence resumes).
    pub fn compile(
        &self,
        constraint: &Constraint,
        generated: &[u32],
    ) -> Result<SequenceConstraint, String> {
        let matcher = Matcher::new(self.factory.create_parser(grammar(constraint)?));
        if let Some(error) = matcher.get_error() {
            return Err(error);
        }
        let mut constraint = SequenceConstraint {
            matcher,
            eos_ids: self.eos_ids.clone(),
        };
        for &token in generated {
            if constraint.is_done() {
                break;
            }
            constraint.advance(token)?;
        }
        Ok(constraint)
    }
}

/// One sequence's matcher.
pub struct SequenceConstraint {
    matcher: Matcher,
    eos_ids: Vec<u32>,
}

impl std::fmt::Debug for SequenceConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceConstraint")
            .field("done", &self.is_done())
            .finish()
    }
}

/// The tokens allowed at the next position.
#[derive(Debug, Clone)]
pub struct TokenMask(SimpleVob);

impl TokenMask {
    /// Sends every disallowed token of `logits` to -inf.
    pub fn apply(&self, logits: &mut [f32]) {
        let limit = logits.len();
        self.0.iter_unset_entries(|id| {
            if id < limit {
                logits[id] = f32::NEG_INFINITY;
            }
        });
    }

    pub fn allows(&self, token: u32) -> bool {
        (token as usize) < self.0.len() && self.0.is_allowed(token)
    }

    /// How many tokens are allowed.
    pub fn allowed(&self) -> usize {
        self.0.num_set()
    }
}

impl SequenceConstraint {
    /// The tokens that may come next: what continues a valid output, and the
    /// end-of-sequence tokens where the output may end.
    pub fn mask(&mut self) -> Result<TokenMask, String> {
        let mut mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| e.to_string())?;
        if self
            .eos_ids
            .iter()
            .any(|&eos| (eos as usize) < mask.len() && mask.is_allowed(eos))
        {
            for &eos in &self.eos_ids {
                if (eos as usize) < mask.len() {
                    mask.allow_token(eos);
                }
            }
        }
        if mask.is_zero() {
            return Err("no token can continue the constrained output".to_string());
        }
        Ok(TokenMask(mask))
    }

    /// Advances over a drawn token (an end-of-sequence token ends the grammar).
    pub fn advance(&mut self, token: u32) -> Result<(), String> {
        if self.eos_ids.contains(&token) {
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    /// The output is complete: nothing may follow (the sequence ends with `stop`).
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// The masks of a step's constrained sequences (keyed by the caller's index), computed
/// in parallel on rayon's pool when there are several (the forward pass's threads are
/// idle while they are computed, or the GPU runs it).
pub fn masks(constrained: Vec<(usize, SequenceConstraint)>) -> Vec<(usize, SequenceConstraint, Result<TokenMask, String>)> {
    use rayon::prelude::*;
    let one = |(i, mut matcher): (usize, SequenceConstraint)| {
        let mask = matcher.mask();
        (i, matcher, mask)
    };
    if constrained.len() > 1 {
        constrained.into_par_iter().map(one).collect()
    } else {
        constrained.into_iter().map(one).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(value: serde_json::Value) -> Constraint {
        Constraint::JsonSchema(value.to_string())
    }

    #[test]
    fn good_constraints_compile_and_bad_ones_are_named() {
        assert_eq!(check(&Constraint::JsonObject), Ok(()));
        assert_eq!(
            check(&schema(
                serde_json::json!({"type": "object", "properties": {"a": {"type": "integer"}}})
            )),
            Ok(())
        );
        assert_eq!(
            check(&Constraint::Regex("[a-z]+@[a-z]+\\.com".into())),
            Ok(())
        );
        assert_eq!(
            check(&Constraint::Choice(vec![
                "yes".into(),
                "no (really?)".into()
            ])),
            Ok(())
        );
        assert!(check(&Constraint::JsonSchema("{not json".into()))
            .unwrap_err()
            .contains("not JSON"));
        assert!(check(&schema(serde_json::json!([1, 2])))
            .unwrap_err()
            .contains("must be an object"));
        assert!(check(&schema(serde_json::json!({"type": "no-such-type"}))).is_err());
        assert!(check(&Constraint::Regex("(unclosed".into())).is_err());
        assert!(check(&Constraint::Choice(Vec::new()))
            .unwrap_err()
            .contains("empty"));
    }
}
