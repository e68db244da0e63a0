//! OpenAI's request and response bodies for `/v1/chat/completions`, `/v1/completions`
//! and `/v1/models`, and the conversion of Swell's logprobs into OpenAI's two formats.
//!
//! Request bodies keep the fields Swell honours typed and every other field in `other`,
//! which [`crate::generation::fields`] accepts, refuses by name or calls unrecognized:
//! nothing is silently ignored. Parameters that take several
//! shapes (`prompt`, `stop`, a message's `content`) are kept as JSON values here and
//! parsed by [`crate::generation::validate`], which names the offending parameter in its errors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use swell_cluster::{TokenLogprob, Usage};

// ------------------------------------------------------------------------------------------
// Requests
// ------------------------------------------------------------------------------------------

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// One message of a chat request. `content` is a string, an array of content parts, or
/// (for an assistant message) null.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
    /// Every other field (`name`, `tool_calls`, ...), judged by [`crate::generation::fields`].
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessageIn>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Extension (vLLM's): sample among the `top_k` most likely tokens; 0 or -1: off.
    pub top_k: Option<i64>,
    pub n: Option<i64>,
    pub stop: Option<Value>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    /// OpenAI's key for requests that share a prefix; the routing session key, before `user`.
    pub prompt_cache_key: Option<String>,
    /// Extension: keep generating past end-of-sequence (load tests).
    pub ignore_eos: Option<bool>,
    /// Every other field, judged by [`crate::generation::fields`].
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    /// A string, an array of strings, an array of token ids or an array of arrays of
    /// token ids. Several prompts give several choices, one job each.
    pub prompt: Value,
    pub suffix: Option<String>,
    pub echo: Option<bool>,
    pub logprobs: Option<i64>,
    pub best_of: Option<i64>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub n: Option<i64>,
    pub stop: Option<Value>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    pub ignore_eos: Option<bool>,
    /// Extension: parse special-token strings (`<|im_start|>`) in a text prompt into
    /// their ids. Off by default: a text prompt is plain text (docs/prompt-text.md).
    pub parse_special_tokens: Option<bool>,
    /// Every other field, judged by [`crate::generation::fields`].
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

// ------------------------------------------------------------------------------------------
// Responses
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBody {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl From<Usage> for UsageBody {
    fn from(usage: Usage) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessageOut {
    pub role: &'static str,
    /// `null` when the message is tool calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

/// A tool call in a response (`message.tool_calls`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionCallOut {
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ChatMessageOut,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// `chat.completion`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: UsageBody,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A piece of a streamed tool call: the first carries its id, type and name, the next
/// ones more of its arguments.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionCallDelta,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionCallDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// `chat.completion.chunk`. With `stream_options.include_usage`, every chunk carries
/// `"usage": null` and a last chunk with no choices carries the usage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageBody>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// `text_completion`, streamed chunks included (OpenAI uses the same object name).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<TextChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageBody>>,
}

/// A streamed chunk of either API, serialized as itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ResponseChunk {
    Chat(ChatCompletionChunk),
    Text(TextCompletion),
}

/// A complete (non-streamed) response of either API.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum CompletedResponse {
    Chat(ChatCompletion),
    Text(TextCompletion),
}

pub const CHAT_COMPLETION: &str = "chat.completion";
pub const CHAT_COMPLETION_CHUNK: &str = "chat.completion.chunk";
pub const TEXT_COMPLETION: &str = "text_completion";

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Prompt plus output tokens one request may use (vLLM's name for it).
    pub max_model_len: u32,
    /// Swell's extension: the engine that serves the deployment (`llm`, or `sim`, the
    /// performance model that generates no real text).
    pub engine: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

// ------------------------------------------------------------------------------------------
// Logprobs
// ------------------------------------------------------------------------------------------

/// Chat logprobs: `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

impl ChatLogprobs {
    pub fn from_tokens(tokens: &[TokenLogprob]) -> Self {
        Self {
            content: tokens
                .iter()
                .map(|token| ChatTokenLogprob {
                    token: token.token.clone(),
                    logprob: token.logprob,
                    bytes: token.token.as_bytes().to_vec(),
                    top_logprobs: token
                        .top
                        .iter()
                        .map(|top| ChatTopLogprob {
                            token: top.token.clone(),
                            logprob: top.logprob,
                            bytes: top.token.as_bytes().to_vec(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Completions logprobs: parallel arrays `tokens`, `token_logprobs`, `top_logprobs`
/// (a map token → logprob per position) and `text_offset` (character offset of each token
/// in the choice's text, echoed prompt included).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    pub text_offset: Vec<u32>,
}

impl CompletionLogprobs {
    /// Appends one token at character offset `*offset`, advancing the offset by its text.
    pub fn push(&mut self, token: &str, logprob: Option<&TokenLogprob>, offset: &mut u32) {
        self.tokens.push(token.to_string());
        self.token_logprobs.push(logprob.map(|l| l.logprob));
        self.top_logprobs.push(
            logprob.map(|l| l.top.iter().map(|top| (top.token.clone(), top.logprob)).collect()),
        );
        self.text_offset.push(*offset);
        *offset += token.chars().count() as u32;
    }

    pub fn extend(&mut self, other: CompletionLogprobs) {
        self.tokens.extend(other.tokens);
        self.token_logprobs.extend(other.token_logprobs);
        self.top_logprobs.extend(other.top_logprobs);
        self.text_offset.extend(other.text_offset);
    }
}

#[cfg(test)]
mod tests {
    use swell_cluster::TopLogprob;

    use super::*;

    fn logprob(token: &str, value: f32) -> TokenLogprob {
        TokenLogprob {
            token: token.into(),
            token_id: 7,
            logprob: value,
            top: vec![TopLogprob { token: token.into(), logprob: value }, TopLogprob { token: "x".into(), logprob: -3.0 }],
        }
    }

    #[test]
    fn unknown_request_fields_are_ignored() {
        let request: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi", "extra": 1}],
            "response_format": {"type": "text"},
        }))
        .unwrap();
        assert_eq!(request.messages.len(), 1);
    }

    #[test]
    fn chat_logprobs_have_openai_shape() {
        let value = serde_json::to_value(ChatLogprobs::from_tokens(&[logprob("hi", -0.5)])).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"content": [{
                "token": "hi", "logprob": -0.5, "bytes": [104, 105],
                "top_logprobs": [
                    {"token": "hi", "logprob": -0.5, "bytes": [104, 105]},
                    {"token": "x", "logprob": -3.0, "bytes": [120]},
                ],
            }]})
        );
    }

    #[test]
    fn completion_logprobs_track_text_offsets() {
        let mut logprobs = CompletionLogprobs::default();
        let mut offset = 0;
        logprobs.push("Hé", None, &mut offset);
        logprobs.push(" there", Some(&logprob(" there", -1.0)), &mut offset);
        let value = serde_json::to_value(&logprobs).unwrap();
        assert_eq!(value["tokens"], serde_json::json!(["Hé", " there"]));
        assert_eq!(value["token_logprobs"], serde_json::json!([null, -1.0]));
        assert_eq!(value["top_logprobs"], serde_json::json!([null, {" there": -1.0, "x": -3.0}]));
        assert_eq!(value["text_offset"], serde_json::json!([0, 2]));
        assert_eq!(offset, 8);
    }

    #[test]
    fn chunks_carry_usage_null_only_when_asked() {
        let chunk = ChatCompletionChunk {
            id: "chatcmpl-1".into(),
            object: CHAT_COMPLETION_CHUNK,
            created: 1,
            model: "m".into(),
            choices: vec![],
            usage: None,
        };
        assert!(serde_json::to_value(&chunk).unwrap().get("usage").is_none());
        let with_usage = ChatCompletionChunk { usage: Some(None), ..chunk };
        assert_eq!(serde_json::to_value(&with_usage).unwrap()["usage"], Value::Null);
    }
}
