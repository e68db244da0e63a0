//! [`EngineClient`]: HTTP to one engine (a blocking client: each stream is read on its
//! own thread, see [`super::relay`]), and how a request to it can fail.

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use serde_json::Value;

/// How a call to the engine failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No answer: refused, reset, closed early. The engine is down or going down.
    Transport(String),
    /// The engine answered with an error status.
    Status { status: u16, body: String },
    /// The engine answered with something Swell cannot read.
    Protocol(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(m) => write!(f, "no answer from the engine: {m}"),
            CallError::Status { status, body } => write!(f, "the engine answered {status}: {body}"),
            CallError::Protocol(m) => write!(f, "{m}"),
        }
    }
}

/// The most of an error body kept for messages.
const ERROR_BODY_BYTES: u64 = 2048;

/// An engine at one base URL.
#[derive(Clone)]
pub struct EngineClient {
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for EngineClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineClient").field("base", &self.base).finish()
    }
}

impl EngineClient {
    pub fn new(base: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .max_idle_connections(256)
            .max_idle_connections_per_host(256)
            .build()
            .into();
        Self { base: base.trim_end_matches('/').to_string(), agent }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path` with a timeout: the status and (up to 1 MiB of) the body.
    pub fn get(&self, path: &str, timeout: Duration) -> Result<(u16, String), CallError> {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.base))
            .config()
            .timeout_global(Some(timeout))
            .build()
            .call()
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(|e| CallError::Transport(e.to_string()))?;
        Ok((status, body))
    }

    /// `POST path` with a JSON body and read the answer as server-sent events: `on_data`
    /// gets each `data:` payload and returns `false` to stop reading (the connection is
    /// then closed, which stops the engine's generation). Ends `Ok` when `on_data`
    /// stopped it or the stream ended.
    pub fn stream(&self, path: &str, body: &Value, mut on_data: impl FnMut(&str) -> bool) -> Result<(), CallError> {
        let bytes = serde_json::to_vec(body).map_err(|e| CallError::Protocol(e.to_string()))?;
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .send(&bytes[..])
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let reader = response.into_body().into_reader();
        if status != 200 {
            let mut text = String::new();
            let _ = reader.take(ERROR_BODY_BYTES).read_to_string(&mut text);
            return Err(CallError::Status { status, body: error_message(&text) });
        }
        let mut lines = BufReader::new(reader);
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(CallError::Transport(e.to_string())),
            }
            // Server-sent events: `data:` lines carry the payload; comments (`:`),
            // `event:`, `id:` and blank lines carry nothing Swell uses.
            let text = line.trim_end_matches(['\r', '\n']);
            let payload = match text.strip_prefix("data:") {
                Some(payload) => payload.strip_prefix(' ').unwrap_or(payload),
                // llama.cpp writes an error mid-stream as `error: {json}`.
                None => match text.strip_prefix("error:") {
                    Some(payload) => payload.trim_start(),
                    None => continue,
                },
            };
            if !on_data(payload) {
                return Ok(());
            }
        }
    }
}

/// An engine's error body as a message: its `error.message` (OpenAI form), `error`
/// (TGI, plain), or the text itself.
pub fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        let error = v.get("error")?;
        error.get("message").and_then(Value::as_str).or_else(|| error.as_str()).map(str::to_string)
    });
    let message = message.or_else(|| parsed.as_ref().and_then(|v| v.get("detail")).map(|d| d.to_string()));
    message.unwrap_or_else(|| body.trim().chars().take(500).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_their_message() {
        assert_eq!(error_message(r#"{"error":{"code":400,"message":"bad prompt","type":"x"}}"#), "bad prompt");
        assert_eq!(error_message(r#"{"error":"Input validation error","error_type":"validation"}"#), "Input validation error");
        assert_eq!(error_message("plain text\n"), "plain text");
    }
}
