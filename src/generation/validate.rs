//! Validation of OpenAI requests into `GenerationRequest`s: parameter ranges, the chat
//! template (through the deployment's tokenizer), tokenization, the context length and
//! the deployment's `max_tokens` limits. Every rejection names its parameter.

use serde_json::Value;
use swell_cluster::{GenerationRequest, SamplingParams};
use swell_workers::{ChatMessage, ChatTools, Tokenizer};

pub use crate::deployments::ModelLimits;
use crate::generation::error::GenerationError;
use crate::generation::fields::check_request_fields;
use crate::generation::structured::constraint_of;
use crate::generation::messages::{chat_messages, has_tool_turns, Conversation};
use crate::generation::tool_format::ToolFormat;
use crate::generation::tools::tool_plan;
use crate::generation::openai_types::{ChatCompletionRequest, CompletionRequest, StreamOptions};

/// At most this many prompts in one completions request (each becomes its own job).
pub const MAX_PROMPTS_PER_REQUEST: usize = 128;
/// Most choices (`n`) per prompt; prompts x `n` is also capped by
/// [`MAX_PROMPTS_PER_REQUEST`].
pub const MAX_CHOICES_PER_PROMPT: usize = 16;
/// OpenAI's limit on stop sequences.
pub const MAX_STOP_SEQUENCES: usize = 4;
/// OpenAI's limits on alternatives reported per token.
pub const MAX_CHAT_TOP_LOGPROBS: i64 = 20;
pub const MAX_COMPLETION_LOGPROBS: i64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationKind {
    Chat,
    Completion,
}

/// The prompt to echo back before the completion (completions `echo`).
#[derive(Debug, Clone, PartialEq)]
pub struct EchoPrompt {
    pub text: String,
    /// Text of each prompt token (for logprobs of an echoed prompt; empty without them).
    pub token_texts: Vec<String>,
}

/// One choice of a request: one job. A request with `n > 1` has `n` of them per
/// prompt, in OpenAI's order (the `n` choices of the first prompt, then the next).
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedPrompt {
    pub tokens: Vec<u32>,
    pub max_tokens: u32,
    pub echo: Option<EchoPrompt>,
    /// Which of its prompt's `n` choices this is (0 for the first). A request `seed` is
    /// offset by it, so the choices differ and each is still reproducible; usage counts
    /// the prompt's tokens once, on choice 0, as OpenAI does.
    pub choice: u32,
}

/// Repeat each prompt `n` times (choice `j` of prompt `i` at `i * n + j`).
fn expand_choices(prompts: Vec<PreparedPrompt>, n: usize) -> Result<Vec<PreparedPrompt>, GenerationError> {
    if prompts.len() * n > MAX_PROMPTS_PER_REQUEST {
        return Err(GenerationError::invalid_value(
            "n",
            format!(
                "{} prompts x n = {n} is {} choices; at most {MAX_PROMPTS_PER_REQUEST} per request",
                prompts.len(),
                prompts.len() * n
            ),
        ));
    }
    Ok(prompts
        .into_iter()
        .flat_map(|prompt| (0..n as u32).map(move |choice| PreparedPrompt { choice, ..prompt.clone() }))
        .collect())
}

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedRequest {
    pub kind: GenerationKind,
    pub prompts: Vec<PreparedPrompt>,
    /// Sampling parameters shared by every prompt (`max_tokens` is per prompt).
    pub params: SamplingParams,
    pub stream: bool,
    pub include_usage: bool,
    /// Logprobs were asked for (chat `logprobs: true`, completions `logprobs: k`).
    pub logprobs: bool,
    /// The request's session for routing, so a conversation's turns go back to the
    /// replica that holds its history: chat's `prompt_cache_key`, else `user`.
    pub session: Option<String>,
    /// The request has tools (their format): its output is read back into tool calls.
    pub tools: Option<ToolFormat>,
}

impl ValidatedRequest {
    /// The generation requests to queue, one per prompt, in choice order.
    pub fn generation_requests(&self) -> Vec<GenerationRequest> {
        self.prompts
            .iter()
            .map(|prompt| GenerationRequest {
                prompt_tokens: prompt.tokens.clone(),
                params: SamplingParams {
                    max_tokens: prompt.max_tokens,
                    seed: self.params.seed.map(|seed| seed.wrapping_add(u64::from(prompt.choice))),
                    ..self.params.clone()
                },
            })
            .collect()
    }
}

/// The parameters chat and completions requests share.
struct CommonParams<'a> {
    max_tokens: Option<(i64, &'static str)>,
    /// `max_tokens: 0` is allowed (completions with `echo`: score the prompt only).
    allow_zero_max_tokens: bool,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    n: Option<i64>,
    stop: Option<&'a Value>,
    seed: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    stream: Option<bool>,
    stream_options: Option<&'a StreamOptions>,
    ignore_eos: Option<bool>,
}

struct CommonChecked {
    params: SamplingParams,
    /// Choices per prompt.
    n: usize,
    max_tokens: Option<(u32, &'static str)>,
    stream: bool,
    include_usage: bool,
}

/// Validates a chat request and renders its prompt through the chat template.
pub fn validate_chat(
    request: &ChatCompletionRequest,
    limits: &ModelLimits,
    tokenizer: &dyn Tokenizer,
) -> Result<ValidatedRequest, GenerationError> {
    check_request_fields(GenerationKind::Chat, &request.other)?;
    // `max_completion_tokens` supersedes the deprecated `max_tokens`.
    let max_tokens = match (request.max_completion_tokens, request.max_tokens) {
        (Some(value), _) => Some((value, "max_completion_tokens")),
        (None, Some(value)) => Some((value, "max_tokens")),
        (None, None) => None,
    };
    let common = check_common(
        CommonParams {
            max_tokens,
            allow_zero_max_tokens: false,
            temperature: request.temperature,
            top_p: request.top_p,
            top_k: request.top_k,
            n: request.n,
            stop: request.stop.as_ref(),
            seed: request.seed,
            presence_penalty: request.presence_penalty,
            frequency_penalty: request.frequency_penalty,
            stream: request.stream,
            stream_options: request.stream_options.as_ref(),
            ignore_eos: request.ignore_eos,
        },
        limits,
    )?;
    let mut params = common.params;
    let logprobs = request.logprobs.unwrap_or(false);
    match (logprobs, request.top_logprobs) {
        (_, Some(top)) if !(0..=MAX_CHAT_TOP_LOGPROBS).contains(&top) => {
            return Err(GenerationError::invalid_value(
                "top_logprobs",
                format!("top_logprobs must be between 0 and {MAX_CHAT_TOP_LOGPROBS}, got {top}"),
            ));
        }
        (false, Some(_)) => {
            return Err(GenerationError::invalid_value(
                "top_logprobs",
                "top_logprobs requires logprobs to be true",
            ));
        }
        (true, top) => params.logprobs = Some(top.unwrap_or(0) as u8),
        (false, None) => {}
    }

    params.constraint = constraint_of(&request.other, limits)?;
    let format = ToolFormat::of_template(tokenizer.chat_template_source());
    let tools = tool_plan(&request.other, limits, format)?;
    if let Some(plan) = &tools {
        if params.constraint.is_some() && plan.constraint.is_some() {
            return Err(GenerationError::invalid_value("tools", "`tools` and a structured output both constrain the output: send one"));
        }
        if plan.constraint.is_some() {
            params.constraint = plan.constraint.clone();
        }
    }

    // Only the template's markup becomes special tokens; message text is plain text. A
    // template with its own tool format renders the tools and tool turns itself.
    let native = format.is_native() && (tools.is_some() || has_tool_turns(&request.messages));
    let Conversation { mut messages, fields } = chat_messages(&request.messages, native)?;
    let tokens = if native {
        let tools = ChatTools { tools: tools.as_ref().map_or_else(|| Value::Array(Vec::new()), |plan| plan.tools.clone()), fields };
        tokenizer.encode_chat_with_tools(&messages, &tools, true)
    } else {
        if let Some(plan) = &tools {
            match messages.first_mut() {
                Some(system) if system.role == "system" => {
                    system.content = format!("{}\n\n{}", system.content, plan.instructions);
                }
                _ => messages.insert(0, ChatMessage { role: "system".into(), content: plan.instructions.clone() }),
            }
        }
        tokenizer.encode_chat(&messages, true)
    }
    .map_err(|error| GenerationError::InvalidPrompt(error.to_string()))?;
    let max_tokens = resolve_max_tokens(common.max_tokens, tokens.len(), limits, "messages")?;
    Ok(ValidatedRequest {
        kind: GenerationKind::Chat,
        prompts: expand_choices(vec![PreparedPrompt { tokens, max_tokens, echo: None, choice: 0 }], common.n)?,
        params,
        stream: common.stream,
        include_usage: common.include_usage,
        logprobs,
        session: request.prompt_cache_key.clone().or_else(|| request.user.clone()),
        tools: tools.map(|plan| plan.format),
    })
}

/// Validates a completions request; each of its prompts becomes one choice.
pub fn validate_completion(
    request: &CompletionRequest,
    limits: &ModelLimits,
    tokenizer: &dyn Tokenizer,
) -> Result<ValidatedRequest, GenerationError> {
    check_request_fields(GenerationKind::Completion, &request.other)?;
    if request.suffix.as_deref().is_some_and(|suffix| !suffix.is_empty()) {
        return Err(GenerationError::unsupported("suffix", "suffix (insertion) is not supported"));
    }
    match request.best_of {
        Some(best_of) if best_of < 1 => {
            return Err(GenerationError::invalid_value("best_of", format!("best_of must be at least 1, got {best_of}")));
        }
        Some(best_of) if best_of > 1 => {
            return Err(GenerationError::unsupported(
                "best_of",
                "best_of > 1 is not supported: only one completion per prompt is generated",
            ));
        }
        _ => {}
    }
    let common = check_common(
        CommonParams {
            max_tokens: request.max_tokens.map(|value| (value, "max_tokens")),
            allow_zero_max_tokens: request.echo == Some(true),
            temperature: request.temperature,
            top_p: request.top_p,
            top_k: request.top_k,
            n: request.n,
            stop: request.stop.as_ref(),
            seed: request.seed,
            presence_penalty: request.presence_penalty,
            frequency_penalty: request.frequency_penalty,
            stream: request.stream,
            stream_options: request.stream_options.as_ref(),
            ignore_eos: request.ignore_eos,
        },
        limits,
    )?;
    let mut params = common.params;
    let logprobs = match request.logprobs {
        Some(k) if !(0..=MAX_COMPLETION_LOGPROBS).contains(&k) => {
            return Err(GenerationError::invalid_value(
                "logprobs",
                format!("logprobs must be between 0 and {MAX_COMPLETION_LOGPROBS}, got {k}"),
            ));
        }
        Some(k) => {
            params.logprobs = Some(k as u8);
            true
        }
        None => false,
    };
    params.constraint = constraint_of(&request.other, limits)?;
    let echo = request.echo.unwrap_or(false);
    params.prompt_logprobs = echo && logprobs;
    if params.prompt_logprobs && !limits.prompt_logprobs {
        return Err(GenerationError::unsupported(
            "echo",
            "echo with logprobs (the prompt's logprobs) is not supported by this deployment's engine",
        ));
    }

    let prompts = parse_prompts(&request.prompt, tokenizer, request.parse_special_tokens.unwrap_or(false))?;
    let mut prepared = Vec::with_capacity(prompts.len());
    for (tokens, text) in prompts {
        let max_tokens = resolve_max_tokens(common.max_tokens, tokens.len(), limits, "prompt")?;
        let echo = echo.then(|| EchoPrompt {
            text: text.unwrap_or_else(|| tokenizer.decode(&tokens)),
            token_texts: if logprobs {
                tokens.iter().map(|&id| tokenizer.token_text(id)).collect()
            } else {
                Vec::new()
            },
        });
        prepared.push(PreparedPrompt { tokens, max_tokens, echo, choice: 0 });
    }
    Ok(ValidatedRequest {
        kind: GenerationKind::Completion,
        prompts: expand_choices(prepared, common.n)?,
        params,
        stream: common.stream,
        include_usage: common.include_usage,
        logprobs,
        session: request.user.clone(),
        tools: None,
    })
}

fn check_common(common: CommonParams<'_>, limits: &ModelLimits) -> Result<CommonChecked, GenerationError> {
    let max_tokens = match common.max_tokens {
        None => None,
        Some((0, param)) if common.allow_zero_max_tokens => Some((0, param)),
        Some((value, param)) if value < 1 => {
            let least = if common.allow_zero_max_tokens { 0 } else { 1 };
            return Err(GenerationError::invalid_value(param, format!("{param} must be at least {least}, got {value}")));
        }
        Some((value, param)) if value > limits.max_tokens_limit as i64 => {
            return Err(GenerationError::MaxTokensExceedsLimit {
                message: format!(
                    "{param} is {value} but this model allows at most {} output tokens per request",
                    limits.max_tokens_limit
                ),
                param: param.to_string(),
            });
        }
        Some((value, param)) => Some((value as u32, param)),
    };
    let n = match common.n {
        None => 1,
        Some(n) if n < 1 || n > MAX_CHOICES_PER_PROMPT as i64 => {
            return Err(GenerationError::invalid_value(
                "n",
                format!("n must be between 1 and {MAX_CHOICES_PER_PROMPT}, got {n}"),
            ));
        }
        Some(n) => n as usize,
    };
    let temperature = ranged("temperature", common.temperature, 0.0, 2.0, true)?.unwrap_or(1.0);
    let top_p = ranged("top_p", common.top_p, 0.0, 1.0, false)?.unwrap_or(1.0);
    let presence_penalty = ranged("presence_penalty", common.presence_penalty, -2.0, 2.0, true)?.unwrap_or(0.0);
    let frequency_penalty = ranged("frequency_penalty", common.frequency_penalty, -2.0, 2.0, true)?.unwrap_or(0.0);
    let top_k = match common.top_k {
        None | Some(-1) => 0,
        Some(k) if k < 0 || k > u32::MAX as i64 => {
            return Err(GenerationError::invalid_value("top_k", format!("top_k must be -1 (off) or at least 0, got {k}")));
        }
        Some(k) => k as u32,
    };
    let stop = parse_stop(common.stop)?;
    let stream = common.stream.unwrap_or(false);
    if common.stream_options.is_some() && !stream {
        return Err(GenerationError::invalid_value(
            "stream_options",
            "stream_options is only allowed when stream is true",
        ));
    }
    let include_usage = common.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
    let params = SamplingParams {
        // Filled in per prompt.
        max_tokens: 0,
        temperature,
        top_p,
        top_k,
        // OpenAI's seed is an int64; any value is a valid seed.
        seed: common.seed.map(|seed| seed as u64),
        stop,
        presence_penalty,
        frequency_penalty,
        logprobs: None,
        prompt_logprobs: false,
        ignore_eos: common.ignore_eos.unwrap_or(false),
        // Set by the caller (structured outputs).
        constraint: None,
    };
    Ok(CommonChecked { params, n, max_tokens, stream, include_usage })
}

/// A float parameter within `[min, max]` (or `(min, max]` when `min_inclusive` is false).
fn ranged(
    param: &str,
    value: Option<f64>,
    min: f64,
    max: f64,
    min_inclusive: bool,
) -> Result<Option<f32>, GenerationError> {
    let Some(value) = value else { return Ok(None) };
    let above_min = if min_inclusive { value >= min } else { value > min };
    if !value.is_finite() || !above_min || value > max {
        let range = if min_inclusive { format!("[{min}, {max}]") } else { format!("({min}, {max}]") };
        return Err(GenerationError::invalid_value(param, format!("{param} must be in {range}, got {value}")));
    }
    Ok(Some(value as f32))
}

fn parse_stop(stop: Option<&Value>) -> Result<Vec<String>, GenerationError> {
    let stops = match stop {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) => {
            let mut stops = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                match item {
                    Value::String(text) => stops.push(text.clone()),
                    _ => {
                        return Err(GenerationError::InvalidType {
                            message: format!("stop[{index}] must be a string"),
                            param: Some(format!("stop[{index}]")),
                        });
                    }
                }
            }
            stops
        }
        Some(_) => {
            return Err(GenerationError::InvalidType {
                message: "stop must be a string or an array of strings".into(),
                param: Some("stop".into()),
            });
        }
    };
    if stops.len() > MAX_STOP_SEQUENCES {
        return Err(GenerationError::invalid_value(
            "stop",
            format!("at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {}", stops.len()),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(GenerationError::invalid_value("stop", "stop sequences must not be empty"));
    }
    Ok(stops)
}

/// One prompt of a completions request: its token ids, and its text when it was given
/// as text.
type ParsedPrompt = (Vec<u32>, Option<String>);

/// The prompts of a completions request. Text is plain text unless `parse_special`
/// (the request's `parse_special_tokens`).
fn parse_prompts(prompt: &Value, tokenizer: &dyn Tokenizer, parse_special: bool) -> Result<Vec<ParsedPrompt>, GenerationError> {
    let encode = |text: &str| {
        tokenizer.encode(text, parse_special).map_err(|error| GenerationError::InvalidPrompt(error.to_string()))
    };
    let vocab = tokenizer.vocab_size();
    let token_ids = |items: &[Value], param: &str| -> Result<Vec<u32>, GenerationError> {
        items
            .iter()
            .enumerate()
            .map(|(index, item)| match item.as_u64() {
                Some(id) if id < vocab as u64 => Ok(id as u32),
                Some(id) => Err(GenerationError::invalid_value(
                    param,
                    format!("token id {id} at {param}[{index}] is outside the vocabulary (size {vocab})"),
                )),
                None => Err(GenerationError::InvalidType {
                    message: format!("{param}[{index}] must be a token id (a non-negative integer)"),
                    param: Some(param.to_string()),
                }),
            })
            .collect()
    };
    let shape_error = || GenerationError::InvalidType {
        message: "prompt must be a string, an array of strings, an array of token ids or an array of arrays of token ids".into(),
        param: Some("prompt".into()),
    };
    let prompts = match prompt {
        Value::String(text) => vec![(encode(text)?, Some(text.clone()))],
        Value::Array(items) if items.is_empty() => {
            return Err(GenerationError::invalid_value("prompt", "prompt must not be empty"));
        }
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Ok((encode(text)?, Some(text.clone()))),
                    _ => Err(shape_error()),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Value::Number(_) => vec![(token_ids(items, "prompt")?, None)],
            Value::Array(_) => items
                .iter()
                .enumerate()
                .map(|(index, item)| match item {
                    Value::Array(ids) => Ok((token_ids(ids, &format!("prompt[{index}]"))?, None)),
                    _ => Err(shape_error()),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(shape_error()),
        },
        _ => return Err(shape_error()),
    };
    if prompts.len() > MAX_PROMPTS_PER_REQUEST {
        return Err(GenerationError::invalid_value(
            "prompt",
            format!("at most {MAX_PROMPTS_PER_REQUEST} prompts per request, got {}", prompts.len()),
        ));
    }
    if prompts.iter().any(|(tokens, _)| tokens.is_empty()) {
        return Err(GenerationError::invalid_value("prompt", "prompt must not be empty"));
    }
    Ok(prompts)
}

/// The `max_tokens` of one prompt: the request's, checked against the context, or the
/// deployment's default capped by what the context leaves.
fn resolve_max_tokens(
    requested: Option<(u32, &'static str)>,
    prompt_tokens: usize,
    limits: &ModelLimits,
    prompt_param: &str,
) -> Result<u32, GenerationError> {
    let context = limits.context_length as usize;
    match requested {
        Some((max_tokens, _)) if prompt_tokens + max_tokens as usize > context => {
            Err(GenerationError::ContextLengthExceeded {
                message: format!(
                    "this model's maximum context length is {context} tokens, however you requested {} tokens ({prompt_tokens} in the prompt, {max_tokens} for the completion); reduce the prompt or the completion length",
                    prompt_tokens + max_tokens as usize
                ),
                param: prompt_param.to_string(),
            })
        }
        Some((max_tokens, _)) => Ok(max_tokens),
        None if prompt_tokens >= context => Err(GenerationError::ContextLengthExceeded {
            message: format!(
                "this model's maximum context length is {context} tokens, however the prompt has {prompt_tokens} tokens, leaving no room for the completion; reduce the prompt"
            ),
            param: prompt_param.to_string(),
        }),
        None => Ok(limits
            .max_tokens_default
            .min(limits.max_tokens_limit)
            .min((context - prompt_tokens) as u32)
            .max(1)),
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
