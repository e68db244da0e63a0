//! Request construction: the [`RequestSpec`] of each request (lengths, prompt) and its
//! OpenAI JSON body.

use rand::{rngs::StdRng, SeedableRng};
use serde_json::{json, Value};

use crate::{
    config::{Endpoint, LoadTestConfig},
    lengths::LengthModel,
    prompt::build_prompt,
};

/// Hard ceiling on prompt length, whatever the distribution says (keeps memory bounded).
pub const PROMPT_TOKENS_LIMIT: u32 = 1 << 20;

/// One request to send.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSpec {
    /// Sequence number, from 0 in issue order.
    pub id: u64,
    /// Prompt length asked for, in words (about tokens).
    pub prompt_tokens: u32,
    /// `max_tokens` sent.
    pub max_tokens: u32,
    pub prompt: String,
}

/// Makes the requests of a run, in issue order, from one seeded rng.
#[derive(Debug)]
pub struct RequestFactory {
    rng: StdRng,
    lengths: Option<LengthModel>,
    max_prompt: u32,
    max_output: u32,
    next_id: u64,
}

impl RequestFactory {
    /// `lengths` may be `None` when every arrival brings its own lengths (trace replay).
    pub fn new(
        seed: u64,
        lengths: Option<LengthModel>,
        max_prompt: Option<u32>,
        max_output: Option<u32>,
    ) -> Self {
        RequestFactory {
            rng: StdRng::seed_from_u64(seed),
            lengths,
            max_prompt: max_prompt
                .unwrap_or(PROMPT_TOKENS_LIMIT)
                .clamp(1, PROMPT_TOKENS_LIMIT),
            max_output: max_output.unwrap_or(u32::MAX).max(1),
            next_id: 0,
        }
    }

    /// Number of requests made so far.
    pub fn issued(&self) -> u64 {
        self.next_id
    }

    /// The next request, with the given lengths or lengths drawn from the distributions;
    /// either way capped by the configured maxima (and [`PROMPT_TOKENS_LIMIT`]).
    pub fn next_request(&mut self, lengths: Option<(u32, u32)>) -> RequestSpec {
        let (prompt_tokens, output_tokens) = match (lengths, &self.lengths) {
            (Some(pair), _) => pair,
            (None, Some(model)) => model.sample(&mut self.rng),
            (None, None) => (1, 1),
        };
        let prompt_tokens = prompt_tokens.clamp(1, self.max_prompt);
        let max_tokens = output_tokens.clamp(1, self.max_output);
        let prompt = build_prompt(prompt_tokens, &mut self.rng);
        let id = self.next_id;
        self.next_id += 1;
        RequestSpec {
            id,
            prompt_tokens,
            max_tokens,
            prompt,
        }
    }
}

/// The OpenAI body of a request. `stream` adds `"stream": true` and
/// `"stream_options": {"include_usage": true}` (for SSE; over WebSocket streaming is implied).
pub fn request_body(config: &LoadTestConfig, spec: &RequestSpec, stream: bool) -> Value {
    let mut body = json!({
        "model": config.model,
        "max_tokens": spec.max_tokens,
    });
    let fields = body.as_object_mut().expect("a json object");
    match config.endpoint {
        Endpoint::Chat => {
            fields.insert(
                "messages".into(),
                json!([{ "role": "user", "content": spec.prompt }]),
            );
        }
        Endpoint::Completions => {
            fields.insert("prompt".into(), json!(spec.prompt));
        }
    }
    if stream {
        fields.insert("stream".into(), json!(true));
        fields.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    if config.ignore_eos {
        fields.insert("ignore_eos".into(), json!(true));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lengths::LengthDist;

    #[test]
    fn factory_caps_lengths_and_numbers_requests() {
        let model = LengthModel::new(&LengthDist::Fixed(500), &LengthDist::Fixed(300)).unwrap();
        let mut f = RequestFactory::new(1, Some(model), Some(100), None);
        let a = f.next_request(None);
        assert_eq!((a.id, a.prompt_tokens, a.max_tokens), (0, 100, 300));
        assert_eq!(a.prompt.split(' ').count(), 100);
        let b = f.next_request(Some((20, 0)));
        assert_eq!((b.id, b.prompt_tokens, b.max_tokens), (1, 20, 1));
        assert_eq!(f.issued(), 2);
    }

    #[test]
    fn factory_is_reproducible() {
        let make = || {
            let model = LengthModel::new(
                &"uniform:1:50".parse().unwrap(),
                &"normal:20:5".parse().unwrap(),
            )
            .unwrap();
            let mut f = RequestFactory::new(9, Some(model), None, None);
            (0..20).map(|_| f.next_request(None)).collect::<Vec<_>>()
        };
        assert_eq!(make(), make());
    }

    #[test]
    fn chat_and_completion_bodies() {
        let spec = RequestSpec {
            id: 3,
            prompt_tokens: 2,
            max_tokens: 7,
            prompt: "the sun".into(),
        };
        let config = LoadTestConfig {
            model: "tiny".into(),
            ..LoadTestConfig::default()
        };
        let chat = request_body(&config, &spec, true);
        assert_eq!(
            chat,
            json!({
                "model": "tiny", "max_tokens": 7,
                "messages": [{"role": "user", "content": "the sun"}],
                "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": true,
            })
        );
        let config = LoadTestConfig {
            endpoint: Endpoint::Completions,
            ignore_eos: false,
            ..config
        };
        let completion = request_body(&config, &spec, false);
        assert_eq!(
            completion,
            json!({"model": "tiny", "max_tokens": 7, "prompt": "the sun"})
        );
    }
}
