//! The wire format of each engine's streaming API: the request Swell sends for one
//! sequence, and what each streamed `data:` event carries (token ids, logprobs, how it
//! ended). Pure: no I/O.
//!
//! Swell asks every engine for token ids (never only text), and handles stop strings,
//! `max_tokens` and detokenization itself, as it does for its own engine: so usage,
//! quotas and resumption count exactly the tokens the engine produced. Sampling defaults
//! an engine adds of its own (llama.cpp's `min_p`, `top_k` 40, repetition penalty) are
//! turned off, so a request means what the OpenAI API says.

use serde_json::{json, Value};
use swell_protocol::{Constraint, SamplingParams, TokenLogprob, TopLogprob};

use super::presets::Api;
use crate::llm::constraint::choice_regex;

/// The request for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRequest {
    pub path: &'static str,
    pub body: Value,
}

/// What the engine should generate after the context.
#[derive(Debug, Clone, PartialEq)]
pub struct Generate<'a> {
    /// Prompt, then the tokens an earlier attempt delivered.
    pub context: &'a [u32],
    /// The same as text (with special tokens written out), for engines that take text.
    pub context_text: Option<&'a str>,
    pub max_new_tokens: u32,
    pub params: &'a SamplingParams,
    pub model: &'a str,
}

/// How the engine ended a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineFinish {
    /// End-of-sequence token.
    Eos,
    /// The engine's token limit (ours, `max_new_tokens`).
    Length,
    /// Anything else the engine says (a stop word Swell did not send, an abort).
    Other(String),
}

/// One streamed event, as Swell uses it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    pub token_ids: Vec<u32>,
    /// One per token id, when logprobs were asked for and the engine sent them.
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<EngineFinish>,
}

/// The output constraints `api` has no way to enforce, as the request fields that ask for
/// them (the edge refuses those by name).
pub fn unsupported_constraints(api: Api) -> &'static [&'static str] {
    match api {
        // llama-server takes a JSON schema or a GBNF grammar, no regular expression.
        Api::LlamaCpp => &["guided_regex", "guided_grammar"],
        // Grammars are llguidance's Lark, which none of them is sure to read.
        Api::VllmCompletions | Api::SglangGenerate | Api::TgiGenerateStream => &["guided_grammar"],
    }
}

/// A JSON schema constraint as a JSON value (`json_object`: any object).
fn schema_of(constraint: &Constraint) -> Option<Value> {
    match constraint {
        Constraint::JsonObject => Some(json!({"type": "object"})),
        Constraint::JsonSchema(text) => serde_json::from_str(text).ok(),
        Constraint::Regex(_) | Constraint::Choice(_) | Constraint::Grammar(_) => None,
    }
}

/// A choice as a GBNF grammar (llama-server's `grammar`).
fn choice_gbnf(choices: &[String]) -> String {
    let literals: Vec<String> = choices.iter().map(|c| serde_json::to_string(c).expect("strings serialize")).collect();
    format!("root ::= {}", literals.join(" | "))
}

/// Adds the engine's own form of `constraint` to a request body.
fn constrain(api: Api, constraint: &Constraint, body: &mut Value) {
    match api {
        Api::LlamaCpp => match constraint {
            Constraint::Choice(choices) => body["grammar"] = json!(choice_gbnf(choices)),
            // Refused at the edge (`unsupported_constraints`).
            Constraint::Regex(_) => {}
            _ => body["json_schema"] = schema_of(constraint).unwrap_or(Value::Null),
        },
        Api::VllmCompletions => {
            body["structured_outputs"] = match constraint {
                Constraint::Regex(regex) => json!({"regex": regex}),
                Constraint::Choice(choices) => json!({"choice": choices}),
                _ => json!({"json": schema_of(constraint)}),
            }
        }
        Api::SglangGenerate => {
            let sampling = &mut body["sampling_params"];
            match constraint {
                Constraint::Regex(regex) => sampling["regex"] = json!(regex),
                Constraint::Choice(choices) => sampling["regex"] = json!(choice_regex(choices)),
                _ => sampling["json_schema"] = json!(schema_of(constraint).unwrap_or(Value::Null).to_string()),
            }
        }
        Api::TgiGenerateStream => {
            body["parameters"]["grammar"] = match constraint {
                Constraint::Regex(regex) => json!({"type": "regex", "value": regex}),
                Constraint::Choice(choices) => json!({"type": "regex", "value": choice_regex(choices)}),
                _ => json!({"type": "json", "value": schema_of(constraint)}),
            }
        }
    }
}

/// The request body for `api`.
pub fn request(api: Api, g: &Generate<'_>) -> StreamRequest {
    let mut request = unconstrained(api, g);
    if let Some(constraint) = &g.params.constraint {
        constrain(api, constraint, &mut request.body);
    }
    request
}

fn unconstrained(api: Api, g: &Generate<'_>) -> StreamRequest {
    let p = g.params;
    let greedy = p.temperature <= 0.0;
    let top_n = p.logprobs.map(u32::from);
    match api {
        Api::LlamaCpp => {
            let mut body = json!({
                "prompt": g.context,
                "n_predict": g.max_new_tokens,
                "stream": true,
                "return_tokens": true,
                "cache_prompt": true,
                "temperature": p.temperature.max(0.0),
                "top_p": p.top_p,
                "top_k": p.top_k,
                "min_p": 0.0,
                "typical_p": 1.0,
                "repeat_penalty": 1.0,
                "presence_penalty": p.presence_penalty,
                "frequency_penalty": p.frequency_penalty,
                "ignore_eos": p.ignore_eos,
                "n_probs": top_n.unwrap_or(0),
                // Logprobs of the distribution the token was drawn from, before any cut.
                "post_sampling_probs": false,
            });
            if let Some(seed) = p.seed {
                body["seed"] = json!(seed as u32);
            }
            StreamRequest { path: "/completion", body }
        }
        Api::VllmCompletions => {
            let mut body = vllm_style_sampling(p);
            body["model"] = json!(g.model);
            body["prompt"] = json!(g.context);
            body["max_tokens"] = json!(g.max_new_tokens);
            body["stream"] = json!(true);
            // Token ids come back in the logprobs' `tokens` as "token_id:<id>".
            body["logprobs"] = json!(top_n.unwrap_or(0).max(1));
            body["return_tokens_as_token_ids"] = json!(true);
            if let Some(seed) = p.seed {
                body["seed"] = json!(seed);
            }
            StreamRequest { path: "/v1/completions", body }
        }
        Api::SglangGenerate => {
            let mut sampling = vllm_style_sampling(p);
            sampling["max_new_tokens"] = json!(g.max_new_tokens);
            if let Some(seed) = p.seed {
                sampling["sampling_seed"] = json!(seed);
            }
            let body = json!({
                "input_ids": g.context,
                "sampling_params": sampling,
                "stream": true,
                "return_logprob": top_n.is_some(),
                "top_logprobs_num": top_n.unwrap_or(0),
            });
            StreamRequest { path: "/generate", body }
        }
        Api::TgiGenerateStream => {
            let mut parameters = json!({
                "max_new_tokens": g.max_new_tokens,
                "details": true,
                "do_sample": !greedy,
            });
            if !greedy {
                parameters["temperature"] = json!(p.temperature);
                if p.top_p < 1.0 {
                    parameters["top_p"] = json!(p.top_p);
                }
                if p.top_k > 0 {
                    parameters["top_k"] = json!(p.top_k);
                }
            }
            if let Some(seed) = p.seed {
                parameters["seed"] = json!(seed);
            }
            if let Some(n) = top_n.filter(|&n| n > 0) {
                parameters["top_n_tokens"] = json!(n);
            }
            let body = json!({ "inputs": g.context_text.unwrap_or_default(), "parameters": parameters });
            StreamRequest { path: "/generate_stream", body }
        }
    }
}

/// The sampling fields vLLM's and SGLang's APIs share (`top_k` -1 is off in both).
fn vllm_style_sampling(p: &SamplingParams) -> Value {
    json!({
        "temperature": p.temperature.max(0.0),
        "top_p": p.top_p,
        "top_k": if p.top_k == 0 { -1 } else { i64::from(p.top_k) },
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        "ignore_eos": p.ignore_eos,
        "skip_special_tokens": false,
    })
}

/// Reads one sequence's stream of `data:` payloads.
#[derive(Debug)]
pub struct ChunkParser {
    api: Api,
    /// Output tokens seen so far (SGLang may send them cumulatively).
    seen: usize,
}

impl ChunkParser {
    pub fn new(api: Api) -> Self {
        Self { api, seen: 0 }
    }

    /// The chunk in one `data:` payload (`None` for payloads that carry nothing, such as
    /// progress reports or `[DONE]`).
    pub fn parse(&mut self, data: &str) -> Result<Option<Chunk>, String> {
        if data.trim() == "[DONE]" {
            return Ok(None);
        }
        let v: Value = serde_json::from_str(data).map_err(|e| format!("the engine sent an event that is not JSON ({e}): {}", clip(data)))?;
        if let Some(error) = v.get("error") {
            let message = error.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| error.to_string());
            return Err(format!("the engine reported an error: {message}"));
        }
        let chunk = match self.api {
            Api::LlamaCpp => llama_cpp(&v)?,
            Api::VllmCompletions => vllm(&v)?,
            Api::SglangGenerate => self.sglang(&v)?,
            Api::TgiGenerateStream => tgi(&v)?,
        };
        Ok(Some(chunk).filter(|c| !c.token_ids.is_empty() || c.finish.is_some()))
    }

    fn sglang(&mut self, v: &Value) -> Result<Chunk, String> {
        let meta = v.get("meta_info").ok_or("an SGLang event without meta_info")?;
        let ids = u32_array(v.get("output_ids")).unwrap_or_default();
        let total = meta.get("completion_tokens").and_then(Value::as_u64).map(|t| t as usize);
        // Cumulative output_ids (the default) hold every token so far; incremental ones
        // (--incremental-streaming-output) only the new ones.
        let new: Vec<u32> = match total {
            Some(total) if ids.len() == total && total >= self.seen => ids[self.seen..].to_vec(),
            _ => ids,
        };
        self.seen += new.len();
        let mut logprobs = Vec::new();
        if let Some(all) = meta.get("output_token_logprobs").and_then(Value::as_array) {
            let tops = meta.get("output_top_logprobs").and_then(Value::as_array);
            let start = all.len().saturating_sub(new.len());
            for (k, entry) in all.iter().enumerate().skip(start) {
                let (lp, id) = (entry.get(0).and_then(Value::as_f64), entry.get(1).and_then(Value::as_u64));
                let top = tops.and_then(|t| t.get(k)).and_then(Value::as_array).map(|alts| {
                    alts.iter()
                        .filter_map(|a| Some(TopLogprob { token: a.get(2).and_then(Value::as_str).unwrap_or_default().to_string(), logprob: a.get(0)?.as_f64()? as f32 }))
                        .collect()
                });
                if let (Some(lp), Some(id)) = (lp, id) {
                    logprobs.push(TokenLogprob { token: String::new(), token_id: id as u32, logprob: lp as f32, top: top.unwrap_or_default() });
                }
            }
        }
        let finish = meta.get("finish_reason").filter(|f| !f.is_null()).map(|f| {
            match f.get("type").and_then(Value::as_str).unwrap_or_default() {
                "length" => EngineFinish::Length,
                "stop" if f.get("matched").is_some_and(|m| m.is_u64() || m.is_i64()) => EngineFinish::Eos,
                other => EngineFinish::Other(other.to_string()),
            }
        });
        Ok(Chunk { token_ids: new, logprobs, finish })
    }
}

fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}

fn u32_array(v: Option<&Value>) -> Option<Vec<u32>> {
    v?.as_array()?.iter().map(|x| x.as_u64().map(|n| n as u32)).collect()
}

fn llama_cpp(v: &Value) -> Result<Chunk, String> {
    let token_ids = u32_array(v.get("tokens")).ok_or("a llama.cpp event without `tokens` (is return_tokens supported?)")?;
    let mut logprobs = Vec::new();
    if let Some(probs) = v.get("completion_probabilities").and_then(Value::as_array) {
        for p in probs {
            let top = p.get("top_logprobs").and_then(Value::as_array).map(|alts| {
                alts.iter()
                    .filter_map(|a| {
                        Some(TopLogprob { token: a.get("token")?.as_str()?.to_string(), logprob: a.get("logprob")?.as_f64()? as f32 })
                    })
                    .collect()
            });
            logprobs.push(TokenLogprob {
                token: p.get("token").and_then(Value::as_str).unwrap_or_default().to_string(),
                token_id: p.get("id").and_then(Value::as_u64).unwrap_or_default() as u32,
                logprob: p.get("logprob").and_then(Value::as_f64).unwrap_or(f64::NEG_INFINITY) as f32,
                top: top.unwrap_or_default(),
            });
        }
    }
    let finish = if v.get("stop").and_then(Value::as_bool) == Some(true) {
        Some(match v.get("stop_type").and_then(Value::as_str).unwrap_or_default() {
            "eos" => EngineFinish::Eos,
            "limit" => EngineFinish::Length,
            other => EngineFinish::Other(other.to_string()),
        })
    } else {
        None
    };
    Ok(Chunk { token_ids, logprobs, finish })
}

fn vllm(v: &Value) -> Result<Chunk, String> {
    let choice = v.get("choices").and_then(|c| c.get(0)).ok_or("a completions event without choices")?;
    let mut token_ids = Vec::new();
    let mut logprobs = Vec::new();
    if let Some(lp) = choice.get("logprobs").filter(|l| !l.is_null()) {
        let tokens = lp.get("tokens").and_then(Value::as_array).ok_or("completions logprobs without `tokens`")?;
        let values = lp.get("token_logprobs").and_then(Value::as_array);
        let tops = lp.get("top_logprobs").and_then(Value::as_array);
        for (k, t) in tokens.iter().enumerate() {
            let id = t.as_str().and_then(|s| s.strip_prefix("token_id:")).and_then(|s| s.parse::<u32>().ok());
            let id = id.ok_or_else(|| format!("a token without its id ({t}): is return_tokens_as_token_ids supported?"))?;
            token_ids.push(id);
            let top = tops.and_then(|t| t.get(k)).and_then(Value::as_object).map(|alts| {
                alts.iter().map(|(tok, lp)| TopLogprob { token: tok.clone(), logprob: lp.as_f64().unwrap_or(f64::NEG_INFINITY) as f32 }).collect()
            });
            logprobs.push(TokenLogprob {
                token: String::new(),
                token_id: id,
                logprob: values.and_then(|v| v.get(k)).and_then(Value::as_f64).unwrap_or(f64::NEG_INFINITY) as f32,
                top: top.unwrap_or_default(),
            });
        }
    }
    let finish = choice.get("finish_reason").and_then(Value::as_str).map(|reason| match reason {
        "length" => EngineFinish::Length,
        // vLLM says "stop" for EOS (Swell sends no stop strings to it).
        "stop" => EngineFinish::Eos,
        other => EngineFinish::Other(other.to_string()),
    });
    Ok(Chunk { token_ids, logprobs, finish })
}

fn tgi(v: &Value) -> Result<Chunk, String> {
    let token = v.get("token").ok_or("a TGI event without `token`")?;
    let id = token.get("id").and_then(Value::as_u64).ok_or("a TGI token without `id`")? as u32;
    let top = v.get("top_tokens").and_then(Value::as_array).map(|alts| {
        alts.iter()
            .filter_map(|a| Some(TopLogprob { token: a.get("text")?.as_str()?.to_string(), logprob: a.get("logprob")?.as_f64()? as f32 }))
            .collect()
    });
    let logprob = TokenLogprob {
        token: token.get("text").and_then(Value::as_str).unwrap_or_default().to_string(),
        token_id: id,
        logprob: token.get("logprob").and_then(Value::as_f64).unwrap_or(f64::NEG_INFINITY) as f32,
        top: top.unwrap_or_default(),
    };
    let finish = v.get("details").filter(|d| !d.is_null()).and_then(|d| d.get("finish_reason")).and_then(Value::as_str).map(|r| match r {
        "length" => EngineFinish::Length,
        "eos_token" => EngineFinish::Eos,
        other => EngineFinish::Other(other.to_string()),
    });
    Ok(Chunk { token_ids: vec![id], logprobs: vec![logprob], finish })
}

#[cfg(test)]
mod tests;
