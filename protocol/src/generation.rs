//! What travels between a gateway and a replica: the generation request (already
//! validated and tokenized at the edge) and the events a replica emits for it.

use serde::{Deserialize, Serialize};

/// A request's id, unique across the cluster (`req-<uuid>`).
pub type JobId = String;

/// How to sample. Validated at the edge (ranges, limits) before it is queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Maximum number of tokens to generate (the edge fills the default in).
    pub max_tokens: u32,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means no top-k cut.
    pub top_k: u32,
    /// Same seed and same prompt give the same output.
    pub seed: Option<u64>,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Number of top alternatives to report per generated token (`None`: no logprobs).
    pub logprobs: Option<u8>,
    /// Report logprobs of the prompt's own tokens too (completions `echo` + `logprobs`).
    pub prompt_logprobs: bool,
    /// Keep generating past the end-of-sequence token (load tests use this).
    pub ignore_eos: bool,
    /// What the output must fit (structured outputs): decoding is constrained to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<Constraint>,
}

/// A constraint on the generated text, enforced token by token while decoding (the
/// engine masks every token that cannot continue a valid output), so the output always
/// fits unless `max_tokens` cuts it short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Constraint {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid against this JSON Schema, as JSON text (`json_schema`, tool arguments).
    JsonSchema(String),
    /// Text matching this regular expression, whole (Rust `regex` syntax).
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// Text of this context-free grammar, in llguidance's Lark syntax (`guided_grammar`;
    /// the native tool-call formats of chat templates, JSON embedded with `%json {...}`).
    Grammar(String),
}

impl Constraint {
    /// The name of the constraint's kind, for errors and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonObject => "json_object",
            Constraint::JsonSchema(_) => "json_schema",
            Constraint::Regex(_) => "regex",
            Constraint::Choice(_) => "choice",
            Constraint::Grammar(_) => "grammar",
        }
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 16,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            stop: Vec::new(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logprobs: None,
            prompt_logprobs: false,
            ignore_eos: false,
            constraint: None,
        }
    }
}

/// A request as a replica sees it: token ids and sampling parameters. The edge has
/// already applied the chat template and checked the context length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRequest {
    pub prompt_tokens: Vec<u32>,
    pub params: SamplingParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl Usage {
    pub fn total_tokens(&self) -> u32 {
        self.prompt_tokens + self.completion_tokens
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
}

/// The log-probability of one token, with the top alternatives at its position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub token_id: u32,
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

/// One event of a request's output stream. A stream ends with exactly one terminal event
/// (`Finished` or `Failed`); a stream that ends without one is reported as incomplete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputEvent {
    /// A replica has taken the job (sent once per attempt).
    Started { replica: String },
    /// Logprobs of the prompt's own tokens (sent before the first generated token when
    /// `prompt_logprobs` was asked for). The first token has no logprob (`None`).
    PromptLogprobs { logprobs: Vec<Option<TokenLogprob>> },
    /// Newly generated text. `text` never splits a UTF-8 character; `token_ids` are the
    /// tokens that produced it (text may lag tokens while a character is incomplete).
    Tokens {
        text: String,
        token_ids: Vec<u32>,
        logprobs: Option<Vec<TokenLogprob>>,
    },
    /// Generation ended normally.
    Finished { reason: FinishReason, usage: Usage },
    /// Generation ended with an error; `code` is a stable machine-readable code.
    Failed { code: String, message: String },
}

impl OutputEvent {
    pub fn is_terminal(&self) -> bool {
        matches!(self, OutputEvent::Finished { .. } | OutputEvent::Failed { .. })
    }
}

/// An output event as stored in a request's output stream: `seq` counts from 1 and is
/// what a reader resumes from; `epoch` is the attempt that wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequencedEvent {
    pub seq: u64,
    pub epoch: u32,
    pub event: OutputEvent,
}
