//! [`GgufTokenizer::from_gguf`]: the tokenizer read from a GGUF's metadata
//! (`tokenizer.ggml.*`), and the ids that end a generation.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};

use super::encode::FastEncoder;
use super::hf_pipeline::build_hf_tokenizer;
use super::vocab::{TokenKind, TokenPieces};
use super::{GgufTokenizer, PreTokenizerKind};
use crate::error::EngineError;
use crate::llm::chat_template::ChatTemplate;

/// Control tokens that end a turn when the chat template writes them.
const END_OF_TURN_MARKERS: [&str; 5] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
];
/// Control tokens that end a document, so always end a generation.
const END_OF_TEXT_MARKERS: [&str; 2] = ["<|endoftext|>", "<|end_of_text|>"];

impl GgufTokenizer {
    /// Builds the tokenizer from a GGUF's metadata (the file's tensors are not read).
    pub fn from_gguf(content: &Content) -> Result<GgufTokenizer, EngineError> {
        let metadata = GgufMetadata(content);

        let model = metadata.string("tokenizer.ggml.model")?.unwrap_or_default();
        if model != "gpt2" {
            return Err(EngineError::Load(format!(
                "unsupported tokenizer model '{model}' (tokenizer.ggml.model): \
                 only byte-level BPE ('gpt2') is supported"
            )));
        }
        let pre_tokenizer_name = metadata
            .string("tokenizer.ggml.pre")?
            .unwrap_or_else(|| "default".to_string());
        let pre_tokenizer =
            PreTokenizerKind::from_gguf_name(&pre_tokenizer_name).ok_or_else(|| {
                EngineError::Load(format!(
                    "unknown pre-tokenizer type '{pre_tokenizer_name}' (tokenizer.ggml.pre); \
                 known: {}",
                    PreTokenizerKind::KNOWN_NAMES
                ))
            })?;

        let tokens = metadata
            .string_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| {
                EngineError::Load("the GGUF has no vocabulary (tokenizer.ggml.tokens)".to_string())
            })?;
        let kinds = match metadata.int_array("tokenizer.ggml.token_type")? {
            None => vec![TokenKind::Normal; tokens.len()],
            Some(types) if types.len() != tokens.len() => {
                return Err(EngineError::Load(format!(
                    "tokenizer.ggml.token_type has {} entries for {} tokens",
                    types.len(),
                    tokens.len()
                )))
            }
            Some(types) => types
                .iter()
                .map(|&t| {
                    TokenKind::from_gguf(t).ok_or_else(|| {
                        EngineError::Load(format!(
                            "unknown token type {t} (tokenizer.ggml.token_type)"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let merges = metadata
            .string_array("tokenizer.ggml.merges")?
            .unwrap_or_default();

        let vocab_size = tokens.len();
        let token_id = |key: &str| -> Result<Option<u32>, EngineError> {
            match metadata.int(key)? {
                None => Ok(None),
                Some(id) if id >= 0 && (id as usize) < vocab_size => Ok(Some(id as u32)),
                Some(id) => Err(EngineError::Load(format!(
                    "{key} is {id}, outside the vocabulary of {vocab_size} tokens"
                ))),
            }
        };
        let bos_token_id = token_id("tokenizer.ggml.bos_token_id")?;
        let eos_token_id = token_id("tokenizer.ggml.eos_token_id")?;
        let eot_token_id = token_id("tokenizer.ggml.eot_token_id")?;
        let eom_token_id = token_id("tokenizer.ggml.eom_token_id")?;
        let add_bos_token = metadata
            .bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or_else(|| pre_tokenizer.adds_bos_by_default());

        let pieces = TokenPieces::new(&tokens, &kinds);
        let added_ids: HashMap<String, u32> = tokens
            .iter()
            .zip(&kinds)
            .enumerate()
            .filter(|(_, (text, kind))| {
                !text.is_empty() && (kind.is_special() || **kind == TokenKind::UserDefined)
            })
            .map(|(id, (text, _))| (text.to_string(), id as u32))
            .collect();

        let hf = build_hf_tokenizer(&tokens, &kinds, &merges, pre_tokenizer)?;
        let encoder = FastEncoder::new(pre_tokenizer, &tokens, &kinds)?;

        let token_text = |id: Option<u32>| {
            id.map(|id| tokens[id as usize].to_string())
                .unwrap_or_default()
        };
        let chat_template = ChatTemplate::new(
            metadata.string("tokenizer.chat_template")?,
            &token_text(bos_token_id),
            &token_text(eos_token_id),
        )?;

        let mut eos_token_ids: Vec<u32> = [eos_token_id, eot_token_id, eom_token_id]
            .into_iter()
            .flatten()
            .collect();
        let control_id = |text: &str| {
            added_ids
                .get(text)
                .copied()
                .filter(|&id| kinds[id as usize] == TokenKind::Control)
        };
        for marker in END_OF_TURN_MARKERS {
            if chat_template.source().contains(marker) {
                eos_token_ids.extend(control_id(marker));
            }
        }
        for marker in END_OF_TEXT_MARKERS {
            eos_token_ids.extend(control_id(marker));
        }
        eos_token_ids.sort_unstable();
        eos_token_ids.dedup();

        Ok(GgufTokenizer {
            hf,
            encoder,
            pieces,
            kinds,
            added_ids,
            pre_tokenizer,
            pre_tokenizer_name,
            bos_token_id,
            eos_token_id,
            add_bos_token,
            eos_token_ids,
            chat_template,
        })
    }
}

/// Typed reads of a GGUF's metadata; a key of the wrong type is a load error naming it.
struct GgufMetadata<'a>(&'a Content);

impl<'a> GgufMetadata<'a> {
    fn wrong_type(key: &str, want: &str, value: &Value) -> EngineError {
        EngineError::Load(format!(
            "{key} should be {want}, is {:?}",
            value.value_type()
        ))
    }

    fn string(&self, key: &str) -> Result<Option<String>, EngineError> {
        match self.0.metadata.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(Self::wrong_type(key, "a string", other)),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, EngineError> {
        match self.0.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(Self::wrong_type(key, "a bool", other)),
        }
    }

    fn int(&self, key: &str) -> Result<Option<i64>, EngineError> {
        match self.0.metadata.get(key) {
            None => Ok(None),
            Some(value) => integer(value)
                .map(Some)
                .ok_or_else(|| Self::wrong_type(key, "an integer", value)),
        }
    }

    fn string_array(&self, key: &str) -> Result<Option<Vec<&'a str>>, EngineError> {
        match self.0.metadata.get(key) {
            None => Ok(None),
            Some(Value::Array(values)) => values
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    other => Err(Self::wrong_type(key, "an array of strings", other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(Self::wrong_type(key, "an array", other)),
        }
    }

    fn int_array(&self, key: &str) -> Result<Option<Vec<i64>>, EngineError> {
        match self.0.metadata.get(key) {
            None => Ok(None),
            Some(Value::Array(values)) => values
                .iter()
                .map(|v| integer(v).ok_or_else(|| Self::wrong_type(key, "an array of integers", v)))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(Self::wrong_type(key, "an array", other)),
        }
    }
}

fn integer(value: &Value) -> Option<i64> {
    Some(match *value {
        Value::U8(v) => v.into(),
        Value::I8(v) => v.into(),
        Value::U16(v) => v.into(),
        Value::I16(v) => v.into(),
        Value::U32(v) => v.into(),
        Value::I32(v) => v.into(),
        Value::U64(v) => i64::try_from(v).ok()?,
        Value::I64(v) => v,
        _ => return None,
    })
}
